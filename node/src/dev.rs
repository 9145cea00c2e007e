//! `kraken dev`: a whole cluster on loopback in one process, for a first try and for tests.
//!
//! Three origins (filesystem backend under the data directory), a tracker, a build-index,
//! a few agents and a proxy,
//! each a real node with its own QUIC endpoint, gossip (ring nodes), store and HTTP
//! endpoint, all with certificates from a generated dev CA. `DIR/cluster.json` lists every
//! node's role and addresses and the paths of the CA and of an admin client certificate,
//! for scripts and `krakenctl --cluster`. The data directory survives restarts: blobs,
//! queues and certificates are reused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kraken_membership::Role;
use kraken_storage::backend::{
    BackendConfig, FsServiceConfig, RegistryServiceConfig, RouteConfig, ServiceConfig,
};
use kraken_storage::{Digest, DigestAlgorithm};
use kraken_transport::quic::NodeIdentity;
use kraken_transport::quic::tls::dev::DevCa;

pub use kraken_client::cluster_file::{ClusterFile, ClusterFileNode};

use crate::config::{NodeConfig, NodeRole};
use crate::node::Node;
use crate::proto::{DEFAULT_NAMESPACE, PullReport, Request, Response};

/// What `kraken dev` starts.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where everything lives.
    pub data_dir: PathBuf,
    /// Number of agents.
    pub agents: usize,
    /// Number of origins.
    pub origins: usize,
    /// Upstream registries the cluster mirrors (pull-through, through the swarm).
    pub upstreams: Vec<DevUpstream>,
}

/// One upstream registry of a dev cluster (`--upstream` / `--upstream-ns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevUpstream {
    /// The cluster's prefix for the registry containerd names in `?ns=` (`docker.io`;
    /// `localhost_5000` for `localhost:5000`), mirrored under `<prefix>/…`; `None` mirrors
    /// every repository not routed elsewhere.
    pub ns: Option<String>,
    /// The registry's base URL.
    pub url: String,
}

impl DevUpstream {
    /// Parses `--upstream-ns`'s `<host>=<URL>`; the host as containerd names it.
    pub fn parse_ns(arg: &str) -> Result<DevUpstream, String> {
        let (ns, url) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected <host>=<URL>, got {arg:?}"))?;
        // The cluster's name for the registry: aliases folded, a port joined with `_`.
        let ns = kraken_registry_gateway::mirror::prefix(ns).map_err(|e| e.to_string())?;
        Ok(DevUpstream {
            ns: Some(ns),
            url: url.to_string(),
        })
    }

    /// The `[[backends]]` route that mirrors this upstream.
    fn route(&self) -> RouteConfig {
        let mut registry = RegistryServiceConfig::new(self.url.clone());
        let namespace = match &self.ns {
            Some(ns) => {
                registry.strip_prefix = Some(format!("{ns}/"));
                format!("{}/.+", regex::escape(ns))
            }
            None => ".*".to_string(),
        };
        RouteConfig {
            name: Some(match &self.ns {
                Some(ns) => format!("upstream-{ns}"),
                None => "upstream".to_string(),
            }),
            namespace,
            backend: BackendConfig::new(ServiceConfig::Registry(registry)),
        }
    }
}

/// The routes of origins and the build-index: upstreams by `ns` first, then either the
/// catch-all upstream or the local filesystem backend.
fn dev_routes(opts: &DevOptions, backend_root: &Path) -> Vec<RouteConfig> {
    let mut routes: Vec<RouteConfig> = opts
        .upstreams
        .iter()
        .filter(|u| u.ns.is_some())
        .map(DevUpstream::route)
        .collect();
    match opts.upstreams.iter().find(|u| u.ns.is_none()) {
        Some(all) => routes.push(all.route()),
        None => routes.push(dev_backend(backend_root)),
    }
    routes
}

/// A running dev cluster.
#[derive(Debug)]
pub struct DevCluster {
    /// Origins, the tracker, the build-index, agents, then the proxy.
    pub nodes: Vec<Node>,
    /// What was written to `cluster.json`.
    pub file: ClusterFile,
}

fn identity(ca: &DevCa, dir: &Path, name: &str) -> anyhow::Result<NodeIdentity> {
    match DevCa::load_node_cert(dir, name) {
        Ok(id) => Ok(id),
        Err(_) => Ok(ca.write_node_cert(name)?),
    }
}

fn base_config(opts: &DevOptions, name: &str, roles: Vec<NodeRole>, ca_dir: &Path) -> NodeConfig {
    let mut c = NodeConfig::default();
    c.node.name = name.to_string();
    c.node.roles = roles;
    c.node.data_dir = opts.data_dir.join("nodes").join(name);
    c.node.cluster_id = "kraken-dev".into();
    c.quic.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.gossip.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.gossip.interval_ms = 200;
    c.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.registry.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.tls.ca = ca_dir.join("ca.crt");
    c.tls.cert = ca_dir.join(format!("{name}.crt"));
    c.tls.key = ca_dir.join(format!("{name}.key"));
    // Small stores, quick announces: a laptop-sized cluster.
    let mut store = c.store_config();
    store.capacity_bytes = 20 << 30;
    c.store = Some(store);
    c.swarm.announce_interval = Duration::from_secs(1);
    c.origin.swarm.announce_interval = Duration::from_secs(1);
    c.tracker.announce_interval_ms = 1000;
    c.tracker.handout.peer_ttl = Duration::from_secs(20);
    c
}

/// Every namespace in one filesystem backend under the data directory.
fn dev_backend(root: &Path) -> RouteConfig {
    RouteConfig {
        namespace: ".*".into(),
        name: Some("dev-fs".into()),
        backend: BackendConfig::new(ServiceConfig::Fs(FsServiceConfig {
            root: root.to_string_lossy().into_owned(),
        })),
    }
}

/// Starts the cluster and writes `cluster.json`.
pub async fn start(opts: &DevOptions) -> anyhow::Result<DevCluster> {
    let ca_dir = opts.data_dir.join("ca");
    std::fs::create_dir_all(&ca_dir)?;
    let ca = DevCa::load_or_create(&ca_dir)?;
    let backend_root = opts.data_dir.join("backend");
    std::fs::create_dir_all(&backend_root)?;
    let mut nodes = Vec::new();
    let mut seed: Option<SocketAddr> = None;
    for i in 1..=opts.origins {
        let name = format!("origin-{i}");
        let mut c = base_config(opts, &name, vec![NodeRole::Origin], &ca_dir);
        c.backends = dev_routes(opts, &backend_root);
        c.origin.repair_delay_ms = 500;
        c.gossip.seeds = seed.iter().map(ToString::to_string).collect();
        let id = identity(&ca, &ca_dir, &name)?;
        let node = Node::start_with(c, id, ca.cluster_ca()).await?;
        seed = seed.or(node.gossip_addr());
        nodes.push(node);
    }
    let name = "tracker-1";
    let mut c = base_config(opts, name, vec![NodeRole::Tracker], &ca_dir);
    c.gossip.seeds = seed.iter().map(ToString::to_string).collect();
    let id = identity(&ca, &ca_dir, name)?;
    nodes.push(Node::start_with(c, id, ca.cluster_ca()).await?);
    let name = "build-index-1";
    let mut c = base_config(opts, name, vec![NodeRole::BuildIndex], &ca_dir);
    c.gossip.seeds = seed.iter().map(ToString::to_string).collect();
    c.backends = dev_routes(opts, &backend_root);
    let id = identity(&ca, &ca_dir, name)?;
    nodes.push(Node::start_with(c, id, ca.cluster_ca()).await?);
    let view_seed = nodes[0].quic_addr().to_string();
    for i in 1..=opts.agents {
        let name = format!("agent-{i}");
        let mut c = base_config(opts, &name, vec![NodeRole::Agent], &ca_dir);
        c.view.seeds = vec![view_seed.clone()];
        c.view.refresh_secs = 2;
        let id = identity(&ca, &ca_dir, &name)?;
        nodes.push(Node::start_with(c, id, ca.cluster_ca()).await?);
    }
    let name = "proxy-1";
    let mut c = base_config(opts, name, vec![NodeRole::Proxy], &ca_dir);
    c.view.seeds = vec![view_seed.clone()];
    c.view.refresh_secs = 2;
    let id = identity(&ca, &ca_dir, name)?;
    nodes.push(Node::start_with(c, id, ca.cluster_ca()).await?);
    identity(&ca, &ca_dir, "admin")?;
    wait_ready(&nodes, opts.origins, Duration::from_secs(30)).await?;
    let file = ClusterFile {
        cluster_id: "kraken-dev".into(),
        ca: ca_dir.join("ca.crt"),
        admin_cert: ca_dir.join("admin.crt"),
        admin_key: ca_dir.join("admin.key"),
        nodes: nodes
            .iter()
            .map(|n| ClusterFileNode {
                name: n.name().to_string(),
                roles: node_roles(n),
                quic: n.quic_addr(),
                http: n.http_addr(),
                gossip: n.gossip_addr(),
                registry: n.registry_addr(),
            })
            .collect(),
    };
    let path = opts.data_dir.join("cluster.json");
    let tmp = opts.data_dir.join("cluster.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&file)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(DevCluster { nodes, file })
}

fn node_roles(n: &Node) -> Vec<String> {
    let r = n.roles();
    let mut out = Vec::new();
    if r.origin.is_some() {
        out.push("origin".to_string());
    }
    if r.tracker.is_some() {
        out.push("tracker".to_string());
    }
    if r.agent.is_some() {
        out.push("agent".to_string());
    }
    if r.build_index.is_some() {
        out.push("build-index".to_string());
    }
    if out.is_empty() {
        out.push("proxy".to_string());
    }
    out
}

/// Waits until every node sees every origin and the tracker on its rings.
pub async fn wait_ready(nodes: &[Node], origins: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let ok = nodes.iter().all(|n| {
            let v = n.cluster().view();
            v.ring(Role::Origin).len() == origins && !v.ring(Role::Tracker).is_empty()
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the dev cluster did not converge within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl DevCluster {
    /// The origins.
    pub fn origins(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.roles().origin.is_some())
    }

    /// The agents.
    pub fn agents(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.roles().agent.is_some())
    }

    /// Stops every node gracefully.
    pub async fn shutdown(self) {
        for n in self.nodes.into_iter().rev() {
            n.shutdown().await;
        }
    }
}

/// `kraken dev --demo`: uploads a generated blob, pulls it through every agent at once, and
/// prints where each agent's bytes came from.
pub async fn demo(cluster: &DevCluster, size: u64) -> anyhow::Result<Vec<(String, PullReport)>> {
    let dir = tempfile_dir(&cluster.file)?;
    let path = dir.join("demo.blob");
    let digest = write_demo_blob(&path, size)?;
    let first = cluster
        .nodes
        .first()
        .ok_or_else(|| anyhow::anyhow!("no nodes"))?;
    let client = first.cluster();
    let owners = client.owners_of_digest(Role::Origin, &digest, 1);
    let owner = owners
        .first()
        .ok_or_else(|| anyhow::anyhow!("no origin owns the demo blob"))?;
    let started = Instant::now();
    crate::origin::upload::push_file(
        client,
        owner.quic_addr,
        DEFAULT_NAMESPACE,
        &digest,
        &path,
        size,
        false,
        false,
    )
    .await?;
    println!(
        "uploaded {digest} ({} MiB) to {} in {:.2?}",
        size >> 20,
        owner.id,
        started.elapsed()
    );
    let pulls = cluster.agents().map(|a| async move {
        let request = Request::Pull {
            namespace: DEFAULT_NAMESPACE.into(),
            digest,
        };
        let r = client
            .call_within(a.quic_addr(), &request, Duration::from_secs(600))
            .await;
        (a.name().to_string(), r)
    });
    let mut reports = Vec::new();
    for (name, result) in futures::future::join_all(pulls).await {
        match result {
            Ok(Response::Pull(r)) => {
                let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
                println!(
                    "{name}: {:.2} s, {:.1} MiB from agents, {:.1} MiB from origins",
                    r.elapsed_ms as f64 / 1000.0,
                    mib(r.bytes_from_agents),
                    mib(r.bytes_from_origins)
                );
                reports.push((name, r));
            }
            Ok(other) => anyhow::bail!("{name}: unexpected answer {other:?}"),
            Err(e) => anyhow::bail!("{name}: pull failed: {e}"),
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(reports)
}

fn tempfile_dir(file: &ClusterFile) -> anyhow::Result<PathBuf> {
    let dir = file
        .ca
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("demo"))
        .ok_or_else(|| anyhow::anyhow!("bad data dir"))?;
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes `size` pseudo-random bytes (different on every run) and returns their digest.
pub fn write_demo_blob(path: &Path, size: u64) -> anyhow::Result<Digest> {
    use rand::RngCore;
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = rand::rng();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(buf.len()).min(buf.len());
        rng.fill_bytes(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    let (digest, _) = Digest::of_reader(DigestAlgorithm::Sha256, std::fs::File::open(path)?)?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_ns_routes_the_clusters_name_for_the_registry() {
        let hub = DevUpstream::parse_ns("index.docker.io=https://registry-1.docker.io").unwrap();
        assert_eq!(hub.ns.as_deref(), Some("docker.io"));
        let route = hub.route();
        assert_eq!(route.namespace, "docker\\.io/.+");
        let ServiceConfig::Registry(r) = &route.backend.service else {
            panic!("{route:?}");
        };
        assert_eq!(r.strip_prefix.as_deref(), Some("docker.io/"));
        let local = DevUpstream::parse_ns("localhost:5000=http://127.0.0.1:5000").unwrap();
        assert_eq!(local.ns.as_deref(), Some("localhost_5000"));
        assert!(DevUpstream::parse_ns("no-url").is_err());
        assert!(DevUpstream::parse_ns("a/b=http://x").is_err());
    }

    #[test]
    fn upstreams_by_ns_come_before_the_catch_all() {
        let opts = DevOptions {
            data_dir: "/tmp/unused".into(),
            agents: 1,
            origins: 1,
            upstreams: vec![
                DevUpstream {
                    ns: None,
                    url: "http://all".into(),
                },
                DevUpstream::parse_ns("ghcr.io=https://ghcr.io").unwrap(),
            ],
        };
        let routes = dev_routes(&opts, Path::new("/tmp/unused"));
        let names: Vec<_> = routes.iter().map(|r| r.namespace.as_str()).collect();
        assert_eq!(names, ["ghcr\\.io/.+", ".*"]);
        let plain = DevOptions {
            upstreams: Vec::new(),
            ..opts
        };
        let routes = dev_routes(&plain, Path::new("/tmp/unused"));
        assert_eq!(routes[0].backend.service.name(), "fs");
    }
}
