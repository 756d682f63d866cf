//! The MQTT transport: a rumqttc client to the broker `MQTT_URL` names (or to an in-process
//! rumqttd broker when it is unset) that feeds device messages into the store and publishes
//! schedules and commands through grid-proto's `DeliveryTracker`, whose state is persisted as an
//! outbox in the store, so a restart, or another replica, resumes every pending delivery.
//!
//! Inbound (`grid/v1/+/up/+`, as the MQTT shared subscription `$share/grid-server/...` so replicas
//! split the load): topic and envelope are parsed and must name the same device; acks move the
//! lifecycle (idempotently), status messages set online/offline, telemetry is written in batches,
//! and a `hello` is answered with exactly what the device is missing. The server acknowledges a
//! message to the broker (PUBACK) only after the store committed it.
//!
//! Outbound: [`TransportHandle::distribute`] and [`TransportHandle::send_command`] persist the
//! device's tracker state *before* publishing (QoS 1); a retry loop claims due trackers from the
//! store (with a lease, so replicas do not double up) and resends with backoff and jitter.

mod broker;
mod saved_states;
mod transport;

pub use broker::EmbeddedBroker;
pub use transport::{DistributeOutcome, Transport, TransportHandle, TransportStats};

use grid_proto::tracker::TrackerConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The default listen address of the embedded broker (not 1883, so it never collides with a
/// system broker).
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1884";

/// The default shared-subscription group of server replicas.
pub const DEFAULT_SHARE_GROUP: &str = "grid-server";

/// What can go wrong in the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// `MQTT_URL` is not `mqtt://host:port` or `mqtts://host:port`.
    #[error("invalid MQTT URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The embedded broker's listen address is taken.
    #[error(
        "cannot start the embedded MQTT broker: {0} is already in use \
         (set --mqtt-listen / GRID_MQTT_LISTEN to another address, or MQTT_URL to use an external broker)"
    )]
    ListenAddrInUse(SocketAddr),
    /// A TLS file could not be read.
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The MQTT client failed.
    #[error("MQTT client error: {0}")]
    Client(#[from] rumqttc::ClientError),
    /// The protocol layer refused a message.
    #[error("protocol error: {0}")]
    Proto(#[from] grid_proto::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Serializing the tracker state failed (a bug).
    #[error("delivery state serialization: {0}")]
    State(#[from] serde_json::Error),
    /// The device is unknown or decommissioned.
    #[error("device {0} is not registered or is decommissioned")]
    UnknownDevice(grid_core::DeviceId),
    /// An I/O error (starting the broker, ...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Too many concurrent writers kept changing a device's delivery state.
    #[error("delivery state of {0} changed concurrently too often")]
    Contention(grid_core::DeviceId),
}

/// The result of a transport operation.
pub type TransportResult<T> = std::result::Result<T, TransportError>;

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerConfig {
    /// An external broker.
    External(MqttUrl),
    /// Start rumqttd in-process on this address and connect to it.
    Embedded {
        /// Listen address.
        listen: SocketAddr,
        /// The most client connections it accepts.
        max_connections: usize,
    },
}

/// A parsed `MQTT_URL`: `mqtt://[user[:password]@]host:port` or `mqtts://...` (TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// Host name or address.
    pub host: String,
    /// Port (default 1883, or 8883 for `mqtts`).
    pub port: u16,
    /// Whether to use TLS.
    pub tls: bool,
    /// User name, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
}

impl MqttUrl {
    /// Parses an `mqtt://` or `mqtts://` URL.
    ///
    /// ```
    /// use grid_server::mqtt::MqttUrl;
    /// let url = MqttUrl::parse("mqtts://server:secret@broker.example:8883")?;
    /// assert_eq!((url.host.as_str(), url.port, url.tls), ("broker.example", 8883, true));
    /// assert_eq!(url.username.as_deref(), Some("server"));
    /// assert_eq!(MqttUrl::parse("mqtt://127.0.0.1")?.port, 1883);
    /// assert!(MqttUrl::parse("http://x:1").is_err());
    /// # Ok::<(), grid_server::mqtt::TransportError>(())
    /// ```
    pub fn parse(url: &str) -> TransportResult<Self> {
        let bad = |reason: &str| TransportError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad("expected mqtt://host:port or mqtts://host:port"));
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (username, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
                None => (Some(a.to_owned()), None),
            },
            None => (None, None),
        };
        if hostport.contains('/') {
            return Err(bad("no path allowed"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| bad("invalid port"))?;
                (h, port)
            }
            _ => (hostport, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
            username,
            password,
        })
    }
}

/// PEM files for `mqtts://`: the CA that signed the broker's certificate and, for brokers that
/// require client certificates (the shipped Mosquitto config does), the server's own certificate
/// and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Client certificate and private key (PEM), if the broker requires one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// How the transport runs.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The broker.
    pub broker: BrokerConfig,
    /// TLS material for `mqtts://`.
    pub tls: Option<TlsFiles>,
    /// This replica's MQTT client id (unique per replica; default `grid-server-{random}`).
    pub client_id: String,
    /// The shared-subscription group (`None`: a plain subscription, every replica gets every
    /// message).
    pub share_group: Option<String>,
    /// Retry and backoff settings of the delivery trackers.
    pub tracker: TrackerConfig,
    /// What devices fall back to if they lose contact with the server (sent in schedules).
    pub reversion_timeout: Duration,
    /// How long a command stays valid when the caller gives no expiry.
    pub command_validity: Duration,
    /// How often the retry loop looks for due deliveries.
    pub retry_interval: Duration,
    /// How long a replica holds a claimed delivery before another may take it.
    pub claim_lease: Duration,
    /// Telemetry samples written per batch at most.
    pub telemetry_batch: usize,
    /// The longest a sample waits for its batch.
    pub telemetry_flush: Duration,
    /// Inbound messages processed concurrently (the event loop stops reading from the broker
    /// while this many are in flight). Acks wait in it until their batch is recorded, so it
    /// bounds the ack batches too: at 1,024 a 10,000-device publish was written in batches of
    /// 24 acks on average, each paying a whole transaction.
    pub inbound_concurrency: usize,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// How long after each new subscription (the first, and every one after a reconnect) the
    /// server waits before it asks the devices whose reports are overdue where their deliveries
    /// stand (see `DeliveryTracker::resync`): what devices sent while the server had no
    /// subscription was dropped by the broker. The wait lets the acks and hellos of a reconnect
    /// storm arrive first.
    pub resync_delay: Duration,
}

impl TransportConfig {
    /// Defaults for `broker`: shared group `grid-server`, a random client id, 5 s base backoff.
    pub fn new(broker: BrokerConfig) -> Self {
        Self {
            broker,
            tls: None,
            client_id: format!("grid-server-{}", random_hex(6)),
            share_group: Some(DEFAULT_SHARE_GROUP.to_owned()),
            tracker: TrackerConfig::default(),
            reversion_timeout: Duration::from_secs(900),
            command_validity: Duration::from_secs(300),
            retry_interval: Duration::from_millis(250),
            claim_lease: Duration::from_secs(30),
            telemetry_batch: 1000,
            telemetry_flush: Duration::from_millis(200),
            inbound_concurrency: 16_384,
            keep_alive: Duration::from_secs(30),
            resync_delay: Duration::from_secs(5),
        }
    }

    /// The transport the environment asks for: `mqtt_url` (from `MQTT_URL`) if set, else an
    /// embedded broker on `embedded_listen` (from `--mqtt-listen` / `GRID_MQTT_LISTEN`).
    pub fn from_url_or_embedded(
        mqtt_url: Option<&str>,
        embedded_listen: SocketAddr,
    ) -> TransportResult<Self> {
        let broker = match mqtt_url.filter(|u| !u.is_empty()) {
            Some(url) => BrokerConfig::External(MqttUrl::parse(url)?),
            None => BrokerConfig::Embedded {
                listen: embedded_listen,
                max_connections: 10_000,
            },
        };
        Ok(Self::new(broker))
    }
}

/// `n` random bytes as lowercase hex (ids and jitter seeds).
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if getrandom::fill(&mut buf).is_err() {
        // No OS randomness: fall back to the clock, still unique enough for ids.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Installs ring as the process's rustls crypto provider (the workspace links only ring; see
/// ../shared/FIELD-NOTES.md). Idempotent; the transport calls it before any TLS connection.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
