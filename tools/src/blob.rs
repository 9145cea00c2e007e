//! `krakenctl blob stat` and `krakenctl blob peers`.
//!
//! `stat` asks every origin of the view (not only the owners: after a ring change a former
//! owner may still hold the blob) what it holds: present or not, persisted to the backend
//! or still queued for write-back, size, piece length, metainfo id; and how many of the
//! blob's owners hold it (`under-replicated` when some lack it). When no reachable
//! origin holds the blob it fails with exit 5 (`not found: no origin holds …`); a blob
//! that is only in the backend counts as not held (origins read it through on the next
//! pull). `peers` asks the tracker that owns the digest (failing over in ring order) which
//! peers announced it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use kraken_client::cluster::ORIGIN_REPLICAS;
use kraken_client::proto::{BlobStat, PeerRecord, Request, Response};
use kraken_membership::Role;
use kraken_storage::Digest;
use serde::Serialize;

use crate::cli::OutputMode;
use crate::client::Client;
use crate::error::CtlError;
use crate::output::{Table, bytes, emit, emit_json, millis, yes_no};

/// The answer of `blob stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatReport {
    /// The blob.
    pub digest: Digest,
    /// Its length (from the first origin that holds it).
    pub length: Option<u64>,
    /// Its piece length.
    pub piece_length: Option<u64>,
    /// Its metainfo id.
    pub metainfo_id: Option<String>,
    /// Origins that hold it completely.
    pub holders: usize,
    /// Its owners on the origin ring.
    pub owners: usize,
    /// Of those, the ones that hold it.
    pub owners_holding: usize,
    /// Some owner lacks it (or did not answer).
    pub under_replicated: bool,
    /// `persisted` (some holder wrote it to the backend), `queued` (waiting for
    /// write-back) or `no`.
    pub backend: String,
    /// Every origin's answer.
    pub origins: Vec<OriginStat>,
}

/// One origin's answer to `BlobStat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OriginStat {
    /// The origin.
    pub name: String,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// It answered.
    pub reachable: bool,
    /// Why not.
    pub error: Option<String>,
    /// What it holds.
    pub stat: Option<BlobStat>,
}

/// Asks every origin.
pub async fn collect_stat(client: &Client, digest: &Digest) -> Result<StatReport, CtlError> {
    let origins = client.origins();
    if origins.is_empty() {
        return Err(CtlError::Failed("no origin in the cluster view".into()));
    }
    let request = Request::BlobStat { digest: *digest };
    let calls = origins.iter().map(|m| client.call(m.quic_addr, &request));
    let answers = futures::future::join_all(calls).await;
    let mut rows = Vec::new();
    for (m, answer) in origins.iter().zip(answers) {
        let (stat, error) = match answer {
            Ok(Response::BlobStat(s)) => (Some(s), None),
            Ok(other) => (
                None,
                Some(kraken_client::cluster::CallError::unexpected(m.quic_addr, other).to_string()),
            ),
            Err(e) => (None, Some(e.to_string())),
        };
        rows.push(OriginStat {
            name: m.id.as_str().to_string(),
            quic: m.quic_addr,
            reachable: stat.is_some(),
            error,
            stat,
        });
    }
    let held: Vec<&BlobStat> = rows
        .iter()
        .filter_map(|r| r.stat.as_ref())
        .filter(|s| s.present)
        .collect();
    let first = held.first();
    let owner_ids = client
        .cluster()
        .owners_of_digest(Role::Origin, digest, ORIGIN_REPLICAS);
    let owners_holding = owner_ids
        .iter()
        .filter(|o| {
            rows.iter()
                .any(|r| r.name == o.id.as_str() && r.stat.as_ref().is_some_and(|s| s.present))
        })
        .count();
    let backend = if held.iter().any(|s| s.persisted) {
        "persisted"
    } else if rows
        .iter()
        .filter_map(|r| r.stat.as_ref())
        .any(|s| s.queued)
    {
        "queued"
    } else {
        "no"
    };
    Ok(StatReport {
        digest: *digest,
        length: first.and_then(|s| s.length),
        piece_length: first.and_then(|s| s.piece_length),
        metainfo_id: first.and_then(|s| s.metainfo_id.clone()),
        holders: held.len(),
        owners: owner_ids.len(),
        owners_holding,
        under_replicated: owners_holding < owner_ids.len(),
        backend: backend.to_string(),
        origins: rows,
    })
}

/// The stat report as text.
pub fn render_stat(r: &StatReport) -> String {
    let reachable = r.origins.iter().filter(|o| o.reachable).count();
    let mut out = format!("digest        {}\n", r.digest);
    if let Some(len) = r.length {
        out.push_str(&format!("size          {} ({len} bytes)\n", bytes(len)));
    }
    if let Some(p) = r.piece_length {
        out.push_str(&format!("piece length  {}\n", bytes(p)));
    }
    if let Some(id) = &r.metainfo_id {
        out.push_str(&format!("metainfo id   {id}\n"));
    }
    out.push_str(&format!(
        "held by       {} of {} origins ({} answered)\n",
        r.holders,
        r.origins.len(),
        reachable
    ));
    out.push_str(&format!(
        "owners hold   {} of {}{}\n",
        r.owners_holding,
        r.owners,
        if r.under_replicated {
            " (under-replicated)"
        } else {
            ""
        }
    ));
    out.push_str(&format!("backend       {}\n\n", r.backend));
    let mut t = Table::new([
        "ORIGIN",
        "OWNER",
        "HELD",
        "SIZE",
        "PERSISTED",
        "QUEUED",
        "METAINFO",
    ]);
    for o in &r.origins {
        match &o.stat {
            Some(s) => t.row([
                o.name.clone(),
                yes_no(s.owner).to_string(),
                yes_no(s.present).to_string(),
                s.length.map_or_else(|| "-".into(), bytes),
                yes_no(s.persisted).to_string(),
                yes_no(s.queued).to_string(),
                s.metainfo_id
                    .as_deref()
                    .map_or_else(|| "-".into(), |id| id.chars().take(16).collect()),
            ]),
            None => t.row([
                o.name.clone(),
                "-".into(),
                "unreachable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                o.error.clone().unwrap_or_default(),
            ]),
        };
    }
    out.push_str(&t.render());
    out
}

/// `krakenctl blob stat`.
pub async fn stat(client: &Client, digest: &Digest, mode: OutputMode) -> Result<(), CtlError> {
    let report = collect_stat(client, digest).await?;
    let reachable = report.origins.iter().filter(|o| o.reachable).count();
    if reachable == 0 {
        let why = report
            .origins
            .iter()
            .find_map(|o| o.error.clone())
            .unwrap_or_default();
        return Err(CtlError::Unreachable(format!("no origin answered: {why}")));
    }
    if report.holders == 0 {
        let unreachable = report.origins.len() - reachable;
        let note = if unreachable > 0 {
            format!(" ({unreachable} origins did not answer)")
        } else {
            String::new()
        };
        return Err(CtlError::NotFound(format!(
            "no origin holds {digest}{note}"
        )));
    }
    if mode.json {
        emit_json(&report)
    } else {
        emit(&render_stat(&report))
    }
}

/// The answer of `blob peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeersReport {
    /// The blob.
    pub digest: Digest,
    /// The tracker that answered.
    pub tracker: String,
    /// Its peers, as the tracker knows them.
    pub peers: Vec<PeerRow>,
}

/// One peer of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerRow {
    /// Its node name, if known (cluster.json, the view, or its answer to a ping).
    pub name: Option<String>,
    /// Its peer id (hex BLAKE3 of its certificate key).
    pub peer_id: String,
    /// Where it is dialled.
    pub addr: SocketAddr,
    /// `agent` or `origin`.
    pub kind: String,
    /// It had the whole blob at its last announce.
    pub complete: bool,
    /// Milliseconds since its last announce.
    pub last_announce_ms: u64,
}

/// Asks the digest's tracker, failing over in ring order.
pub async fn collect_peers(client: &Client, digest: &Digest) -> Result<PeersReport, CtlError> {
    let owners = client.cluster().owners_of_digest(Role::Tracker, digest, 0);
    if owners.is_empty() {
        return Err(CtlError::Failed("no tracker in the cluster view".into()));
    }
    let addrs: Vec<SocketAddr> = owners.iter().map(|o| o.quic_addr).collect();
    let request = Request::Peers { digest: *digest };
    let (addr, answer) = client
        .call_in_turn(&addrs, &request, "no tracker answered")
        .await?;
    let Response::Peers(records) = answer else {
        return Err(CtlError::from_call(
            &kraken_client::cluster::CallError::unexpected(addr, answer),
        ));
    };
    let tracker = owners
        .iter()
        .find(|o| o.quic_addr == addr)
        .map_or_else(|| addr.to_string(), |o| o.id.as_str().to_string());
    let names = name_peers(client, &records).await;
    let peers = records
        .into_iter()
        .map(|r| PeerRow {
            name: names.get(&r.peer.addr).cloned(),
            peer_id: hex::encode(r.peer.id.0),
            addr: r.peer.addr,
            kind: r.peer.kind.name().to_string(),
            complete: r.peer.complete,
            last_announce_ms: r.last_announce_ms,
        })
        .collect();
    Ok(PeersReport {
        digest: *digest,
        tracker,
        peers,
    })
}

/// Names by address: known ones, and a ping to each of the others.
async fn name_peers(client: &Client, records: &[PeerRecord]) -> BTreeMap<SocketAddr, String> {
    let mut names = client.names_by_addr();
    let unknown: Vec<SocketAddr> = records
        .iter()
        .map(|r| r.peer.addr)
        .filter(|a| !names.contains_key(a))
        .collect();
    let pings = unknown.iter().map(|a| client.ping(*a));
    for (addr, answer) in unknown.iter().zip(futures::future::join_all(pings).await) {
        if let Ok(info) = answer {
            names.insert(*addr, info.name);
        }
    }
    names
}

/// The peers report as text.
pub fn render_peers(r: &PeersReport) -> String {
    let mut out = format!("digest   {}\ntracker  {}\n\n", r.digest, r.tracker);
    if r.peers.is_empty() {
        out.push_str("the tracker knows no peers of this blob\n");
        return out;
    }
    let mut t = Table::new([
        "PEER",
        "ADDR",
        "KIND",
        "COMPLETE",
        "LAST ANNOUNCE",
        "PEER ID",
    ]);
    for p in &r.peers {
        t.row([
            p.name.clone().unwrap_or_else(|| "?".into()),
            p.addr.to_string(),
            p.kind.clone(),
            yes_no(p.complete).to_string(),
            format!("{} ago", millis(p.last_announce_ms)),
            p.peer_id.chars().take(16).collect(),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// `krakenctl blob peers`.
pub async fn peers(client: &Client, digest: &Digest, mode: OutputMode) -> Result<(), CtlError> {
    let report = collect_peers(client, digest).await?;
    if mode.json {
        emit_json(&report)
    } else {
        emit(&render_peers(&report))
    }
}
