//! `krakenctl gc [--dry-run] [--grace DURATION]`: garbage collection, run by the
//! build-index node that owns the `kraken:gc` key (one run at a time cluster-wide).
//!
//! The command starts a run (or joins the one in progress, or resumes an interrupted
//! one), shows its phase and sweep progress on a terminal while it runs, and prints the
//! report: the blobs deleted (or, with `--dry-run`, those that would be), the bytes freed,
//! the unreachable blobs kept because they were used within the grace period, and errors.
//! A run with errors exits 1; its plan is kept and the next `krakenctl gc` finishes it.

use std::time::Duration;

use kraken_client::proto::{GC_KEY, GcPhase, GcReport, Request, Response};
use kraken_membership::Role;
use kraken_membership::ring::tag_key;

use crate::build_index::build_index_nodes;
use crate::cli::OutputMode;
use crate::client::Client;
use crate::error::CtlError;
use crate::output::{Table, bytes, emit, emit_json};
use crate::progress::Progress;

/// How long each call waits for the run to end before reporting progress.
const POLL: Duration = Duration::from_secs(2);

/// Parses `--grace`: seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_grace(s: &str) -> Result<Duration, CtlError> {
    let bad = || CtlError::BadArgument(format!("bad duration {s:?} (e.g. 0, 90s, 30m, 2h, 1d)"));
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

fn ended(r: &GcReport) -> bool {
    matches!(r.phase, GcPhase::Done | GcPhase::Interrupted)
}

/// `krakenctl gc`.
pub async fn run(
    client: &Client,
    dry_run: bool,
    grace: Option<Duration>,
    mode: OutputMode,
) -> Result<(), CtlError> {
    build_index_nodes(client)?;
    let owner = client
        .cluster()
        .owners_of_key(Role::BuildIndex, &tag_key(GC_KEY), 1)
        .into_iter()
        .next()
        .ok_or_else(|| CtlError::NotAvailable("no build-index".into()))?;
    let wait_ms = u64::try_from(POLL.as_millis()).unwrap_or(u64::MAX);
    let limit = POLL + client.cluster().call_timeout;
    let call = |request: Request| async move {
        match client
            .cluster()
            .call_within(owner.quic_addr, &request, limit)
            .await
        {
            Ok(Response::Gc(report)) => Ok(report),
            Ok(other) => Err(CtlError::from_call(
                &kraken_client::cluster::CallError::unexpected(owner.quic_addr, other),
            )),
            Err(e) => Err(CtlError::from_call(&e)),
        }
    };
    let grace_ms = grace.map(|g| u64::try_from(g.as_millis()).unwrap_or(u64::MAX));
    let mut report = call(Request::Gc {
        dry_run,
        grace_ms,
        wait_ms,
    })
    .await?;
    let spinner = Progress::spinner(phase_line(&report));
    while !ended(&report) {
        report = call(Request::GcStatus {
            run_id: report.run_id,
            wait_ms,
        })
        .await?;
        spinner.message(phase_line(&report));
    }
    spinner.finish();
    if mode.json {
        emit_json(&report)?;
    } else {
        emit(&render(&report))?;
    }
    if report.phase == GcPhase::Interrupted {
        return Err(CtlError::Failed(format!(
            "garbage collection stopped with {} error(s); the next `krakenctl gc` resumes it",
            report.error_count
        )));
    }
    Ok(())
}

fn phase_line(r: &GcReport) -> String {
    match r.phase {
        GcPhase::Marking => format!("marking: {} tags", r.roots),
        GcPhase::Inventory => format!(
            "listing what origins and backends hold ({} marked)",
            r.marked
        ),
        GcPhase::Sweeping => format!(
            "sweeping: {}/{} blobs, {} freed",
            r.purged + r.kept_at_sweep,
            r.planned_count,
            bytes(r.freed_bytes)
        ),
        GcPhase::Done | GcPhase::Interrupted => "done".into(),
    }
}

/// The report as text.
pub fn render(r: &GcReport) -> String {
    let mut out = String::new();
    let what = if r.dry_run { " (dry run)" } else { "" };
    let resumed = if r.resumed { ", resumed" } else { "" };
    out.push_str(&format!(
        "garbage collection {}{what}{resumed}: {} tags, {} digests reachable\n",
        r.run_id, r.roots, r.marked
    ));
    if !r.planned.is_empty() {
        let mut t = Table::new(["DIGEST", "SIZE"]);
        for (d, n) in &r.planned {
            t.row([d.to_string(), bytes(*n)]);
        }
        out.push_str(&t.render());
    }
    let unlisted = r.planned_count.saturating_sub(r.planned.len() as u64);
    if unlisted > 0 {
        out.push_str(&format!("… and {unlisted} more\n"));
    }
    if r.dry_run {
        out.push_str(&format!(
            "would delete {} blobs, {}\n",
            r.planned_count,
            bytes(r.planned_bytes)
        ));
    } else {
        out.push_str(&format!(
            "deleted {} of {} blobs, freed {}\n",
            r.purged,
            r.planned_count,
            bytes(r.freed_bytes)
        ));
    }
    out.push_str(&format!(
        "kept {} unreachable blobs used within the grace period",
        r.kept_recent + r.kept_at_sweep
    ));
    out.push('\n');
    for e in &r.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    let unlisted = r.error_count.saturating_sub(r.errors.len() as u64);
    if unlisted > 0 {
        out.push_str(&format!("… and {unlisted} more errors\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn grace_takes_seconds_or_a_unit() {
        assert_eq!(parse_grace("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_grace("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_grace("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_grace("1w").is_err());
        assert!(parse_grace("h").is_err());
    }
}
