//! `ViewRefresher`: when an agent should ask a ring node for a fresh [`ClusterView`].
//!
//! Agents do not gossip. They hold the last view a ring node sent them and refresh it
//! periodically, and soon after an error (a failed refresh, or an owner from the view that
//! did not answer), backing off exponentially while errors continue. This is the policy
//! only, sans-IO: the node crate does the QUIC request and feeds the outcome back.
//!
//! ```text
//! if refresher.poll_refresh(now) { send a view request to some seed }
//! refresher.handle_view(now, bytes) / refresher.handle_error(now)
//! sleep until refresher.poll_timeout()
//! ```

use std::time::{Duration, Instant};

use crate::ConfigError;
use crate::view::{ClusterId, ClusterView, ViewError};

/// How often an agent refreshes its view.
///
/// The defaults suit thousands of agents against a handful of ring nodes: one request per
/// agent every 30 s, and after errors a retry from 500 ms doubling up to 30 s. A request
/// with no answer after 10 s counts as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewRefreshConfig {
    /// Period of refreshes while all is well.
    pub interval: Duration,
    /// First retry delay after an error.
    pub min_retry: Duration,
    /// Longest retry delay while errors continue.
    pub max_retry: Duration,
    /// A request outstanding this long is treated as failed.
    pub request_timeout: Duration,
}

impl Default for ViewRefreshConfig {
    fn default() -> Self {
        ViewRefreshConfig {
            interval: Duration::from_secs(30),
            min_retry: Duration::from_millis(500),
            max_retry: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl ViewRefreshConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() || self.min_retry.is_zero() || self.request_timeout.is_zero() {
            return Err(ConfigError(
                "interval, min_retry and request_timeout must be above 0".into(),
            ));
        }
        if self.min_retry > self.max_retry {
            return Err(ConfigError(format!(
                "min_retry ({:?}) must not exceed max_retry ({:?})",
                self.min_retry, self.max_retry
            )));
        }
        Ok(())
    }
}

/// The agent-side refresh state machine (see the module docs).
#[derive(Debug, Clone)]
pub struct ViewRefresher {
    config: ViewRefreshConfig,
    cluster_id: ClusterId,
    view: Option<ClusterView>,
    /// When the next request is due (`None` while one is in flight).
    next: Option<Instant>,
    /// When the request in flight was sent.
    in_flight_since: Option<Instant>,
    /// Consecutive errors.
    failures: u32,
}

impl ViewRefresher {
    /// A refresher with no view yet: the first request is due at `now`.
    pub fn new(config: ViewRefreshConfig, cluster_id: ClusterId, now: Instant) -> Self {
        ViewRefresher {
            config,
            cluster_id,
            view: None,
            next: Some(now),
            in_flight_since: None,
            failures: 0,
        }
    }

    /// The current view, once one arrived.
    pub fn view(&self) -> Option<&ClusterView> {
        self.view.as_ref()
    }

    /// Consecutive errors since the last good view.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether to send a view request now; `true` marks one in flight.
    pub fn poll_refresh(&mut self, now: Instant) -> bool {
        if let Some(since) = self.in_flight_since {
            if now.saturating_duration_since(since) >= self.config.request_timeout {
                self.handle_error(now);
            } else {
                return false;
            }
        }
        match self.next {
            Some(due) if now >= due => {
                self.next = None;
                self.in_flight_since = Some(now);
                true
            }
            _ => false,
        }
    }

    /// The next instant [`poll_refresh`](Self::poll_refresh) may return `true` or a request
    /// times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.in_flight_since {
            Some(since) => Some(since + self.config.request_timeout),
            None => self.next,
        }
    }

    /// A view arrived (encoded). Returns whether the membership changed. A malformed view or
    /// one of another cluster counts as an error.
    pub fn handle_view(&mut self, now: Instant, bytes: &[u8]) -> Result<bool, ViewError> {
        match ClusterView::decode_for(bytes, &self.cluster_id) {
            Ok(view) => Ok(self.accept(now, view)),
            Err(e) => {
                self.handle_error(now);
                Err(e)
            }
        }
    }

    /// A decoded view arrived. Returns whether the membership changed.
    pub fn accept(&mut self, now: Instant, view: ClusterView) -> bool {
        let changed = self
            .view
            .as_ref()
            .is_none_or(|old| !old.same_membership(&view));
        self.view = Some(view);
        self.failures = 0;
        self.in_flight_since = None;
        self.next = Some(now + self.config.interval);
        changed
    }

    /// A refresh failed, or a node from the view did not answer: refresh soon, backing off
    /// while errors continue. Repeated calls while a retry is already scheduled earlier do
    /// not push it back.
    pub fn handle_error(&mut self, now: Instant) {
        let shift = self.failures.min(20);
        let delay = self
            .config
            .min_retry
            .saturating_mul(1u32 << shift)
            .min(self.config.max_retry);
        self.failures = self.failures.saturating_add(1);
        self.in_flight_since = None;
        let due = now + delay;
        self.next = Some(match self.next {
            Some(earlier) if earlier < due => earlier,
            _ => due,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::{Member, NodeId, Role, RoleSet};

    fn cluster() -> ClusterId {
        ClusterId::new("c").unwrap()
    }

    fn view(n: usize) -> ClusterView {
        ClusterView::new(
            cluster(),
            (0..n).map(|i| {
                Member::new(
                    NodeId::new(format!("n{i}")).unwrap(),
                    RoleSet::of(&[Role::Origin]),
                    "127.0.0.1:1".parse().unwrap(),
                )
            }),
        )
        .unwrap()
    }

    #[test]
    fn first_request_at_once_then_periodic() {
        let cfg = ViewRefreshConfig::default();
        assert!(cfg.validate().is_ok());
        let t0 = Instant::now();
        let mut r = ViewRefresher::new(cfg.clone(), cluster(), t0);
        assert!(r.poll_refresh(t0));
        assert!(!r.poll_refresh(t0), "one request in flight");
        assert_eq!(r.poll_timeout(), Some(t0 + cfg.request_timeout));
        assert_eq!(r.handle_view(t0, &view(2).encode()), Ok(true));
        assert_eq!(r.view().map(ClusterView::len), Some(2));
        assert_eq!(r.poll_timeout(), Some(t0 + cfg.interval));
        assert!(!r.poll_refresh(t0 + cfg.interval / 2));
        let t1 = t0 + cfg.interval;
        assert!(r.poll_refresh(t1));
        assert_eq!(
            r.handle_view(t1, &view(2).with_epoch(5).encode()),
            Ok(false)
        );
    }

    #[test]
    fn errors_back_off_and_reset() {
        let cfg = ViewRefreshConfig {
            min_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(4),
            ..ViewRefreshConfig::default()
        };
        let t0 = Instant::now();
        let mut r = ViewRefresher::new(cfg.clone(), cluster(), t0);
        let mut t = t0;
        for expected in [1, 2, 4, 4] {
            assert!(r.poll_refresh(t));
            r.handle_error(t);
            assert_eq!(r.poll_timeout(), Some(t + Duration::from_secs(expected)));
            t += Duration::from_secs(expected);
        }
        assert_eq!(r.failures(), 4);
        // A wrong cluster is an error too.
        assert!(r.poll_refresh(t));
        let foreign = ClusterView::new(ClusterId::new("other").unwrap(), []).unwrap();
        assert!(r.handle_view(t, &foreign.encode()).is_err());
        assert_eq!(r.failures(), 5);
        t += Duration::from_secs(4);
        assert!(r.poll_refresh(t));
        assert_eq!(r.handle_view(t, &view(1).encode()), Ok(true));
        assert_eq!(r.failures(), 0);
    }

    #[test]
    fn timed_out_request_counts_as_error() {
        let cfg = ViewRefreshConfig::default();
        let t0 = Instant::now();
        let mut r = ViewRefresher::new(cfg.clone(), cluster(), t0);
        assert!(r.poll_refresh(t0));
        let t1 = t0 + cfg.request_timeout;
        assert!(
            !r.poll_refresh(t1),
            "timed out; retry scheduled after min_retry"
        );
        assert_eq!(r.failures(), 1);
        assert!(r.poll_refresh(t1 + cfg.min_retry));
    }

    #[test]
    fn owner_errors_while_idle_pull_the_refresh_forward() {
        let cfg = ViewRefreshConfig::default();
        let t0 = Instant::now();
        let mut r = ViewRefresher::new(cfg.clone(), cluster(), t0);
        assert!(r.poll_refresh(t0));
        r.accept(t0, view(3));
        r.handle_error(t0);
        assert_eq!(r.poll_timeout(), Some(t0 + cfg.min_retry));
        // A second error does not push the retry back.
        r.handle_error(t0 + Duration::from_millis(100));
        assert_eq!(r.poll_timeout(), Some(t0 + cfg.min_retry));
    }
}
