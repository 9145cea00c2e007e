//! The tracker's peer store and handout policy, pure so the tracker, the simulator and the
//! tests share one implementation.
//!
//! Peers announce `(blob, themselves, complete?)`; entries expire after a TTL, so the
//! store is soft state that a restarted tracker rebuilds within one announce interval. A
//! handout lists up to `max_peers` peers: complete peers first, then the blob's owning
//! origins, then incomplete peers, each group shuffled; never the asker itself. That puts
//! seeders where they help most while keeping the swarm a sparse random graph.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kraken_storage::Digest;
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::{PeerInfo, PeerKind};
use crate::wire::PeerId;

/// Settings of a [`PeerStore`]: the tracker's handout policy. A node's `[tracker]` and
/// simnet's `[trackers]` read these keys directly; each is optional and takes the default
/// documented on its field; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandoutConfig {
    /// Announces older than this are forgotten (`peer_ttl_secs`). Default: 60 s, twenty
    /// of the default 3 s announce intervals, so a peer is forgotten only after missing
    /// many, and a busy tracker may stretch the interval it hands out up to half of it.
    #[serde(rename = "peer_ttl_secs", with = "super::config::secs")]
    pub peer_ttl: Duration,
    /// Most peers per handout. Default: 50 (Kraken's).
    pub max_peers: usize,
}

impl Default for HandoutConfig {
    /// Kraken's: 50 peers per handout, and a peer forgotten a minute after its last
    /// announce (the nodes' trackers ran with this before it was a key).
    fn default() -> Self {
        HandoutConfig {
            peer_ttl: Duration::from_secs(60),
            max_peers: 50,
        }
    }
}

/// Why a [`HandoutConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoutConfigError {
    /// Handouts would be empty.
    #[error("max_peers must be at least 1")]
    NoPeers,
    /// Announces would be forgotten at once.
    #[error("peer_ttl_secs must be above 0")]
    NoTtl,
}

impl HandoutConfig {
    /// Rejects settings with which no peer is ever handed out.
    pub fn validate(&self) -> Result<(), HandoutConfigError> {
        if self.max_peers == 0 {
            return Err(HandoutConfigError::NoPeers);
        }
        if self.peer_ttl.is_zero() {
            return Err(HandoutConfigError::NoTtl);
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Entry {
    info: PeerInfo,
    expires: Instant,
}

/// Which list of a blob's peers an entry lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Complete,
    Incomplete,
    /// Origins that announce; handouts take origins from the caller instead.
    Origin,
}

impl Group {
    fn of(info: &PeerInfo) -> Group {
        match (info.kind, info.complete) {
            (PeerKind::Origin, _) => Group::Origin,
            (PeerKind::Agent, true) => Group::Complete,
            (PeerKind::Agent, false) => Group::Incomplete,
        }
    }
}

/// One blob's peers, grouped in vectors so a handout samples a few at random in time
/// proportional to what it returns, not to the swarm: a tracker answers every announce of
/// every agent, and a swarm of 100,000 would make a full scan per answer quadratic.
#[derive(Debug, Default)]
struct BlobPeers {
    /// Where each peer's entry is.
    index: BTreeMap<PeerId, (Group, usize)>,
    complete: Vec<Entry>,
    incomplete: Vec<Entry>,
    origins: Vec<Entry>,
}

impl BlobPeers {
    fn list(&mut self, g: Group) -> &mut Vec<Entry> {
        match g {
            Group::Complete => &mut self.complete,
            Group::Incomplete => &mut self.incomplete,
            Group::Origin => &mut self.origins,
        }
    }

    fn upsert(&mut self, entry: Entry) {
        let id = entry.info.id;
        let group = Group::of(&entry.info);
        match self.index.get(&id).copied() {
            Some((g, i)) if g == group => self.list(g)[i] = entry,
            Some(_) => {
                self.remove(&id);
                self.push(group, entry);
            }
            None => self.push(group, entry),
        }
    }

    fn push(&mut self, group: Group, entry: Entry) {
        let id = entry.info.id;
        let list = self.list(group);
        list.push(entry);
        let at = list.len() - 1;
        self.index.insert(id, (group, at));
    }

    fn remove(&mut self, id: &PeerId) {
        let Some((g, i)) = self.index.remove(id) else {
            return;
        };
        let list = self.list(g);
        list.swap_remove(i);
        if let Some(moved) = list.get(i).map(|e| e.info.id) {
            self.index.insert(moved, (g, i));
        }
    }

    /// Up to `want` live entries of `group` at random, never `asker`; expired entries met
    /// on the way are dropped.
    fn sample(
        &mut self,
        group: Group,
        want: usize,
        asker: PeerId,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Vec<PeerInfo> {
        let list = self.list(group);
        // One extra draw covers the asker; expired ones found make the answer shorter
        // this once and are gone for the next.
        let draw = (want + 1).min(list.len());
        let picks = rand::seq::index::sample(rng, list.len(), draw);
        let mut out = Vec::with_capacity(want);
        let mut expired = Vec::new();
        for i in picks.iter() {
            let e = &list[i];
            if e.expires <= now {
                expired.push(e.info.id);
            } else if e.info.id != asker && out.len() < want {
                out.push(e.info.clone());
            }
        }
        for id in expired {
            self.remove(&id);
        }
        out
    }

    fn live(&self, now: Instant) -> impl Iterator<Item = &Entry> {
        self.complete
            .iter()
            .chain(&self.incomplete)
            .chain(&self.origins)
            .filter(move |e| e.expires > now)
    }

    fn prune(&mut self, now: Instant) {
        let dead: Vec<PeerId> = self
            .complete
            .iter()
            .chain(&self.incomplete)
            .chain(&self.origins)
            .filter(|e| e.expires <= now)
            .map(|e| e.info.id)
            .collect();
        for id in dead {
            self.remove(&id);
        }
    }

    fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Who announced which blob, with expiry.
#[derive(Debug, Default)]
pub struct PeerStore {
    config: HandoutConfig,
    blobs: BTreeMap<Digest, BlobPeers>,
}

impl PeerStore {
    /// An empty store.
    pub fn new(config: HandoutConfig) -> Self {
        PeerStore {
            config,
            blobs: BTreeMap::new(),
        }
    }

    /// Records an announce (replacing the peer's previous one for this blob).
    pub fn announce(&mut self, now: Instant, digest: Digest, peer: PeerInfo) {
        let expires = now + self.config.peer_ttl;
        self.blobs.entry(digest).or_default().upsert(Entry {
            info: peer,
            expires,
        });
    }

    /// Up to `max_peers` peers of `digest` for `asker`: complete peers, then `origins`
    /// (the blob's owners, shuffled), then incomplete peers, each group a random sample;
    /// never the asker. Time proportional to the answer, not to the swarm.
    pub fn handout(
        &mut self,
        now: Instant,
        digest: &Digest,
        asker: PeerId,
        origins: &[PeerInfo],
        rng: &mut impl Rng,
    ) -> Vec<PeerInfo> {
        let max = self.config.max_peers;
        let mut own: Vec<&PeerInfo> = origins.iter().filter(|o| o.id != asker).collect();
        own.shuffle(rng);
        let Some(peers) = self.blobs.get_mut(digest) else {
            return own.into_iter().take(max).cloned().collect();
        };
        let complete = peers.sample(Group::Complete, max, asker, now, rng);
        let rest = max.saturating_sub(complete.len() + own.len());
        let incomplete = peers.sample(Group::Incomplete, rest, asker, now, rng);
        if peers.is_empty() {
            self.blobs.remove(digest);
        }
        complete
            .into_iter()
            .chain(own.into_iter().cloned())
            .chain(incomplete)
            .take(max)
            .collect()
    }

    /// Number of live announces for `digest` at `now` (tests, metrics).
    pub fn peer_count(&self, now: Instant, digest: &Digest) -> usize {
        self.blobs.get(digest).map_or(0, |p| p.live(now).count())
    }

    /// The live announces for `digest` at `now`, each with the time since it was made
    /// (operators' view of a blob's swarm).
    pub fn peers(&self, now: Instant, digest: &Digest) -> Vec<(PeerInfo, Duration)> {
        let ttl = self.config.peer_ttl;
        self.blobs.get(digest).map_or_else(Vec::new, |p| {
            p.live(now)
                .map(|e| {
                    let age = ttl.saturating_sub(e.expires.saturating_duration_since(now));
                    (e.info.clone(), age)
                })
                .collect()
        })
    }

    /// Forgets every announce of `digest` (the blob was deleted).
    pub fn forget(&mut self, digest: &Digest) {
        self.blobs.remove(digest);
    }

    /// Forgets expired announces everywhere; returns how many blobs still have peers.
    /// (Handouts drop the expired peers they meet; this bounds the memory of the rest.)
    pub fn prune(&mut self, now: Instant) -> usize {
        self.blobs.retain(|_, peers| {
            peers.prune(now);
            !peers.is_empty()
        });
        self.blobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn peer(n: u64, kind: PeerKind, complete: bool) -> PeerInfo {
        PeerInfo {
            id: PeerId::from_u64(n),
            addr: ([127, 0, 0, 1], 1000 + n as u16).into(),
            kind,
            complete,
        }
    }

    #[test]
    fn handout_settings_read_as_keys_with_defaults_and_nonsense_is_refused() {
        use serde::de::value::{Error, MapDeserializer};
        let read = |entries: Vec<(&'static str, u64)>| {
            HandoutConfig::deserialize(MapDeserializer::<_, Error>::new(entries.into_iter()))
        };
        assert_eq!(read(vec![]).unwrap(), HandoutConfig::default());
        let c = read(vec![("peer_ttl_secs", 20), ("max_peers", 5)]).unwrap();
        assert_eq!((c.peer_ttl, c.max_peers), (Duration::from_secs(20), 5));
        assert!(read(vec![("peer_ttl", 20)]).is_err());
        assert_eq!(
            read(vec![("max_peers", 0)]).unwrap().validate(),
            Err(HandoutConfigError::NoPeers)
        );
        assert_eq!(
            read(vec![("peer_ttl_secs", 0)]).unwrap().validate(),
            Err(HandoutConfigError::NoTtl)
        );
        HandoutConfig::default().validate().unwrap();
    }

    #[test]
    fn order_is_complete_then_origins_then_incomplete_and_never_the_asker() {
        let now = Instant::now();
        let d = Digest::sha256_of(b"x");
        let mut store = PeerStore::new(HandoutConfig::default());
        for n in 1..=4 {
            store.announce(now, d, peer(n, PeerKind::Agent, n % 2 == 0));
        }
        // An origin that announces is handed out in the origins' place, once.
        store.announce(now, d, peer(100, PeerKind::Origin, true));
        let origins = [peer(100, PeerKind::Origin, true)];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let got = store.handout(now, &d, PeerId::from_u64(2), &origins, &mut rng);
        let ids: Vec<u64> = got.iter().map(|p| u64::from(p.id.0[7])).collect();
        assert_eq!(ids[0], 4, "the other complete peer first");
        assert_eq!(ids[1], 100, "then the origin");
        assert_eq!(ids.len(), 4);
        assert!(!ids.contains(&2));
    }

    #[test]
    fn announces_expire_and_handouts_are_capped() {
        let now = Instant::now();
        let d = Digest::sha256_of(b"x");
        let mut store = PeerStore::new(HandoutConfig {
            peer_ttl: Duration::from_secs(10),
            max_peers: 5,
        });
        for n in 1..=20 {
            store.announce(now, d, peer(n, PeerKind::Agent, false));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(
            store
                .handout(now, &d, PeerId::from_u64(0), &[], &mut rng)
                .len(),
            5
        );
        let later = now + Duration::from_secs(11);
        assert!(
            store
                .handout(later, &d, PeerId::from_u64(0), &[], &mut rng)
                .is_empty()
        );
        assert_eq!(store.peer_count(later, &d), 0);
    }

    #[test]
    fn a_large_swarm_gets_distinct_live_samples_and_moves_between_groups() {
        let now = Instant::now();
        let d = Digest::sha256_of(b"big");
        let mut store = PeerStore::new(HandoutConfig {
            peer_ttl: Duration::from_secs(10),
            max_peers: 50,
        });
        for n in 0..20_000 {
            store.announce(now, d, peer(n, PeerKind::Agent, false));
        }
        // Half re-announce later, 100 of them complete; the other half expire.
        let later = now + Duration::from_secs(8);
        for n in (0..20_000).step_by(2) {
            store.announce(later, d, peer(n, PeerKind::Agent, n < 200));
        }
        let after = now + Duration::from_secs(12);
        assert_eq!(store.peer_count(after, &d), 10_000);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for asker in [0u64, 2, 4] {
            let got = store.handout(after, &d, PeerId::from_u64(asker), &[], &mut rng);
            let ids: std::collections::BTreeSet<PeerId> = got.iter().map(|p| p.id).collect();
            assert_eq!(ids.len(), got.len(), "no duplicates");
            assert!(!ids.contains(&PeerId::from_u64(asker)));
            assert!(got.iter().all(|p| p.id.0[7] % 2 == 0), "only live peers");
            // The 100 complete peers fill the handout first.
            assert!(got.len() >= 49 && got.iter().all(|p| p.complete));
        }
        assert_eq!(store.prune(after), 1);
        assert_eq!(store.peers(after, &d).len(), 10_000);
    }
}
