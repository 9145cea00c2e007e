//! `simnet`: runs a scenario and prints a summary (or JSON), the seed, and timing.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use kraken_simnet::{Scenario, Simulation};

/// Simulate a kraken swarm distributing one blob to many hosts.
#[derive(Debug, Parser)]
#[command(name = "simnet", version)]
struct Args {
    /// Scenario file (TOML).
    scenario: PathBuf,
    /// Seed (default: the scenario's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Override the number of agents.
    #[arg(long)]
    agents: Option<usize>,
    /// Override the blob size in bytes.
    #[arg(long)]
    blob_bytes: Option<u64>,
    /// Print the report as JSON on stdout (deterministic) instead of the summary.
    #[arg(long)]
    json: bool,
    /// Write the completion CDF as SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write every piece transfer's start and arrival here, a line each (see
    /// `Simulation::with_piece_log`): large, meant for studying small runs.
    #[arg(long)]
    piece_log: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    with_huge_pages();
    run(Args::parse())
}

/// Asks glibc's malloc for transparent huge pages by running this binary again with
/// `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc reads its tunables only at start). At
/// 10,000 hosts the simulator waits on memory more than it computes, and with 4 KiB pages
/// part of that wait is TLB misses: 10,000 hosts × 250 MB ran in 0.96 × the time (median of
/// 4 alternating pairs, 0.85–0.99). Where `GLIBC_TUNABLES` is set already, or the exec
/// fails, the run goes on as it is; reports do not depend on it.
fn with_huge_pages() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // `exec` returns only if it failed.
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
        .exec();
}

fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("reading {}", args.scenario.display()))?;
    let mut scenario = Scenario::from_toml(&text)?;
    if let Some(n) = args.agents {
        scenario.agents.count = n;
    }
    if let Some(b) = args.blob_bytes {
        scenario.blob.size_bytes = b;
    }
    let seed = args.seed.unwrap_or(scenario.seed);
    eprintln!("simnet: scenario {} seed {seed}", scenario.name);
    let started = Instant::now();
    let mut sim = Simulation::new(&scenario, seed)?;
    if let Some(path) = &args.piece_log {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        sim = sim.with_piece_log(Box::new(std::io::BufWriter::new(file)));
    }
    // A line every 10 M events (about half a minute): large runs take minutes.
    let report = sim.run_with_progress(10_000_000, |p| {
        eprintln!(
            "simnet: {:.0} M events, virtual {:.2} s, {} of {} agents unfinished, {:.0} s wall",
            p.events as f64 / 1e6,
            p.virtual_s,
            p.unfinished,
            p.agents,
            started.elapsed().as_secs_f64()
        )
    });
    let wall = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.summary());
    }
    eprintln!(
        "simnet: seed {seed}  wall {wall:.2} s  {} events  {:.0} events/s",
        report.counts.events,
        report.counts.events as f64 / wall.max(1e-9)
    );
    if let Some(path) = args.svg {
        std::fs::write(&path, report.svg_cdf())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
