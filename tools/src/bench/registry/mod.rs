//! `kraken-bench registry`: the registry edge against Debian's `docker-registry`
//! (distribution 2.8), both started by the bench on loopback, both driven by the same
//! `curl` (and `skopeo` for the image), the systems interleaved over several rounds.
//!
//! Each round starts both systems fresh (so kraken's pulls are cold and nothing of an
//! earlier round is cached or stored), writes fresh seeded blobs, and measures, in order:
//!
//! | step | docker-registry | kraken | before it |
//! |---|---|---|---|
//! | `push` | `POST` + `PUT ?digest=` with the blob | the same on the proxy | caches dropped |
//! | `push-chunked` | `POST` + N `PATCH` + `PUT ?digest=` (a second blob) | proxy | caches dropped |
//! | `cold-pull` | `GET` | `GET` on agent 1 (blob only on origins) | settled, caches dropped |
//! | `exchange` | — | agent 1's own download during `cold-pull` (its pull histogram); ratio: the `GET` ÷ it | — |
//! | `second-agent` | — | `GET` on agent 2 right after agent 1 | nothing |
//! | `warm-pull` | `GET` | `GET` on agent 1 | one untimed `GET` on each |
//! | `sendfile-floor` | (its `warm-pull`) | `GET` on the bench's bare `sendfile` server ([`floor`]) | one untimed `GET` |
//! | `range` | ranged `GET` from the middle | the same on agent 1 | nothing (still warm) |
//! | `image` | `skopeo copy` push, then pull into a new layout | proxy, then agent 1 | caches dropped |
//!
//! Before every measurement but `second-agent` the cluster settles (write-back queues
//! empty, the process idle), so kraken's background work never runs inside the other
//! system's measurement or its own next one. The round decides which system goes first
//! (alternating); `cold-pull` keeps agent 1 and agent 2 back to back.
//!
//! - [`janitor`]: processes and directories removed on exit, error or signal.
//! - [`servers`]: starting docker-registry and `kraken dev`; CPU time; settling.
//! - [`curl`]: the push and pull sequences over `curl`; plain HTTP for polling.
//! - [`floor`]: the bare `sendfile` server the warm pull is set against.
//! - [`image`]: the OCI layout and `skopeo copy`.
//! - [`report`]: medians, ranges, ratios; table and JSON.

pub mod curl;
pub mod floor;
pub mod freed_memory;
pub mod image;
pub mod janitor;
pub mod report;
pub mod servers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use kraken_storage::Digest;

use self::curl::{ClientCost, get_checked, get_timed, push_chunked, push_monolithic};
use self::floor::SendfileFloor;
use self::image::{Layout, Skopeo, verify_layers, write_layout};
use self::janitor::ScratchDir;
use self::report::{BenchSetup, Measurement, RegistryReport, Row, Sample};
use self::servers::{DockerRegistry, KrakenDev, kraken_binary, registry_version};
use crate::bench::data::{hash_range, read_once, write_random, write_random_parts};

/// A step to run (`--steps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    /// Monolithic push.
    Push,
    /// Chunked push.
    PushChunked,
    /// First pull (kraken: agent 1, blob only on origins).
    ColdPull,
    /// Agent 2 right after agent 1 (runs cold-pull too).
    SecondAgent,
    /// Pull again, warm.
    WarmPull,
    /// Ranged pull from the middle, warm.
    Range,
    /// skopeo push and pull of an image.
    Image,
}

/// `kraken-bench registry` options.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Size of each blob in MiB.
    #[arg(long, visible_alias = "mib", default_value_t = 1024)]
    pub size_mib: u64,
    /// Rounds; the system measured first alternates.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// PATCH requests of the chunked push.
    #[arg(long, default_value_t = 5)]
    pub chunks: u64,
    /// MiB of the ranged GET (at most half the blob).
    #[arg(long, default_value_t = 100)]
    pub range_mib: u64,
    /// Layers of the image.
    #[arg(long, default_value_t = 10)]
    pub layers: usize,
    /// MiB of each layer [default: 100, or a tenth of --size-mib when that is less, so
    /// that a small run stays small].
    #[arg(long)]
    pub layer_mib: Option<u64>,
    /// Steps to run [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub steps: Vec<Step>,
    /// Longest wait, in seconds, for the cluster to settle before a measurement.
    #[arg(long, default_value_t = 120)]
    pub settle_secs: u64,
    /// Print the whole report as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the whole report as JSON to this file (the table still prints).
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Do not drop page caches between steps (needed when not root; every figure is then
    /// warm-cache, and the report says so).
    #[arg(long)]
    pub no_drop_caches: bool,
    /// Stop this VM handing freed memory back to its host for the run (virtio-balloon
    /// free page reporting; root only; restored afterwards): otherwise a cold read may
    /// land in pages the host took back, at up to ~3 s per GiB more, and which system gets
    /// them depends on the order of the round.
    #[arg(long)]
    pub hold_freed_memory: bool,
    /// The `kraken` binary [default: next to this one].
    #[arg(long, env = "KRAKEN_BIN")]
    pub kraken: Option<PathBuf>,
    /// The docker-registry binary.
    #[arg(long, env = "DOCKER_REGISTRY_BIN", default_value = "docker-registry")]
    pub registry: PathBuf,
    /// Where blobs, stores and logs go [default: $TMPDIR/kraken-bench-registry-<pid>].
    /// On a disk, not tmpfs: dropping page caches must mean reading from the disk.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work dir (logs, stores) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Run even if the disk looks too small for one round.
    #[arg(long)]
    pub no_space_check: bool,
}

/// The repository blobs are pushed to.
const BLOB_REPO: &str = "bench/blob";
/// The repository the image is pushed to.
const IMAGE_REPO: &str = "bench/image";

/// Runs the benchmark.
pub fn run(args: &RegistryArgs) -> anyhow::Result<RegistryReport> {
    janitor::watch_signals();
    let steps = normalized_steps(&args.steps);
    check_args(args, &steps)?;
    let kraken = kraken_binary(args.kraken.as_ref())?;
    let version = registry_version(&args.registry)?;
    let path = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("kraken-bench-registry-{}", std::process::id()))
    });
    let work = ScratchDir::create(path, args.keep)?;
    let held = if args.hold_freed_memory {
        Some(
            freed_memory::hold()
                .context("--hold-freed-memory needs root and a kernel with free page reporting")?,
        )
    } else {
        None
    };
    if !args.no_space_check {
        check_space(work.path(), round_footprint(args, &steps))?;
    }
    let mut bench = Bench {
        args,
        steps,
        kraken,
        work: work.path().to_path_buf(),
        caches: Caches {
            allowed: !args.no_drop_caches,
        },
        floor: SendfileFloor::start()?,
        notes: Vec::new(),
        measurements: Vec::new(),
    };
    let started = std::time::Instant::now();
    for round in 1..=args.rounds {
        let at = std::time::Instant::now();
        bench.round(round)?;
        // Rounds take minutes at the default sizes: say how long, to plan the rest.
        eprintln!(
            "kraken-bench: round {round} of {} took {:.0} s ({:.0} s so far)",
            args.rounds,
            at.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    if !bench.caches.allowed {
        let why = if args.no_drop_caches {
            "page caches were not dropped (--no-drop-caches): figures are warm-cache"
        } else {
            "page caches could not be dropped (not root?): figures are warm-cache"
        };
        bench.notes.push(why.into());
    }
    if held.is_some() {
        bench
            .notes
            .push("freed memory stayed with this VM for the run (--hold-freed-memory)".into());
    } else if bench.caches.allowed && freed_memory::reporting() {
        bench.notes.push(freed_memory::NOTE.into());
    }
    drop(held);
    let setup = BenchSetup {
        blob_bytes: args.size_mib << 20,
        rounds: args.rounds,
        chunks: args.chunks,
        range_bytes: range_of(args.size_mib << 20, args.range_mib << 20).1,
        layers: args.layers,
        layer_bytes: layer_mib(args) << 20,
        registry_version: version,
        kraken: bench.kraken.display().to_string(),
        caches_dropped: bench.caches.allowed,
    };
    Ok(RegistryReport::new(setup, bench.measurements, bench.notes))
}

/// MiB of each image layer: `--layer-mib`, else 100 or a tenth of the blob if less (at
/// least 1).
fn layer_mib(args: &RegistryArgs) -> u64 {
    args.layer_mib
        .unwrap_or_else(|| (args.size_mib / 10).clamp(1, 100))
}

/// The steps asked for (all by default), with `cold-pull` added to `second-agent`.
fn normalized_steps(asked: &[Step]) -> Vec<Step> {
    use clap::ValueEnum;
    let mut steps = if asked.is_empty() {
        Step::value_variants().to_vec()
    } else {
        asked.to_vec()
    };
    if steps.contains(&Step::SecondAgent) && !steps.contains(&Step::ColdPull) {
        steps.push(Step::ColdPull);
    }
    steps
}

fn check_args(args: &RegistryArgs, steps: &[Step]) -> anyhow::Result<()> {
    if args.size_mib == 0 || args.rounds == 0 {
        bail!("--size-mib and --rounds must be at least 1");
    }
    if args.chunks == 0 || args.chunks > args.size_mib << 20 {
        bail!("--chunks must be between 1 and the blob's length");
    }
    if steps.contains(&Step::Image) && (args.layers == 0 || layer_mib(args) == 0) {
        bail!("--layers and --layer-mib must be at least 1");
    }
    let mut tools = vec!["curl", "sync"];
    if steps.contains(&Step::Image) {
        tools.push("skopeo");
    }
    for tool in tools {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            bail!("`{tool}` is not installed");
        }
    }
    Ok(())
}

/// Bytes one round may hold on the disk at once: each blob as source, in the registry,
/// on three origins, in the write-back backend and on up to two agents; the image as
/// source, in both systems (four copies in kraken) and as two pulled layouts.
fn round_footprint(args: &RegistryArgs, steps: &[Step]) -> u64 {
    let blob = args.size_mib << 20;
    let image = if steps.contains(&Step::Image) {
        args.layers as u64 * (layer_mib(args) << 20)
    } else {
        0
    };
    (14 * blob + 9 * image) / 10 * 11
}

/// Fails if the filesystem of `dir` has less than `need` bytes free.
fn check_space(dir: &Path, need: u64) -> anyhow::Result<()> {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .context("cannot run df")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let avail: Option<u64> = text.lines().nth(1).and_then(|l| l.trim().parse().ok());
    match avail {
        Some(a) if a < need => bail!(
            "{} has {:.1} GiB free, a round needs about {:.1} GiB \
             (smaller --size-mib/--layer-mib, or --no-space-check)",
            dir.display(),
            a as f64 / f64::from(1 << 30),
            need as f64 / f64::from(1 << 30)
        ),
        _ => Ok(()),
    }
}

/// The ranged GET: inclusive `(first, len)` of `want` bytes (at most half) mid-blob.
fn range_of(blob: u64, want: u64) -> (u64, u64) {
    let len = want.min(blob / 2).max(1);
    ((blob - len) / 2, len)
}

/// Page caches: `sync`, then `3` into `/proc/sys/vm/drop_caches` (root only). Without the
/// right, one warning and the run goes on warm; `--no-drop-caches` starts it warm.
#[derive(Debug)]
struct Caches {
    allowed: bool,
}

impl Default for Caches {
    fn default() -> Self {
        Caches { allowed: true }
    }
}

impl Caches {
    fn drop_all(&mut self) {
        let _ = Command::new("sync").status();
        if !self.allowed {
            return;
        }
        if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
            eprintln!("kraken-bench: cannot drop page caches ({e}); going on with warm caches");
            self.allowed = false;
        }
    }
}

/// What a measurement is preceded by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prep {
    /// The cluster settles, then page caches are dropped.
    Cold,
    /// The cluster settles; caches stay.
    Warm,
    /// Nothing: right after the previous measurement.
    RightAfter,
}

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sys {
    Registry,
    Kraken,
    /// The bench's bare `sendfile` server.
    Floor,
}

/// Which round, and whether kraken is measured first in it (every other round).
#[derive(Debug, Clone, Copy)]
struct Turn {
    round: usize,
    kraken_first: bool,
}

/// Both systems of one round.
struct Systems {
    registry: DockerRegistry,
    kraken: KrakenDev,
}

/// The blob pulls and the monolithic push use.
struct Blob {
    path: PathBuf,
    digest: Digest,
    len: u64,
    /// Inclusive first and last byte of the ranged GET.
    range: (u64, u64),
    range_digest: Digest,
}

/// The run in progress.
struct Bench<'a> {
    args: &'a RegistryArgs,
    steps: Vec<Step>,
    kraken: PathBuf,
    work: PathBuf,
    caches: Caches,
    floor: SendfileFloor,
    notes: Vec<String>,
    measurements: Vec<Measurement>,
}

/// A measurement's work: the client's cost.
type Work<'f> = Box<dyn FnOnce() -> anyhow::Result<ClientCost> + 'f>;

impl Bench<'_> {
    fn has(&self, step: Step) -> bool {
        self.steps.contains(&step)
    }

    /// One round: fresh systems, fresh blobs, every step, all removed afterwards.
    fn round(&mut self, round: usize) -> anyhow::Result<()> {
        let dir = ScratchDir::create(self.work.join(format!("round-{round}")), false)?;
        let d = dir.path();
        for sub in ["registry", "kraken", "blobs"] {
            std::fs::create_dir(d.join(sub))?;
        }
        let sys = Systems {
            registry: DockerRegistry::start(&self.args.registry, &d.join("registry"))?,
            kraken: KrakenDev::start(&self.kraken, &d.join("kraken"))?,
        };
        let turn = Turn {
            round,
            kraken_first: round.is_multiple_of(2),
        };
        let pulls = [Step::ColdPull, Step::WarmPull, Step::Range];
        let blob = if self.has(Step::Push) || pulls.iter().any(|&s| self.has(s)) {
            let blob = self.blob(&d.join("blobs"), round)?;
            self.push_step(&sys, turn, &blob)?;
            Some(blob)
        } else {
            None
        };
        if self.has(Step::PushChunked) {
            self.chunked_step(&sys, turn, &d.join("blobs"))?;
        }
        if let Some(blob) = blob {
            self.pull_steps(&sys, turn, &blob)?;
            std::fs::remove_file(&blob.path)?;
        }
        if self.has(Step::Image) {
            self.image_steps(&sys, turn, d)?;
        }
        sys.kraken.stop();
        sys.registry.stop();
        Ok(())
    }

    /// Writes the round's blob and the digest of its middle range.
    fn blob(&self, dir: &Path, round: usize) -> anyhow::Result<Blob> {
        let len = self.args.size_mib << 20;
        let path = dir.join("blob");
        let digest = write_random(&path, len, seed(round, 0, 0))?;
        read_once(&path)?;
        let (first, range_len) = range_of(len, self.args.range_mib << 20);
        let range_digest = hash_range(&path, first, range_len)?;
        Ok(Blob {
            path,
            digest,
            len,
            range: (first, first + range_len - 1),
            range_digest,
        })
    }

    /// Measures one system: prepares as `prep` says, runs `work`, reads CPU around it.
    fn measure(
        &mut self,
        sys: &Systems,
        which: Sys,
        prep: Prep,
        what: &str,
        work: Work<'_>,
    ) -> anyhow::Result<Sample> {
        if prep != Prep::RightAfter {
            let limit = Duration::from_secs(self.args.settle_secs);
            let settled = sys.kraken.settle(limit);
            if settled.timed_out {
                let note = format!("{what}: the cluster had not settled after {limit:?}");
                eprintln!("kraken-bench: {note}");
                self.notes.push(note);
            }
        }
        if prep == Prep::Cold {
            self.caches.drop_all();
        }
        let floor = &self.floor;
        let cpu = || {
            (
                sys.registry.cpu_secs(),
                sys.kraken.cpu_secs(),
                floor.cpu_secs(),
            )
        };
        let (r0, k0, f0) = cpu();
        let cost = work().with_context(|| what.to_string())?;
        let (r1, k1, f1) = cpu();
        eprintln!("kraken-bench: {what}: {:.2} s", cost.secs);
        let (r, k, f) = (r1 - r0, k1 - k0, f1 - f0);
        let (server, other) = match which {
            Sys::Registry => (r, k),
            Sys::Kraken => (k, r),
            Sys::Floor => (f, r + k),
        };
        Ok(Sample {
            secs: cost.secs,
            ttfb_s: cost.ttfb_s,
            server_cpu_s: server,
            client_cpu_s: cost.cpu_s,
            idle_cpu_s: other,
        })
    }

    /// Measures the same client `work` on both systems (`targets`: the registry's, then
    /// kraken's) in the round's order and records the step; returns the registry's sample.
    fn pair(
        &mut self,
        sys: &Systems,
        (row, turn, prep): (Row, Turn, Prep),
        [registry, kraken]: [&str; 2],
        work: &dyn Fn(&str) -> anyhow::Result<ClientCost>,
    ) -> anyhow::Result<Sample> {
        let mut one = |which: Sys, target: &str| {
            let name = if which == Sys::Kraken {
                "kraken"
            } else {
                "registry"
            };
            let what = format!("round {}, {} ({name})", turn.round, row.name());
            self.measure(sys, which, prep, &what, Box::new(|| work(target)))
        };
        let (r, k) = if turn.kraken_first {
            let k = one(Sys::Kraken, kraken)?;
            (one(Sys::Registry, registry)?, k)
        } else {
            let r = one(Sys::Registry, registry)?;
            (r, one(Sys::Kraken, kraken)?)
        };
        self.record(row, turn, Some(r), k, r.secs);
        Ok(r)
    }

    fn record(
        &mut self,
        row: Row,
        turn: Turn,
        registry: Option<Sample>,
        kraken: Sample,
        registry_secs: f64,
    ) {
        self.measurements.push(Measurement {
            row,
            round: turn.round,
            kraken_first: turn.kraken_first,
            registry,
            kraken,
            ratio: (registry_secs > 0.0).then(|| kraken.secs / registry_secs),
        });
    }

    /// `push` (or, without it, the same pushes untimed, for the pulls).
    fn push_step(&mut self, sys: &Systems, turn: Turn, blob: &Blob) -> anyhow::Result<()> {
        let reg = &sys.registry.base;
        let proxy = &sys.kraken.proxy;
        let push = |base: &str| push_monolithic(base, BLOB_REPO, &blob.path, &blob.digest);
        if !self.has(Step::Push) {
            push(reg)?;
            push(proxy)?;
            return Ok(());
        }
        self.pair(sys, (Row::Push, turn, Prep::Cold), [reg, proxy], &push)
            .map(drop)
    }

    /// `push-chunked` with a second blob written as its chunks.
    fn chunked_step(&mut self, sys: &Systems, turn: Turn, dir: &Path) -> anyhow::Result<()> {
        let len = self.args.size_mib << 20;
        let n = self.args.chunks;
        let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("chunk-{i}"))).collect();
        let sizes = (0..n).map(|i| len / n + u64::from(i < len % n));
        let parts: Vec<(&Path, u64)> = paths.iter().map(PathBuf::as_path).zip(sizes).collect();
        let digest = write_random_parts(&parts, seed(turn.round, 1, 0))?;
        for path in &paths {
            read_once(path)?;
        }
        let files: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let push = |base: &str| push_chunked(base, BLOB_REPO, &files, &digest);
        let (reg, proxy) = (&sys.registry.base, &sys.kraken.proxy);
        self.pair(
            sys,
            (Row::PushChunked, turn, Prep::Cold),
            [reg, proxy],
            &push,
        )?;
        for p in &paths {
            std::fs::remove_file(p)?;
        }
        Ok(())
    }

    /// `cold-pull` (with `second-agent` right after agent 1), `warm-pull`, `range`.
    fn pull_steps(&mut self, sys: &Systems, turn: Turn, blob: &Blob) -> anyhow::Result<()> {
        let url = |base: &str| format!("{base}/v2/{BLOB_REPO}/blobs/{}", blob.digest);
        let reg = url(&sys.registry.base);
        let (a1, a2) = (url(&sys.kraken.agents[0]), url(&sys.kraken.agents[1]));
        // Timed into /dev/null; every URL's bytes are checked by an untimed GET after.
        let get = |u: &str| get_timed(u, None, blob.len);
        let check = |u: &str| get_checked(u, None, &blob.digest, blob.len).map(drop);
        if self.has(Step::ColdPull) {
            self.cold_pulls(sys, turn, [&reg, &a1, &a2], &get)?;
            if self.has(Step::SecondAgent) {
                check(&a2)?;
            }
        }
        // Checks what the cold pulls delivered and warms both for `warm-pull`. Without
        // `cold-pull`, agent 1's first `GET` is its download (its bytes reach the client
        // from memory as they land, the file itself unread): a second one warms it.
        check(&reg)?;
        check(&a1)?;
        if !self.has(Step::ColdPull) {
            check(&a1)?;
        }
        if self.has(Step::WarmPull) {
            // The floor goes first in odd rounds, last in even ones, as the pair alternates.
            let floor_url = self.warm_floor(blob)?;
            let floor_first = turn.round % 2 == 1;
            let mut floor = None;
            if floor_first {
                floor = Some(self.floor_pull(sys, turn, &floor_url, blob.len)?);
            }
            let step = (Row::WarmPull, turn, Prep::Warm);
            let registry = self.pair(sys, step, [&reg, &a1], &get)?;
            let floor = match floor {
                Some(f) => f,
                None => self.floor_pull(sys, turn, &floor_url, blob.len)?,
            };
            // The floor's ratio is against the registry's warm `GET` of this round.
            self.record(
                Row::SendfileFloor,
                turn,
                Some(registry),
                floor,
                registry.secs,
            );
        }
        if self.has(Step::Range) {
            let (first, last) = blob.range;
            let len = last - first + 1;
            let ranged = |u: &str| get_timed(u, Some(blob.range), len);
            let step = (Row::Range, turn, Prep::RightAfter);
            self.pair(sys, step, [&reg, &a1], &ranged)?;
            for u in [&reg, &a1] {
                get_checked(u, Some(blob.range), &blob.range_digest, len)?;
            }
        }
        Ok(())
    }

    /// The registry's cold GET and agent 1's, agent 2's right after agent 1's.
    fn cold_pulls(
        &mut self,
        sys: &Systems,
        turn: Turn,
        [reg, a1, a2]: [&str; 3],
        get: &dyn Fn(&str) -> anyhow::Result<ClientCost>,
    ) -> anyhow::Result<()> {
        let what = |s: &str| format!("round {}, cold-pull ({s})", turn.round);
        let mut r = None;
        if !turn.kraken_first {
            r = Some(self.measure(
                sys,
                Sys::Registry,
                Prep::Cold,
                &what("registry"),
                Box::new(|| get(reg)),
            )?);
        }
        // A `kraken` that does not count registry GETs as pulls (older builds) gets no
        // `exchange` row.
        let pulls = sys.kraken.agent1_pulls().ok();
        let k1 = self.measure(
            sys,
            Sys::Kraken,
            Prep::Cold,
            &what("agent 1"),
            Box::new(|| get(a1)),
        )?;
        // The agent commits just after the last byte went to the client.
        let exchange = pulls.and_then(|before| {
            sys.kraken
                .agent1_pull_after(before, Duration::from_secs(10))
                .map_err(|e| eprintln!("kraken-bench: no exchange row this round: {e:#}"))
                .ok()
        });
        let k2 = if self.has(Step::SecondAgent) {
            let w = format!("round {}, second-agent", turn.round);
            Some(self.measure(sys, Sys::Kraken, Prep::RightAfter, &w, Box::new(|| get(a2)))?)
        } else {
            None
        };
        let r = match r {
            Some(r) => r,
            None => self.measure(
                sys,
                Sys::Registry,
                Prep::Cold,
                &what("registry"),
                Box::new(|| get(reg)),
            )?,
        };
        self.record(Row::ColdPull, turn, Some(r), k1, r.secs);
        if let Some(exchange) = exchange {
            self.record_exchange(turn, exchange, k1.secs);
        }
        if let Some(k2) = k2 {
            self.record(Row::SecondAgent, turn, None, k2, r.secs);
        }
        Ok(())
    }

    /// Points the bare `sendfile` server at the bench's copy of the blob and warms it with
    /// one untimed `GET`, which also checks what it sends. Returns its URL.
    fn warm_floor(&self, blob: &Blob) -> anyhow::Result<String> {
        self.floor.serve_file(&blob.path)?;
        let url = format!("{}/v2/{BLOB_REPO}/blobs/{}", self.floor.base, blob.digest);
        get_checked(&url, None, &blob.digest, blob.len).context("the sendfile floor")?;
        Ok(url)
    }

    /// One timed warm `GET` from the bare `sendfile` server.
    fn floor_pull(
        &mut self,
        sys: &Systems,
        turn: Turn,
        url: &str,
        len: u64,
    ) -> anyhow::Result<Sample> {
        let what = format!("round {}, sendfile-floor", turn.round);
        let get = || get_timed(url, None, len);
        self.measure(sys, Sys::Floor, Prep::Warm, &what, Box::new(get))
    }

    /// Agent 1's own download time of the blob its cold `GET` took `get_secs`.
    fn record_exchange(&mut self, turn: Turn, exchange: f64, get_secs: f64) {
        self.measurements.push(Measurement {
            row: Row::Exchange,
            round: turn.round,
            kraken_first: turn.kraken_first,
            registry: None,
            kraken: Sample {
                secs: exchange,
                ttfb_s: None,
                server_cpu_s: 0.0,
                client_cpu_s: 0.0,
                idle_cpu_s: 0.0,
            },
            ratio: (exchange > 0.0).then(|| get_secs / exchange),
        });
    }

    /// `image`: the same layout pushed to each system with skopeo, then pulled from each
    /// into a new layout and checked.
    fn image_steps(&mut self, sys: &Systems, turn: Turn, dir: &Path) -> anyhow::Result<()> {
        let layout = write_layout(
            &dir.join("image"),
            self.args.layers,
            layer_mib(self.args) << 20,
            seed(turn.round, 2, 0),
        )?;
        let skopeo = Skopeo::new(dir)?;
        let reg = host_port(&sys.registry.base);
        let (proxy, agent) = (
            host_port(&sys.kraken.proxy),
            host_port(&sys.kraken.agents[0]),
        );
        let push = |to: &str| skopeo.push(&layout, to, IMAGE_REPO);
        self.pair(sys, (Row::ImagePush, turn, Prep::Cold), [reg, proxy], &push)?;
        let pulled = dir.join("pulled");
        let pull = |from: &str| pull_checked(&skopeo, &layout, from, &pulled);
        self.pair(sys, (Row::ImagePull, turn, Prep::Cold), [reg, agent], &pull)?;
        std::fs::remove_dir_all(&layout.dir)?;
        Ok(())
    }
}

/// Pulls the image into `into`, checks its layers, removes it.
fn pull_checked(
    skopeo: &Skopeo,
    image: &Layout,
    from: &str,
    into: &Path,
) -> anyhow::Result<ClientCost> {
    let cost = skopeo.pull(from, IMAGE_REPO, into)?;
    verify_layers(into, image).with_context(|| format!("the image pulled from {from}"))?;
    std::fs::remove_dir_all(into)?;
    Ok(cost)
}

/// `HOST:PORT` of an `http://HOST:PORT` base.
fn host_port(base: &str) -> &str {
    base.trim_start_matches("http://")
}

/// The seed of item `i` of kind `kind` (0: the blob, 1: the chunked blob, 2: the image's
/// layers) in `round`: every round's digests are new.
fn seed(round: usize, kind: u64, i: u64) -> u64 {
    0x6b72_616b_656e_0000 ^ ((round as u64) << 32) ^ (kind << 24) ^ i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_stay_inside_and_in_the_middle() {
        assert_eq!(
            range_of(1 << 30, 100 << 20),
            ((1024 - 100) << 20 >> 1, 100 << 20)
        );
        // A small blob gets half of it.
        assert_eq!(range_of(8 << 20, 100 << 20), (2 << 20, 4 << 20));
        assert_eq!(range_of(1, 100), (0, 1));
    }

    #[test]
    fn second_agent_brings_cold_pull_and_defaults_are_all() {
        assert_eq!(normalized_steps(&[]).len(), 7);
        assert_eq!(
            normalized_steps(&[Step::SecondAgent]),
            vec![Step::SecondAgent, Step::ColdPull]
        );
        let seeds: std::collections::BTreeSet<u64> = (1..=5)
            .flat_map(|r| [seed(r, 0, 0), seed(r, 1, 0), seed(r, 2, 0), seed(r, 2, 1)])
            .collect();
        assert_eq!(seeds.len(), 20);
    }

    #[test]
    fn the_space_check_refuses_the_impossible() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_space(dir.path(), u64::MAX).is_err());
        check_space(dir.path(), 1).unwrap();
    }
}
