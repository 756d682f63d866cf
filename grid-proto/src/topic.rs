//! The MQTT topic scheme: `grid/v1/{device_id}/down/{schedule|command}` and
//! `grid/v1/{device_id}/up/{hello|ack|telemetry|status}`, all at QoS 1; `status` is retained and
//! is also the device's last will.
//!
//! ```
//! use grid_proto::topic::{Topic, TopicKind, server_subscription};
//! use grid_core::DeviceId;
//! let t = Topic::new(DeviceId::new("bat-7")?, TopicKind::Telemetry);
//! assert_eq!(t.to_string(), "grid/v1/bat-7/up/telemetry");
//! assert_eq!(Topic::parse("grid/v1/bat-7/up/telemetry")?, t);
//! assert_eq!(server_subscription(Some("grid-server")), "$share/grid-server/grid/v1/+/up/+");
//! assert!(Topic::parse("grid/v1/bat-7/up/reboot").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::{Error, Result};
use crate::v1::{BodyKind, Envelope};
use grid_core::DeviceId;
use std::fmt;

/// The topic prefix of protocol version 1.
pub const PREFIX: &str = "grid/v1";

/// The QoS every topic uses (at least once).
pub const QOS: u8 = 1;

/// The last segment of a topic, with its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// `down/schedule`: schedule assignments.
    Schedule,
    /// `down/command`: commands.
    Command,
    /// `up/hello`: sent on every connect.
    Hello,
    /// `up/ack`: acknowledgements.
    Ack,
    /// `up/telemetry`: measurement batches.
    Telemetry,
    /// `up/status`: online/offline, retained, and the last will.
    Status,
}

impl TopicKind {
    /// Every kind.
    pub const ALL: [TopicKind; 6] = [
        Self::Schedule,
        Self::Command,
        Self::Hello,
        Self::Ack,
        Self::Telemetry,
        Self::Status,
    ];

    /// `down` (server → device) or `up` (device → server).
    pub fn direction(self) -> &'static str {
        if self.is_downlink() { "down" } else { "up" }
    }

    /// Whether the server publishes on it.
    pub fn is_downlink(self) -> bool {
        matches!(self, Self::Schedule | Self::Command)
    }

    /// The last segment.
    pub fn name(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Command => "command",
            Self::Hello => "hello",
            Self::Ack => "ack",
            Self::Telemetry => "telemetry",
            Self::Status => "status",
        }
    }

    /// Whether messages on it are published with the retain flag (only `status`).
    pub fn retained(self) -> bool {
        matches!(self, Self::Status)
    }

    /// The topic a body of this kind travels on.
    pub fn for_body(kind: BodyKind) -> Self {
        match kind {
            BodyKind::ScheduleAssign => Self::Schedule,
            BodyKind::Command => Self::Command,
            BodyKind::Ack => Self::Ack,
            BodyKind::Telemetry => Self::Telemetry,
            BodyKind::Status => Self::Status,
            BodyKind::Hello => Self::Hello,
        }
    }
}

/// A parsed topic: which device, which kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// The device in the topic.
    pub device: DeviceId,
    /// The kind.
    pub kind: TopicKind,
}

impl Topic {
    /// A topic for `device`.
    pub fn new(device: DeviceId, kind: TopicKind) -> Self {
        Self { device, kind }
    }

    /// The topic a message travels on (from its device and body kind).
    pub fn for_envelope(envelope: &Envelope) -> Self {
        Self::new(
            envelope.device.clone(),
            TopicKind::for_body(envelope.kind()),
        )
    }

    /// Parses a topic name (not a filter) of the scheme; anything else is
    /// [`Error::InvalidTopic`].
    pub fn parse(topic: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidTopic {
            topic: topic.chars().take(200).collect(),
            reason,
        };
        let mut parts = topic.split('/');
        let (Some("grid"), Some("v1"), Some(device), Some(dir), Some(name), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad("expected grid/v1/{device_id}/{up|down}/{kind}"));
        };
        let device = DeviceId::new(device).map_err(|_| bad("invalid device id"))?;
        let kind = TopicKind::ALL
            .into_iter()
            .find(|k| k.direction() == dir && k.name() == name)
            .ok_or_else(|| bad("unknown direction or kind"))?;
        Ok(Self { device, kind })
    }

    /// Checks that `envelope` may travel on this topic: same device, and a body kind that
    /// belongs here. Receivers call it on every message (a device must not speak for another).
    pub fn check(&self, envelope: &Envelope) -> Result<()> {
        if envelope.device != self.device {
            return Err(Error::WrongDevice {
                topic: self.device.to_string(),
                envelope: envelope.device.to_string(),
            });
        }
        if TopicKind::for_body(envelope.kind()) != self.kind {
            return Err(Error::WrongTopic {
                kind: envelope.kind().as_str(),
                topic: self.to_string(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}/{}/{}/{}",
            self.device,
            self.kind.direction(),
            self.kind.name()
        )
    }
}

/// The filter a server subscribes to for every device's uplink: `grid/v1/+/up/+`, or with an
/// MQTT 5 shared-subscription group `$share/{group}/grid/v1/+/up/+`, so replicas in one group
/// split the load (the broker hands each message to one of them).
pub fn server_subscription(share_group: Option<&str>) -> String {
    match share_group {
        Some(group) => format!("$share/{group}/{PREFIX}/+/up/+"),
        None => format!("{PREFIX}/+/up/+"),
    }
}

/// The server's filters one per uplink kind (for brokers or ACLs that want them split), with the
/// same optional shared-subscription group.
pub fn server_subscriptions(share_group: Option<&str>) -> Vec<String> {
    TopicKind::ALL
        .into_iter()
        .filter(|k| !k.is_downlink())
        .map(|k| {
            let f = format!("{PREFIX}/+/up/{}", k.name());
            match share_group {
                Some(g) => format!("$share/{g}/{f}"),
                None => f,
            }
        })
        .collect()
}

/// The filter an agent subscribes to: `grid/v1/{device_id}/down/+`.
pub fn agent_subscription(device: &DeviceId) -> String {
    format!("{PREFIX}/{device}/down/+")
}

/// Parses a received topic and decodes its payload (either codec), checking that the message
/// belongs on the topic.
pub fn decode_on_topic(topic: &str, payload: &[u8]) -> Result<(Topic, Envelope)> {
    let topic = Topic::parse(topic)?;
    let envelope = crate::codec::decode(payload)?;
    topic.check(&envelope)?;
    Ok((topic, envelope))
}
