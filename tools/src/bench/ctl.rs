//! The control client, run by the harness inside the control namespace
//! (`ip netns exec <prefix>-ctl kraken-bench ctl …`), since the harness itself in the root
//! namespace cannot reach the test hosts. Each command prints one JSON value on stdout.
//!
//! - `wait-view`: until the seed's cluster view holds the expected origins and trackers,
//!   and so does every `--agent`'s (an agent asked to pull before it knows a tracker
//!   fails; a push gives them time to learn, a blob read through from upstream does not).
//! - `push FILE`: uploads a blob to its origin owner ([`crate::transfer::push_to_owner`]).
//! - `pull`: asks every given agent at once to pull a blob (`Request::Pull`, in the
//!   `default` namespace or `--namespace`) and reports, per agent, the seconds from the
//!   common start to its answer and its `PullReport`. An agent that fails (killed,
//!   restarting) is asked again until `--retry-secs` run out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kraken_client::proto::{DEFAULT_NAMESPACE, PullReport, Request, Response};
use kraken_membership::{ClusterView, Role};
use kraken_storage::Digest;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::settings::Settings;
use crate::transfer::{hash_file, push_to_owner};

/// `kraken-bench ctl` arguments.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// A ring node's QUIC address.
    #[arg(long)]
    pub seed: String,
    /// CA certificate.
    #[arg(long)]
    pub ca: PathBuf,
    /// Client certificate.
    #[arg(long)]
    pub cert: PathBuf,
    /// Its key.
    #[arg(long)]
    pub key: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `kraken-bench ctl …` commands.
#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// Wait until the view holds this many origins and trackers.
    WaitView {
        /// Origins expected.
        #[arg(long)]
        origins: usize,
        /// Trackers expected (0 for a DHT-only cluster, which runs none).
        #[arg(long, default_value_t = 1)]
        trackers: usize,
        /// Agents whose own views must hold them too.
        #[arg(long = "agent")]
        agents: Vec<SocketAddr>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        secs: u64,
    },
    /// Upload a file; prints `{"digest": …}`.
    Push {
        /// The file.
        file: PathBuf,
    },
    /// Every agent pulls the blob at once.
    Pull {
        /// The blob.
        #[arg(long)]
        digest: String,
        /// Its namespace (the repository an upstream registry holds it in).
        #[arg(long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        /// Agents' QUIC addresses.
        #[arg(long = "agent", required = true)]
        agents: Vec<SocketAddr>,
        /// Keep asking a failed agent for this long (restarts).
        #[arg(long, default_value_t = 0)]
        retry_secs: u64,
        /// Longest one pull may take.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
}

/// One agent's pull, as `ctl pull` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentPull {
    /// The agent.
    pub agent: SocketAddr,
    /// Seconds from the common start to the successful answer.
    pub secs: Option<f64>,
    /// The agent's report.
    pub report: Option<PullReport>,
    /// Failures seen (also those retried past).
    pub errors: Vec<String>,
}

/// `kraken-bench ctl`: runs one command on a fresh runtime.
pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: CtlArgs) -> anyhow::Result<()> {
    let settings = Settings {
        seeds: vec![args.seed.clone()],
        ca: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        cluster_id: None,
        known_nodes: Vec::new(),
    };
    let timeout = Duration::from_secs(5);
    match args.command {
        CtlCommand::WaitView {
            origins,
            trackers,
            agents,
            secs,
        } => {
            let deadline = Instant::now() + Duration::from_secs(secs);
            loop {
                let seen = match Client::connect(&settings, timeout).await {
                    Ok(c) => {
                        let mut seen = ready_counts(&c.view());
                        for agent in &agents {
                            let view = agent_view(&c, *agent, timeout).await;
                            let (o, t) = view.as_ref().map_or((0, 0), ready_counts);
                            seen = (seen.0.min(o), seen.1.min(t));
                        }
                        c.close().await;
                        seen
                    }
                    Err(_) => (0, 0),
                };
                if seen.0 >= origins && seen.1 >= trackers {
                    println!(
                        "{}",
                        serde_json::json!({"origins": seen.0, "trackers": seen.1})
                    );
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!(
                        "view has {} origins and {} trackers after {secs} s",
                        seen.0,
                        seen.1
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        CtlCommand::Push { file } => {
            let client = Client::connect(&settings, timeout).await?;
            let hashed = hash_file(&file, kraken_storage::DigestAlgorithm::Sha256).await?;
            let report = push_to_owner(&client, &hashed, DEFAULT_NAMESPACE).await?;
            println!("{}", serde_json::to_string(&report)?);
            client.close().await;
            Ok(())
        }
        CtlCommand::Pull {
            digest,
            namespace,
            agents,
            retry_secs,
            timeout_secs,
        } => {
            let digest: Digest = digest.parse().context("bad digest")?;
            let client = Client::connect(&settings, timeout).await?;
            let start = Instant::now();
            let retry = Duration::from_secs(retry_secs);
            let request = Request::Pull { namespace, digest };
            let pulls = agents
                .iter()
                .map(|a| pull_one(&client, *a, &request, start, retry, timeout_secs));
            let results = futures::future::join_all(pulls).await;
            println!("{}", serde_json::to_string(&results)?);
            client.close().await;
            Ok(())
        }
    }
}

async fn pull_one(
    client: &Client,
    agent: SocketAddr,
    request: &Request,
    start: Instant,
    retry: Duration,
    timeout_secs: u64,
) -> AgentPull {
    let mut errors = Vec::new();
    loop {
        let answer = client
            .cluster()
            .call_within(agent, request, Duration::from_secs(timeout_secs))
            .await;
        match answer {
            Ok(Response::Pull(report)) => {
                return AgentPull {
                    agent,
                    secs: Some(start.elapsed().as_secs_f64()),
                    report: Some(report),
                    errors,
                };
            }
            Ok(other) => note(&mut errors, format!("unexpected answer {other:?}")),
            Err(e) => note(&mut errors, e.to_string()),
        }
        if start.elapsed() > retry {
            return AgentPull {
                agent,
                secs: None,
                report: None,
                errors,
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Ready origins and ready trackers in `view`.
fn ready_counts(view: &ClusterView) -> (usize, usize) {
    let ready = |role| view.members_of(role).filter(|m| m.ready).count();
    (ready(Role::Origin), ready(Role::Tracker))
}

/// `agent`'s own cluster view, if it has one and answers.
async fn agent_view(client: &Client, agent: SocketAddr, timeout: Duration) -> Option<ClusterView> {
    match client
        .cluster()
        .call_within(agent, &Request::ClusterView, timeout)
        .await
    {
        Ok(Response::View(bytes)) => ClusterView::decode(&bytes).ok(),
        _ => None,
    }
}

/// Keeps the first few distinct errors.
fn note(errors: &mut Vec<String>, e: String) {
    if errors.len() < 5 && !errors.contains(&e) {
        errors.push(e);
    }
}
