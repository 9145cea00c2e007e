//! [`LogLimiter`]: at most one log line per kind of problem per interval, with the count of
//! the occurrences it held back.
//!
//! Problems a peer can cause at will (refused connections, timeouts, caps hit, bad
//! requests) must not produce one line each: a flood of them would flood the log. The
//! limiter is consulted only when a problem happens, never on the path of a good request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default interval between two lines of the same kind.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One kind's state.
#[derive(Debug)]
struct Slot {
    /// When its last line was allowed.
    last: Instant,
    /// Occurrences held back since.
    suppressed: u64,
}

/// Allows one line per kind per interval (clones are not shared: wrap it in an `Arc`).
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    slots: Mutex<HashMap<&'static str, Slot>>,
}

impl Default for LogLimiter {
    /// One line per kind per [`DEFAULT_LOG_INTERVAL`].
    fn default() -> Self {
        LogLimiter::new(DEFAULT_LOG_INTERVAL)
    }
}

impl LogLimiter {
    /// A limiter allowing one line per kind per `interval`.
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an occurrence of `kind` now may be logged: `Some(n)` with the `n`
    /// occurrences held back since the last line of this kind (log it with that count),
    /// `None` if it is held back (counted for the next line).
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        self.allow_at(kind, Instant::now())
    }

    fn allow_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.get_mut(kind) {
            Some(slot) if now.saturating_duration_since(slot.last) < self.interval => {
                slot.suppressed += 1;
                None
            }
            Some(slot) => {
                let held = std::mem::take(&mut slot.suppressed);
                slot.last = now;
                Some(held)
            }
            None => {
                slots.insert(
                    kind,
                    Slot {
                        last: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_the_count_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(limiter.allow_at("idle", t0), Some(0));
        // 2,227 more within the interval: none logged, all counted.
        for i in 0..2227 {
            assert_eq!(
                limiter.allow_at("idle", t0 + Duration::from_millis(i)),
                None
            );
        }
        // Another kind is not held back by the first.
        assert_eq!(
            limiter.allow_at("cap", t0 + Duration::from_secs(1)),
            Some(0)
        );
        // The next interval's first line carries the count, then the count restarts.
        assert_eq!(
            limiter.allow_at("idle", t0 + Duration::from_secs(60)),
            Some(2227)
        );
        assert_eq!(limiter.allow_at("idle", t0 + Duration::from_secs(61)), None);
        assert_eq!(
            limiter.allow_at("idle", t0 + Duration::from_secs(121)),
            Some(1)
        );
    }
}
