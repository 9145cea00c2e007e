//! The zero-copy blob server: `GET` and `HEAD` of blobs this host holds complete, their
//! bytes sent with `sendfile(2)` straight from the store's file.
//!
//! Why a server of its own: hyper's response bodies are streams of `Bytes`, so through
//! the registry API a warm blob is read from its file into buffers and written out again,
//! two copies in user space on top of the kernel's. Here the kernel moves the pages from
//! the page cache to the socket itself. The registry API's blob `GET` answers `307` to
//! this server when [`Registry::local_blob`] has the blob (registry clients follow blob
//! redirects: S3-backed registries redirect every one); `HEAD`, manifests and blobs still
//! arriving stay on the registry API.
//!
//! What it serves, and nothing else: HTTP/1.1 (and 1.0) `GET` and `HEAD` of
//! `/v2/<name>/blobs/<digest>`, whole or one `Range` (206, or 416 with `bytes */<len>`),
//! with keep-alive and pipelining. Heads are read by a strict, bounded parser
//! ([`request`]): over 8 KiB or 32 fields is 431; a body, another method or anything
//! malformed is 400 or 405; the connection closes after any of these. A head must arrive
//! within [`BlobServerConfig::header_timeout`] of its first byte (of the accept on a fresh
//! connection), a kept-alive connection closes after
//! [`BlobServerConfig::idle_timeout`] without a request, and a client that takes nothing
//! for [`BlobServerConfig::send_timeout`] is cut off.
//!
//! A blob this host does not (or no longer) hold, and every request on a connection
//! beyond [`BlobServerConfig::max_connections`] (up to
//! [`BlobServerConfig::max_redirects`] more), is sent back to the registry API
//! ([`redirect`]), which streams it as before: a blob evicted between the two requests
//! costs a round trip, never a failed pull. A blob being sent is held by its
//! [`LocalBlob`], whose reader keeps the store from evicting or deleting it; a file that
//! ends early anyway cuts the connection short of its `Content-Length`, so the client sees
//! a failed transfer, never wrong bytes. Every request is counted in the gateway metrics
//! and written to the access log like the registry API's.
//!
//! Modules: [`request`] (the head parser and its deadlines), [`response`] (heads, error
//! bodies, `Date`), [`send`] (the `sendfile` loop on a blocking thread), [`conn`] (one
//! connection), [`redirect`] (both redirects and the `Location` they name), [`fuzzing`]
//! (all of the decoding of a request, for the fuzzer).

pub(crate) mod conn;
pub(crate) mod fuzzing;
pub(crate) mod redirect;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod send;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::metrics::GatewayMetrics;
#[cfg(doc)]
use crate::registry::LocalBlob;
use crate::registry::Registry;
use conn::{Mode, connection};
use request::Deadlines;

/// Default [`BlobServerConfig::max_connections`].
pub const DEFAULT_BLOB_MAX_CONNECTIONS: usize = 128;

/// How the blob server serves.
#[derive(Debug, Clone)]
pub struct BlobServerConfig {
    /// The registry API's address: requests for blobs this host lacks go back there.
    pub registry: SocketAddr,
    /// Connections served at once. Those beyond get their first request sent back to the
    /// registry API and are closed.
    pub max_connections: usize,
    /// Connections beyond `max_connections` that are sent back (each costs a head of at
    /// most 8 KiB for a moment); beyond these, new connections are closed unanswered.
    /// Default: the registry API's own connection cap, so that a burst of clients the
    /// registry API admitted and redirected here all get an answer.
    pub max_redirects: usize,
    /// How long a request head may take from its first byte.
    pub header_timeout: Duration,
    /// How long a kept-alive connection waits for its next request.
    pub idle_timeout: Duration,
    /// How long a client may take no bytes before it is cut off.
    pub send_timeout: Duration,
    /// The gateway's metrics (the registry API's, so both count together).
    pub metrics: GatewayMetrics,
}

impl BlobServerConfig {
    /// The defaults, sending what this host lacks back to the registry API at `registry`:
    /// 128 connections, 1,024 more sent back, 10 s for a head, 30 s idle, 120 s without
    /// progress.
    pub fn new(registry: SocketAddr, metrics: GatewayMetrics) -> Self {
        BlobServerConfig {
            registry,
            max_connections: DEFAULT_BLOB_MAX_CONNECTIONS,
            max_redirects: crate::listen::DEFAULT_MAX_CONNECTIONS,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(120),
            metrics,
        }
    }
}

/// What every connection shares.
pub(crate) struct Server<R> {
    registry: Arc<R>,
    config: BlobServerConfig,
    deadlines: Deadlines,
    /// The span current when the server started (a node's): connections run in tasks of
    /// their own, which inherit no span.
    parent: tracing::Span,
}

/// Serves the blobs `registry` holds locally on `listener` until `shutdown` completes;
/// then stops accepting, and kept-alive connections close once their request in flight is
/// answered.
pub async fn serve_blobs<R: Registry>(
    listener: TcpListener,
    registry: Arc<R>,
    config: BlobServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let cap = config.max_connections.max(1);
    let served = Arc::new(Semaphore::new(cap));
    let overflow = Arc::new(Semaphore::new(config.max_redirects.max(1)));
    let server = Arc::new(Server {
        deadlines: Deadlines {
            header: config.header_timeout,
            idle: config.idle_timeout,
        },
        registry,
        config,
        parent: tracing::Span::current(),
    });
    let (stop, stopped) = watch::channel(false);
    let log = crate::loglimit::LogLimiter::default();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait a
                    // little rather than spin, and go on.
                    if let Some(suppressed) = log.allow("accept_failed") {
                        tracing::warn!(error = %e, suppressed, "blob server: accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (permit, mode) = match served.clone().try_acquire_owned() {
            Ok(p) => (p, Mode::Serve),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(p) => (p, Mode::Overflow),
                Err(_) => continue,
            },
        };
        let server = server.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            connection(server, stream, mode, stopped).await;
            drop(permit);
        });
    }
    let _ = stop.send(true);
    Ok(())
}
