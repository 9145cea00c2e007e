//! `kraken-bench`: multi-host benchmarks of kraken on shaped network namespaces (see the
//! `kraken_tools::bench` module docs).
//!
//! - `kraken-bench run --agents 10 --rate 100mbit --size-mib 200 [--fault …]
//!   [--source push|upstream] [--json]`
//! - `kraken-bench smoke`: 1 origin + 2 agents, 20 MiB; fails unless every copy is
//!   byte-identical.
//! - `kraken-bench down [--prefix kb]`: removes what a crashed run left.
//! - `kraken-bench registry [--mib 1024] [--rounds 5] [--steps …] [--json-out FILE]`:
//!   the registry edge against Debian's docker-registry on loopback (no namespaces).
//! - `kraken-bench campaign [--duration 600] [--seed N]`: the fault campaign on loopback
//!   (separate processes, moto as S3); non-zero exit on any violated invariant.
//! - `kraken-bench ctl …`: the control client the harness runs inside the control
//!   namespace (internal).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kraken_tools::bench::campaign::{self, CampaignArgs};
use kraken_tools::bench::ctl::{self, CtlArgs};
use kraken_tools::bench::netns::down_all;
use kraken_tools::bench::registry::{self, RegistryArgs};
use kraken_tools::bench::run::{self, RunArgs};

/// Benchmarks of kraken: multi-host on shaped links (needs root, ip, tc, python3, curl),
/// and the registry edge against docker-registry (needs docker-registry, curl, skopeo).
#[derive(Debug, Parser)]
#[command(name = "kraken-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One benchmark run: kraken, then the plain-HTTP baseline, then simnet.
    Run(RunArgs),
    /// The CI smoke run: 1 origin + 2 agents at 100 Mbit/s, 20 MiB, plus the baseline.
    Smoke {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The registry edge against docker-registry 2.8: pushes, cold, second-agent, warm
    /// and ranged pulls with curl, an image with skopeo; interleaved rounds, ratios.
    Registry(RegistryArgs),
    /// A fault campaign: pushes and pulls while nodes are killed, a disk fills, the
    /// backend stops and pieces rot; then checks that nothing acknowledged was lost.
    Campaign(CampaignArgs),
    /// Remove namespaces and processes a crashed run left behind.
    Down {
        /// Namespace prefix.
        #[arg(long, default_value = "kb")]
        prefix: String,
    },
    /// The control client (run by the harness inside the control namespace).
    #[command(hide = true)]
    Ctl(CtlArgs),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let report = run::run(&args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Command::Smoke { json } => {
            let args = RunArgs {
                json,
                kraken: std::env::var_os("KRAKEN_BIN").map(Into::into),
                ..RunArgs::smoke()
            };
            let report = run::run(&args)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            let baseline_ok = report.baseline.as_ref().is_some_and(|b| b.all_ok);
            if !report.kraken.all_ok || !baseline_ok {
                bail!("smoke failed: not every host completed with the right bytes");
            }
            println!("smoke ok");
            Ok(())
        }
        Command::Registry(args) => {
            let report = registry::run(&args)?;
            if let Some(path) = &args.json_out {
                std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Command::Campaign(args) => {
            let report = campaign::run(&args)?;
            print!("{}", report.text());
            if !report.passed() {
                bail!(
                    "campaign failed: {} violations (seed {})",
                    report.violations.len(),
                    report.seed
                );
            }
            Ok(())
        }
        Command::Down { prefix } => {
            down_all(&prefix)?;
            down_all(&format!("{prefix}s"))
        }
        Command::Ctl(args) => ctl::run(args),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kraken-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
