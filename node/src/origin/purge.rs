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
//!   routes (read-only registry mirrors are skipped; a missing blob is fine), once no
//!   write-back of it is under way here: one that began before the first stage (it holds
//!   the blob open) would write the blob back after the delete. A write-back that starts
//!   later finds the blob gone and drops its item. An origin that
//!   holds a copy again (a push since the first stage) keeps the backends' copy, pins its
//!   own and marks it not persisted, so it is never evicted as though the backend had it.
//!
//! A replication or repair push of the blob that read it before the purge can land on
//! another owner after that owner's stages: for [`PURGED_FOR`] after a purge, an origin
//! refuses **replica** copies of the blob (the sender gives up after its retries). A
//! client's own push of it again (not a replica) is taken and lifts the refusal; its
//! replicas to owners that purged the blob within that window are refused too, so a blob
//! pushed again minutes after its deletion may hold fewer copies until the next
//! anti-entropy pass after the refusal ends.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use kraken_storage::Digest;
use kraken_storage::cas::{CasError, PurgeOutcome};

use super::upload::UploadRequest;
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
        // Marked first: a replica landing while the store purges is refused already.
        self.mark_purged(digest);
        let outcome = tokio::task::spawn_blocking(move || cas.purge(&d, unused_since_ms))
            .await
            .map_err(internal)?;
        match outcome {
            Ok(PurgeOutcome::Absent) => Ok(Purged::default()),
            Ok(PurgeOutcome::Kept { last_used_ms }) => {
                self.lift_purge_mark(digest);
                Ok(Purged {
                    kept_ms: Some(last_used_ms),
                    ..Purged::default()
                })
            }
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
        self.wait_for_writebacks(digest).await?;
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

    /// Waits (up to [`WRITEBACK_WAIT`]) until no write-back of `digest` is under way.
    async fn wait_for_writebacks(&self, digest: &Digest) -> Result<(), RemoteError> {
        let deadline = tokio::time::Instant::now() + WRITEBACK_WAIT;
        loop {
            let queue = &self.inner.queue;
            let busy = queue
                .list()
                .map_err(internal)?
                .iter()
                .any(|i| i.digest == *digest && queue.is_leased(&i.namespace, digest));
            if !busy {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RemoteError::new(
                    ErrorKind::Unavailable,
                    format!("a write-back of {digest} is still under way; purge again"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How long an origin refuses replica copies of a blob it purged.
const PURGED_FOR: Duration = Duration::from_secs(600);

impl Origin {
    fn purge_marks(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Instant>> {
        self.inner
            .purged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mark_purged(&self, digest: &Digest) {
        let mut marks = self.purge_marks();
        marks.retain(|_, at| at.elapsed() < PURGED_FOR);
        marks.insert(*digest, Instant::now());
    }

    fn lift_purge_mark(&self, digest: &Digest) {
        self.purge_marks().remove(digest);
    }

    /// Refuses a replica of a blob purged here within [`PURGED_FOR`]; a client's own
    /// push of it lifts the mark.
    pub(super) fn admit_after_purge(&self, req: &UploadRequest) -> Result<(), RemoteError> {
        if !req.replica {
            self.lift_purge_mark(&req.digest);
            return Ok(());
        }
        match self.purge_marks().get(&req.digest) {
            Some(at) if at.elapsed() < PURGED_FOR => Err(RemoteError::new(
                ErrorKind::NotFound,
                format!(
                    "{} was deleted here; a replica of an older copy is refused",
                    req.digest
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Longest a purge waits for a write-back of the blob under way before it gives up.
const WRITEBACK_WAIT: Duration = Duration::from_secs(30);
