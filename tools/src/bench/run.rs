//! One benchmark run, start to finish: network up, cluster up, blob pushed (or, with
//! `--source upstream`, put into a registry the origin reads through: [`super::upstream`]),
//! every agent pulls at once (with a fault, if asked), bytes checked on disk, then the
//! plain-HTTP baseline on the same hosts, then the simulator on the same setup, and the
//! report.
//!
//! Teardown is by ownership: [`Testnet`], [`Cluster`] and [`WorkDir`] clean up on drop, so
//! an error or panic anywhere still removes namespaces, processes and files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use kraken_client::proto::DEFAULT_NAMESPACE;
use kraken_storage::{Digest, DigestAlgorithm, PieceLengthTable};

use super::baseline;
use super::cluster::{ClientTls, Cluster, ClusterConfig, Discovery};
use super::ctl::AgentPull;
use super::data::write_random;
use super::netns::{NetConfig, Rate, Testnet, check_prerequisites};
use super::report::{
    Bound, HostResult, PhaseReport, RunReport, Setup, SimFigure, Targets, UpstreamFigure,
};
use super::simnet::{SimSetup, simulate};
use super::upstream::{UPSTREAM_REPO, Upstream};

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL origin 1 (of 2) 40% of T_min into the distribution.
    OriginKill,
    /// One agent pulls first, then its stored blob is corrupted on disk, then the rest
    /// pull and must reject its pieces.
    CorruptAgent,
    /// SIGKILL agent 1 40% of T_min in, restart it 2 s later, ask it again.
    AgentRestart,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::OriginKill => "origin-kill",
            Fault::CorruptAgent => "corrupt-agent",
            Fault::AgentRestart => "agent-restart",
        }
    }
}

/// Where the origins get the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Source {
    /// Pushed to its origin before the pulls.
    #[default]
    Push,
    /// Read through by the origin, on the first pull, from a docker-registry on the
    /// origin's host that holds it (one origin).
    Upstream,
}

/// `kraken-bench run` options.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Agents (one per host).
    #[arg(long, default_value_t = 10)]
    pub agents: usize,
    /// Origins (one per host); origin-kill needs at least 2 and raises it to 2.
    #[arg(long, default_value_t = 1)]
    pub origins: usize,
    /// Every host's rate, both ways (`100mbit`).
    #[arg(long, default_value = "100mbit")]
    pub rate: Rate,
    /// Blob size in MiB.
    #[arg(long, default_value_t = 200)]
    pub size_mib: u64,
    /// Piece length in KiB the origins cut the blob into [default: the node's table].
    #[arg(long)]
    pub piece_kib: Option<u64>,
    /// Pieces each agent sends at once [default: the node's].
    #[arg(long)]
    pub upload_slots: Option<usize>,
    /// Pieces each origin sends at once [default: the node's].
    #[arg(long)]
    pub origin_upload_slots: Option<usize>,
    /// Fault to inject.
    #[arg(long, value_enum)]
    pub fault: Option<Fault>,
    /// Where the origin gets the blob.
    #[arg(long, value_enum, default_value_t = Source::Push)]
    pub source: Source,
    /// How nodes find peers: written as `[discovery] mode` into the origins' and agents'
    /// configs; `dht` starts no tracker [default: no `[discovery]` section, the node's
    /// default, tracker].
    #[arg(long, value_enum)]
    pub discovery: Option<Discovery>,
    /// The docker-registry binary (`--source upstream`).
    #[arg(long, env = "DOCKER_REGISTRY_BIN", default_value = "docker-registry")]
    pub registry: PathBuf,
    /// Skip the plain-HTTP baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Skip the simnet calibration.
    #[arg(long)]
    pub no_simnet: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also draw the completion CDFs (kraken, baseline, simnet, T_min) as SVG here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// The `kraken` binary [default: next to this one].
    #[arg(long, env = "KRAKEN_BIN")]
    pub kraken: Option<PathBuf>,
    /// The `simnet` binary [default: next to this one].
    #[arg(long, env = "SIMNET_BIN")]
    pub simnet: Option<PathBuf>,
    /// Where to put stores, configs and logs [default: /dev/shm/kraken-bench-<pid>].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work dir (logs) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Namespace prefix.
    #[arg(long, default_value = "kb")]
    pub prefix: String,
}

impl RunArgs {
    /// The smoke run: 1 origin + 2 agents at 100 Mbit/s, 20 MiB, with the baseline.
    pub fn smoke() -> RunArgs {
        RunArgs {
            agents: 2,
            origins: 1,
            rate: Rate {
                bits_per_sec: 100_000_000,
            },
            size_mib: 20,
            piece_kib: None,
            upload_slots: None,
            origin_upload_slots: None,
            fault: None,
            source: Source::Push,
            discovery: None,
            registry: "docker-registry".into(),
            no_baseline: false,
            no_simnet: true,
            json: false,
            svg: None,
            kraken: None,
            simnet: None,
            work_dir: None,
            keep: false,
            prefix: "kbs".into(),
        }
    }
}

/// A directory removed on drop unless kept.
#[derive(Debug)]
pub struct WorkDir {
    /// The path.
    pub path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kraken-bench: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A binary next to this one (`target/<profile>/NAME`).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no exe dir")?;
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no `{name}` binary next to {} (build it, or pass its path)",
        exe.display()
    )
}

/// The seed of the blob a run distributes (the same bytes every run, as before seeds).
const RUN_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// sha256 of a file; `None` if it cannot be read.
pub fn hash_path(path: &Path) -> Option<Digest> {
    let file = std::fs::File::open(path).ok()?;
    Digest::of_reader(DigestAlgorithm::Sha256, file)
        .ok()
        .map(|(digest, _)| digest)
}

/// The control client: `kraken-bench ctl …` run in the control namespace.
struct Ctl<'a> {
    net: &'a Testnet,
    tls: ClientTls,
    seed: SocketAddr,
}

impl Ctl<'_> {
    /// Runs `kraken-bench ctl ARGS` and parses the JSON it prints.
    fn call<T: serde::de::DeserializeOwned>(&self, args: &[String]) -> anyhow::Result<T> {
        let exe = std::env::current_exe()?;
        let tls = &self.tls;
        let out = Command::new("ip")
            .args(["netns", "exec", &self.net.ctl_ns()])
            .arg(exe)
            .args(["ctl", "--seed", &self.seed.to_string(), "--ca"])
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run the control client")?;
        if !out.status.success() {
            bail!(
                "ctl {} failed: {}",
                args.first().map_or("", String::as_str),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "ctl printed {:?}",
                String::from_utf8_lossy(&out.stdout).trim()
            )
        })
    }

    /// `pull --digest DIGEST --namespace NS --agent A…` plus `extra`: the agents' pulls,
    /// in order.
    fn pull(
        &self,
        plan: &Plan,
        agents: impl IntoIterator<Item = SocketAddr>,
        extra: &[String],
    ) -> anyhow::Result<Vec<AgentPull>> {
        let mut args = vec![
            "pull".into(),
            "--digest".into(),
            plan.digest.to_string(),
            "--namespace".into(),
            plan.namespace.into(),
        ];
        for agent in agents {
            args.extend(["--agent".into(), agent.to_string()]);
        }
        args.extend_from_slice(extra);
        self.call(&args)
    }
}

/// Flips one byte in every `stride` bytes of `path`, in place.
fn corrupt_file(path: &Path, stride: u64) -> anyhow::Result<u64> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .len();
    let offsets = (stride / 2..len).step_by(stride.max(1) as usize);
    crate::bench::data::flip_bytes(path, offsets)
        .with_context(|| format!("cannot corrupt {}", path.display()))
}

/// The shape of one run, fixed before anything starts.
struct Plan {
    /// Origins (origin-kill needs two).
    origins: usize,
    blob_len: u64,
    /// The piece length asked for (`None`: the node's table).
    piece_length: Option<u64>,
    digest: Digest,
    /// The namespace agents pull it in (the upstream's repository, if it comes from one).
    namespace: &'static str,
    bound: Bound,
    /// When a kill fault strikes, after the pulls start.
    fault_at: Duration,
}

impl Plan {
    /// Whether `path` holds the blob.
    fn verify(&self, path: &Path) -> bool {
        hash_path(path) == Some(self.digest)
    }

    fn piece_length(&self) -> u64 {
        self.piece_length
            .unwrap_or(default_piece_length(self.blob_len))
    }
}

/// Runs the benchmark and returns its report.
pub fn run(args: &RunArgs) -> anyhow::Result<RunReport> {
    check_prerequisites()?;
    let origins = check_args(args)?;
    let kraken = match &args.kraken {
        Some(p) => p.clone(),
        None => sibling("kraken")?,
    };
    let work = WorkDir::create(args)?;
    let blob_dir = work.path.join("blob");
    let (blob, plan) = write_and_plan(args, origins, &blob_dir)?;

    let mut net = Testnet::up(NetConfig {
        prefix: args.prefix.clone(),
        subnet: [10, 78, 0],
        hosts: origins + args.agents,
        rate: Some(args.rate),
    })?;
    let upstream = match args.source {
        Source::Push => None,
        Source::Upstream => Some(Upstream::start(
            &args.registry,
            &net.host_ns(1),
            &work.path.join("upstream"),
            &blob,
            &plan.digest,
        )?),
    };
    let mut cluster = Cluster::start(
        &net,
        &ClusterConfig {
            kraken,
            work_dir: work.path.clone(),
            origins,
            agents: args.agents,
            piece_length: plan.piece_length,
            upload_slots: args.upload_slots,
            origin_upload_slots: args.origin_upload_slots,
            upstream: upstream.as_ref().map(|u| u.url().to_string()),
            discovery: args.discovery,
        },
    )?;
    let ctl = Ctl {
        net: &net,
        tls: cluster.client_tls.clone(),
        seed: SocketAddr::from((net.host_addr(1), 7600)),
    };
    wait_view(&ctl, &plan, &cluster)?;
    if upstream.is_none() {
        push(&ctl, &plan, &blob)?;
    }
    let mut notes = Vec::new();
    let measured = pull_corrupt_agent_first(args, &ctl, &cluster, &plan, &mut notes)?;
    let kraken_phase = distribute(args, &ctl, &mut cluster, &plan, &measured, &mut notes)?;
    let upstream = upstream.map(|u| upstream_figure(u, &plan)).transpose()?;
    cluster.stop();
    drop(cluster);

    let baseline = if args.no_baseline || args.fault.is_some() {
        None
    } else {
        Some(baseline_phase(
            &net, &plan, &measured, &blob_dir, &work.path,
        )?)
    };
    net.down()?;
    let simnet = if args.no_simnet {
        None
    } else {
        Some(simnet_phase(args, &plan, &work.path, &kraken_phase)?)
    };
    let phases = Phases {
        kraken: kraken_phase,
        baseline,
        simnet,
        upstream,
    };
    report(args, plan, phases, notes)
}

/// What the upstream served during the run; stops it.
fn upstream_figure(upstream: Upstream, plan: &Plan) -> anyhow::Result<UpstreamFigure> {
    let served = upstream.served(&plan.digest)?;
    let figure = UpstreamFigure {
        registry_version: upstream.version.clone(),
        served_bytes: served,
        served_blobs: served as f64 / plan.blob_len as f64,
    };
    upstream.stop();
    Ok(figure)
}

/// Rejects runs that cannot work; returns the number of origins.
fn check_args(args: &RunArgs) -> anyhow::Result<usize> {
    let mut origins = args.origins.max(1);
    if args.fault == Some(Fault::OriginKill) {
        origins = origins.max(2);
    }
    if args.agents < 2 {
        bail!("need at least 2 agents");
    }
    if args.fault == Some(Fault::CorruptAgent) && args.agents < 3 {
        bail!("corrupt-agent needs at least 3 agents");
    }
    if args.source == Source::Upstream && origins > 1 {
        bail!("--source upstream runs the registry on the one origin's host: use 1 origin");
    }
    Ok(origins)
}

impl WorkDir {
    /// `--work-dir`, else a fresh directory in /dev/shm (or the temp dir).
    fn create(args: &RunArgs) -> anyhow::Result<WorkDir> {
        let path = args.work_dir.clone().unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            let root = if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            };
            root.join(format!("kraken-bench-{}", std::process::id()))
        });
        std::fs::create_dir_all(&path)?;
        Ok(WorkDir {
            path,
            keep: args.keep,
        })
    }
}

/// Writes the blob into `blob_dir`; returns its path and the run's plan.
fn write_and_plan(
    args: &RunArgs,
    origins: usize,
    blob_dir: &Path,
) -> anyhow::Result<(PathBuf, Plan)> {
    let blob_len = args.size_mib << 20;
    std::fs::create_dir_all(blob_dir)?;
    let blob = blob_dir.join("blob");
    let digest = write_random(&blob, blob_len, RUN_SEED)?;
    let rate = args.rate.bytes_per_sec();
    let bound = Bound::compute(
        blob_len as f64,
        rate * origins as f64,
        rate,
        args.agents,
        rate * args.agents as f64,
    );
    let fault_at = Duration::from_secs_f64(bound.t_min_s * 0.4);
    let plan = Plan {
        origins,
        blob_len,
        piece_length: args.piece_kib.map(|k| k << 10),
        digest,
        namespace: match args.source {
            Source::Push => DEFAULT_NAMESPACE,
            Source::Upstream => UPSTREAM_REPO,
        },
        bound,
        fault_at,
    };
    Ok((blob, plan))
}

/// Waits for the origins and the tracker (if one runs) to be in the seed's view and every
/// agent's.
fn wait_view(ctl: &Ctl<'_>, plan: &Plan, cluster: &Cluster) -> anyhow::Result<()> {
    let mut args = vec![
        "wait-view".into(),
        "--origins".into(),
        plan.origins.to_string(),
        "--trackers".into(),
        usize::from(cluster.tracker.is_some()).to_string(),
    ];
    for agent in cluster.agent_addrs() {
        args.extend(["--agent".into(), agent.to_string()]);
    }
    let _: serde_json::Value = ctl.call(&args)?;
    Ok(())
}

/// Pushes the blob to its origin.
fn push(ctl: &Ctl<'_>, plan: &Plan, blob: &Path) -> anyhow::Result<()> {
    let pushed: serde_json::Value = ctl.call(&["push".into(), blob.display().to_string()])?;
    let digest = plan.digest;
    if pushed["digest"].as_str() != Some(digest.to_string().as_str()) {
        bail!("pushed {pushed}, expected {digest}");
    }
    Ok(())
}

/// The agents that are measured: all but the corrupt one. With the corrupt-agent fault,
/// the last agent pulls first and then its stored blob is corrupted.
fn pull_corrupt_agent_first(
    args: &RunArgs,
    ctl: &Ctl<'_>,
    cluster: &Cluster,
    plan: &Plan,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<usize>> {
    let mut measured: Vec<usize> = (0..args.agents).collect();
    if args.fault != Some(Fault::CorruptAgent) {
        return Ok(measured);
    }
    let bad = args.agents - 1;
    measured.retain(|&i| i != bad);
    let first = ctl.pull(plan, [cluster.agents[bad].quic], &[])?;
    if first.first().and_then(|p| p.secs).is_none() {
        bail!("the agent to corrupt could not pull first: {first:?}");
    }
    let path = cluster.agent_blob_path(bad, &plan.digest.hex());
    let flipped = corrupt_file(&path, 256 << 10)?;
    notes.push(format!(
        "{} pulled first, then {flipped} bytes of its stored blob were flipped (one per 256 KiB)",
        cluster.agents[bad].name
    ));
    Ok(measured)
}

/// The measured agents pull at once (with the kill fault, if asked, striking meanwhile);
/// what each got, the origins' egress and the cluster's CPU time.
fn distribute(
    args: &RunArgs,
    ctl: &Ctl<'_>,
    cluster: &mut Cluster,
    plan: &Plan,
    measured: &[usize],
    notes: &mut Vec<String>,
) -> anyhow::Result<PhaseReport> {
    let net = ctl.net;
    let origin_egress = || -> u64 {
        (1..=plan.origins)
            .map(|h| net.tx_bytes(h).unwrap_or(0))
            .sum()
    };
    let tx0 = origin_egress();
    let cpu0 = cluster.cpu_secs();
    let agents: Vec<SocketAddr> = measured.iter().map(|&i| cluster.agents[i].quic).collect();
    // A stalled swarm fails the run instead of hanging it.
    let limit = ((plan.bound.t_min_s * 10.0 + 60.0) as u64).to_string();
    let mut extra = vec!["--timeout-secs".into(), limit.clone()];
    if args.fault == Some(Fault::AgentRestart) {
        extra.extend(["--retry-secs".into(), limit]);
    }
    let pulls = std::thread::scope(|s| -> anyhow::Result<Vec<AgentPull>> {
        let fault = args
            .fault
            .and_then(|f| strike(s, f, cluster, plan.fault_at));
        let r = ctl.pull(plan, agents, &extra);
        if let Some(Ok(n)) = fault.map(|h| h.join()) {
            notes.push(n);
        }
        r
    })?;
    let cpu = cluster.cpu_secs() - cpu0;
    let egress = origin_egress().saturating_sub(tx0);
    let hosts: Vec<HostResult> = pulls
        .iter()
        .zip(measured)
        .map(|(p, &i)| {
            let r = p.report.as_ref();
            HostResult {
                name: cluster.agents[i].name.clone(),
                secs: p.secs,
                verified: plan.verify(&cluster.agent_blob_path(i, &plan.digest.hex())),
                bytes_from_agents: r.map_or(0, |r| r.bytes_from_agents),
                bytes_from_origins: r.map_or(0, |r| r.bytes_from_origins),
                bad_pieces: r.map_or(0, |r| r.bad_pieces),
                errors: p.errors.clone(),
            }
        })
        .collect();
    if args.fault.is_some() {
        let bad: u64 = hosts.iter().map(|h| h.bad_pieces).sum();
        let ok = hosts.iter().filter(|h| h.verified).count();
        notes.push(format!(
            "{ok}/{} measured agents hold a blob that hashes to the digest; {bad} bad pieces rejected in all",
            hosts.len()
        ));
    }
    Ok(PhaseReport::summarize(
        hosts,
        plan.bound.t_min_s,
        plan.blob_len,
        egress,
        cpu,
    ))
}

/// Starts a thread that kills (and, for agent-restart, restarts) a node `at` into the
/// distribution; it returns a note saying what it did. `None` for faults that do not kill.
fn strike<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    fault: Fault,
    cluster: &'scope mut Cluster,
    at: Duration,
) -> Option<std::thread::ScopedJoinHandle<'scope, String>> {
    match fault {
        Fault::OriginKill => {
            let o = &mut cluster.origins[0];
            Some(s.spawn(move || {
                std::thread::sleep(at);
                o.kill();
                format!(
                    "{} SIGKILLed {:.1} s into the distribution",
                    o.name,
                    at.as_secs_f64()
                )
            }))
        }
        Fault::AgentRestart => {
            let a = &mut cluster.agents[0];
            Some(s.spawn(move || {
                std::thread::sleep(at);
                a.kill();
                std::thread::sleep(Duration::from_secs(2));
                let r = a.restart();
                format!(
                    "{} SIGKILLed {:.1} s in, restarted 2 s later ({})",
                    a.name,
                    at.as_secs_f64(),
                    match r {
                        Ok(()) => "ready again".to_string(),
                        Err(e) => format!("restart failed: {e:#}"),
                    }
                )
            }))
        }
        Fault::CorruptAgent => None,
    }
}

/// The plain-HTTP baseline on the same hosts: origin host 1 serves, the measured agents'
/// hosts fetch.
fn baseline_phase(
    net: &Testnet,
    plan: &Plan,
    measured: &[usize],
    blob_dir: &Path,
    work: &Path,
) -> anyhow::Result<PhaseReport> {
    let clients: Vec<usize> = measured.iter().map(|i| plan.origins + 1 + i).collect();
    let verify = |p: &Path| plan.verify(p);
    let b = baseline::run(
        net,
        1,
        &clients,
        blob_dir,
        "blob",
        &work.join("baseline"),
        &verify,
    )?;
    Ok(PhaseReport::summarize(
        b.hosts,
        plan.bound.t_min_s,
        plan.blob_len,
        b.egress,
        b.cpu_s,
    ))
}

/// The simulator on the same setup, and how the measured run compares.
fn simnet_phase(
    args: &RunArgs,
    plan: &Plan,
    work: &Path,
    kraken: &PhaseReport,
) -> anyhow::Result<SimFigure> {
    let bin = match &args.simnet {
        Some(p) => p.clone(),
        None => sibling("simnet")?,
    };
    let setup = SimSetup {
        agents: args.agents,
        origins: plan.origins,
        rate_bytes_per_sec: args.rate.bytes_per_sec(),
        blob_bytes: plan.blob_len,
        piece_length: plan.piece_length(),
        kill_origin_at_s: (args.fault == Some(Fault::OriginKill))
            .then_some(plan.fault_at.as_secs_f64()),
        corrupt_agents: usize::from(args.fault == Some(Fault::CorruptAgent)),
        upload_slots: args.upload_slots,
        origin_upload_slots: args.origin_upload_slots,
        discovery: args.discovery,
    };
    let sim = simulate(&bin, &setup, work)?;
    let k = &kraken.completion_s;
    Ok(SimFigure {
        measured_over_simulated_max: k.max / sim.completion_s.max,
        measured_over_simulated_p50: k.p50 / sim.completion_s.p50,
        completion_s: sim.completion_s,
        origin_egress_blobs: sim.origin_egress_blobs,
        cdf: sim.cdf,
    })
}

/// What each phase of a run measured.
struct Phases {
    kraken: PhaseReport,
    baseline: Option<PhaseReport>,
    simnet: Option<SimFigure>,
    upstream: Option<UpstreamFigure>,
}

/// The report of the phases, with its targets checked, and the SVG if asked.
fn report(
    args: &RunArgs,
    plan: Plan,
    phases: Phases,
    notes: Vec<String>,
) -> anyhow::Result<RunReport> {
    let Phases {
        kraken,
        baseline,
        simnet,
        upstream,
    } = phases;
    let mut report = RunReport {
        setup: Setup {
            agents: args.agents,
            origins: plan.origins,
            rate_mbit: Some(args.rate.mbit()),
            blob_bytes: plan.blob_len,
            piece_length: Some(plan.piece_length()),
            fault: args.fault.map(|f| f.name().to_string()),
            discovery: args.discovery.map(|d| d.name().to_string()),
        },
        bound: plan.bound,
        kraken,
        baseline,
        speedup: None,
        simnet,
        upstream,
        fault_notes: notes,
        targets: Targets::default(),
    };
    report.finish();
    if let Some(path) = &args.svg {
        std::fs::write(path, report.svg())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}

/// The piece length the origins pick for `blob` bytes by default: the node's table.
pub fn default_piece_length(blob: u64) -> u64 {
    u64::from(PieceLengthTable::default().piece_length_for(blob))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn discovery_flag_parses_and_defaults_to_none() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["kraken-bench"], args].concat());
        assert_eq!(parse(&[]).unwrap().run.discovery, None);
        for (arg, want) in [
            ("tracker", Discovery::Tracker),
            ("dht", Discovery::Dht),
            ("both", Discovery::Both),
        ] {
            let cli = parse(&["--discovery", arg]).unwrap();
            assert_eq!(cli.run.discovery, Some(want));
            assert_eq!(want.name(), arg);
        }
        assert!(parse(&["--discovery", "gossip"]).is_err());
        assert_eq!(RunArgs::smoke().discovery, None);
    }
}
