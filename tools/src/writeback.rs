//! `krakenctl writeback`: every origin's write-back queue — depth and oldest item.
//!
//! All origins of the view are asked at once. The table (or JSON) is printed even when
//! some do not answer; the command then fails with exit 3, as the total is incomplete.

use std::net::SocketAddr;

use kraken_client::cluster::CallError;
use kraken_client::proto::{QueuedItem, Request, Response};
use serde::Serialize;

use crate::cli::OutputMode;
use crate::client::Client;
use crate::error::CtlError;
use crate::output::{Table, emit, emit_json};

/// One origin's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueRow {
    /// The origin.
    pub origin: String,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// It answered.
    pub reachable: bool,
    /// Why not.
    pub error: Option<String>,
    /// Items queued.
    pub depth: Option<u64>,
    /// The oldest item.
    pub oldest: Option<QueuedItem>,
}

/// Asks every origin.
pub async fn collect(client: &Client) -> Vec<QueueRow> {
    let origins = client.origins();
    let calls = origins
        .iter()
        .map(|m| client.call(m.quic_addr, &Request::WriteBackStatus));
    let answers = futures::future::join_all(calls).await;
    origins
        .iter()
        .zip(answers)
        .map(|(m, answer)| {
            let mut row = QueueRow {
                origin: m.id.as_str().to_string(),
                quic: m.quic_addr,
                reachable: false,
                error: None,
                depth: None,
                oldest: None,
            };
            match answer {
                Ok(Response::WriteBack(s)) => {
                    row.reachable = true;
                    row.depth = Some(s.depth);
                    row.oldest = s.oldest;
                }
                Ok(other) => {
                    row.error = Some(CallError::unexpected(m.quic_addr, other).to_string())
                }
                Err(e) => row.error = Some(e.to_string()),
            }
            row
        })
        .collect()
}

fn age(secs: u64) -> String {
    if secs < 120 {
        format!("{secs}s")
    } else if secs < 7200 {
        format!("{}m", secs / 60)
    } else {
        format!("{}h", secs / 3600)
    }
}

/// The queues as text.
pub fn render(rows: &[QueueRow]) -> String {
    let mut t = Table::new(["ORIGIN", "DEPTH", "OLDEST", "AGE", "ATTEMPTS", "LAST ERROR"]);
    for r in rows {
        match (&r.depth, &r.oldest) {
            (None, _) => t.row([
                r.origin.clone(),
                "unreachable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                r.error.clone().unwrap_or_default(),
            ]),
            (Some(depth), None) => t.row([
                r.origin.clone(),
                depth.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                String::new(),
            ]),
            (Some(depth), Some(o)) => t.row([
                r.origin.clone(),
                depth.to_string(),
                format!("{}/{}", o.namespace, o.digest),
                age(o.age_secs),
                o.attempts.to_string(),
                o.last_error.clone().unwrap_or_default(),
            ]),
        };
    }
    let total: u64 = rows.iter().filter_map(|r| r.depth).sum();
    format!("{}\ntotal queued: {total}\n", t.render())
}

/// `krakenctl writeback`.
pub async fn run(client: &Client, mode: OutputMode) -> Result<(), CtlError> {
    let rows = collect(client).await;
    if rows.is_empty() {
        return Err(CtlError::Failed("no origin in the cluster view".into()));
    }
    if mode.json {
        emit_json(&rows)?;
    } else {
        emit(&render(&rows))?;
    }
    let down = rows.iter().filter(|r| !r.reachable).count();
    if down > 0 {
        return Err(CtlError::Unreachable(format!(
            "{down} of {} origins did not answer",
            rows.len()
        )));
    }
    Ok(())
}
