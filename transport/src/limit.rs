//! Bandwidth limits on piece traffic: an async token bucket (feature `quic`).
//!
//! A [`RateLimiter`] admits `bytes_per_sec` bytes per second on average and up to `burst`
//! bytes at once after a quiet spell. It is cheap to clone and every clone draws from the
//! same bucket, so one limiter shared by all blobs of a node caps the whole node; the
//! exchange takes one for outgoing and one for incoming piece payloads
//! ([`ExchangeConfig::egress`](crate::exchange::ExchangeConfig::egress),
//! [`ExchangeConfig::ingress`](crate::exchange::ExchangeConfig::ingress)) and asks it for
//! every [`LIMIT_CHUNK`] bytes before sending or reading them.
//!
//! # How it waits
//!
//! The bucket holds at most `burst` tokens (one per byte) and refills continuously at the
//! rate, by the time elapsed since the last call (no background task). An
//! [`acquire`](RateLimiter::acquire) takes its tokens at once, under a short lock, even if
//! that leaves the bucket in debt, and then sleeps until the debt it is part of has been
//! repaid. So:
//!
//! - callers are served in the order they asked (a reservation queue without a queue):
//!   concurrent callers share the rate fairly, chunk by chunk;
//! - a request larger than the burst still passes, after the time its size takes at the
//!   rate, and the callers after it wait for that debt: nothing deadlocks;
//! - a caller that is cancelled while it sleeps has still spent its tokens (no refund), so
//!   dropping a transfer never lets the next one exceed the rate.
//!
//! Time comes from `tokio::time`, so tests run it on a paused clock.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Bytes a transfer asks its limiter for at a time: small enough that concurrent pieces
/// interleave smoothly, large enough that the lock is taken rarely.
pub const LIMIT_CHUNK: usize = 64 * 1024;

/// The smallest burst [`RateLimiter::new`] picks when the caller passes 0: 1 MiB.
pub const MIN_DEFAULT_BURST: u64 = 1 << 20;

/// Why a limiter could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// A rate of 0 bytes per second would never admit a byte; leave the limit out
    /// (`None`) for "unlimited".
    #[error("a rate limit must be above 0 bytes/s (leave it unset for no limit)")]
    ZeroRate,
}

/// An async token bucket shared by its clones. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes per second.
    rate: u64,
    /// Most tokens the bucket holds.
    burst: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Tokens now; negative is debt that later callers wait out.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl RateLimiter {
    /// A bucket of `bytes_per_sec` bytes per second that holds up to `burst` bytes; it
    /// starts full. A `burst` of 0 picks `max(bytes_per_sec / 10, 1 MiB)`: a tenth of a
    /// second of traffic, but never less than a few pieces' worth of chunks.
    ///
    /// A rate of 0 is [`LimitError::ZeroRate`].
    pub fn new(bytes_per_sec: u64, burst: u64) -> Result<Self, LimitError> {
        if bytes_per_sec == 0 {
            return Err(LimitError::ZeroRate);
        }
        let burst = match burst {
            0 => (bytes_per_sec / 10).max(MIN_DEFAULT_BURST),
            b => b,
        };
        Ok(RateLimiter {
            inner: Arc::new(Bucket {
                rate: bytes_per_sec,
                burst,
                state: Mutex::new(State {
                    tokens: burst as f64,
                    last: Instant::now(),
                }),
            }),
        })
    }

    /// The rate, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.inner.rate
    }

    /// The most bytes admitted at once after a quiet spell.
    pub fn burst(&self) -> u64 {
        self.inner.burst
    }

    /// Waits until `bytes` may pass. Takes the tokens at once (going into debt if the
    /// bucket has too few), then sleeps until the debt is repaid; a request larger than
    /// the burst therefore passes too, after `bytes / rate` seconds at most.
    pub async fn acquire(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `bytes` tokens at `now`; returns how long the caller must wait.
    fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        let bucket = &*self.inner;
        let mut state = bucket.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.tokens = (state.tokens + elapsed * bucket.rate as f64).min(bucket.burst as f64);
        state.last = now.max(state.last);
        state.tokens -= bytes as f64;
        if state.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.tokens / bucket.rate as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    async fn send(limiter: &RateLimiter, total: u64) {
        let mut left = total;
        while left > 0 {
            let n = left.min(LIMIT_CHUNK as u64);
            limiter.acquire(n).await;
            left -= n;
        }
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn a_zero_rate_is_an_error_and_a_zero_burst_gets_a_default() {
        assert_eq!(RateLimiter::new(0, 10).unwrap_err(), LimitError::ZeroRate);
        assert_eq!(RateLimiter::new(5 * MIB, 0).unwrap().burst(), MIB);
        assert_eq!(RateLimiter::new(100 * MIB, 0).unwrap().burst(), 10 * MIB);
        let l = RateLimiter::new(7, 3).unwrap();
        assert_eq!((l.rate(), l.burst()), (7, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn ten_mib_at_five_mib_per_second_takes_about_two_seconds() {
        let limiter = RateLimiter::new(5 * MIB, MIB).unwrap();
        let start = Instant::now();
        send(&limiter, 10 * MIB).await;
        // The first MiB is the burst; the other nine take 1.8 s.
        let took = secs(start.elapsed());
        assert!((1.75..=2.05).contains(&took), "took {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_burst_passes_at_once_and_refills_while_idle() {
        let limiter = RateLimiter::new(MIB, MIB).unwrap();
        let start = Instant::now();
        send(&limiter, MIB).await;
        assert!(start.elapsed() < Duration::from_millis(1));
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Ten idle seconds refill one burst, not ten.
        let start = Instant::now();
        send(&limiter, 2 * MIB).await;
        let took = secs(start.elapsed());
        assert!((0.95..=1.05).contains(&took), "took {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate_fairly() {
        // A burst of one chunk: the first caller to run would take a larger burst alone
        // (acquiring from a full bucket does not yield), which is not what is measured here.
        let limiter = RateLimiter::new(5 * MIB, LIMIT_CHUNK as u64).unwrap();
        let start = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    send(&l, 5 * MIB / 2).await;
                    start.elapsed()
                })
            })
            .collect();
        let mut ends = Vec::new();
        for t in tasks {
            ends.push(secs(t.await.unwrap()));
        }
        // 10 MiB in all through one bucket: ~2 s, as for a single caller.
        let last = ends.iter().copied().fold(0.0, f64::max);
        let first = ends.iter().copied().fold(f64::MAX, f64::min);
        assert!((1.95..=2.05).contains(&last), "ends {ends:?}");
        // Nobody is starved or served first: all finish within the last quarter.
        assert!(first >= 0.75 * last, "ends {ends:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_burst_passes_by_going_into_debt() {
        let limiter = RateLimiter::new(MIB, MIB).unwrap();
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(60), limiter.acquire(4 * MIB))
            .await
            .unwrap();
        let took = secs(start.elapsed());
        assert!((2.95..=3.05).contains(&took), "took {took} s");
        // The debt is repaid: a small request now waits only for its own bytes.
        let start = Instant::now();
        limiter.acquire(MIB / 2).await;
        let took = secs(start.elapsed());
        assert!((0.45..=0.55).contains(&took), "took {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn later_callers_wait_behind_anothers_debt() {
        let limiter = RateLimiter::new(MIB, MIB).unwrap();
        let big = limiter.clone();
        let start = Instant::now();
        let first = tokio::spawn(async move { big.acquire(3 * MIB).await });
        tokio::task::yield_now().await;
        limiter.acquire(1).await;
        // The big request left 2 MiB of debt: 2 s for anyone after it.
        let took = secs(start.elapsed());
        assert!((1.95..=2.05).contains(&took), "took {took} s");
        first.await.unwrap();
    }
}
