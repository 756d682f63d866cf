//! The two codecs, JSON (the default, human-readable) and CBOR (compact, RFC 8949), chosen per
//! device; both carry the same map with the same field names.
//!
//! Decoding checks the payload size before parsing, then reads the `v` field alone (an unknown
//! major version is [`Error::UnsupportedVersion`] whatever else the message holds), then the
//! `kind`, then the whole message, ignoring fields it does not know, and finally validates it
//! ([`Envelope::validate`]). Nothing in here panics on any input, and every allocation is bounded
//! by the payload size.

use crate::error::{Error, Result};
use crate::limits::{MAX_CBOR_DEPTH, MAX_PAYLOAD_BYTES};
use crate::v1::{
    Ack, Body, BodyKind, Command, Envelope, Hello, MessageId, PROTOCOL_VERSION, ScheduleAssign,
    Signature, Status, Telemetry,
};
use grid_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::fmt;

/// A payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// UTF-8 JSON (RFC 8259), one object; the default.
    #[default]
    Json,
    /// CBOR (RFC 8949), one map with the same keys as the JSON object.
    Cbor,
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Json => "json",
            Codec::Cbor => "cbor",
        })
    }
}

/// The wire map, for encoding (fields in this order; optional ones left out when absent).
#[derive(Serialize)]
struct Out<'a, B> {
    v: u64,
    id: &'a MessageId,
    device: &'a DeviceId,
    sent_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    kind: &'static str,
    body: &'a B,
    #[serde(skip_serializing_if = "Option::is_none")]
    sig: Option<&'a Signature>,
}

/// The wire map, for decoding (`kind` was read before).
#[derive(Deserialize)]
struct In<B> {
    id: MessageId,
    device: DeviceId,
    sent_at: Timestamp,
    #[serde(default)]
    correlation_id: Option<String>,
    body: B,
    #[serde(default)]
    sig: Option<Signature>,
}

/// The wire map read in one pass, for messages in the encoder's field order (`v` and `kind`
/// before `body`): the body is read straight into its type. `None` when the message is anything
/// else (another order, a duplicate or missing field, an unknown version or kind); the caller then
/// decodes it field by field, which gives the canonical result or error.
struct InOnePass(Option<Envelope>);

impl<'de> Deserialize<'de> for InOnePass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(OnePassVisitor)
    }
}

struct OnePassVisitor;

impl<'de> serde::de::Visitor<'de> for OnePassVisitor {
    type Value = InOnePass;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a grid message map")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<InOnePass, A::Error> {
        use serde::de::IgnoredAny;
        let mut v: Option<u64> = None;
        let mut kind: Option<BodyKind> = None;
        let mut id: Option<MessageId> = None;
        let mut device: Option<DeviceId> = None;
        let mut sent_at: Option<Timestamp> = None;
        let mut correlation_id: Option<Option<String>> = None;
        let mut sig: Option<Option<Signature>> = None;
        let mut body: Option<Body> = None;
        let mut usual = true;
        // Reads a field once; a repeated one sends the message down the field-by-field path.
        fn once<'de, A: serde::de::MapAccess<'de>, T: Deserialize<'de>>(
            map: &mut A,
            slot: &mut Option<T>,
            usual: &mut bool,
        ) -> std::result::Result<(), A::Error> {
            if slot.is_some() {
                *usual = false;
                map.next_value::<IgnoredAny>()?;
            } else {
                *slot = Some(map.next_value()?);
            }
            Ok(())
        }
        while let Some(key) = map.next_key::<WireField>()? {
            match key {
                WireField::V => once(&mut map, &mut v, &mut usual)?,
                WireField::Kind => {
                    let mut read: Option<KnownKind> = None;
                    once(&mut map, &mut read, &mut usual)?;
                    match read {
                        Some(KnownKind(Some(k))) if kind.is_none() => kind = Some(k),
                        _ => usual = false,
                    }
                }
                WireField::Id => once(&mut map, &mut id, &mut usual)?,
                WireField::Device => once(&mut map, &mut device, &mut usual)?,
                WireField::SentAt => once(&mut map, &mut sent_at, &mut usual)?,
                WireField::CorrelationId => once(&mut map, &mut correlation_id, &mut usual)?,
                WireField::Sig => once(&mut map, &mut sig, &mut usual)?,
                WireField::Body => match kind {
                    Some(k) if usual && body.is_none() && v == Some(PROTOCOL_VERSION) => {
                        body = Some(match k {
                            BodyKind::ScheduleAssign => Body::ScheduleAssign(map.next_value()?),
                            BodyKind::Command => Body::Command(map.next_value()?),
                            BodyKind::Ack => Body::Ack(map.next_value()?),
                            BodyKind::Telemetry => Body::Telemetry(map.next_value()?),
                            BodyKind::Status => Body::Status(map.next_value()?),
                            BodyKind::Hello => Body::Hello(map.next_value()?),
                        })
                    }
                    _ => {
                        usual = false;
                        map.next_value::<IgnoredAny>()?;
                    }
                },
                WireField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(InOnePass(match (usual, id, device, sent_at, body) {
            (true, Some(id), Some(device), Some(sent_at), Some(body)) => Some(Envelope {
                id,
                device,
                sent_at,
                correlation_id: correlation_id.flatten(),
                signature: sig.flatten(),
                body,
            }),
            _ => None,
        }))
    }
}

/// A key of the wire map (read without allocating).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum WireField {
    V,
    Kind,
    Id,
    Device,
    SentAt,
    CorrelationId,
    Sig,
    Body,
    #[serde(other)]
    Other,
}

/// The `kind` of the wire map: a known body kind, or `None` (read without allocating).
struct KnownKind(Option<BodyKind>);

impl<'de> Deserialize<'de> for KnownKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct KindVisitor;
        impl serde::de::Visitor<'_> for KindVisitor {
            type Value = KnownKind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message kind")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<KnownKind, E> {
                Ok(KnownKind(BodyKind::parse(v)))
            }
        }
        d.deserialize_str(KindVisitor)
    }
}

#[derive(Deserialize)]
struct ProbeVersion {
    v: u64,
}

#[derive(Deserialize)]
struct ProbeKind {
    kind: String,
}

#[derive(Deserialize)]
struct ProbeId {
    id: MessageId,
}

impl Codec {
    /// The MQTT 5 content type of payloads in this codec.
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Json => "application/json",
            Codec::Cbor => "application/cbor",
        }
    }

    /// Recognises the codec from the first byte: a JSON object starts with `{` (after optional
    /// whitespace), a CBOR map with a byte in `0xa0..=0xbf`.
    pub fn detect(bytes: &[u8]) -> Option<Codec> {
        match bytes
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            Some(b'{') => Some(Codec::Json),
            _ => match bytes.first() {
                Some(0xa0..=0xbf) => Some(Codec::Cbor),
                _ => None,
            },
        }
    }

    /// Encodes a message after validating it; fails with [`Error::TooLarge`] past
    /// [`MAX_PAYLOAD_BYTES`].
    pub fn encode(self, envelope: &Envelope) -> Result<Vec<u8>> {
        envelope.validate()?;
        self.encode_unchecked(envelope)
    }

    /// Encodes without validating (tests use it to build invalid messages).
    #[doc(hidden)]
    pub fn encode_unchecked(self, envelope: &Envelope) -> Result<Vec<u8>> {
        let bytes = self.encode_unbounded(envelope)?;
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::TooLarge {
                field: "payload",
                actual: bytes.len(),
                max: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Encodes without the validation and the size limit (for local storage, e.g. the
    /// tracker's saved state, where a JSON copy of a large CBOR message may exceed 64 KiB).
    pub(crate) fn encode_unbounded(self, envelope: &Envelope) -> Result<Vec<u8>> {
        match &envelope.body {
            Body::ScheduleAssign(b) => self.encode_with(envelope, b),
            Body::Command(b) => self.encode_with(envelope, b),
            Body::Ack(b) => self.encode_with(envelope, b),
            Body::Telemetry(b) => self.encode_with(envelope, b),
            Body::Status(b) => self.encode_with(envelope, b),
            Body::Hello(b) => self.encode_with(envelope, b),
        }
    }

    fn encode_with<B: Serialize>(self, e: &Envelope, body: &B) -> Result<Vec<u8>> {
        let out = Out {
            v: PROTOCOL_VERSION,
            id: &e.id,
            device: &e.device,
            sent_at: e.sent_at,
            correlation_id: e.correlation_id.as_deref(),
            kind: e.kind().as_str(),
            body,
            sig: e.signature.as_ref(),
        };
        self.to_vec(&out)
    }

    /// Serializes any value in this codec (deterministic: maps in field order, CBOR with
    /// definite lengths and the shortest lossless float width).
    pub(crate) fn to_vec<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>> {
        let malformed = |detail: String| Error::Malformed {
            codec: self,
            detail,
        };
        match self {
            Codec::Json => serde_json::to_vec(value).map_err(|e| malformed(e.to_string())),
            Codec::Cbor => {
                let mut out = Vec::new();
                ciborium::ser::into_writer(value, &mut out)
                    .map_err(|e| malformed(e.to_string()))?;
                Ok(out)
            }
        }
    }

    fn parse_slice<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        let malformed = |detail: String| Error::Malformed {
            codec: self,
            detail,
        };
        match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string())),
            Codec::Cbor => {
                let mut rest = bytes;
                let value =
                    ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_CBOR_DEPTH)
                        .map_err(|e| malformed(format!("{e:?}")))?;
                if !rest.is_empty() {
                    return Err(malformed(format!("{} trailing bytes", rest.len())));
                }
                Ok(value)
            }
        }
    }

    /// Decodes and validates a message in this codec.
    pub fn decode(self, bytes: &[u8]) -> Result<Envelope> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::TooLarge {
                field: "payload",
                actual: bytes.len(),
                max: MAX_PAYLOAD_BYTES,
            });
        }
        self.decode_unbounded(bytes)
    }

    /// Decodes and validates without the size limit (for local storage only, see
    /// [`Codec::encode_unbounded`]).
    pub(crate) fn decode_unbounded(self, bytes: &[u8]) -> Result<Envelope> {
        if bytes.is_empty() {
            return Err(Error::Malformed {
                codec: self,
                detail: "empty payload".into(),
            });
        }
        // One pass for the encoder's own field order; anything else (or any error) is decoded
        // again field by field below, which gives the canonical result or error.
        if let Ok(InOnePass(Some(envelope))) = self.parse_slice(bytes) {
            envelope.validate()?;
            return Ok(envelope);
        }
        let ProbeVersion { v } = self.parse_slice(bytes)?;
        if v != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion { version: v });
        }
        let ProbeKind { kind } = self.parse_slice(bytes)?;
        let kind = BodyKind::parse(&kind).ok_or_else(|| Error::UnknownKind {
            kind: kind.chars().take(64).collect(),
        })?;
        let envelope = match kind {
            BodyKind::ScheduleAssign => {
                self.decode_as::<ScheduleAssign>(bytes, Body::ScheduleAssign)
            }
            BodyKind::Command => self.decode_as::<Command>(bytes, Body::Command),
            BodyKind::Ack => self.decode_as::<Ack>(bytes, Body::Ack),
            BodyKind::Telemetry => self.decode_as::<Telemetry>(bytes, Body::Telemetry),
            BodyKind::Status => self.decode_as::<Status>(bytes, Body::Status),
            BodyKind::Hello => self.decode_as::<Hello>(bytes, Body::Hello),
        }?;
        envelope.validate()?;
        Ok(envelope)
    }

    fn decode_as<B: DeserializeOwned>(self, bytes: &[u8], wrap: fn(B) -> Body) -> Result<Envelope> {
        let m: In<B> = self.parse_slice(bytes)?;
        Ok(Envelope {
            id: m.id,
            device: m.device,
            sent_at: m.sent_at,
            correlation_id: m.correlation_id,
            signature: m.sig,
            body: wrap(m.body),
        })
    }

    /// The message id of a payload that may fail to decode otherwise (so a receiver can still
    /// reject it by id), or `None`.
    pub fn peek_message_id(self, bytes: &[u8]) -> Option<MessageId> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return None;
        }
        self.parse_slice::<ProbeId>(bytes).ok().map(|p| p.id)
    }
}

/// Decodes a message in whichever codec it is in ([`Codec::detect`]).
pub fn decode(bytes: &[u8]) -> Result<Envelope> {
    match Codec::detect(bytes) {
        Some(codec) => codec.decode(bytes),
        None if bytes.len() > MAX_PAYLOAD_BYTES => Err(Error::TooLarge {
            field: "payload",
            actual: bytes.len(),
            max: MAX_PAYLOAD_BYTES,
        }),
        None => Err(Error::Malformed {
            codec: Codec::Json,
            detail: "neither a JSON object nor a CBOR map".into(),
        }),
    }
}
