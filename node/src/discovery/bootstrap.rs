//! Joining the DHT through membership, with no seed setting: the node asks each origin of
//! its cluster view where its DHT listens (`Request::DhtContact`, over the mutual-TLS RPC,
//! so the contact is authenticated as a cluster member's) and adds it as a bootstrap peer.
//! It asks again whenever the origin ring changes (an origin that left and came back is
//! asked anew), and retries origins that did not answer every few seconds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use kraken_membership::Role;
use tokio::sync::watch;

use super::Discovery;
use crate::client::Cluster;
use crate::proto::{Request, Response};

/// How soon origins that did not answer are asked again.
const RETRY: Duration = Duration::from_secs(2);
/// How often the view is looked at even if nothing says it changed.
const RECHECK: Duration = Duration::from_secs(30);

/// Follows the origin ring and bootstraps the DHT from it until `stop` turns true. `me` is
/// this node's QUIC address (an origin does not ask itself).
pub async fn follow(
    discovery: Discovery,
    cluster: Cluster,
    me: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let mut view = cluster.watch_view();
    let mut added: HashSet<SocketAddr> = HashSet::new();
    loop {
        let origins: HashSet<SocketAddr> = cluster
            .live_addrs(Role::Origin)
            .into_iter()
            .filter(|a| *a != me)
            .collect();
        // Gone origins are forgotten: if one comes back (perhaps at a new DHT port) it is
        // asked again.
        added.retain(|a| origins.contains(a));
        let missing: Vec<SocketAddr> = origins.difference(&added).copied().collect();
        let asks = missing.iter().map(|addr| ask(&cluster, *addr));
        let contacts: Vec<(SocketAddr, Option<(String, SocketAddr)>)> =
            futures::future::join_all(asks).await;
        let mut learned = Vec::new();
        for (origin, contact) in contacts {
            if let Some(c) = contact {
                added.insert(origin);
                learned.push(c);
            }
        }
        if !learned.is_empty() {
            tracing::debug!(
                peers = learned.len(),
                "DHT bootstrap peers from the origins"
            );
            discovery.dht().add_bootstrap(learned);
        }
        let wait = if added.len() < origins.len() {
            RETRY
        } else {
            RECHECK
        };
        tokio::select! {
            _ = stop.changed() => return,
            r = view.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// `origin`'s DHT contact, if it answers with one.
async fn ask(cluster: &Cluster, origin: SocketAddr) -> (SocketAddr, Option<(String, SocketAddr)>) {
    let answer = cluster.call(origin, &Request::DhtContact).await;
    let contact = match answer {
        Ok(Response::DhtContact {
            dht_peer: Some(peer),
            addr: Some(addr),
        }) => Some((peer, addr)),
        Ok(other) => {
            tracing::debug!(%origin, answer = ?other, "no DHT contact from an origin");
            None
        }
        Err(e) => {
            tracing::debug!(%origin, error = %e, "cannot ask an origin for its DHT contact");
            None
        }
    };
    (origin, contact)
}
