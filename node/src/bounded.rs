//! A map that keeps at most a fixed number of entries, forgetting the oldest first: the
//! tracker's metainfo cache and the agent's pull reports.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A map of at most `cap` entries; inserting a new key beyond that drops the key that was
/// inserted earliest. Replacing a key's value keeps its place.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    /// An empty map of at most `cap` entries.
    pub fn new(cap: usize) -> Self {
        BoundedMap {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// Sets `key` to `value`, dropping the oldest entries beyond the cap.
    pub fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
