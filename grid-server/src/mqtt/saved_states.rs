//! The delivery states this server last saved, kept parsed, so that restoring one does not parse
//! its messages again.
//!
//! Every ack restores its device's delivery tracker from the outbox row: the detached state (a few
//! hundred bytes of JSON) and the tracked messages (each a whole `schedule_assign`, kilobytes of
//! JSON). Parsing the messages was 12 % of the server's CPU during a 10,000-device publish. A
//! restore whose stored detached state is byte for byte the one this cache holds for the device
//! takes the cached state out instead (the save that follows puts the new one back): the detached state names every message by its id, ids are
//! random and never reused, and a tracked message never changes, so equal detached states have
//! equal messages. Anything else (another replica saved since, the row was deleted and made
//! again, a state saved before the split) is parsed as before. The cache is bounded by the
//! saved size of its states; past the bound, a quarter of it is dropped (any entries, not the
//! oldest).

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

    /// Takes out the state saved for `device` as `detached_json`, if this is what the cache
    /// holds, with the bytes of JSON it was put with (no copy: the caller puts back what it saves
    /// next; a restore that is not followed by a save parses the next time).
    pub(crate) fn take(
        &self,
        device: &DeviceId,
        detached_json: &str,
    ) -> Option<(TrackerState, usize)> {
        let mut entries = self.inner.lock().ok()?;
        if entries.by_device.get(device)?.detached_json != detached_json {
            return None;
        }
        let entry = entries.by_device.remove(device)?;
        entries.bytes -= entry.bytes;
        Some((entry.state, entry.bytes))
    }

    /// A copy of the detached-state JSON held for `device`, if any: what an ack batch names to
    /// the store so that an unchanged state comes back without its messages (the state itself
    /// is then [`SavedStates::take`]n, and a miss by then is handled like any other).
    pub(crate) fn detached_json(&self, device: &DeviceId) -> Option<String> {
        let entries = self.inner.lock().ok()?;
        entries
            .by_device
            .get(device)
            .map(|e| e.detached_json.clone())
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
        if entries.bytes + bytes > self.budget {
            // One pass drops entries (in the map's order) down to three quarters of the budget,
            // so the cost of evicting is spread over many insertions.
            let target = (self.budget / 4 * 3).saturating_sub(bytes);
            let mut held = entries.bytes;
            entries.by_device.retain(|_, e| {
                if held <= target {
                    return true;
                }
                held -= e.bytes;
                false
            });
            entries.bytes = held;
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
        let (one, two) = (r#"{"r":1}"#, r#"{"r":2}"#);
        assert!(cache.take(&a.device, one).is_none(), "empty");
        cache.put(one, a.clone(), 100);
        assert!(cache.take(&a.device, two).is_none(), "saved since");
        assert!(
            cache.take(&state("bat-b").device, one).is_none(),
            "another device"
        );
        assert_eq!(cache.usage(), (1, 100), "a miss keeps the entry");
        assert_eq!(cache.detached_json(&a.device).as_deref(), Some(one));
        assert_eq!(cache.take(&a.device, one), Some((a.clone(), 100)));
        assert_eq!(cache.detached_json(&a.device), None);
        assert_eq!(cache.usage(), (0, 0), "taken out");
        assert!(cache.take(&a.device, one).is_none());
        // A newer save replaces the entry.
        cache.put(one, a.clone(), 100);
        cache.put(two, a.clone(), 120);
        assert!(cache.take(&a.device, one).is_none());
        assert_eq!(cache.usage(), (1, 120));
        assert_eq!(cache.take(&a.device, two), Some((a, 120)));
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
        assert!(cache.take(&state("bat-49").device, "{}").is_some());
        cache.put("{}", state("huge"), 1_001);
        assert!(cache.take(&state("huge").device, "{}").is_none());
    }
}
