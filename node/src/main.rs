//! The `kraken` daemon: `kraken <roles> --config FILE` runs a node; `kraken dev` runs a
//! whole cluster on loopback.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kraken_node::certs;
use kraken_node::config::{NodeConfig, NodeRole};
use kraken_node::dev::{self, DevOptions};
use kraken_node::node::Node;

#[derive(Parser)]
#[command(
    name = "kraken",
    version,
    about = "P2P distribution of OCI images and blobs over QUIC"
)]
struct Cli {
    /// Logs as JSON lines (also `[node] json_logs`).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an origin (add roles with --also).
    Origin(RunArgs),
    /// Run a tracker.
    Tracker(RunArgs),
    /// Run an agent.
    Agent(RunArgs),
    /// Run a build-index.
    BuildIndex(RunArgs),
    /// Run a proxy (the push side of the registry API).
    Proxy(RunArgs),
    /// Run the roles named in the config file's `[node] roles`.
    Run(RunArgs),
    /// Start a whole cluster on loopback in this process.
    Dev(DevArgs),
    /// The cluster CA (`kraken ca init --dir DIR`).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Node and admin certificates signed by the cluster CA.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a cluster CA: DIR/ca.crt (for every node) and DIR/ca.key (mode 0600, kept
    /// off the nodes). Refuses to overwrite an existing CA.
    Init {
        /// The directory to create the CA in.
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = certs::DEFAULT_CA_DAYS)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Sign a certificate for a node (or, with `--role admin`, for krakenctl) and write
    /// OUT/NAME.crt and OUT/NAME.key (mode 0600). Refuses to overwrite either.
    Issue {
        /// The CA directory (`kraken ca init --dir`).
        #[arg(long)]
        ca: PathBuf,
        /// The node's `[node] name` (its common name and first SAN).
        #[arg(long)]
        name: String,
        /// origin, agent, tracker, build-index, proxy or admin.
        #[arg(long)]
        role: String,
        /// More subject alternative names, DNS names or IP addresses (repeatable).
        #[arg(long)]
        san: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = certs::DEFAULT_CERT_DAYS)]
        days: u32,
        /// The directory to write the certificate and key to.
        #[arg(long)]
        out: PathBuf,
        /// Renew: certify this existing key again (the node keeps its peer id); only
        /// OUT/NAME.crt is written.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The node's TOML config.
    #[arg(long, short)]
    config: PathBuf,
    /// More roles for this process (e.g. `kraken origin --also tracker`).
    #[arg(long, value_parser = parse_role)]
    also: Vec<NodeRole>,
}

#[derive(clap::Args)]
struct DevArgs {
    /// Where the cluster keeps its state and writes cluster.json.
    #[arg(long, default_value = "kraken-dev")]
    data_dir: PathBuf,
    /// Number of agents.
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// First port of the cluster's listeners: node k (origins, tracker, build-index,
    /// agents, proxy) listens at base+10k (QUIC), +1 (gossip), +2 (HTTP), +3 (registry
    /// API), +4 (an agent's blob server), on 127.0.0.1. A restart keeps every address.
    /// 0 lets the OS pick (new ports on every start).
    #[arg(long, default_value_t = dev::DEFAULT_BASE_PORT)]
    base_port: u16,
    /// Upload a generated blob, pull it through every agent and show where bytes came from.
    #[arg(long)]
    demo: bool,
    /// Size of the demo blob in MiB.
    #[arg(long, default_value_t = 64)]
    demo_mib: u64,
    /// Exit after the demo instead of serving.
    #[arg(long)]
    exit_after_demo: bool,
    /// Mirror this registry (`http(s)://host[:port]`) as the upstream of every
    /// repository: pulls of what the cluster lacks come from it and travel the swarm.
    /// Repositories routed to an upstream are read-only (pushes are refused).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Mirror a registry for containerd's `?ns=<host>` requests, as `<host>=<URL>`
    /// (repeatable), e.g. `docker.io=https://registry-1.docker.io`.
    #[arg(long, value_name = "HOST=URL", value_parser = dev::DevUpstream::parse_ns)]
    upstream_ns: Vec<dev::DevUpstream>,
}

/// What the dev cluster mirrors, and how to pull through it.
fn print_upstreams(cluster: &dev::DevCluster, upstreams: &[dev::DevUpstream]) {
    let Some(agent) = cluster.file.nodes.iter().find_map(|n| {
        n.roles
            .iter()
            .any(|r| r == "agent")
            .then_some(n.registry)
            .flatten()
    }) else {
        return;
    };
    for u in upstreams {
        match &u.ns {
            Some(ns) => {
                // The cluster joins a port with `_`; containerd names the host with `:`.
                let host = ns.replacen('_', ":", 1);
                println!(
                    "mirroring {} for ?ns={host} (repositories {ns}/...): e.g. \
                     ctr image pull --hosts-dir <dir with {host}/hosts.toml → http://{agent}> {host}/<repo>:<tag>",
                    u.url
                )
            }
            None => println!(
                "mirroring {} for every repository: e.g. \
                 skopeo copy --src-tls-verify=false docker://{agent}/<repo>:<tag> dir:/tmp/image",
                u.url
            ),
        }
    }
}

fn parse_role(s: &str) -> Result<NodeRole, String> {
    match s {
        "origin" => Ok(NodeRole::Origin),
        "tracker" => Ok(NodeRole::Tracker),
        "agent" => Ok(NodeRole::Agent),
        "build-index" => Ok(NodeRole::BuildIndex),
        "proxy" => Ok(NodeRole::Proxy),
        other => Err(format!(
            "unknown role {other:?} (origin, tracker, agent, build-index, proxy)"
        )),
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, not in files or journals.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn run_node(role: Option<NodeRole>, args: RunArgs, log_json: bool) -> anyhow::Result<()> {
    let mut config = NodeConfig::load(&args.config)?;
    init_logs(log_json || config.node.json_logs);
    for r in role.into_iter().chain(args.also) {
        if !config.node.roles.contains(&r) {
            config.node.roles.push(r);
        }
    }
    // Settings first: a bad value is named before any file or socket is touched.
    config.validate()?;
    let node = Node::start(config).await?;
    // Scripts (and tests) that asked for port 0 learn the addresses here.
    println!("quic {}", node.quic_addr());
    if let Some(http) = node.http_addr() {
        println!("http {http}");
    }
    println!("ready");
    wait_for_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn run_dev(args: DevArgs, log_json: bool) -> anyhow::Result<()> {
    init_logs(log_json);
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let mut upstreams = args.upstream_ns.clone();
    upstreams.extend(args.upstream.iter().map(|url| dev::DevUpstream {
        ns: None,
        url: url.clone(),
    }));
    let cluster = dev::start(&DevOptions {
        data_dir: data_dir.clone(),
        agents: args.agents,
        origins: 3,
        upstreams: upstreams.clone(),
        base_port: args.base_port,
    })
    .await?;
    for n in &cluster.file.nodes {
        let registry = n
            .registry
            .map(|a| format!("  registry {a}"))
            .unwrap_or_default();
        println!(
            "{:<13} {:<11} quic {}  http {}{registry}",
            n.name,
            n.roles.join(","),
            n.quic,
            n.http.map_or("-".to_string(), |a| a.to_string())
        );
    }
    println!("cluster file: {}", data_dir.join("cluster.json").display());
    println!("{}", dev::registry_guide(&cluster.file));
    print_upstreams(&cluster, &upstreams);
    println!("ready");
    if args.demo {
        dev::demo(&cluster, args.demo_mib << 20).await?;
        if args.exit_after_demo {
            cluster.shutdown().await;
            return Ok(());
        }
    }
    wait_for_signal().await;
    cluster.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our errors already carry their causes in their text.
            eprintln!("kraken: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `kraken ca init`.
fn run_ca(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, days } => {
            let cert = certs::init_ca(&dir, days)?;
            println!(
                "created a cluster CA in {} (valid until {}): give {} to every node; keep ca.key \
                 (mode 0600) off the nodes",
                dir.display(),
                certs::date_in(days),
                cert.display()
            );
        }
    }
    Ok(())
}

/// `kraken cert issue`.
fn run_cert(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Issue {
            ca,
            name,
            role,
            san,
            days,
            out,
            key,
        } => {
            let role = certs::CertRole::parse(&role)?;
            let issued = certs::issue(&certs::IssueOptions {
                ca,
                name: name.clone(),
                role,
                sans: san,
                days,
                out,
                key,
            })?;
            println!(
                "issued {} ({}, valid until {}): {} with key {}",
                name,
                role.name(),
                certs::date_in(days),
                issued.cert.display(),
                issued.key.display()
            );
        }
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Origin(a) => run_node(Some(NodeRole::Origin), a, cli.log_json).await,
            Command::Tracker(a) => run_node(Some(NodeRole::Tracker), a, cli.log_json).await,
            Command::Agent(a) => run_node(Some(NodeRole::Agent), a, cli.log_json).await,
            Command::BuildIndex(a) => run_node(Some(NodeRole::BuildIndex), a, cli.log_json).await,
            Command::Proxy(a) => run_node(Some(NodeRole::Proxy), a, cli.log_json).await,
            Command::Run(a) => run_node(None, a, cli.log_json).await,
            Command::Dev(a) => run_dev(a, cli.log_json).await,
            Command::Ca(c) => run_ca(c),
            Command::Cert(c) => run_cert(c),
        }
    })
}
