//! The protocol's size limits: decoders reject anything beyond them with
//! [`Error::TooLarge`](crate::Error::TooLarge) before or while parsing.

/// The largest payload accepted or produced, in bytes (64 KiB). Checked before parsing.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// The most slots a `schedule_assign` may carry (30 days of quarter hours, 2 days of minutes).
pub const MAX_SLOTS: usize = 2_880;
/// The most samples in one `telemetry` batch.
pub const MAX_TELEMETRY_SAMPLES: usize = 360;
/// The most plan-vs-actual slot reports in one `telemetry` batch.
pub const MAX_SLOT_REPORTS: usize = 96;
/// The most schedules a `hello` lists (and an agent's inbox holds).
pub const MAX_HELLO_SCHEDULES: usize = 16;
/// The most message ids a `hello` lists.
pub const MAX_HELLO_MESSAGE_IDS: usize = 32;
/// The most capability names in a `status` or `hello`.
pub const MAX_CAPABILITIES: usize = 32;
/// The longest free text (an ack's `detail`), in bytes.
pub const MAX_TEXT_LEN: usize = 256;
/// The longest correlation id, in bytes.
pub const MAX_CORRELATION_ID_LEN: usize = 128;
/// The longest reversion timeout, in seconds (7 days).
pub const MAX_REVERSION_TIMEOUT_S: u32 = 7 * 86_400;
/// How deeply CBOR items may nest (the v1 schema needs 5 levels).
pub const MAX_CBOR_DEPTH: usize = 16;
