//! Identifiers of devices, sites, feeders and schedules, and the monotonic schedule version.
//!
//! Identifiers appear in MQTT topics (`grid/v1/{device_id}/...`), URLs and log lines, so they are
//! restricted to 1–64 characters of `A–Z a–z 0–9 . _ -`, not starting with `.` or `-`: no `/`, `+`
//! or `#` can ever reach a topic filter through them.

use crate::error::{Error, Result};
use std::fmt;

/// The longest identifier accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Checks the identifier rules above, naming `field` in the error.
fn check_id(field: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > MAX_ID_LEN {
        Some("must be at most 64 characters")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("may only contain A-Z, a-z, 0-9, '.', '_' and '-'")
    } else if value.starts_with(['.', '-']) {
        Some("must not start with '.' or '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidId {
            field,
            value: value.chars().take(80).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "serde", serde(try_from = "String", into = "String"))]
        pub struct $name(String);

        impl $name {
            /// Builds the identifier: 1–64 characters of `A–Z a–z 0–9 . _ -`, not starting with `.` or `-`.
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                check_id($field, &value)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(value: &str) -> Result<Self> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// The identity of one battery controller (one agent, one battery).
    DeviceId, "device_id"
);
id_type!(
    /// The identity of a site (a grid connection point with its load, PV and batteries).
    SiteId, "site_id"
);
id_type!(
    /// The identity of a feeder (a group of sites sharing a grid envelope).
    FeederId, "feeder_id"
);
id_type!(
    /// The identity of a schedule; its successive revisions share the id and differ by
    /// [`ScheduleVersion`].
    ScheduleId, "schedule_id"
);

/// The revision number of a schedule. Versions only grow: a device never replaces a schedule by
/// one with a version at or below the one it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct ScheduleVersion(pub u64);

impl ScheduleVersion {
    /// The version that follows this one.
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for ScheduleVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_topic_metacharacters_and_bad_lengths() {
        for bad in ["", "a/b", "a+b", "#", ".hidden", "-x", "ä", &"x".repeat(65)] {
            let err = DeviceId::new(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("device_id: invalid identifier"),
                "{err}"
            );
        }
        assert_eq!(
            DeviceId::new("bat-0001.a_b").unwrap().as_str(),
            "bat-0001.a_b"
        );
        assert!(ScheduleId::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn versions_grow() {
        assert!(ScheduleVersion(1).next() > ScheduleVersion(1));
        assert_eq!(ScheduleVersion(u64::MAX).next(), ScheduleVersion(u64::MAX));
    }
}
