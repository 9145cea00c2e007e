//! HTTPS for the registry API: [`serve_tls`] with a rustls configuration (ring provider,
//! HTTP/1.1 ALPN), usually loaded from PEM files by [`tls_config_from_pem`].
//!
//! Each connection's TLS handshake runs in its own task with a deadline (10 s), inside the
//! listener's connection cap (see `listen`), so a slow or silent client cannot hold up the
//! others.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{GatewayConfig, GatewayError};
use crate::listen::serve_app;
use crate::registry::Registry;
use crate::server::router;

/// A server configuration from a PEM certificate chain and a PEM private key.
pub fn tls_config_from_pem(
    cert_pem: &Path,
    key_pem: &Path,
) -> Result<Arc<rustls::ServerConfig>, GatewayError> {
    let file_error = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| GatewayError::TlsFile { what, path, source }
    };
    let certs = CertificateDer::pem_file_iter(cert_pem)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(file_error("certificate", cert_pem))?;
    if certs.is_empty() {
        return Err(GatewayError::NoCertificate(cert_pem.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(file_error("private key", key_pem))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Like [`crate::serve`], over TLS.
pub async fn serve_tls<R: Registry>(
    listener: TcpListener,
    registry: Arc<R>,
    config: GatewayConfig,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // No redirects to the blob server: it is plain HTTP (its `sendfile` cannot encrypt),
    // and sending an HTTPS client there would downgrade it. Blobs stream over TLS.
    let config = GatewayConfig {
        blob_server: None,
        ..config
    };
    let addr = listener.local_addr()?;
    config.check_exposure(addr).map_err(io::Error::other)?;
    let (limits, metrics) = (config.http.clone(), config.metrics.connections().clone());
    let app = router(registry, config).map_err(io::Error::other)?;
    let tls = Some(TlsAcceptor::from(tls));
    serve_app(
        listener,
        app,
        limits,
        metrics,
        tls,
        "registry-tls",
        shutdown,
    )
    .await
}
