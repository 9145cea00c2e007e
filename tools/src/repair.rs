//! `krakenctl repair [--digest D]`: every origin of the view scrubs its store now (or its
//! copy of one digest: re-verified, a corrupt copy quarantined and restored), then runs an
//! anti-entropy pass (or brings the digest to each of its owners), and says what it found
//! and fixed.
//!
//! Scrubbing comes first so that the copies anti-entropy counts and sends are known good.
//! All origins are asked at once and each answers when its pass ends (a pass waits for
//! one already running there). The table (or JSON) lists each origin's blobs checked,
//! blobs found short of an owner, copies made, blobs read through from the backend,
//! failures, and blobs still short; the totals count a short blob once however many
//! origins hold it. Exit 3 if an origin did not answer, 1 if copies failed or blobs are
//! still short, 5 with `--digest` for a blob neither the origins nor the backend hold.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use kraken_client::cluster::CallError;
use kraken_client::proto::{ErrorKind, RepairReport, Request, Response, ScrubReport};
use kraken_storage::Digest;
use serde::Serialize;

use crate::cli::OutputMode;
use crate::client::Client;
use crate::error::CtlError;
use crate::output::{Table, bytes, emit, emit_json};

/// How long an origin may take to answer: its pass copies whole blobs.
pub const REPAIR_WAIT: Duration = Duration::from_secs(600);

/// One origin's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepairRow {
    /// The origin.
    pub origin: String,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// Why it gave no report.
    pub error: Option<String>,
    /// It answered `NotFound` (`--digest`: no origin and no backend holds the blob).
    #[serde(skip)]
    pub not_found: bool,
    /// What its scrub found (`None` if it gave no answer; see `error`).
    pub scrub: Option<ScrubReport>,
    /// Its anti-entropy report.
    pub report: Option<RepairReport>,
}

/// The answer of `repair`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepairSummary {
    /// The digest asked about, if any.
    pub digest: Option<Digest>,
    /// Every origin's answer.
    pub origins: Vec<RepairRow>,
    /// Sums over the origins that answered.
    pub totals: Totals,
}

/// Sums over the origins' reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Copies made.
    pub copied: u64,
    /// Bytes they sent.
    pub copied_bytes: u64,
    /// Blobs read through from the backend.
    pub fetched: u64,
    /// Copies and reads that failed.
    pub failed: u64,
    /// Blobs found short before copying, at least (the most any one origin found: the
    /// holders of a blob overlap).
    pub found_short: u64,
    /// Distinct blobs still short after the pass.
    pub still_short: u64,
    /// Origins that did not answer.
    pub unanswered: u64,
    /// Co-owners some origin could not compare with.
    pub unreachable_peers: Vec<String>,
    /// What the scrubs found, summed.
    pub scrub: ScrubReport,
}

/// Sums `rows`. A blob short on several holders counts once when the reports name it
/// (each names up to a thousand), else per holder.
pub fn totals(rows: &[RepairRow]) -> Totals {
    let mut t = Totals::default();
    let mut still = BTreeSet::new();
    let mut unnamed_still = 0;
    let mut peers = BTreeSet::new();
    for row in rows {
        if let Some(scrub) = &row.scrub {
            t.scrub.add(scrub);
        }
        let Some(r) = &row.report else {
            t.unanswered += 1;
            continue;
        };
        t.copied += r.copied;
        t.copied_bytes += r.copied_bytes;
        t.fetched += r.fetched;
        t.failed += r.failed;
        t.found_short = t.found_short.max(r.under_replicated);
        still.extend(r.short.iter().copied());
        unnamed_still += r.remaining.saturating_sub(r.short.len() as u64);
        peers.extend(r.unreachable.iter().cloned());
    }
    t.still_short = still.len() as u64 + unnamed_still;
    t.unreachable_peers = peers.into_iter().collect();
    t
}

/// Asks every origin.
pub async fn collect(
    client: &Client,
    digest: Option<Digest>,
    namespace: &str,
) -> Result<RepairSummary, CtlError> {
    let origins = client.origins();
    if origins.is_empty() {
        return Err(CtlError::Failed("no origin in the cluster view".into()));
    }
    let request = Request::Repair {
        digest,
        namespace: namespace.to_string(),
    };
    let calls = origins.iter().map(|m| {
        let cluster = client.cluster();
        let request = &request;
        async move {
            let scrub = cluster
                .call_within(m.quic_addr, &Request::Scrub { digest }, REPAIR_WAIT)
                .await;
            let repair = cluster.call_within(m.quic_addr, request, REPAIR_WAIT).await;
            (scrub, repair)
        }
    });
    let answers = futures::future::join_all(calls).await;
    let rows: Vec<RepairRow> = origins
        .iter()
        .zip(answers)
        .map(|(m, (scrub, answer))| {
            let mut row = RepairRow {
                origin: m.id.as_str().to_string(),
                quic: m.quic_addr,
                error: None,
                not_found: false,
                scrub: None,
                report: None,
            };
            match scrub {
                Ok(Response::Scrubbed(r)) => row.scrub = Some(r),
                Ok(other) => {
                    row.error = Some(CallError::unexpected(m.quic_addr, other).to_string())
                }
                Err(e) => row.error = Some(format!("scrub: {e}")),
            }
            match answer {
                Ok(Response::Repaired(r)) => row.report = Some(r),
                Ok(other) => {
                    row.error = Some(CallError::unexpected(m.quic_addr, other).to_string())
                }
                Err(e) => {
                    row.not_found = e.remote().is_some_and(|r| r.kind == ErrorKind::NotFound);
                    row.error = Some(e.to_string());
                }
            }
            row
        })
        .collect();
    let totals = totals(&rows);
    Ok(RepairSummary {
        digest,
        origins: rows,
        totals,
    })
}

/// The summary as text.
pub fn render(s: &RepairSummary) -> String {
    let mut t = Table::new([
        "ORIGIN",
        "SCRUBBED",
        "CORRUPT",
        "RESTORED",
        "BLOBS",
        "SHORT",
        "COPIED",
        "FETCHED",
        "FAILED",
        "STILL SHORT",
        "NOTE",
    ]);
    for row in &s.origins {
        match &row.report {
            Some(r) => t.row([
                row.origin.clone(),
                scrub_cell(row, |s| s.checked),
                scrub_cell(row, |s| s.corrupt),
                scrub_cell(row, |s| s.restored),
                r.blobs.to_string(),
                r.under_replicated.to_string(),
                r.copied.to_string(),
                r.fetched.to_string(),
                r.failed.to_string(),
                r.remaining.to_string(),
                match (&row.error, r.unreachable.is_empty()) {
                    (Some(e), _) => e.clone(),
                    (None, true) => String::new(),
                    (None, false) => {
                        format!("could not compare with {}", r.unreachable.join(","))
                    }
                },
            ]),
            None => t.row([
                row.origin.clone(),
                scrub_cell(row, |s| s.checked),
                scrub_cell(row, |s| s.corrupt),
                scrub_cell(row, |s| s.restored),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                row.error.clone().unwrap_or_default(),
            ]),
        };
    }
    let x = &s.totals;
    let mut out = t.render();
    out.push_str(&format!(
        "\nscrubbed {} blobs ({}): {} corrupt, {} restored, {} failed\n",
        x.scrub.checked,
        bytes(x.scrub.bytes),
        x.scrub.corrupt,
        x.scrub.restored,
        x.scrub.failed
    ));
    out.push_str(&format!(
        "found {} blobs short, copied {} ({}), read {} through from the backend, {} failed; {} blobs still short of an owner\n",
        x.found_short,
        x.copied,
        bytes(x.copied_bytes),
        x.fetched,
        x.failed,
        x.still_short
    ));
    if x.copied == 0
        && x.fetched == 0
        && x.failed == 0
        && x.still_short == 0
        && x.unanswered == 0
        && x.scrub.corrupt == 0
        && x.scrub.failed == 0
        && s.origins.iter().all(|r| r.scrub.is_some())
    {
        out.push_str("nothing to repair: every blob is on each of its owners\n");
    }
    out
}

/// The error `repair` ends with, if any (after printing).
pub fn outcome(s: &RepairSummary) -> Result<(), CtlError> {
    if nobody_has(s) {
        let d = s.digest.map(|d| d.to_string()).unwrap_or_default();
        return Err(CtlError::NotFound(format!(
            "no origin holds {d} and the backend does not have it"
        )));
    }
    let x = &s.totals;
    if x.unanswered > 0 {
        return Err(CtlError::Unreachable(format!(
            "{} of {} origins did not answer",
            x.unanswered,
            s.origins.len()
        )));
    }
    if let Some(row) = s.origins.iter().find(|r| r.scrub.is_none()) {
        return Err(CtlError::Unreachable(format!(
            "{} did not scrub: {}",
            row.origin,
            row.error.as_deref().unwrap_or("no answer")
        )));
    }
    if x.failed > 0 || x.still_short > 0 || x.scrub.failed > 0 {
        return Err(CtlError::Failed(format!(
            "{} copies failed, {} blobs still short of an owner, {} corrupt copies not restored",
            x.failed, x.still_short, x.scrub.failed
        )));
    }
    Ok(())
}

/// One scrub count of `row`, or `-` when its scrub gave no answer.
fn scrub_cell(row: &RepairRow, count: impl Fn(&ScrubReport) -> u64) -> String {
    row.scrub
        .as_ref()
        .map_or_else(|| "-".to_string(), |s| count(s).to_string())
}

/// `krakenctl repair`.
pub async fn run(
    client: &Client,
    digest: Option<Digest>,
    namespace: &str,
    mode: OutputMode,
) -> Result<(), CtlError> {
    let summary = collect(client, digest, namespace).await?;
    if nobody_has(&summary) {
        return outcome(&summary);
    }
    if mode.json {
        emit_json(&summary)?;
    } else {
        emit(&render(&summary))?;
    }
    outcome(&summary)
}

/// `--digest` of a blob no origin holds and the owner that tried could not read through
/// (the backend does not have it): one error line, no table.
fn nobody_has(s: &RepairSummary) -> bool {
    s.digest.is_some()
        && s.origins.iter().any(|r| r.not_found)
        && s.origins
            .iter()
            .filter_map(|r| r.report.as_ref())
            .all(|r| r.blobs == 0 && r.fetched == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, report: Option<RepairReport>) -> RepairRow {
        RepairRow {
            origin: name.into(),
            quic: "127.0.0.1:1".parse().unwrap(),
            error: report.is_none().then(|| "timed out".to_string()),
            not_found: false,
            scrub: report.as_ref().map(|_| ScrubReport::default()),
            report,
        }
    }

    #[test]
    fn a_blob_short_on_two_holders_counts_once() {
        let d = Digest::sha256_of(b"x");
        let short = RepairReport {
            blobs: 5,
            under_replicated: 1,
            failed: 1,
            remaining: 1,
            short: vec![d],
            ..RepairReport::default()
        };
        let rows = vec![
            row("origin-1", Some(short.clone())),
            row("origin-2", Some(short)),
        ];
        let s = RepairSummary {
            digest: None,
            totals: totals(&rows),
            origins: rows,
        };
        assert_eq!(s.totals.still_short, 1);
        assert_eq!(s.totals.failed, 2);
        assert!(matches!(outcome(&s), Err(CtlError::Failed(_))));
        assert!(render(&s).contains("1 blobs still short"), "{}", render(&s));
    }

    #[test]
    fn a_healthy_cluster_exits_0_and_a_silent_origin_exits_3() {
        let ok = RepairReport {
            blobs: 3,
            ..RepairReport::default()
        };
        let rows = vec![row("origin-1", Some(ok.clone()))];
        let s = RepairSummary {
            digest: None,
            totals: totals(&rows),
            origins: rows,
        };
        assert_eq!(outcome(&s), Ok(()));
        assert!(render(&s).contains("nothing to repair"));
        let rows = vec![row("origin-1", Some(ok)), row("origin-2", None)];
        let s = RepairSummary {
            digest: None,
            totals: totals(&rows),
            origins: rows,
        };
        assert_eq!(
            outcome(&s).map_err(|e| e.exit_code()),
            Err(crate::exit::UNREACHABLE)
        );
    }
}
