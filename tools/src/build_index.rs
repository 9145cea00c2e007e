//! `krakenctl tag get|put|ls|history`, `repos` and `replication`: the build-index commands.
//!
//! A cluster without build-index nodes in its view fails every one of them with exit 6,
//! `not available in this cluster: no build-index`; nothing is made up.
//!
//! - `tag get` and `tag put` go to the tag's owners on the build-index ring (rendezvous
//!   over `repo:tag`, [`DEFAULT_REPLICAS`] owners, failing over in ring order). `put`
//!   is checked by the owner: the digest and everything it references must exist in the
//!   origins (or their backend), else exit 5 naming the missing one. An unknown tag is
//!   exit 5 too.
//! - `tag ls` and `repos` ask every build-index node (each holds the tags it owns) and
//!   merge the sorted pages; `tag ls` of a repository no node knows is exit 5.
//! - `replication` lists each build-index node's pending replications per destination
//!   (`backend`, `owner:<node>`, `remote:<name>`); like `writeback`, it prints what it got
//!   and fails with exit 3 if some node did not answer.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use kraken_client::cluster::CallError;
use kraken_client::proto::{DestinationStatus, ErrorKind, Request, Response};
use kraken_membership::{DEFAULT_REPLICAS, Member, Role};
use kraken_storage::Digest;
use serde::Serialize;

use crate::cli::OutputMode;
use crate::client::Client;
use crate::error::CtlError;
use crate::output::{Table, emit, emit_json, millis};

/// Page size asked of the nodes when listing.
const PAGE: u32 = 1000;

/// Longest a `PutTag` may take (the owner checks every dependency, reading through from
/// backends if needed).
const PUT_TIMEOUT: Duration = Duration::from_secs(300);

/// The view's build-index nodes, or [`CtlError::NotAvailable`] (exit 6) when there are none.
pub fn build_index_nodes(client: &Client) -> Result<Vec<Member>, CtlError> {
    let ring = client.view().ring(Role::BuildIndex);
    if ring.is_empty() {
        return Err(CtlError::NotAvailable("no build-index".into()));
    }
    Ok(ring.members().to_vec())
}

fn owners(client: &Client, repo: &str, tag: &str) -> Vec<Member> {
    kraken_client::cluster::owners_of_tag(client.cluster(), repo, tag, DEFAULT_REPLICAS)
}

fn unexpected(addr: SocketAddr, answer: Response) -> CtlError {
    CtlError::from_call(&CallError::unexpected(addr, answer))
}

fn first_addr(owners: &[Member], client: &Client) -> SocketAddr {
    owners.first().map_or(client.seed(), |m| m.quic_addr)
}

fn ago(updated_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format!("{} ago", millis(now.saturating_sub(updated_ms)))
}

/// The answer of `tag get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagInfo {
    /// The repository.
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// What it points at.
    pub digest: Digest,
    /// When it was set, in ms since the Unix epoch.
    pub updated_ms: u64,
}

/// `krakenctl tag get`: the digest only when piped.
pub async fn tag_get(
    client: &Client,
    repo: &str,
    tag: &str,
    mode: OutputMode,
) -> Result<(), CtlError> {
    build_index_nodes(client)?;
    let owners = owners(client, repo, tag);
    let request = Request::GetTag {
        repo: repo.to_string(),
        tag: tag.to_string(),
    };
    let limit = client.timeout() + Duration::from_secs(30);
    let info = match client
        .cluster()
        .call_first(&owners, Role::BuildIndex, &request, limit)
        .await
    {
        Ok(Response::Tag { digest, updated_ms }) => TagInfo {
            repo: repo.to_string(),
            tag: tag.to_string(),
            digest,
            updated_ms,
        },
        Ok(other) => return Err(unexpected(first_addr(&owners, client), other)),
        Err(e) if e.remote().is_some_and(|r| r.kind == ErrorKind::NotFound) => {
            return Err(CtlError::NotFound(format!("unknown tag {repo}:{tag}")));
        }
        Err(e) => return Err(CtlError::from_call(&e)),
    };
    if mode.json {
        emit_json(&info)
    } else if mode.terminal {
        emit(&format!(
            "{}\n{repo}:{tag} set {}\n",
            info.digest,
            ago(info.updated_ms)
        ))
    } else {
        emit(&format!("{}\n", info.digest))
    }
}

/// The answer of `tag put`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagPutResult {
    /// The repository.
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// What it points at now.
    pub digest: Digest,
    /// False if it already pointed there.
    pub changed: bool,
}

/// `krakenctl tag put`: silent when piped.
pub async fn tag_put(
    client: &Client,
    repo: &str,
    tag: &str,
    digest: &Digest,
    mode: OutputMode,
) -> Result<(), CtlError> {
    build_index_nodes(client)?;
    let owners = owners(client, repo, tag);
    let request = Request::PutTag {
        repo: repo.to_string(),
        tag: tag.to_string(),
        digest: *digest,
        replica: false,
        set_ms: 0,
    };
    let changed = match client
        .cluster()
        .call_first(&owners, Role::BuildIndex, &request, PUT_TIMEOUT)
        .await
    {
        Ok(Response::TagPut { changed }) => changed,
        Ok(other) => return Err(unexpected(first_addr(&owners, client), other)),
        Err(e) => return Err(CtlError::from_call(&e)),
    };
    let result = TagPutResult {
        repo: repo.to_string(),
        tag: tag.to_string(),
        digest: *digest,
        changed,
    };
    if mode.json {
        emit_json(&result)
    } else if mode.terminal {
        let what = if changed {
            "now points at"
        } else {
            "already pointed at"
        };
        emit(&format!("{repo}:{tag} {what} {digest}\n"))
    } else {
        Ok(())
    }
}

/// Pages through one node's listing.
async fn list_all(
    client: &Client,
    addr: SocketAddr,
    request: impl Fn(Option<String>) -> Request,
) -> Result<Vec<String>, CallError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        match client.call(addr, &request(after.take())).await? {
            Response::Names { names, next } => {
                out.extend(names);
                match next {
                    Some(n) => after = Some(n),
                    None => return Ok(out),
                }
            }
            other => return Err(CallError::unexpected(addr, other)),
        }
    }
}

/// Lists from every build-index node and merges; `NotFound` answers count as empty.
async fn merged_listing(
    client: &Client,
    request: impl Fn(Option<String>) -> Request + Copy,
) -> Result<BTreeSet<String>, CtlError> {
    let nodes = build_index_nodes(client)?;
    let calls = nodes.iter().map(|m| list_all(client, m.quic_addr, request));
    let mut merged = BTreeSet::new();
    let mut answered = 0;
    let mut last = None;
    for answer in futures::future::join_all(calls).await {
        match answer {
            Ok(names) => {
                answered += 1;
                merged.extend(names);
            }
            Err(e) if e.remote().is_some_and(|r| r.kind == ErrorKind::NotFound) => answered += 1,
            Err(e) => last = Some(e),
        }
    }
    match (answered, last) {
        (0, Some(e)) => Err(CtlError::from_call(&e)),
        _ => Ok(merged),
    }
}

/// `krakenctl tag ls`: one tag a line, sorted.
pub async fn tag_ls(client: &Client, repo: &str, mode: OutputMode) -> Result<(), CtlError> {
    let tags = merged_listing(client, |after| Request::ListTags {
        repo: repo.to_string(),
        after,
        limit: PAGE,
    })
    .await?;
    if tags.is_empty() {
        return Err(CtlError::NotFound(format!("repository {repo} has no tags")));
    }
    list_out(&tags, mode)
}

/// `krakenctl repos`: one repository a line, sorted.
pub async fn repos(client: &Client, mode: OutputMode) -> Result<(), CtlError> {
    let names = merged_listing(client, |after| Request::ListRepos { after, limit: PAGE }).await?;
    list_out(&names, mode)
}

fn list_out(names: &BTreeSet<String>, mode: OutputMode) -> Result<(), CtlError> {
    if mode.json {
        return emit_json(names);
    }
    let mut text = String::new();
    for n in names {
        text.push_str(n);
        text.push('\n');
    }
    emit(&text)
}

/// One entry of `tag history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// What the tag pointed at.
    pub digest: Digest,
    /// From when, in ms since the Unix epoch.
    pub updated_ms: u64,
}

/// `krakenctl tag history`: every digest the tag has pointed at, oldest first.
pub async fn tag_history(
    client: &Client,
    repo: &str,
    tag: &str,
    mode: OutputMode,
) -> Result<(), CtlError> {
    build_index_nodes(client)?;
    let owners = owners(client, repo, tag);
    let request = Request::TagHistory {
        repo: repo.to_string(),
        tag: tag.to_string(),
    };
    let entries: Vec<HistoryEntry> = match client
        .cluster()
        .call_first(&owners, Role::BuildIndex, &request, client.timeout())
        .await
    {
        Ok(Response::History(h)) => h
            .into_iter()
            .map(|(digest, updated_ms)| HistoryEntry { digest, updated_ms })
            .collect(),
        Ok(other) => return Err(unexpected(first_addr(&owners, client), other)),
        Err(e) if e.remote().is_some_and(|r| r.kind == ErrorKind::NotFound) => {
            return Err(CtlError::NotFound(format!("unknown tag {repo}:{tag}")));
        }
        Err(e) => return Err(CtlError::from_call(&e)),
    };
    if mode.json {
        return emit_json(&entries);
    }
    let mut t = Table::new(["DIGEST", "SET"]);
    for e in &entries {
        t.row([e.digest.to_string(), ago(e.updated_ms)]);
    }
    emit(&t.render())
}

/// One build-index node's replication queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationRow {
    /// The node.
    pub node: String,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// It answered.
    pub reachable: bool,
    /// Why not.
    pub error: Option<String>,
    /// Pending replications per destination.
    pub destinations: Vec<DestinationStatus>,
}

/// Asks every build-index node.
pub async fn collect_replication(client: &Client) -> Result<Vec<ReplicationRow>, CtlError> {
    let nodes = build_index_nodes(client)?;
    let calls = nodes
        .iter()
        .map(|m| client.call(m.quic_addr, &Request::ReplicationStatus));
    let answers = futures::future::join_all(calls).await;
    Ok(nodes
        .iter()
        .zip(answers)
        .map(|(m, answer)| {
            let mut row = ReplicationRow {
                node: m.id.as_str().to_string(),
                quic: m.quic_addr,
                reachable: false,
                error: None,
                destinations: Vec::new(),
            };
            match answer {
                Ok(Response::Replication(d)) => {
                    row.reachable = true;
                    row.destinations = d;
                }
                Ok(other) => {
                    row.error = Some(CallError::unexpected(m.quic_addr, other).to_string());
                }
                Err(e) => row.error = Some(e.to_string()),
            }
            row
        })
        .collect())
}

/// The replication queues as text.
pub fn render_replication(rows: &[ReplicationRow]) -> String {
    let mut t = Table::new([
        "NODE",
        "DESTINATION",
        "PENDING",
        "OLDEST",
        "ATTEMPTS",
        "LAST ERROR",
    ]);
    for r in rows {
        if !r.reachable {
            t.row([
                r.node.clone(),
                "unreachable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                r.error.clone().unwrap_or_default(),
            ]);
        } else if r.destinations.is_empty() {
            t.row([r.node.as_str(), "-", "0", "-", "-", ""]);
        }
        for d in &r.destinations {
            t.row([
                r.node.clone(),
                d.destination.clone(),
                d.pending.to_string(),
                format!("{}s", d.oldest_age_secs),
                d.attempts.to_string(),
                d.last_error.clone().unwrap_or_default(),
            ]);
        }
    }
    let total: u64 = rows
        .iter()
        .flat_map(|r| &r.destinations)
        .map(|d| d.pending)
        .sum();
    format!("{}\ntotal pending: {total}\n", t.render())
}

/// `krakenctl replication`.
pub async fn replication(client: &Client, mode: OutputMode) -> Result<(), CtlError> {
    let rows = collect_replication(client).await?;
    if mode.json {
        emit_json(&rows)?;
    } else {
        emit(&render_replication(&rows))?;
    }
    let down = rows.iter().filter(|r| !r.reachable).count();
    if down > 0 {
        return Err(CtlError::Unreachable(format!(
            "{down} of {} build-index nodes did not answer",
            rows.len()
        )));
    }
    Ok(())
}
