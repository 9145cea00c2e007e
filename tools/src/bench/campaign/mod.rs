//! `kraken-bench campaign`: a fault campaign in the manner of Jepsen. Separate `kraken`
//! processes on loopback (no namespaces) and moto as the S3 backend; for `--duration`
//! seconds pushers put images through the proxy and every agent pulls them back while
//! faults are injected at random; then everything is healed and the invariants are
//! checked. Exits non-zero on any violation, printing the violations and the seed.
//!
//! - [`nodes`]: moto and the kraken processes, their configs and ports, the tmpfs agent.
//! - [`workload`]: pushers, pullers and the [`workload::Ledger`] of what was acknowledged.
//! - [`faults`]: the fault injector and its timeline.
//! - [`invariants`]: the final checks; [`replicas`]: the replica check among them.
//! - [`report`]: what it did and found.
//! - [`http`]: the blocking HTTP/1.1 client pushes, pulls and S3 reads use.
//!
//! Everything random (images, which fault, when, for how long, which node, which byte)
//! comes from `--seed`; the interleaving of threads and processes does not, so a seed
//! replays the same plan, not the same run.

pub mod faults;
pub mod http;
pub mod invariants;
pub mod nodes;
pub mod replicas;
pub mod report;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};

use self::faults::Injector;
use self::nodes::{Cluster, Role, Shape};
use self::report::CampaignReport;
use self::workload::{Ledger, Pusher, Shared, locked};

/// `kraken-bench campaign` options.
#[derive(Debug, Clone, clap::Args)]
pub struct CampaignArgs {
    /// Seconds of workload under faults (startup and the final checks come on top).
    #[arg(long, default_value_t = 600)]
    pub duration: u64,
    /// Seed of every random choice [default: from the clock; printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Origins.
    #[arg(long, default_value_t = 2)]
    pub origins: usize,
    /// Trackers.
    #[arg(long, default_value_t = 2)]
    pub trackers: usize,
    /// Build-index nodes.
    #[arg(long, default_value_t = 2)]
    pub build_indexes: usize,
    /// Agents.
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Concurrent pushers (each with its own repository).
    #[arg(long, default_value_t = 2)]
    pub pushers: usize,
    /// Largest layer, KiB (layers are 1 byte to this).
    #[arg(long, default_value_t = 1024)]
    pub max_layer_kib: u64,
    /// MiB of the tmpfs under the last agent's data dir (the disk-full fault); 0: no tmpfs
    /// and no disk-full fault.
    #[arg(long, default_value_t = 256)]
    pub disk_mib: u64,
    /// Seconds between faults: the shortest and longest gap drawn.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [3, 10])]
    pub fault_gap: Vec<u64>,
    /// Seconds a fault lasts before it is healed: the shortest and longest drawn.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [2, 10])]
    pub fault_hold: Vec<u64>,
    /// Fault kinds to leave out (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub without: Vec<faults::FaultName>,
    /// Longest wait, in seconds, for one final check to hold (a healed cluster catching
    /// up); each check has its own.
    #[arg(long, default_value_t = 300)]
    pub check_secs: u64,
    /// Longest wait, in seconds, after everything is healed, for every acknowledged blob
    /// to be held, byte-correct, by as many origins as its replica count asks (at most the
    /// live origins), and for no origin to hold a bad copy.
    #[arg(long, default_value_t = 120)]
    pub converge_timeout_secs: u64,
    /// The `kraken` binary [default: next to this one].
    #[arg(long, env = "KRAKEN_BIN")]
    pub kraken: Option<PathBuf>,
    /// moto's server [default: `.venv/bin/moto_server` of the workspace, else on PATH].
    #[arg(long, env = "KRAKEN_MOTO_SERVER")]
    pub moto: Option<PathBuf>,
    /// Where configs, data and logs go [default: $TMPDIR/kraken-campaign-<pid>].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work dir even when every invariant held (it is always kept on failure).
    #[arg(long)]
    pub keep: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
}

impl CampaignArgs {
    /// The defaults (as the command line has them), for tests and callers.
    pub fn defaults() -> CampaignArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: CampaignArgs,
        }
        P::parse_from(["campaign"]).a
    }
}

/// moto's server: the argument, else the workspace's `.venv`, else `moto_server` on PATH.
fn moto_binary(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.is_file() {
        return Ok(venv);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|c| c.is_file())
    });
    on_path.context("moto_server not found: pass --moto or set KRAKEN_MOTO_SERVER")
}

/// How often the campaign looks at its processes and faults.
const TICK: Duration = Duration::from_millis(200);

/// Runs a campaign; the report (check [`CampaignReport::passed`]).
pub fn run(args: &CampaignArgs) -> anyhow::Result<CampaignReport> {
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("kraken-bench campaign: seed {seed} (rerun the same plan with --seed {seed})");
    if args.fault_gap.len() != 2 || args.fault_hold.len() != 2 {
        bail!("--fault-gap and --fault-hold take two numbers");
    }
    let kraken = crate::bench::registry::servers::kraken_binary(args.kraken.as_ref())?;
    let moto = moto_binary(args.moto.as_ref())?;
    let work = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("kraken-campaign-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let shape = Shape {
        origins: args.origins,
        trackers: args.trackers,
        build_indexes: args.build_indexes,
        agents: args.agents,
        disk_mib: args.disk_mib,
    };
    let started = Instant::now();
    let mut cluster = Cluster::start(&kraken, &moto, &work, &shape)
        .with_context(|| format!("starting the cluster (logs in {})", work.display()))?;
    eprintln!(
        "kraken-bench campaign: {} processes ready in {:.1} s; work dir {}",
        cluster.nodes.len(),
        started.elapsed().as_secs_f64(),
        work.display()
    );
    if let Some(why) = &cluster.no_disk_fault {
        eprintln!("kraken-bench campaign: the disk-full fault will NOT run: {why}");
    }
    let report = campaign(args, seed, &mut cluster)?;
    drop(cluster);
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if report.passed() && !args.keep {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!(
            "kraken-bench campaign: logs and data kept in {}",
            work.display()
        );
    }
    Ok(report)
}

/// The workload under faults, the healing and the checks.
fn campaign(
    args: &CampaignArgs,
    seed: u64,
    cluster: &mut Cluster,
) -> anyhow::Result<CampaignReport> {
    let ledger: Shared = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut injector = Injector::new(cluster, seed ^ 0xfa17, start, &args.without);
    injector.gap_s = (args.fault_gap[0], args.fault_gap[1]);
    injector.hold_s = (args.fault_hold[0], args.fault_hold[1]);
    let mut workers = Vec::new();
    for p in 0..args.pushers {
        let pusher = Pusher {
            proxy: cluster.proxy(),
            repo: format!("campaign/p{p}"),
            seed: seed.wrapping_add(1 + p as u64),
            max_layer: args.max_layer_kib << 10,
            pause: Duration::from_millis(200),
            in_flight: injector.pushes_in_flight.clone(),
        };
        let (l, s) = (ledger.clone(), stop.clone());
        workers.push(std::thread::spawn(move || pusher.run(&l, &s)));
    }
    for (i, (_, addr)) in cluster.agents().into_iter().enumerate() {
        let (l, s) = (ledger.clone(), stop.clone());
        let seed = seed.wrapping_add(1000 + i as u64);
        workers.push(std::thread::spawn(move || {
            workload::puller(&l, &s, addr, seed, Duration::from_millis(300));
        }));
    }
    let mut crashes = Vec::new();
    // Faults start once a push went through (the cluster works), or after a minute.
    let warm = start + Duration::from_secs(60);
    let deadline = start + Duration::from_secs(args.duration);
    let mut next_fault = None;
    while Instant::now() < deadline {
        std::thread::sleep(TICK);
        for n in &mut cluster.nodes {
            if let Some(status) = n.proc.exited() {
                let what = format!("{} exited by itself ({status})", n.proc.name);
                injector.log(what.clone());
                crashes.push(what);
                if let Err(e) = n.proc.start_again() {
                    n.proc.kill();
                    injector.log(format!("{} did not start again: {e:#}", n.proc.name));
                }
            }
        }
        injector.heal_due(cluster);
        let acked = locked(&ledger).counts.pushes_acked > 0;
        match next_fault {
            None if acked || Instant::now() > warm => {
                injector.log("faults begin".into());
                next_fault = Some(Instant::now() + injector.next_gap());
            }
            Some(at) if Instant::now() >= at => {
                injector.inject(cluster);
                next_fault = Some(Instant::now() + injector.next_gap());
            }
            _ => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    injector.log("workload stops".into());
    for w in workers {
        let _ = w.join();
    }
    let healed = injector.heal_all(cluster, Duration::from_secs(120));
    for n in &mut cluster.nodes {
        if !n.proc.running()
            && let Err(e) = n.proc.start_again()
        {
            crashes.push(format!(
                "{} does not start after the campaign: {e:#}",
                n.proc.name
            ));
        }
    }
    injector.log("every fault healed; checking invariants".into());
    let checks = invariants::check_all(
        cluster,
        &ledger,
        Duration::from_secs(args.check_secs),
        Duration::from_secs(args.converge_timeout_secs),
    );
    injector.log(format!("checks done in {:.0} s", checks.secs));
    let l = locked(&ledger);
    let mut violations = l.violations.clone();
    violations.extend(crashes);
    if let Err(e) = healed {
        violations.push(e);
    }
    violations.extend(checks.violations.iter().cloned());
    let cluster_text = Role::ALL
        .iter()
        .map(|r| format!("{} ×{}", r.name(), cluster.of(*r).count()))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(CampaignReport {
        seed,
        duration_s: args.duration as f64,
        cluster: format!("{cluster_text}, moto (S3)"),
        no_disk_fault: cluster.no_disk_fault.clone(),
        faults_left_out: args.without.iter().map(|w| format!("{w:?}")).collect(),
        timeline: injector.events.clone(),
        faults: injector.counts.clone(),
        workload: l.counts.clone(),
        checks,
        violations,
    })
}
