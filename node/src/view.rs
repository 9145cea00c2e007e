//! Where a node's cluster view comes from.
//!
//! Ring nodes (origin, tracker, build-index) gossip and read their view from
//! `Membership::watch`. Agents and tools do not gossip: [`refresh_view`] drives
//! membership's sans-IO `ViewRefresher` over QUIC, asking a ring node for the encoded
//! view (`Request::ClusterView`) — a member of the current view if there is one, else one
//! of the configured seeds — periodically and, with backoff, after errors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kraken_membership::{ClusterId, ClusterView, ViewRefreshConfig, ViewRefresher};
use rand::seq::IndexedRandom;
use tokio::sync::watch;

use crate::client::{CallError, Cluster};
use crate::proto::{Request, Response};

/// Resolves `host:port` seeds (names or addresses).
pub async fn resolve_seeds(seeds: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for seed in seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(addrs) => out.extend(addrs),
            Err(e) => tracing::warn!(seed = %seed, error = %e, "cannot resolve seed"),
        }
    }
    out
}

/// Why one view refresh failed.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    /// No seed address resolves.
    #[error("no seed resolves")]
    NoSeed,
    /// The seed did not answer.
    #[error(transparent)]
    Call(CallError),
}

/// Keeps `tx` current until `stop` turns true. `cluster` must call through the same pool;
/// its view is the one being refreshed.
pub async fn refresh_view(
    cluster: Cluster,
    cluster_id: ClusterId,
    seeds: Vec<String>,
    config: ViewRefreshConfig,
    tx: watch::Sender<ClusterView>,
    mut stop: watch::Receiver<bool>,
) {
    let mut refresher = ViewRefresher::new(config.clone(), cluster_id, Instant::now());
    loop {
        let now = Instant::now();
        if refresher.poll_refresh(now) {
            let target = pick_target(&cluster, &seeds).await;
            let outcome = match target {
                Some(addr) => cluster
                    .call_within(addr, &Request::ClusterView, config.request_timeout)
                    .await
                    .map_err(RefreshError::Call),
                None => Err(RefreshError::NoSeed),
            };
            let now = Instant::now();
            match outcome {
                Ok(Response::View(bytes)) => match refresher.handle_view(now, &bytes) {
                    Ok(changed) => {
                        if let Some(view) = refresher.view() {
                            if changed {
                                tracing::debug!(members = view.len(), "cluster view changed");
                            }
                            tx.send_replace(view.clone());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "bad cluster view"),
                },
                Ok(other) => {
                    tracing::warn!(answer = ?other, "unexpected view answer");
                    refresher.handle_error(now);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "view refresh failed");
                    refresher.handle_error(now);
                }
            }
            continue;
        }
        let wait = refresher
            .poll_timeout()
            .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A ring node of the current view at random, else a seed at random.
async fn pick_target(cluster: &Cluster, seeds: &[String]) -> Option<SocketAddr> {
    let view = cluster.view();
    let members: Vec<SocketAddr> = view
        .members()
        .values()
        .filter(|m| m.ready && !view.is_suspected(&m.id))
        .map(|m| m.quic_addr)
        .collect();
    if let Some(addr) = members.choose(&mut rand::rng()) {
        return Some(*addr);
    }
    let seeds = resolve_seeds(seeds).await;
    seeds.choose(&mut rand::rng()).copied()
}
