//! Bounded fan-in: a real `kraken` agent process answers 1,000 concurrent registry `GET`s
//! of one blob (none of them held when they arrive) with one download from the origin,
//! every body byte-identical, and its peak resident memory (`VmHWM`) stays under the bound
//! the README documents for that many serving connections.
//!
//! The origin and the tracker run in this process; only the agent is a child process, so
//! its `/proc/<pid>/status` measures the agent alone. `KRAKEN_FAN_IN_CLIENTS` and
//! `KRAKEN_FAN_IN_MIB` change the load (the figures in the README were taken with 1,000
//! clients of a 32 MiB blob); the test's own default keeps the bytes moved small enough for
//! CI while the per-connection memory, which does not depend on the blob's size past a few
//! pieces, is the same.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kraken_node::config::NodeRole;
use kraken_storage::{Digest, DigestAlgorithm, DigestHasher};
use support::{TestCluster, blob_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KRAKEN: &str = env!("CARGO_BIN_EXE_kraken");

/// The documented bound (README, "Sizing the registry API"): the agent's peak RSS serving
/// 1,000 clients of one blob. Measured peaks are well below it (see the README); the bound
/// leaves headroom for allocator and runtime differences between machines.
const RSS_BOUND_MIB: u64 = 150;

/// Longest the whole fan-in may take.
const DEADLINE: Duration = Duration::from_secs(90);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A free loopback TCP port (released at once: the agent binds it right after).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Raises this process's open-file limit to its hard limit (the agent inherits it): 1,000
/// clients and their 1,000 server ends need more than the common default of 1,024.
fn raise_nofile(need: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if lim.current.is_some_and(|c| c < need) {
        lim.current = Some(hard.min(need.max(4096)));
        setrlimit(Resource::Nofile, lim).unwrap();
    }
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|c| c >= need),
        "open files limited to {now:?}, the test needs {need}"
    );
}

/// One field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The `kraken` agent child, killed on drop.
struct AgentProc(Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the agent from `config` and waits for its `ready` line.
fn start_agent(config: &Path, log: &Path) -> AgentProc {
    use std::io::BufRead;
    let mut child = Command::new(KRAKEN)
        .arg("agent")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let agent = AgentProc(child);
    let ready = std::io::BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "ready");
    assert!(
        ready,
        "the agent exited before it was ready:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    agent
}

/// What one client got.
#[derive(Debug)]
struct Got {
    status: u16,
    digest: Option<Digest>,
    len: u64,
    /// The start of a body that is not the blob.
    text: String,
}

/// `GET path` on `addr` with HTTP/1.1, following a `307` (to the blob server and back)
/// up to three times; the body is hashed as it arrives, never held.
async fn fetch(mut addr: SocketAddr, mut path: String) -> std::io::Result<Got> {
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut have = 0;
        let head_end = loop {
            let n = tcp.read(&mut buf[have..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
            if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if have == buf.len() {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        if status == 307 {
            let location = field("location").unwrap_or_default();
            let rest = location.strip_prefix("http://").unwrap_or(&location);
            let (host, p) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if let Ok(a) = host.parse() {
                addr = a;
            }
            path = p.to_string();
            continue;
        }
        let Some(len) = field("content-length").and_then(|v| v.parse::<u64>().ok()) else {
            return Ok(Got {
                status,
                digest: None,
                len: 0,
                text: head,
            });
        };
        if status != 200 {
            let text = String::from_utf8_lossy(&buf[head_end..have]).into_owned();
            return Ok(Got {
                status,
                digest: None,
                len,
                text,
            });
        }
        let mut hasher = DigestHasher::new(DigestAlgorithm::Sha256);
        hasher.update(&buf[head_end..have]);
        let mut got = (have - head_end) as u64;
        while got < len {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            got += n as u64;
        }
        let digest = hasher.finish();
        return Ok(Got {
            status,
            digest: Some(digest),
            len: got,
            text: String::new(),
        });
    }
    Err(std::io::ErrorKind::Other.into())
}

/// `clients` concurrent `GET`s of `url`; what each client that did not get the blob got.
async fn fan_in(
    registry: SocketAddr,
    url: &str,
    clients: u64,
    digest: &Digest,
    len: u64,
) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(fetch(registry, url.to_string())))
        .collect();
    let mut wrong = Vec::new();
    for t in tasks {
        match tokio::time::timeout_at(deadline.into(), t).await {
            Ok(Ok(Ok(got)))
                if got.status == 200 && got.digest == Some(*digest) && got.len == len => {}
            Ok(Ok(Ok(got))) => wrong.push(format!(
                "status {}, {} bytes hashing to {:?}: {}",
                got.status, got.len, got.digest, got.text
            )),
            other => wrong.push(format!("{other:?}")),
        }
    }
    wrong
}

/// The sum of a metric's samples in a `/metrics` text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn http_text(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_gets_of_one_blob_stay_within_the_documented_memory() {
    let clients = env_or("KRAKEN_FAN_IN_CLIENTS", 1000);
    let len = env_or("KRAKEN_FAN_IN_MIB", 4) << 20;
    raise_nofile(2 * clients + 512);

    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    c.converge(1).await;
    let (path, digest) = blob_file(c.dir.path(), "blob", len, 25);
    c.upload(&path, &digest, len).await;

    // The agent, as its own process.
    c.ca.write_node_cert("agent-1").unwrap();
    let registry = free_port();
    let http = free_port();
    let seeds: Vec<String> = c
        .nodes
        .iter()
        .flatten()
        .map(|n| format!("\"{}\"", n.quic_addr()))
        .collect();
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let ca = c.ca.dir();
    let config = format!(
        "[node]\nname = \"agent-1\"\nroles = [\"agent\"]\ncluster_id = \"test\"\n\
         data_dir = {}\n\n[quic]\nlisten = \"127.0.0.1:0\"\n\n\
         [tls]\nca = {}\ncert = {}\nkey = {}\n\n\
         [http]\nlisten = \"{http}\"\n\n[registry]\nlisten = \"{registry}\"\n\n\
         [view]\nseeds = [{}]\nrefresh_secs = 1\n\n[swarm]\nannounce_interval_secs = 1\n",
        q(&c.dir.path().join("nodes").join("agent-1")),
        q(&ca.join("ca.crt")),
        q(&ca.join("agent-1.crt")),
        q(&ca.join("agent-1.key")),
        seeds.join(", "),
    );
    let file = c.dir.path().join("agent-1.toml");
    std::fs::write(&file, config).unwrap();
    let log = c.dir.path().join("agent-1.log");
    let agent = start_agent(&file, &log);
    let pid = agent.0.id();
    let idle_kib = status_kib(pid, "VmHWM");

    let url = format!("/v2/fan/in/blobs/{digest}");
    // Cold: every request arrives before the agent holds the blob and streams it as its
    // pieces arrive. Warm: the blob is complete, so requests are sent to the blob server,
    // which takes its share and sends the rest back to the registry API, which then reads
    // the blob from the store for each of them.
    for round in ["cold", "warm"] {
        let started = Instant::now();
        let wrong = fan_in(registry, &url, clients, &digest, len).await;
        let peak_kib = status_kib(pid, "VmHWM");
        assert!(
            wrong.is_empty(),
            "{round}: {} of {clients} clients did not get the blob, e.g. {}\nthe agent's log:\n{}",
            wrong.len(),
            wrong[0],
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        eprintln!(
            "fan-in ({round}): {clients} clients × {} MiB in {:.1} s; agent VmHWM {} MiB idle, \
             {} MiB peak ({:.1} KiB per client above idle)",
            len >> 20,
            started.elapsed().as_secs_f64(),
            idle_kib >> 10,
            peak_kib >> 10,
            (peak_kib - idle_kib) as f64 / clients as f64
        );
        assert!(
            peak_kib >> 10 < RSS_BOUND_MIB,
            "{round}: the agent peaked at {} MiB serving {clients} clients (bound \
             {RSS_BOUND_MIB} MiB)",
            peak_kib >> 10
        );
    }

    // One download: the agent received the blob's bytes once, not once per client.
    let metrics = http_text(http, "/metrics").await;
    let received = metric_sum(&metrics, "kraken_bytes_received_total");
    assert!(
        received >= len as f64 && received < 1.5 * len as f64,
        "the agent received {received} bytes for a {len}-byte blob"
    );
}
