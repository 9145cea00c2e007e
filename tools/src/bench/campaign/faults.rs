//! Faults: drawn by a seeded RNG at random intervals, at most [`MAX_ACTIVE`] at once and
//! at most one node of a role down at a time (so every role keeps a replica), each healed
//! after a random time; everything is healed at the end.
//!
//! | fault | inject | heal |
//! |---|---|---|
//! | kill `role` | SIGKILL one node of the role (an origin: while a push is under way) | start it again (same config, data, ports) |
//! | disk full | fill the tmpfs under an agent's data dir with a ballast file | remove it |
//! | backend down | SIGSTOP moto | SIGCONT |
//! | corrupt | flip a byte in a complete blob of an agent's CAS | — (the node must cope) |
//! | corrupt origin | flip a byte in a complete blob of an origin's CAS | — (the origins must find and restore it) |
//! | transient origin | start an extra origin with empty data; it joins the ring and takes pushes | SIGKILL it and wipe its data: it leaves for good (the next one is a fresh member under the same name) |
//!
//! An origin kill waits (up to [`MID_PUSH_WAIT`]) for a push to be under way, so that it
//! lands mid-push; the timeline says whether it did.
//!
//! "Backend down" stops moto rather than killing it: moto keeps its objects in memory, so
//! a restarted moto would be an empty backend (data loss no real S3 outage has), while a
//! stopped one is an S3 that stops answering: connections open (the kernel accepts them)
//! and then nothing comes back until it resumes, which every client must survive by
//! timing out. It is the harsher of the two outages a client sees.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::nodes::{Cluster, Role};
use crate::bench::data::{SplitMix64, flip_bytes};
use crate::bench::procs::NodeProc;

/// Faults active at once, at most.
pub const MAX_ACTIVE: usize = 2;

/// Longest an origin kill waits for a push to be under way.
pub const MID_PUSH_WAIT: Duration = Duration::from_secs(3);

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SIGKILL a node of the role, restart it later.
    Kill(Role),
    /// Fill the disk agent's file system.
    DiskFull,
    /// Stop the backend.
    BackendDown,
    /// Corrupt a stored blob on an agent.
    Corrupt,
    /// Corrupt a stored blob on an origin.
    CorruptOrigin,
    /// Start an extra origin, later kill it and wipe its data.
    TransientOrigin,
}

/// A kind of fault as the command line names it (`--without`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultName {
    /// SIGKILL an origin.
    KillOrigin,
    /// SIGKILL a tracker.
    KillTracker,
    /// SIGKILL a build-index node.
    KillBuildIndex,
    /// SIGKILL the proxy.
    KillProxy,
    /// SIGKILL an agent.
    KillAgent,
    /// Fill the tmpfs agent's file system.
    DiskFull,
    /// SIGSTOP moto.
    BackendDown,
    /// Flip a byte of a stored blob on an agent.
    Corrupt,
    /// Flip a byte of a stored blob on an origin.
    CorruptOrigin,
    /// An extra origin joins, takes pushes, is killed and leaves.
    TransientOrigin,
}

impl FaultName {
    fn kind(self) -> Kind {
        match self {
            FaultName::KillOrigin => Kind::Kill(Role::Origin),
            FaultName::KillTracker => Kind::Kill(Role::Tracker),
            FaultName::KillBuildIndex => Kind::Kill(Role::BuildIndex),
            FaultName::KillProxy => Kind::Kill(Role::Proxy),
            FaultName::KillAgent => Kind::Kill(Role::Agent),
            FaultName::DiskFull => Kind::DiskFull,
            FaultName::BackendDown => Kind::BackendDown,
            FaultName::Corrupt => Kind::Corrupt,
            FaultName::CorruptOrigin => Kind::CorruptOrigin,
            FaultName::TransientOrigin => Kind::TransientOrigin,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Kill(r) => write!(f, "kill {}", r.name()),
            Kind::DiskFull => f.write_str("disk full"),
            Kind::BackendDown => f.write_str("backend down"),
            Kind::Corrupt => f.write_str("corrupt"),
            Kind::CorruptOrigin => f.write_str("corrupt origin"),
            Kind::TransientOrigin => f.write_str("transient origin"),
        }
    }
}

/// What the fault touched, to heal it.
#[derive(Debug)]
enum Target {
    Node(usize),
    Ballast(PathBuf),
    Moto,
    /// The running transient origin.
    Transient(Box<NodeProc>),
}

/// A fault in force.
#[derive(Debug)]
struct Active {
    kind: Kind,
    target: Target,
    heal_at: Instant,
}

/// One line of the timeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// Seconds since the campaign started.
    pub at_s: f64,
    /// What happened.
    pub what: String,
}

/// Fault counts.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FaultCounts {
    /// SIGKILLs per role (report order of [`Role::ALL`]).
    pub kills: Vec<(String, u64)>,
    /// Disk fills.
    pub disk_full: u64,
    /// Backend outages.
    pub backend_down: u64,
    /// Corrupted blobs on agents.
    pub corrupt: u64,
    /// Corrupted blobs on origins.
    pub corrupt_origin: u64,
    /// Transient origins that joined and left.
    pub transient_origins: u64,
    /// Origin kills that landed while a push was under way.
    pub origin_kills_mid_push: u64,
    /// Restarts that failed (retried until one worked).
    pub failed_restarts: u64,
}

/// The fault injector.
#[derive(Debug)]
pub struct Injector {
    rng: SplitMix64,
    start: Instant,
    active: Vec<Active>,
    kinds: Vec<Kind>,
    /// The timeline.
    pub events: Vec<Event>,
    /// Counts.
    pub counts: FaultCounts,
    /// Seconds between faults, drawn from this range.
    pub gap_s: (u64, u64),
    /// Seconds a fault lasts, drawn from this range.
    pub hold_s: (u64, u64),
    /// Pushes under way (the workload's count), for origin kills mid-push.
    pub pushes_in_flight: Arc<AtomicUsize>,
}

impl Injector {
    /// An injector for `cluster` (disk full only where it has a tmpfs agent), leaving out
    /// the kinds in `without`.
    pub fn new(cluster: &Cluster, seed: u64, start: Instant, without: &[FaultName]) -> Injector {
        let mut kinds: Vec<Kind> = Role::ALL.iter().map(|r| Kind::Kill(*r)).collect();
        kinds.extend([
            Kind::BackendDown,
            Kind::Corrupt,
            Kind::CorruptOrigin,
            Kind::TransientOrigin,
        ]);
        if cluster.disk_agent().is_some() {
            kinds.push(Kind::DiskFull);
        }
        kinds.retain(|k| !without.iter().any(|w| w.kind() == *k));
        Injector {
            rng: SplitMix64::new(seed),
            start,
            active: Vec::new(),
            kinds,
            events: Vec::new(),
            counts: FaultCounts {
                kills: Role::ALL
                    .iter()
                    .map(|r| (r.name().to_string(), 0))
                    .collect(),
                ..FaultCounts::default()
            },
            gap_s: (3, 10),
            hold_s: (2, 10),
            pushes_in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Adds a line to the timeline (and prints it).
    pub fn log(&mut self, what: String) {
        let at_s = self.start.elapsed().as_secs_f64();
        eprintln!("[{at_s:7.1}s] {what}");
        self.events.push(Event { at_s, what });
    }

    fn draw(&mut self, (lo, hi): (u64, u64)) -> Duration {
        Duration::from_millis(1000 * lo + self.rng.below((hi.saturating_sub(lo) * 1000).max(1)))
    }

    /// The next gap before a fault.
    pub fn next_gap(&mut self) -> Duration {
        self.draw(self.gap_s)
    }

    /// Heals the faults that are due.
    pub fn heal_due(&mut self, cluster: &mut Cluster) {
        let now = Instant::now();
        let due: Vec<Active> = {
            let (due, keep) = std::mem::take(&mut self.active)
                .into_iter()
                .partition(|a| a.heal_at <= now);
            self.active = keep;
            due
        };
        for a in due {
            if let Err(a) = self.heal(cluster, a) {
                // Try again a little later.
                self.active.push(a);
            }
        }
    }

    /// Heals everything now (restarts retried until they work or `limit` passes).
    pub fn heal_all(&mut self, cluster: &mut Cluster, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while !self.active.is_empty() {
            for a in &mut self.active {
                a.heal_at = Instant::now();
            }
            self.heal_due(cluster);
            if Instant::now() > deadline {
                return Err(format!(
                    "could not heal: {}",
                    self.active
                        .iter()
                        .map(|a| a.kind.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !self.active.is_empty() {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Ok(())
    }

    fn heal(&mut self, cluster: &mut Cluster, mut a: Active) -> Result<(), Active> {
        match &mut a.target {
            Target::Node(i) => {
                let name = cluster.nodes[*i].proc.name.clone();
                let started = Instant::now();
                let res = cluster.nodes[*i].proc.start_again();
                match res {
                    Ok(()) => {
                        self.log(format!(
                            "heal {}: {name} restarted (ready in {:.1} s)",
                            a.kind,
                            started.elapsed().as_secs_f64()
                        ));
                    }
                    Err(e) => {
                        cluster.nodes[*i].proc.kill();
                        self.counts.failed_restarts += 1;
                        self.log(format!("heal {}: {name} did not start: {e:#}", a.kind));
                        return Err(a);
                    }
                }
            }
            Target::Ballast(path) => {
                let _ = std::fs::remove_file(&*path);
                self.log(format!("heal {}: removed {}", a.kind, path.display()));
            }
            Target::Moto => {
                cluster.moto.resume();
                self.log(format!("heal {}: moto resumed (SIGCONT)", a.kind));
            }
            Target::Transient(proc) => {
                cluster.transient.remove(proc);
                self.log(format!(
                    "heal {}: SIGKILL {} and wipe its data; it leaves the ring",
                    a.kind, cluster.transient.name
                ));
            }
        }
        Ok(())
    }

    /// Injects one random fault that the active ones allow (none if none fits).
    pub fn inject(&mut self, cluster: &mut Cluster) {
        if self.active.len() >= MAX_ACTIVE {
            return;
        }
        let kind = self.kinds[self.rng.below(self.kinds.len() as u64) as usize];
        if self.active.iter().any(|a| a.kind == kind) {
            return;
        }
        let hold = self.draw(self.hold_s);
        let heal_at = Instant::now() + hold;
        let target = match kind {
            Kind::Kill(role) => {
                let nodes: Vec<usize> = cluster
                    .of(role)
                    .filter(|(_, n)| n.proc.running())
                    .map(|(i, _)| i)
                    .collect();
                if nodes.is_empty() {
                    return;
                }
                let i = nodes[self.rng.below(nodes.len() as u64) as usize];
                let mid_push = role == Role::Origin && self.wait_for_a_push();
                cluster.nodes[i].proc.kill();
                if let Some(c) = self.counts.kills.iter_mut().find(|(r, _)| r == role.name()) {
                    c.1 += 1;
                }
                if mid_push {
                    self.counts.origin_kills_mid_push += 1;
                }
                let name = cluster.nodes[i].proc.name.clone();
                self.log(format!(
                    "{kind}: SIGKILL {name}{} for {:.1} s",
                    if mid_push { " mid-push" } else { "" },
                    hold.as_secs_f64()
                ));
                Target::Node(i)
            }
            Kind::BackendDown => {
                cluster.moto.pause();
                self.counts.backend_down += 1;
                self.log(format!(
                    "{kind}: SIGSTOP moto for {:.1} s",
                    hold.as_secs_f64()
                ));
                Target::Moto
            }
            Kind::DiskFull => {
                let Some(i) = cluster.disk_agent() else {
                    return;
                };
                let path = cluster.nodes[i].data.join("campaign-ballast");
                let written = fill(&path);
                self.counts.disk_full += 1;
                let name = cluster.nodes[i].proc.name.clone();
                self.log(format!(
                    "{kind}: {name}'s file system filled with {} MiB of ballast for {:.1} s",
                    written >> 20,
                    hold.as_secs_f64()
                ));
                Target::Ballast(path)
            }
            Kind::Corrupt => {
                if self.corrupt(cluster, kind, Role::Agent) {
                    self.counts.corrupt += 1;
                }
                return;
            }
            Kind::CorruptOrigin => {
                if self.corrupt(cluster, kind, Role::Origin) {
                    self.counts.corrupt_origin += 1;
                }
                return;
            }
            Kind::TransientOrigin => {
                let started = Instant::now();
                let name = cluster.transient.name.clone();
                match cluster.transient.start(&cluster.kraken) {
                    Ok(proc) => {
                        self.counts.transient_origins += 1;
                        self.log(format!(
                            "{kind}: {name} joins with empty data (ready in {:.1} s) for {:.1} s",
                            started.elapsed().as_secs_f64(),
                            hold.as_secs_f64()
                        ));
                        Target::Transient(Box::new(proc))
                    }
                    Err(e) => {
                        self.log(format!("{kind}: {name} did not start: {e:#}"));
                        return;
                    }
                }
            }
        };
        self.active.push(Active {
            kind,
            target,
            heal_at,
        });
    }
}

impl Injector {
    /// Waits up to [`MID_PUSH_WAIT`] for a push to be under way; whether one is.
    fn wait_for_a_push(&self) -> bool {
        let deadline = Instant::now() + MID_PUSH_WAIT;
        loop {
            if self.pushes_in_flight.load(Ordering::SeqCst) > 0 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Flips a byte of a random complete blob of a random node of `role`; whether one
    /// was flipped.
    fn corrupt(&mut self, cluster: &Cluster, kind: Kind, role: Role) -> bool {
        let nodes: Vec<usize> = cluster.of(role).map(|(i, _)| i).collect();
        if nodes.is_empty() {
            return false;
        }
        let i = nodes[self.rng.below(nodes.len() as u64) as usize];
        let name = cluster.nodes[i].proc.name.clone();
        let blobs = stored_blobs(&cluster.nodes[i].data.join("cas").join("blobs"));
        if blobs.is_empty() {
            return false;
        }
        let path = &blobs[self.rng.below(blobs.len() as u64) as usize];
        match flip_byte(path, &mut self.rng) {
            Ok(at) => {
                let blob = path.file_name().unwrap_or_default().to_string_lossy();
                self.log(format!(
                    "{kind}: flipped byte {at} of {name}'s copy of sha256:{blob}"
                ));
                true
            }
            Err(e) => {
                self.log(format!(
                    "{kind}: {name}: cannot corrupt {}: {e}",
                    path.display()
                ));
                false
            }
        }
    }
}

/// Writes zeros to `path` until the file system is full; the bytes written.
fn fill(path: &Path) -> u64 {
    let Ok(mut f) = std::fs::File::create(path) else {
        return 0;
    };
    let buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = f.sync_all();
    written
}

/// Complete blobs in a CAS's `blobs/<xx>/<hex>` tree.
pub fn stored_blobs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(root) else {
        return out;
    };
    for shard in shards.flatten() {
        if let Ok(files) = std::fs::read_dir(shard.path()) {
            for f in files.flatten() {
                let p = f.path();
                if p.is_file() && p.metadata().is_ok_and(|m| m.len() > 0) {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// Flips every bit of one random byte of `path` in place; its offset.
fn flip_byte(path: &Path, rng: &mut SplitMix64) -> std::io::Result<u64> {
    let at = rng.below(std::fs::metadata(path)?.len());
    flip_bytes(path, [at])?;
    Ok(at)
}
