//! Read-through: an owned blob the origin lacks is fetched from the backend once.
//!
//! The first caller starts a fetch task and every caller (the first included) waits on a
//! watch channel for its outcome (`crate::flight`), so a thousand agents asking at once cause one backend
//! read, and each hears the moment the blob is ready. The blob streams from the backend
//! into the CAS ingest (sha256 checked, metainfo generated) without a temp copy in memory.

use kraken_storage::Digest;
use kraken_storage::cas::CasError;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::{Origin, internal};
use crate::bridge::{channel_reader, feed};
use crate::mirror::backend_error;
use crate::proto::{ErrorKind, RemoteError, Response};

/// The outcome callers of a read-through wait on.
pub type FetchOutcome = watch::Receiver<Option<Result<(), RemoteError>>>;

impl Origin {
    /// Joins the read-through of `digest`, starting it if none is running.
    pub fn read_through(&self, namespace: &str, digest: &Digest) -> FetchOutcome {
        let (origin, namespace, digest) = (self.clone(), namespace.to_string(), *digest);
        self.inner.fetches.join(digest, move || {
            let span = tracing::info_span!("read_through", %digest, %namespace);
            async move {
                let result = origin.fetch_from_backend(&namespace, &digest).await;
                match &result {
                    Ok(()) => tracing::info!("read through from the backend"),
                    // Absent from the backend is an answer (registry clients probe blobs
                    // before pushing them), not a fault.
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        tracing::debug!("not in the backend either");
                    }
                    Err(e) => tracing::warn!(error = %e, "read-through failed"),
                }
                // The fetch is forgotten before the waiters hear, so a failure is retried
                // by the next request.
                result
            }
            .instrument(span)
        })
    }

    /// Joins (or starts) the read-through of `digest` and waits for it up to `wait`:
    /// `Ok(())` once it succeeded, else the answer to give the caller (`Pending` while it
    /// runs on, or its error).
    pub(super) async fn read_through_within(
        &self,
        namespace: &str,
        digest: &Digest,
        wait: std::time::Duration,
    ) -> Result<(), Response> {
        let mut rx = self.read_through(namespace, digest);
        match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
            Err(_) => Err(Response::Pending),
            Ok(Err(_)) => Err(Response::Error(RemoteError::new(
                ErrorKind::Internal,
                "read-through task ended without a result",
            ))),
            Ok(Ok(outcome)) => match &*outcome {
                Some(Err(e)) => Err(Response::Error(e.clone())),
                Some(Ok(())) | None => Ok(()),
            },
        }
    }

    async fn fetch_from_backend(
        &self,
        namespace: &str,
        digest: &Digest,
    ) -> Result<(), RemoteError> {
        let backend = self
            .inner
            .router
            .route(namespace)
            .map_err(|e| RemoteError::new(ErrorKind::BadRequest, e.to_string()))?;
        let stream = backend
            .read(namespace, digest)
            .await
            .map_err(|e| backend_error(&e))?;
        let length = stream.len();
        let (tx, reader) = channel_reader();
        let cas = self.inner.cas.clone();
        let digest_copy = *digest;
        let ingest =
            tokio::task::spawn_blocking(move || cas.ingest(&digest_copy, Some(length), reader));
        let fed = feed(stream, tx).await;
        let ingested = ingest.await.map_err(internal)?;
        match ingested {
            Ok(_) => {
                self.inner
                    .cas
                    .set_persisted(digest, true)
                    .map_err(internal)?;
                self.inner.metrics.add_backend_read_bytes(fed);
                self.inner
                    .read_throughs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(*digest, std::time::SystemTime::now());
                Ok(())
            }
            Err(e @ (CasError::DigestMismatch { .. } | CasError::LengthMismatch { .. })) => {
                Err(RemoteError::new(
                    ErrorKind::DigestMismatch,
                    format!("the backend's copy is corrupt: {e}"),
                ))
            }
            Err(CasError::Source { source, .. }) => Err(RemoteError::new(
                ErrorKind::Unavailable,
                format!("backend read of {digest} failed: {source}"),
            )),
            Err(e) => Err(internal(e)),
        }
    }
}
