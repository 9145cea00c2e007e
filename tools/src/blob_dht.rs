//! `krakenctl blob peers <digest> --dht [--node ADDR]`: the providers of a blob that one
//! node's DHT finds now (`Request::DhtProviders`), as their signed cards name them. Asks
//! `--node` (an agent or origin: HOST:PORT or a node name), else the digest's first owning
//! origin that answers.

use std::net::SocketAddr;

use kraken_client::cluster::{CallError, ORIGIN_REPLICAS};
use kraken_client::proto::{DhtProvider, Request, Response};
use kraken_membership::Role;
use kraken_storage::Digest;
use serde::Serialize;

use crate::cli::OutputMode;
use crate::client::Client;
use crate::error::CtlError;
use crate::output::{Table, emit, emit_json};

/// The answer of `blob peers --dht`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DhtPeersReport {
    /// The blob.
    pub digest: Digest,
    /// The node whose DHT looked them up.
    pub node: SocketAddr,
    /// What the lookup found.
    pub providers: Vec<DhtPeerRow>,
}

/// One provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DhtPeerRow {
    /// Its node name, if known (cluster.json, the view).
    pub name: Option<String>,
    /// Its kraken peer id (hex), from its signed card.
    pub peer_id: String,
    /// Its kraken QUIC address, as its card says.
    pub addr: SocketAddr,
    /// `agent` or `origin`.
    pub kind: String,
    /// The DHT peer id that published the record.
    pub dht_peer: String,
}

/// Asks `node` (or the digest's owning origins in ring order) for the DHT's providers.
pub async fn collect(
    client: &Client,
    digest: &Digest,
    node: Option<&str>,
) -> Result<DhtPeersReport, CtlError> {
    let candidates = match node {
        Some(n) => vec![client.node_addr(n).await?],
        None => client
            .cluster()
            .owners_of_digest(Role::Origin, digest, ORIGIN_REPLICAS)
            .into_iter()
            .map(|m| m.quic_addr)
            .collect(),
    };
    if candidates.is_empty() {
        return Err(CtlError::Failed(
            "no origin in the cluster view: name a node with --node".into(),
        ));
    }
    let request = Request::DhtProviders { digest: *digest };
    match client
        .call_in_turn(&candidates, &request, "no node answered")
        .await?
    {
        (addr, Response::DhtProviders(found)) => Ok(report(client, *digest, addr, found)),
        (addr, other) => Err(CtlError::from_call(&CallError::unexpected(addr, other))),
    }
}

fn report(
    client: &Client,
    digest: Digest,
    node: SocketAddr,
    found: Vec<DhtProvider>,
) -> DhtPeersReport {
    let names = client.names_by_addr();
    let providers = found
        .into_iter()
        .map(|p| DhtPeerRow {
            name: names.get(&p.peer.addr).cloned(),
            peer_id: hex::encode(p.peer.id.0),
            addr: p.peer.addr,
            kind: p.peer.kind.name().to_string(),
            dht_peer: p.dht_peer,
        })
        .collect();
    DhtPeersReport {
        digest,
        node,
        providers,
    }
}

/// The report as text.
pub fn render(r: &DhtPeersReport) -> String {
    let mut out = format!("digest   {}\nasked    {} (its DHT)\n\n", r.digest, r.node);
    if r.providers.is_empty() {
        out.push_str("the DHT knows no providers of this blob (origins provide nothing: the ring names them)\n");
        return out;
    }
    let mut t = Table::new(["PEER", "ADDR", "KIND", "PEER ID", "DHT PEER"]);
    for p in &r.providers {
        t.row([
            p.name.clone().unwrap_or_else(|| "?".into()),
            p.addr.to_string(),
            p.kind.clone(),
            p.peer_id.chars().take(16).collect(),
            p.dht_peer.clone(),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// `krakenctl blob peers --dht`.
pub async fn run(
    client: &Client,
    digest: &Digest,
    node: Option<&str>,
    mode: OutputMode,
) -> Result<(), CtlError> {
    let report = collect(client, digest, node).await?;
    if mode.json {
        emit_json(&report)
    } else {
        emit(&render(&report))
    }
}
