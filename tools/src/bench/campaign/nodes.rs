//! The cluster under fire: moto (the S3 backend) and separate `kraken` processes on
//! loopback, each with fixed ports (chosen free at the start and kept across restarts),
//! its own data directory and log, and certificates from one dev CA.
//!
//! Layout ([`Shape`]): origins (write-back to moto), trackers and build-index nodes as
//! their own ring processes, a push-enabled proxy, agents with their registry API on. Each
//! ring role has at least two processes, so a killed one leaves a replica
//! (`[origin] replicas` and `[build_index] replicas` equal the number of nodes of the role).
//!
//! Tunables that differ from the shipped defaults, so that a campaign of minutes sees
//! recovery within it: gossip every 200 ms, views refreshed and announces sent every
//! second, write-back retries backing off to at most 4 s (the default caps at 10 min, which
//! would outlast a short campaign after a backend outage).
//!
//! One agent (the last) may keep its data directory on a small tmpfs ([`Shape::disk_mib`])
//! so that the disk-full fault can fill it; that needs root (`mount`), and without it the
//! campaign runs without that fault and says so.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kraken_transport::quic::tls::dev::DevCa;

use super::http;
use crate::bench::procs::NodeProc;

/// The S3 bucket every backend route uses.
pub const BUCKET: &str = "campaign";

/// A role, as the campaign kills and counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Stores blobs, writes them back to moto.
    Origin,
    /// Hands out peers.
    Tracker,
    /// Holds tags.
    BuildIndex,
    /// Takes pushes.
    Proxy,
    /// Serves pulls.
    Agent,
}

impl Role {
    /// The `kraken` subcommand (and the name in configs).
    pub fn name(self) -> &'static str {
        match self {
            Role::Origin => "origin",
            Role::Tracker => "tracker",
            Role::BuildIndex => "build-index",
            Role::Proxy => "proxy",
            Role::Agent => "agent",
        }
    }

    /// Every role, in report order.
    pub const ALL: [Role; 5] = [
        Role::Origin,
        Role::Tracker,
        Role::BuildIndex,
        Role::Proxy,
        Role::Agent,
    ];

    fn on_ring(self) -> bool {
        matches!(self, Role::Origin | Role::Tracker | Role::BuildIndex)
    }
}

/// How many of each.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Origins (at least 2).
    pub origins: usize,
    /// Trackers (at least 2).
    pub trackers: usize,
    /// Build-index nodes (at least 2).
    pub build_indexes: usize,
    /// Agents (at least 3).
    pub agents: usize,
    /// MiB of the tmpfs under the last agent's data directory; 0 for none.
    pub disk_mib: u64,
}

impl Shape {
    /// Refuses a shape in which a killed node would leave its role without a replica.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.origins < 2 || self.trackers < 2 || self.build_indexes < 2 {
            bail!("need at least 2 origins, 2 trackers and 2 build-index nodes");
        }
        if self.agents < 3 {
            bail!("need at least 3 agents");
        }
        Ok(())
    }
}

/// One `kraken` process and its addresses.
#[derive(Debug)]
pub struct Node {
    /// Its role.
    pub role: Role,
    /// The process.
    pub proc: NodeProc,
    /// Its registry API (proxy and agents).
    pub registry: Option<SocketAddr>,
    /// Its data directory.
    pub data: PathBuf,
    /// Whether its data directory is a tmpfs the campaign mounted.
    pub tmpfs: bool,
}

/// moto on a fixed loopback port.
#[derive(Debug)]
pub struct Moto {
    child: Option<Child>,
    bin: PathBuf,
    /// Its address.
    pub addr: SocketAddr,
    log: PathBuf,
    /// Whether it is stopped (SIGSTOP).
    pub paused: bool,
}

impl Moto {
    fn start(bin: &Path, addr: SocketAddr, log: PathBuf) -> anyhow::Result<Moto> {
        let mut moto = Moto {
            child: None,
            bin: bin.to_path_buf(),
            addr,
            log,
            paused: false,
        };
        let out = std::fs::File::create(&moto.log)?;
        let child = Command::new(&moto.bin)
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", moto.bin.display()))?;
        moto.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(a) = moto.s3("PUT", &format!("/{BUCKET}"), &[])
                && a.status < 300
            {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                bail!("moto did not answer on {addr}; see {}", moto.log.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A raw S3 request: moto checks that a request is signed, not the signature.
    pub fn s3(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<http::Answer, http::HttpError> {
        http::request(
            self.addr,
            method,
            path,
            &[(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )],
            body,
            Duration::from_secs(30),
        )
    }

    fn signal(&mut self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// SIGSTOP: the backend stops answering (connections are accepted by the kernel and
    /// then hang), its data kept.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sockets held while ports are picked, so that no two picks get the same port; dropped
/// (the ports released) once every node has its own.
#[derive(Default)]
struct Picker {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl Picker {
    /// A free port for `udp` or TCP on 127.0.0.1, held until the picker is dropped.
    fn port(&mut self, udp: bool) -> anyhow::Result<u16> {
        Ok(if udp {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            let p = s.local_addr()?.port();
            self.udp.push(s);
            p
        } else {
            let s = TcpListener::bind("127.0.0.1:0")?;
            let p = s.local_addr()?.port();
            self.tcp.push(s);
            p
        })
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Ports of one node.
#[derive(Debug, Clone, Copy)]
struct Ports {
    quic: SocketAddr,
    gossip: SocketAddr,
    http: SocketAddr,
    registry: SocketAddr,
}

impl Ports {
    fn pick(p: &mut Picker) -> anyhow::Result<Ports> {
        Ok(Ports {
            quic: loopback(p.port(true)?),
            gossip: loopback(p.port(true)?),
            http: loopback(p.port(false)?),
            registry: loopback(p.port(false)?),
        })
    }
}

/// The running cluster; every process is killed (and the tmpfs unmounted) on drop.
#[derive(Debug)]
pub struct Cluster {
    /// Every kraken node.
    pub nodes: Vec<Node>,
    /// The backend.
    pub moto: Moto,
    /// Why the disk-full fault cannot run, if it cannot.
    pub no_disk_fault: Option<String>,
    /// The extra origin of the transient-member fault (not running until injected).
    pub transient: TransientOrigin,
    /// The `kraken` binary.
    pub kraken: PathBuf,
    /// `[origin] replicas` of the origins.
    pub replicas: usize,
}

/// What the configs need to know about the whole cluster.
struct Plan<'a> {
    work: &'a Path,
    tls: PathBuf,
    ca: DevCa,
    moto: SocketAddr,
    shape: &'a Shape,
    /// Gossip addresses of the ring nodes.
    ring_gossip: Vec<SocketAddr>,
    /// QUIC addresses of the ring nodes (views are read from them).
    ring_quic: Vec<SocketAddr>,
}

impl Plan<'_> {
    fn config(&self, name: &str, role: Role, ports: Ports, data: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "[node]\nname = \"{name}\"\nroles = [\"{}\"]\ndata_dir = {}\n",
            role.name(),
            q(data)
        );
        let _ = writeln!(s, "[quic]\nlisten = \"{}\"\n", ports.quic);
        let _ = writeln!(
            s,
            "[tls]\nca = {}\ncert = {}\nkey = {}\n",
            q(&self.tls.join("ca.crt")),
            q(&self.tls.join(format!("{name}.crt"))),
            q(&self.tls.join(format!("{name}.key")))
        );
        let _ = writeln!(s, "[http]\nenabled = true\nlisten = \"{}\"\n", ports.http);
        let registry = matches!(role, Role::Proxy | Role::Agent);
        let _ = writeln!(s, "[registry]\nenabled = {registry}");
        if registry {
            let _ = writeln!(s, "listen = \"{}\"", ports.registry);
        }
        s.push('\n');
        if role.on_ring() {
            let seeds: Vec<String> = self
                .ring_gossip
                .iter()
                .filter(|a| **a != ports.gossip)
                .map(|a| format!("\"{a}\""))
                .collect();
            let _ = writeln!(
                s,
                "[gossip]\nlisten = \"{}\"\nseeds = [{}]\ninterval_ms = 200\n",
                ports.gossip,
                seeds.join(", ")
            );
        } else {
            let seeds: Vec<String> = self.ring_quic.iter().map(|a| format!("\"{a}\"")).collect();
            let _ = writeln!(
                s,
                "[view]\nseeds = [{}]\nrefresh_secs = 1\n",
                seeds.join(", ")
            );
        }
        match role {
            Role::Origin => s.push_str(&origin_section(self.shape.origins)),
            Role::Tracker => {
                s.push_str("[tracker]\nannounce_interval_ms = 1000\npeer_ttl_secs = 20\n\n");
            }
            Role::BuildIndex => {
                let _ = writeln!(
                    s,
                    "[build_index]\nreplicas = {}\n",
                    self.shape.build_indexes
                );
            }
            Role::Agent => s.push_str("[swarm]\nannounce_interval_secs = 1\n\n"),
            Role::Proxy => {}
        }
        if matches!(role, Role::Origin | Role::BuildIndex) {
            s.push_str("[writeback_queue]\nbase_backoff_ms = 500\nmax_backoff_ms = 4000\n\n");
            let _ = writeln!(
                s,
                "[[backends]]\nnamespace = \".*\"\nname = \"moto\"\n\n[backends.backend.s3]\n\
                 bucket = \"{BUCKET}\"\nregion = \"us-east-1\"\nendpoint = \"http://{}\"\n\
                 access_key_id = \"testing\"\nsecret_access_key = \"testing\"\n",
                self.moto
            );
        }
        s
    }
}

/// The `[origin]` section of every origin's config (the transient one's too).
///
/// The campaign's origin tunables live here, in one place: the replica count (every
/// origin holds every blob, so a killed one leaves a replica), a short repair delay, and
/// anti-entropy and scrubbing far more often than their defaults, so that a campaign of
/// minutes sees every pass: anti-entropy every 5 s, a scrub pass every 5 s at 64 MiB/s.
fn origin_section(replicas: usize) -> String {
    format!(
        "[origin]\nreplicas = {replicas}\nrepair_delay_ms = 500\nanti_entropy_interval_secs = 5\n\
         scrub_bytes_per_sec = 67108864\nscrub_interval_ms = 5000\n\n\
         [origin.swarm]\nannounce_interval_secs = 1\n\n"
    )
}

/// An origin that is not started with the cluster: the transient-member fault starts it
/// (joining the ring while pushes go on), kills it and wipes its data (it leaves for
/// good; the next one, under the same name, is a fresh member replacing it).
#[derive(Debug)]
pub struct TransientOrigin {
    /// Its name (`origin-transient`).
    pub name: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// Its data directory (removed when it leaves).
    pub data: PathBuf,
}

impl TransientOrigin {
    /// Starts it (with empty data) and waits until it is ready.
    pub fn start(&self, kraken: &Path) -> anyhow::Result<NodeProc> {
        let _ = std::fs::remove_dir_all(&self.data);
        NodeProc::start(kraken, "", &self.name, "origin", &self.config, &self.log)
    }

    /// Kills it (SIGKILL) and removes its data: it does not come back.
    pub fn remove(&self, proc: &mut NodeProc) {
        proc.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Whether `dir` can get a tmpfs of its own (root, `mount` present): mounts it, or says
/// why not.
fn mount_tmpfs(dir: &Path, mib: u64) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

impl Cluster {
    /// Starts moto and every node under `work`.
    pub fn start(
        kraken: &Path,
        moto_bin: &Path,
        work: &Path,
        shape: &Shape,
    ) -> anyhow::Result<Cluster> {
        shape.validate()?;
        let tls = work.join("tls");
        std::fs::create_dir_all(&tls)?;
        let ca = DevCa::create(&tls).context("cannot create the dev CA")?;
        let mut picker = Picker::default();
        let moto_port = picker.port(false)?;
        let mut specs: Vec<(String, Role)> = Vec::new();
        for (role, n) in [
            (Role::Origin, shape.origins),
            (Role::Tracker, shape.trackers),
            (Role::BuildIndex, shape.build_indexes),
            (Role::Proxy, 1),
            (Role::Agent, shape.agents),
        ] {
            for i in 1..=n {
                specs.push((format!("{}-{i}", role.name()), role));
            }
        }
        let ports = specs
            .iter()
            .map(|_| Ports::pick(&mut picker))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let transient_ports = Ports::pick(&mut picker)?;
        drop(picker);
        let moto = Moto::start(moto_bin, loopback(moto_port), work.join("moto.log"))?;
        let ring: Vec<Ports> = specs
            .iter()
            .zip(&ports)
            .filter(|((_, r), _)| r.on_ring())
            .map(|(_, p)| *p)
            .collect();
        let plan = Plan {
            work,
            tls: tls.clone(),
            ca,
            moto: moto.addr,
            shape,
            ring_gossip: ring.iter().map(|p| p.gossip).collect(),
            ring_quic: ring.iter().map(|p| p.quic).collect(),
        };
        // The transient origin seeds from the ring; the ring does not list it (it joins).
        let transient = {
            let name = "origin-transient".to_string();
            let data = work.join("data").join(&name);
            plan.ca
                .write_node_cert(&name)
                .with_context(|| format!("cannot issue a certificate for {name}"))?;
            let config = work.join(format!("{name}.toml"));
            std::fs::write(
                &config,
                plan.config(&name, Role::Origin, transient_ports, &data),
            )?;
            TransientOrigin {
                log: work.join(format!("{name}.log")),
                name,
                config,
                data,
            }
        };
        let mut cluster = Cluster {
            nodes: Vec::new(),
            moto,
            no_disk_fault: None,
            transient,
            kraken: kraken.to_path_buf(),
            replicas: shape.origins,
        };
        if shape.disk_mib == 0 {
            cluster.no_disk_fault = Some("--disk-mib 0".into());
        }
        let last_agent = format!("agent-{}", shape.agents);
        for ((name, role), ports) in specs.iter().zip(ports) {
            let data = plan.work.join("data").join(name);
            let mut tmpfs = false;
            if *name == last_agent && shape.disk_mib > 0 {
                match mount_tmpfs(&data, shape.disk_mib) {
                    Ok(()) => tmpfs = true,
                    Err(why) => cluster.no_disk_fault = Some(why),
                }
            }
            plan.ca
                .write_node_cert(name)
                .with_context(|| format!("cannot issue a certificate for {name}"))?;
            let mut text = plan.config(name, *role, ports, &data);
            if tmpfs {
                // A quota below the file system, so eviction alone never fills it: only the
                // ballast does.
                let _ = writeln!(
                    text,
                    "[store]\ncapacity_bytes = {}\n",
                    (shape.disk_mib << 20) / 2
                );
            }
            let config = plan.work.join(format!("{name}.toml"));
            std::fs::write(&config, text)?;
            let log = plan.work.join(format!("{name}.log"));
            let registry = matches!(role, Role::Proxy | Role::Agent).then_some(ports.registry);
            let proc = match NodeProc::start(kraken, "", name, role.name(), &config, &log) {
                Ok(p) => p,
                Err(e) => {
                    if tmpfs {
                        unmount(&data);
                    }
                    return Err(e);
                }
            };
            cluster.nodes.push(Node {
                role: *role,
                proc,
                registry,
                data,
                tmpfs,
            });
        }
        Ok(cluster)
    }

    /// Nodes of `role`.
    pub fn of(&self, role: Role) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(_, n)| n.role == role)
    }

    /// The proxy's registry address.
    pub fn proxy(&self) -> SocketAddr {
        self.of(Role::Proxy)
            .find_map(|(_, n)| n.registry)
            .expect("the cluster has a proxy")
    }

    /// Every agent's name and registry address.
    pub fn agents(&self) -> Vec<(String, SocketAddr)> {
        self.of(Role::Agent)
            .filter_map(|(_, n)| Some((n.proc.name.clone(), n.registry?)))
            .collect()
    }

    /// The index of the agent whose data directory is a tmpfs.
    pub fn disk_agent(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.tmpfs)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.proc.kill();
            if n.tmpfs {
                unmount(&n.data);
            }
        }
    }
}
