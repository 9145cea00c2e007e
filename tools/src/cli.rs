//! The command line ([`Cli`], clap derive) and [`run`], which checks the arguments, connects
//! and dispatches to the command modules.
//!
//! Arguments are checked before anything is dialled, so a bad digest or tag fails with
//! exit 4 even when the cluster is down.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kraken_client::proto::DEFAULT_NAMESPACE;
use kraken_storage::{Digest, DigestAlgorithm};

use crate::client::Client;
use crate::error::{CtlError, EXIT_CODES_HELP};
use crate::settings::{ConnectArgs, Settings};
use crate::{
    blob, blob_dht, build_index, gc, members, preheat, pull_report, repair, ring, transfer,
    writeback,
};

/// `krakenctl`: inspect and operate a kraken cluster over QUIC.
#[derive(Debug, Parser)]
#[command(
    name = "krakenctl",
    version,
    about = "Inspect and operate a kraken cluster over QUIC",
    long_about = "Inspect and operate a kraken cluster over QUIC, with an admin client \
                  certificate signed by the cluster CA. One seed address (any origin or \
                  tracker) is enough: the rest comes from the cluster view.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// How to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Limit of each call that moves no bulk bytes, and of dials, in seconds.
    #[arg(long, global = true, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The cluster view: ring nodes by role (plus the agents a cluster.json names), with
    /// addresses, generation, version and health.
    Members,
    /// Which origins and trackers own a digest, or which build-index nodes own a tag.
    Ring {
        /// `sha256:<hex>` or `repo:tag`.
        #[arg(id = "ring_key", value_name = "DIGEST|REPO:TAG")]
        key: String,
    },
    /// Blobs: where they are held and who seeds them.
    Blob {
        /// What to ask.
        #[command(subcommand)]
        command: BlobCommand,
    },
    /// Upload a file as a blob to its origins; prints its digest.
    Push {
        /// The file.
        file: PathBuf,
        /// Routes the write-back to a backend.
        #[arg(long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        /// The digest algorithm the blob is named by: sha256 or sha512.
        #[arg(long, default_value = "sha256")]
        algorithm: DigestAlgorithm,
    },
    /// Download a blob into a file (verified before it is renamed into place).
    Pull {
        /// The blob.
        digest: String,
        /// Where to write it.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Pull through this agent (P2P) first, then download from it: HOST:PORT or a node
        /// name from cluster.json. Without it, download from the blob's origins.
        #[arg(long, value_name = "ADDR")]
        agent: Option<String>,
        /// Routes a read-through from a backend.
        #[arg(long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Where the bytes of an agent's last pull of a blob came from.
    PullReport {
        /// The blob.
        digest: String,
        /// The agent: HOST:PORT or a node name from cluster.json.
        #[arg(long, value_name = "ADDR")]
        agent: String,
    },
    /// Write-back queue depth and oldest item of every origin.
    Writeback,
    /// Every origin compares what it holds with its co-owners now and copies what an owner
    /// lacks (an anti-entropy pass); with --digest, that blob only, read through from the
    /// backend if no origin holds it. Prints per origin what was found short, copied and
    /// failed. Exit 1 if copies failed or blobs are still short, 3 if an origin did not
    /// answer, 5 for a digest neither the origins nor the backend hold.
    Repair {
        /// Only this blob.
        #[arg(long)]
        digest: Option<String>,
        /// Routes a read-through (with --digest).
        #[arg(long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Tags: get, put, list, history (needs a build-index).
    Tag {
        /// What to do.
        #[command(subcommand)]
        command: TagCommand,
    },
    /// Every repository with tags (needs a build-index).
    Repos,
    /// Pending tag replications per destination (needs a build-index).
    Replication,
    /// Garbage collection: delete every blob no tag reaches (through manifests, index
    /// children, subjects and referrers) and nobody used within the grace period, from the
    /// origins and the writable backends; print what was (or would be) deleted and the
    /// bytes freed. Exit 1 if the run stopped with errors (the next run resumes it).
    Gc {
        /// Mark and plan only: delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreachable blobs used this recently (default: the build-index's
        /// `gc_grace_secs`, 1h): seconds, or 90s, 30m, 2h, 1d.
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
    },
    /// Make the owning origins hold images (manifest or index, children, layers), reading
    /// what they lack through from their backends; one line per blob and a summary.
    /// Exit 1 if any blob failed, 5 for an unknown tag.
    Preheat {
        /// `repo:tag` or `repo@sha256:<hex>`, one or more.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
        /// Only this platform's manifest of an index: `os/arch` or `os/arch/variant`.
        #[arg(long, value_name = "OS/ARCH")]
        platform: Option<String>,
        /// Then have these agents pull every warmed blob through the swarm: names or
        /// HOST:PORT, comma-separated, or `all` (every agent cluster.json names).
        #[arg(long, value_name = "AGENTS", value_delimiter = ',')]
        agents: Vec<String>,
    },
}

/// `krakenctl blob …`.
#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Which origins hold a blob, persisted to the backend or still queued, size, piece
    /// length, metainfo id. Exit 5 when no origin holds it.
    Stat {
        /// The blob.
        digest: String,
    },
    /// What the tracker knows of a blob's peers: complete or not, last announce. With
    /// `--dht`: the providers one node's DHT finds instead.
    Peers {
        /// The blob.
        digest: String,
        /// Ask a node's DHT for the blob's providers instead of the tracker.
        #[arg(long)]
        dht: bool,
        /// With `--dht`: the agent or origin whose DHT looks them up (HOST:PORT or a node
        /// name from cluster.json); default: the blob's first owning origin that answers.
        #[arg(long, value_name = "ADDR", requires = "dht")]
        node: Option<String>,
    },
}

/// `krakenctl tag …`.
#[derive(Debug, Subcommand)]
pub enum TagCommand {
    /// The digest a tag points at.
    Get {
        /// `repo:tag`.
        tag: String,
    },
    /// Points a tag at a digest.
    Put {
        /// `repo:tag`.
        tag: String,
        /// The digest.
        digest: String,
    },
    /// The tags of a repository, sorted.
    Ls {
        /// The repository.
        repo: String,
    },
    /// Every digest a tag has pointed at, oldest first.
    History {
        /// `repo:tag`.
        tag: String,
    },
}

/// Why a `--timeout` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SecsError {
    /// Not a number.
    #[error("{0:?} is not a number of seconds")]
    NotANumber(String),
    /// Zero, negative, or more than a day.
    #[error("{0} is outside 0 < SECS <= 86400")]
    OutOfRange(String),
}

fn parse_secs(s: &str) -> Result<Duration, SecsError> {
    let secs: f64 = s
        .parse()
        .map_err(|_| SecsError::NotANumber(s.to_string()))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(SecsError::OutOfRange(s.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a digest argument; a bad one is exit 4.
pub fn parse_digest(s: &str) -> Result<Digest, CtlError> {
    s.parse()
        .map_err(|e| CtlError::BadArgument(format!("bad digest {s:?}: {e}")))
}

/// A `ring` key: a blob or a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingKey {
    /// `sha256:<hex>` or `sha512:<hex>`.
    Digest(Digest),
    /// `repo:tag`.
    Tag(String),
}

/// Parses `sha256:<hex>` or `sha512:<hex>` (anything starting with a digest algorithm must be a valid digest)
/// or `repo:tag`.
pub fn parse_ring_key(s: &str) -> Result<RingKey, CtlError> {
    let algorithm = s.split_once(':').map(|(a, _)| a);
    if matches!(algorithm, Some("sha256" | "sha384" | "sha512")) {
        return parse_digest(s).map(RingKey::Digest);
    }
    parse_tag(s).map(RingKey::Tag)
}

/// Splits a `repo:tag` argument into repository and tag (see [`parse_tag`]).
pub fn split_tag(s: &str) -> Result<(String, String), CtlError> {
    let full = parse_tag(s)?;
    match full.rsplit_once(':') {
        Some((repo, tag)) => Ok((repo.to_string(), tag.to_string())),
        None => Err(CtlError::BadArgument(format!(
            "bad tag {s:?} (want repo:tag)"
        ))),
    }
}

/// Checks a `repo:tag` argument: a non-empty repository, a colon, a tag of letters, digits,
/// `_`, `.` and `-` (at most 128, not starting with `.` or `-`), as the OCI spec has it.
/// The build-index checks the repository name itself (bad ones are exit 4 too).
pub fn parse_tag(s: &str) -> Result<String, CtlError> {
    let bad = |why: &str| CtlError::BadArgument(format!("bad tag {s:?}: {why} (want repo:tag)"));
    let (repo, tag) = s.rsplit_once(':').ok_or_else(|| bad("no ':'"))?;
    if repo.is_empty() {
        return Err(bad("empty repository"));
    }
    if tag.is_empty() || tag.contains('/') {
        return Err(bad("no tag after the last ':'"));
    }
    let first_ok = tag
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || tag.len() > 128 {
        return Err(bad("the tag has characters outside [A-Za-z0-9_.-]"));
    }
    Ok(s.to_string())
}

/// How a command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputMode {
    /// `--json`.
    pub json: bool,
    /// Stdout is a terminal (more words); otherwise only the result, for scripts.
    pub terminal: bool,
}

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let mode = OutputMode {
        json: cli.json,
        terminal: std::io::stdout().is_terminal(),
    };
    // Check what can be checked before dialling anything.
    let command = Checked::new(cli.command)?;
    let settings = Settings::resolve(&cli.connect)?;
    let push_prepared = match &command {
        Checked::Push {
            file, algorithm, ..
        } => Some(transfer::hash_file(file, *algorithm).await?),
        _ => None,
    };
    let client = Client::connect(&settings, cli.timeout).await?;
    let result = dispatch(&client, command, push_prepared, mode).await;
    client.close().await;
    result
}

/// A command whose arguments have been parsed.
#[derive(Debug)]
enum Checked {
    Members,
    Ring(RingKey),
    BlobStat(Digest),
    BlobPeers(Digest),
    BlobDhtPeers(Digest, Option<String>),
    Push {
        file: PathBuf,
        namespace: String,
        algorithm: DigestAlgorithm,
    },
    Pull {
        digest: Digest,
        output: PathBuf,
        agent: Option<String>,
        namespace: String,
    },
    PullReport {
        digest: Digest,
        agent: String,
    },
    Writeback,
    Repair(Option<Digest>, String),
    TagGet(String, String),
    TagPut(String, String, Digest),
    TagLs(String),
    TagHistory(String, String),
    Repos,
    Replication,
    Gc {
        dry_run: bool,
        grace: Option<Duration>,
    },
    Preheat(
        Vec<kraken_client::preheat::ImageRef>,
        Option<kraken_client::preheat::PlatformFilter>,
        Vec<String>,
    ),
}

impl Checked {
    fn new(command: Command) -> Result<Self, CtlError> {
        Ok(match command {
            Command::Members => Checked::Members,
            Command::Ring { key } => Checked::Ring(parse_ring_key(&key)?),
            Command::Blob {
                command: BlobCommand::Stat { digest },
            } => Checked::BlobStat(parse_digest(&digest)?),
            Command::Blob {
                command: BlobCommand::Peers { digest, dht, node },
            } => match dht {
                true => Checked::BlobDhtPeers(parse_digest(&digest)?, node),
                false => Checked::BlobPeers(parse_digest(&digest)?),
            },
            Command::Push {
                file,
                namespace,
                algorithm,
            } => Checked::Push {
                file,
                namespace,
                algorithm,
            },
            Command::Pull {
                digest,
                output,
                agent,
                namespace,
            } => Checked::Pull {
                digest: parse_digest(&digest)?,
                output,
                agent,
                namespace,
            },
            Command::PullReport { digest, agent } => Checked::PullReport {
                digest: parse_digest(&digest)?,
                agent,
            },
            Command::Writeback => Checked::Writeback,
            Command::Repair { digest, namespace } => {
                Checked::Repair(digest.as_deref().map(parse_digest).transpose()?, namespace)
            }
            Command::Tag { command } => match command {
                TagCommand::Get { tag } => {
                    let (repo, tag) = split_tag(&tag)?;
                    Checked::TagGet(repo, tag)
                }
                TagCommand::Put { tag, digest } => {
                    let (repo, tag) = split_tag(&tag)?;
                    Checked::TagPut(repo, tag, parse_digest(&digest)?)
                }
                TagCommand::Ls { repo } => {
                    if repo.is_empty() || repo.contains(':') {
                        return Err(CtlError::BadArgument(format!(
                            "bad repository {repo:?} (a name without a tag)"
                        )));
                    }
                    Checked::TagLs(repo)
                }
                TagCommand::History { tag } => {
                    let (repo, tag) = split_tag(&tag)?;
                    Checked::TagHistory(repo, tag)
                }
            },
            Command::Repos => Checked::Repos,
            Command::Replication => Checked::Replication,
            Command::Gc { dry_run, grace } => Checked::Gc {
                dry_run,
                grace: grace.as_deref().map(gc::parse_grace).transpose()?,
            },
            Command::Preheat {
                images,
                platform,
                agents,
            } => {
                let (images, platform) = preheat::parse_args(&images, platform.as_deref())?;
                Checked::Preheat(images, platform, agents)
            }
        })
    }
}

async fn dispatch(
    client: &Client,
    command: Checked,
    push_prepared: Option<transfer::HashedFile>,
    mode: OutputMode,
) -> Result<(), CtlError> {
    match command {
        Checked::Members => members::run(client, mode).await,
        Checked::Ring(key) => ring::run(client, &key, mode),
        Checked::BlobStat(digest) => blob::stat(client, &digest, mode).await,
        Checked::BlobPeers(digest) => blob::peers(client, &digest, mode).await,
        Checked::BlobDhtPeers(digest, node) => {
            blob_dht::run(client, &digest, node.as_deref(), mode).await
        }
        Checked::Push { namespace, .. } => match push_prepared {
            Some(file) => transfer::push(client, &file, &namespace, mode).await,
            None => Err(CtlError::Failed("the file was not hashed".into())),
        },
        Checked::Pull {
            digest,
            output,
            agent,
            namespace,
        } => transfer::pull(client, &digest, &output, agent.as_deref(), &namespace, mode).await,
        Checked::PullReport { digest, agent } => {
            pull_report::run(client, &digest, &agent, mode).await
        }
        Checked::Writeback => writeback::run(client, mode).await,
        Checked::Repair(digest, namespace) => repair::run(client, digest, &namespace, mode).await,
        Checked::TagGet(repo, tag) => build_index::tag_get(client, &repo, &tag, mode).await,
        Checked::TagPut(repo, tag, digest) => {
            build_index::tag_put(client, &repo, &tag, &digest, mode).await
        }
        Checked::TagLs(repo) => build_index::tag_ls(client, &repo, mode).await,
        Checked::TagHistory(repo, tag) => build_index::tag_history(client, &repo, &tag, mode).await,
        Checked::Repos => build_index::repos(client, mode).await,
        Checked::Replication => build_index::replication(client, mode).await,
        Checked::Gc { dry_run, grace } => gc::run(client, dry_run, grace, mode).await,
        Checked::Preheat(images, platform, agents) => {
            preheat::run(client, &images, platform, &agents, mode).await
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::error::exit;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommand_arguments_do_not_clash_with_global_flags() {
        let d = "sha256:".to_string() + &"ab".repeat(32);
        let cli = Cli::try_parse_from(["krakenctl", "ring", &d, "--key", "k.pem"]).unwrap();
        assert!(matches!(cli.command, Command::Ring { ref key } if *key == d));
        assert_eq!(cli.connect.key, Some(PathBuf::from("k.pem")));
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("6  not available"), "{help}");
    }

    #[test]
    fn ring_keys_are_digests_or_tags() {
        let d = "sha256:".to_string() + &"ab".repeat(32);
        assert!(matches!(parse_ring_key(&d), Ok(RingKey::Digest(_))));
        assert_eq!(
            parse_ring_key("library/ubuntu:22.04"),
            Ok(RingKey::Tag("library/ubuntu:22.04".into()))
        );
        assert_eq!(
            parse_ring_key("localhost:5000/app:v1"),
            Ok(RingKey::Tag("localhost:5000/app:v1".into()))
        );
        for bad in [
            "sha256:zz",
            "noseparator",
            ":tag",
            "repo:",
            "host:5000/app",
            "r:.x",
        ] {
            let e = parse_ring_key(bad).unwrap_err();
            assert_eq!(e.exit_code(), exit::BAD_ARGUMENT, "{bad}");
        }
    }

    #[test]
    fn timeouts_must_be_positive() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("x").is_err());
    }
}
