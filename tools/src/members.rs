//! `krakenctl members`: the cluster view as a table (or JSON), with each node pinged.
//!
//! Rows come from the cluster view (ring nodes: origins, trackers, build-index), then from
//! the `cluster.json` given with `--cluster` for nodes the view lacks — agents, which never
//! gossip and so are never in a view. With only `--seed`, agents are not listed.
//!
//! Origins also say how many of the blobs they hold their last anti-entropy pass left
//! short of an owner (`UNDER-REPL`; `-` before their first pass or when they do not say).
//!
//! Health: `unreachable` (no answer to a ping within 2 s), else `suspected` (the failure
//! detector of the seed holds it dead), else `not-ready` (starting or leaving; owns
//! nothing), else `ok`.

use std::net::SocketAddr;

use kraken_client::proto::{Request, Response};
use kraken_membership::{Member, Role};
use serde::Serialize;

use crate::cli::OutputMode;
use crate::client::Client;
use crate::error::CtlError;
use crate::output::{Table, emit, emit_json};

/// The answer of `members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MembersReport {
    /// The cluster's id.
    pub cluster_id: String,
    /// The view's epoch at the seed.
    pub epoch: u64,
    /// The seed that served the view.
    pub seed: SocketAddr,
    /// Every node, ring roles first (origin, tracker, build-index, then agents), by name.
    pub members: Vec<MemberRow>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberRow {
    /// Its name (node id).
    pub name: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// QUIC address.
    pub quic: SocketAddr,
    /// HTTP (health, metrics) address, if published.
    pub http: Option<SocketAddr>,
    /// Gossip generation (ring nodes).
    pub generation: Option<u64>,
    /// Software version (from the view, else from the ping).
    pub version: Option<String>,
    /// Ready to own keys (ring nodes).
    pub ready: Option<bool>,
    /// Held dead by the seed's failure detector.
    pub suspected: bool,
    /// Answered a ping.
    pub reachable: bool,
    /// `ok`, `unreachable`, `suspected` or `not-ready`.
    pub health: String,
    /// `view` (gossip) or `cluster-file` (from `--cluster`, e.g. agents).
    pub source: String,
    /// Why a ping failed.
    pub error: Option<String>,
    /// Origins: blobs held there that the last anti-entropy pass left short of an owner.
    pub under_replicated: Option<u64>,
}

fn role_rank(roles: &[String]) -> usize {
    ["origin", "tracker", "build-index", "agent"]
        .iter()
        .position(|r| roles.iter().any(|x| x == r))
        .unwrap_or(4)
}

fn health(reachable: bool, suspected: bool, ready: Option<bool>) -> &'static str {
    if !reachable {
        "unreachable"
    } else if suspected {
        "suspected"
    } else if ready == Some(false) {
        "not-ready"
    } else {
        "ok"
    }
}

fn member_roles(m: &Member) -> Vec<String> {
    m.roles.iter().map(|r| r.as_str().to_string()).collect()
}

/// Builds the report: the view's members and the file's other nodes, all pinged at once.
pub async fn collect(client: &Client) -> MembersReport {
    let view = client.view();
    let mut rows: Vec<MemberRow> = view
        .members()
        .values()
        .map(|m| MemberRow {
            name: m.id.as_str().to_string(),
            roles: member_roles(m),
            quic: m.quic_addr,
            http: m.http_addr,
            generation: Some(m.generation),
            version: Some(m.version.clone()),
            ready: Some(m.ready),
            suspected: view.is_suspected(&m.id),
            reachable: false,
            health: String::new(),
            source: "view".into(),
            error: None,
            under_replicated: None,
        })
        .collect();
    for n in client.known_nodes() {
        if rows.iter().any(|r| r.name == n.name) {
            continue;
        }
        rows.push(MemberRow {
            name: n.name.clone(),
            roles: n.roles.clone(),
            quic: n.quic,
            http: n.http,
            generation: None,
            version: None,
            ready: None,
            suspected: false,
            reachable: false,
            health: String::new(),
            source: "cluster-file".into(),
            error: None,
            under_replicated: None,
        });
    }
    let pings = rows.iter().map(|r| client.ping(r.quic));
    let statuses = rows.iter().map(|r| replica_status(client, r));
    let (answers, statuses) = futures::future::join(
        futures::future::join_all(pings),
        futures::future::join_all(statuses),
    )
    .await;
    for (row, status) in rows.iter_mut().zip(statuses) {
        row.under_replicated = status;
    }
    for (row, answer) in rows.iter_mut().zip(answers) {
        match answer {
            Ok(info) => {
                row.reachable = true;
                if row.version.is_none() {
                    row.version = Some(info.version);
                }
            }
            Err(e) => row.error = Some(e.to_string()),
        }
        row.health = health(row.reachable, row.suspected, row.ready).to_string();
    }
    rows.sort_by(|a, b| {
        role_rank(&a.roles)
            .cmp(&role_rank(&b.roles))
            .then_with(|| a.name.cmp(&b.name))
    });
    MembersReport {
        cluster_id: view.cluster_id().to_string(),
        epoch: view.epoch(),
        seed: client.seed(),
        members: rows,
    }
}

/// An origin's under-replicated count from its last anti-entropy pass (`None` for other
/// nodes, an origin that has not run one yet, or no answer).
async fn replica_status(client: &Client, row: &MemberRow) -> Option<u64> {
    if !row.roles.iter().any(|r| r == Role::Origin.as_str()) {
        return None;
    }
    match client.call(row.quic, &Request::ReplicaStatus).await {
        Ok(Response::ReplicaStatus(s)) if s.last_pass_secs_ago.is_some() => {
            Some(s.under_replicated)
        }
        _ => None,
    }
}

/// The report as text: a summary line, then one row per node.
pub fn render(report: &MembersReport) -> String {
    let mut t = Table::new([
        "NAME",
        "ROLES",
        "QUIC",
        "HTTP",
        "GEN",
        "VERSION",
        "HEALTH",
        "UNDER-REPL",
        "SOURCE",
    ]);
    let dash = || "-".to_string();
    for m in &report.members {
        t.row([
            m.name.clone(),
            m.roles.join(","),
            m.quic.to_string(),
            m.http.map_or_else(dash, |a| a.to_string()),
            m.generation.map_or_else(dash, |g| g.to_string()),
            m.version.clone().unwrap_or_else(dash),
            m.health.clone(),
            m.under_replicated.map_or_else(dash, |n| n.to_string()),
            m.source.clone(),
        ]);
    }
    let count = |role: Role| {
        report
            .members
            .iter()
            .filter(|m| m.roles.iter().any(|r| r == role.as_str()))
            .count()
    };
    let agents = report
        .members
        .iter()
        .filter(|m| m.roles.iter().any(|r| r == "agent"))
        .count();
    format!(
        "cluster {}  epoch {}  seed {}  origins {}  trackers {}  build-index {}  agents {}\n\n{}",
        report.cluster_id,
        report.epoch,
        report.seed,
        count(Role::Origin),
        count(Role::Tracker),
        count(Role::BuildIndex),
        agents,
        t.render()
    )
}

/// `krakenctl members`.
pub async fn run(client: &Client, mode: OutputMode) -> Result<(), CtlError> {
    let report = collect(client).await;
    if mode.json {
        emit_json(&report)
    } else {
        emit(&render(&report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_prefers_the_worst_news() {
        assert_eq!(health(false, true, Some(true)), "unreachable");
        assert_eq!(health(true, true, Some(false)), "suspected");
        assert_eq!(health(true, false, Some(false)), "not-ready");
        assert_eq!(health(true, false, None), "ok");
    }

    #[test]
    fn ring_roles_sort_before_agents() {
        let r = |s: &str| vec![s.to_string()];
        assert!(role_rank(&r("origin")) < role_rank(&r("tracker")));
        assert!(role_rank(&r("build-index")) < role_rank(&r("agent")));
    }
}
