//! [`DiscoveringTracker`]: the agent exchange's `Tracker`, answering each announce from the
//! tracker ring, the DHT, or both, as [`Policy`] decides.
//!
//! Each announce also provides the digest to the DHT, from the first one on, before the
//! agent holds any piece: a download holds its first verified piece within about one
//! piece time, and connected peers learn of each piece as it lands (HAVE), so what a
//! provider is worth to a finder is the pieces it is about to hold. This is what a
//! tracker's handout gives too (it lists peers that hold nothing yet). Waiting for the
//! first piece cost one re-lookup interval of discovery: with 1 origin + 10 agents at
//! 100 Mbit/s (`kraken-bench run --discovery dht`) every agent finished about 2.7 s
//! later, 1.35 × T_min instead of 1.16 ×, the origin meanwhile serving everyone alone.
//! Providing is idempotent in the DHT; a download that fails stops providing.
//!
//! A DHT-sourced peer is dialled (through the node's connection pool, so the swarm then
//! reuses the connection) expecting the peer id its signed card names before it is handed
//! out: the card's peer id is genuine (the DHT crate checks its signature against the
//! cluster CA), only its address can lie, and the QUIC handshake disproves that. A lie is
//! reported to the DHT (`report_liar`), which blacklists the record's owner; the download
//! goes on with the others.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kraken_dht::Provider;
use kraken_storage::Digest;
use kraken_transport::exchange::{Handout, Tracker};
use kraken_transport::quic::PoolError;
use kraken_transport::swarm::PeerInfo;

use super::Discovery;
use super::policy::{self, Plan, Policy, Transition};
use crate::agent::{AnnounceError, RingTracker};
use crate::client::Cluster;
use crate::origin_peers::OriginPeers;

/// Longest the handshake check of one DHT-sourced peer may take.
const DIAL_LIMIT: Duration = Duration::from_secs(2);

/// Why an announce found no peers at all.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The tracker ring failed and the DHT could not stand in.
    #[error("trackers failed ({trackers}); the DHT lookup failed too ({dht})")]
    Both {
        /// The tracker ring's error.
        trackers: AnnounceError,
        /// The DHT's.
        dht: String,
    },
    /// The DHT lookup failed (dht mode) and no owning origin is known.
    #[error("DHT lookup failed: {0}")]
    Dht(String),
}

/// The exchange's tracker: the ring, the DHT, or both, by the node's discovery policy.
/// Cheap to clone.
#[derive(Clone)]
pub struct DiscoveringTracker {
    inner: Arc<Inner>,
}

struct Inner {
    ring: RingTracker,
    cluster: Cluster,
    discovery: Discovery,
    policy: Mutex<Policy>,
    /// The digests' owning origins, which provide nothing to the DHT: the ring says where
    /// they are.
    origins: OriginPeers,
}

impl DiscoveringTracker {
    /// A tracker over the ring (through `cluster`) and `discovery`'s DHT.
    pub fn new(cluster: Cluster, discovery: Discovery) -> Self {
        let c = discovery.config();
        let policy = Policy::new(c.mode, c.tracker_retry());
        DiscoveringTracker {
            inner: Arc::new(Inner {
                ring: RingTracker::new(cluster.clone()),
                cluster,
                discovery,
                policy: Mutex::new(policy),
                origins: OriginPeers::default(),
            }),
        }
    }

    /// The node's DHT.
    pub fn discovery(&self) -> &Discovery {
        &self.inner.discovery
    }

    /// Whether tracker mode is fallen back to the DHT now.
    pub fn fallen_back(&self) -> bool {
        self.policy().fallen_back()
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, Policy> {
        self.inner
            .policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs and counts a change of source.
    fn note(&self, transition: Option<Transition>) {
        match transition {
            Some(Transition::FellBack { why }) => {
                self.inner.discovery.metrics().dht().fallback();
                tracing::warn!(%why, "every tracker tried failed: falling back to the DHT");
            }
            Some(Transition::Returned { after }) => {
                tracing::info!(
                    after_ms = after.as_millis() as u64,
                    "trackers answer again: back from the DHT"
                );
            }
            None => {}
        }
    }

    /// The ring's answer, fed back to the policy.
    async fn ask_trackers(
        &self,
        digest: Digest,
        me: PeerInfo,
        have_bytes: u64,
    ) -> Result<Handout, AnnounceError> {
        let result = self.inner.ring.announce(digest, me, have_bytes).await;
        let now = Instant::now();
        let transition = match &result {
            Ok(_) => self.policy().trackers_answered(now),
            Err(e) => self.policy().trackers_failed(now, &e.to_string()),
        };
        self.note(transition);
        result
    }

    /// A handout from the DHT: checked providers (none asked for once `me` is complete:
    /// a seeder is found, it need not find) and the digest's owning origins. A failed
    /// lookup still hands out the origins; it is an error only when there are none.
    async fn ask_dht(&self, digest: Digest, me: &PeerInfo) -> Result<Handout, String> {
        let c = self.inner.discovery.config();
        let interval = |found: usize| {
            policy::dht_interval(
                me.complete,
                found,
                c.dht_max_peers,
                Duration::from_millis(c.dht_interval_ms),
                Duration::from_secs(c.dht_complete_interval_secs),
            )
        };
        if me.complete {
            return Ok(Handout {
                peers: Vec::new(),
                interval: Some(interval(0)),
            });
        }
        let origins = self.inner.origins.of(&self.inner.cluster, &digest).await;
        let providers = match self.lookup(digest).await {
            Ok(p) => p,
            Err(e) if origins.is_empty() => return Err(e),
            Err(e) => {
                tracing::debug!(%digest, error = %e, "DHT lookup failed; handing out the origins");
                Vec::new()
            }
        };
        let checked = self.check(providers).await;
        let found = checked.len();
        let peers = policy::dht_handout(checked, origins, me.id, c.dht_max_peers, &mut rand::rng());
        Ok(Handout {
            peers,
            interval: Some(interval(found)),
        })
    }

    /// One timed, counted provider lookup.
    async fn lookup(&self, digest: Digest) -> Result<Vec<Provider>, String> {
        let c = self.inner.discovery.config();
        let begun = Instant::now();
        let result = self.inner.discovery.find(digest, c.dht_max_peers * 2).await;
        self.inner
            .discovery
            .metrics()
            .dht()
            .lookup(begun.elapsed(), result.is_ok());
        result
    }

    /// The providers whose address answers as the peer their card names. An address that
    /// answers as another peer is a lie, reported; one that does not answer (yet) is left
    /// out of this handout only (the next announce asks again).
    async fn check(&self, providers: Vec<Provider>) -> Vec<PeerInfo> {
        let pool = self.inner.cluster.pool();
        let dials = providers.into_iter().map(|p| async move {
            let dialled = tokio::time::timeout(DIAL_LIMIT, pool.connect(p.addr, Some(p.peer))).await;
            match dialled {
                Ok(Ok(_)) => Some(super::provider_peer(&p)),
                Ok(Err(PoolError::PeerMismatch { actual, .. })) => {
                    tracing::warn!(dht_peer = %p.dht_peer, claimed = %p.peer, %actual,
                        addr = %p.addr, "a DHT provider's address answers as another peer: reporting it");
                    self.inner.discovery.dht().report_liar(&p.dht_peer);
                    self.inner.discovery.metrics().dht().liar();
                    None
                }
                _ => None,
            }
        });
        futures::future::join_all(dials)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

impl Tracker for DiscoveringTracker {
    type Error = DiscoveryError;

    async fn announce(
        &self,
        digest: Digest,
        me: PeerInfo,
        have_bytes: u64,
    ) -> Result<Handout, DiscoveryError> {
        // From the first announce: see the module docs for why not after a share.
        self.inner.discovery.dht().provide(digest);
        let plan = self.policy().plan(Instant::now());
        match plan {
            Plan::TrackersThenDht => {
                match self.ask_trackers(digest, me.clone(), have_bytes).await {
                    Ok(handout) => Ok(handout),
                    Err(trackers) => self
                        .ask_dht(digest, &me)
                        .await
                        .map_err(|dht| DiscoveryError::Both { trackers, dht }),
                }
            }
            Plan::Dht => self.ask_dht(digest, &me).await.map_err(DiscoveryError::Dht),
            Plan::Both => {
                let (trackers, dht) = tokio::join!(
                    self.ask_trackers(digest, me.clone(), have_bytes),
                    self.ask_dht(digest, &me)
                );
                let cap = self.inner.discovery.config().dht_max_peers;
                match (trackers, dht) {
                    // The tracker's handout whole, and up to `dht_max_peers` extras.
                    (Ok(t), Ok(d)) => {
                        let cap = t.peers.len() + cap;
                        Ok(Handout {
                            interval: t.interval.or(d.interval),
                            peers: policy::merge(t.peers, d.peers, me.id, cap),
                        })
                    }
                    (Ok(t), Err(_)) => Ok(t),
                    (Err(_), Ok(d)) => Ok(d),
                    (Err(trackers), Err(dht)) => Err(DiscoveryError::Both { trackers, dht }),
                }
            }
        }
    }
}
