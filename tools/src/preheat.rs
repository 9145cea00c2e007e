//! `krakenctl preheat <repo:tag|repo@digest>… [--platform os/arch[/variant]]`: make the
//! owning origins hold each image (manifest or index, the children the platform filter
//! keeps, configs and layers), reading what they lack through from their backends.
//!
//! The walk is `kraken_client::preheat`; this module prints one line per blob as it
//! finishes (on a terminal, and always with `--json` off) and a summary per image, or one
//! JSON document with every image. A blob that failed makes the command fail (exit 1)
//! after every image was tried; an unknown tag is exit 5.
//!
//! With `--agents NAME,…` (or `all`: every agent `cluster.json` names), each of those
//! agents then pulls every blob the walk warmed through the swarm (`Pull`), so a rollout
//! finds them on the hosts; agents do not gossip, so they are named, not discovered.

use std::net::SocketAddr;
use std::time::Duration;

use kraken_client::preheat::{
    ImageRef, PlatformFilter, PreheatConfig, PreheatError, PreheatEvent, PreheatSummary, preheat,
};
use kraken_storage::Digest;
use serde::Serialize;

use crate::cli::OutputMode;
use crate::client::Client;
use crate::error::CtlError;
use crate::output::{bytes, emit, emit_json, millis};
use crate::transfer::agent_pull;

/// One blob in the JSON output.
#[derive(Debug, Clone, Serialize)]
pub struct BlobLine {
    /// The blob.
    pub digest: Digest,
    /// `root`, `manifest`, `config`, `layer` or `subject`.
    pub role: &'static str,
    /// Its length (0 when it failed).
    pub length: u64,
    /// Read through now (false: the owner already held it).
    pub fetched: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// One image in the JSON output.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// As given.
    pub image: String,
    /// What it resolved to.
    pub digest: Option<Digest>,
    /// Blobs read through now, and their bytes.
    pub blobs_fetched: u64,
    /// Bytes read through now.
    pub bytes_fetched: u64,
    /// Blobs the owners already held.
    pub blobs_held: u64,
    /// Their bytes.
    pub bytes_held: u64,
    /// Index entries left out by `--platform`.
    pub skipped: u64,
    /// Blobs that failed.
    pub failed: u64,
    /// Wall time in ms.
    pub elapsed_ms: u64,
    /// Why the image could not be walked at all (unknown tag, build-index down).
    pub error: Option<String>,
    /// Every blob.
    pub blobs: Vec<BlobLine>,
    /// What each `--agents` agent prefetched.
    pub agents: Vec<AgentPrefetch>,
}

/// One agent's prefetch of an image's blobs.
#[derive(Debug, Clone, Serialize)]
pub struct AgentPrefetch {
    /// As named on the command line.
    pub agent: String,
    /// Blobs it now holds.
    pub blobs: u64,
    /// Bytes it got from other agents.
    pub bytes_from_agents: u64,
    /// Bytes it got from origins.
    pub bytes_from_origins: u64,
    /// Why it stopped, if it did.
    pub error: Option<String>,
}

/// Parses the arguments of `preheat` (exit 4 on a bad one).
pub fn parse_args(
    images: &[String],
    platform: Option<&str>,
) -> Result<(Vec<ImageRef>, Option<PlatformFilter>), CtlError> {
    let bad = |e: kraken_client::preheat::ParseError| CtlError::BadArgument(e.to_string());
    let images = images
        .iter()
        .map(|s| s.parse().map_err(bad))
        .collect::<Result<Vec<ImageRef>, _>>()?;
    let platform = platform.map(str::parse).transpose().map_err(bad)?;
    Ok((images, platform))
}

/// `krakenctl preheat`.
pub async fn run(
    client: &Client,
    images: &[ImageRef],
    platform: Option<PlatformFilter>,
    agents: &[String],
    mode: OutputMode,
) -> Result<(), CtlError> {
    let agents = agent_addrs(client, agents).await?;
    let config = PreheatConfig {
        platform,
        ..PreheatConfig::default()
    };
    let mut reports = Vec::new();
    let mut worst: Option<CtlError> = None;
    for image in images {
        let mut blobs = Vec::new();
        let outcome = preheat(client.cluster(), image, &config, |event| {
            if let Some(line) = blob_line(event) {
                if !mode.json {
                    let _ = emit(&format!("{}\n", text_line(&line)));
                }
                blobs.push(line);
            }
        })
        .await;
        let mut report = image_report(image, outcome, blobs, &mut worst);
        if !mode.json {
            emit(&format!("{}\n", summary_line(&report)))?;
        }
        if report.error.is_none() {
            report.agents = prefetch(client, &agents, image, &report.blobs).await;
        }
        for a in &report.agents {
            if !mode.json {
                emit(&format!("{}\n", agent_line(a)))?;
            }
            if let Some(e) = &a.error {
                worst.get_or_insert(CtlError::Failed(format!("{}: {e}", a.agent)));
            }
        }
        reports.push(report);
    }
    if mode.json {
        emit_json(&reports)?;
    }
    worst.map_or(Ok(()), Err)
}

/// The line a finished (or failed) blob prints; `None` for a start.
fn blob_line(event: &PreheatEvent<'_>) -> Option<BlobLine> {
    match event {
        PreheatEvent::Started { .. } => None,
        PreheatEvent::Done {
            digest,
            role,
            length,
            fetched,
        } => Some(BlobLine {
            digest: *digest,
            role: role.as_str(),
            length: *length,
            fetched: *fetched,
            error: None,
        }),
        PreheatEvent::Failed(f) => Some(BlobLine {
            digest: f.digest,
            role: f.role.as_str(),
            length: 0,
            fetched: false,
            error: Some(f.error.to_string()),
        }),
    }
}

fn text_line(line: &BlobLine) -> String {
    let state = match (&line.error, line.fetched) {
        (Some(e), _) => format!("FAILED  {e}"),
        (None, true) => format!("fetched {}", bytes(line.length)),
        (None, false) => format!("held    {}", bytes(line.length)),
    };
    format!("{:<8} {}  {state}", line.role, line.digest)
}

fn summary_line(r: &ImageReport) -> String {
    if let Some(e) = &r.error {
        return format!("{}: FAILED: {e}", r.image);
    }
    let mut s = format!(
        "{}: {} blobs in {}: {} fetched ({}), {} already held ({})",
        r.image,
        r.blobs_fetched + r.blobs_held,
        millis(r.elapsed_ms),
        r.blobs_fetched,
        bytes(r.bytes_fetched),
        r.blobs_held,
        bytes(r.bytes_held),
    );
    if r.skipped > 0 {
        s += &format!(", {} other platforms skipped", r.skipped);
    }
    if r.failed > 0 {
        s += &format!(", {} FAILED", r.failed);
    }
    s
}

/// The report of one image; a failure is kept in `worst` (unknown tags are not found,
/// anything else failed).
fn image_report(
    image: &ImageRef,
    outcome: Result<PreheatSummary, PreheatError>,
    blobs: Vec<BlobLine>,
    worst: &mut Option<CtlError>,
) -> ImageReport {
    let mut report = ImageReport {
        image: image.to_string(),
        digest: None,
        blobs_fetched: 0,
        bytes_fetched: 0,
        blobs_held: 0,
        bytes_held: 0,
        skipped: 0,
        failed: 0,
        elapsed_ms: 0,
        error: None,
        blobs,
        agents: Vec::new(),
    };
    match outcome {
        Ok(s) => {
            report.digest = Some(s.root);
            report.blobs_fetched = s.blobs_fetched;
            report.bytes_fetched = s.bytes_fetched;
            report.blobs_held = s.blobs_held;
            report.bytes_held = s.bytes_held;
            report.skipped = s.skipped;
            report.failed = s.failures.len() as u64;
            report.elapsed_ms = ms(s.elapsed);
            if report.failed > 0 {
                worst.get_or_insert(CtlError::Failed(format!(
                    "{image}: {} blobs failed",
                    report.failed
                )));
            }
        }
        Err(e) => {
            report.error = Some(e.to_string());
            let err = match &e {
                PreheatError::UnknownTag { .. } => CtlError::NotFound(e.to_string()),
                PreheatError::Resolve { source, .. } => CtlError::from_call(source),
            };
            worst.get_or_insert(err);
        }
    }
    report
}

/// The agents `--agents` names (`all`: every agent cluster.json knows), with addresses.
async fn agent_addrs(
    client: &Client,
    names: &[String],
) -> Result<Vec<(String, SocketAddr)>, CtlError> {
    if names.iter().any(|n| n == "all") {
        return Ok(client
            .known_nodes()
            .iter()
            .filter(|n| n.roles.iter().any(|r| r == "agent"))
            .map(|n| (n.name.clone(), n.quic))
            .collect());
    }
    let mut out = Vec::new();
    for name in names {
        out.push((name.clone(), client.node_addr(name).await?));
    }
    Ok(out)
}

/// Each agent pulls every blob the walk warmed, one after another; agents run at once.
async fn prefetch(
    client: &Client,
    agents: &[(String, SocketAddr)],
    image: &ImageRef,
    blobs: &[BlobLine],
) -> Vec<AgentPrefetch> {
    let warmed: Vec<Digest> = blobs
        .iter()
        .filter(|b| b.error.is_none())
        .map(|b| b.digest)
        .collect();
    let pulls = agents
        .iter()
        .map(|(agent, addr)| prefetch_one(client, agent, *addr, &image.repo, &warmed));
    futures::future::join_all(pulls).await
}

/// One agent pulls `warmed` in order, stopping at the first failure.
async fn prefetch_one(
    client: &Client,
    agent: &str,
    addr: SocketAddr,
    namespace: &str,
    warmed: &[Digest],
) -> AgentPrefetch {
    let mut done = AgentPrefetch {
        agent: agent.to_string(),
        blobs: 0,
        bytes_from_agents: 0,
        bytes_from_origins: 0,
        error: None,
    };
    for digest in warmed {
        match agent_pull(client, addr, namespace, digest).await {
            Ok(r) => {
                done.blobs += 1;
                done.bytes_from_agents += r.bytes_from_agents;
                done.bytes_from_origins += r.bytes_from_origins;
            }
            Err(e) => {
                done.error = Some(format!("{digest}: {e}"));
                break;
            }
        }
    }
    done
}

fn agent_line(a: &AgentPrefetch) -> String {
    match &a.error {
        Some(e) => format!("agent {}: FAILED after {} blobs: {e}", a.agent, a.blobs),
        None => format!(
            "agent {}: {} blobs held ({} from agents, {} from origins)",
            a.agent,
            a.blobs,
            bytes(a.bytes_from_agents),
            bytes(a.bytes_from_origins)
        ),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kraken_client::preheat::BlobRole;

    #[test]
    fn arguments_are_checked() {
        let (images, platform) = parse_args(
            &["a/b:v1".into(), "c@sha256:".to_string() + &"ab".repeat(32)],
            Some("linux/arm64"),
        )
        .unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(platform.unwrap().architecture, "arm64");
        assert!(matches!(
            parse_args(&["nope".into()], None),
            Err(CtlError::BadArgument(_))
        ));
        assert!(matches!(
            parse_args(&["a:b".into()], Some("linux")),
            Err(CtlError::BadArgument(_))
        ));
    }

    #[test]
    fn lines_say_fetched_held_or_failed() {
        let line = BlobLine {
            digest: Digest::sha256_of(b"x"),
            role: BlobRole::Root.as_str(),
            length: 2048,
            fetched: true,
            error: None,
        };
        assert!(
            text_line(&line).contains("fetched 2.00 KiB"),
            "{}",
            text_line(&line)
        );
        let held = BlobLine {
            fetched: false,
            ..line.clone()
        };
        assert!(text_line(&held).contains("held"));
        let failed = BlobLine {
            error: Some("boom".into()),
            ..line
        };
        assert!(text_line(&failed).contains("FAILED  boom"));
    }
}
