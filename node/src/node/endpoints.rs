//! A node's TCP endpoints: the HTTP endpoint (health, readiness, metrics), the registry
//! API (agents: pull; proxies: push, and push notifications) and, on agents, its zero-copy
//! blob server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kraken_registry_gateway::{
    BasicCredential, BlobServerConfig, GatewayConfig, GatewayMetrics, PushAuth,
    serve as serve_registry_plain, serve_blobs, serve_tls, tls_config_from_pem,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::StartError;
use crate::client::Cluster;
use crate::config::{NodeConfig, NodeRole, RegistrySection};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::notify;
use crate::registry::ClusterRegistry;
use crate::service::Roles;
use crate::upstream::Upstreams;

/// Binds the HTTP endpoint's listener, if the config has one (bound before joining
/// gossip: its address goes into the member record).
pub(super) async fn bind_http(config: &NodeConfig) -> Result<Option<TcpListener>, StartError> {
    let Some(addr) = config.http.address() else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| StartError::BindHttp { addr, source })
}

/// Serves health, readiness and metrics on `listener` until `stop` turns true.
pub(super) fn serve_http(listener: TcpListener, state: HttpState, stop: watch::Receiver<bool>) {
    crate::spawn(http::serve(listener, state, stop));
}

/// Serves the registry API on agents (pull) and proxies (push), if enabled; its address.
pub(super) async fn start_registry(
    config: &NodeConfig,
    roles: &Roles,
    cluster: &Cluster,
    (metrics, node_metrics): (GatewayMetrics, &Metrics),
    stop: watch::Receiver<bool>,
) -> Result<Option<SocketAddr>, StartError> {
    let Some(registry) = registry(config, roles, cluster)? else {
        return Ok(None);
    };
    let section = &config.registry;
    let proxy = config.has(NodeRole::Proxy);
    let routes = if proxy {
        notify::routes(&section.notifications, cluster.clone(), node_metrics)
            .map_err(StartError::Notifications)?
    } else {
        None
    };
    let gateway = GatewayConfig {
        push: proxy,
        uploads_dir: uploads_dir(config),
        max_manifest_len: section.max_manifest_len,
        auth: push_auth(section),
        page_limit: section.page_limit,
        metrics: metrics.clone(),
        routes,
        http: section.limits.http_limits(),
        upload_limits: section.upload_limits(),
        allow_anonymous_push: section.allow_anonymous_push,
        pass_on_chunks: section.pass_on_chunks,
        ..GatewayConfig::default()
    };
    let (listener, bound) = bind_registry(section.listen).await?;
    // Agents: the blob server, bound first, so the registry API knows where to redirect.
    let blobs = match section.blob_address() {
        Some(addr) if !proxy => Some(bind_registry(addr).await?),
        _ => None,
    };
    let gateway = GatewayConfig {
        blob_server: blobs.as_ref().map(|(_, addr)| *addr),
        ..gateway
    };
    let shutdown = {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let tls = match (&section.tls_cert, &section.tls_key) {
        (Some(cert), Some(key)) => {
            Some(tls_config_from_pem(cert, key).map_err(StartError::RegistryTls)?)
        }
        _ => None,
    };
    // Fail at start on a bad setting rather than in the serving task.
    gateway.validate().map_err(StartError::Registry)?;
    gateway
        .check_exposure(bound)
        .map_err(StartError::Registry)?;
    if let Some((blob_listener, blob_addr)) = blobs {
        let mut config = BlobServerConfig::new(bound, metrics);
        // Every connection the registry API admits may be redirected here at once.
        config.max_redirects = section.limits.max_connections;
        start_blob_server(blob_listener, registry.clone(), config, stop);
        tracing::info!(addr = %blob_addr, "blob server listening");
    }
    crate::spawn(async move {
        let served = match tls {
            Some(tls) => serve_tls(listener, registry, gateway, tls, shutdown).await,
            None => serve_registry_plain(listener, registry, gateway, shutdown).await,
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "registry API stopped");
        }
    });
    tracing::info!(addr = %bound, push = proxy, "registry API listening");
    Ok(Some(bound))
}

/// Serves the agent's complete blobs on `listener` until `stop` turns true.
fn start_blob_server(
    listener: TcpListener,
    registry: Arc<ClusterRegistry>,
    config: BlobServerConfig,
    mut stop: watch::Receiver<bool>,
) {
    crate::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = serve_blobs(listener, registry, config, shutdown).await {
            tracing::error!(error = %e, "blob server stopped");
        }
    });
}

/// Binds a listener of the registry API (or its blob server); it and its address.
async fn bind_registry(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::BindRegistry { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

/// What the registry API serves from: the cluster through the agent (pull, with the
/// upstreams behind it), or the cluster directly (proxy: push). `None` if this node
/// serves no registry API.
fn registry(
    config: &NodeConfig,
    roles: &Roles,
    cluster: &Cluster,
) -> Result<Option<Arc<ClusterRegistry>>, StartError> {
    let section = &config.registry;
    let proxy = config.has(NodeRole::Proxy);
    if !section.enabled || !(proxy || roles.agent.is_some()) {
        return Ok(None);
    }
    let registry = match &roles.agent {
        Some(agent) if !proxy => ClusterRegistry::agent(agent.clone(), cluster.clone()),
        _ if section.spill_pushes => {
            ClusterRegistry::proxy(cluster.clone()).with_spill_dir(uploads_dir(config))
        }
        _ => ClusterRegistry::proxy(cluster.clone()),
    };
    if section.upstreams.is_empty() || proxy {
        return Ok(Some(Arc::new(registry)));
    }
    let upstreams = Upstreams::new(&section.upstreams).map_err(StartError::Upstreams)?;
    Ok(Some(Arc::new(registry.with_upstreams(upstreams))))
}

/// Where the registry API keeps upload sessions (and a proxy spills streamed pushes).
fn uploads_dir(config: &NodeConfig) -> PathBuf {
    config
        .registry
        .uploads_dir
        .clone()
        .unwrap_or_else(|| config.node.data_dir.join("registry-uploads"))
}

/// The push credentials, if any are configured.
fn push_auth(section: &RegistrySection) -> Option<PushAuth> {
    if section.push_tokens.is_empty() && section.push_users.is_empty() {
        return None;
    }
    Some(PushAuth {
        bearer_tokens: section.push_tokens.clone(),
        basic: section
            .push_users
            .iter()
            .filter_map(|u| u.split_once(':'))
            .map(|(user, password)| BasicCredential {
                username: user.to_string(),
                password: password.to_string(),
            })
            .collect(),
        realm: "kraken".into(),
    })
}
