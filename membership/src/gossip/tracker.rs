//! `ViewTracker`: turns successive sets of live members into views, keeping members the
//! failure detector dropped for a grace period before they leave the rings.
//!
//! Sans-IO: the gossip driver feeds it the live members and the time, and sleeps until
//! [`ViewTracker::poll_timeout`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::member::{Member, NodeId};
use crate::view::{ClusterId, ClusterView};

/// Maintains the [`ClusterView`] of one node.
#[derive(Debug)]
pub(crate) struct ViewTracker {
    cluster_id: ClusterId,
    grace: Duration,
    epoch: u64,
    /// The last live set given to [`update`](Self::update).
    live: BTreeMap<NodeId, Member>,
    /// Live members plus suspects.
    members: BTreeMap<NodeId, Member>,
    /// Suspects and when they were first missed.
    suspected: BTreeMap<NodeId, Instant>,
}

impl ViewTracker {
    /// A tracker whose first view holds `live`.
    pub(crate) fn new(
        cluster_id: ClusterId,
        grace: Duration,
        live: BTreeMap<NodeId, Member>,
    ) -> Self {
        ViewTracker {
            cluster_id,
            grace,
            epoch: 0,
            members: live.clone(),
            live,
            suspected: BTreeMap::new(),
        }
    }

    /// The current view.
    pub(crate) fn view(&self) -> ClusterView {
        ClusterView::from_checked(
            self.cluster_id.clone(),
            self.epoch,
            self.members.clone(),
            self.suspected.keys().cloned().collect(),
        )
    }

    /// The failure detector's live members changed (one per id, highest generation).
    /// Returns whether the view changed.
    pub(crate) fn update(&mut self, now: Instant, live: BTreeMap<NodeId, Member>) -> bool {
        self.live = live;
        self.recompute(now)
    }

    /// Time passed: suspects whose grace ran out leave. Returns whether the view changed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> bool {
        self.recompute(now)
    }

    /// When the next suspect's grace period ends.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.suspected
            .values()
            .map(|since| *since + self.grace)
            .min()
    }

    fn recompute(&mut self, now: Instant) -> bool {
        let mut members = self.live.clone();
        let mut suspected = BTreeMap::new();
        for (id, member) in &self.members {
            if members.contains_key(id) {
                // Still live, or replaced by a new generation.
                continue;
            }
            let since = self.suspected.get(id).copied().unwrap_or(now);
            if now < since + self.grace {
                members.insert(id.clone(), member.clone());
                suspected.insert(id.clone(), since);
            }
        }
        let changed = members != self.members
            || suspected.keys().collect::<BTreeSet<_>>()
                != self.suspected.keys().collect::<BTreeSet<_>>();
        self.members = members;
        self.suspected = suspected;
        if changed {
            self.epoch += 1;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::{Role, RoleSet};

    fn m(id: &str, generation: u64) -> (NodeId, Member) {
        let id = NodeId::new(id).unwrap();
        let mut m = Member::new(
            id.clone(),
            RoleSet::of(&[Role::Origin]),
            "127.0.0.1:1".parse().unwrap(),
        );
        m.generation = generation;
        (id, m)
    }

    fn ids(v: &ClusterView) -> Vec<String> {
        v.members().keys().map(ToString::to_string).collect()
    }

    #[test]
    fn dead_members_stay_for_the_grace_period() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut t = ViewTracker::new(
            ClusterId::new("c").unwrap(),
            grace,
            [m("a", 1), m("b", 1)].into(),
        );
        assert_eq!(t.view().epoch(), 0);
        assert!(t.poll_timeout().is_none());
        // b drops out of the live set: suspected, still a member.
        assert!(t.update(t0, [m("a", 1)].into()));
        let v = t.view();
        assert_eq!(ids(&v), ["a", "b"]);
        assert!(v.is_suspected(&NodeId::new("b").unwrap()));
        assert_eq!(v.epoch(), 1);
        assert_eq!(t.poll_timeout(), Some(t0 + grace));
        // Nothing new before the deadline.
        assert!(!t.handle_timeout(t0 + grace / 2));
        // Gone after it.
        assert!(t.handle_timeout(t0 + grace));
        assert_eq!(ids(&t.view()), ["a"]);
        assert!(t.view().suspected().is_empty());
        assert!(t.poll_timeout().is_none());
    }

    #[test]
    fn a_suspect_that_comes_back_is_cleared() {
        let t0 = Instant::now();
        let mut t = ViewTracker::new(
            ClusterId::new("c").unwrap(),
            Duration::from_secs(10),
            [m("a", 1), m("b", 1)].into(),
        );
        assert!(t.update(t0, [m("a", 1)].into()));
        assert!(t.update(t0 + Duration::from_secs(1), [m("a", 1), m("b", 1)].into()));
        assert!(t.view().suspected().is_empty());
        // Flapping again restarts the grace period from the new miss.
        let t2 = t0 + Duration::from_secs(5);
        assert!(t.update(t2, [m("a", 1)].into()));
        assert_eq!(t.poll_timeout(), Some(t2 + Duration::from_secs(10)));
    }

    #[test]
    fn a_new_generation_replaces_the_old_at_once() {
        let t0 = Instant::now();
        let mut t = ViewTracker::new(
            ClusterId::new("c").unwrap(),
            Duration::from_secs(10),
            [m("a", 1), m("b", 1)].into(),
        );
        assert!(t.update(t0, [m("a", 1), m("b", 2)].into()));
        let v = t.view();
        assert!(v.suspected().is_empty());
        assert_eq!(v.member(&NodeId::new("b").unwrap()).unwrap().generation, 2);
        assert!(
            !t.update(t0, [m("a", 1), m("b", 2)].into()),
            "no change, no new epoch"
        );
        assert_eq!(t.view().epoch(), 1);
    }

    #[test]
    fn zero_grace_removes_at_once() {
        let mut t = ViewTracker::new(
            ClusterId::new("c").unwrap(),
            Duration::ZERO,
            [m("a", 1), m("b", 1)].into(),
        );
        assert!(t.update(Instant::now(), [m("a", 1)].into()));
        assert_eq!(ids(&t.view()), ["a"]);
    }
}
