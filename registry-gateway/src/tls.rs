//! HTTPS for the registry API: [`serve_tls`] with a rustls configuration (ring provider,
//! HTTP/1.1 ALPN), usually loaded from PEM files by [`tls_config_from_pem`].
//!
//! TLS handshakes run in their own tasks with a deadline, so a slow or silent client
//! cannot hold up the others; finished connections are handed to axum through a small
//! [`axum::serve::Listener`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{GatewayConfig, GatewayError};
use crate::registry::Registry;
use crate::server::router;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    let app = router(registry, config).map_err(io::Error::other)?;
    let listener = TlsListener::new(listener, TlsAcceptor::from(tls))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Accepts TCP connections and yields those whose handshake succeeded.
struct TlsListener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, tls: TlsAcceptor) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accepting = async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a TLS connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        };
        // In the caller's span (a node's): tokio tasks inherit none.
        let acceptor = tokio::spawn(tracing::Instrument::in_current_span(accepting));
        Ok(TlsListener {
            addr,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The acceptor task is gone (only at shutdown): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
