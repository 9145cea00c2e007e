//! Starting and stopping one node: every role of a config, wired together.
//!
//! [`Node::start`] locks the data directory (one process at a time: see
//! `kraken_storage::dirlock`), binds the QUIC endpoint, joins gossip (ring nodes) or starts reading the
//! cluster view from seeds (agents), opens the store, builds the roles, starts serving
//! streams and the HTTP endpoint, and only then publishes itself as ready (so it owns no
//! keys before it can serve them). [`Node::shutdown`] leaves gracefully; [`Node::kill`]
//! stops abruptly, as a crash would (tests).
//!
//! Each step lives in its own module: `quic` (the endpoint, the pool and the service that
//! answers streams), `membership` (gossip or the view from seeds), `roles` (one builder
//! per role), `endpoints` (the HTTP endpoint and the registry API) and `error`
//! ([`StartError`], naming the step that failed).

mod endpoints;
mod error;
mod membership;
mod quic;
mod roles;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kraken_membership::{ClusterId, Membership, NodeId};
use kraken_registry_gateway::GatewayMetrics;
use kraken_storage::dirlock::DirLock;
use kraken_transport::quic::{ClusterCa, Endpoint, NodeIdentity};
use tokio::sync::watch;
use tracing::Instrument as _;

pub use self::error::StartError;
use crate::client::Cluster;
use crate::config::{NodeConfig, NodeRole};
use crate::http::HttpState;
use crate::metrics::Metrics;
use crate::proto::NodeInfo;
use crate::service::{NodeService, Roles};

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
    /// Held while the node runs: no second process opens its state under it.
    _locks: Vec<DirLock>,
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

    /// Starts a node with the given identity. Everything the node logs, from any of its
    /// tasks, is in a `node` span with its name (`kraken dev` runs several in a process).
    pub async fn start_with(
        config: NodeConfig,
        identity: NodeIdentity,
        ca: ClusterCa,
    ) -> Result<Node, StartError> {
        let span = tracing::info_span!("node", name = %config.node.name);
        Node::start_in_span(config, identity, ca)
            .instrument(span)
            .await
    }

    /// [`Node::start_with`] inside the node's span: every task started here carries it on
    /// (`in_current_span`).
    async fn start_in_span(
        mut config: NodeConfig,
        identity: NodeIdentity,
        ca: ClusterCa,
    ) -> Result<Node, StartError> {
        config.validate()?;
        // Before anything opens a database there.
        let locks = lock_dirs(&config)?;
        // Every counter of the process, made here.
        let metrics = Arc::new(Metrics::default());
        let gateway_metrics = GatewayMetrics::new();
        let (endpoint, advertise) = quic::bind(&mut config, &identity, &ca)?;
        let late = Arc::new(quic::LateService::default());
        let pool = quic::pool(&endpoint, late.clone())?;
        let (stop, stop_rx) = watch::channel(false);
        let cluster_id =
            ClusterId::new(config.node.cluster_id.clone()).map_err(StartError::ClusterId)?;
        let node_id = NodeId::new(config.node.name.clone()).map_err(StartError::NodeName)?;
        let http_listener = endpoints::bind_http(&config).await?;
        let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
        let joined = membership::join(
            &config,
            cluster_id,
            node_id.clone(),
            (advertise, http_addr),
            (&identity, &ca),
            &pool,
            stop_rx.clone(),
        )
        .await?;
        let cluster = Cluster::new(pool.clone(), joined.view.clone());
        let roles = roles::build(&roles::Wiring {
            config: &config,
            node_id,
            peer_id: identity.peer_id,
            tls: (&identity, &ca),
            advertise,
            pool,
            cluster: cluster.clone(),
            metrics: metrics.clone(),
            stop: stop_rx.clone(),
        })
        .await?;
        // Every node serves the view it has: ring nodes their gossiped one, agents the one
        // they refreshed, so any node can seed a tool or another agent.
        late.set(NodeService::new(
            roles.clone(),
            node_info(&config),
            Some(joined.view),
            metrics.clone(),
        ));
        let registry_addr = endpoints::start_registry(
            &config,
            &roles,
            &cluster,
            (gateway_metrics.clone(), &metrics),
            stop_rx.clone(),
        )
        .await?;
        if registry_addr.is_some() {
            metrics.register(|r| gateway_metrics.register(r));
        }
        if let Some(listener) = http_listener {
            let state = HttpState {
                metrics: metrics.clone(),
                roles: roles.clone(),
                cluster: cluster.clone(),
                ring_node: joined.membership.is_some(),
                limits: config.http.limits.http_limits(),
                gossip: joined.membership.as_ref().map(Membership::counters),
            };
            endpoints::serve_http(listener, state, stop_rx);
        }
        if let Some(m) = &joined.membership {
            m.set_ready(true).await;
        }
        tracing::info!(quic = %advertise, http = ?http_addr, roles = ?config.node.roles,
            "node started");
        Ok(Node {
            name: config.node.name,
            endpoint,
            cluster,
            roles,
            membership: joined.membership,
            stop,
            http_addr,
            registry_addr,
            metrics,
            _locks: locks,
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
        if let Some(d) = &self.roles.discovery {
            d.shutdown().await;
        }
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
        // The DHT goes too (a dead process answers no lookups); it stops in the background.
        if let (Some(d), Ok(rt)) = (
            self.roles.discovery.clone(),
            tokio::runtime::Handle::try_current(),
        ) {
            rt.spawn(async move { d.shutdown().await });
        }
        self.cluster.pool().close();
        self.endpoint.close();
        drop(self.membership.take());
    }
}

/// Locks the directories the node keeps state in: the data directory, and the store's
/// root when it lies outside it. A tracker alone keeps nothing on disk and locks nothing.
fn lock_dirs(config: &NodeConfig) -> Result<Vec<DirLock>, StartError> {
    let stateful = [
        NodeRole::Origin,
        NodeRole::Agent,
        NodeRole::BuildIndex,
        NodeRole::Proxy,
    ];
    if !stateful.iter().any(|r| config.has(*r)) {
        return Ok(Vec::new());
    }
    let data_dir = &config.node.data_dir;
    let mut locks = vec![DirLock::acquire(data_dir).map_err(StartError::LockDataDir)?];
    let store = config.store_config().root;
    if (config.has(NodeRole::Origin) || config.has(NodeRole::Agent)) && !store.starts_with(data_dir)
    {
        locks.push(DirLock::acquire(&store).map_err(StartError::LockDataDir)?);
    }
    Ok(locks)
}

/// What the node says about itself when pinged.
fn node_info(config: &NodeConfig) -> NodeInfo {
    NodeInfo {
        name: config.node.name.clone(),
        roles: config
            .node
            .roles
            .iter()
            .map(|r| r.as_str().to_string())
            .collect(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::path::Path;

    use kraken_transport::quic::EndpointError;
    use kraken_transport::quic::tls::dev::DevCa;

    use super::*;
    use crate::config::NodeRole;

    /// A valid agent config on loopback with everything under `dir`.
    fn agent_config(dir: &Path) -> NodeConfig {
        let mut c = NodeConfig::default();
        c.node.name = "agent-1".into();
        c.node.roles = vec![NodeRole::Agent];
        c.node.data_dir = dir.join("agent-1");
        c.node.cluster_id = "test".into();
        c.quic.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.registry.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        // Never dialed: starting fails before the view is read.
        c.view.seeds = vec!["127.0.0.1:9".into()];
        c.tls.ca = "unused".into();
        c.tls.cert = "unused".into();
        c.tls.key = "unused".into();
        c
    }

    async fn start(dir: &Path, config: NodeConfig) -> StartError {
        let ca = DevCa::create(&dir.join("ca")).unwrap();
        let identity = ca.issue_node_cert(&config.node.name).unwrap();
        Node::start_with(config, identity, ca.cluster_ca())
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn a_taken_quic_port_is_named_as_binding_the_quic_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut config = agent_config(dir.path());
        config.quic.listen = taken.local_addr().unwrap();
        let err = start(dir.path(), config).await;
        assert!(
            matches!(err, StartError::BindQuic(EndpointError::Socket { .. })),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.starts_with("binding the QUIC endpoint: "), "{text}");
        assert!(
            text.contains(&taken.local_addr().unwrap().to_string()),
            "{text}"
        );
        assert!(err.source().is_some(), "the cause stays typed");
    }

    #[tokio::test]
    async fn a_data_directory_in_use_is_named_before_any_database_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let config = agent_config(dir.path());
        let held = DirLock::acquire(&config.node.data_dir).unwrap();
        let err = start(dir.path(), config.clone()).await;
        assert!(matches!(err, StartError::LockDataDir(_)), "{err:?}");
        let text = err.to_string();
        let want = format!(
            "locking the data directory: data directory {} is in use by another kraken \
             process (pid {})",
            config.node.data_dir.display(),
            std::process::id()
        );
        assert!(text.starts_with(&want), "{text}");
        assert!(
            !config.node.data_dir.join("cas").exists(),
            "the store was not touched"
        );
        drop(held);
        // Free again: the node starts.
        let ca = DevCa::create(&dir.path().join("ca-2")).unwrap();
        let identity = ca.issue_node_cert(&config.node.name).unwrap();
        let node = Node::start_with(config, identity, ca.cluster_ca())
            .await
            .unwrap();
        node.kill();
    }

    #[tokio::test]
    async fn a_store_that_cannot_be_opened_is_named_as_opening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let config = agent_config(dir.path());
        // A file where the store's directory should be: nothing can be created under it.
        std::fs::create_dir_all(&config.node.data_dir).unwrap();
        std::fs::write(config.node.data_dir.join("cas"), b"not a directory").unwrap();
        let err = start(dir.path(), config).await;
        assert!(matches!(err, StartError::OpenStore(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("opening the store: "), "{text}");
    }
}
