//! The delivery states this server last saved, kept parsed, so that restoring one does not parse
//! its messages again.
//!
//! Every ack restores its device's delivery tracker from the outbox row: the detached state (a few
//! hundred bytes of JSON) and the tracked messages (each a whole `schedule_assign`, kilobytes of
//! JSON). Parsing the messages was 12 % of the server's CPU during a 10,000-device publish. A
//! restore whose stored detached state is byte for byte the one this cache holds for the device
//! takes the cached state instead: the detached state names every message by its id, ids are
//! random and never reused, and a tracked message never changes, so equal detached states have
//! equal messages. Anything else (another replica saved since, the row was deleted and made
//! again, a state saved before the split) is parsed as before. The cache is bounded by the
//! saved size of its states; past the bound, entries are dropped (any, not the oldest).

use grid_core::DeviceId;
use grid_proto::tracker::TrackerState;
use std::collections::HashMap;
use std::sync::Mutex;

/// The saved-size bound of [`SavedStates`] the transport uses, in bytes of JSON (the parsed
/// states take a few times that).
pub(crate) const SAVED_STATES_BUDGET: usize = 32 << 20;

/// Parsed delivery states by device, each with the detached-state JSON it was saved as.
#[derive(Debug)]
pub(crate) struct SavedStates {
    budget: usize,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_device: HashMap<DeviceId, Entry>,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    detached_json: String,
    state: TrackerState,
    bytes: usize,
}

impl SavedStates {
    /// An empty cache holding at most `budget` bytes of saved JSON.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// The state saved for `device` as `detached_json`, if this is what the cache holds.
    pub(crate) fn get(&self, device: &DeviceId, detached_json: &str) -> Option<TrackerState> {
        let entries = self.inner.lock().ok()?;
        let entry = entries.by_device.get(device)?;
        (entry.detached_json == detached_json).then(|| entry.state.clone())
    }

    /// Notes that `state` was saved for its device as `detached_json`, `bytes` of JSON in all
    /// (detached state and messages). A state larger than the whole budget is not kept.
    pub(crate) fn put(&self, detached_json: &str, state: TrackerState, bytes: usize) {
        let Ok(mut entries) = self.inner.lock() else {
            return;
        };
        if let Some(old) = entries.by_device.remove(&state.device) {
            entries.bytes -= old.bytes;
        }
        if bytes > self.budget {
            return;
        }
        while entries.bytes + bytes > self.budget {
            let Some(victim) = entries.by_device.keys().next().cloned() else {
                break;
            };
            if let Some(old) = entries.by_device.remove(&victim) {
                entries.bytes -= old.bytes;
            }
        }
        entries.bytes += bytes;
        entries.by_device.insert(
            state.device.clone(),
            Entry {
                detached_json: detached_json.to_owned(),
                state,
                bytes,
            },
        );
    }

    /// How many states are held, and their saved size.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        self.inner
            .lock()
            .map(|e| (e.by_device.len(), e.bytes))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grid_proto::tracker::{DeliveryTracker, TrackerConfig};

    fn state(device: &str) -> TrackerState {
        DeliveryTracker::new(DeviceId::new(device).unwrap(), TrackerConfig::default(), 7)
            .state()
            .clone()
    }

    #[test]
    fn a_state_is_given_back_only_for_the_detached_json_it_was_saved_as() {
        let cache = SavedStates::new(1_000);
        let a = state("bat-a");
        assert!(cache.get(&a.device, "{}").is_none(), "empty");
        cache.put("{\"r\":1}", a.clone(), 100);
        assert_eq!(cache.get(&a.device, "{\"r\":1}"), Some(a.clone()));
        assert!(cache.get(&a.device, "{\"r\":2}").is_none(), "saved since");
        assert!(
            cache.get(&state("bat-b").device, "{\"r\":1}").is_none(),
            "another device"
        );
        // A newer save replaces the entry.
        cache.put("{\"r\":2}", a.clone(), 120);
        assert!(cache.get(&a.device, "{\"r\":1}").is_none());
        assert_eq!(cache.get(&a.device, "{\"r\":2}"), Some(a));
        assert_eq!(cache.usage(), (1, 120));
    }

    #[test]
    fn the_saved_size_stays_within_the_budget() {
        let cache = SavedStates::new(1_000);
        for i in 0..50 {
            cache.put("{}", state(&format!("bat-{i}")), 300);
            let (n, bytes) = cache.usage();
            assert!(bytes <= 1_000 && n <= 3, "{n} states, {bytes} bytes");
        }
        // The newest is always kept; one larger than the budget is not.
        assert!(cache.get(&state("bat-49").device, "{}").is_some());
        cache.put("{}", state("huge"), 1_001);
        assert!(cache.get(&state("huge").device, "{}").is_none());
    }
}
