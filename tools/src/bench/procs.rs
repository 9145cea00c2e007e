//! Processes inside the test hosts: `kraken` nodes started with `ip netns exec`, waited on
//! until they print `ready`, measured (CPU seconds from `/proc/<pid>/stat`), stopped with
//! SIGTERM, or killed.
//!
//! `ip netns exec` enters the namespace and then execs the command, so the child's pid is
//! the node's pid.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a node may take to print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// One running `kraken` process.
#[derive(Debug)]
pub struct NodeProc {
    /// Node name, e.g. `agent-3`.
    pub name: String,
    /// The namespace it runs in; empty: this process's (loopback, no `ip netns exec`).
    pub ns: String,
    /// Its QUIC address as printed.
    pub quic: SocketAddr,
    /// Where its stderr (logs) go.
    pub log: PathBuf,
    /// The role subcommand.
    role: String,
    config: PathBuf,
    kraken: PathBuf,
    child: Option<Child>,
    /// CPU seconds of earlier incarnations (restarts).
    cpu_before: f64,
}

impl NodeProc {
    /// Starts `kraken <role> --config <config>` in `ns` (here if empty) and waits for
    /// `ready`.
    pub fn start(
        kraken: &Path,
        ns: &str,
        name: &str,
        role: &str,
        config: &Path,
        log: &Path,
    ) -> anyhow::Result<NodeProc> {
        let mut p = NodeProc {
            name: name.to_string(),
            ns: ns.to_string(),
            quic: SocketAddr::from(([0, 0, 0, 0], 0)),
            log: log.to_path_buf(),
            role: role.to_string(),
            config: config.to_path_buf(),
            kraken: kraken.to_path_buf(),
            child: None,
            cpu_before: 0.0,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        // An empty namespace runs it here, on this host's loopback (the campaign).
        let mut cmd = if self.ns.is_empty() {
            Command::new(&self.kraken)
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.ns]).arg(&self.kraken);
            c
        };
        let mut child = cmd
            .arg(&self.role)
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("KRAKEN_BENCH_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.kraken.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        // Set before waiting, so that a failure still kills it on drop.
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let done = line == "ready";
                if tx.send(line).is_err() || done {
                    break;
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == "ready" => return Ok(()),
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("quic ") {
                        self.quic = addr.parse().with_context(|| format!("bad line {line:?}"))?;
                    }
                }
                Err(_) => bail!(
                    "{} did not get ready within {READY_TIMEOUT:?}; see {}",
                    self.name,
                    self.log.display()
                ),
            }
        }
    }

    /// Its pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU seconds (user + system) used so far, earlier incarnations included.
    pub fn cpu_secs(&self) -> f64 {
        self.cpu_before + self.pid().and_then(cpu_secs_of).unwrap_or(0.0)
    }

    /// Whether it is running (started and not killed or stopped).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Its exit status if it exited by itself (it is then no longer running).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.cpu_before += cpu_secs_of(c.id()).unwrap_or(0.0);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same config (same data dir and address).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Starts it again after [`NodeProc::kill`] or a failed restart (a no-op while it
    /// runs).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn()
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// User + system CPU seconds of `pid` from `/proc/<pid>/stat`.
pub fn cpu_secs_of(pid: u32) -> Option<f64> {
    stat_file_cpu(&format!("/proc/{pid}/stat"), false)
}

/// User + system CPU seconds of the calling thread.
pub fn this_thread_cpu_secs() -> Option<f64> {
    stat_file_cpu("/proc/thread-self/stat", false)
}

/// User + system CPU seconds of the children this process has reaped (0 if unreadable).
pub fn reaped_children_cpu() -> f64 {
    stat_file_cpu("/proc/self/stat", true).unwrap_or(0.0)
}

/// [`parse_stat_cpu`] of the `stat` file at `path`.
fn stat_file_cpu(path: &str, children: bool) -> Option<f64> {
    parse_stat_cpu(&std::fs::read_to_string(path).ok()?, children)
}

/// utime + stime (or, with `children`, cutime + cstime) of a `/proc/<pid>/stat` line, in
/// seconds.
pub fn parse_stat_cpu(stat: &str, children: bool) -> Option<f64> {
    // The command name may hold spaces; fields restart after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15, cutime 16, cstime 17.
    let (a, b) = if children { (13, 14) } else { (11, 12) };
    let t1: f64 = fields.get(a)?.parse().ok()?;
    let t2: f64 = fields.get(b)?.parse().ok()?;
    Some((t1 + t2) / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_past_odd_names() {
        let line = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0";
        assert_eq!(parse_stat_cpu(line, false), Some(3.0));
        assert_eq!(parse_stat_cpu(line, true), Some(0.1));
        assert_eq!(parse_stat_cpu("garbage", false), None);
    }
}
