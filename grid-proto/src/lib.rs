//! # grid-proto: the wire protocol between the grid fleet server and its agents
//!
//! * [`v1`]: the versioned message types (an [`Envelope`](v1::Envelope) around one of six
//!   bodies) and their explicit conversions to and from grid-core's model;
//! * [`topic`]: the MQTT topic scheme (`grid/v1/{device_id}/{up|down}/{kind}`), shared
//!   subscriptions for server replicas and the device/topic check;
//! * [`Codec`]: JSON (default) and CBOR payloads with the same field names, size limits
//!   ([`limits`]) and validation on decode;
//! * [`signature`]: Ed25519 signatures over schedule and command bodies;
//! * [`DeliveryTracker`] (server) and [`Inbox`] (agent): sans-IO state machines that take the
//!   current time and events and return actions; no clock, socket or runtime inside.
//!
//! The full specification, with golden test vectors, is `docs/protocol.md`.
//!
//! **Sign convention:** a positive power (kW) charges the battery; negative discharges it.
//!
//! ```
//! use grid_proto::{Codec, topic::Topic, v1::*};
//! use grid_core::{DeviceId, ExecutionState};
//! let ack = Envelope::new(
//!     MessageId::new("a-1")?, DeviceId::new("bat-1")?, "2026-11-27T00:00:00Z".parse()?,
//!     Body::Ack(Ack::for_message(MessageId::new("c-1")?, ExecutionState::Completed)),
//! );
//! let topic = Topic::for_envelope(&ack).to_string();
//! let payload = Codec::Cbor.encode(&ack)?;
//! let (parsed, decoded) = grid_proto::topic::decode_on_topic(&topic, &payload)?;
//! assert_eq!(topic, "grid/v1/bat-1/up/ack");
//! assert_eq!((parsed.device.as_str(), decoded), ("bat-1", ack));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod codec;
mod error;
pub mod inbox;
pub mod limits;
pub mod signature;
pub mod topic;
pub mod tracker;
pub mod v1;

pub use codec::{Codec, decode};
pub use error::{Error, Result};
pub use inbox::Inbox;
pub use tracker::DeliveryTracker;

/// Well-known capability names for `status` and `hello` (receivers ignore names they do not know).
pub mod capability {
    /// The device verifies signatures on schedules and commands.
    pub const SIGNED: &str = "signed";
    /// The device decodes CBOR payloads.
    pub const CBOR: &str = "cbor";
    /// The device reports plan-vs-actual per slot in its telemetry.
    pub const PLAN_REPORT: &str = "plan_report";
}
