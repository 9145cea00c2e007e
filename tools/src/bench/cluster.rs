//! The cluster under test: a dev CA and certificates, one TOML config per node, and the
//! `kraken` processes started in the test hosts.
//!
//! Layout: origins on hosts `1..=origins`; the tracker and the build-index run as their own
//! processes on host 1 (they move no bulk bytes); agents on the hosts after the origins.
//! With `--discovery dht` there is no tracker process at all (nor is it a gossip or view
//! seed): a DHT-only cluster must work without one, and a tracker left running would hide
//! a dependence on it. `--discovery tracker|both|dht` writes `[discovery] mode` into the
//! origins' and agents' configs (the nodes that run the swarm); without the flag no
//! `[discovery]` section is written, the node's default (`tracker`).
//! Ports are fixed per role (every host has its own address): origin 7600/7601 (QUIC,
//! gossip), tracker 7610/7611, build-index 7620/7621, agent 7600. HTTP and the registry
//! gateway are off: the harness drives nodes over QUIC.
//!
//! Tunables that differ from the shipped defaults, because a benchmark of tens of seconds
//! should not wait on timers tuned for hours-long fleets: gossip every 200 ms, agents
//! refresh the view every second and announce every second.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kraken_transport::quic::tls::dev::DevCa;

use super::netns::Testnet;
use super::procs::NodeProc;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The `kraken` binary.
    pub kraken: PathBuf,
    /// Where configs, certificates, stores and logs go.
    pub work_dir: PathBuf,
    /// Number of origins (hosts 1..=origins).
    pub origins: usize,
    /// Number of agents (the following hosts).
    pub agents: usize,
    /// Piece length the origins cut new blobs into; `None` keeps the default table.
    pub piece_length: Option<u64>,
    /// Agents' upload slots; `None` keeps the node's default.
    pub upload_slots: Option<usize>,
    /// Origins' upload slots; `None` keeps the node's default.
    pub origin_upload_slots: Option<usize>,
    /// The base URL of an upstream registry the origins and the build-index read through
    /// (`[[backends]]` with `registry`), instead of a filesystem backend of their own.
    pub upstream: Option<String>,
    /// The origins' and agents' `[discovery] mode`; `None` writes no section (the node's
    /// default, `tracker`).
    pub discovery: Option<Discovery>,
}

/// How nodes find peers: a node's `[discovery] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Discovery {
    /// Trackers' handouts; the DHT only while every tracker is unreachable.
    Tracker,
    /// The DHT only: the cluster runs no tracker.
    Dht,
    /// Trackers' handouts and DHT providers, merged.
    Both,
}

impl Discovery {
    /// The mode's name in a node's config and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Discovery::Tracker => "tracker",
            Discovery::Dht => "dht",
            Discovery::Both => "both",
        }
    }

    /// Whether a cluster in `mode` starts a tracker (`None`: the node's default, tracker).
    pub fn runs_tracker(mode: Option<Discovery>) -> bool {
        mode != Some(Discovery::Dht)
    }
}

/// The `[discovery]` section for `mode`; empty for `None` (the node's default applies).
fn discovery_section(mode: Option<Discovery>) -> String {
    mode.map_or(String::new(), |m| {
        format!("[discovery]\nmode = \"{}\"\n\n", m.name())
    })
}

/// The TLS files of the control client.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// A running cluster; its processes are killed on drop.
#[derive(Debug)]
pub struct Cluster {
    /// Origins, in host order.
    pub origins: Vec<NodeProc>,
    /// The tracker; none with `--discovery dht`.
    pub tracker: Option<NodeProc>,
    /// The build-index.
    pub build_index: NodeProc,
    /// Agents, in host order.
    pub agents: Vec<NodeProc>,
    /// Data directory of every agent, in order.
    pub agent_data: Vec<PathBuf>,
    /// The control client's certificate.
    pub client_tls: ClientTls,
}

const ORIGIN_PORT: u16 = 7600;
const TRACKER_PORT: u16 = 7610;
const BUILD_INDEX_PORT: u16 = 7620;
const AGENT_PORT: u16 = 7600;

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn common(name: &str, role: &str, data: &Path, quic: SocketAddr, tls: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "[node]\nname = \"{name}\"\nroles = [\"{role}\"]\ndata_dir = {}\n",
        q(data)
    );
    let _ = writeln!(s, "[quic]\nlisten = \"{quic}\"\n");
    let _ = writeln!(
        s,
        "[tls]\nca = {}\ncert = {}\nkey = {}\n",
        q(&tls.join("ca.crt")),
        q(&tls.join(format!("{name}.crt"))),
        q(&tls.join(format!("{name}.key")))
    );
    s.push_str("[http]\nenabled = false\n\n[registry]\nenabled = false\n\n");
    s
}

fn gossip(listen: SocketAddr, seeds: &[SocketAddr]) -> String {
    let seeds: Vec<String> = seeds
        .iter()
        .filter(|s| **s != listen)
        .map(|s| format!("\"{s}\""))
        .collect();
    format!(
        "[gossip]\nlisten = \"{listen}\"\nseeds = [{}]\ninterval_ms = 200\n\n",
        seeds.join(", ")
    )
}

/// The one `[[backends]]` entry, for every namespace: the upstream registry at `upstream`
/// if there is one, else a filesystem under `root`.
fn backend(root: &Path, upstream: Option<&str>) -> String {
    let (name, service) = match upstream {
        Some(url) => ("upstream", format!("registry]\nurl = {url:?}")),
        None => ("fs", format!("fs]\nroot = {}", q(root))),
    };
    format!(
        "[[backends]]\nnamespace = \".*\"\nname = \"{name}\"\n\n[backends.backend.{service}\n\n"
    )
}

/// Where every node lives and how its config is written: hosts, ports, certificates and
/// data directories under the work dir.
struct Layout<'a> {
    net: &'a Testnet,
    config: &'a ClusterConfig,
    /// Certificates (and the dev CA).
    tls: PathBuf,
    ca: DevCa,
    /// Gossip addresses of every ring node (origins, tracker if any, build-index).
    ring_gossip: Vec<SocketAddr>,
    /// Whether a tracker runs.
    runs_tracker: bool,
}

impl<'a> Layout<'a> {
    fn new(net: &'a Testnet, config: &'a ClusterConfig) -> anyhow::Result<Self> {
        let tls = config.work_dir.join("tls");
        std::fs::create_dir_all(&tls)?;
        let ca = DevCa::create(&tls).context("cannot create the dev CA")?;
        let mut layout = Layout {
            net,
            config,
            tls,
            ca,
            ring_gossip: Vec::new(),
            runs_tracker: Discovery::runs_tracker(config.discovery),
        };
        let tracker = layout
            .runs_tracker
            .then(|| layout.addr(1, TRACKER_PORT + 1));
        layout.ring_gossip = (1..=config.origins)
            .map(|h| layout.addr(h, ORIGIN_PORT + 1))
            .chain(tracker)
            .chain([layout.addr(1, BUILD_INDEX_PORT + 1)])
            .collect();
        Ok(layout)
    }

    fn addr(&self, host: usize, port: u16) -> SocketAddr {
        SocketAddr::from((self.net.host_addr(host), port))
    }

    fn data(&self, name: &str) -> PathBuf {
        self.config.work_dir.join("data").join(name)
    }

    /// The `[node]`, `[quic]`, `[tls]`, `[http]` and `[registry]` sections.
    fn common(&self, name: &str, role: &str, host: usize, port: u16) -> String {
        common(
            name,
            role,
            &self.data(name),
            self.addr(host, port),
            &self.tls,
        )
    }

    /// `name`'s `[[backends]]` entry.
    fn backend(&self, name: &str) -> String {
        let root = self.config.work_dir.join("backend").join(name);
        backend(&root, self.config.upstream.as_deref())
    }

    /// Issues `name`'s certificate, writes `config` as its TOML and starts it on `host`.
    fn launch(
        &self,
        name: &str,
        role: &str,
        host: usize,
        config: &str,
    ) -> anyhow::Result<NodeProc> {
        self.ca
            .write_node_cert(name)
            .with_context(|| format!("cannot issue a certificate for {name}"))?;
        let work = &self.config.work_dir;
        let path = work.join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let log = work.join(format!("{name}.log"));
        let ns = self.net.host_ns(host);
        NodeProc::start(&self.config.kraken, &ns, name, role, &path, &log)
    }

    fn origin(&self, h: usize) -> anyhow::Result<NodeProc> {
        let name = format!("origin-{h}");
        self.launch(&name, "origin", h, &self.origin_config(h))
    }

    /// Origin `h`'s config text.
    fn origin_config(&self, h: usize) -> String {
        let name = format!("origin-{h}");
        let mut text = self.common(&name, "origin", h, ORIGIN_PORT);
        text += &gossip(self.addr(h, ORIGIN_PORT + 1), &self.ring_gossip);
        if let Some(len) = self.config.piece_length {
            let _ = writeln!(
                text,
                "[store.piece_lengths]\nentries = [{{ min_blob_size = 0, piece_length = {len} }}]\n"
            );
        }
        text += &self.backend(&name);
        if let Some(slots) = self.config.origin_upload_slots {
            let _ = writeln!(text, "[origin.swarm]\nupload_slots = {slots}\n");
        }
        text += &discovery_section(self.config.discovery);
        text
    }

    fn tracker(&self) -> anyhow::Result<NodeProc> {
        let name = "tracker-1";
        let mut text = self.common(name, "tracker", 1, TRACKER_PORT);
        text += &gossip(self.addr(1, TRACKER_PORT + 1), &self.ring_gossip);
        text += "[tracker]\nannounce_interval_ms = 1000\npeer_ttl_secs = 20\n\n";
        self.launch(name, "tracker", 1, &text)
    }

    fn build_index(&self) -> anyhow::Result<NodeProc> {
        let name = "build-index-1";
        let mut text = self.common(name, "build-index", 1, BUILD_INDEX_PORT);
        text += &gossip(self.addr(1, BUILD_INDEX_PORT + 1), &self.ring_gossip);
        text += "[build_index]\nreplicas = 1\n\n";
        text += &self.backend(name);
        self.launch(name, "build-index", 1, &text)
    }

    /// Agent `i` (1-based), on the host after the origins'; it learns the view from the
    /// origins and the tracker.
    fn agent(&self, i: usize) -> anyhow::Result<NodeProc> {
        let h = self.config.origins + i;
        self.launch(&format!("agent-{i}"), "agent", h, &self.agent_config(i))
    }

    /// Agent `i`'s config text.
    fn agent_config(&self, i: usize) -> String {
        let h = self.config.origins + i;
        let name = format!("agent-{i}");
        let tracker = self.runs_tracker.then(|| self.addr(1, TRACKER_PORT));
        let seeds: Vec<String> = (1..=self.config.origins)
            .map(|o| self.addr(o, ORIGIN_PORT))
            .chain(tracker)
            .map(|s| format!("\"{s}\""))
            .collect();
        let mut text = self.common(&name, "agent", h, AGENT_PORT);
        let _ = writeln!(
            text,
            "[view]\nseeds = [{}]\nrefresh_secs = 1\n\n[swarm]\nannounce_interval_secs = 1",
            seeds.join(", ")
        );
        if let Some(slots) = self.config.upload_slots {
            let _ = writeln!(text, "upload_slots = {slots}");
        }
        text.push('\n');
        text += &discovery_section(self.config.discovery);
        text
    }
}

impl Cluster {
    /// Writes certificates and configs under `work_dir` and starts every node.
    pub fn start(net: &Testnet, config: &ClusterConfig) -> anyhow::Result<Cluster> {
        let layout = Layout::new(net, config)?;
        let origins = (1..=config.origins)
            .map(|h| layout.origin(h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tracker = layout.runs_tracker.then(|| layout.tracker()).transpose()?;
        let build_index = layout.build_index()?;
        let agents = (1..=config.agents)
            .map(|i| layout.agent(i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let agent_data = (1..=config.agents)
            .map(|i| layout.data(&format!("agent-{i}")))
            .collect();
        layout
            .ca
            .write_node_cert("bench-ctl")
            .context("cannot issue the client certificate")?;
        let tls = &layout.tls;
        Ok(Cluster {
            origins,
            tracker,
            build_index,
            agents,
            agent_data,
            client_tls: ClientTls {
                ca: tls.join("ca.crt"),
                cert: tls.join("bench-ctl.crt"),
                key: tls.join("bench-ctl.key"),
            },
        })
    }

    /// Every process, for CPU accounting.
    pub fn all(&self) -> impl Iterator<Item = &NodeProc> {
        self.origins
            .iter()
            .chain(self.tracker.as_ref())
            .chain([&self.build_index])
            .chain(&self.agents)
    }

    /// CPU seconds of every node so far.
    pub fn cpu_secs(&self) -> f64 {
        self.all().map(NodeProc::cpu_secs).sum()
    }

    /// The agents' QUIC addresses.
    pub fn agent_addrs(&self) -> Vec<SocketAddr> {
        self.agents.iter().map(|a| a.quic).collect()
    }

    /// Where agent `i` (0-based) stores a complete blob with this hex digest.
    pub fn agent_blob_path(&self, i: usize, hex: &str) -> PathBuf {
        self.agent_data[i]
            .join("cas")
            .join("blobs")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
    }

    /// SIGTERM to every node, agents first.
    pub fn stop(&mut self) {
        for p in self.agents.iter_mut().rev() {
            p.stop();
        }
        self.build_index.stop();
        if let Some(t) = &mut self.tracker {
            t.stop();
        }
        for p in &mut self.origins {
            p.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use kraken_storage::backend::{RouterConfig, ServiceConfig};

    use super::*;
    use crate::bench::netns::NetConfig;

    /// `--discovery` reaches the origins' and agents' configs as `[discovery] mode` (and
    /// nothing without it); `dht` leaves the tracker out of the gossip and view seeds.
    #[test]
    fn discovery_mode_is_written_and_dht_clusters_name_no_tracker() {
        let dir = tempfile::tempdir().unwrap();
        let net = Testnet::planned(NetConfig {
            hosts: 4,
            ..NetConfig::default()
        });
        let modes = [
            None,
            Some(Discovery::Tracker),
            Some(Discovery::Dht),
            Some(Discovery::Both),
        ];
        for (i, mode) in modes.into_iter().enumerate() {
            let config = ClusterConfig {
                kraken: "kraken".into(),
                work_dir: dir.path().join(i.to_string()),
                origins: 1,
                agents: 3,
                piece_length: None,
                upload_slots: Some(4),
                origin_upload_slots: None,
                upstream: None,
                discovery: mode,
            };
            let layout = Layout::new(&net, &config).unwrap();
            let (origin, agent) = (layout.origin_config(1), layout.agent_config(2));
            for text in [&origin, &agent] {
                let v: toml::Value = toml::from_str(text).expect(text);
                let written = v.get("discovery").map(|d| d["mode"].as_str());
                assert_eq!(written, mode.map(|m| Some(m.name())), "{text}");
                // The section does not swallow the keys before it.
                assert!(v.get("quic").is_some(), "{text}");
            }
            let agent: toml::Value = toml::from_str(&agent).unwrap();
            assert_eq!(agent["swarm"]["upload_slots"].as_integer(), Some(4));
            let tracker = Discovery::runs_tracker(mode);
            assert_eq!(tracker, mode != Some(Discovery::Dht));
            // The tracker runs on host 1: QUIC 7610 (a view seed), gossip 7611.
            assert_eq!(
                agent["view"]["seeds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s.as_str() == Some("10.78.0.1:7610")),
                tracker,
                "{mode:?}"
            );
            assert_eq!(origin.contains("10.78.0.1:7611"), tracker, "{origin}");
            assert!(
                origin.contains("10.78.0.1:7621"),
                "build-index seeds either way"
            );
        }
    }

    /// The entries parse as the node reads them, and route every namespace.
    #[test]
    fn backend_entries_parse_as_filesystem_or_upstream_registry() {
        let parse = |text: &str| -> RouterConfig {
            let config: RouterConfig = toml::from_str(text).expect(text);
            config.validate().expect(text);
            config
        };
        let fs = parse(&backend(Path::new("/b/origin-1"), None));
        let upstream = parse(&backend(
            Path::new("/b/origin-1"),
            Some("http://127.0.0.1:5000"),
        ));
        for (config, want) in [(&fs, "fs"), (&upstream, "upstream")] {
            assert_eq!(config.backends.len(), 1);
            assert_eq!(config.backends[0].namespace, ".*");
            assert_eq!(config.backends[0].name.as_deref(), Some(want));
        }
        assert!(matches!(
            &fs.backends[0].backend.service,
            ServiceConfig::Fs(f) if f.root == "/b/origin-1"
        ));
        assert!(matches!(
            &upstream.backends[0].backend.service,
            ServiceConfig::Registry(r) if r.url == "http://127.0.0.1:5000"
        ));
    }
}
