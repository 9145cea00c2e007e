//! An in-process cluster of real nodes on loopback for the end-to-end tests.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kraken_membership::Role;
use kraken_node::client::Cluster;
use kraken_node::config::{NodeConfig, NodeRole};
use kraken_node::node::Node;
use kraken_node::proto::{DEFAULT_NAMESPACE, PullReport, Request, Response};
use kraken_storage::Digest;
use kraken_storage::backend::{BackendConfig, FsServiceConfig, RouteConfig, ServiceConfig};
use kraken_transport::quic::tls::dev::DevCa;
use tempfile::TempDir;

pub mod outage;
pub mod process;
pub mod small_fs;
pub mod tools;

pub struct TestCluster {
    pub dir: TempDir,
    pub ca: DevCa,
    pub backend_root: PathBuf,
    pub nodes: Vec<Option<Node>>,
    seed: Option<SocketAddr>,
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

impl TestCluster {
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A second cluster whose certificates come from `other`'s CA, so the two can talk
    /// (cross-cluster replication).
    pub fn sharing_ca(other: &TestCluster) -> Self {
        Self::build(Some(other))
    }

    fn build(other: Option<&TestCluster>) -> Self {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let ca = match other {
            Some(o) => DevCa::load(o.ca.dir()).unwrap(),
            None => DevCa::create(&dir.path().join("ca")).unwrap(),
        };
        let backend_root = dir.path().join("backend");
        std::fs::create_dir_all(&backend_root).unwrap();
        TestCluster {
            dir,
            ca,
            backend_root,
            nodes: Vec::new(),
            seed: None,
        }
    }

    /// A plain client of cluster `test`: its own endpoint and certificate from this CA, an
    /// empty view (it calls nodes by address).
    pub fn plain_client(&self) -> Cluster {
        use kraken_membership::{ClusterId, ClusterView};
        use kraken_transport::quic::{ConnectionPool, Endpoint, PoolConfig, QuicConfig};
        let identity = self.ca.issue_node_cert("tester").unwrap();
        let endpoint = Endpoint::bind(
            &QuicConfig::bind_to(SocketAddr::from(([127, 0, 0, 1], 0))),
            &identity,
            &self.ca.cluster_ca(),
        )
        .unwrap();
        let pool = ConnectionPool::new(endpoint, PoolConfig::default(), |_| {}).unwrap();
        let view = ClusterView::new(ClusterId::new("test").unwrap(), []).unwrap();
        Cluster::new(pool, tokio::sync::watch::channel(view).1)
    }

    pub fn config(&self, name: &str, role: NodeRole) -> NodeConfig {
        let mut c = NodeConfig::default();
        c.node.name = name.into();
        c.node.roles = vec![role];
        c.node.data_dir = self.dir.path().join("nodes").join(name);
        c.node.cluster_id = "test".into();
        c.quic.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.gossip.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.gossip.interval_ms = 100;
        c.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.registry.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.tls.ca = "unused".into();
        c.tls.cert = "unused".into();
        c.tls.key = "unused".into();
        c.swarm.announce_interval = Duration::from_secs(1);
        c.origin.swarm.announce_interval = Duration::from_secs(1);
        c.tracker.announce_interval_ms = 500;
        c.tracker.handout.peer_ttl = Duration::from_secs(10);
        c.origin.repair_delay_ms = 300;
        c.origin.writeback_poll_ms = 100;
        // Every owner writes back at once: tests wait for every queue to drain.
        // `durability.rs` runs the default's deferral.
        c.origin.replica_writeback_delay_secs = 0;
        c.writeback_queue.base_backoff_ms = 100;
        c.writeback_queue.max_backoff_ms = 500;
        c.view.refresh_secs = 1;
        c.gossip.seeds = self.seed.iter().map(ToString::to_string).collect();
        c.build_index.replication_poll_ms = 100;
        if role == NodeRole::Origin || role == NodeRole::BuildIndex {
            c.backends = vec![RouteConfig {
                namespace: ".*".into(),
                name: Some("test-fs".into()),
                backend: fs_backend(&self.backend_root),
            }];
        }
        if role == NodeRole::Agent || role == NodeRole::Proxy {
            c.view.seeds = self
                .nodes
                .iter()
                .flatten()
                .filter(|n| n.roles().origin.is_some() || n.roles().tracker.is_some())
                .map(|n| n.quic_addr().to_string())
                .collect();
        }
        c
    }

    pub async fn start(&mut self, config: NodeConfig) -> usize {
        let name = config.node.name.clone();
        let identity = self.ca.issue_node_cert(&name).unwrap();
        let node = Node::start_with(config, identity, self.ca.cluster_ca())
            .await
            .unwrap();
        if self.seed.is_none() {
            self.seed = node.gossip_addr();
        }
        self.nodes.push(Some(node));
        self.nodes.len() - 1
    }

    pub async fn add(&mut self, name: &str, role: NodeRole) -> usize {
        let c = self.config(name, role);
        self.start(c).await
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().unwrap()
    }

    pub fn agents(&self) -> Vec<usize> {
        self.indexes(|n| n.roles().agent.is_some())
    }

    pub fn origins(&self) -> Vec<usize> {
        self.indexes(|n| n.roles().origin.is_some())
    }

    fn indexes(&self, f: impl Fn(&Node) -> bool) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].as_ref().is_some_and(&f))
            .collect()
    }

    /// Waits until every live node sees `origins` origins and at least one tracker.
    pub async fn converge(&self, origins: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().flatten().all(|n| {
                let v = n.cluster().view();
                v.ring(Role::Origin).len() == origins && !v.ring(Role::Tracker).is_empty()
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster did not converge");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].take().unwrap().kill();
    }

    /// Calls from the tracker's node (tests kill origins and agents, never the tracker).
    pub fn client(&self) -> &Cluster {
        self.nodes
            .iter()
            .flatten()
            .find(|n| n.roles().tracker.is_some())
            .or_else(|| self.nodes.iter().flatten().next())
            .unwrap()
            .cluster()
    }

    /// Uploads `path` to the blob's first owner.
    pub async fn upload(&self, path: &Path, digest: &Digest, len: u64) {
        let owners = self.client().owners_of_digest(Role::Origin, digest, 1);
        kraken_node::origin::upload::push_file(
            self.client(),
            owners[0].quic_addr,
            DEFAULT_NAMESPACE,
            digest,
            path,
            len,
            false,
            false,
        )
        .await
        .unwrap();
    }

    /// How many origins hold the blob complete in their stores.
    pub fn origins_holding(&self, digest: &Digest) -> usize {
        self.origins()
            .iter()
            .filter(|&&i| {
                let origin = self.node(i).roles().origin.as_ref().unwrap();
                origin.cas().contains(digest).unwrap()
            })
            .count()
    }

    /// Waits until `n` origins hold the blob.
    pub async fn wait_replicated(&self, digest: &Digest, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let held = self.origins_holding(digest);
            if held >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {held} origins hold {digest}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks agent `i` to pull the blob.
    pub async fn pull(&self, i: usize, digest: &Digest) -> Result<PullReport, String> {
        let request = Request::Pull {
            namespace: DEFAULT_NAMESPACE.into(),
            digest: *digest,
        };
        match self
            .client()
            .call_within(self.node(i).quic_addr(), &request, Duration::from_secs(300))
            .await
        {
            Ok(Response::Pull(r)) => Ok(r),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The sha256 of agent `i`'s stored copy.
    pub fn stored_digest(&self, i: usize, digest: &Digest) -> Digest {
        let cas = self.node(i).roles().agent.as_ref().unwrap().cas().clone();
        let bytes = std::fs::read(cas.blob_path(digest)).unwrap();
        Digest::sha256_of(&bytes)
    }
}

/// The value of sample `name` (its labels included, as the page writes them) in a
/// Prometheus text page, if the page has it.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn fs_backend(root: &Path) -> BackendConfig {
    BackendConfig::new(ServiceConfig::Fs(FsServiceConfig {
        root: root.to_string_lossy().into_owned(),
    }))
}

/// Writes a pseudo-random file of `len` bytes; returns its digest.
pub fn blob_file(dir: &Path, name: &str, len: u64, seed: u64) -> (PathBuf, Digest) {
    use rand::{RngCore, SeedableRng};
    let path = dir.join(name);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut data = vec![0u8; len as usize];
    rng.fill_bytes(&mut data);
    std::fs::write(&path, &data).unwrap();
    (path, Digest::sha256_of(&data))
}

/// Copies a directory tree (a killed in-process node's data, to restart it on).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
