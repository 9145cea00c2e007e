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

use super::{PeerInfo, PeerKind};
use crate::wire::PeerId;

/// Settings of a [`PeerStore`].
#[derive(Debug, Clone)]
pub struct HandoutConfig {
    /// Announces older than this are forgotten.
    pub peer_ttl: Duration,
    /// Most peers per handout.
    pub max_peers: usize,
}

impl Default for HandoutConfig {
    /// Kraken's defaults: 50 peers per handout; a peer is forgotten after missing a few
    /// announces (the default interval is 3 s).
    fn default() -> Self {
        HandoutConfig {
            peer_ttl: Duration::from_secs(30),
            max_peers: 50,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    info: PeerInfo,
    expires: Instant,
}

/// Who announced which blob, with expiry.
#[derive(Debug, Default)]
pub struct PeerStore {
    config: HandoutConfig,
    blobs: BTreeMap<Digest, BTreeMap<PeerId, Entry>>,
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
        self.blobs.entry(digest).or_default().insert(
            peer.id,
            Entry {
                info: peer,
                expires,
            },
        );
    }

    /// Peers for `asker`: complete peers, then `origins`, then incomplete peers.
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
        peers.retain(|_, e| e.expires > now);
        // References only, and only as many shuffled as can be handed out: a handout costs
        // one pass over the blob's peers, not a copy and a full shuffle of them.
        let mut complete = Vec::new();
        let mut incomplete = Vec::new();
        for e in peers.values() {
            let info = &e.info;
            if info.id == asker || info.kind == PeerKind::Origin {
                continue; // Origins come from `origins`, in their own place in the order.
            }
            if info.complete {
                complete.push(info);
            } else {
                incomplete.push(info);
            }
        }
        let c = complete.len().min(max);
        let (complete, _) = complete.partial_shuffle(rng, c);
        let rest = max.saturating_sub(c + own.len());
        let i = incomplete.len().min(rest);
        let (incomplete, _) = incomplete.partial_shuffle(rng, i);
        let out: Vec<PeerInfo> = complete
            .iter()
            .chain(own.iter())
            .chain(incomplete.iter())
            .take(max)
            .map(|p| (*p).clone())
            .collect();
        if peers.is_empty() {
            self.blobs.remove(digest);
        }
        out
    }

    /// Number of live announces for `digest` at `now` (tests, metrics).
    pub fn peer_count(&self, now: Instant, digest: &Digest) -> usize {
        self.blobs
            .get(digest)
            .map_or(0, |p| p.values().filter(|e| e.expires > now).count())
    }

    /// The live announces for `digest` at `now`, each with the time since it was made
    /// (operators' view of a blob's swarm).
    pub fn peers(&self, now: Instant, digest: &Digest) -> Vec<(PeerInfo, Duration)> {
        let ttl = self.config.peer_ttl;
        self.blobs.get(digest).map_or_else(Vec::new, |p| {
            p.values()
                .filter(|e| e.expires > now)
                .map(|e| {
                    let age = ttl.saturating_sub(e.expires.saturating_duration_since(now));
                    (e.info.clone(), age)
                })
                .collect()
        })
    }

    /// Forgets expired announces everywhere; returns how many blobs still have peers.
    /// (Handouts prune the blob they touch; this bounds the memory of blobs nobody asks
    /// about any more.)
    pub fn prune(&mut self, now: Instant) -> usize {
        self.blobs.retain(|_, peers| {
            peers.retain(|_, e| e.expires > now);
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
}
