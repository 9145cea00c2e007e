//! What gossip refused, counted ([`GossipCounters`]), and logs that say so at most once per
//! key per interval (`RateLimitedLog`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::auth::RejectReason;

/// How often the same problem (same node and reason, or same kind of bad datagram) is
/// logged at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Most distinct keys a [`RateLimitedLog`] remembers; past it, keys older than the interval
/// are forgotten, and if none is, new keys are not logged (still counted).
const MAX_LOG_KEYS: usize = 4096;

/// Counters of what gossip refused, shared by the gossip tasks and readers such as a
/// node's Prometheus endpoint ([`Membership::counters`](super::Membership::counters)).
#[derive(Debug, Default)]
pub struct GossipCounters {
    rejected: [AtomicU64; RejectReason::ALL.len()],
    garbage_datagrams: AtomicU64,
    wrong_cluster_datagrams: AtomicU64,
    clamped_weights: AtomicU64,
}

/// A snapshot of [`GossipCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Member records refused, by reason (each distinct record once, not once per gossip
    /// round), in [`RejectReason::ALL`] order.
    pub rejected: Vec<(RejectReason, u64)>,
    /// Datagrams on the gossip port that did not decode as chitchat messages.
    pub garbage_datagrams: u64,
    /// Chitchat messages for another cluster (a `Syn` with another cluster id, or a
    /// peer's "bad cluster" answer).
    pub wrong_cluster_datagrams: u64,
    /// Admitted members whose claimed weight was lowered to `max_member_weight`.
    pub clamped_weights: u64,
}

impl GossipStats {
    /// Records refused for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Records refused for any reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|(_, n)| n).sum()
    }
}

impl GossipCounters {
    /// The current values.
    pub fn snapshot(&self) -> GossipStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GossipStats {
            rejected: RejectReason::ALL
                .iter()
                .map(|r| (*r, get(&self.rejected[r.index()])))
                .collect(),
            garbage_datagrams: get(&self.garbage_datagrams),
            wrong_cluster_datagrams: get(&self.wrong_cluster_datagrams),
            clamped_weights: get(&self.clamped_weights),
        }
    }

    pub(crate) fn reject(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn garbage(&self) {
        self.garbage_datagrams.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn wrong_cluster(&self) {
        self.wrong_cluster_datagrams.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn clamped(&self) {
        self.clamped_weights.fetch_add(1, Ordering::Relaxed);
    }
}

/// Decides which problems to log: a key is logged the first time, then at most once per
/// interval, with how many were not logged in between.
#[derive(Debug)]
pub(crate) struct RateLimitedLog<K> {
    interval: Duration,
    /// Per key: when last logged, and occurrences since.
    last: HashMap<K, (Instant, u64)>,
}

impl<K: Hash + Eq + Clone> RateLimitedLog<K> {
    pub(crate) fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            last: HashMap::new(),
        }
    }

    /// One occurrence of `key` at `now`: `Some(suppressed)` if it should be logged (with
    /// how many occurrences were not logged since the last line), `None` if not.
    pub(crate) fn hit(&mut self, now: Instant, key: &K) -> Option<u64> {
        if let Some((at, suppressed)) = self.last.get_mut(key) {
            if now.saturating_duration_since(*at) < self.interval {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *at = now;
            *suppressed = 0;
            return Some(n);
        }
        if self.last.len() >= MAX_LOG_KEYS {
            let interval = self.interval;
            self.last
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < interval);
            if self.last.len() >= MAX_LOG_KEYS {
                return None;
            }
        }
        self.last.insert(key.clone(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_logged_once_per_interval_with_the_count_it_skipped() {
        let t0 = Instant::now();
        let mut log = RateLimitedLog::new(Duration::from_secs(60));
        assert_eq!(log.hit(t0, &"a"), Some(0));
        for i in 1..=100 {
            assert_eq!(log.hit(t0 + Duration::from_millis(i), &"a"), None);
        }
        assert_eq!(log.hit(t0, &"b"), Some(0), "keys are independent");
        assert_eq!(log.hit(t0 + Duration::from_secs(60), &"a"), Some(100));
        assert_eq!(log.hit(t0 + Duration::from_secs(61), &"a"), None);
    }

    #[test]
    fn keys_are_bounded() {
        let t0 = Instant::now();
        let mut log = RateLimitedLog::new(Duration::from_secs(60));
        for i in 0..MAX_LOG_KEYS {
            assert_eq!(log.hit(t0, &i), Some(0));
        }
        assert_eq!(log.hit(t0, &usize::MAX), None, "full: not logged");
        assert_eq!(log.last.len(), MAX_LOG_KEYS);
        // Once the old keys are older than the interval, they make room.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(log.hit(later, &usize::MAX), Some(0));
        assert_eq!(log.last.len(), 1);
    }

    #[test]
    fn counters_snapshot() {
        let c = GossipCounters::default();
        c.reject(RejectReason::BadSignature);
        c.reject(RejectReason::BadSignature);
        c.reject(RejectReason::Unsigned);
        c.garbage();
        c.wrong_cluster();
        c.clamped();
        let s = c.snapshot();
        assert_eq!(s.rejected(RejectReason::BadSignature), 2);
        assert_eq!(s.rejected(RejectReason::Unsigned), 1);
        assert_eq!(s.rejected(RejectReason::StaleGeneration), 0);
        assert_eq!(s.rejected_total(), 3);
        assert_eq!(
            (
                s.garbage_datagrams,
                s.wrong_cluster_datagrams,
                s.clamped_weights
            ),
            (1, 1, 1)
        );
    }
}
