//! The typed configuration of the server, with the documented default embedded in the binary.
//!
//! The library never reads the environment: the binary ([`crate::cli`]) layers the embedded
//! default ([`DEFAULT_CONFIG_TOML`]), an optional file, environment variables and flags into one
//! [`Config`] and hands it to [`crate::server::serve`].

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The embedded default configuration, with a comment on every key.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default-config.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML text does not parse or has unknown keys.
    #[error("configuration {source_name}: {message}")]
    Parse {
        /// Where the text came from (a file name or "embedded default").
        source_name: String,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or malformed; names the key.
    #[error("configuration key {key}: {reason}")]
    Invalid {
        /// The dotted key, e.g. `database.url`.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTP API.
    pub http: HttpConfig,
    /// The store.
    pub database: DatabaseConfig,
    /// The MQTT transport.
    pub mqtt: MqttConfig,
    /// Token verification and minting.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
}

/// The HTTP API's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listening address.
    pub listen: SocketAddr,
    /// Largest request body in bytes (413 above).
    pub body_limit_bytes: usize,
    /// Page size when a list request gives no `limit`.
    pub default_page_size: u32,
    /// Largest `limit` a list request may ask for (422 above).
    pub max_page_size: u32,
}

/// The store's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://…`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
}

/// The MQTT transport's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// External broker URL (`mqtt://host:port`, `mqtts://host:port`); empty = in-process broker.
    #[serde(default)]
    pub url: String,
    /// Listening address of the in-process broker.
    pub listen: SocketAddr,
    /// CA certificate (PEM) that signed an `mqtts://` broker's certificate; unset = the
    /// platform's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that require one (with `key_file`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The MQTT 5 shared-subscription group of the replicas of one fleet (the broker hands each
    /// device message to one member). Fleets sharing a broker need different groups.
    pub share_group: String,
    /// How long a replica holds the due deliveries it claimed before another replica may take
    /// them over (it releases them as soon as it has resent them), milliseconds.
    pub claim_lease_ms: u64,
    /// How often the retry loop looks for due deliveries, milliseconds.
    pub retry_interval_ms: u64,
    /// The wait before the first resend of an unanswered message (doubled per attempt, with
    /// jitter), milliseconds.
    pub retry_backoff_base_ms: u64,
    /// The longest wait between resends, milliseconds.
    pub retry_backoff_max_ms: u64,
    /// Inbound device messages processed at once; the server stops reading from the broker while
    /// this many are in flight, and it bounds the size of the ack batches written together.
    pub inbound_concurrency: usize,
}

impl MqttConfig {
    /// The TLS files for `mqtts://`: `None` when no CA is configured (the platform's roots, no
    /// client certificate).
    pub fn tls_files(&self) -> Option<crate::mqtt::TlsFiles> {
        let ca = self.ca_file.clone()?;
        let client = self.cert_file.clone().zip(self.key_file.clone());
        Some(crate::mqtt::TlsFiles { ca, client })
    }
}

/// The JWT algorithms the server accepts (one at a time, configured explicitly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256 (PEM key files).
    RS256,
    /// Ed25519 (PEM key files).
    EdDSA,
}

impl std::str::FromStr for JwtAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "HS256" => Ok(Self::HS256),
            "RS256" => Ok(Self::RS256),
            "EdDSA" => Ok(Self::EdDSA),
            other => Err(format!(
                "unknown JWT algorithm {other:?} (HS256, RS256 or EdDSA)"
            )),
        }
    }
}

/// Token verification and minting settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The only algorithm accepted.
    pub algorithm: JwtAlgorithm,
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim.
    pub audience: String,
    /// Allowed clock skew on `exp`/`nbf`, seconds.
    pub leeway_s: u64,
    /// Lifetime of minted tokens when none is given, seconds.
    pub default_ttl_s: u64,
    /// Longest lifetime a minted token may have, seconds.
    pub max_ttl_s: u64,
    /// HS256 shared secret (at least 32 bytes).
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// PEM public key for RS256/EdDSA verification.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// PEM private key for RS256/EdDSA minting.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// HS256 key file read or generated when no secret is set.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .field("private_key_file", &self.private_key_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// tracing-subscriber filter directives.
    pub filter: String,
}

/// Which database a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    /// A SQLite file at this path.
    Sqlite(PathBuf),
    /// A PostgreSQL server.
    Postgres,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_toml_str(DEFAULT_CONFIG_TOML, "embedded default")
            .expect("the embedded default configuration parses (tested)")
    }
}

impl Config {
    /// Parses a complete configuration.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            source_name: source_name.to_owned(),
            message: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Layers a (possibly partial) TOML text over this configuration.
    pub fn merge_toml_str(&self, text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let parse = |t: &str| -> Result<toml::Table, ConfigError> {
            toml::from_str(t).map_err(|e| ConfigError::Parse {
                source_name: source_name.to_owned(),
                message: e.message().to_owned(),
            })
        };
        let mut base = toml::Table::try_from(self).map_err(|e| ConfigError::Parse {
            source_name: "current configuration".into(),
            message: e.to_string(),
        })?;
        // The secret is never serialised; carry it over by hand.
        let secret = self.auth.secret.clone();
        merge_tables(&mut base, parse(text)?);
        let mut merged: Config =
            base.try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    source_name: source_name.to_owned(),
                    message: e.message().to_owned(),
                })?;
        if merged.auth.secret.is_none() {
            merged.auth.secret = secret;
        }
        merged.validate()?;
        Ok(merged)
    }

    /// Reads a TOML file and layers it over this configuration.
    pub fn merge_file(&self, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.merge_toml_str(&text, &path.display().to_string())
    }

    /// Checks values the types cannot express; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.http.body_limit_bytes == 0 {
            return invalid("http.body_limit_bytes", "must be > 0");
        }
        if self.http.max_page_size == 0 || self.http.default_page_size == 0 {
            return invalid("http.max_page_size", "page sizes must be > 0");
        }
        if self.http.default_page_size > self.http.max_page_size {
            return invalid(
                "http.default_page_size",
                "must not exceed http.max_page_size",
            );
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be > 0");
        }
        self.database_kind()?;
        let tls = if self.mqtt.url.is_empty() {
            false
        } else {
            parse_mqtt_url(&self.mqtt.url)?.0
        };
        let m = &self.mqtt;
        if m.cert_file.is_some() != m.key_file.is_some() {
            return invalid(
                "mqtt.cert_file",
                "a client certificate needs its key and vice versa (GRID_MQTT_CERT and GRID_MQTT_KEY)",
            );
        }
        if m.cert_file.is_some() && m.ca_file.is_none() {
            return invalid(
                "mqtt.ca_file",
                "a client certificate needs the broker's CA (GRID_MQTT_CA)",
            );
        }
        if !tls && (m.ca_file.is_some() || m.cert_file.is_some()) {
            return invalid(
                "mqtt.ca_file",
                "TLS files are set but MQTT_URL is not mqtts://host:port",
            );
        }
        if m.share_group.is_empty()
            || m.share_group.len() > 64
            || !m
                .share_group
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid(
                "mqtt.share_group",
                "must be 1-64 of A-Z a-z 0-9 - _ (GRID_MQTT_SHARE_GROUP)",
            );
        }
        if m.claim_lease_ms == 0 || m.retry_interval_ms == 0 {
            return invalid(
                "mqtt.claim_lease_ms",
                "the claim lease and the retry interval must be > 0",
            );
        }
        if !(1..=1_000_000).contains(&m.inbound_concurrency) {
            return invalid(
                "mqtt.inbound_concurrency",
                "must be in 1..=1000000 (GRID_MQTT_INBOUND_CONCURRENCY)",
            );
        }
        if m.retry_backoff_base_ms == 0 || m.retry_backoff_base_ms > m.retry_backoff_max_ms {
            return invalid(
                "mqtt.retry_backoff_base_ms",
                "must be in (0, mqtt.retry_backoff_max_ms]",
            );
        }
        if let Some(secret) = &self.auth.secret
            && secret.len() < 32
        {
            return invalid("auth.secret", "GRID_JWT_SECRET must be at least 32 bytes");
        }
        if self.auth.default_ttl_s == 0 || self.auth.default_ttl_s > self.auth.max_ttl_s {
            return invalid("auth.default_ttl_s", "must be in (0, auth.max_ttl_s]");
        }
        if matches!(
            self.auth.algorithm,
            JwtAlgorithm::RS256 | JwtAlgorithm::EdDSA
        ) && self.auth.public_key_file.is_none()
        {
            return invalid(
                "auth.public_key_file",
                "RS256 and EdDSA need a PEM public key file (GRID_JWT_PUBLIC_KEY_FILE)",
            );
        }
        Ok(())
    }

    /// Which database `database.url` names (and the file for SQLite).
    pub fn database_kind(&self) -> Result<DatabaseKind, ConfigError> {
        database_kind(&self.database.url)
    }

    /// The external broker, when `mqtt.url` is set: `(tls, host, port)`.
    pub fn mqtt_broker(&self) -> Result<Option<(bool, String, u16)>, ConfigError> {
        if self.mqtt.url.is_empty() {
            Ok(None)
        } else {
            parse_mqtt_url(&self.mqtt.url).map(Some)
        }
    }

    /// Where the generated HS256 key lives when no secret is configured: `auth.key_file`, else
    /// `<sqlite path>.jwt-key` beside the SQLite database; `None` for PostgreSQL without a key file.
    pub fn generated_key_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.auth.key_file {
            return Some(p.clone());
        }
        match self.database_kind() {
            Ok(DatabaseKind::Sqlite(path)) => {
                let mut name = path.as_os_str().to_owned();
                name.push(".jwt-key");
                Some(PathBuf::from(name))
            }
            _ => None,
        }
    }
}

/// Parses `sqlite://PATH` / `sqlite:PATH` / `postgres://…` / `postgresql://…`.
pub fn database_kind(url: &str) -> Result<DatabaseKind, ConfigError> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(ConfigError::Invalid {
                key: "database.url",
                reason: format!("{url:?} names no file (expected sqlite://PATH)"),
            });
        }
        Ok(DatabaseKind::Sqlite(PathBuf::from(path)))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DatabaseKind::Postgres)
    } else {
        Err(ConfigError::Invalid {
            key: "database.url",
            reason: format!(
                "{:?} is neither postgres://… nor sqlite://PATH",
                url.chars().take(80).collect::<String>()
            ),
        })
    }
}

/// Parses `mqtt://host:port` / `mqtts://host:port` into `(tls, host, port)`.
pub fn parse_mqtt_url(url: &str) -> Result<(bool, String, u16), ConfigError> {
    let bad = |reason: &str| ConfigError::Invalid {
        key: "mqtt.url",
        reason: format!("{url:?}: {reason} (expected mqtt://host:port or mqtts://host:port)"),
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad("unknown scheme"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err(bad("bad host"));
    }
    Ok((tls, host.to_owned(), port))
}

fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_matches_the_documented_defaults() {
        let c = Config::default();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.mqtt.listen.to_string(), "127.0.0.1:1884");
        assert_eq!(c.database.url, "sqlite://grid.db");
        assert_eq!(c.mqtt_broker().unwrap(), None);
        assert_eq!(
            c.generated_key_path().unwrap(),
            PathBuf::from("grid.db.jwt-key")
        );
    }

    #[test]
    fn partial_files_layer_over_the_default_and_bad_keys_are_named() {
        let c = Config::default()
            .merge_toml_str("[http]\nlisten = \"0.0.0.0:9000\"\n", "test")
            .unwrap();
        assert_eq!(c.http.listen.port(), 9000);
        assert_eq!(c.http.max_page_size, 500);
        let err = Config::default()
            .merge_toml_str("[http]\nbogus = 1\n", "test")
            .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Config::default()
            .merge_toml_str("[database]\nurl = \"mysql://x\"\n", "test")
            .unwrap_err();
        assert!(err.to_string().contains("database.url"), "{err}");
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_mqtt_url("mqtts://broker.example:8883").unwrap(),
            (true, "broker.example".into(), 8883)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://localhost").unwrap(),
            (false, "localhost".into(), 1883)
        );
        assert!(parse_mqtt_url("http://x:1").is_err());
        assert!(parse_mqtt_url("mqtt://x:99999").is_err());
        assert_eq!(
            database_kind("sqlite:///tmp/a.db?mode=rwc").unwrap(),
            DatabaseKind::Sqlite("/tmp/a.db".into())
        );
        assert_eq!(
            database_kind("postgres://root@127.0.0.1/test").unwrap(),
            DatabaseKind::Postgres
        );
        assert!(database_kind("sqlite://").is_err());
    }
}
