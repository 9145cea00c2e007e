//! Starting and stopping one node: every role of a config, wired together.
//!
//! [`Node::start`] binds the QUIC endpoint, joins gossip (ring nodes) or starts reading the
//! cluster view from seeds (agents), opens the store, builds the roles, starts serving
//! streams and the HTTP endpoint, and only then publishes itself as ready (so it owns no
//! keys before it can serve them). [`Node::shutdown`] leaves gracefully; [`Node::kill`]
//! stops abruptly, as a crash would (tests).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use kraken_membership::{
    ClusterId, ClusterView, Member, Membership, MembershipConfig, NodeId, RoleSet,
    ViewRefreshConfig,
};
use kraken_storage::Digest;
use kraken_storage::backend::{NamespaceRouter, RouterConfig, default_http_client};
use kraken_storage::cas::Cas;
use kraken_storage::queue::WriteBackQueue;
use kraken_transport::exchange::{ExchangeConfig, PieceExchange};
use kraken_transport::quic::{
    BiStream, ClusterCa, ConnectionPool, Endpoint, NodeIdentity, PoolConfig, QuicConfig, RpcConfig,
    RpcStream, Service, StreamOutcome, codes, serve,
};
use kraken_transport::swarm::{PeerInfo, PeerKind};
use kraken_transport::wire::PeerId;
use quinn::RecvStream;
use tokio::sync::watch;

use crate::agent::{Agent, RingTracker};
use crate::buildindex::{BuildIndex, BuildIndexParts};
use crate::client::Cluster;
use crate::config::{NodeConfig, NodeRole};
use crate::http;
use crate::metrics::Metrics;
use crate::origin::{NoAnnounce, Origin, OriginParts};
use crate::proto::{NodeInfo, Request};
use crate::registry::ClusterRegistry;
use crate::service::{NodeService, Roles};
use crate::tracker::TrackerRole;
use kraken_registry_gateway::{
    BasicCredential, GatewayConfig, PushAuth, serve as serve_registry_plain, serve_tls,
    tls_config_from_pem,
};

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Certificates.
    #[error("TLS: {0}")]
    Tls(#[from] kraken_transport::quic::TlsError),
    /// The QUIC endpoint.
    #[error("QUIC endpoint: {0}")]
    Endpoint(String),
    /// Gossip.
    #[error("gossip: {0}")]
    Membership(String),
    /// The store, queue or backends.
    #[error("storage: {0}")]
    Storage(String),
    /// The HTTP endpoint.
    #[error("HTTP endpoint on {addr}: {source}")]
    Http {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The service, set once the roles exist (the pool must exist before the roles, and the
/// pool's accept loop needs a service).
#[derive(Default)]
struct LateService(OnceLock<NodeService>);

impl Service for LateService {
    type Request = Request;

    async fn rpc(&self, peer: PeerId, request: Request, stream: RpcStream) -> StreamOutcome {
        match self.0.get() {
            Some(s) => s.rpc(peer, request, stream).await,
            None => {
                stream.reject(codes::REFUSED);
                StreamOutcome::Done
            }
        }
    }

    async fn session(&self, peer: PeerId, digest: Digest, stream: BiStream) -> StreamOutcome {
        match self.0.get() {
            Some(s) => s.session(peer, digest, stream).await,
            None => {
                stream.reject(codes::REFUSED);
                StreamOutcome::Done
            }
        }
    }

    async fn uni_stream(&self, peer: PeerId, mut recv: RecvStream) -> StreamOutcome {
        match self.0.get() {
            Some(s) => s.uni_stream(peer, recv).await,
            None => {
                let _ = recv.stop(codes::REFUSED);
                StreamOutcome::Done
            }
        }
    }
}

/// A running node.
pub struct Node {
    name: String,
    endpoint: Endpoint,
    cluster: Cluster,
    roles: Roles,
    membership: Option<Membership>,
    stop: watch::Sender<bool>,
    http_addr: Option<SocketAddr>,
    registry_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("quic", &self.endpoint.local_addr().ok())
            .field("http", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a node with certificates from the files its config names.
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        let identity = NodeIdentity::from_pem_files(&config.tls.cert, &config.tls.key)?;
        let ca = ClusterCa::from_pem_file(&config.tls.ca)?;
        Node::start_with(config, identity, ca).await
    }

    /// Starts a node with the given identity.
    pub async fn start_with(
        mut config: NodeConfig,
        identity: NodeIdentity,
        ca: ClusterCa,
    ) -> Result<Node, StartError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::default());
        let quic = QuicConfig::bind_to(config.quic.listen);
        let endpoint = Endpoint::bind(&quic, &identity, &ca)
            .map_err(|e| StartError::Endpoint(e.to_string()))?;
        let bound = endpoint
            .local_addr()
            .map_err(|e| StartError::Endpoint(e.to_string()))?;
        // Port 0 in the config: advertise the port we got.
        let mut advertise = config.quic_advertise();
        if advertise.port() == 0 {
            advertise.set_port(bound.port());
        }
        config.quic.advertise = Some(advertise);

        let late = Arc::new(LateService::default());
        let serving = late.clone();
        let pool = ConnectionPool::new(endpoint.clone(), PoolConfig::default(), move |conn| {
            tokio::spawn(serve(conn, serving.clone(), RpcConfig::default()));
        })
        .map_err(|e| StartError::Endpoint(e.to_string()))?;

        let (stop, stop_rx) = watch::channel(false);
        let cluster_id = ClusterId::new(config.node.cluster_id.clone())
            .map_err(|e| StartError::Membership(e.to_string()))?;
        let node_id = NodeId::new(config.node.name.clone())
            .map_err(|e| StartError::Membership(e.to_string()))?;

        // The HTTP listener first: its address goes into the member record.
        let http_listener = match config.http.address() {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Http { addr, source })?,
            ),
            None => None,
        };
        let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());

        let (membership, view_rx) = if config.is_ring_node() {
            let mut roles = RoleSet::default();
            for r in config.node.roles.iter().filter_map(|r| r.ring()) {
                roles.insert(r);
            }
            let mut member = Member::new(node_id.clone(), roles, advertise);
            member.http_addr = http_addr;
            member.ready = false;
            member.generation = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
            let mconfig = MembershipConfig {
                cluster_id: cluster_id.clone(),
                gossip_listen_addr: config.gossip.listen,
                gossip_advertise_addr: config.gossip.advertise,
                seeds: config.gossip.seeds.clone(),
                gossip_interval: Duration::from_millis(config.gossip.interval_ms),
                ..MembershipConfig::default()
            };
            let m = Membership::start(mconfig, member)
                .await
                .map_err(|e| StartError::Membership(e.to_string()))?;
            let rx = m.watch();
            (Some(m), rx)
        } else {
            let empty = ClusterView::new(cluster_id.clone(), [])
                .map_err(|e| StartError::Membership(e.to_string()))?;
            let (tx, rx) = watch::channel(empty);
            let refresh = ViewRefreshConfig {
                interval: Duration::from_secs(config.view.refresh_secs),
                ..ViewRefreshConfig::default()
            };
            let cluster = Cluster::new(pool.clone(), rx.clone());
            tokio::spawn(crate::view::refresh_view(
                cluster,
                cluster_id.clone(),
                config.view.seeds.clone(),
                refresh,
                tx,
                stop_rx.clone(),
            ));
            (None, rx)
        };
        let cluster = Cluster::new(pool.clone(), view_rx.clone());

        let mut roles = Roles::default();
        let exchange_config = ExchangeConfig {
            swarm: config.swarm_config(),
            ..ExchangeConfig::default()
        };
        if config.has(NodeRole::Origin) || config.has(NodeRole::Agent) {
            let store = config.store_config();
            let cas = tokio::task::spawn_blocking(move || Cas::open(store))
                .await
                .map_err(|e| StartError::Storage(e.to_string()))?
                .map_err(|e| StartError::Storage(e.to_string()))?;
            if config.has(NodeRole::Origin) {
                let me = PeerInfo {
                    id: identity.peer_id,
                    addr: advertise,
                    kind: PeerKind::Origin,
                    complete: true,
                };
                let mut exchange_config = exchange_config.clone();
                exchange_config.egress = rate(config.origin.egress_bytes_per_sec)?;
                exchange_config.ingress = rate(config.origin.ingress_bytes_per_sec)?;
                let exchange =
                    PieceExchange::new(pool.clone(), cas.clone(), NoAnnounce, me, exchange_config)
                        .map_err(|e| StartError::Storage(e.to_string()))?;
                let router = backend_router(&config)?;
                let queue = WriteBackQueue::open(
                    &config.node.data_dir.join("writeback.redb"),
                    config.writeback_queue.clone(),
                )
                .map_err(|e| StartError::Storage(e.to_string()))?;
                let origin = Origin::new(OriginParts {
                    me: node_id.clone(),
                    cluster: cluster.clone(),
                    cas,
                    router,
                    queue,
                    exchange,
                    uploads_dir: config.node.data_dir.join("uploads"),
                    config: config.origin.clone(),
                    metrics: metrics.clone(),
                })
                .map_err(|e| StartError::Storage(e.to_string()))?;
                origin.spawn_background(stop_rx.clone());
                roles.origin = Some(origin);
            } else {
                let me = PeerInfo {
                    id: identity.peer_id,
                    addr: advertise,
                    kind: PeerKind::Agent,
                    complete: false,
                };
                let mut exchange_config = exchange_config.clone();
                exchange_config.egress = rate(config.agent.egress_bytes_per_sec)?;
                exchange_config.ingress = rate(config.agent.ingress_bytes_per_sec)?;
                let exchange = PieceExchange::new(
                    pool.clone(),
                    cas,
                    RingTracker::new(cluster.clone()),
                    me,
                    exchange_config,
                )
                .map_err(|e| StartError::Storage(e.to_string()))?;
                let agent = Agent::new(
                    cluster.clone(),
                    exchange,
                    config.agent.clone(),
                    metrics.clone(),
                );
                agent.spawn_background(stop_rx.clone());
                roles.agent = Some(agent);
            }
        }
        if config.has(NodeRole::BuildIndex) {
            let router = backend_router(&config)?;
            let bi = BuildIndex::open(BuildIndexParts {
                me: node_id.clone(),
                cluster: cluster.clone(),
                data_dir: config.node.data_dir.join("build-index"),
                router,
                config: config.build_index.clone(),
                queue: config.writeback_queue.clone(),
            })
            .map_err(StartError::Storage)?;
            bi.spawn_background(stop_rx.clone());
            roles.build_index = Some(bi);
        }
        if config.has(NodeRole::Tracker) {
            roles.tracker = Some(TrackerRole::new(
                cluster.clone(),
                config.tracker.clone(),
                metrics.clone(),
            ));
        }
        let info = NodeInfo {
            name: config.node.name.clone(),
            roles: config
                .node
                .roles
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        // Every node serves the view it has: ring nodes their gossiped one, agents the one
        // they refreshed, so any node can seed a tool or another agent.
        let view_for_service = Some(view_rx.clone());
        let _ = late.0.set(NodeService::new(
            roles.clone(),
            info,
            view_for_service,
            metrics.clone(),
        ));
        let registry_metrics = kraken_registry_gateway::GatewayMetrics::new();
        let registry_addr = start_registry(
            &config,
            &roles,
            &cluster,
            registry_metrics.clone(),
            stop_rx.clone(),
        )
        .await?;
        if registry_addr.is_some() {
            metrics.register(|r| registry_metrics.register(r));
        }
        if let Some(listener) = http_listener {
            let state = http::HttpState {
                metrics: metrics.clone(),
                roles: roles.clone(),
                cluster: cluster.clone(),
                ring_node: membership.is_some(),
            };
            tokio::spawn(http::serve(listener, state, stop_rx.clone()));
        }
        if let Some(m) = &membership {
            m.set_ready(true).await;
        }
        tracing::info!(name = %config.node.name, quic = %advertise, http = ?http_addr,
            roles = ?config.node.roles, "node started");
        Ok(Node {
            name: config.node.name.clone(),
            endpoint,
            cluster,
            roles,
            membership,
            stop,
            http_addr,
            registry_addr,
            metrics,
        })
    }

    /// The registry API's address (agents and proxies).
    pub fn registry_addr(&self) -> Option<SocketAddr> {
        self.registry_addr
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The QUIC address peers dial.
    pub fn quic_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The gossip address (ring nodes).
    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        self.membership.as_ref().map(Membership::gossip_addr)
    }

    /// The HTTP address, if it serves one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Its roles.
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// The cluster client (tests and tools call other nodes through it).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Its counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn close_exchanges(&self) {
        if let Some(o) = &self.roles.origin {
            o.exchange().close();
        }
        if let Some(a) = &self.roles.agent {
            a.exchange().close();
        }
    }

    /// Leaves gracefully: unready (peers stop routing to it), gossip shut down, background
    /// work stopped, connections closed.
    pub async fn shutdown(mut self) {
        if let Some(m) = self.membership.take() {
            m.set_ready(false).await;
            if let Err(e) = m.shutdown().await {
                tracing::warn!(error = %e, "gossip shutdown");
            }
        }
        self.stop.send_replace(true);
        self.close_exchanges();
        if let Some(agent) = &self.roles.agent {
            let _ = agent.cas().flush_access_times();
        }
        self.endpoint.close();
        tokio::time::timeout(Duration::from_secs(2), self.endpoint.shutdown())
            .await
            .ok();
    }

    /// Stops at once, as if the process died: no goodbye to gossip or peers.
    pub fn kill(mut self) {
        self.stop.send_replace(true);
        self.close_exchanges();
        self.cluster.pool().close();
        self.endpoint.close();
        drop(self.membership.take());
    }
}

/// The `[[backends]]` routes of origins and build-index nodes.
fn backend_router(config: &NodeConfig) -> Result<NamespaceRouter, StartError> {
    let http = default_http_client().map_err(|e| StartError::Storage(e.to_string()))?;
    NamespaceRouter::new(
        &RouterConfig {
            backends: config.backends.clone(),
        },
        http,
    )
    .map_err(|e| StartError::Storage(e.to_string()))
}

/// Serves the registry API on agents (pull) and proxies (push), if enabled.
async fn start_registry(
    config: &NodeConfig,
    roles: &Roles,
    cluster: &Cluster,
    metrics: kraken_registry_gateway::GatewayMetrics,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<SocketAddr>, StartError> {
    let section = &config.registry;
    let proxy = config.has(NodeRole::Proxy);
    if !section.enabled || !(proxy || roles.agent.is_some()) {
        return Ok(None);
    }
    let registry = match &roles.agent {
        Some(agent) if !proxy => ClusterRegistry::agent(agent.clone(), cluster.clone()),
        _ => ClusterRegistry::proxy(cluster.clone()),
    };
    let registry = Arc::new(if section.upstreams.is_empty() || proxy {
        registry
    } else {
        let upstreams = crate::upstream::Upstreams::new(&section.upstreams)
            .map_err(|e| StartError::Endpoint(format!("registry upstreams: {e}")))?;
        registry.with_upstreams(upstreams)
    });
    let auth = if section.push_tokens.is_empty() && section.push_users.is_empty() {
        None
    } else {
        Some(PushAuth {
            bearer_tokens: section.push_tokens.clone(),
            basic: section
                .push_users
                .iter()
                .filter_map(|u| u.split_once(':'))
                .map(|(user, password)| BasicCredential {
                    username: user.to_string(),
                    password: password.to_string(),
                })
                .collect(),
            realm: "kraken".into(),
        })
    };
    let gateway = GatewayConfig {
        push: proxy,
        uploads_dir: section
            .uploads_dir
            .clone()
            .unwrap_or_else(|| config.node.data_dir.join("registry-uploads")),
        max_manifest_len: section.max_manifest_len,
        auth,
        page_limit: section.page_limit,
        metrics,
        ..GatewayConfig::default()
    };
    let addr = section.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Http { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Http { addr, source })?;
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let tls = match (&section.tls_cert, &section.tls_key) {
        (Some(cert), Some(key)) => {
            Some(tls_config_from_pem(cert, key).map_err(|e| StartError::Endpoint(e.to_string()))?)
        }
        _ => None,
    };
    // Fail at start on a bad setting rather than in the serving task.
    gateway
        .validate()
        .map_err(|e| StartError::Endpoint(format!("registry: {e}")))?;
    tokio::spawn(async move {
        let served = match tls {
            Some(tls) => serve_tls(listener, registry, gateway, tls, shutdown).await,
            None => serve_registry_plain(listener, registry, gateway, shutdown).await,
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "registry API stopped");
        }
    });
    tracing::info!(addr = %bound, push = proxy, "registry API listening");
    Ok(Some(bound))
}

fn rate(bytes_per_sec: u64) -> Result<Option<kraken_transport::limit::RateLimiter>, StartError> {
    if bytes_per_sec == 0 {
        return Ok(None);
    }
    kraken_transport::limit::RateLimiter::new(bytes_per_sec, 0)
        .map(Some)
        .map_err(|e| StartError::Config(crate::config::ConfigError::Invalid(e.to_string())))
}
