//! Building the axum router and serving it on a TCP listener.
//!
//! The registry API has no axum routes: one fallback handler ([`crate::handlers::dispatch`])
//! parses every path itself (names contain slashes); [`GatewayConfig::routes`] adds the
//! embedder's own beside it. Everything is wrapped by the access layer
//! ([`crate::access`]) that adds the API version header, logs and counts. Connections are
//! served by `listen` (limits on connections, heads, idle time and bodies).

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::Router;

use crate::config::{GatewayConfig, GatewayError};
use crate::error::ApiError;
use crate::listen::serve_app;
use crate::metrics::GatewayMetrics;
use crate::registry::Registry;
use crate::uploads::UploadStore;

/// Everything a request handler needs.
pub(crate) struct Gateway<R> {
    /// The cluster.
    pub(crate) registry: Arc<R>,
    /// The settings.
    pub(crate) config: GatewayConfig,
    /// Upload sessions (only when push is on: agents never touch the disk).
    uploads: Option<UploadStore>,
}

impl<R> Gateway<R> {
    /// The upload sessions; 405 when push is off.
    pub(crate) fn uploads(&self) -> Result<&UploadStore, ApiError> {
        self.uploads.as_ref().ok_or_else(ApiError::push_disabled)
    }
}

/// The registry API over `registry`, as an axum router (serve it with `axum::serve` or
/// [`serve`]). Fails if the config is invalid or, with push on, the uploads directory is
/// unusable.
pub fn router<R: Registry>(
    registry: Arc<R>,
    config: GatewayConfig,
) -> Result<Router, GatewayError> {
    config.validate()?;
    let metrics: GatewayMetrics = config.metrics.clone();
    let routes = config.routes.clone();
    let uploads = if config.push {
        Some(UploadStore::open(
            config.uploads_dir.clone(),
            config.upload_ttl,
            config.upload_limits.clone(),
            metrics.clone(),
        )?)
    } else {
        None
    };
    let gateway = Arc::new(Gateway {
        registry,
        config,
        uploads,
    });
    let api = Router::new()
        .fallback(crate::handlers::dispatch::<R>)
        .with_state(gateway);
    let app = match routes {
        Some(routes) => routes.merge(api),
        None => api,
    };
    Ok(app.layer(axum::middleware::from_fn_with_state(
        crate::access::Access {
            metrics,
            parent: tracing::Span::current(),
        },
        crate::access::observe,
    )))
}

/// Serves the registry API on `listener` until `shutdown` completes (then finishes the
/// requests in flight), within [`GatewayConfig::http`] (see `listen`). Refuses to start
/// a push-enabled gateway without credentials beyond loopback
/// ([`GatewayConfig::check_exposure`]).
pub async fn serve<R: Registry>(
    listener: tokio::net::TcpListener,
    registry: Arc<R>,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    config.check_exposure(addr).map_err(io::Error::other)?;
    let (limits, metrics) = (config.http.clone(), config.metrics.connections().clone());
    let app = router(registry, config).map_err(io::Error::other)?;
    serve_app(listener, app, limits, metrics, None, "registry", shutdown).await
}
