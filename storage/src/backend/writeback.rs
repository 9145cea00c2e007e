//! The upload path from the local CAS to a backend, and one step of the write-back executor.
//!
//! [`upload_blob`] copies one complete CAS blob to a backend, skipping the upload when the
//! backend already holds a blob of that length under the digest's key (content addressing
//! makes that a safe test). [`drain_due`] is one pass of the executor an origin runs in a
//! loop: take the due items of the durable queue, route each by namespace, upload, then
//! mark the blob persisted and unpinned in the CAS and complete the item, or record the
//! failure so the queue backs off. A backend outage only delays the queue.

use std::time::SystemTime;

use super::{Backend, BackendError, NamespaceRouter};
use crate::cas::{Cas, CasError};
use crate::digest::Digest;
use crate::queue::{QueueError, WriteBackItem, WriteBackQueue};

/// What [`upload_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The bytes were uploaded.
    Uploaded {
        /// Bytes sent.
        bytes: u64,
    },
    /// The backend already had the blob; nothing was sent.
    AlreadyPresent,
}

/// Why one write-back failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    /// The local blob could not be read (missing, or a disk error).
    #[error(transparent)]
    Cas(#[from] CasError),
    /// The backend refused or was unreachable.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The queue itself failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Copies the complete blob `digest` from `cas` to `backend` unless the backend has it.
/// The CAS reader is held for the whole upload, so the blob cannot be evicted under it.
pub async fn upload_blob(
    backend: &Backend,
    cas: &Cas,
    digest: &Digest,
) -> Result<UploadOutcome, WriteBackError> {
    let reader = cas.reader(digest)?;
    if backend.stat(digest).await? == Some(reader.len()) {
        return Ok(UploadOutcome::AlreadyPresent);
    }
    let file = reader
        .file()
        .try_clone()
        .map_err(CasError::io("reopen for upload", cas.blob_path(digest)))?;
    let bytes = backend.put_file(digest, file, reader.len()).await?;
    drop(reader);
    Ok(UploadOutcome::Uploaded { bytes })
}

/// Counts from one [`drain_due`] pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the backend already had.
    pub already_present: usize,
    /// Items that failed and were rescheduled, with their errors.
    pub failed: Vec<(WriteBackItem, String)>,
}

/// Runs up to `limit` due write-backs, one after another.
///
/// On success the blob is marked persisted and unpinned (the origin pins it at upload time
/// so it cannot be evicted before it is safe) and the item leaves the queue. On failure the
/// item is rescheduled with backoff. Only a failure of the queue itself is returned as an
/// error; every per-item failure is in the report.
pub async fn drain_due(
    queue: &WriteBackQueue,
    router: &NamespaceRouter,
    cas: &Cas,
    now: SystemTime,
    limit: usize,
) -> Result<DrainReport, QueueError> {
    let mut report = DrainReport::default();
    for item in queue.take_due(now, limit)? {
        let result = async {
            let backend = router.route(&item.namespace)?;
            let outcome = upload_blob(backend, cas, &item.digest).await?;
            cas.set_persisted(&item.digest, true)?;
            cas.set_pinned(&item.digest, false)?;
            Ok::<_, WriteBackError>(outcome)
        }
        .await;
        match result {
            Ok(outcome) => {
                queue.complete(&item)?;
                match outcome {
                    UploadOutcome::Uploaded { .. } => report.uploaded += 1,
                    UploadOutcome::AlreadyPresent => report.already_present += 1,
                }
            }
            Err(e) => {
                let message = e.to_string();
                let next = queue.fail(&item, now, &message)?;
                tracing::warn!(namespace = %item.namespace, digest = %item.digest, error = %message,
                    retry_in_ms = next.duration_since(now).map_or(0, |d| d.as_millis()),
                    "write-back failed; will retry");
                report.failed.push((item, message));
            }
        }
    }
    Ok(report)
}
