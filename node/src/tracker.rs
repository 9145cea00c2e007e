//! The tracker role: who has which blob, and metainfo for agents.
//!
//! The peer store and handout policy are transport's pure `PeerStore` (simnet runs the
//! same code); this module adds the network around it:
//!
//! - **Announce**: record the peer (with a TTL), answer with up to `max_peers` peers —
//!   complete peers first, then the digest's owning origins (from the ring; their peer ids
//!   are learned by connecting to them once), then random incomplete peers — and the
//!   interval to announce at. Under load the interval grows (proportionally to the
//!   announce rate over `target_announces_per_sec`) instead of requests failing.
//! - **ForgetBlob**: a purged blob's peers and cached metainfo are dropped at once.
//! - **Metainfo**: asked of the owning origins in ring order (an owner that lacks the blob
//!   reads it through from its backend; the tracker passes `Pending` on), then cached.
//!
//! State is soft: a restarted tracker relearns its peers within one announce interval.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kraken_membership::Role;
use kraken_storage::{Digest, Metainfo};
use kraken_transport::swarm::handout::{HandoutConfig, PeerStore};
use kraken_transport::swarm::{PeerInfo, PeerKind};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::bounded::BoundedMap;
use crate::client::{CallError, Cluster};
use crate::metrics::Metrics;
use crate::origin_peers::OriginPeers;
use crate::proto::{ErrorKind, PeerRecord, RemoteError, Request, Response};

/// Settings of the tracker role (`[tracker]` in a node's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// The peer store's settings (`max_peers`, `peer_ttl_secs`), keys of `[tracker]`
    /// itself. A busy tracker stretches the interval it hands out to at most half the
    /// TTL, so live peers are never forgotten.
    #[serde(flatten)]
    pub handout: HandoutConfig,
    /// Announce interval sent to peers when the tracker is not busy, in ms.
    pub announce_interval_ms: u64,
    /// Longest interval sent under load, in ms.
    pub max_announce_interval_ms: u64,
    /// Announces per second above which the interval grows.
    pub target_announces_per_sec: u64,
    /// Metainfos cached.
    pub metainfo_cache_entries: usize,
    /// Bytes of metainfo cached at most (a metainfo takes 64 bytes a piece: a 10 GiB
    /// blob's, in 16 MiB pieces, 40 KiB; the largest possible, 16 MiB).
    pub metainfo_cache_bytes: u64,
    /// How long the tracker waits on an origin's read-through before answering `Pending`,
    /// in ms.
    pub metainfo_wait_ms: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            handout: HandoutConfig::default(),
            announce_interval_ms: 3000,
            max_announce_interval_ms: 60_000,
            target_announces_per_sec: 5000,
            metainfo_cache_entries: 10_000,
            metainfo_cache_bytes: 256 << 20,
            metainfo_wait_ms: 10_000,
        }
    }
}

impl TrackerConfig {
    /// How long an announce is remembered, in ms.
    pub fn peer_ttl_ms(&self) -> u64 {
        u64::try_from(self.handout.peer_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// The interval handed out at `rate` announces per second: the base interval, stretched
    /// proportionally above the target rate, capped.
    pub fn interval_at_rate(&self, rate: u64) -> u64 {
        let stretched = if rate > self.target_announces_per_sec {
            self.announce_interval_ms.saturating_mul(rate) / self.target_announces_per_sec
        } else {
            self.announce_interval_ms
        };
        stretched.min(self.interval_cap_ms())
    }

    /// The longest interval handed out: `max_announce_interval_ms`, but under half the TTL.
    pub fn interval_cap_ms(&self) -> u64 {
        self.max_announce_interval_ms
            .min(self.peer_ttl_ms() / 2)
            .max(self.announce_interval_ms)
    }

    /// Rejects settings that cannot work (the handout's are checked by
    /// [`HandoutConfig::validate`]).
    pub fn validate(&self) -> Result<(), TrackerConfigError> {
        if self.announce_interval_ms == 0
            || self.max_announce_interval_ms < self.announce_interval_ms
        {
            return Err(TrackerConfigError::BadInterval);
        }
        if self.target_announces_per_sec == 0 {
            return Err(TrackerConfigError::ZeroRate);
        }
        Ok(())
    }
}

/// Why a `[tracker]` section was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerConfigError {
    /// The base interval is 0 or above the cap.
    #[error("tracker.announce_interval_ms must be above 0 and at most max_announce_interval_ms")]
    BadInterval,
    /// The target announce rate is 0.
    #[error("tracker.target_announces_per_sec must be above 0")]
    ZeroRate,
}

/// The tracker role. Cheap to clone.
#[derive(Clone)]
pub struct TrackerRole {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Cluster,
    config: TrackerConfig,
    metrics: Arc<Metrics>,
    origins: OriginPeers,
    state: Mutex<State>,
}

struct State {
    store: PeerStore,
    rng: SmallRng,
    metainfo: BoundedMap<Digest, Arc<Vec<u8>>>,
    /// Announces in the current one-second window, and the window's start.
    window: (Instant, u64),
    /// The rate seen in the last full window.
    last_rate: u64,
}

impl TrackerRole {
    /// A tracker that reaches origins through `cluster`.
    pub fn new(cluster: Cluster, config: TrackerConfig, metrics: Arc<Metrics>) -> Self {
        let store = PeerStore::new(config.handout.clone());
        let cache = BoundedMap::with_byte_budget(
            config.metainfo_cache_entries,
            config.metainfo_cache_bytes,
        );
        TrackerRole {
            inner: Arc::new(Inner {
                cluster,
                config,
                metrics,
                origins: OriginPeers::default(),
                state: Mutex::new(State {
                    store,
                    rng: SmallRng::from_os_rng(),
                    metainfo: cache,
                    window: (Instant::now(), 0),
                    last_rate: 0,
                }),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves one tracker request; `None` if the request is not a tracker's.
    pub async fn handle(&self, request: &Request) -> Option<Response> {
        Some(match request {
            Request::Announce {
                digest,
                peer,
                have_bytes: _,
            } => self.announce(digest, peer.clone()).await,
            Request::Metainfo { namespace, digest } => self.metainfo(namespace, digest).await,
            Request::Peers { digest } => self.peers(digest),
            Request::ForgetBlob { digest } => {
                let mut st = self.state();
                st.store.forget(digest);
                st.metainfo.remove(digest);
                Response::Forgotten
            }
            _ => return None,
        })
    }

    /// Blobs with live peers (metrics).
    pub fn tracked_blobs(&self) -> usize {
        self.state().store.prune(Instant::now())
    }

    async fn announce(&self, digest: &Digest, peer: PeerInfo) -> Response {
        if peer.kind == PeerKind::Origin {
            // Origins are handed out from the ring, not from announces.
            return Response::Error(RemoteError::new(
                ErrorKind::BadRequest,
                "origins do not announce",
            ));
        }
        self.inner.metrics.announce();
        let origins = self.inner.origins.of(&self.inner.cluster, digest).await;
        let now = Instant::now();
        let mut st = self.state();
        st.store.announce(now, *digest, peer.clone());
        let State { store, rng, .. } = &mut *st;
        let peers = store.handout(now, digest, peer.id, &origins, rng);
        let interval_ms = self.interval(&mut st, now);
        Response::Announced { peers, interval_ms }
    }

    /// The base interval, stretched by the announce rate over the target.
    fn interval(&self, st: &mut State, now: Instant) -> u64 {
        let c = &self.inner.config;
        let (start, count) = &mut st.window;
        if now.duration_since(*start) >= Duration::from_secs(1) {
            st.last_rate = *count;
            *start = now;
            *count = 0;
        }
        *count += 1;
        c.interval_at_rate(st.last_rate.max(*count))
    }

    async fn metainfo(&self, namespace: &str, digest: &Digest) -> Response {
        if let Some(bytes) = self.state().metainfo.get(digest).cloned() {
            return Response::Metainfo(bytes.as_ref().clone());
        }
        let cluster = &self.inner.cluster;
        let owners = cluster.owners_of_digest(Role::Origin, digest, 0);
        let wait_ms = self.inner.config.metainfo_wait_ms;
        let request = Request::OriginMetainfo {
            namespace: namespace.to_string(),
            digest: *digest,
            wait_ms,
        };
        let limit = Duration::from_millis(wait_ms) + cluster.call_timeout;
        match cluster
            .call_first(&owners, Role::Origin, &request, limit)
            .await
        {
            Ok(Response::Metainfo(bytes)) => {
                // Only well-formed metainfo of the asked blob is cached.
                match Metainfo::decode(&bytes) {
                    Ok(m) if m.digest() == digest => {
                        self.cache(*digest, bytes.clone());
                        Response::Metainfo(bytes)
                    }
                    Ok(_) | Err(_) => Response::Error(RemoteError::new(
                        ErrorKind::Internal,
                        format!("an origin sent invalid metainfo for {digest}"),
                    )),
                }
            }
            Ok(Response::Pending) => Response::Pending,
            Ok(other) => Response::Error(RemoteError::new(
                ErrorKind::Internal,
                format!("unexpected origin answer: {other:?}"),
            )),
            Err(CallError::Remote { source, .. }) if source.kind == ErrorKind::WrongNode => {
                // Every origin disowned it and none holds it.
                Response::Error(RemoteError::new(
                    ErrorKind::NotFound,
                    format!("no origin holds {digest}"),
                ))
            }
            Err(CallError::Remote { source, .. }) => Response::Error(source),
            Err(e) => Response::Error(RemoteError::new(ErrorKind::Unavailable, e.to_string())),
        }
    }

    fn cache(&self, digest: Digest, bytes: Vec<u8>) {
        let len = bytes.len() as u64;
        self.state()
            .metainfo
            .insert_sized(digest, Arc::new(bytes), len);
    }

    fn peers(&self, digest: &Digest) -> Response {
        let now = Instant::now();
        let st = self.state();
        let peers = st
            .store
            .peers(now, digest)
            .into_iter()
            .map(|(peer, age)| PeerRecord {
                peer,
                last_announce_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            })
            .collect();
        Response::Peers(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_grows_with_load_and_stays_under_half_the_ttl() {
        let c = TrackerConfig::default();
        c.validate().unwrap();
        assert_eq!(c.interval_at_rate(0), 3000);
        assert_eq!(c.interval_at_rate(5000), 3000);
        assert_eq!(c.interval_at_rate(10_000), 6000);
        // Capped: a peer announcing at the longest interval is never forgotten.
        let cap = c.interval_at_rate(u64::MAX);
        assert!(cap <= c.peer_ttl_ms() / 2, "{cap}");
        assert!(cap >= c.announce_interval_ms);
    }
}
