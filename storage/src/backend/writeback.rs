//! Blob write-back: the upload path from the local CAS to a backend, and the job an
//! origin's write-back executor runs.
//!
//! [`upload_blob`] copies one complete CAS blob to a backend, skipping the upload when the
//! backend already holds a blob of that length under the digest's key (content addressing
//! makes that a safe test). [`BlobWriteBack`] is the [`Job`] of the durable write-back
//! queue, run by the queue's [`Executor`](crate::queue::executor::Executor): route each item
//! by namespace, upload, then mark the blob persisted and unpinned in the CAS; a failure
//! leaves the item to the queue's backoff, so a backend outage only delays the queue.
//!
//! An item whose namespace routes to an upstream registry (read-only) has nothing to be
//! written to: it leaves the queue, its blob still pinned.
//!
//! An item whose blob is not in the CAS either belongs to an upload still arriving (its
//! bytes are being received, staged for a resume or committed: it waits) or is the orphan
//! of an upload that crashed between queueing and ingest and was never acknowledged (it is
//! dropped). Only the node can tell which ([`WriteBackHooks::arriving`]).

use std::time::Duration;

use super::{Backend, BackendError, NamespaceRouter};
use crate::cas::{Cas, CasError};
use crate::digest::Digest;
use crate::queue::executor::{Job, Step};
use crate::queue::{QueueError, WriteBackItem};

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
    let reader = cas.housekeeping_reader(digest)?;
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

/// What [`BlobWriteBack`] needs from the node it runs on.
pub trait WriteBackHooks: Sync {
    /// Whether an upload of `digest` is still arriving (being received or committed, or
    /// staged for a resume): its item waits instead of being dropped as an orphan.
    fn arriving(&self, digest: &Digest) -> bool;

    /// Called once an item was written back and left the queue (metrics).
    fn written_back(&self, item: &WriteBackItem, outcome: UploadOutcome) {
        let _ = (item, outcome);
    }

    /// Called once a failed write-back was rescheduled (metrics).
    fn failed(&self, item: &WriteBackItem, error: &WriteBackError) {
        let _ = (item, error);
    }
}

/// The write-back of queued blobs from a CAS to the backends their namespaces route to;
/// see the module docs.
pub struct BlobWriteBack<'a, H> {
    /// Backends by namespace.
    pub router: &'a NamespaceRouter,
    /// Where the blobs are.
    pub cas: &'a Cas,
    /// The node's side.
    pub hooks: H,
}

impl<H: WriteBackHooks> Job for BlobWriteBack<'_, H> {
    const NAME: &'static str = "write-back";
    type Done = UploadOutcome;
    type Error = WriteBackError;

    async fn attempt(&self, item: &WriteBackItem) -> Result<Step<UploadOutcome>, WriteBackError> {
        if !self.cas.contains(&item.digest)? {
            // Backoff without alarm: the upload is still being received or committed.
            if self.hooks.arriving(&item.digest) {
                return Ok(Step::Later("upload still arriving"));
            }
            tracing::warn!(digest = %item.digest, "dropping a write-back whose upload never completed");
            return Ok(Step::Drop);
        }
        let backend = self.router.route(&item.namespace)?;
        if backend.is_read_only() {
            // An upstream registry takes no writes, and retrying would never change that.
            // Its read-through blobs are persisted and never queued; an item here was
            // queued before the route became a mirror. The blob stays pinned: it may be
            // nowhere else.
            tracing::warn!(digest = %item.digest, namespace = %item.namespace,
                backend = backend.name(),
                "dropping a write-back into a read-only upstream registry; the blob stays pinned");
            return Ok(Step::Drop);
        }
        let outcome = upload_blob(backend, self.cas, &item.digest).await?;
        // Pinned at upload so that it could not be evicted before it was safe.
        self.cas.set_persisted(&item.digest, true)?;
        self.cas.set_pinned(&item.digest, false)?;
        Ok(Step::Done(outcome))
    }

    fn done(&self, item: &WriteBackItem, outcome: UploadOutcome) {
        self.hooks.written_back(item, outcome);
        tracing::info!(digest = %item.digest, namespace = %item.namespace,
            ?outcome, attempts = item.attempts, "written back");
    }

    fn failed(&self, item: &WriteBackItem, error: &WriteBackError, retry_in: Duration) {
        self.hooks.failed(item, error);
        tracing::warn!(digest = %item.digest, namespace = %item.namespace,
            error = %error, attempts = item.attempts + 1,
            retry_in_ms = retry_in.as_millis(), "write-back failed; will retry");
    }
}
