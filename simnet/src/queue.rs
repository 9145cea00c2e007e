//! The event queue: a radix heap over `(time, seq)` keys, holding the events themselves.
//!
//! A discrete-event simulation only ever schedules at or after the current time, so the
//! keys it pops never decrease. A radix heap exploits that: keys sit in buckets by the
//! highest bit in which they differ from the last key popped, a push is one `Vec::push`,
//! and a pop scans at most 129 bucket heads and redistributes one bucket, each key moving
//! down at most 128 times in its life. For the millions of short-lived events of a
//! 10,000-host run this beats a binary heap, whose sift-down touches `log n` scattered
//! cache lines per pop. Ties never happen: `seq` is unique, so the order is exactly
//! `(time, seq)`, as deterministic as the heap it replaces.
//!
//! Events travel with their keys rather than waiting in a side table: moving a few dozen
//! bytes along a bucket being redistributed is sequential, while fetching each popped
//! event from a table of hundreds of thousands was a cache miss per event at 10,000 hosts.

use crate::net::Nanos;

/// A queued key: when, and the tie-breaking sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Time of the event.
    pub at: Nanos,
    /// Order among events at the same time.
    pub seq: u64,
}

/// A monotone priority queue of `T`s by [`Key`] (see the module docs).
#[derive(Debug)]
pub struct RadixQueue<T> {
    buckets: Vec<Vec<(Key, T)>>,
    last: (Nanos, u64),
    len: usize,
}

/// Bucket of `k` relative to `last`: 0 if equal, else 1 + the index of the highest
/// differing bit of the 128-bit key `(at, seq)`.
fn bucket(last: (Nanos, u64), k: &Key) -> usize {
    if k.at != last.0 {
        128 - (k.at ^ last.0).leading_zeros() as usize
    } else if k.seq != last.1 {
        64 - (k.seq ^ last.1).leading_zeros() as usize
    } else {
        0
    }
}

impl<T> Default for RadixQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> RadixQueue<T> {
    /// An empty queue whose keys start at time 0.
    pub fn new() -> Self {
        RadixQueue {
            buckets: (0..=128).map(|_| Vec::new()).collect(),
            last: (0, 0),
            len: 0,
        }
    }

    /// Queued keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `item` at `k`, which must not be earlier than the last key popped (a key
    /// that is is treated as if it were due now, so the order stays monotone).
    pub fn push(&mut self, mut k: Key, item: T) {
        if (k.at, k.seq) < self.last {
            debug_assert!(
                false,
                "event scheduled in the past: {k:?} < {:?}",
                self.last
            );
            k.at = self.last.0;
            k.seq = k.seq.max(self.last.1);
        }
        let b = bucket(self.last, &k);
        self.buckets[b].push((k, item));
        self.len += 1;
    }

    /// The earliest item and its key.
    pub fn pop(&mut self) -> Option<(Key, T)> {
        if self.len == 0 {
            return None;
        }
        if self.buckets[0].is_empty() {
            let i = (1..self.buckets.len()).find(|&i| !self.buckets[i].is_empty())?;
            let mut items = std::mem::take(&mut self.buckets[i]);
            let min = items.iter().map(|(k, _)| (k.at, k.seq)).min()?;
            self.last = min;
            // Every item lands in a lower bucket; draining keeps the allocation for reuse.
            for (k, item) in items.drain(..) {
                let b = bucket(self.last, &k);
                self.buckets[b].push((k, item));
            }
            self.buckets[i] = items;
        }
        self.len -= 1;
        self.buckets[0].pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BinaryHeap;

    #[test]
    fn pops_in_time_then_seq_order_like_a_heap() {
        let mut q = RadixQueue::<u32>::new();
        let mut reference = BinaryHeap::new();
        let mut seq = 0u64;
        let mut now = 0u64;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            // Schedule a few events at or after now, some at exactly now.
            for _ in 0..(next() % 3) {
                seq += 1;
                let at = now
                    + if next() % 4 == 0 {
                        0
                    } else {
                        next() % 1_000_000
                    };
                q.push(Key { at, seq }, round);
                reference.push(std::cmp::Reverse((at, seq)));
            }
            if next() % 2 == 0
                && let Some(std::cmp::Reverse((at, s))) = reference.pop()
            {
                let (k, _) = q.pop().unwrap();
                assert_eq!((k.at, k.seq), (at, s));
                now = at;
            }
        }
        while let Some(std::cmp::Reverse((at, s))) = reference.pop() {
            let (k, _) = q.pop().unwrap();
            assert_eq!((k.at, k.seq), (at, s));
        }
        assert!(q.pop().is_none() && q.is_empty());
    }
}
