//! The origin's write-back: the storage crate's executor draining the durable queue to the
//! backends with [`BlobWriteBack`], and what only the origin knows for it.
//!
//! It wakes when an upload queues an item and at least every `writeback_poll_ms`, leases
//! up to `writeback_concurrency` due items and uploads them at once. A success marks the
//! blob persisted and unpins it; a failure reschedules the item with backoff (a backend
//! outage only delays the queue). Items survive restarts because the queue is in redb.
//!
//! The backend checks every upload against the digest before committing it, so a queued
//! blob whose stored bytes rotted is never written back: the attempt fails, the blob is
//! handed to the scrubber ([`super::scrub`]) at once, and the item waits while its blob is
//! quarantined and restored, then uploads the restored copy.
//!
//! An item whose blob is not in the CAS waits while its upload is staged or being received
//! (`Origin::has_staged`, `Origin::is_uploading`); otherwise it is the orphan of an
//! upload that crashed between queueing and ingest (never acknowledged) and is dropped.

use std::time::Duration;

use kraken_storage::Digest;
use kraken_storage::backend::{
    BackendError, BlobWriteBack, UploadOutcome, WriteBackError, WriteBackHooks,
};
use kraken_storage::queue::WriteBackItem;
use kraken_storage::queue::executor::Executor;
use tokio::sync::watch;

use super::Origin;

/// Runs until `stop` turns true.
pub async fn run(origin: Origin, stop: watch::Receiver<bool>) {
    let inner = &origin.inner;
    let concurrency = inner.config.writeback_concurrency;
    let job = BlobWriteBack {
        router: &inner.router,
        cas: &inner.cas,
        hooks: &origin,
    };
    let poll = Duration::from_millis(inner.config.writeback_poll_ms);
    Executor::new(&inner.queue, job, concurrency, concurrency)
        .run(&inner.writeback_wake, poll, stop)
        .await;
}

impl WriteBackHooks for &Origin {
    fn arriving(&self, digest: &Digest) -> bool {
        // A quarantined blob is being restored: its item uploads the restored copy.
        self.has_staged(digest) || self.is_uploading(digest) || self.is_quarantined(digest)
    }

    fn written_back(&self, _: &WriteBackItem, outcome: UploadOutcome) {
        let uploaded = matches!(outcome, UploadOutcome::Uploaded { .. });
        self.inner.metrics.writeback_done(uploaded);
    }

    fn failed(&self, item: &WriteBackItem, error: &WriteBackError) {
        self.inner.metrics.writeback_failed();
        // The backend refused bytes that do not hash to the digest (nothing was written):
        // the stored copy rotted, so check it now rather than at the scrub's next pass.
        if matches!(
            error,
            WriteBackError::Backend(BackendError::DigestMismatch { .. })
        ) {
            tracing::error!(digest = %item.digest, "write-back bytes do not match the digest; checking the stored copy");
            self.suspect(&item.digest);
        }
    }
}
