//! Wiring: [`serve`] binds the HTTP port, connects the store, starts the MQTT transport (and the
//! embedded broker when no `MQTT_URL` is set) and serves the router; [`run`] does that until
//! Ctrl-C / SIGTERM. Every start-up failure is a one-line [`ServeError`].

use crate::api::{self, AppState, Dispatch};
use crate::auth::{AuthError, Authenticator, Role};
use crate::config::{Config, ConfigError, LogFormat};
use crate::mqtt::{Transport, TransportConfig, TransportError, TransportHandle};
use crate::store::{CommandRecord, DeviceRecord, ScheduleRecord, Store, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source} (set --listen / GRID_LISTEN to another address)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The database is unreachable or its migrations failed.
    #[error("cannot open the database {url}: {source}")]
    Store {
        /// The URL, without credentials.
        url: String,
        /// Why.
        source: StoreError,
    },
    /// The MQTT transport could not start.
    #[error("cannot start the MQTT transport: {0}")]
    Transport(#[from] TransportError),
    /// The token key could not be loaded or generated.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
}

/// The transport as the API's [`Dispatch`].
#[derive(Clone, Debug)]
pub struct MqttDispatch(pub TransportHandle);

#[async_trait::async_trait]
impl Dispatch for MqttDispatch {
    async fn distribute(
        &self,
        device: Option<&DeviceRecord>,
        schedule: &ScheduleRecord,
        correlation_id: &str,
    ) -> Result<(), String> {
        let cid = (!correlation_id.is_empty()).then_some(correlation_id);
        match device {
            Some(device) => self.0.distribute_to(device, &schedule.schedule, cid).await,
            None => self.0.distribute(&schedule.schedule, cid).await,
        }
        .map(|_| crate::metrics::mqtt_out("schedule"))
        .map_err(|e| e.to_string())
    }

    async fn send_command(
        &self,
        device: Option<&DeviceRecord>,
        command: &CommandRecord,
        _correlation_id: &str,
    ) -> Result<(), String> {
        // The record carries the correlation id already.
        match device {
            Some(device) => self.0.send_command_to(device, command).await,
            None => self.0.send_command(command).await,
        }
        .map(|_| crate::metrics::mqtt_out("command"))
        .map_err(|e| e.to_string())
    }

    fn broker_healthy(&self) -> bool {
        self.0.broker_healthy()
    }

    fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        let s = self.0.stats();
        vec![
            (crate::metrics::MQTT_IN, "all", s.messages_in),
            (crate::metrics::MQTT_OUT, "all", s.messages_out),
            (crate::metrics::MQTT_IN, "refused", s.refused),
            (crate::metrics::ACKS, "applied", s.acks_applied),
            (crate::metrics::ACKS, "duplicate", s.acks_duplicate),
            (crate::metrics::ACKS, "ignored", s.acks_ignored),
            (crate::metrics::MQTT_OUT, "resync", s.resync_asked),
            (
                crate::metrics::MQTT_IN,
                "telemetry_samples",
                s.telemetry_samples,
            ),
        ]
    }
}

/// A running server.
pub struct RunningServer {
    /// Where the API listens (the real port when the configuration asked for port 0).
    pub local_addr: SocketAddr,
    /// The store it uses.
    pub store: Arc<dyn Store>,
    /// The transport it uses.
    pub transport: TransportHandle,
    /// The token verifier (tests and tools mint tokens with it).
    pub auth: Authenticator,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    transport_task: JoinHandle<()>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// Stops accepting requests, finishes the ones in flight, stops the transport.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shutdown.send_replace(true);
        let http = self.http.await;
        self.transport.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.transport_task).await;
        match http {
            Ok(r) => r.map_err(ServeError::Http),
            Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
        }
    }

    /// Waits until the HTTP server ends (after [`RunningServer::shutdown`] from elsewhere, or an
    /// error).
    pub async fn wait(self) -> Result<(), ServeError> {
        let r = self.http.await;
        self.transport.shutdown();
        match r {
            Ok(r) => r.map_err(ServeError::Http),
            Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
        }
    }

    /// A handle that stops the server when set.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Removes `user:password@` from a URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// The transport settings `config.mqtt` asks for (broker, TLS files, retry and lease timings).
pub fn transport_config(config: &Config) -> Result<TransportConfig, ServeError> {
    let m = &config.mqtt;
    let url = (!m.url.is_empty()).then_some(m.url.as_str());
    let mut t = TransportConfig::from_url_or_embedded(url, m.listen)?;
    t.tls = m.tls_files();
    t.share_group = Some(m.share_group.clone());
    t.claim_lease = Duration::from_millis(m.claim_lease_ms);
    t.retry_interval = Duration::from_millis(m.retry_interval_ms);
    t.tracker.backoff_base_ms = m.retry_backoff_base_ms;
    t.tracker.backoff_max_ms = m.retry_backoff_max_ms;
    t.inbound_concurrency = m.inbound_concurrency;
    Ok(t)
}

/// Starts everything and returns once the API accepts connections.
pub async fn serve(config: Config) -> Result<RunningServer, ServeError> {
    config.validate()?;
    crate::metrics::handle();
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.http.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.http.listen,
        source,
    })?;
    let auth = Authenticator::from_config(&config)?;
    let store = crate::store::connect(&config.database.url, config.database.max_connections)
        .await
        .map_err(|source| ServeError::Store {
            url: redact(&config.database.url),
            source,
        })?;
    let (transport, transport_task) =
        Transport::start(transport_config(&config)?, store.clone()).await?;
    if !transport.wait_ready(Duration::from_secs(10)).await {
        tracing::warn!(
            "MQTT broker not reachable yet; the transport keeps retrying (/readyz says so)"
        );
    }
    let state = AppState::new(
        store.clone(),
        Arc::new(MqttDispatch(transport.clone())),
        auth.clone(),
        config.http.clone(),
    );
    let app = api::router(state);
    let (shutdown, mut rx) = watch::channel(false);
    // Answers go out at once: with Nagle's algorithm on, a response written in more than one
    // piece could wait for the client's delayed ACK (up to 40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an API connection");
        }
    });
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await
    });
    tracing::info!(
        listen = %local_addr,
        database = %redact(&config.database.url),
        mqtt = %if config.mqtt.url.is_empty() { format!("embedded on {}", config.mqtt.listen) } else { redact(&config.mqtt.url) },
        key = %crate::auth::describe_key_source(&config),
        "grid-server ready"
    );
    Ok(RunningServer {
        local_addr,
        store,
        transport,
        auth,
        shutdown,
        http,
        transport_task,
    })
}

/// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
pub async fn run(config: Config) -> Result<(), ServeError> {
    init_tracing(&config);
    let server = serve(config).await?;
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        stop.send_replace(true);
    });
    server.shutdown_on_stop().await
}

impl RunningServer {
    async fn shutdown_on_stop(self) -> Result<(), ServeError> {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
        self.shutdown().await
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Installs the JSON (or pretty) log subscriber with the configured filter; idempotent.
pub fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&config.log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Mints a token with the configured key (generating the HS256 key file on first use, so a later
/// `serve` agrees).
pub fn mint_token(
    config: &Config,
    subject: &str,
    role: Role,
    tenant: Option<&str>,
    ttl: Option<Duration>,
) -> Result<String, ServeError> {
    let auth = Authenticator::from_config(config)?;
    Ok(auth.mint(subject, role, tenant, ttl)?)
}
