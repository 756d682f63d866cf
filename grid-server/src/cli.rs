//! The command line of the `grid-server` binary: `serve` (the default), `token` and
//! `print-config`. Flags and environment variables override the configuration file, which
//! overrides the embedded default ([`crate::config::DEFAULT_CONFIG_TOML`]).
//!
//! clap reads the environment variables named here when the binary parses its arguments; the
//! library itself only ever sees the resulting [`Config`].

use crate::auth::Role;
use crate::config::{Config, ConfigError, JwtAlgorithm, LogFormat};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// grid-server: the fleet server for smart home batteries (REST API with OpenAPI, PostgreSQL or
/// SQLite storage, MQTT transport with an embedded broker, JWT auth, Prometheus metrics).
///
/// With no subcommand it serves (same as `grid-server serve`). With no environment at all it
/// runs on SQLite (`grid.db` in the working directory) and an in-process MQTT broker on
/// 127.0.0.1:1884, and generates an HS256 token key beside the database (`grid.db.jwt-key`).
#[derive(Debug, Parser)]
#[command(name = "grid-server", version, propagate_version = true)]
pub struct Cli {
    /// TOML configuration file layered over the embedded default (see `print-config`).
    #[arg(long, env = "GRID_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the REST API.
    #[arg(long, env = "GRID_LISTEN", global = true, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Database: `sqlite://PATH` (default `sqlite://grid.db`) or `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// External MQTT broker, `mqtt://host:port` or `mqtts://host:port`; unset = in-process broker.
    #[arg(long, env = "MQTT_URL", global = true, value_name = "URL")]
    pub mqtt_url: Option<String>,

    /// Address of the in-process broker when MQTT_URL is unset [default: 127.0.0.1:1884].
    #[arg(long, env = "GRID_MQTT_LISTEN", global = true, value_name = "ADDR")]
    pub mqtt_listen: Option<SocketAddr>,

    /// CA certificate (PEM) of an `mqtts://` broker [default: the platform's roots].
    #[arg(long, env = "GRID_MQTT_CA", global = true, value_name = "FILE")]
    pub mqtt_ca: Option<PathBuf>,

    /// Client certificate (PEM) for an `mqtts://` broker that requires one (with GRID_MQTT_KEY).
    #[arg(long, env = "GRID_MQTT_CERT", global = true, value_name = "FILE")]
    pub mqtt_cert: Option<PathBuf>,

    /// Private key (PEM) of the client certificate.
    #[arg(long, env = "GRID_MQTT_KEY", global = true, value_name = "FILE")]
    pub mqtt_key: Option<PathBuf>,

    /// Shared-subscription group of this fleet's replicas [default: grid-server].
    #[arg(
        long,
        env = "GRID_MQTT_SHARE_GROUP",
        global = true,
        value_name = "GROUP"
    )]
    pub mqtt_share_group: Option<String>,

    /// Wait before the first resend of an unanswered schedule or command, ms (doubles per
    /// attempt) [default: 5000].
    #[arg(
        long,
        env = "GRID_MQTT_RETRY_BACKOFF_BASE_MS",
        global = true,
        value_name = "MS"
    )]
    pub mqtt_retry_backoff_base_ms: Option<u64>,

    /// Longest wait between resends, ms [default: 300000].
    #[arg(
        long,
        env = "GRID_MQTT_RETRY_BACKOFF_MAX_MS",
        global = true,
        value_name = "MS"
    )]
    pub mqtt_retry_backoff_max_ms: Option<u64>,

    /// How often the retry loop looks for due resends, ms [default: 250].
    #[arg(
        long,
        env = "GRID_MQTT_RETRY_INTERVAL_MS",
        global = true,
        value_name = "MS"
    )]
    pub mqtt_retry_interval_ms: Option<u64>,

    /// How long a replica holds claimed due deliveries before another replica may take them
    /// over, ms [default: 30000].
    #[arg(
        long,
        env = "GRID_MQTT_CLAIM_LEASE_MS",
        global = true,
        value_name = "MS"
    )]
    pub mqtt_claim_lease_ms: Option<u64>,

    /// Inbound device messages processed at once (it also bounds the ack batches)
    /// [default: 16384].
    #[arg(
        long,
        env = "GRID_MQTT_INBOUND_CONCURRENCY",
        global = true,
        value_name = "N"
    )]
    pub mqtt_inbound_concurrency: Option<usize>,

    /// JWT algorithm: HS256, RS256 or EdDSA [default: HS256].
    #[arg(long, env = "GRID_JWT_ALGORITHM", global = true, value_name = "ALG")]
    pub jwt_algorithm: Option<JwtAlgorithm>,

    /// HS256 secret (at least 32 bytes). Unset: a key is generated beside the SQLite database.
    #[arg(
        long,
        env = "GRID_JWT_SECRET",
        global = true,
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub jwt_secret: Option<String>,

    /// Required `iss` claim [default: grid-server].
    #[arg(long, env = "GRID_JWT_ISSUER", global = true, value_name = "ISS")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim [default: grid-api].
    #[arg(long, env = "GRID_JWT_AUDIENCE", global = true, value_name = "AUD")]
    pub jwt_audience: Option<String>,

    /// Allowed clock skew on `exp`/`nbf`, seconds [default: 30].
    #[arg(long, env = "GRID_JWT_LEEWAY_S", global = true, value_name = "SECONDS")]
    pub jwt_leeway_s: Option<u64>,

    /// PEM public key for RS256/EdDSA verification.
    #[arg(
        long,
        env = "GRID_JWT_PUBLIC_KEY_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub jwt_public_key_file: Option<PathBuf>,

    /// PEM private key for RS256/EdDSA minting (`token`).
    #[arg(
        long,
        env = "GRID_JWT_PRIVATE_KEY_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub jwt_private_key_file: Option<PathBuf>,

    /// HS256 key file used (and generated) when no secret is set [default: the SQLite path + `.jwt-key`].
    #[arg(long, env = "GRID_JWT_KEY_FILE", global = true, value_name = "FILE")]
    pub jwt_key_file: Option<PathBuf>,

    /// Log filter directives, e.g. `info,grid_server=debug` [default: info].
    #[arg(long, env = "GRID_LOG", global = true, value_name = "FILTER")]
    pub log: Option<String>,

    /// Log format: json or pretty [default: json].
    #[arg(long, env = "GRID_LOG_FORMAT", global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,

    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API, the MQTT transport and (without MQTT_URL) the embedded broker (default).
    Serve,
    /// Mint a bearer token with the configured key and print it.
    Token {
        /// The token's role.
        #[arg(long, value_enum)]
        role: Role,
        /// Lifetime, e.g. 30m, 12h, 7d [default: auth.default_ttl_s, 1h].
        #[arg(long, value_name = "DURATION", value_parser = crate::auth::parse_ttl)]
        ttl: Option<std::time::Duration>,
        /// Confine the token to one tenant's objects (default: fleet-wide).
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
        /// The `sub` claim [default: cli].
        #[arg(long, value_name = "NAME", default_value = "cli")]
        subject: String,
    },
    /// Print the embedded default configuration (a documented TOML file).
    PrintConfig,
}

impl Cli {
    /// Layers the configuration: embedded default, `--config` file, then flags / environment.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        if let Some(path) = &self.config {
            c = c.merge_file(path)?;
        }
        if let Some(v) = self.listen {
            c.http.listen = v;
        }
        if let Some(v) = &self.database_url {
            c.database.url = v.clone();
        }
        if let Some(v) = &self.mqtt_url {
            c.mqtt.url = v.clone();
        }
        if let Some(v) = self.mqtt_listen {
            c.mqtt.listen = v;
        }
        if let Some(v) = &self.mqtt_ca {
            c.mqtt.ca_file = Some(v.clone());
        }
        if let Some(v) = &self.mqtt_cert {
            c.mqtt.cert_file = Some(v.clone());
        }
        if let Some(v) = &self.mqtt_key {
            c.mqtt.key_file = Some(v.clone());
        }
        if let Some(v) = &self.mqtt_share_group {
            c.mqtt.share_group = v.clone();
        }
        if let Some(v) = self.mqtt_retry_backoff_base_ms {
            c.mqtt.retry_backoff_base_ms = v;
        }
        if let Some(v) = self.mqtt_retry_backoff_max_ms {
            c.mqtt.retry_backoff_max_ms = v;
        }
        if let Some(v) = self.mqtt_retry_interval_ms {
            c.mqtt.retry_interval_ms = v;
        }
        if let Some(v) = self.mqtt_claim_lease_ms {
            c.mqtt.claim_lease_ms = v;
        }
        if let Some(v) = self.mqtt_inbound_concurrency {
            c.mqtt.inbound_concurrency = v;
        }
        if let Some(v) = self.jwt_algorithm {
            c.auth.algorithm = v;
        }
        if let Some(v) = &self.jwt_secret {
            c.auth.secret = Some(v.clone());
        }
        if let Some(v) = &self.jwt_issuer {
            c.auth.issuer = v.clone();
        }
        if let Some(v) = &self.jwt_audience {
            c.auth.audience = v.clone();
        }
        if let Some(v) = self.jwt_leeway_s {
            c.auth.leeway_s = v;
        }
        if let Some(v) = &self.jwt_public_key_file {
            c.auth.public_key_file = Some(v.clone());
        }
        if let Some(v) = &self.jwt_private_key_file {
            c.auth.private_key_file = Some(v.clone());
        }
        if let Some(v) = &self.jwt_key_file {
            c.auth.key_file = Some(v.clone());
        }
        if let Some(v) = &self.log {
            c.log.filter = v.clone();
        }
        if let Some(v) = self.log_format {
            c.log.format = match v {
                LogFormatArg::Json => LogFormat::Json,
                LogFormatArg::Pretty => LogFormat::Pretty,
            };
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_names_every_environment_variable() {
        let help = Cli::command().render_long_help().to_string();
        for var in [
            "GRID_LISTEN",
            "DATABASE_URL",
            "MQTT_URL",
            "GRID_MQTT_LISTEN",
            "GRID_MQTT_CA",
            "GRID_MQTT_CERT",
            "GRID_MQTT_KEY",
            "GRID_MQTT_RETRY_BACKOFF_BASE_MS",
            "GRID_MQTT_RETRY_BACKOFF_MAX_MS",
            "GRID_MQTT_RETRY_INTERVAL_MS",
            "GRID_MQTT_CLAIM_LEASE_MS",
            "GRID_MQTT_SHARE_GROUP",
            "GRID_JWT_SECRET",
            "GRID_JWT_ALGORITHM",
            "GRID_JWT_ISSUER",
            "GRID_JWT_AUDIENCE",
            "GRID_JWT_LEEWAY_S",
            "GRID_JWT_PUBLIC_KEY_FILE",
            "GRID_JWT_KEY_FILE",
            "GRID_CONFIG",
            "GRID_LOG",
        ] {
            assert!(help.contains(var), "--help lacks {var}");
        }
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_default() {
        let cli = Cli::try_parse_from([
            "grid-server",
            "--listen",
            "127.0.0.1:9999",
            "--database-url",
            "sqlite:///tmp/x.db",
            "token",
            "--role",
            "operator",
            "--ttl",
            "2h",
        ])
        .unwrap();
        let c = cli.config().unwrap();
        assert_eq!(c.http.listen.port(), 9999);
        assert_eq!(
            c.generated_key_path().unwrap(),
            PathBuf::from("/tmp/x.db.jwt-key")
        );
        match cli.command {
            Some(Command::Token { role, ttl, .. }) => {
                assert_eq!(role, Role::Operator);
                assert_eq!(ttl, Some(std::time::Duration::from_secs(7200)));
            }
            other => panic!("{other:?}"),
        }
        let bad = Cli::try_parse_from(["grid-server", "--database-url", "mysql://x"]).unwrap();
        assert!(
            bad.config()
                .unwrap_err()
                .to_string()
                .contains("database.url")
        );
    }

    #[test]
    fn mqtt_tls_files_and_retry_timings_map_from_the_environment_and_flags() {
        // Each setting reads the environment variable docs/deployment.md names.
        let command = Cli::command();
        for (flag, var) in [
            ("mqtt_ca", "GRID_MQTT_CA"),
            ("mqtt_cert", "GRID_MQTT_CERT"),
            ("mqtt_key", "GRID_MQTT_KEY"),
            (
                "mqtt_retry_backoff_base_ms",
                "GRID_MQTT_RETRY_BACKOFF_BASE_MS",
            ),
            (
                "mqtt_retry_backoff_max_ms",
                "GRID_MQTT_RETRY_BACKOFF_MAX_MS",
            ),
            ("mqtt_retry_interval_ms", "GRID_MQTT_RETRY_INTERVAL_MS"),
            ("mqtt_claim_lease_ms", "GRID_MQTT_CLAIM_LEASE_MS"),
            ("mqtt_inbound_concurrency", "GRID_MQTT_INBOUND_CONCURRENCY"),
            ("mqtt_share_group", "GRID_MQTT_SHARE_GROUP"),
        ] {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == flag)
                .unwrap_or_else(|| panic!("no argument {flag}"));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(var), "{flag}");
        }

        let cli = Cli::try_parse_from([
            "grid-server",
            "--mqtt-url",
            "mqtts://broker.internal:8883",
            "--mqtt-ca",
            "/etc/grid/ca.crt",
            "--mqtt-cert",
            "/etc/grid/grid-server.crt",
            "--mqtt-key",
            "/etc/grid/grid-server.key",
            "--mqtt-claim-lease-ms",
            "2000",
            "--mqtt-retry-backoff-base-ms",
            "300",
            "--mqtt-retry-backoff-max-ms",
            "1000",
            "--mqtt-retry-interval-ms",
            "50",
            "--mqtt-share-group",
            "fleet-2",
            "--mqtt-inbound-concurrency",
            "2048",
        ])
        .unwrap();
        let c = cli.config().unwrap();
        let t = crate::server::transport_config(&c).unwrap();
        assert_eq!(
            t.tls,
            Some(crate::mqtt::TlsFiles {
                ca: "/etc/grid/ca.crt".into(),
                client: Some((
                    "/etc/grid/grid-server.crt".into(),
                    "/etc/grid/grid-server.key".into()
                )),
            })
        );
        assert_eq!(t.claim_lease, std::time::Duration::from_secs(2));
        assert_eq!(t.inbound_concurrency, 2048);
        assert_eq!(t.share_group.as_deref(), Some("fleet-2"));
        assert_eq!(t.retry_interval, std::time::Duration::from_millis(50));
        assert_eq!(
            (t.tracker.backoff_base_ms, t.tracker.backoff_max_ms),
            (300, 1000)
        );
        match t.broker {
            crate::mqtt::BrokerConfig::External(url) => assert!(url.tls),
            other => panic!("{other:?}"),
        }

        // The defaults are the transport's own.
        let d = crate::server::transport_config(&Config::default()).unwrap();
        let own = crate::mqtt::TransportConfig::new(d.broker.clone());
        assert_eq!(d.tls, None);
        assert_eq!(d.share_group, own.share_group);
        assert_eq!(
            (d.claim_lease, d.retry_interval, d.tracker),
            (own.claim_lease, own.retry_interval, own.tracker)
        );
        assert_eq!(d.inbound_concurrency, own.inbound_concurrency);

        // Half a client identity, a certificate without a CA, or TLS files on a plaintext URL
        // are refused, naming the key.
        for (args, key) in [
            (
                vec![
                    "--mqtt-url",
                    "mqtts://b:8883",
                    "--mqtt-ca",
                    "ca.crt",
                    "--mqtt-cert",
                    "c.crt",
                ],
                "mqtt.cert_file",
            ),
            (
                vec![
                    "--mqtt-url",
                    "mqtts://b:8883",
                    "--mqtt-cert",
                    "c.crt",
                    "--mqtt-key",
                    "c.key",
                ],
                "mqtt.ca_file",
            ),
            (
                vec!["--mqtt-url", "mqtt://b:1883", "--mqtt-ca", "ca.crt"],
                "mqtt.ca_file",
            ),
            (vec!["--mqtt-ca", "ca.crt"], "mqtt.ca_file"),
            (vec!["--mqtt-claim-lease-ms", "0"], "mqtt.claim_lease_ms"),
            (
                vec!["--mqtt-inbound-concurrency", "0"],
                "mqtt.inbound_concurrency",
            ),
            (vec!["--mqtt-share-group", "a/b"], "mqtt.share_group"),
            (
                vec![
                    "--mqtt-retry-backoff-base-ms",
                    "9000",
                    "--mqtt-retry-backoff-max-ms",
                    "10",
                ],
                "mqtt.retry_backoff_base_ms",
            ),
        ] {
            let cli =
                Cli::try_parse_from(std::iter::once("grid-server").chain(args.clone())).unwrap();
            let err = cli.config().unwrap_err().to_string();
            assert!(err.contains(key), "{args:?}: {err}");
        }
        // A CA alone (server-authenticated TLS) is fine.
        let cli = Cli::try_parse_from([
            "grid-server",
            "--mqtt-url",
            "mqtts://b:8883",
            "--mqtt-ca",
            "ca.crt",
        ])
        .unwrap();
        let t = crate::server::transport_config(&cli.config().unwrap()).unwrap();
        assert_eq!(t.tls.unwrap().client, None);
    }
}
