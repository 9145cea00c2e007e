//! When the next anti-entropy pass is due. Pure: the driver tells it the time and what
//! happened, and sleeps until [`PassSchedule::poll_timeout`].
//!
//! The first pass is due `debounce` after start. A change of the origin ring view makes a
//! pass due `debounce` after the first change of a burst (not after the last, so changes
//! every few hundred ms cannot postpone it forever); a change during a pass makes another
//! one due `debounce` after it ends. After a pass, the next is due `interval` later
//! (never, with no interval), failed or not.

use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Debug, Clone)]
pub struct PassSchedule {
    interval: Option<Duration>,
    debounce: Duration,
    due: Option<Instant>,
    running: bool,
    changed_while_running: bool,
}

impl PassSchedule {
    /// A schedule started at `now`: `interval` between passes (`None`: only after ring
    /// changes), `debounce` after a change.
    pub fn new(now: Instant, interval: Option<Duration>, debounce: Duration) -> Self {
        PassSchedule {
            interval,
            debounce,
            due: Some(now + debounce),
            running: false,
            changed_while_running: false,
        }
    }

    /// The origin ring view changed at `now`.
    pub fn ring_changed(&mut self, now: Instant) {
        if self.running {
            self.changed_while_running = true;
            return;
        }
        let soon = now + self.debounce;
        self.due = Some(self.due.map_or(soon, |d| d.min(soon)));
    }

    /// Whether a pass should start at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        !self.running && self.due.is_some_and(|d| d <= now)
    }

    /// A pass starts.
    pub fn started(&mut self) {
        self.running = true;
        self.changed_while_running = false;
        self.due = None;
    }

    /// The pass that started ended at `now`, whatever its outcome.
    pub fn finished(&mut self, now: Instant) {
        self.running = false;
        self.due = if std::mem::take(&mut self.changed_while_running) {
            Some(now + self.debounce)
        } else {
            self.interval.map(|i| now + i)
        };
    }

    /// When the next pass is due (`None`: not until the ring changes).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.running { None } else { self.due }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn first_pass_after_the_debounce_then_every_interval_failed_or_not() {
        let t0 = Instant::now();
        let mut s = PassSchedule::new(t0, Some(60 * S), S);
        assert!(!s.is_due(t0));
        assert_eq!(s.poll_timeout(), Some(t0 + S));
        assert!(s.is_due(t0 + S));
        s.started();
        assert!(!s.is_due(t0 + 10 * S));
        assert_eq!(s.poll_timeout(), None);
        s.finished(t0 + 5 * S);
        assert_eq!(s.poll_timeout(), Some(t0 + 65 * S));
    }

    #[test]
    fn a_ring_change_brings_the_pass_forward_and_a_burst_cannot_postpone_it() {
        let t0 = Instant::now();
        let mut s = PassSchedule::new(t0, Some(60 * S), S);
        s.started();
        s.finished(t0);
        for ms in [0u64, 300, 600, 900] {
            s.ring_changed(t0 + 10 * S + Duration::from_millis(ms));
        }
        assert_eq!(s.poll_timeout(), Some(t0 + 11 * S));
    }

    #[test]
    fn a_change_during_a_pass_runs_another_after_it() {
        let t0 = Instant::now();
        let mut s = PassSchedule::new(t0, None, S);
        s.started();
        s.ring_changed(t0 + S);
        s.finished(t0 + 3 * S);
        assert_eq!(s.poll_timeout(), Some(t0 + 4 * S));
        s.started();
        s.finished(t0 + 5 * S);
        // No interval: nothing until the next change.
        assert_eq!(s.poll_timeout(), None);
        s.ring_changed(t0 + 9 * S);
        assert_eq!(s.poll_timeout(), Some(t0 + 10 * S));
    }
}
