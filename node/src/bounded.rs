//! A map that keeps at most a fixed number of entries (and, if asked, bytes), forgetting the
//! oldest first: the tracker's metainfo cache and the agent's pull reports; and
//! [`Cooldown`] on top of it, at most one event per key per interval (bad-piece reports
//! and the checks they cause).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A map of at most `cap` entries and `max_bytes` bytes (as the caller sizes its values);
/// inserting beyond either drops the keys inserted earliest. Replacing a key's value keeps
/// its place. A value larger than the whole budget is not kept.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    map: HashMap<K, (V, u64)>,
    order: VecDeque<K>,
    cap: usize,
    bytes: u64,
    max_bytes: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    /// An empty map of at most `cap` entries.
    pub fn new(cap: usize) -> Self {
        Self::with_byte_budget(cap, u64::MAX)
    }

    /// An empty map of at most `cap` entries and `max_bytes` bytes, values sized by
    /// [`BoundedMap::insert_sized`].
    pub fn with_byte_budget(cap: usize, max_bytes: u64) -> Self {
        BoundedMap {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
            bytes: 0,
            max_bytes,
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    /// Removes `key`'s entry, if any.
    pub fn remove(&mut self, key: &K) {
        if let Some((_, b)) = self.map.remove(key) {
            self.bytes -= b;
            self.order.retain(|k| k != key);
        }
    }

    /// Sets `key` to `value` (counted as no bytes), dropping the oldest entries beyond the
    /// cap.
    pub fn insert(&mut self, key: K, value: V) {
        self.insert_sized(key, value, 0);
    }

    /// Sets `key` to `value` of `bytes` bytes, dropping the oldest entries beyond the cap or
    /// the byte budget.
    pub fn insert_sized(&mut self, key: K, value: V, bytes: u64) {
        match self.map.insert(key.clone(), (value, bytes)) {
            Some((_, old)) => self.bytes -= old,
            None => self.order.push_back(key),
        }
        self.bytes += bytes;
        while self.map.len() > self.cap || self.bytes > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, b)) = self.map.remove(&old) {
                self.bytes -= b;
            }
        }
    }
}

/// Lets an event for a key through at most once per `every`, remembering the last
/// `cap` keys: a key forgotten early only lets its next event through early, and memory
/// stays bounded whatever keys come.
#[derive(Debug)]
pub struct Cooldown<K> {
    last: BoundedMap<K, std::time::Instant>,
    every: std::time::Duration,
}

impl<K: Hash + Eq + Clone> Cooldown<K> {
    /// At most one event per key per `every`, over the last `cap` keys.
    pub fn new(cap: usize, every: std::time::Duration) -> Self {
        Cooldown {
            last: BoundedMap::new(cap),
            every,
        }
    }

    /// Whether an event for `key` may go now; if so, it is recorded.
    pub fn allow(&mut self, key: K, now: std::time::Instant) -> bool {
        if let Some(at) = self.last.get(&key)
            && now.saturating_duration_since(*at) < self.every
        {
            return false;
        }
        // Removed first: the key moves to the back, last to be forgotten.
        self.last.remove(&key);
        self.last.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cooldown_lets_one_event_per_key_through_per_interval() {
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let mut c = Cooldown::new(2, s(10));
        assert!(c.allow("a", t0));
        assert!(!c.allow("a", t0 + s(9)));
        assert!(c.allow("b", t0 + s(1)));
        assert!(c.allow("a", t0 + s(10)));
        assert!(!c.allow("a", t0 + s(11)));
        // A third key pushes out the oldest ("b"), whose next event then goes early.
        assert!(c.allow("c", t0 + s(12)));
        assert!(c.allow("b", t0 + s(12)));
        assert!(!c.allow("c", t0 + s(13)));
    }

    #[test]
    fn a_removed_key_frees_its_bytes_and_its_place() {
        let mut m = BoundedMap::with_byte_budget(2, 100);
        m.insert_sized(1, "a", 60);
        m.remove(&1);
        m.insert_sized(2, "b", 60);
        m.insert_sized(3, "c", 40);
        assert_eq!(
            (m.get(&1), m.get(&2), m.get(&3)),
            (None, Some(&"b"), Some(&"c"))
        );
    }

    #[test]
    fn the_oldest_key_goes_first() {
        let mut m = BoundedMap::new(2);
        m.insert(1, "a");
        m.insert(2, "b");
        m.insert(1, "a2");
        m.insert(3, "c");
        assert_eq!(
            (m.get(&1), m.get(&2), m.get(&3)),
            (None, Some(&"b"), Some(&"c"))
        );
    }

    #[test]
    fn the_byte_budget_drops_the_oldest_too() {
        let mut m = BoundedMap::with_byte_budget(10, 100);
        m.insert_sized(1, "a", 40);
        m.insert_sized(2, "b", 40);
        m.insert_sized(2, "b2", 50);
        assert_eq!((m.get(&1), m.get(&2)), (Some(&"a"), Some(&"b2")));
        m.insert_sized(3, "c", 30);
        assert_eq!(
            (m.get(&1), m.get(&2), m.get(&3)),
            (None, Some(&"b2"), Some(&"c"))
        );
        // Larger than the whole budget: not kept, and it pushes out everything older.
        m.insert_sized(4, "d", 101);
        assert_eq!((m.get(&2), m.get(&3), m.get(&4)), (None, None, None));
        m.insert_sized(5, "e", 100);
        assert_eq!(m.get(&5), Some(&"e"));
    }
}
