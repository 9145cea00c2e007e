//! `krakenctl ring <digest|repo:tag>`: the owners of a key, computed from the cluster view
//! with the same rendezvous hash every node uses.
//!
//! A digest is owned by [`ORIGIN_REPLICAS`] origins (best first) and by one tracker; the
//! other trackers follow in failover order, as agents try them. A tag is owned by
//! [`DEFAULT_REPLICAS`] build-index nodes; without any, the command fails with exit 6.
//! Suspected members are listed last, as callers try them last.

use std::net::SocketAddr;

use kraken_client::cluster::ORIGIN_REPLICAS;
use kraken_membership::{DEFAULT_REPLICAS, Member, Role};
use serde::Serialize;

use crate::cli::{OutputMode, RingKey};
use crate::client::Client;
use crate::error::CtlError;
use crate::output::{Table, emit, emit_json};

/// The answer of `ring`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RingReport {
    /// The key as given.
    pub key: String,
    /// `digest` or `tag`.
    pub kind: String,
    /// Owners, by role, best first.
    pub owners: Vec<OwnerRow>,
}

/// One owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerRow {
    /// The ring.
    pub role: String,
    /// 1 is the first choice.
    pub rank: usize,
    /// The node.
    pub name: String,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// `owner` or `failover` (trackers past the first).
    pub duty: String,
    /// Held dead by the seed's failure detector.
    pub suspected: bool,
}

fn rows(client: &Client, role: Role, owners: &[Member], owning: usize) -> Vec<OwnerRow> {
    let view = client.view();
    owners
        .iter()
        .enumerate()
        .map(|(i, m)| OwnerRow {
            role: role.as_str().to_string(),
            rank: i + 1,
            name: m.id.as_str().to_string(),
            quic: m.quic_addr,
            duty: if i < owning { "owner" } else { "failover" }.to_string(),
            suspected: view.is_suspected(&m.id),
        })
        .collect()
}

/// Computes the owners of `key`.
pub fn collect(client: &Client, key: &RingKey) -> Result<RingReport, CtlError> {
    let cluster = client.cluster();
    match key {
        RingKey::Digest(digest) => {
            let origins = cluster.owners_of_digest(Role::Origin, digest, ORIGIN_REPLICAS);
            let trackers = cluster.owners_of_digest(Role::Tracker, digest, 0);
            let mut owners = rows(client, Role::Origin, &origins, ORIGIN_REPLICAS);
            owners.extend(rows(client, Role::Tracker, &trackers, 1));
            Ok(RingReport {
                key: digest.to_string(),
                kind: "digest".into(),
                owners,
            })
        }
        RingKey::Tag(tag) => {
            let view = client.view();
            let ring = view.ring(Role::BuildIndex);
            if ring.is_empty() {
                return Err(CtlError::NotAvailable("no build-index".into()));
            }
            let mut owners: Vec<Member> = ring
                .owners_of_tag(tag, DEFAULT_REPLICAS)
                .into_iter()
                .cloned()
                .collect();
            owners.sort_by_key(|m| view.is_suspected(&m.id));
            Ok(RingReport {
                key: tag.clone(),
                kind: "tag".into(),
                owners: rows(client, Role::BuildIndex, &owners, DEFAULT_REPLICAS),
            })
        }
    }
}

/// The report as text.
pub fn render(report: &RingReport) -> String {
    let mut t = Table::new(["ROLE", "RANK", "NODE", "QUIC", "DUTY"]);
    for o in &report.owners {
        let duty = if o.suspected {
            format!("{} (suspected)", o.duty)
        } else {
            o.duty.clone()
        };
        t.row([
            o.role.clone(),
            o.rank.to_string(),
            o.name.clone(),
            o.quic.to_string(),
            duty,
        ]);
    }
    let mut out = format!("{} {}\n\n", report.kind, report.key);
    if t.is_empty() {
        out.push_str("no live owners in the cluster view\n");
    } else {
        out.push_str(&t.render());
    }
    out
}

/// `krakenctl ring`.
pub fn run(client: &Client, key: &RingKey, mode: OutputMode) -> Result<(), CtlError> {
    let report = collect(client, key)?;
    if mode.json {
        emit_json(&report)
    } else {
        emit(&render(&report))
    }
}
