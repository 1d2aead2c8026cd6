//! Step-graph state that the store does not keep: a sliding-window Transformer's key/value cache is
//! an exact function of the user's last `window` items, which the store does keep. Storing it would
//! make it most of every record (sasrec-ml100k: 6.3 KB per user at f16 against ~0.3 KB for the rest)
//! and rewrite it through sled on every event; here it stays in RAM, bounded in bytes, and a user
//! who is not here (evicted, a restart, a partition that moved) has it rebuilt from the window.
//!
//! An entry is valid only for the record it was computed with: it carries the user's event count
//! at that point, and a lookup with a record of any other count misses. Counts only grow, and each
//! event is applied exactly once, so a stale entry (a batch that failed before its commit, a
//! partition that another instance advanced meanwhile) is never used.

use lru::LruCache;

use super::{StateTensors, UserMemory};
use crate::config::StatePrecision;

/// What an entry costs beyond its tensors: the key, the LRU links, the vectors' headers.
const ENTRY_OVERHEAD: usize = 128;

pub struct StateCache {
    budget: usize,
    used: usize,
    precision: StatePrecision,
    entries: LruCache<String, Entry>,
}

struct Entry {
    /// The user's event count when the state was computed.
    events: u64,
    tensors: StateTensors,
}

impl Entry {
    fn cost(&self, user: &str) -> usize {
        ENTRY_OVERHEAD + user.len() + self.tensors.bytes()
    }
}

impl StateCache {
    /// A cache holding at most `budget` bytes; tensors are kept at `precision` (f16 halves them).
    pub fn new(budget: u64, precision: StatePrecision) -> StateCache {
        StateCache {
            budget: usize::try_from(budget).unwrap_or(usize::MAX),
            used: 0,
            precision,
            entries: LruCache::unbounded(),
        }
    }

    /// The state computed with `memory` as it is now, if still held.
    pub fn get(&mut self, user: &str, memory: &UserMemory) -> Option<&StateTensors> {
        if self.entries.get(user)?.events != memory.events() {
            if let Some(stale) = self.entries.pop(user) {
                self.used -= stale.cost(user);
            }
            return None;
        }
        self.entries.peek(user).map(|entry| &entry.tensors)
    }

    /// Takes out the state computed with `memory` as it is now, if still held: a batch steps it in
    /// place and [`StateCache::put`]s it back, without copying it. A batch that fails in between
    /// loses it, and the user's next batch rebuilds it from the window.
    pub fn take(&mut self, user: &str, memory: &UserMemory) -> Option<StateTensors> {
        self.get(user, memory)?;
        let entry = self.entries.pop(user)?;
        self.used -= entry.cost(user);
        Some(entry.tensors)
    }

    /// Keeps `state`, the state after the events `memory` has counted (at the cache's precision),
    /// evicting the least recently used users beyond the budget.
    pub fn put(&mut self, user: &str, memory: &UserMemory, state: StateTensors) {
        let entry = Entry {
            events: memory.events(),
            tensors: state.at_precision(self.precision),
        };
        let cost = entry.cost(user);
        if cost > self.budget {
            return;
        }
        if let Some(old) = self.entries.put(user.to_string(), entry) {
            self.used -= old.cost(user);
        }
        self.used += cost;
        self.evict_beyond_budget();
    }

    /// The precision states are kept at.
    pub fn precision(&self) -> StatePrecision {
        self.precision
    }

    /// A new budget (a shadow's cache becoming the live one); a smaller one evicts at once.
    pub fn set_budget(&mut self, budget: u64) {
        self.budget = usize::try_from(budget).unwrap_or(usize::MAX);
        self.evict_beyond_budget();
    }

    /// Drops the least recently used users until what is held fits the budget.
    fn evict_beyond_budget(&mut self) {
        while self.used > self.budget {
            let Some((evicted, entry)) = self.entries.pop_lru() else {
                break;
            };
            self.used -= entry.cost(&evicted);
        }
    }

    /// Drops every entry (another model takes over: its states differ).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.used = 0;
    }

    /// Bytes held, as the budget counts them.
    pub fn bytes(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_budget_keeps_what_fits_and_evicts_the_rest() {
        let mut cache = StateCache::new(1 << 20, StatePrecision::F32);
        for (i, user) in ["a", "b", "c"].iter().enumerate() {
            cache.put(user, &memory(i as u64 + 1), f32s(vec![vec![0.5; 1000]]));
        }
        assert_eq!(cache.len(), 3);
        let one = cache.bytes() / 3;
        cache.set_budget(4 << 20);
        assert_eq!(cache.len(), 3, "a larger budget keeps everything");
        cache.set_budget((one + one / 2) as u64);
        assert_eq!(
            cache.len(),
            1,
            "a smaller one evicts the least recently used"
        );
        assert!(cache.get("c", &memory(3)).is_some());
    }

    fn f32s(tensors: Vec<Vec<f32>>) -> StateTensors {
        StateTensors::F32(tensors)
    }

    fn memory(events: u64) -> UserMemory {
        UserMemory {
            clicks: events,
            ..UserMemory::default()
        }
    }

    #[test]
    fn an_entry_serves_only_the_record_it_was_computed_with() {
        let mut cache = StateCache::new(1 << 20, StatePrecision::F32);
        let state = f32s(vec![vec![1.0, 2.0]]);
        cache.put("u", &memory(3), state.clone());
        assert_eq!(cache.get("u", &memory(3)), Some(&state));
        // Another instance applied an event meanwhile, or this batch never committed.
        assert_eq!(cache.get("u", &memory(4)), None);
        assert_eq!(cache.get("u", &memory(3)), None, "a stale entry is dropped");
        assert_eq!(cache.bytes(), 0);
        // Taken out for a batch, it is no longer held (nor counted) until put back.
        cache.put("u", &memory(3), state.clone());
        assert_eq!(cache.take("u", &memory(4)), None, "stale");
        cache.put("u", &memory(3), state.clone());
        assert_eq!(cache.take("u", &memory(3)), Some(state.clone()));
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn the_budget_evicts_the_least_recently_used() {
        let one = ENTRY_OVERHEAD + 2 + 4 * 100;
        let mut cache = StateCache::new(3 * one as u64, StatePrecision::F32);
        for u in ["u1", "u2", "u3"] {
            cache.put(u, &memory(1), f32s(vec![vec![0.5; 100]]));
        }
        assert!(cache.get("u1", &memory(1)).is_some()); // u2 is now the oldest
        cache.put("u4", &memory(1), f32s(vec![vec![0.5; 100]]));
        assert_eq!(cache.len(), 3);
        assert!(cache.bytes() <= 3 * one);
        assert!(cache.get("u2", &memory(1)).is_none());
        for u in ["u1", "u3", "u4"] {
            assert!(cache.get(u, &memory(1)).is_some(), "{u} kept");
        }
    }

    #[test]
    fn f16_halves_the_bytes_and_keeps_values_to_half_precision() {
        let mut cache = StateCache::new(1 << 20, StatePrecision::F16);
        cache.put("u", &memory(1), f32s(vec![vec![0.1; 1000]]));
        assert_eq!(cache.bytes(), ENTRY_OVERHEAD + 1 + 2000);
        let back = cache.get("u", &memory(1)).unwrap().to_f32();
        assert!(back[0].iter().all(|v| (v - 0.1).abs() < 1e-3));
    }

    #[test]
    fn a_state_larger_than_the_budget_is_not_kept() {
        let mut cache = StateCache::new(64, StatePrecision::F32);
        cache.put("u", &memory(1), f32s(vec![vec![0.0; 100]]));
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
    }
}
