//! `kraken dev`: a whole cluster on loopback in one process, for a first try and for tests.
//!
//! Three origins (filesystem backend under the data directory), a tracker, a build-index,
//! a few agents and a proxy,
//! each a real node with its own QUIC endpoint, gossip (ring nodes), store and HTTP
//! endpoint, all with certificates from a generated dev CA. `DIR/cluster.json` lists every
//! node's role and addresses and the paths of the CA and of an admin client certificate,
//! for scripts and `krakenctl --cluster`. The data directory survives restarts: blobs,
//! queues and certificates are reused, and with a `base_port` (`--base-port`, default
//! [`DEFAULT_BASE_PORT`]) every listener keeps its address ([`DevPorts`]), so a containerd
//! `hosts.toml` written for the cluster outlives a restart. One `kraken dev` at a time holds
//! a data directory ([`DirLock`] on its root).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kraken_membership::Role;
use kraken_storage::backend::{
    BackendConfig, FsServiceConfig, RegistryServiceConfig, RouteConfig, ServiceConfig,
};
use kraken_storage::dirlock::{DirLock, DirLockError};
use kraken_storage::{Digest, DigestAlgorithm};
use kraken_transport::quic::NodeIdentity;
use kraken_transport::quic::tls::dev::DevCa;

pub use kraken_client::cluster_file::{ClusterFile, ClusterFileNode};

use crate::client::CallError;
use crate::config::{NodeConfig, NodeRole};
use crate::node::Node;
use crate::proto::{ErrorKind, PullReport, Request, Response};

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
    /// The first port of the layout of [`DevPorts`]; 0 lets the OS pick every port (tests).
    pub base_port: u16,
}

/// `kraken dev`'s default `--base-port`.
pub const DEFAULT_BASE_PORT: u16 = 17600;
/// Ports set aside per node: node `k` (origins, the tracker, the build-index, agents, the
/// proxy, in that order) listens at `base + 10k + 0..5`; the rest are spare.
pub const PORTS_PER_NODE: u16 = 10;

/// The ports of one dev node's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevPorts {
    /// QUIC (UDP), `base + 10k`.
    pub quic: u16,
    /// Gossip (UDP), `+1`.
    pub gossip: u16,
    /// HTTP: health, readiness, metrics, `+2`.
    pub http: u16,
    /// The registry API (agents and the proxy), `+3`.
    pub registry: u16,
    /// An agent's blob server, `+4`; `None` lets the OS pick.
    pub blob: Option<u16>,
}

impl DevPorts {
    /// Node `index`'s ports for `base`; every port 0 (the OS picks) when `base` is 0.
    pub fn of(base: u16, index: usize) -> anyhow::Result<DevPorts> {
        if base == 0 {
            return Ok(DevPorts {
                quic: 0,
                gossip: 0,
                http: 0,
                registry: 0,
                blob: None,
            });
        }
        let first = u64::from(base) + (index as u64) * u64::from(PORTS_PER_NODE);
        if first + u64::from(PORTS_PER_NODE) - 1 > u64::from(u16::MAX) {
            anyhow::bail!(
                "--base-port {base} leaves no room for node {} ({PORTS_PER_NODE} ports each, up \
                 to 65535): lower it or start fewer agents",
                index + 1
            );
        }
        // `first + 9` fits, so each of these does.
        let port = |offset: u64| u16::try_from(first + offset).unwrap_or(0);
        Ok(DevPorts {
            quic: port(0),
            gossip: port(1),
            http: port(2),
            registry: port(3),
            blob: Some(port(4)),
        })
    }
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
    /// The hold on the data directory, released with the cluster.
    _lock: DirLock,
}

fn identity(ca: &DevCa, dir: &Path, name: &str) -> anyhow::Result<NodeIdentity> {
    match DevCa::load_node_cert(dir, name) {
        Ok(id) => Ok(id),
        Err(_) => Ok(ca.write_node_cert(name)?),
    }
}

fn base_config(
    opts: &DevOptions,
    index: usize,
    name: &str,
    roles: Vec<NodeRole>,
    ca_dir: &Path,
) -> anyhow::Result<NodeConfig> {
    let ports = DevPorts::of(opts.base_port, index)?;
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = NodeConfig::default();
    c.node.name = name.to_string();
    c.node.roles = roles;
    c.node.data_dir = opts.data_dir.join("nodes").join(name);
    c.node.cluster_id = "kraken-dev".into();
    c.quic.listen = loopback(ports.quic);
    c.gossip.listen = loopback(ports.gossip);
    c.gossip.interval_ms = 200;
    c.http.listen = loopback(ports.http);
    c.registry.listen = loopback(ports.registry);
    if c.node.roles.contains(&NodeRole::Agent) {
        c.registry.blob_listen = ports.blob.map(loopback);
    }
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
    Ok(c)
}

/// Holds `dir` for this `kraken dev`, or says which one holds it.
fn lock_data_dir(dir: &Path) -> anyhow::Result<DirLock> {
    DirLock::acquire(dir).map_err(|e| match e {
        DirLockError::InUse { dir, pid } => anyhow::anyhow!(
            "another kraken dev{} holds {}: stop it first, or give this one another --data-dir",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            dir.display()
        ),
        other => other.into(),
    })
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
    let lock = lock_data_dir(&opts.data_dir)?;
    let ca_dir = opts.data_dir.join("ca");
    std::fs::create_dir_all(&ca_dir)?;
    let ca = DevCa::load_or_create(&ca_dir)?;
    let backend_root = opts.data_dir.join("backend");
    std::fs::create_dir_all(&backend_root)?;
    let mut nodes = Vec::new();
    let mut seed: Option<SocketAddr> = None;
    for i in 1..=opts.origins {
        let name = format!("origin-{i}");
        let mut c = base_config(opts, nodes.len(), &name, vec![NodeRole::Origin], &ca_dir)?;
        c.backends = dev_routes(opts, &backend_root);
        c.origin.repair_delay_ms = 500;
        c.gossip.seeds = seed.iter().map(ToString::to_string).collect();
        let id = identity(&ca, &ca_dir, &name)?;
        let node = Node::start_with(c, id, ca.cluster_ca()).await?;
        seed = seed.or(node.gossip_addr());
        nodes.push(node);
    }
    let name = "tracker-1";
    let mut c = base_config(opts, nodes.len(), name, vec![NodeRole::Tracker], &ca_dir)?;
    c.gossip.seeds = seed.iter().map(ToString::to_string).collect();
    let id = identity(&ca, &ca_dir, name)?;
    nodes.push(Node::start_with(c, id, ca.cluster_ca()).await?);
    let name = "build-index-1";
    let mut c = base_config(opts, nodes.len(), name, vec![NodeRole::BuildIndex], &ca_dir)?;
    c.gossip.seeds = seed.iter().map(ToString::to_string).collect();
    c.backends = dev_routes(opts, &backend_root);
    let id = identity(&ca, &ca_dir, name)?;
    nodes.push(Node::start_with(c, id, ca.cluster_ca()).await?);
    let view_seed = nodes[0].quic_addr().to_string();
    for i in 1..=opts.agents {
        let name = format!("agent-{i}");
        let mut c = base_config(opts, nodes.len(), &name, vec![NodeRole::Agent], &ca_dir)?;
        c.view.seeds = vec![view_seed.clone()];
        c.view.refresh_secs = 2;
        let id = identity(&ca, &ca_dir, &name)?;
        nodes.push(Node::start_with(c, id, ca.cluster_ca()).await?);
    }
    let name = "proxy-1";
    let mut c = base_config(opts, nodes.len(), name, vec![NodeRole::Proxy], &ca_dir)?;
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
    Ok(DevCluster {
        nodes,
        file,
        _lock: lock,
    })
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

/// The repository the demo blob is uploaded to and pulled from.
pub const DEMO_REPO: &str = "kraken-dev/demo";

/// What one agent's registry served the demo.
#[derive(Debug, Clone)]
pub struct DemoPull {
    /// The agent.
    pub agent: String,
    /// The URL the blob was read from.
    pub url: String,
    /// Bytes read, all of which hashed to the blob's digest.
    pub bytes: u64,
    /// Where the agent's bytes came from.
    pub report: PullReport,
}

/// `kraken dev --demo`: uploads a generated blob, pulls it through every agent's registry API
/// at once (an HTTP GET of the blob, as a container runtime does), checks that every byte
/// hashes to the digest, and prints where each agent's bytes came from.
pub async fn demo(cluster: &DevCluster, size: u64) -> anyhow::Result<Vec<DemoPull>> {
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
        DEMO_REPO,
        &digest,
        &path,
        size,
        false,
        false,
    )
    .await?;
    let _ = std::fs::remove_file(&path);
    println!(
        "uploaded {digest} ({} MiB) to {} in {:.2?}",
        size >> 20,
        owner.id,
        started.elapsed()
    );
    let http = reqwest::Client::new();
    let pulls = cluster.agents().map(|a| {
        let http = http.clone();
        async move {
            let registry = a
                .registry_addr()
                .ok_or_else(|| anyhow::anyhow!("{} serves no registry API", a.name()))?;
            let url = format!("http://{registry}/v2/{DEMO_REPO}/blobs/{digest}");
            let started = Instant::now();
            let bytes = get_verified(&http, &url, &digest, size)
                .await
                .map_err(|e| anyhow::anyhow!("{}: GET {url}: {e}", a.name()))?;
            let elapsed = started.elapsed();
            let report = pull_report(client, a, &digest).await?;
            let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
            println!(
                "{}: GET {url}: {:.1} MiB in {:.2} s, sha256 verified; {:.1} MiB from agents, \
                 {:.1} MiB from origins",
                a.name(),
                mib(bytes),
                elapsed.as_secs_f64(),
                mib(report.bytes_from_agents),
                mib(report.bytes_from_origins)
            );
            Ok::<_, anyhow::Error>(DemoPull {
                agent: a.name().to_string(),
                url,
                bytes,
                report,
            })
        }
    });
    let pulls = futures::future::try_join_all(pulls).await?;
    println!(
        "every byte verified: {} agents served all {size} bytes of {digest} through the \
         registry API",
        pulls.len()
    );
    Ok(pulls)
}

/// The report of the agent's pull of `digest`. The registry read shares the agent's pull,
/// whose report is kept just after the last piece, so the body can end a moment before the
/// report exists: ask until it does.
async fn pull_report(
    client: &crate::client::Cluster,
    agent: &Node,
    digest: &Digest,
) -> anyhow::Result<PullReport> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let request = Request::PullReport { digest: *digest };
        match client.call(agent.quic_addr(), &request).await {
            Ok(Response::Pull(r)) => return Ok(r),
            Err(CallError::Remote { source, .. })
                if source.kind == ErrorKind::NotFound && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(other) => anyhow::bail!("{}: unexpected answer {other:?}", agent.name()),
            Err(e) => anyhow::bail!("{}: no pull report: {e}", agent.name()),
        }
    }
}

/// GETs `url` and hashes the body as it arrives: the number of bytes if they are exactly
/// the `size` bytes of `digest`.
async fn get_verified(
    http: &reqwest::Client,
    url: &str,
    digest: &Digest,
    size: u64,
) -> anyhow::Result<u64> {
    let mut response = http.get(url).send().await?;
    if !response.status().is_success() {
        anyhow::bail!("HTTP {}", response.status());
    }
    let mut hasher = digest.hasher();
    let mut bytes = 0u64;
    while let Some(chunk) = response.chunk().await? {
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
    }
    let got = hasher.finish();
    if bytes != size || got != *digest {
        anyhow::bail!("got {bytes} bytes hashing to {got}, not {size} bytes of {digest}");
    }
    Ok(bytes)
}

/// The registry addresses of a dev cluster and commands to try them with, for people.
pub fn registry_guide(file: &ClusterFile) -> String {
    let registry_of = |role: &str| -> Vec<(&str, SocketAddr)> {
        file.nodes
            .iter()
            .filter(|n| n.roles.iter().any(|r| r == role))
            .filter_map(|n| Some((n.name.as_str(), n.registry?)))
            .collect()
    };
    let agents = registry_of("agent");
    let (Some((_, proxy)), Some((first_agent, agent))) = (
        registry_of("proxy").first().copied(),
        agents.first().copied(),
    ) else {
        return String::new();
    };
    let pulls: Vec<String> = agents.iter().map(|(n, a)| format!("{n} {a}")).collect();
    let image = "docker.io/library/alpine:3.20";
    let hosts = "/etc/containerd/certs.d/docker.io";
    [
        format!(
            "registry API (plain HTTP): push to the proxy at {proxy}; pull from any agent: {}",
            pulls.join(", ")
        ),
        format!("  skopeo copy --dest-tls-verify=false docker://{image} docker://{proxy}/{image}"),
        format!("  skopeo copy --src-tls-verify=false docker://{agent}/{image} oci:/tmp/alpine:3.20"),
        format!("  podman pull --tls-verify=false {agent}/{image}"),
        format!("  containerd, through {first_agent} as the mirror of docker.io:"),
        format!(
            "    mkdir -p {hosts} && printf '%s\\n' 'server = \"https://registry-1.docker.io\"' '' \
             '[host.\"http://{agent}\"]' '  capabilities = [\"pull\", \"resolve\"]' > {hosts}/hosts.toml"
        ),
        format!("    ctr images pull --hosts-dir /etc/containerd/certs.d {image}"),
    ]
    .join("\n")
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
    fn ports_are_laid_out_per_node_and_must_fit() {
        let p = DevPorts::of(DEFAULT_BASE_PORT, 0).unwrap();
        assert_eq!(
            (p.quic, p.gossip, p.http, p.registry, p.blob),
            (17600, 17601, 17602, 17603, Some(17604))
        );
        assert_eq!(DevPorts::of(20000, 7).unwrap().quic, 20070);
        assert_eq!(DevPorts::of(0, 7).unwrap().quic, 0);
        assert_eq!(DevPorts::of(0, 7).unwrap().blob, None);
        assert_eq!(DevPorts::of(65526, 0).unwrap().blob, Some(65530));
        let e = DevPorts::of(65527, 0).unwrap_err().to_string();
        assert!(e.contains("--base-port 65527"), "{e}");
        assert!(DevPorts::of(60000, 600).is_err());
    }

    #[test]
    fn the_guide_names_the_proxy_for_pushes_and_agents_for_pulls() {
        let node = |name: &str, role: &str, registry: Option<&str>| ClusterFileNode {
            name: name.into(),
            roles: vec![role.into()],
            quic: "127.0.0.1:1".parse().unwrap(),
            http: None,
            gossip: None,
            registry: registry.map(|r| r.parse().unwrap()),
        };
        let file = ClusterFile {
            cluster_id: "kraken-dev".into(),
            ca: "ca.crt".into(),
            admin_cert: "admin.crt".into(),
            admin_key: "admin.key".into(),
            nodes: vec![
                node("origin-1", "origin", None),
                node("agent-1", "agent", Some("127.0.0.1:17633")),
                node("agent-2", "agent", Some("127.0.0.1:17643")),
                node("proxy-1", "proxy", Some("127.0.0.1:17653")),
            ],
        };
        let guide = registry_guide(&file);
        assert!(
            guide.starts_with(
                "registry API (plain HTTP): push to the proxy at 127.0.0.1:17653; pull from any \
                 agent: agent-1 127.0.0.1:17633, agent-2 127.0.0.1:17643\n"
            ),
            "{guide}"
        );
        for want in [
            "docker://127.0.0.1:17653/docker.io/library/alpine:3.20",
            "podman pull --tls-verify=false 127.0.0.1:17633/docker.io/library/alpine:3.20",
            "'[host.\"http://127.0.0.1:17633\"]'",
            "ctr images pull --hosts-dir /etc/containerd/certs.d docker.io/library/alpine:3.20",
        ] {
            assert!(guide.contains(want), "{want:?} not in\n{guide}");
        }
        let no_proxy = ClusterFile {
            nodes: file.nodes[..2].to_vec(),
            ..file
        };
        assert_eq!(registry_guide(&no_proxy), "");
    }

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
            base_port: 0,
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
