//! `krakenctl writeback`: every origin's write-back queue — depth, how much of it is due
//! now and when the rest is, and the oldest item.
//!
//! All origins of the view are asked at once. The table (or JSON) is printed even when
//! some do not answer; the command then fails with exit 3, as the total is incomplete. An
//! origin from before the due count is asked the older way, and its due columns say `?`.

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
    /// Items due now (`None`: unreachable, or an origin from before the count). The rest
    /// wait for a retry's backoff or a deferred first attempt.
    pub due: Option<u64>,
    /// Seconds until the first item not yet due becomes due.
    pub next_due_in_secs: Option<u64>,
    /// The oldest item.
    pub oldest: Option<QueuedItem>,
}

/// Asks every origin.
pub async fn collect(client: &Client) -> Vec<QueueRow> {
    let origins = client.origins();
    let calls = origins.iter().map(|m| ask(client, m.quic_addr));
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
                due: None,
                next_due_in_secs: None,
                oldest: None,
            };
            match answer {
                Ok(Response::WriteBackQueue(s)) => {
                    row.reachable = true;
                    row.depth = Some(s.depth);
                    row.due = Some(s.due);
                    row.next_due_in_secs = s.next_due_in_secs;
                    row.oldest = s.oldest;
                }
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

/// Asks one origin for its queue, the older way if it predates [`Request::WriteBackQueue`].
async fn ask(client: &Client, origin: SocketAddr) -> Result<Response, CallError> {
    match client.call(origin, &Request::WriteBackQueue).await {
        Err(e) if e.predates_request() => client.call(origin, &Request::WriteBackStatus).await,
        answer => answer,
    }
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
    let mut t = Table::new([
        "ORIGIN",
        "DEPTH",
        "DUE",
        "NEXT DUE",
        "OLDEST",
        "AGE",
        "ATTEMPTS",
        "LAST ERROR",
    ]);
    for r in rows {
        let Some(depth) = r.depth else {
            t.row([
                r.origin.clone(),
                "unreachable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                r.error.clone().unwrap_or_default(),
            ]);
            continue;
        };
        let (due, next) = match (r.due, r.next_due_in_secs) {
            (None, _) => ("?".to_string(), "?".to_string()),
            (Some(due), None) => (due.to_string(), "-".to_string()),
            (Some(due), Some(secs)) => (due.to_string(), format!("in {}", age(secs))),
        };
        let oldest = match &r.oldest {
            None => ["-".to_string(), "-".into(), "-".into(), String::new()],
            Some(o) => [
                format!("{}/{}", o.namespace, o.digest),
                age(o.age_secs),
                o.attempts.to_string(),
                o.last_error.clone().unwrap_or_default(),
            ],
        };
        let [name, queued_for, attempts, error] = oldest;
        t.row([
            r.origin.clone(),
            depth.to_string(),
            due,
            next,
            name,
            queued_for,
            attempts,
            error,
        ]);
    }
    let total: u64 = rows.iter().filter_map(|r| r.depth).sum();
    let due: u64 = rows.iter().filter_map(|r| r.due).sum();
    format!("{}\ntotal queued: {total}, due now: {due}\n", t.render())
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

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_storage::Digest;

    fn row(origin: &str) -> QueueRow {
        QueueRow {
            origin: origin.into(),
            quic: "127.0.0.1:1".parse().unwrap(),
            reachable: true,
            error: None,
            depth: None,
            due: None,
            next_due_in_secs: None,
            oldest: None,
        }
    }

    fn line<'a>(table: &'a str, origin: &str) -> Vec<&'a str> {
        let l = table.lines().find(|l| l.starts_with(origin)).unwrap();
        l.split_whitespace().collect()
    }

    #[test]
    fn the_table_says_what_is_due_and_when_the_rest_is() {
        let deferred = QueueRow {
            depth: Some(3),
            due: Some(1),
            next_due_in_secs: Some(42),
            oldest: Some(QueuedItem {
                namespace: "ns".into(),
                digest: Digest::sha256_of(b"x"),
                age_secs: 18,
                attempts: 0,
                last_error: None,
            }),
            ..row("origin-1")
        };
        let older = QueueRow {
            depth: Some(0),
            ..row("origin-2")
        };
        let empty = QueueRow {
            depth: Some(0),
            due: Some(0),
            ..row("origin-3")
        };
        let down = QueueRow {
            reachable: false,
            error: Some("timed out".into()),
            ..row("origin-4")
        };
        let table = render(&[deferred, older, empty, down]);
        assert_eq!(
            &line(&table, "origin-1")[..6],
            [
                "origin-1",
                "3",
                "1",
                "in",
                "42s",
                &format!("ns/{}", Digest::sha256_of(b"x"))
            ]
        );
        assert_eq!(&line(&table, "origin-2")[..4], ["origin-2", "0", "?", "?"]);
        assert_eq!(&line(&table, "origin-3")[..4], ["origin-3", "0", "0", "-"]);
        assert_eq!(&line(&table, "origin-4")[..2], ["origin-4", "unreachable"]);
        assert!(table.contains("total queued: 3, due now: 1"), "{table}");
    }
}
