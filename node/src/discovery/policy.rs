//! The discovery policy, sans IO: which source answers an announce (the tracker ring, the
//! DHT, or both), when tracker mode falls back to the DHT and when it returns, and how a
//! handout is assembled from what the sources returned.
//!
//! [`Policy`] is a small state machine driven by the caller's clock: [`Policy::plan`] says
//! what to ask for one announce, [`Policy::trackers_failed`] and
//! [`Policy::trackers_answered`] feed back what the tracker ring did, and return the
//! [`Transition`] to log and count. The handout helpers ([`merge`], [`dht_handout`],
//! [`dht_interval`]) are plain functions. `crate::discovery::tracker` does the IO.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kraken_transport::swarm::PeerInfo;
use kraken_transport::wire::PeerId;
use rand::seq::SliceRandom as _;
use serde::{Deserialize, Serialize};

/// Where peers come from (`[discovery] mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The tracker ring; the DHT only while every tracker tried fails.
    #[default]
    Tracker,
    /// The DHT alone: no tracker is asked.
    Dht,
    /// Both, merged: the tracker's peers first, the DHT's extras after.
    Both,
}

/// What one announce asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The tracker ring; the DHT only if the ring fails (tracker mode, trackers healthy
    /// or due for a retry).
    TrackersThenDht,
    /// The DHT alone (dht mode, or tracker mode fallen back with no retry due).
    Dht,
    /// Both at once, merged (both mode).
    Both,
}

/// A change of source worth a log line and a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Every tracker tried failed: announces go to the DHT until one answers again.
    FellBack {
        /// Why the trackers failed (the last error).
        why: String,
    },
    /// A tracker answered again after a fallback.
    Returned {
        /// How long the node was fallen back.
        after: Duration,
    },
}

/// Tracker mode's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Trackers answer.
    Trackers,
    /// Announces are answered from the DHT; the trackers are tried again at `next_try`.
    FallenBack { since: Instant, next_try: Instant },
}

/// The discovery policy of one node.
#[derive(Debug, Clone)]
pub struct Policy {
    mode: Mode,
    /// While fallen back, how often one announce tries the trackers again.
    retry: Duration,
    state: State,
}

impl Policy {
    /// A policy in `mode` whose fallback retries the trackers at most every `retry`.
    pub fn new(mode: Mode, retry: Duration) -> Self {
        Policy {
            mode,
            retry,
            state: State::Trackers,
        }
    }

    /// Whether tracker mode is fallen back to the DHT now.
    pub fn fallen_back(&self) -> bool {
        matches!(self.state, State::FallenBack { .. })
    }

    /// What the announce at `now` asks. While fallen back, the first announce after the
    /// retry time takes the retry (the next one is pushed back at once, so concurrent
    /// announces of other digests do not all pay a black-holed tracker's timeout).
    pub fn plan(&mut self, now: Instant) -> Plan {
        match (self.mode, &mut self.state) {
            (Mode::Dht, _) => Plan::Dht,
            (Mode::Both, _) => Plan::Both,
            (Mode::Tracker, State::Trackers) => Plan::TrackersThenDht,
            (Mode::Tracker, State::FallenBack { next_try, .. }) => {
                if now >= *next_try {
                    *next_try = now + self.retry;
                    Plan::TrackersThenDht
                } else {
                    Plan::Dht
                }
            }
        }
    }

    /// The tracker ring failed an announce (every tracker it tried): `FellBack` the first
    /// time (tracker mode only).
    pub fn trackers_failed(&mut self, now: Instant, why: &str) -> Option<Transition> {
        if self.mode != Mode::Tracker {
            return None;
        }
        match self.state {
            State::Trackers => {
                self.state = State::FallenBack {
                    since: now,
                    next_try: now + self.retry,
                };
                Some(Transition::FellBack { why: why.into() })
            }
            State::FallenBack { .. } => None,
        }
    }

    /// A tracker answered an announce: `Returned` if the node was fallen back.
    pub fn trackers_answered(&mut self, now: Instant) -> Option<Transition> {
        match std::mem::replace(&mut self.state, State::Trackers) {
            State::FallenBack { since, .. } => Some(Transition::Returned {
                after: now.saturating_duration_since(since),
            }),
            State::Trackers => None,
        }
    }
}

/// The announce interval of a DHT-sourced handout: short while the blob is incomplete (new
/// providers appear as other downloads start; a lookup is cheap next to a stalled
/// download), and a quarter of that while the lookup found fewer than half of `cap`
/// providers (a swarm that is just starting: every agent provides as it starts, and the
/// sooner they find each other the less the origins send twice); long once it is complete
/// (a seeder only needs to be found, not to find).
pub fn dht_interval(
    complete: bool,
    found: usize,
    cap: usize,
    incomplete: Duration,
    complete_every: Duration,
) -> Duration {
    if complete {
        complete_every
    } else if found < cap.div_ceil(2) {
        incomplete / 4
    } else {
        incomplete
    }
}

/// A DHT-sourced handout: the providers shuffled (a lookup returns them in XOR-distance
/// order, which would send every downloader to the same few), without `me`, deduplicated,
/// capped at `cap`, then the digest's owning origins (which provide nothing to the DHT:
/// the ring already says where they are) after them.
pub fn dht_handout(
    mut providers: Vec<PeerInfo>,
    origins: Vec<PeerInfo>,
    me: PeerId,
    cap: usize,
    rng: &mut impl rand::Rng,
) -> Vec<PeerInfo> {
    providers.shuffle(rng);
    let mut seen = HashSet::from([me]);
    let mut out: Vec<PeerInfo> = providers
        .into_iter()
        .filter(|p| seen.insert(p.id))
        .take(cap)
        .collect();
    out.extend(origins.into_iter().filter(|p| seen.insert(p.id)));
    out
}

/// Both mode's handout: the tracker's peers in its order (its handout shapes the swarm
/// best), then the DHT's peers it did not name, deduplicated by peer id, without `me`,
/// capped at `cap` (the tracker's own origins included).
pub fn merge(tracker: Vec<PeerInfo>, dht: Vec<PeerInfo>, me: PeerId, cap: usize) -> Vec<PeerInfo> {
    let mut seen = HashSet::from([me]);
    tracker
        .into_iter()
        .chain(dht)
        .filter(|p| seen.insert(p.id))
        .take(cap)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use kraken_transport::swarm::PeerKind;
    use rand::SeedableRng as _;

    use super::*;

    const RETRY: Duration = Duration::from_secs(5);

    fn peer(n: u8) -> PeerInfo {
        PeerInfo {
            id: PeerId::from_u64(u64::from(n)),
            addr: SocketAddr::from(([127, 0, 0, n], 4000)),
            kind: PeerKind::Agent,
            complete: false,
        }
    }

    fn ids(peers: &[PeerInfo]) -> Vec<u8> {
        peers.iter().map(octet).collect()
    }

    fn octet(p: &PeerInfo) -> u8 {
        match p.addr.ip() {
            std::net::IpAddr::V4(v4) => v4.octets()[3],
            std::net::IpAddr::V6(_) => 0,
        }
    }

    #[test]
    fn tracker_mode_asks_trackers_while_they_answer() {
        let now = Instant::now();
        let mut p = Policy::new(Mode::Tracker, RETRY);
        assert_eq!(p.plan(now), Plan::TrackersThenDht);
        assert_eq!(p.trackers_answered(now), None);
        assert_eq!(p.plan(now), Plan::TrackersThenDht);
        assert!(!p.fallen_back());
    }

    #[test]
    fn every_tracker_failing_falls_back_once_and_later_announces_skip_the_trackers() {
        let now = Instant::now();
        let mut p = Policy::new(Mode::Tracker, RETRY);
        assert_eq!(p.plan(now), Plan::TrackersThenDht);
        assert_eq!(
            p.trackers_failed(now, "no tracker answered"),
            Some(Transition::FellBack {
                why: "no tracker answered".into()
            })
        );
        assert!(p.fallen_back());
        // A second failure in flight at the same time is not a second fallback.
        assert_eq!(p.trackers_failed(now, "again"), None);
        // Until the retry is due, announces go to the DHT alone.
        assert_eq!(p.plan(now + Duration::from_secs(1)), Plan::Dht);
        assert_eq!(p.plan(now + RETRY - Duration::from_millis(1)), Plan::Dht);
    }

    #[test]
    fn a_due_retry_is_taken_by_one_announce_and_backs_off_again_on_failure() {
        let t0 = Instant::now();
        let mut p = Policy::new(Mode::Tracker, RETRY);
        p.trackers_failed(t0, "down");
        let due = t0 + RETRY;
        assert_eq!(p.plan(due), Plan::TrackersThenDht, "the retry");
        // Concurrent announces of other digests do not retry too.
        assert_eq!(p.plan(due), Plan::Dht);
        assert_eq!(p.plan(due + Duration::from_secs(1)), Plan::Dht);
        // The retry failed: still fallen back, no new transition, next retry one interval on.
        assert_eq!(p.trackers_failed(due, "still down"), None);
        assert_eq!(p.plan(due + RETRY - Duration::from_millis(1)), Plan::Dht);
        assert_eq!(p.plan(due + RETRY), Plan::TrackersThenDht);
    }

    #[test]
    fn a_tracker_answering_again_returns_with_how_long_it_was_away() {
        let t0 = Instant::now();
        let mut p = Policy::new(Mode::Tracker, RETRY);
        p.trackers_failed(t0, "down");
        let t1 = t0 + Duration::from_secs(12);
        assert_eq!(p.plan(t1), Plan::TrackersThenDht);
        assert_eq!(
            p.trackers_answered(t1),
            Some(Transition::Returned {
                after: Duration::from_secs(12)
            })
        );
        assert!(!p.fallen_back());
        assert_eq!(p.plan(t1), Plan::TrackersThenDht);
        assert_eq!(p.trackers_answered(t1), None, "returned once");
    }

    #[test]
    fn dht_and_both_modes_never_fall_back() {
        let now = Instant::now();
        for (mode, plan) in [(Mode::Dht, Plan::Dht), (Mode::Both, Plan::Both)] {
            let mut p = Policy::new(mode, RETRY);
            assert_eq!(p.plan(now), plan);
            assert_eq!(p.trackers_failed(now, "down"), None);
            assert!(!p.fallen_back());
            assert_eq!(p.plan(now), plan);
        }
    }

    #[test]
    fn merge_keeps_the_trackers_order_dedupes_by_peer_id_drops_me_and_caps() {
        let tracker = vec![peer(1), peer(2), peer(3)];
        // 2 again (at another address: the id decides), me (9), then extras.
        let mut dup = peer(2);
        dup.addr = SocketAddr::from(([127, 0, 0, 2], 5000));
        let dht = vec![dup, peer(9), peer(4), peer(5), peer(6)];
        let me = peer(9).id;
        let merged = merge(tracker.clone(), dht.clone(), me, 10);
        assert_eq!(ids(&merged), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(merged[1].addr.port(), 4000, "the tracker's entry wins");
        assert_eq!(
            ids(&merge(tracker.clone(), dht.clone(), me, 4)),
            vec![1, 2, 3, 4]
        );
        assert_eq!(ids(&merge(tracker, Vec::new(), me, 2)), vec![1, 2]);
        assert_eq!(ids(&merge(Vec::new(), dht, me, 10)), vec![2, 4, 5, 6]);
    }

    #[test]
    fn a_dht_handout_shuffles_caps_the_providers_and_appends_the_origins() {
        let providers: Vec<PeerInfo> = (1..=20).map(peer).collect();
        let mut origin = peer(100);
        origin.kind = PeerKind::Origin;
        origin.complete = true;
        let me = peer(3).id;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let out = dht_handout(providers.clone(), vec![origin.clone()], me, 8, &mut rng);
        assert_eq!(out.len(), 9, "8 providers and the origin");
        assert_eq!(
            out.last(),
            Some(&origin),
            "origins come after the providers"
        );
        assert!(out.iter().all(|p| p.id != me));
        let firsts: HashSet<u8> = (0..20)
            .map(|seed| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                octet(&dht_handout(providers.clone(), Vec::new(), me, 8, &mut rng)[0])
            })
            .collect();
        assert!(firsts.len() > 3, "shuffled: {firsts:?}");
        // An origin that also provides (it should not, but a record may linger) is named once.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let out = dht_handout(vec![origin.clone()], vec![origin], me, 8, &mut rng);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn the_dht_interval_is_short_while_incomplete_and_long_once_complete() {
        let short = Duration::from_secs(2);
        let long = Duration::from_secs(30);
        // A thin handout: look again sooner.
        assert_eq!(dht_interval(false, 3, 30, short, long), short / 4);
        assert_eq!(dht_interval(false, 14, 30, short, long), short / 4);
        assert_eq!(dht_interval(false, 15, 30, short, long), short);
        assert_eq!(dht_interval(true, 0, 30, short, long), long);
    }
}
