//! Version 1 of the wire protocol: the [`Envelope`] every message travels in and its [`Body`]s.
//!
//! These are the wire types: plain fields with the names and units they have on the wire (see
//! `docs/protocol.md`). They convert to and from grid-core's model with explicit functions
//! ([`ScheduleAssign::from_schedule`], [`ScheduleAssign::to_schedule`], [`Command::from_core`],
//! [`Sample::to_core`], ...), so the wire format stays stable while the model evolves.
//!
//! A decoded [`Envelope`] has passed [`Envelope::validate`]: every number is finite, every list is
//! within the protocol's limits and consistent with the others (one setpoint per slot, validity
//! after the sending instant, ...).

mod bodies;
mod convert;

pub use bodies::*;

use crate::error::{Error, Result};
use crate::limits::MAX_CORRELATION_ID_LEN;
use grid_core::{DeviceId, Timestamp};
use std::fmt;

/// The major protocol version this module speaks (the `v` field of every message).
pub const PROTOCOL_VERSION: u64 = 1;

/// The identity of one message, chosen by its sender: 1–64 characters of `A–Z a–z 0–9 . _ -`
/// (a UUID or ULID fits). Retries resend the same id, so receivers can drop duplicates.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(String);

impl MessageId {
    /// Checks the identifier rules and builds the id.
    ///
    /// ```
    /// use grid_proto::v1::MessageId;
    /// assert!(MessageId::new("01JD6X3N5T9Z0000000000000A").is_ok());
    /// assert!(MessageId::new("a/b").is_err());
    /// ```
    pub fn new(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        check_token("id", &value, 64)?;
        Ok(Self(value))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `prefix` followed by the decimal `n`: always a valid id when `prefix` is one.
    pub(crate) fn numbered(prefix: &str, n: u64) -> Self {
        Self(format!("{prefix}{n}"))
    }
}

impl TryFrom<String> for MessageId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Self::new(value)
    }
}

impl From<MessageId> for String {
    fn from(value: MessageId) -> String {
        value.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for MessageId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// Checks an identifier: 1..=max characters of `A–Z a–z 0–9 . _ -`, not starting with `.`/`-`.
pub(crate) fn check_token(field: &str, value: &str, max: usize) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !value.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{:?} must be 1-{max} characters of A-Z a-z 0-9 . _ - not starting with . or -",
                value.chars().take(80).collect::<String>()
            ),
        ))
    }
}

/// An Ed25519 signature (64 bytes; lowercase hex on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Signature {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid("sig", "must be 128 lowercase hex digits");
        let bytes = s.as_bytes();
        if bytes.len() != 128 {
            return Err(bad());
        }
        let mut out = [0u8; 64];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]).ok_or_else(bad)?;
            let lo = hex_digit(pair[1]).ok_or_else(bad)?;
            out[i] = hi << 4 | lo;
        }
        Ok(Signature(out))
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl serde::Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a message carries; the `kind` field on the wire names the variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Server → device: a schedule to store and follow (`schedule_assign`, signable).
    ScheduleAssign(ScheduleAssign),
    /// Server → device: an immediate command (`command`, signable).
    Command(Command),
    /// Device → server: where a schedule or command stands on the device (`ack`).
    Ack(Ack),
    /// Device → server: a batch of measurements (`telemetry`).
    Telemetry(Telemetry),
    /// Device → server, retained: online/offline and what the device runs (`status`).
    Status(Status),
    /// Device → server, on every connect: what the device holds (`hello`).
    Hello(Hello),
}

/// The name of a [`Body`] variant, as in the `kind` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyKind {
    /// `schedule_assign`
    ScheduleAssign,
    /// `command`
    Command,
    /// `ack`
    Ack,
    /// `telemetry`
    Telemetry,
    /// `status`
    Status,
    /// `hello`
    Hello,
}

impl BodyKind {
    /// Every kind.
    pub const ALL: [BodyKind; 6] = [
        Self::ScheduleAssign,
        Self::Command,
        Self::Ack,
        Self::Telemetry,
        Self::Status,
        Self::Hello,
    ];

    /// The name in the `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScheduleAssign => "schedule_assign",
            Self::Command => "command",
            Self::Ack => "ack",
            Self::Telemetry => "telemetry",
            Self::Status => "status",
            Self::Hello => "hello",
        }
    }

    /// Parses [`BodyKind::as_str`]'s names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether the server signs bodies of this kind (schedules and commands).
    pub fn is_signable(self) -> bool {
        matches!(self, Self::ScheduleAssign | Self::Command)
    }
}

impl fmt::Display for BodyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Body {
    /// The variant's kind.
    pub fn kind(&self) -> BodyKind {
        match self {
            Body::ScheduleAssign(_) => BodyKind::ScheduleAssign,
            Body::Command(_) => BodyKind::Command,
            Body::Ack(_) => BodyKind::Ack,
            Body::Telemetry(_) => BodyKind::Telemetry,
            Body::Status(_) => BodyKind::Status,
            Body::Hello(_) => BodyKind::Hello,
        }
    }
}

/// One message: who it is for or from, when it was sent, why, and what it carries.
///
/// On the wire (JSON or CBOR) it is one map with the fields `v`, `id`, `device`, `sent_at`,
/// `correlation_id` (optional), `kind`, `body` and `sig` (optional).
///
/// ```
/// use grid_proto::{Codec, v1::*};
/// use grid_core::{DeviceId, ExecutionState};
/// let ack = Envelope::new(
///     MessageId::new("m-2")?,
///     DeviceId::new("bat-1")?,
///     "2026-11-27T00:00:01Z".parse()?,
///     Body::Ack(Ack::for_message(MessageId::new("m-1")?, ExecutionState::Accepted)),
/// );
/// let bytes = Codec::Json.encode(&ack)?;
/// assert!(bytes.starts_with(br#"{"v":1,"id":"m-2","device":"bat-1""#));
/// assert_eq!(Codec::Json.decode(&bytes)?, ack);
/// assert_eq!(grid_proto::decode(&Codec::Cbor.encode(&ack)?)?, ack); // the codec is sniffed
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The message id (retries reuse it).
    pub id: MessageId,
    /// The device the message is for (downlink) or from (uplink); must match the topic.
    pub device: DeviceId,
    /// When the sender created the message (UTC; RFC 3339 on the wire).
    pub sent_at: Timestamp,
    /// The id of the request that caused the message (e.g. the API request id), propagated for
    /// tracing; 1–128 printable ASCII characters.
    pub correlation_id: Option<String>,
    /// The server's Ed25519 signature over the body (see [`crate::signature`]).
    pub signature: Option<Signature>,
    /// The payload.
    pub body: Body,
}

impl Envelope {
    /// A message without correlation id or signature.
    pub fn new(id: MessageId, device: DeviceId, sent_at: Timestamp, body: Body) -> Self {
        Self {
            id,
            device,
            sent_at,
            correlation_id: None,
            signature: None,
            body,
        }
    }

    /// The same message with a correlation id.
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// The body's kind.
    pub fn kind(&self) -> BodyKind {
        self.body.kind()
    }

    /// Checks every field against the protocol's limits and consistency rules. Decoders call it;
    /// encoders call it too, so nothing invalid is ever sent.
    pub fn validate(&self) -> Result<()> {
        if let Some(c) = &self.correlation_id
            && (c.is_empty()
                || c.len() > MAX_CORRELATION_ID_LEN
                || !c.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        {
            return Err(Error::invalid(
                "correlation_id",
                "must be 1-128 printable ASCII characters without spaces",
            ));
        }
        if self.signature.is_some() && !self.kind().is_signable() {
            return Err(Error::NotSignable {
                kind: self.kind().as_str(),
            });
        }
        match &self.body {
            Body::ScheduleAssign(b) => b.validate(self.sent_at),
            Body::Command(b) => b.validate(self.sent_at),
            Body::Ack(b) => b.validate(),
            Body::Telemetry(b) => b.validate(),
            Body::Status(b) => b.validate(),
            Body::Hello(b) => b.validate(),
        }
    }
}
