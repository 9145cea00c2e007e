//! `krakenctl pull-report <digest> --agent ADDR`: where the bytes of an agent's last pull
//! of a blob came from.
//!
//! The table shows the bytes from agents and from origins (with their share), the pull's
//! wall time, requests retried after a timeout, pieces that failed verification, and one
//! line per peer that sent bytes. Peers are named by connecting to every known node (the
//! view's ring nodes and `cluster.json`'s agents) and matching certificate peer ids;
//! others show as `?`. `--json` prints the node's `PullReport` unchanged.
//!
//! The backend's part: every origin is asked whether it read the blob through from its
//! backend (and how long ago); bytes from those origins first came from the backend. Peers
//! that sent pieces failing verification are listed with their count (each was
//! blacklisted). `--json` prints the node's `PullReport` with a `backend_reads` list added.

use std::collections::BTreeMap;

use kraken_client::proto::{PullReport, Request, Response};
use kraken_storage::Digest;
use kraken_transport::wire::PeerId;

use crate::cli::OutputMode;
use crate::client::Client;
use crate::error::CtlError;
use crate::output::{Table, bytes, emit, emit_json, millis, percent, yes_no};

/// Asks the agent at `agent` (address or node name) for its report.
pub async fn fetch(client: &Client, digest: &Digest, agent: &str) -> Result<PullReport, CtlError> {
    let addr = client.node_addr(agent).await?;
    match client
        .call(addr, &Request::PullReport { digest: *digest })
        .await
    {
        Ok(Response::Pull(r)) => Ok(r),
        Ok(other) => Err(CtlError::from_call(
            &kraken_client::cluster::CallError::unexpected(addr, other),
        )),
        Err(e) => Err(CtlError::from_call(&e)),
    }
}

/// The report as text; `names` maps peer ids (hex) to node names.
pub fn render(
    agent: &str,
    r: &PullReport,
    names: &BTreeMap<String, String>,
    backend: &[(String, u64)],
) -> String {
    let moved = r.bytes_from_agents + r.bytes_from_origins;
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<17}{v}\n"));
    line(&mut out, "digest", r.digest.to_string());
    line(&mut out, "agent", agent.to_string());
    line(
        &mut out,
        "length",
        format!("{} ({} bytes)", bytes(r.length), r.length),
    );
    line(&mut out, "elapsed", millis(r.elapsed_ms));
    line(
        &mut out,
        "already present",
        yes_no(r.already_present).into(),
    );
    line(
        &mut out,
        "from agents",
        format!(
            "{} ({})",
            bytes(r.bytes_from_agents),
            percent(r.bytes_from_agents, moved)
        ),
    );
    line(
        &mut out,
        "from origins",
        format!(
            "{} ({})",
            bytes(r.bytes_from_origins),
            percent(r.bytes_from_origins, moved)
        ),
    );
    line(&mut out, "pieces retried", r.pieces_retried.to_string());
    line(&mut out, "bad pieces", r.bad_pieces.to_string());
    out.push_str(&render_backend(backend));
    out.push('\n');
    if r.sources.is_empty() {
        out.push_str("no peer sent bytes\n");
        return out;
    }
    let mut t = Table::new(["SOURCE", "KIND", "BYTES", "SHARE", "PEER ID"]);
    let mut sources = r.sources.clone();
    sources.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    for (id, kind, n) in &sources {
        t.row([
            names.get(id).cloned().unwrap_or_else(|| "?".into()),
            kind.clone(),
            bytes(*n),
            percent(*n, moved),
            id.chars().take(16).collect(),
        ]);
    }
    out.push_str(&t.render());
    if !r.bad_peers.is_empty() {
        out.push_str("\nbad peers (sent pieces that failed verification; blacklisted):\n");
        let mut t = Table::new(["PEER", "KIND", "BAD PIECES", "PEER ID"]);
        for (id, kind, n) in &r.bad_peers {
            t.row([
                names.get(id).cloned().unwrap_or_else(|| "?".into()),
                kind.clone(),
                n.to_string(),
                id.chars().take(16).collect(),
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

/// Origins that read `digest` through from their backend: (name, seconds ago).
pub async fn backend_reads(client: &Client, digest: &Digest) -> Vec<(String, u64)> {
    let origins = client.origins();
    let request = Request::BlobStat { digest: *digest };
    let answers =
        futures::future::join_all(origins.iter().map(|m| client.call(m.quic_addr, &request))).await;
    origins
        .iter()
        .zip(answers)
        .filter_map(|(m, a)| match a {
            Ok(Response::BlobStat(s)) => s
                .read_through_secs_ago
                .map(|ago| (m.id.as_str().to_string(), ago)),
            _ => None,
        })
        .collect()
}

/// The backend lines of the table.
pub fn render_backend(reads: &[(String, u64)]) -> String {
    if reads.is_empty() {
        return "backend          not read (every origin already held the blob)\n".into();
    }
    let list: Vec<String> = reads
        .iter()
        .map(|(name, ago)| format!("{name} read it through {ago} s ago"))
        .collect();
    format!("backend          {}\n", list.join("; "))
}

/// `krakenctl pull-report`.
pub async fn run(
    client: &Client,
    digest: &Digest,
    agent: &str,
    mode: OutputMode,
) -> Result<(), CtlError> {
    let report = fetch(client, digest, agent).await?;
    let reads = backend_reads(client, digest).await;
    if mode.json {
        #[derive(serde::Serialize)]
        struct WithBackend<'a> {
            #[serde(flatten)]
            report: &'a PullReport,
            backend_reads: Vec<BackendRead>,
        }
        #[derive(serde::Serialize)]
        struct BackendRead {
            origin: String,
            secs_ago: u64,
        }
        return emit_json(&WithBackend {
            report: &report,
            backend_reads: reads
                .into_iter()
                .map(|(origin, secs_ago)| BackendRead { origin, secs_ago })
                .collect(),
        });
    }
    let names: BTreeMap<String, String> = client
        .names_by_peer_id()
        .await
        .into_iter()
        .map(|(id, name): (PeerId, String)| (hex::encode(id.0), name))
        .collect();
    let addr = client.node_addr(agent).await?;
    let label = match client.names_by_addr().get(&addr) {
        Some(name) => format!("{name} ({addr})"),
        None => addr.to_string(),
    };
    emit(&render(&label, &report, &names, &reads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_shares_and_names() {
        let r = PullReport {
            digest: Digest::sha256_of(b"x"),
            length: 4 << 20,
            elapsed_ms: 1234,
            already_present: false,
            bytes_from_agents: 1 << 20,
            bytes_from_origins: 3 << 20,
            pieces_retried: 2,
            bad_pieces: 1,
            sources: vec![
                ("aa".repeat(32), "agent".into(), 1 << 20),
                ("bb".repeat(32), "origin".into(), 3 << 20),
            ],
            bad_peers: vec![("cc".repeat(32), "agent".into(), 1)],
        };
        let names = BTreeMap::from([("bb".repeat(32), "origin-1".to_string())]);
        let text = render("agent-1", &r, &names, &[("origin-2".into(), 7)]);
        assert!(text.contains("from agents      1.00 MiB (25.0%)"), "{text}");
        assert!(text.contains("from origins     3.00 MiB (75.0%)"), "{text}");
        assert!(text.contains("pieces retried   2"), "{text}");
        let origin_line = text.lines().find(|l| l.starts_with("origin-1")).unwrap();
        assert!(origin_line.contains("75.0%"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("?  ")), "{text}");
        assert!(text.contains("bad peers"), "{text}");
        assert!(text.contains("origin-2 read it through 7 s ago"), "{text}");
    }
}
