//! The one error type of grid-proto, and its mapping to the wire's [`ReasonCode`]s.

use crate::codec::Codec;
use crate::v1::ReasonCode;

/// Why a message could not be encoded, decoded, verified or routed, or an engine refused an input.
///
/// Decoding never panics: every malformed input ends here, naming the field where it can.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The payload (or a list inside it) is larger than the protocol allows.
    #[error("{field}: {actual} is larger than the limit of {max}")]
    TooLarge {
        /// What is too large (`payload` for the whole message, else the field).
        field: &'static str,
        /// The size found (bytes or items).
        actual: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a well-formed message in the codec (syntax, truncation, wrong types,
    /// missing fields).
    #[error("malformed {codec} message: {detail}")]
    Malformed {
        /// The codec the bytes were decoded with.
        codec: Codec,
        /// What the decoder reported.
        detail: String,
    },
    /// The message's major protocol version is not one this library speaks.
    #[error("unsupported protocol version {version} (this library speaks 1)")]
    UnsupportedVersion {
        /// The version found in the `v` field.
        version: u64,
    },
    /// The `kind` field names no body this version knows.
    #[error("kind: unknown message kind {kind:?}")]
    UnknownKind {
        /// The kind found.
        kind: String,
    },
    /// A number is NaN or infinite.
    #[error("{field}: not a finite number")]
    NotFinite {
        /// The field, with its index for list items (e.g. `body.setpoints_kw[3]`).
        field: String,
    },
    /// A field's value is out of range or disagrees with another field.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, with its index for list items.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A value of the domain model could not be built (see grid-core's error for the field).
    #[error(transparent)]
    Core(#[from] grid_core::Error),
    /// The topic is not one of the protocol's topics.
    #[error("topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic (cut to 200 characters).
        topic: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The envelope's device id differs from the one in the topic it arrived on.
    #[error("device: the envelope names {envelope:?} but the topic names {topic:?}")]
    WrongDevice {
        /// The device in the topic.
        topic: String,
        /// The device in the envelope.
        envelope: String,
    },
    /// The body kind does not belong on the topic it arrived on.
    #[error("kind: a {kind} message does not belong on topic {topic:?}")]
    WrongTopic {
        /// The body kind.
        kind: &'static str,
        /// The topic.
        topic: String,
    },
    /// A signed body kind arrived without a signature while a verifying key is configured.
    #[error("sig: the message is not signed")]
    MissingSignature,
    /// The signature does not verify against the configured key.
    #[error("sig: the signature does not verify")]
    BadSignature,
    /// Only schedule and command bodies are signed.
    #[error("sig: a {kind} message is not signable")]
    NotSignable {
        /// The body kind.
        kind: &'static str,
    },
    /// An engine was given a schedule version at or below one it already tracks.
    #[error(
        "schedule {schedule}: version {version} is not newer than the tracked version {latest}"
    )]
    StaleVersion {
        /// The schedule id.
        schedule: String,
        /// The version given.
        version: u64,
        /// The newest version already tracked.
        latest: u64,
    },
    /// An engine was given a message for another device, or a message of the wrong kind.
    #[error("{0}")]
    Engine(String),
}

impl Error {
    /// The reason code an agent puts in its `rejected` ack when a message fails with this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Error::TooLarge { .. } => ReasonCode::TooLarge,
            Error::Malformed { .. } | Error::UnknownKind { .. } | Error::InvalidTopic { .. } => {
                ReasonCode::Malformed
            }
            Error::UnsupportedVersion { .. } => ReasonCode::UnsupportedVersion,
            Error::NotFinite { .. } | Error::Invalid { .. } | Error::Core(_) => {
                ReasonCode::InvalidSchedule
            }
            Error::WrongDevice { .. } => ReasonCode::WrongDevice,
            Error::WrongTopic { .. } => ReasonCode::Malformed,
            Error::MissingSignature | Error::BadSignature | Error::NotSignable { .. } => {
                ReasonCode::BadSignature
            }
            Error::StaleVersion { .. } => ReasonCode::Superseded,
            Error::Engine(_) => ReasonCode::Internal,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// `Result` with grid-proto's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
