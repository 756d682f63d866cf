//! The execution lifecycle of a schedule (or command) on a device, as a pure state machine modelled
//! on AWS IoT Jobs' job executions.
//!
//! ```text
//!            deliver        accept          start           complete
//!   Queued ─────────▶ Delivered ─────▶ Accepted ─────▶ Executing ─────▶ Completed
//!     │                 │   │            │                 │
//!     │                 │   └─reject──▶ Rejected            ├──fail────▶ Failed
//!     └─────────────────┴────────────────┴──expire──▶ Expired (not once executing)
//!   any non-terminal state ──supersede──▶ Superseded, ──cancel──▶ Cancelled, ──fail──▶ Failed
//! ```
//!
//! Acknowledgements travel at least once and may be reordered, so a later stage may be reported
//! before an earlier one: `accept`, `reject` and `start` are accepted from any earlier non-terminal
//! state, and `complete` from any non-terminal state once delivered (the device's report proves the
//! delivery). Terminal states never change: any event there is an [`Error::InvalidTransition`].

use crate::error::{Error, Result};

/// Where a schedule's execution on a device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum ExecutionState {
    /// Created; not yet sent.
    Queued,
    /// Sent to the device (possibly more than once); no answer yet.
    Delivered,
    /// The device checked and stored it.
    Accepted,
    /// The device refused it (invalid, expired, badly signed, ...). Terminal.
    Rejected,
    /// The device is applying it.
    Executing,
    /// Ran to its end. Terminal.
    Completed,
    /// Execution failed. Terminal.
    Failed,
    /// Its validity ran out before it ran. Terminal.
    Expired,
    /// Replaced by a newer version. Terminal.
    Superseded,
    /// Cancelled by an operator. Terminal.
    Cancelled,
}

impl ExecutionState {
    /// Whether no event can change this state any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Rejected
                | Self::Completed
                | Self::Failed
                | Self::Expired
                | Self::Superseded
                | Self::Cancelled
        )
    }

    /// The stable lowercase name (as on the wire and in the database).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Delivered => "delivered",
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Executing => "executing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Superseded => "superseded",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`ExecutionState::as_str`]'s names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Every state, in lifecycle order.
    pub const ALL: [ExecutionState; 10] = [
        Self::Queued,
        Self::Delivered,
        Self::Accepted,
        Self::Rejected,
        Self::Executing,
        Self::Completed,
        Self::Failed,
        Self::Expired,
        Self::Superseded,
        Self::Cancelled,
    ];

    /// Applies `event`, returning the next state or [`Error::InvalidTransition`].
    ///
    /// ```
    /// use grid_core::{ExecutionState::*, LifecycleEvent::*};
    /// let s = Queued.apply(Deliver)?.apply(Accept)?.apply(Start)?.apply(Complete)?;
    /// assert_eq!(s, Completed);
    /// assert!(s.apply(Cancel).is_err()); // terminal states never change
    /// # Ok::<(), grid_core::Error>(())
    /// ```
    pub fn apply(self, event: LifecycleEvent) -> Result<ExecutionState> {
        use ExecutionState::*;
        use LifecycleEvent as E;
        let next = match (self, event) {
            (s, _) if s.is_terminal() => None,
            (Queued | Delivered, E::Deliver) => Some(Delivered),
            (Queued | Delivered, E::Accept) => Some(Accepted),
            (Queued | Delivered, E::Reject) => Some(Rejected),
            (Queued | Delivered | Accepted, E::Start) => Some(Executing),
            (Delivered | Accepted | Executing, E::Complete) => Some(Completed),
            (_, E::Fail) => Some(Failed),
            (Queued | Delivered | Accepted, E::Expire) => Some(Expired),
            (_, E::Supersede) => Some(Superseded),
            (_, E::Cancel) => Some(Cancelled),
            _ => None,
        };
        next.ok_or(Error::InvalidTransition { from: self, event })
    }
}

impl std::fmt::Display for ExecutionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happens to a schedule's execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum LifecycleEvent {
    /// The message was sent to the device (again).
    Deliver,
    /// The device accepted it.
    Accept,
    /// The device rejected it.
    Reject,
    /// The device began applying it.
    Start,
    /// It ran to its end.
    Complete,
    /// It failed.
    Fail,
    /// Its validity ran out before it started.
    Expire,
    /// A newer version replaced it.
    Supersede,
    /// An operator cancelled it.
    Cancel,
}

impl LifecycleEvent {
    /// Every event.
    pub const ALL: [LifecycleEvent; 9] = [
        Self::Deliver,
        Self::Accept,
        Self::Reject,
        Self::Start,
        Self::Complete,
        Self::Fail,
        Self::Expire,
        Self::Supersede,
        Self::Cancel,
    ];
}

#[cfg(test)]
mod tests {
    use super::ExecutionState::*;
    use super::LifecycleEvent::*;
    use super::*;

    #[test]
    fn happy_path_and_reordered_acks() {
        assert_eq!(Queued.apply(Deliver).unwrap(), Delivered);
        assert_eq!(Delivered.apply(Deliver).unwrap(), Delivered);
        // "executing" may arrive before "accepted".
        assert_eq!(Delivered.apply(Start).unwrap(), Executing);
        assert!(Executing.apply(Accept).is_err());
        assert_eq!(Executing.apply(Complete).unwrap(), Completed);
    }

    #[test]
    fn executing_schedules_do_not_expire_and_queued_ones_do_not_complete() {
        assert!(Executing.apply(Expire).is_err());
        assert!(Queued.apply(Complete).is_err());
        assert_eq!(Accepted.apply(Expire).unwrap(), Expired);
    }

    #[test]
    fn terminal_states_refuse_every_event() {
        for s in ExecutionState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for e in LifecycleEvent::ALL {
                assert_eq!(
                    s.apply(e),
                    Err(Error::InvalidTransition { from: s, event: e })
                );
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in ExecutionState::ALL {
            assert_eq!(ExecutionState::parse(s.as_str()), Some(s));
        }
        assert_eq!(ExecutionState::parse("bogus"), None);
    }
}
