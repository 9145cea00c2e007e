//! Token buckets, pure (time is passed in): the rate limits of outgoing queries and of
//! inbound store requests per remote peer.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens a second and a burst of one second's worth (at least
    /// one token).
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        TokenBucket {
            rate,
            burst: rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A `now` earlier than the last one (callers' clocks are monotonic, but be safe)
        // adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now` (an idle peer's bucket can be forgotten).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// One [`TokenBucket`] per key (remote peer), at most `max_keys` of them: when full, the
/// buckets of idle keys (full again) are forgotten; if none is idle, the new key shares
/// the fate of the busiest: it is refused until some bucket idles.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: u32,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// Buckets of `rate` tokens a second per key, for at most `max_keys` keys.
    pub fn new(rate: u32, max_keys: usize) -> Self {
        KeyedBuckets {
            rate,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token from `key`'s bucket.
    pub fn try_take(&mut self, key: &K, now: Instant) -> bool {
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.try_take(now);
        }
        if self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, b| !b.is_full(now));
            if self.buckets.len() >= self.max_keys {
                return false;
            }
        }
        let mut bucket = TokenBucket::new(self.rate, now);
        let taken = bucket.try_take(now);
        self.buckets.insert(key.clone(), bucket);
        taken
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        assert_eq!((0..20).filter(|_| b.try_take(t0)).count(), 10);
        // 0.5 s later: 5 more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| b.try_take(t1)).count(), 5);
        // Long idle refills to the burst only.
        let t2 = t1 + Duration::from_secs(100);
        assert!(b.is_full(t2));
        assert_eq!((0..50).filter(|_| b.try_take(t2)).count(), 10);
        // Time going backwards adds nothing and does not panic.
        assert!(!b.try_take(t0));
    }

    #[test]
    fn keyed_buckets_are_per_key_and_bounded() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::new(2, 2);
        assert!(k.try_take(&"a", t0));
        assert!(k.try_take(&"a", t0));
        assert!(!k.try_take(&"a", t0), "a's burst is spent");
        assert!(k.try_take(&"b", t0), "b has its own bucket");
        // Table full (a, b) and nobody idle: c is refused.
        assert!(!k.try_take(&"c", t0));
        // A second later everyone is full again and may be forgotten.
        let t1 = t0 + Duration::from_secs(1);
        assert!(k.try_take(&"c", t1));
    }
}
