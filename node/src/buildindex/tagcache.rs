//! When a tag of an upstream-backed repository is answered from the tag table, and when the
//! upstream must be asked: a pure policy over injected time (milliseconds since the epoch),
//! no I/O.
//!
//! - A tag confirmed by the upstream less than `cache` ago is answered locally.
//! - Otherwise the upstream is asked. If it fails in a way worth retrying (down,
//!   unreachable, rate-limited), the last known digest is answered while its last
//!   confirmation is less than `stale` old; the first such answer of an outage is worth a
//!   warning, the next ones are not, until the upstream answers again.
//! - A tag's confirmation is the later of when this node last heard the upstream confirm
//!   it (kept in memory) and when the tag table last changed it (a lower bound, and all a
//!   restarted node knows), so an outage that starts right after a restart still answers
//!   the tags the table holds.

use std::collections::HashMap;

/// A repository and tag.
type Key = (String, String);

/// What this node remembers of one tag.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// When the upstream last confirmed it (ms since the epoch).
    confirmed_ms: u64,
    /// Whether the current outage was already reported for it.
    warned: bool,
}

/// What to do with a failed upstream lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Answer the last known digest, `age_ms` after its last confirmation; `warn` for the
    /// first answer of this outage.
    Stale {
        /// Milliseconds since the last confirmation.
        age_ms: u64,
        /// Whether to log a warning now.
        warn: bool,
    },
    /// Nothing usable: fail.
    Fail,
}

/// The tag cache policy of one build-index node (all upstreams; each call names its
/// route's durations).
#[derive(Debug, Default)]
pub struct TagCache {
    seen: HashMap<Key, Seen>,
}

/// Durations of one upstream route, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl {
    /// How long a confirmed tag is answered without asking.
    pub cache_ms: u64,
    /// How long after its last confirmation a tag is answered while the upstream fails.
    pub stale_ms: u64,
}

impl Ttl {
    /// From a route's `tag_cache_secs` and `tag_stale_secs`.
    pub fn from_secs(cache_secs: u64, stale_secs: u64) -> Self {
        Ttl {
            cache_ms: cache_secs.saturating_mul(1000),
            stale_ms: stale_secs.saturating_mul(1000),
        }
    }
}

impl TagCache {
    /// When `repo:tag` was last confirmed, given `stored_ms`, when the tag table last set
    /// it (`None` if the table does not hold it: then nothing is confirmed).
    fn confirmed_ms(&self, repo: &str, tag: &str, stored_ms: Option<u64>) -> Option<u64> {
        let stored_ms = stored_ms?;
        let seen = self
            .seen
            .get(&(repo.to_string(), tag.to_string()))
            .map_or(0, |s| s.confirmed_ms);
        Some(seen.max(stored_ms))
    }

    /// Whether the table's entry (set at `stored_ms`, `None` if it has none) may be
    /// answered at `now_ms` without asking the upstream.
    pub fn is_fresh(
        &self,
        repo: &str,
        tag: &str,
        stored_ms: Option<u64>,
        now_ms: u64,
        ttl: Ttl,
    ) -> bool {
        self.confirmed_ms(repo, tag, stored_ms)
            .is_some_and(|c| now_ms.saturating_sub(c) < ttl.cache_ms)
    }

    /// The upstream confirmed `repo:tag` at `now_ms` (the table now holds its answer).
    /// Returns whether this ends an outage that was reported for it.
    pub fn confirmed(&mut self, repo: &str, tag: &str, now_ms: u64) -> bool {
        let seen = self
            .seen
            .entry((repo.to_string(), tag.to_string()))
            .or_default();
        let recovered = seen.warned;
        *seen = Seen {
            confirmed_ms: seen.confirmed_ms.max(now_ms),
            warned: false,
        };
        recovered
    }

    /// The upstream says `repo:tag` does not exist: nothing of it is remembered.
    pub fn forget(&mut self, repo: &str, tag: &str) {
        self.seen.remove(&(repo.to_string(), tag.to_string()));
    }

    /// The upstream failed in a way worth retrying at `now_ms`: may the table's entry (set
    /// at `stored_ms`, `None` if it has none) be answered, and is it the first time in
    /// this outage?
    pub fn on_failure(
        &mut self,
        repo: &str,
        tag: &str,
        stored_ms: Option<u64>,
        now_ms: u64,
        ttl: Ttl,
    ) -> Fallback {
        let Some(confirmed) = self.confirmed_ms(repo, tag, stored_ms) else {
            return Fallback::Fail;
        };
        let age_ms = now_ms.saturating_sub(confirmed);
        if age_ms >= ttl.stale_ms {
            return Fallback::Fail;
        }
        let seen = self
            .seen
            .entry((repo.to_string(), tag.to_string()))
            .or_default();
        seen.confirmed_ms = confirmed;
        let warn = !seen.warned;
        seen.warned = true;
        Fallback::Stale { age_ms, warn }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Ttl = Ttl {
        cache_ms: 300_000,
        stale_ms: 86_400_000,
    };
    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn a_confirmed_tag_is_fresh_for_the_cache_time_only() {
        let mut c = TagCache::default();
        // Nothing stored: always ask.
        assert!(!c.is_fresh("r", "t", None, T0, TTL));
        c.confirmed("r", "t", T0);
        assert!(c.is_fresh("r", "t", Some(T0), T0, TTL));
        assert!(c.is_fresh("r", "t", Some(T0), T0 + 299_999, TTL));
        assert!(!c.is_fresh("r", "t", Some(T0), T0 + 300_000, TTL));
        // A reconfirmation (same digest: the table keeps its old time) renews it.
        c.confirmed("r", "t", T0 + 300_000);
        assert!(c.is_fresh("r", "t", Some(T0), T0 + 500_000, TTL));
        // Other tags are their own.
        assert!(!c.is_fresh("r", "u", None, T0, TTL));
        // The table's entry without a confirmation held here (a restarted node): its
        // time of change counts.
        let fresh = TagCache::default();
        assert!(fresh.is_fresh("r", "t", Some(T0), T0 + 1000, TTL));
        assert!(!fresh.is_fresh("r", "t", Some(T0), T0 + 300_000, TTL));
    }

    #[test]
    fn a_zero_cache_time_always_asks() {
        let mut c = TagCache::default();
        c.confirmed("r", "t", T0);
        let ttl = Ttl::from_secs(0, 60);
        assert!(!c.is_fresh("r", "t", Some(T0), T0, ttl));
    }

    #[test]
    fn an_outage_answers_the_last_digest_until_it_is_too_stale_warning_once() {
        let mut c = TagCache::default();
        c.confirmed("r", "t", T0);
        let at = |m: u64| T0 + m;
        assert_eq!(
            c.on_failure("r", "t", Some(T0), at(400_000), TTL),
            Fallback::Stale {
                age_ms: 400_000,
                warn: true
            }
        );
        assert_eq!(
            c.on_failure("r", "t", Some(T0), at(500_000), TTL),
            Fallback::Stale {
                age_ms: 500_000,
                warn: false
            }
        );
        // Another tag's outage is reported for it too.
        c.confirmed("r", "u", T0);
        assert!(matches!(
            c.on_failure("r", "u", Some(T0), at(500_000), TTL),
            Fallback::Stale { warn: true, .. }
        ));
        // Past the staleness limit: fail.
        assert_eq!(
            c.on_failure("r", "t", Some(T0), at(86_400_000), TTL),
            Fallback::Fail
        );
        // The upstream is back: that ends the outage, and the next one warns again.
        assert!(c.confirmed("r", "t", at(86_500_000)));
        assert!(!c.confirmed("r", "t", at(86_600_000)));
        assert!(matches!(
            c.on_failure("r", "t", Some(T0), at(86_900_000), TTL),
            Fallback::Stale { warn: true, .. }
        ));
    }

    #[test]
    fn nothing_stored_or_forgotten_fails() {
        let mut c = TagCache::default();
        assert_eq!(c.on_failure("r", "t", None, T0, TTL), Fallback::Fail);
        c.confirmed("r", "t", T0);
        // The table no longer holds it (the upstream said no such tag).
        c.forget("r", "t");
        assert_eq!(c.on_failure("r", "t", None, T0 + 1, TTL), Fallback::Fail);
    }

    #[test]
    fn after_a_restart_the_tables_time_bounds_the_staleness() {
        let mut c = TagCache::default();
        assert!(matches!(
            c.on_failure("r", "t", Some(T0), T0 + 1000, TTL),
            Fallback::Stale {
                age_ms: 1000,
                warn: true
            }
        ));
        assert_eq!(
            c.on_failure("r", "t", Some(T0), T0 + TTL.stale_ms, TTL),
            Fallback::Fail
        );
    }
}
