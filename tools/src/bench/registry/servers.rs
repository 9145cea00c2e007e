//! The two systems under test, each started fresh by the bench on free loopback ports:
//! Debian's `docker-registry` (distribution 2.8) with a minimal config, and a whole kraken
//! cluster as one `kraken dev --agents 2` process. Both are measured by the CPU time of
//! their process; kraken is also asked to settle (replication and write-back finished)
//! before anything is measured, so its background work never lands in a measurement.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kraken_client::cluster_file::ClusterFile;

use super::curl::{Site, http_get};
use super::janitor::Tracked;
use crate::bench::procs::cpu_secs_of;

/// How long a server may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the bench looks at a starting or settling server.
const POLL: Duration = Duration::from_millis(250);

/// `docker-registry serve` on a loopback port (here, or in a test host's namespace), with
/// its storage in a directory.
#[derive(Debug)]
pub struct DockerRegistry {
    proc: Tracked,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Its log (stdout and stderr: the access log, when on, goes to stdout).
    pub log: PathBuf,
}

/// Where and how a [`DockerRegistry`] runs.
#[derive(Debug, Clone, Default)]
pub struct RegistryPlace {
    /// The network namespace it runs in (`None`: this process's). Its loopback there is
    /// its address, so only that namespace reaches it.
    pub netns: Option<String>,
    /// Its port on 127.0.0.1 (`None`: a free one; only here, since a free port can only be
    /// found in this process's namespace).
    pub port: Option<u16>,
    /// Write the access log (one line per request, with the bytes sent).
    pub access_log: bool,
}

/// A free loopback port (bound and released: the server binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The config: filesystem storage under `root`, `addr`, the access log off unless asked
/// for, deletes on, no auth (the packaged config's htpasswd is left out on purpose).
pub fn registry_config(root: &Path, addr: SocketAddr, access_log: bool) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: {}\n\
         storage:\n  cache:\n    blobdescriptor: inmemory\n  \
         filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n",
        !access_log,
        root.display()
    )
}

/// Whether `GET base/v2/` answers 200 at `site` (a plain socket here, curl elsewhere).
fn answers(site: Site<'_>, addr: SocketAddr) -> bool {
    match site {
        Site::Here => matches!(http_get(addr, "/v2/"), Ok((200, _))),
        Site::Netns(_) => site
            .command("curl")
            .args(["-sf", "-o", "/dev/null", "--max-time", "2"])
            .arg(format!("http://{addr}/v2/"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

impl DockerRegistry {
    /// Starts `bin serve` on a free loopback port here, with its config, storage and log
    /// in `dir`; waits until `GET /v2/` answers.
    pub fn start(bin: &Path, dir: &Path) -> anyhow::Result<DockerRegistry> {
        Self::start_at(bin, dir, &RegistryPlace::default())
    }

    /// [`DockerRegistry::start`] at `place`.
    pub fn start_at(
        bin: &Path,
        dir: &Path,
        place: &RegistryPlace,
    ) -> anyhow::Result<DockerRegistry> {
        let port = match (place.port, &place.netns) {
            (Some(p), _) => p,
            (None, None) => free_port()?,
            (None, Some(ns)) => bail!("a registry in namespace {ns} needs a port"),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage)?;
        let config = dir.join("config.yml");
        std::fs::write(&config, registry_config(&storage, addr, place.access_log))?;
        let log_path = dir.join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let site = place.netns.as_deref().map_or(Site::Here, Site::Netns);
        let mut proc = Tracked::spawn(
            site.command(bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !answers(site, addr) {
            if proc.exited() || Instant::now() > deadline {
                bail!(
                    "docker-registry did not answer on {addr}: {}",
                    std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(DockerRegistry {
            proc,
            base: format!("http://{addr}"),
            addr,
            log: log_path,
        })
    }

    /// CPU seconds it has used.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs_of(self.proc.pid()).unwrap_or(0.0)
    }

    /// Stops it.
    pub fn stop(self) {
        self.proc.stop();
    }
}

/// Its version as `bin --version` prints it (`2.8.2+ds1`), or what went wrong.
pub fn registry_version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .last()
        .unwrap_or("unknown")
        .to_string())
}

/// `kraken dev --agents 2`: three origins, a tracker, a build-index, two agents and a
/// proxy in one process.
#[derive(Debug)]
pub struct KrakenDev {
    proc: Tracked,
    /// The proxy's registry API (pushes), `http://…`.
    pub proxy: String,
    /// The agents' registry APIs (pulls), `http://…`, agent 1 first.
    pub agents: Vec<String>,
    /// Every node's HTTP endpoint (`/metrics`).
    metrics: Vec<SocketAddr>,
    /// Agent 1's HTTP endpoint: its pull histogram times its own download.
    agent1_http: SocketAddr,
}

/// An agent's pulls so far: `kraken_pull_duration_seconds`' count and sum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PullClock {
    /// Pulls finished.
    pub count: f64,
    /// Their seconds, summed.
    pub secs: f64,
}

/// How the cluster settled.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    /// Seconds waited.
    pub secs: f64,
    /// The bound ran out first.
    pub timed_out: bool,
}

/// The share of one core below which the cluster counts as idle (gossip and announces
/// alone stay well under it, even in a debug build).
const IDLE_CPU_SHARE: f64 = 0.10;

/// Consecutive quiet polls that make a settled cluster (one second).
const QUIET_POLLS: u32 = 4;

impl KrakenDev {
    /// Starts `bin dev --agents 2 --data-dir DIR/data` (its logs in `DIR/kraken.log`),
    /// waits for `ready` and reads the addresses from `cluster.json`.
    pub fn start(bin: &Path, dir: &Path) -> anyhow::Result<KrakenDev> {
        let data = dir.join("data");
        let log_path = dir.join("kraken.log");
        let log = std::fs::File::create(&log_path)?;
        let mut proc = Tracked::spawn(
            Command::new(bin)
                .args(["dev", "--agents", "2", "--data-dir"])
                .arg(&data)
                .env(
                    "RUST_LOG",
                    std::env::var("KRAKEN_BENCH_LOG").unwrap_or("warn".into()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log),
        )?;
        let stdout = proc.child_mut().stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads to the end, so that the cluster never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line == "ready");
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(true) => break,
                Ok(false) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "kraken dev did not print `ready` within {START_TIMEOUT:?}: {}",
                    tail(&log_path)
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "kraken dev ({}) exited before it was ready: {}",
                    bin.display(),
                    tail(&log_path)
                ),
            }
        }
        let file: ClusterFile = serde_json::from_slice(
            &std::fs::read(data.join("cluster.json")).context("reading cluster.json")?,
        )
        .context("parsing cluster.json")?;
        Self::from_file(proc, &file)
    }

    fn from_file(proc: Tracked, file: &ClusterFile) -> anyhow::Result<KrakenDev> {
        let registry_of = |role: &str| -> Vec<String> {
            let mut nodes: Vec<_> = file
                .nodes
                .iter()
                .filter(|n| n.roles.iter().any(|r| r == role))
                .filter_map(|n| Some((n.name.clone(), n.registry?)))
                .collect();
            nodes.sort();
            nodes
                .into_iter()
                .map(|(_, a)| format!("http://{a}"))
                .collect()
        };
        let proxy = registry_of("proxy")
            .into_iter()
            .next()
            .context("cluster.json names no proxy with a registry address")?;
        let agents = registry_of("agent");
        if agents.len() < 2 {
            bail!(
                "cluster.json names {} agents with a registry address, need 2",
                agents.len()
            );
        }
        let mut agent_nodes: Vec<_> = file
            .nodes
            .iter()
            .filter(|n| n.registry.is_some() && n.roles.iter().any(|r| r == "agent"))
            .collect();
        agent_nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let agent1_http = agent_nodes
            .first()
            .and_then(|n| n.http)
            .context("cluster.json names no HTTP address for agent 1")?;
        Ok(KrakenDev {
            proc,
            proxy,
            agents,
            metrics: file.nodes.iter().filter_map(|n| n.http).collect(),
            agent1_http,
        })
    }

    /// Agent 1's pulls so far (each timed by the agent from its metainfo lookup to its
    /// commit: the exchange's own time for the blob).
    pub fn agent1_pulls(&self) -> anyhow::Result<PullClock> {
        let (_, body) = http_get(self.agent1_http, "/metrics")?;
        let read = |name: &str| {
            gauge(&body, name).with_context(|| format!("agent 1's /metrics has no {name}"))
        };
        Ok(PullClock {
            count: read("kraken_pull_duration_seconds_count")?,
            secs: read("kraken_pull_duration_seconds_sum")?,
        })
    }

    /// Agent 1's next pull after `before`, once its count moved (at most `limit`): the
    /// seconds of the pulls since.
    pub fn agent1_pull_after(&self, before: PullClock, limit: Duration) -> anyhow::Result<f64> {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.agent1_pulls()?;
            if now.count > before.count {
                return Ok(now.secs - before.secs);
            }
            if Instant::now() > deadline {
                bail!("agent 1 recorded no finished pull within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU seconds the whole cluster has used.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs_of(self.proc.pid()).unwrap_or(0.0)
    }

    /// Items waiting in every node's write-back queue (nodes without the gauge count 0).
    /// Write-back items due now over every node. Replicas' deferred items are not: when
    /// they come due they find the blob in the backend, a `stat` each.
    fn writeback_due(&self) -> u64 {
        self.metrics
            .iter()
            .filter_map(|&a| http_get(a, "/metrics").ok())
            .map(|(_, body)| gauge(&body, "kraken_writeback_queue_due").unwrap_or(0.0) as u64)
            .sum()
    }

    /// Waits, at most `limit`, until no node has write-back due and the process has used
    /// under a tenth of a core for a second: replication, write-back and whatever else
    /// follows a push or a pull are done.
    pub fn settle(&self, limit: Duration) -> Settled {
        let start = Instant::now();
        let mut quiet = 0;
        let mut cpu = self.cpu_secs();
        let mut at = Instant::now();
        while quiet < QUIET_POLLS {
            if start.elapsed() > limit {
                return Settled {
                    secs: start.elapsed().as_secs_f64(),
                    timed_out: true,
                };
            }
            std::thread::sleep(POLL);
            let depth = self.writeback_due();
            let (now_cpu, now) = (self.cpu_secs(), Instant::now());
            let share = (now_cpu - cpu) / now.duration_since(at).as_secs_f64();
            (cpu, at) = (now_cpu, now);
            quiet = if depth == 0 && share < IDLE_CPU_SHARE {
                quiet + 1
            } else {
                0
            };
        }
        Settled {
            secs: start.elapsed().as_secs_f64(),
            timed_out: false,
        }
    }

    /// Stops it (SIGTERM: the cluster shuts down in order).
    pub fn stop(self) {
        self.proc.stop();
    }
}

/// The value of the unlabelled gauge `name` in a Prometheus text exposition.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// The `kraken` binary: `--kraken`/`KRAKEN_BIN`, else next to this one.
pub fn kraken_binary(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p.clone()),
        None => crate::bench::run::sibling("kraken"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_read_by_exact_name() {
        let text = "# HELP kraken_writeback_queue_depth Items.\n\
                    # TYPE kraken_writeback_queue_depth gauge\n\
                    kraken_writeback_queue_depth_x 9\n\
                    kraken_writeback_queue_depth 3\n";
        assert_eq!(gauge(text, "kraken_writeback_queue_depth"), Some(3.0));
        assert_eq!(gauge(text, "kraken_store_bytes"), None);
    }

    #[test]
    fn the_registry_config_has_no_auth_and_an_access_log_only_when_asked() {
        let c = registry_config(Path::new("/s"), "127.0.0.1:5000".parse().unwrap(), false);
        assert!(c.contains("rootdirectory: /s\n"));
        assert!(c.contains("addr: 127.0.0.1:5000\n"));
        assert!(c.contains("accesslog:\n    disabled: true"));
        assert!(c.contains("delete:\n    enabled: true"));
        assert!(!c.contains("htpasswd"));
        let logged = registry_config(Path::new("/s"), "127.0.0.1:5000".parse().unwrap(), true);
        assert!(logged.contains("accesslog:\n    disabled: false"));
    }
}
