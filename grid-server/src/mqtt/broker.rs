//! The in-process MQTT broker (rumqttd) used when no `MQTT_URL` is given, so the server runs with
//! no external service. It serves demos and a few hundred devices; see docs/deployment.md for when
//! to switch to Mosquitto.

use super::{TransportError, TransportResult};
use std::collections::HashMap;
use std::net::SocketAddr;

/// The largest payload the embedded broker accepts (grid-proto's limit is 64 KiB).
const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// A running embedded broker. rumqttd offers no shutdown: it lives until the process ends.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    listen: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts rumqttd (MQTT 3.1.1 listener, shared subscriptions round-robin) on `listen`.
    /// A taken port is [`TransportError::ListenAddrInUse`].
    pub fn start(listen: SocketAddr, max_connections: usize) -> TransportResult<Self> {
        // rumqttd's listener thread only logs a failed bind, so check the port first.
        match std::net::TcpListener::bind(listen) {
            Ok(probe) => drop(probe),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(TransportError::ListenAddrInUse(listen));
            }
            Err(e) => return Err(TransportError::Io(e)),
        }
        let server = rumqttd::ServerSettings {
            name: "grid-v4".into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: MAX_PAYLOAD_BYTES,
                max_inflight_count: 500,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = rumqttd::Config {
            id: 0,
            router: rumqttd::RouterConfig {
                max_connections,
                max_outgoing_packet_count: 1000,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(HashMap::from([("grid".to_owned(), server)])),
            v5: None,
            ws: None,
            cluster: None,
            console: None,
            bridge: None,
            prometheus: None,
            metrics: None,
        };
        let mut broker = rumqttd::Broker::new(config);
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded MQTT broker stopped");
                }
            })?;
        wait_until_listening(listen)?;
        tracing::info!(%listen, "embedded MQTT broker (rumqttd) listening");
        Ok(Self { listen })
    }

    /// The address it listens on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
}

fn wait_until_listening(addr: SocketAddr) -> TransportResult<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(TransportError::Io(e));
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}
