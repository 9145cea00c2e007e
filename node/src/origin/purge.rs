//! The origin's half of a purge (`Request::PurgeBlob`, driven by [`crate::purge`]).
//!
//! - [`PurgeStage::Store`]: the blob leaves this origin's store, unless the guard
//!   (`unused_since_ms`) keeps it: the store checks the copy's last write or use and removes
//!   it under the one lock every use takes (see `kraken_storage::cas::Cas::purge`), so a
//!   concurrent ingest or read either counts as a use or finds the blob gone. An upload of
//!   the blob being received or staged here is a use too. A copy being read goes when its
//!   readers finish. A queued write-back of the blob is dropped by the executor (its blob
//!   is gone and no upload is arriving).
//! - [`PurgeStage::Backends`]: the blob leaves every writable backend of this origin's
//!   routes (read-only registry mirrors are skipped; a missing blob is fine). An origin that
//!   holds a copy again (a push since the first stage) keeps the backends' copy, pins its
//!   own and marks it not persisted, so it is never evicted as though the backend had it.

use std::collections::BTreeSet;

use kraken_storage::Digest;
use kraken_storage::cas::{CasError, PurgeOutcome};

use super::{Origin, internal};
use crate::proto::{ErrorKind, PurgeStage, Purged, RemoteError, Response};

impl Origin {
    /// Serves one purge stage.
    pub(super) async fn purge(
        &self,
        digest: &Digest,
        unused_since_ms: Option<u64>,
        stage: PurgeStage,
    ) -> Response {
        let answer = match stage {
            PurgeStage::Store => self.purge_store(digest, unused_since_ms).await,
            PurgeStage::Backends => self.purge_backends(digest).await,
        };
        match answer {
            Ok(purged) => Response::Purged(purged),
            Err(e) => Response::Error(e),
        }
    }

    async fn purge_store(
        &self,
        digest: &Digest,
        unused_since_ms: Option<u64>,
    ) -> Result<Purged, RemoteError> {
        if unused_since_ms.is_some() && (self.is_uploading(digest) || self.has_staged(digest)) {
            return Ok(Purged {
                kept_ms: Some(kraken_storage::time::now_ms()),
                ..Purged::default()
            });
        }
        let cas = self.inner.cas.clone();
        let d = *digest;
        let outcome = tokio::task::spawn_blocking(move || cas.purge(&d, unused_since_ms))
            .await
            .map_err(internal)?;
        match outcome {
            Ok(PurgeOutcome::Absent) => Ok(Purged::default()),
            Ok(PurgeOutcome::Kept { last_used_ms }) => Ok(Purged {
                kept_ms: Some(last_used_ms),
                ..Purged::default()
            }),
            Ok(PurgeOutcome::Removed { freed_bytes, .. }) => {
                tracing::info!(%digest, freed_bytes, "purged from the store");
                Ok(Purged {
                    freed_bytes,
                    ..Purged::default()
                })
            }
            Err(e @ CasError::Busy(_)) => {
                Err(RemoteError::new(ErrorKind::Unavailable, e.to_string()))
            }
            Err(e) => Err(internal(e)),
        }
    }

    async fn purge_backends(&self, digest: &Digest) -> Result<Purged, RemoteError> {
        let cas = &self.inner.cas;
        if let Some(info) = cas.info(digest).map_err(internal)? {
            // Pinned and not persisted: never evicted as though the backend had it.
            cas.set_persisted(digest, false).map_err(internal)?;
            cas.set_pinned(digest, true).map_err(internal)?;
            tracing::warn!(%digest, "a copy came back during a purge: kept, and the backends' too");
            return Ok(Purged {
                kept_ms: Some(kraken_storage::time::to_ms(
                    info.last_access.max(info.created),
                )),
                ..Purged::default()
            });
        }
        let mut done = BTreeSet::new();
        for (_, backend) in self.inner.router.routes() {
            if backend.is_read_only() || done.contains(backend.name()) {
                continue;
            }
            backend.delete(digest).await.map_err(|e| {
                RemoteError::new(
                    ErrorKind::Unavailable,
                    format!("deleting {digest} from backend {}: {e}", backend.name()),
                )
            })?;
            done.insert(backend.name().to_string());
        }
        if !done.is_empty() {
            tracing::info!(%digest, backends = ?done, "purged from the backends");
        }
        Ok(Purged {
            backends: done.into_iter().collect(),
            ..Purged::default()
        })
    }
}
