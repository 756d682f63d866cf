//! The agent's typed configuration: the documented default TOML, a file layered on top of it, then
//! `GRID_AGENT_<SECTION>_<KEY>` environment variables, then validation naming the offending key.
//!
//! The library never reads files or the environment by itself: [`Config::load`] takes the file's
//! text and the variables as arguments, so tests and the fleet demo build configs in memory.

use crate::error::{Error, Result};
use grid_core::{BatteryParams, BatterySpec, DeviceId};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The documented default configuration file (what `grid-agent --print-default-config` prints).
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

/// The prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "GRID_AGENT_";

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This battery's device id (the `{device}` of its topics).
    pub device_id: String,
    /// Broker connection.
    pub mqtt: MqttConfig,
    /// Which hardware driver, and its parameters.
    pub hardware: HardwareConfig,
    /// The battery's envelope.
    pub battery: BatteryParams,
    /// The grid meter the self-consumption fallback follows.
    pub meter: MeterConfig,
    /// Behaviour of the agent itself.
    pub agent: AgentSection,
}

/// `[mqtt]`: the broker connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Client id; empty = `grid-agent-<device_id>`.
    pub client_id: String,
    /// CA certificate (PEM) for `mqtts://`.
    pub ca_file: String,
    /// Client certificate (PEM) for mTLS.
    pub cert_file: String,
    /// Client private key (PEM) for mTLS.
    pub key_file: String,
    /// Username (empty = none).
    pub username: String,
    /// Password.
    pub password: String,
    /// Keep-alive interval in seconds.
    pub keepalive_s: u64,
    /// First reconnect delay bound in milliseconds.
    pub reconnect_min_ms: u64,
    /// Largest reconnect delay bound in milliseconds.
    pub reconnect_max_ms: u64,
}

/// The battery drivers an agent can be built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    /// grid-hal's `SimBattery`.
    Sim,
    /// A Smart Battery (SBS) over SMBus.
    SbsI2c,
    /// An INA226 power monitor.
    Ina226,
    /// A SunSpec inverter over Modbus TCP (feature `modbus`).
    SunspecModbus,
}

impl Driver {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Sim => "sim",
            Driver::SbsI2c => "sbs-i2c",
            Driver::Ina226 => "ina226",
            Driver::SunspecModbus => "sunspec-modbus",
        }
    }
}

/// `[hardware]`: the driver and its parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareConfig {
    /// The driver.
    pub driver: Driver,
    /// sim: random seed.
    pub sim_seed: u64,
    /// sim: state of charge at start, a fraction in [0, 1].
    pub sim_initial_soc: f64,
    /// I2C bus number (`/dev/i2c-N`).
    pub i2c_bus: u8,
    /// 7-bit I2C address.
    pub i2c_address: u8,
    /// ina226: shunt resistance in ohms.
    pub shunt_ohms: f64,
    /// ina226: expected maximum current in A.
    pub max_current_a: f64,
    /// sunspec-modbus: `host:port`.
    pub modbus_address: String,
    /// sunspec-modbus: unit id.
    pub modbus_unit_id: u8,
}

/// Where grid-meter readings (kW at the site's grid connection point, positive = importing) come
/// from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeterSource {
    /// No meter: the self-consumption fallback is not available.
    None,
    /// A simulated household with PV around the battery (grid-hal's `SimSite`, seeded).
    Sim,
    /// A SunSpec meter model (201–204 or 211–214), in the inverter's model chain or at the
    /// Modbus unit `meter.sunspec_unit_id`, read by the `sunspec-modbus` driver on its one
    /// connection.
    Sunspec,
}

impl MeterSource {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            MeterSource::None => "none",
            MeterSource::Sim => "sim",
            MeterSource::Sunspec => "sunspec",
        }
    }
}

/// `[meter]`: the grid meter. Powers in kW.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// Where readings come from.
    pub source: MeterSource,
    /// Readings older than this (seconds) are not used.
    pub max_age_s: u64,
    /// sim: seed of the load noise and the clouds.
    pub sim_seed: u64,
    /// sim: load that is always there, kW.
    pub sim_base_load_kw: f64,
    /// sim: the morning bump (07:30 UTC), kW.
    pub sim_morning_peak_kw: f64,
    /// sim: the evening bump (19:00 UTC), kW.
    pub sim_evening_peak_kw: f64,
    /// sim: standard deviation of the per-minute load noise, kW.
    pub sim_load_noise_kw: f64,
    /// sim: PV output at 12:00 UTC under a clear sky, kW.
    pub sim_pv_peak_kw: f64,
    /// sim: how much clouds can take away from the PV output, in [0, 1].
    pub sim_cloudiness: f64,
    /// sunspec: the meter reports export (feed-in) as positive power.
    pub sunspec_export_positive: bool,
    /// sunspec: the Modbus unit id that serves the meter behind the inverter's address (e.g. 240
    /// for a Fronius smart meter); 0 reads the meter model in the inverter's own chain.
    pub sunspec_unit_id: u8,
}

impl MeterConfig {
    /// The simulated site of `source = "sim"`.
    pub fn site_config(&self) -> grid_hal::SiteConfig {
        grid_hal::SiteConfig {
            seed: self.sim_seed,
            base_load_kw: self.sim_base_load_kw,
            morning_peak_kw: self.sim_morning_peak_kw,
            evening_peak_kw: self.sim_evening_peak_kw,
            load_noise_kw: self.sim_load_noise_kw,
            pv_peak_kw: self.sim_pv_peak_kw,
            cloudiness: self.sim_cloudiness,
        }
    }
}

/// What the battery does when no valid schedule or command covers now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FallbackMode {
    /// Zero power.
    Idle,
    /// Follow the grid meter so the site imports nothing (idle when no meter reading arrives).
    SelfConsumption,
}

/// `[agent]`: the agent's own behaviour.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// SQLite database path.
    pub store_path: PathBuf,
    /// Tick (sampling) interval in milliseconds.
    pub tick_interval_ms: u64,
    /// Telemetry batch interval in seconds.
    pub telemetry_interval_s: u64,
    /// Bound of the offline telemetry buffer, in messages.
    pub telemetry_buffer_max: u32,
    /// Fallback mode.
    pub fallback: FallbackMode,
    /// Reversion timeout in seconds.
    pub reversion_timeout_s: u64,
    /// Hex Ed25519 public key; empty = no signature verification.
    pub signing_public_key: String,
    /// Largest accepted payload in bytes.
    pub max_payload_bytes: usize,
    /// Prometheus listen address; empty = off.
    pub metrics_listen: String,
    /// `json` or `text`.
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Whether the MQTT URL asks for TLS, with the host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// `mqtts://`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Config {
    /// The default configuration (the embedded [`DEFAULT_CONFIG`]).
    pub fn default_config() -> Result<Self> {
        Self::load(None, std::iter::empty::<(String, String)>())
    }

    /// Layers `file` (TOML text, may be partial) over the defaults, then every `GRID_AGENT_*`
    /// variable of `env`, and validates the result. Errors name the key (`mqtt.url`) or the
    /// variable (`GRID_AGENT_MQTT_URL`).
    pub fn load<K, V>(file: Option<&str>, env: impl IntoIterator<Item = (K, V)>) -> Result<Self>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut table: toml::Table =
            DEFAULT_CONFIG
                .parse()
                .map_err(|e: toml::de::Error| Error::Config {
                    key: "<default>".into(),
                    reason: e.to_string(),
                })?;
        if let Some(text) = file {
            let user: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Config {
                key: "<file>".into(),
                reason: e.message().to_string(),
            })?;
            merge(&mut table, user, "")?;
        }
        for (k, v) in env {
            apply_env(&mut table, k.as_ref(), v.as_ref())?;
        }
        let config: Config = match toml::Value::Table(table.clone()).try_into() {
            Ok(c) => c,
            Err(e) => return Err(blame(&table, e)),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that deserialization cannot: ids, URL, ranges, the battery spec, the
    /// driver being compiled in, the signing key. Does not touch files.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Error::Config {
            key: key.into(),
            reason,
        };
        DeviceId::new(self.device_id.clone()).map_err(|e| bad("device_id", e.to_string()))?;
        let address = self.broker()?;
        let any_tls_file = !(self.mqtt.ca_file.is_empty()
            && self.mqtt.cert_file.is_empty()
            && self.mqtt.key_file.is_empty());
        if !address.tls && any_tls_file {
            return Err(bad(
                "mqtt.ca_file",
                "TLS files are set but mqtt.url is not mqtts://".into(),
            ));
        }
        if self.mqtt.cert_file.is_empty() != self.mqtt.key_file.is_empty() {
            return Err(bad(
                "mqtt.key_file",
                "cert_file and key_file must be set together (mTLS)".into(),
            ));
        }
        // The shell presents a client certificate only with an explicit CA (as the server does):
        // with the system roots it would connect without one, i.e. mTLS silently off.
        if !self.mqtt.cert_file.is_empty() && self.mqtt.ca_file.is_empty() {
            return Err(bad(
                "mqtt.ca_file",
                "a client certificate (cert_file/key_file) needs the broker's CA in ca_file".into(),
            ));
        }
        if !(5..=3600).contains(&self.mqtt.keepalive_s) {
            return Err(bad("mqtt.keepalive_s", "expected 5..=3600 seconds".into()));
        }
        if self.mqtt.reconnect_min_ms == 0
            || self.mqtt.reconnect_min_ms > self.mqtt.reconnect_max_ms
        {
            return Err(bad(
                "mqtt.reconnect_min_ms",
                "expected 0 < reconnect_min_ms <= reconnect_max_ms".into(),
            ));
        }
        let h = &self.hardware;
        if !(0.0..=1.0).contains(&h.sim_initial_soc) {
            return Err(bad(
                "hardware.sim_initial_soc",
                format!("{} is not a fraction in [0, 1]", h.sim_initial_soc),
            ));
        }
        if h.i2c_address > 0x7f {
            return Err(bad(
                "hardware.i2c_address",
                "a 7-bit address is at most 127".into(),
            ));
        }
        match h.driver {
            Driver::Sim => {}
            Driver::SbsI2c | Driver::Ina226 if !cfg!(feature = "rpi") => {
                return Err(bad(
                    "hardware.driver",
                    format!(
                        "driver {:?} needs an I2C bus: this grid-agent was built without the `rpi` feature",
                        h.driver.as_str()
                    ),
                ));
            }
            Driver::SunspecModbus if !cfg!(feature = "modbus") => {
                return Err(bad(
                    "hardware.driver",
                    "driver \"sunspec-modbus\" is not compiled in: rebuild grid-agent with `--features modbus`".into(),
                ));
            }
            _ => {}
        }
        if h.driver == Driver::SunspecModbus
            && h.modbus_address.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(bad(
                "hardware.modbus_address",
                format!("{:?} is not host:port", h.modbus_address),
            ));
        }
        if h.driver == Driver::SunspecModbus && self.agent.reversion_timeout_s > 65_535 {
            return Err(bad(
                "agent.reversion_timeout_s",
                "the sunspec-modbus driver writes it to the inverter's InOutWRte_RvrtTms: at most 65535 s".into(),
            ));
        }
        BatterySpec::new(self.battery).map_err(|e| {
            let text = e.to_string();
            let key = text.split(':').next().unwrap_or("battery").to_string();
            let key = if key.starts_with("battery.") {
                key
            } else {
                "battery".into()
            };
            bad(&key, text)
        })?;
        let a = &self.agent;
        if !(10..=600_000).contains(&a.tick_interval_ms) {
            return Err(bad(
                "agent.tick_interval_ms",
                "expected 10..=600000 ms".into(),
            ));
        }
        if !(1..=86_400).contains(&a.telemetry_interval_s) {
            return Err(bad(
                "agent.telemetry_interval_s",
                "expected 1..=86400 s".into(),
            ));
        }
        if a.telemetry_buffer_max == 0 {
            return Err(bad("agent.telemetry_buffer_max", "expected >= 1".into()));
        }
        if !(1..=86_400).contains(&a.reversion_timeout_s) {
            return Err(bad(
                "agent.reversion_timeout_s",
                "expected 1..=86400 s".into(),
            ));
        }
        if !(256..=16 * 1024 * 1024).contains(&a.max_payload_bytes) {
            return Err(bad(
                "agent.max_payload_bytes",
                "expected 256..=16777216 bytes".into(),
            ));
        }
        if a.store_path.as_os_str().is_empty() {
            return Err(bad("agent.store_path", "must not be empty".into()));
        }
        self.validate_meter()?;
        self.signing_key()?;
        self.metrics_addr()?;
        Ok(())
    }

    fn validate_meter(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Error::Config {
            key: key.into(),
            reason,
        };
        let m = &self.meter;
        if !(1..=3600).contains(&m.max_age_s) {
            return Err(bad("meter.max_age_s", "expected 1..=3600 s".into()));
        }
        if m.max_age_s * 1000 <= self.agent.tick_interval_ms {
            return Err(bad(
                "meter.max_age_s",
                format!(
                    "{} s does not exceed agent.tick_interval_ms ({} ms): every reading would be stale",
                    m.max_age_s, self.agent.tick_interval_ms
                ),
            ));
        }
        if let Err(grid_hal::Error::InvalidConfig {
            field,
            value,
            expected,
        }) = grid_hal::SimSite::new(m.site_config())
        {
            let key = format!("meter.sim_{}", field.trim_start_matches("site."));
            return Err(bad(&key, format!("{value}: expected {expected}")));
        }
        if m.source == MeterSource::Sunspec && self.hardware.driver != Driver::SunspecModbus {
            return Err(bad(
                "meter.source",
                "\"sunspec\" reads the meter model of the SunSpec inverter: it needs hardware.driver = \"sunspec-modbus\"".into(),
            ));
        }
        if m.source == MeterSource::None && self.agent.fallback == FallbackMode::SelfConsumption {
            return Err(bad(
                "meter.source",
                "agent.fallback = \"self-consumption\" follows a grid meter: set meter.source to \"sim\" or \"sunspec\" (or use the \"idle\" fallback)".into(),
            ));
        }
        Ok(())
    }

    /// How old a grid-meter reading may be.
    pub fn meter_max_age(&self) -> Duration {
        Duration::from_secs(self.meter.max_age_s)
    }

    /// The validated device id.
    pub fn device(&self) -> Result<DeviceId> {
        DeviceId::new(self.device_id.clone()).map_err(|e| Error::Config {
            key: "device_id".into(),
            reason: e.to_string(),
        })
    }

    /// The validated battery spec.
    pub fn battery_spec(&self) -> Result<BatterySpec> {
        BatterySpec::new(self.battery).map_err(|e| Error::Config {
            key: "battery".into(),
            reason: e.to_string(),
        })
    }

    /// The broker address parsed from `mqtt.url`.
    pub fn broker(&self) -> Result<BrokerAddress> {
        parse_broker_url(&self.mqtt.url).map_err(|reason| Error::Config {
            key: "mqtt.url".into(),
            reason,
        })
    }

    /// The MQTT client id.
    pub fn client_id(&self) -> String {
        if self.mqtt.client_id.is_empty() {
            format!("grid-agent-{}", self.device_id)
        } else {
            self.mqtt.client_id.clone()
        }
    }

    /// The reversion timeout.
    pub fn reversion_timeout(&self) -> Duration {
        Duration::from_secs(self.agent.reversion_timeout_s)
    }

    /// The signature verification key, when configured (32 bytes from 64 hex characters).
    pub fn signing_key(&self) -> Result<Option<[u8; 32]>> {
        let hex = self.agent.signing_public_key.trim();
        if hex.is_empty() {
            return Ok(None);
        }
        decode_hex32(hex).map(Some).ok_or_else(|| Error::Config {
            key: "agent.signing_public_key".into(),
            reason: "expected 64 hexadecimal characters (an Ed25519 public key)".into(),
        })
    }

    /// The metrics listen address, when configured.
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>> {
        let s = self.agent.metrics_listen.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|_| Error::Config {
            key: "agent.metrics_listen".into(),
            reason: format!("{s:?} is not an address like 127.0.0.1:9187"),
        })
    }
}

/// Decodes 64 hex characters into 32 bytes.
pub fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Parses `mqtt://host:port` / `mqtts://host:port` (port defaults to 1883 / 8883).
pub fn parse_broker_url(url: &str) -> std::result::Result<BrokerAddress, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(format!(
            "{url:?}: expected mqtt://host:port or mqtts://host:port"
        ));
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(format!(
            "{url:?}: expected mqtt://host:port or mqtts://host:port"
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: port {p:?} is not a number in 1..=65535"))?,
        ),
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    if port == 0 {
        return Err(format!("{url:?}: port 0 is not allowed"));
    }
    Ok(BrokerAddress {
        tls,
        host: host.to_string(),
        port,
    })
}

/// Finds the key whose value makes deserialization fail: each key of `merged` is tried alone
/// on top of the defaults.
fn blame(merged: &toml::Table, err: toml::de::Error) -> Error {
    let whole = Error::Config {
        key: "<config>".into(),
        reason: err.message().to_string(),
    };
    let Ok(defaults) = DEFAULT_CONFIG.parse::<toml::Table>() else {
        return whole;
    };
    let try_one = |path: &[&str], value: &toml::Value| -> Option<String> {
        let mut t = defaults.clone();
        let slot = match path {
            [k] => {
                t.insert((*k).to_string(), value.clone());
                Some(())
            }
            [section, k] => match t.get_mut(*section) {
                Some(toml::Value::Table(sub)) => {
                    sub.insert((*k).to_string(), value.clone());
                    Some(())
                }
                _ => None,
            },
            _ => None,
        };
        slot?;
        toml::Value::Table(t)
            .try_into::<Config>()
            .err()
            .map(|e| e.message().to_string())
    };
    for (k, v) in merged {
        match v {
            toml::Value::Table(sub) => {
                for (sk, sv) in sub {
                    if let Some(reason) = try_one(&[k, sk], sv) {
                        return Error::Config {
                            key: format!("{k}.{sk}"),
                            reason,
                        };
                    }
                }
            }
            v => {
                if let Some(reason) = try_one(&[k], v) {
                    return Error::Config {
                        key: k.clone(),
                        reason,
                    };
                }
            }
        }
    }
    whole
}

/// Merges `user` into `base`, refusing keys the default does not know (so typos name the key).
fn merge(base: &mut toml::Table, user: toml::Table, path: &str) -> Result<()> {
    for (k, v) in user {
        let key = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(u)) => merge(b, u, &key)?,
            (Some(toml::Value::Table(_)), _) => {
                return Err(Error::Config {
                    key,
                    reason: "expected a table".into(),
                });
            }
            (Some(_), toml::Value::Table(_)) => {
                return Err(Error::Config {
                    key,
                    reason: "expected a value, found a table".into(),
                });
            }
            (_, v) => {
                if base.get(&k).is_none() && !is_optional_key(&key) {
                    return Err(Error::Config {
                        key,
                        reason: "unknown key".into(),
                    });
                }
                base.insert(k, v);
            }
        }
    }
    Ok(())
}

/// Keys that are valid but absent from the default file (commented out there).
fn is_optional_key(key: &str) -> bool {
    matches!(
        key,
        "battery.ramp_limit_kw_per_min" | "battery.min_temperature_c" | "battery.max_temperature_c"
    )
}

/// Applies one environment variable if it starts with [`ENV_PREFIX`].
fn apply_env(table: &mut toml::Table, name: &str, raw: &str) -> Result<()> {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return Ok(());
    };
    let lower = rest.to_ascii_lowercase();
    let unknown = || Error::Config {
        key: name.into(),
        reason: "no configuration key has this name".into(),
    };
    // A section prefix (`mqtt_`) wins over a top-level key with the same start.
    let sections: Vec<String> = table
        .iter()
        .filter(|(_, v)| v.is_table())
        .map(|(k, _)| k.clone())
        .collect();
    let (slot, key_path): (&mut toml::Table, String) = match sections
        .iter()
        .find(|s| lower.starts_with(&format!("{s}_")))
    {
        Some(section) => {
            let key = lower[section.len() + 1..].to_string();
            let path = format!("{section}.{key}");
            let Some(toml::Value::Table(t)) = table.get_mut(section.as_str()) else {
                return Err(unknown());
            };
            if !t.contains_key(&key) && !is_optional_key(&path) {
                return Err(unknown());
            }
            (t, key)
        }
        None => {
            if table.get(&lower).is_none_or(|v| v.is_table()) {
                return Err(unknown());
            }
            (table, lower.clone())
        }
    };
    let bad = |expected: &str| Error::Config {
        key: name.into(),
        reason: format!("{raw:?} is not {expected}"),
    };
    let value = match slot.get(&key_path) {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?)
        }
        Some(toml::Value::Float(_)) | None => {
            toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
        }
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(raw.trim().parse().map_err(|_| bad("true or false"))?)
        }
        Some(_) => return Err(unknown()),
    };
    slot.insert(key_path, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, env: &[(&str, &str)]) -> Result<Config> {
        Config::load(Some(file), env.iter().copied())
    }

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::default_config().unwrap();
        assert_eq!(c.device_id, "bat-0001");
        assert_eq!(c.hardware.driver, Driver::Sim);
        assert_eq!(c.agent.fallback, FallbackMode::Idle);
        assert_eq!(c.client_id(), "grid-agent-bat-0001");
    }

    #[test]
    fn file_then_env_override_defaults() {
        let c = load(
            "device_id = \"bat-7\"\n[mqtt]\nurl = \"mqtt://broker:1884\"\n[battery]\nramp_limit_kw_per_min = 30.0\n",
            &[
                ("GRID_AGENT_MQTT_URL", "mqtts://example.org"),
                ("GRID_AGENT_MQTT_CA_FILE", "/etc/ca.pem"),
                ("GRID_AGENT_AGENT_TELEMETRY_INTERVAL_S", "15"),
                ("GRID_AGENT_BATTERY_MAX_CHARGE_KW", "3.5"),
                ("GRID_AGENT_DEVICE_ID", "123"),
                ("PATH", "/usr/bin"),
            ],
        )
        .unwrap();
        assert_eq!(c.device_id, "123");
        assert_eq!(c.broker().unwrap().port, 8883);
        assert!(c.broker().unwrap().tls);
        assert_eq!(c.agent.telemetry_interval_s, 15);
        assert_eq!(c.battery.max_charge_kw, 3.5);
        assert_eq!(c.battery.ramp_limit_kw_per_min, Some(30.0));
    }

    #[test]
    fn errors_name_the_key() {
        let key = |r: Result<Config>| match r {
            Err(Error::Config { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(key(load("[mqtt]\nurl = \"http://x\"\n", &[])), "mqtt.url");
        assert_eq!(key(load("[mqtt]\nurll = \"mqtt://x\"\n", &[])), "mqtt.urll");
        assert_eq!(
            key(load("[battery]\nmax_energy_kwh = 99.0\n", &[])),
            "battery.max_energy_kwh"
        );
        assert_eq!(
            key(load("", &[("GRID_AGENT_AGENT_TICK_INTERVAL_MS", "fast")])),
            "GRID_AGENT_AGENT_TICK_INTERVAL_MS"
        );
        assert_eq!(
            key(load("", &[("GRID_AGENT_MQTT_NOPE", "1")])),
            "GRID_AGENT_MQTT_NOPE"
        );
        assert_eq!(
            key(load("[agent]\nsigning_public_key = \"abc\"\n", &[])),
            "agent.signing_public_key"
        );
        assert_eq!(
            key(load("[hardware]\nsim_initial_soc = 1.5\n", &[])),
            "hardware.sim_initial_soc"
        );
        assert_eq!(key(load("device_id = \"a b\"\n", &[])), "device_id");
        assert_eq!(
            key(load("[agent]\nfallback = \"maybe\"\n", &[])),
            "agent.fallback"
        );
        assert_eq!(
            key(load("[mqtt]\nkeepalive_s = \"soon\"\n", &[])),
            "mqtt.keepalive_s"
        );
        assert_eq!(
            key(load(
                "[mqtt]\nurl = \"mqtts://b.example\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n",
                &[]
            )),
            "mqtt.ca_file"
        );
    }

    #[test]
    fn the_meter_section_is_validated_and_env_overridable() {
        let key = |r: Result<Config>| match r {
            Err(Error::Config { key, reason }) => format!("{key}: {reason}"),
            other => panic!("expected a config error, got {other:?}"),
        };
        let e = key(load("[agent]\nfallback = \"self-consumption\"\n", &[]));
        assert!(e.starts_with("meter.source: "), "{e}");
        assert!(e.contains("self-consumption"), "{e}");
        let e = key(load("[meter]\nsource = \"sunspec\"\n", &[]));
        assert!(e.starts_with("meter.source: "), "{e}");
        assert!(e.contains("sunspec-modbus"), "{e}");
        let e = key(load("[meter]\nsim_cloudiness = 2.0\n", &[]));
        assert!(e.starts_with("meter.sim_cloudiness: "), "{e}");
        let e = key(load(
            "[meter]\nmax_age_s = 1\n[agent]\ntick_interval_ms = 1000\n",
            &[],
        ));
        assert!(e.starts_with("meter.max_age_s: "), "{e}");
        let e = key(load("[meter]\nsource = \"pyranometer\"\n", &[]));
        assert!(e.starts_with("meter.source: "), "{e}");
        let e = key(load("", &[("GRID_AGENT_METER_SIM_PV_PEAK_KW", "lots")]));
        assert!(e.starts_with("GRID_AGENT_METER_SIM_PV_PEAK_KW: "), "{e}");

        let c = load(
            "",
            &[
                ("GRID_AGENT_AGENT_FALLBACK", "self-consumption"),
                ("GRID_AGENT_METER_SOURCE", "sim"),
                ("GRID_AGENT_METER_SIM_PV_PEAK_KW", "6.5"),
                ("GRID_AGENT_METER_SIM_SEED", "3"),
                ("GRID_AGENT_METER_MAX_AGE_S", "30"),
            ],
        )
        .unwrap();
        assert_eq!(c.agent.fallback, FallbackMode::SelfConsumption);
        assert_eq!(c.meter.source, MeterSource::Sim);
        assert_eq!(c.meter.site_config().pv_peak_kw, 6.5);
        assert_eq!(c.meter.site_config().seed, 3);
        assert_eq!(c.meter_max_age(), Duration::from_secs(30));
        let d = Config::default_config().unwrap();
        assert_eq!(d.meter.source, MeterSource::None);
    }

    #[test]
    fn drivers_not_compiled_in_are_a_config_error() {
        if cfg!(feature = "modbus") {
            return;
        }
        let err = load("[hardware]\ndriver = \"sunspec-modbus\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("--features modbus"), "{err}");
        assert!(err.to_string().contains("hardware.driver"), "{err}");
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1883").unwrap(),
            BrokerAddress {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1883
            }
        );
        assert_eq!(parse_broker_url("mqtts://b.example").unwrap().port, 8883);
        assert!(parse_broker_url("tcp://x:1").is_err());
        assert!(parse_broker_url("mqtt://x:99999").is_err());
        assert!(parse_broker_url("mqtt://").is_err());
    }
}
