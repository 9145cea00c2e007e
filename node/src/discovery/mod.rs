//! Where agents find peers: the tracker ring, the Kademlia DHT (`kraken_dht`), or both.
//!
//! Every agent and origin runs the DHT whatever the mode (tracker mode needs it as the
//! fallback); trackers, proxies and build-index nodes do not. The parts:
//!
//! - [`config`]: `[discovery]`, the mode and the DHT's settings.
//! - [`policy`]: the pure policy (which source answers an announce, fallback and return,
//!   merging handouts), unit-tested.
//! - [`tracker`]: [`DiscoveringTracker`], the exchange's `Tracker` over the policy: it asks
//!   the sources, provides what the agent holds, checks DHT-sourced peers at the QUIC
//!   handshake and reports liars.
//! - [`bootstrap`]: joining the DHT through membership: the origins of the node's view say
//!   where their DHT listens (`Request::DhtContact`), again whenever the origin ring changes.
//!
//! Origins provide nothing: an origin holds 100k+ blobs, and republishing a record for
//! each would dominate the DHT's traffic for information the ring already gives (a
//! digest's owning origins follow from the ring; [`DiscoveringTracker`] adds them to every
//! DHT-sourced handout, as the tracker does to its own). Origins run the DHT as stable
//! servers: they hold records and route lookups.

pub mod bootstrap;
pub mod config;
pub mod policy;
pub mod tracker;

use std::net::SocketAddr;
use std::sync::Arc;

use kraken_dht::{Dht, DhtConfig, DhtError, DhtStats, LocalCard, Provider};
use kraken_storage::Digest;
use kraken_transport::quic::{ClusterCa, NodeIdentity};
use kraken_transport::swarm::{PeerInfo, PeerKind};
use kraken_transport::wire::PeerId;

pub use self::config::DiscoveryConfig;
pub use self::policy::Mode;
pub use self::tracker::DiscoveringTracker;
use crate::metrics::Metrics;
use crate::proto::DhtProvider;

/// A node's DHT and what it advertises. Cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    dht: Dht,
    config: DiscoveryConfig,
    /// Where other nodes reach this node's DHT: the advertised QUIC host, the DHT's port.
    advertise: SocketAddr,
    metrics: Arc<Metrics>,
}

impl Discovery {
    /// Starts the node's DHT: identity at `<data_dir>/dht/identity.key`, listening next to
    /// `quic_listen` unless `dht_listen` says where, its card naming `peer` at `addr` (the
    /// advertised kraken QUIC address) as a `kind`.
    pub async fn start(
        config: &DiscoveryConfig,
        (data_dir, quic_listen): (&std::path::Path, SocketAddr),
        card: (PeerId, SocketAddr, PeerKind),
        (identity, ca): (&NodeIdentity, &ClusterCa),
        metrics: Arc<Metrics>,
    ) -> Result<Discovery, DhtError> {
        let (peer, addr, kind) = card;
        let dht_config = config.dht_config(data_dir, quic_listen);
        let me = LocalCard { peer, addr, kind };
        let dht = Dht::start(dht_config, me, identity, ca).await?;
        let mut advertise = dht.listen_addr();
        advertise.set_ip(addr.ip());
        tracing::info!(dht_peer = %dht.dht_peer_id(), dht = %advertise, mode = ?config.mode,
            "DHT started");
        Ok(Discovery {
            inner: Arc::new(Inner {
                dht,
                config: config.clone(),
                advertise,
                metrics,
            }),
        })
    }

    /// The DHT handle.
    pub fn dht(&self) -> &Dht {
        &self.inner.dht
    }

    /// The settings.
    pub fn config(&self) -> &DiscoveryConfig {
        &self.inner.config
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// This node's DHT contact: its libp2p peer id and the address others dial.
    pub fn contact(&self) -> (String, SocketAddr) {
        (self.inner.dht.dht_peer_id(), self.inner.advertise)
    }

    /// Stops providing `digest` (evicted, deleted, or its download failed).
    pub fn forget(&self, digest: &Digest) {
        self.inner.dht.stop_providing(*digest);
    }

    /// The providers of `digest` the DHT finds now, as the lookup returned them (unchecked:
    /// `krakenctl blob peers --dht` shows what the DHT says).
    pub async fn providers(&self, digest: Digest) -> Result<Vec<DhtProvider>, String> {
        let found = self.find(digest, self.inner.config.dht_max_peers).await?;
        Ok(found
            .into_iter()
            .map(|p| DhtProvider {
                peer: provider_peer(&p),
                dht_peer: p.dht_peer,
            })
            .collect())
    }

    /// At most `limit` providers of `digest`, within `dht_lookup_timeout_ms`.
    pub async fn find(&self, digest: Digest, limit: usize) -> Result<Vec<Provider>, String> {
        let timeout = std::time::Duration::from_millis(self.inner.config.dht_lookup_timeout_ms);
        self.inner
            .dht
            .find_providers(digest, limit, timeout)
            .await
            .map_err(|e| e.to_string())
    }

    /// The DHT's counters and gauges, for the metrics.
    pub fn gauges(&self) -> DhtStats {
        self.inner.dht.stats()
    }

    /// Stops the DHT.
    pub async fn shutdown(&self) {
        self.inner.dht.clone().shutdown().await;
    }
}

impl DiscoveryConfig {
    /// The DHT's own settings: these keys, the identity in `data_dir`, the listener next
    /// to `quic_listen` unless `dht_listen` is set.
    pub fn dht_config(&self, data_dir: &std::path::Path, quic_listen: SocketAddr) -> DhtConfig {
        use std::time::Duration;
        // Settings the DHT gains later keep their defaults.
        #[allow(clippy::needless_update)]
        DhtConfig {
            listen: self.dht_listen(quic_listen),
            identity_path: DiscoveryConfig::identity_path(data_dir),
            provider_ttl: Duration::from_secs(self.dht_provider_ttl_secs),
            republish_interval: Duration::from_secs(self.dht_republish_secs),
            max_records: self.dht_max_records,
            max_provider_keys: self.dht_max_provider_keys,
            max_providers_per_key: self.dht_max_providers_per_key,
            max_provider_records: self.dht_max_provider_records,
            queries_per_sec: self.dht_queries_per_sec,
            inbound_per_sec: self.dht_inbound_per_sec,
            ..DhtConfig::default()
        }
    }
}

/// A provider as a swarm peer (incomplete as far as anyone knows: records do not say).
pub fn provider_peer(p: &Provider) -> PeerInfo {
    PeerInfo {
        id: p.peer,
        addr: p.addr,
        kind: p.kind,
        complete: false,
    }
}
