//! One builder per role: each takes what the node has made so far ([`Wiring`]) and
//! returns its role, its background work started.

use std::net::SocketAddr;
use std::sync::Arc;

use kraken_membership::NodeId;
use kraken_storage::backend::{NamespaceRouter, RouterConfig, default_http_client};
use kraken_storage::cas::Cas;
use kraken_storage::queue::WriteBackQueue;
use kraken_transport::exchange::{
    BadPieceObserver, ExchangeConfig, PieceExchange, PieceLatencyObserver, Tracker,
};
use kraken_transport::limit::RateLimiter;
use kraken_transport::quic::{ClusterCa, ConnectionPool, NodeIdentity};
use kraken_transport::swarm::{PeerInfo, PeerKind};
use kraken_transport::wire::PeerId;
use tokio::sync::watch;

use super::StartError;
use crate::agent::Agent;
use crate::buildindex::{BuildIndex, BuildIndexParts};
use crate::client::Cluster;
use crate::config::{NodeConfig, NodeRole};
use crate::discovery::{DiscoveringTracker, Discovery};
use crate::metrics::Metrics;
use crate::origin::{NoAnnounce, Origin, OriginParts};
use crate::service::Roles;
use crate::tracker::TrackerRole;

/// What the roles are built from.
pub(super) struct Wiring<'a> {
    /// The validated config, its QUIC advertise address resolved.
    pub config: &'a NodeConfig,
    /// This node's ring id.
    pub node_id: NodeId,
    /// This node's peer id (from its certificate).
    pub peer_id: PeerId,
    /// Its certificate and key, and the cluster CA (the DHT signs its card with them).
    pub tls: (&'a NodeIdentity, &'a ClusterCa),
    /// The QUIC address peers dial.
    pub advertise: SocketAddr,
    /// Connections to peers.
    pub pool: ConnectionPool,
    /// Calls to other nodes.
    pub cluster: Cluster,
    /// The node's counters.
    pub metrics: Arc<Metrics>,
    /// Turns true when the node stops; background work ends then.
    pub stop: watch::Receiver<bool>,
}

/// Every role the config names.
pub(super) async fn build(w: &Wiring<'_>) -> Result<Roles, StartError> {
    let mut roles = Roles::default();
    // Validation keeps origins and agents apart: each owns the store.
    if w.config.has(NodeRole::Origin) {
        roles.discovery = Some(discovery(w, PeerKind::Origin).await?);
        roles.origin = Some(origin(w, open_store(w.config).await?)?);
    } else if w.config.has(NodeRole::Agent) {
        let discovery = discovery(w, PeerKind::Agent).await?;
        roles.discovery = Some(discovery.clone());
        roles.agent = Some(agent(w, open_store(w.config).await?, discovery)?);
    }
    if w.config.has(NodeRole::BuildIndex) {
        roles.build_index = Some(build_index(w)?);
    }
    if w.config.has(NodeRole::Tracker) {
        roles.tracker = Some(TrackerRole::new(
            w.cluster.clone(),
            w.config.tracker.clone(),
            w.metrics.clone(),
        ));
    }
    Ok(roles)
}

/// The node's DHT (every agent and origin runs it, in every discovery mode), bootstrapped
/// from the origins of the view.
async fn discovery(w: &Wiring<'_>, kind: PeerKind) -> Result<Discovery, StartError> {
    let discovery = Discovery::start(
        &w.config.discovery,
        (&w.config.node.data_dir, w.config.quic.listen),
        (w.peer_id, w.advertise, kind),
        w.tls,
        w.metrics.clone(),
    )
    .await
    .map_err(StartError::Dht)?;
    crate::spawn(crate::discovery::bootstrap::follow(
        discovery.clone(),
        w.cluster.clone(),
        w.advertise,
        w.stop.clone(),
    ));
    Ok(discovery)
}

async fn open_store(config: &NodeConfig) -> Result<Cas, StartError> {
    let store = config.store_config();
    // Opening reads the store's state from disk: not on the runtime's threads.
    tokio::task::spawn_blocking(move || Cas::open(store))
        .await
        .map_err(StartError::OpenStoreTask)?
        .map_err(StartError::OpenStore)
}

fn origin(w: &Wiring<'_>, cas: Cas) -> Result<Origin, StartError> {
    let exchange = exchange(w, cas.clone(), NoAnnounce, PeerKind::Origin, None)?;
    let router = backend_router(w.config)?;
    let queue = WriteBackQueue::open(
        &w.config.node.data_dir.join("writeback.redb"),
        w.config.writeback_queue.clone(),
    )
    .map_err(StartError::OpenWriteBackQueue)?;
    let origin = Origin::new(OriginParts {
        me: w.node_id.clone(),
        cluster: w.cluster.clone(),
        cas,
        router,
        queue,
        exchange,
        uploads_dir: w.config.node.data_dir.join("uploads"),
        scrub_state: w.config.node.data_dir.join("scrub.state"),
        config: w.config.origin.clone(),
        metrics: w.metrics.clone(),
    })
    .map_err(StartError::OriginUploads)?;
    origin.spawn_background(w.stop.clone());
    Ok(origin)
}

fn agent(w: &Wiring<'_>, cas: Cas, discovery: Discovery) -> Result<Agent, StartError> {
    let tracker = DiscoveringTracker::new(w.cluster.clone(), discovery.clone());
    let (observer, reports) = crate::bad_pieces::channel();
    let exchange = exchange(w, cas, tracker.clone(), PeerKind::Agent, Some(observer))?;
    crate::spawn(crate::bad_pieces::run(
        w.cluster.clone(),
        reports,
        w.metrics.clone(),
        w.stop.clone(),
    ));
    let agent = Agent::new(
        w.cluster.clone(),
        exchange,
        w.config.agent.clone(),
        w.metrics.clone(),
        tracker,
    );
    agent.spawn_background(w.stop.clone());
    Ok(agent)
}

fn build_index(w: &Wiring<'_>) -> Result<BuildIndex, StartError> {
    let router = backend_router(w.config)?;
    let bi = BuildIndex::open(BuildIndexParts {
        me: w.node_id.clone(),
        cluster: w.cluster.clone(),
        data_dir: w.config.node.data_dir.join("build-index"),
        router,
        config: w.config.build_index.clone(),
        queue: w.config.writeback_queue.clone(),
    })
    .map_err(StartError::OpenBuildIndex)?;
    bi.spawn_background(w.stop.clone());
    Ok(bi)
}

/// The piece exchange of an origin (seeds complete blobs) or an agent (starts empty, and
/// hands bad pieces to `bad_piece`).
fn exchange<T: Tracker>(
    w: &Wiring<'_>,
    cas: Cas,
    tracker: T,
    kind: PeerKind,
    bad_piece: Option<BadPieceObserver>,
) -> Result<PieceExchange<T>, StartError> {
    let me = PeerInfo {
        id: w.peer_id,
        addr: w.advertise,
        kind,
        complete: kind == PeerKind::Origin,
    };
    let mut config = exchange_config(w.config, kind)?;
    let metrics = w.metrics.clone();
    config.piece_latency = Some(PieceLatencyObserver::new(move |latency| {
        metrics.observe_piece_latency(latency);
    }));
    config.bad_piece = bad_piece;
    PieceExchange::new(w.pool.clone(), cas, tracker, me, config).map_err(StartError::Exchange)
}

/// The exchange's settings for an origin or an agent: the swarm's, and the role's
/// bandwidth limits.
fn exchange_config(config: &NodeConfig, kind: PeerKind) -> Result<ExchangeConfig, StartError> {
    let origin = kind == PeerKind::Origin;
    let (egress, ingress) = if origin {
        let o = &config.origin;
        (o.egress_bytes_per_sec, o.ingress_bytes_per_sec)
    } else {
        let a = &config.agent;
        (a.egress_bytes_per_sec, a.ingress_bytes_per_sec)
    };
    Ok(ExchangeConfig {
        swarm: config.swarm_config(),
        egress: rate(egress)?,
        ingress: rate(ingress)?,
        piece_latency: None,
        ..ExchangeConfig::default()
    })
}

/// A limiter of `bytes_per_sec`; 0 is no limit.
fn rate(bytes_per_sec: u64) -> Result<Option<RateLimiter>, StartError> {
    (bytes_per_sec > 0)
        .then(|| RateLimiter::new(bytes_per_sec, 0))
        .transpose()
        .map_err(StartError::RateLimit)
}

/// The `[[backends]]` routes of origins and build-index nodes.
fn backend_router(config: &NodeConfig) -> Result<NamespaceRouter, StartError> {
    let http = default_http_client().map_err(StartError::Backends)?;
    let routes = RouterConfig {
        backends: config.backends.clone(),
    };
    NamespaceRouter::new(&routes, http).map_err(StartError::Backends)
}
