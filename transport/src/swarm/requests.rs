//! `Requests`: our outstanding requests to one peer, and when each gives up.
//!
//! A request first *waits* in the peer's upload queue, behind what it serves to others;
//! once the peer starts sending the piece it is a *transfer*. The two are judged
//! differently, because a busy uploader is not a broken one:
//! - a transfer must finish within the piece's own timeout (`base + size / min_rate`),
//!   counted from its start;
//! - waiting requests give up together, and only when the peer has started or finished
//!   nothing for us for a whole piece timeout. A queue that moves is a healthy peer being
//!   fair to others; timing out its requests would blacklist it and then ask it again,
//!   at the back of the same queue.
//!
//! The earliest deadline is kept at hand: the swarm's `poll_timeout` runs after every
//! input and must not walk every request.

use std::collections::BTreeMap;
use std::time::Instant;

use kraken_storage::PieceIndex;

#[derive(Debug)]
pub(super) struct Requests {
    /// Each request, with its transfer deadline once the peer started sending it.
    map: BTreeMap<PieceIndex, Option<Instant>>,
    /// Requests not started yet.
    waiting: usize,
    /// The earliest transfer deadline.
    next_transfer: Option<Instant>,
    /// When waiting requests give up, unless the peer shows progress before.
    patience: Instant,
}

impl Requests {
    pub(super) fn new(now: Instant) -> Self {
        Requests {
            map: BTreeMap::new(),
            waiting: 0,
            next_transfer: None,
            patience: now,
        }
    }

    /// A new request, waiting. The first one waiting starts the peer's patience clock.
    pub(super) fn insert(&mut self, index: PieceIndex, patience_deadline: Instant) {
        if self.map.contains_key(&index) {
            return;
        }
        if self.waiting == 0 {
            self.patience = patience_deadline;
        }
        self.map.insert(index, None);
        self.waiting += 1;
    }

    /// The peer started sending `index`: it becomes a transfer with `deadline`. False if
    /// it was not a waiting request.
    pub(super) fn start(&mut self, index: PieceIndex, deadline: Instant) -> bool {
        match self.map.get_mut(&index) {
            Some(slot @ None) => {
                *slot = Some(deadline);
                self.waiting -= 1;
                self.next_transfer = Some(self.next_transfer.map_or(deadline, |n| n.min(deadline)));
                true
            }
            _ => false,
        }
    }

    /// The peer made progress for us: waiting requests may wait until `deadline`.
    pub(super) fn progress(&mut self, deadline: Instant) {
        self.patience = self.patience.max(deadline);
    }

    pub(super) fn remove(&mut self, index: &PieceIndex) -> bool {
        match self.map.remove(index) {
            None => false,
            Some(None) => {
                self.waiting -= 1;
                true
            }
            Some(Some(deadline)) => {
                if Some(deadline) == self.next_transfer {
                    self.next_transfer = self.map.values().flatten().min().copied();
                }
                true
            }
        }
    }

    /// Requests that gave up at `now`: transfers past their deadline, and every waiting
    /// request once the peer's patience ran out.
    pub(super) fn expired(&self, now: Instant) -> Vec<PieceIndex> {
        if self.next_deadline().is_none_or(|d| d > now) {
            return Vec::new();
        }
        let impatient = self.waiting > 0 && self.patience <= now;
        self.map
            .iter()
            .filter(|(_, d)| match d {
                Some(deadline) => *deadline <= now,
                None => impatient,
            })
            .map(|(i, _)| *i)
            .collect()
    }

    /// True if `index` is requested and the peer has not started sending it.
    pub(super) fn is_waiting(&self, index: &PieceIndex) -> bool {
        matches!(self.map.get(index), Some(None))
    }

    pub(super) fn contains_key(&self, index: &PieceIndex) -> bool {
        self.map.contains_key(index)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &PieceIndex> {
        self.map.keys()
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let patience = (self.waiting > 0).then_some(self.patience);
        match (self.next_transfer, patience) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn waiting_requests_give_up_together_only_without_progress() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        r.insert(PieceIndex(0), t0 + s(8));
        r.insert(PieceIndex(1), t0 + s(9)); // Joins the first one's clock.
        assert_eq!(r.next_deadline(), Some(t0 + s(8)));
        // The peer starts piece 0 at 5 s: progress pushes piece 1's patience.
        assert!(r.start(PieceIndex(0), t0 + s(13)));
        r.progress(t0 + s(13));
        assert_eq!(r.next_deadline(), Some(t0 + s(13)));
        assert!(r.expired(t0 + s(12)).is_empty());
        assert_eq!(r.expired(t0 + s(13)), vec![PieceIndex(0), PieceIndex(1)]);
        assert!(r.remove(&PieceIndex(0)));
        assert!(r.remove(&PieceIndex(1)));
        assert!(!r.remove(&PieceIndex(1)));
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn transfers_keep_their_own_deadlines() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        r.insert(PieceIndex(3), t0 + s(8));
        r.insert(PieceIndex(4), t0 + s(8));
        assert!(r.start(PieceIndex(3), t0 + s(10)));
        assert!(r.start(PieceIndex(4), t0 + s(6)));
        assert!(!r.start(PieceIndex(4), t0 + s(7)), "started once");
        assert_eq!(r.next_deadline(), Some(t0 + s(6)));
        assert_eq!(r.expired(t0 + s(6)), vec![PieceIndex(4)]);
        r.remove(&PieceIndex(4));
        assert_eq!(r.next_deadline(), Some(t0 + s(10)));
    }
}
