//! The node's small HTTP endpoint: `/health` (the process is up), `/ready` (it can serve:
//! it sees the rings it needs, and its store, if it has one, can take new blobs: see
//! `kraken_storage::cas::space`), and Prometheus `/metrics` (the process's one registry, with
//! the gauges read from the roles and the cluster view at each scrape while it serves).
//! Connections are served within `[http.limits]` by the registry gateway's listener
//! (capped, with head, idle and body timeouts; counted as `kraken_http_connections_*`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use kraken_membership::{GossipCounters, Role};
use kraken_registry_gateway::{HttpLimits, ListenerMetrics, serve_router};
use tokio::sync::watch;

use crate::client::Cluster;
use crate::metrics::{CONTENT_TYPE, GaugeSource, Gauges, Metrics};
use crate::service::Roles;

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The node's roles (for gauges).
    pub roles: Roles,
    /// The view (for readiness and ring sizes).
    pub cluster: Cluster,
    /// Whether the node gossips.
    pub ring_node: bool,
    /// The listener's limits (`[http.limits]`).
    pub limits: HttpLimits,
    /// What gossip refused (ring nodes), for `/metrics`.
    pub gossip: Option<Arc<GossipCounters>>,
}

/// Serves until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    mut stop: watch::Receiver<bool>,
) {
    // Held for as long as this serves: the registry only holds it weakly, so the roles it
    // reads are not kept alive by the metrics they hold.
    let gauges: GaugeSource = {
        let (roles, cluster) = (state.roles.clone(), state.cluster.clone());
        let gossip = state.gossip.clone();
        Arc::new(move || {
            let mut g = gauges(&roles, &cluster);
            g.gossip = gossip.as_ref().map(|c| c.snapshot());
            g
        })
    };
    state.metrics.collect_gauges(&gauges);
    let connections = ListenerMetrics::new();
    state
        .metrics
        .register(|r| connections.register(r, "kraken_http"));
    let limits = state.limits.clone();
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = serve_router(listener, app, limits, connections, "http", shutdown).await {
        tracing::error!(error = %e, "HTTP server failed");
    }
    drop(gauges);
}

async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    let view = state.cluster.view();
    let mut missing = Vec::new();
    if (state.roles.agent.is_some() || state.roles.tracker.is_some())
        && view.ring(Role::Origin).is_empty()
    {
        missing.push("origin");
    }
    if state.roles.agent.is_some() && view.ring(Role::Tracker).is_empty() {
        missing.push("tracker");
    }
    let mut reasons = Vec::new();
    if !missing.is_empty() {
        reasons.push(format!(
            "no live {} in the cluster view",
            missing.join(", ")
        ));
    }
    if let Some(cas) = store(&state.roles) {
        match tokio::task::spawn_blocking(move || cas.space()).await {
            Ok(space) => reasons.extend(space.cannot_store),
            Err(e) => reasons.push(format!("checking the store's space failed: {e}")),
        }
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
    }
}

/// The node's blob store (origins and agents).
fn store(roles: &Roles) -> Option<kraken_storage::cas::Cas> {
    match (&roles.origin, &roles.agent) {
        (Some(o), _) => Some(o.cas().clone()),
        (_, Some(a)) => Some(a.cas().clone()),
        _ => None,
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([("content-type", CONTENT_TYPE)], state.metrics.render())
}

/// The gauges of `roles` and the rings of `cluster`'s view, now.
fn gauges(roles: &Roles, cluster: &Cluster) -> Gauges {
    let view = cluster.view();
    let mut gauges = Gauges {
        ring_sizes: vec![
            ("origin", view.ring(Role::Origin).len()),
            ("tracker", view.ring(Role::Tracker).len()),
            ("build-index", view.ring(Role::BuildIndex).len()),
        ],
        ..Gauges::default()
    };
    let pieces = |c: &kraken_transport::exchange::ExchangeCounters| {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Some((
            get(&c.pieces_received),
            get(&c.bytes_received),
            get(&c.pieces_sent),
            get(&c.bytes_sent),
            get(&c.bad_pieces),
        ))
    };
    if let Some(o) = &roles.origin {
        gauges.writeback_depth = o.queue().len().ok();
        gauges.writeback_due = o.queue().due_len(std::time::SystemTime::now()).ok();
        gauges.store_bytes = Some(o.cas().used_bytes());
        gauges.active_swarms = o.exchange().active_blobs();
        gauges.pieces = pieces(o.exchange().counters());
    }
    if let Some(a) = &roles.agent {
        gauges.store_bytes = Some(a.cas().used_bytes());
        gauges.active_swarms = a.exchange().active_blobs();
        let c = a.exchange().counters();
        gauges.pieces = pieces(c);
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        gauges.streamed = Some((get(&c.streamed_from_memory), get(&c.streamed_from_disk)));
        gauges.seeders_released = Some(get(&c.seeders_released));
    }
    gauges.store_space = store(roles).map(|cas| cas.space());
    if let Some(t) = &roles.tracker {
        gauges.tracked_blobs = Some(t.tracked_blobs());
    }
    gauges.dht = roles
        .discovery
        .as_ref()
        .map(crate::discovery::Discovery::gauges);
    gauges
}
