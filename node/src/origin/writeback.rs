//! The write-back executor: drains the durable queue to the backends.
//!
//! It wakes when an upload queues an item and at least every `writeback_poll_ms`, leases
//! the due items, and uploads up to `writeback_concurrency` at once. A success marks the
//! blob persisted and unpins it; a failure reschedules the item with backoff (a backend
//! outage only delays the queue). Items survive restarts because the queue is in redb.
//!
//! An item whose blob is neither in the CAS nor staged is an orphan of an upload that
//! crashed between queueing and ingest (never acknowledged): it is dropped.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kraken_storage::backend::{UploadOutcome, WriteBackError, upload_blob};
use kraken_storage::queue::WriteBackItem;
use tokio::sync::watch;

use super::Origin;

/// Runs until `stop` turns true.
pub async fn run(origin: Origin, mut stop: watch::Receiver<bool>) {
    let poll = Duration::from_millis(origin.inner.config.writeback_poll_ms);
    loop {
        if *stop.borrow() {
            return;
        }
        let worked = match pass(&origin).await {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::error!(error = %e, "write-back queue failed");
                false
            }
        };
        if worked {
            continue; // More may be due.
        }
        tokio::select! {
            _ = origin.inner.writeback_wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => {}
        }
    }
}

/// One pass over the due items; returns how many were attempted.
pub async fn pass(origin: &Origin) -> Result<usize, kraken_storage::queue::QueueError> {
    let inner = &origin.inner;
    let limit = inner.config.writeback_concurrency;
    let items = inner.queue.take_due(SystemTime::now(), limit)?;
    let n = items.len();
    let results: Vec<_> = futures::stream::iter(items)
        .map(|item| async move {
            let r = write_back(origin, &item).await;
            (item, r)
        })
        .buffer_unordered(limit)
        .collect()
        .await;
    for (item, result) in results {
        match result {
            Ok(Step::Done(outcome)) => {
                inner.queue.complete(&item)?;
                inner.metrics.writeback_done();
                tracing::info!(digest = %item.digest, namespace = %item.namespace,
                    ?outcome, attempts = item.attempts, "written back");
            }
            Ok(Step::Orphan) => {
                inner.queue.complete(&item)?;
            }
            Ok(Step::Arriving) => {
                // Backoff without alarm: the upload is still being received or committed.
                inner
                    .queue
                    .fail(&item, SystemTime::now(), "upload still arriving")?;
            }
            Err(e) => {
                let message = e.to_string();
                let now = SystemTime::now();
                let next = inner.queue.fail(&item, now, &message)?;
                inner.metrics.writeback_failed();
                tracing::warn!(digest = %item.digest, namespace = %item.namespace,
                    error = %message, attempts = item.attempts + 1,
                    retry_in_ms = next.duration_since(now).map_or(0, |d| d.as_millis()),
                    "write-back failed; will retry");
            }
        }
    }
    Ok(n)
}

/// What one attempt at an item came to.
enum Step {
    /// Uploaded, or the backend had it.
    Done(UploadOutcome),
    /// The upload behind the item never completed: drop it.
    Orphan,
    /// The upload is still arriving (or waits for a resume): later.
    Arriving,
}

/// Uploads one item.
async fn write_back(origin: &Origin, item: &WriteBackItem) -> Result<Step, WriteBackError> {
    let inner = &origin.inner;
    if !inner.cas.contains(&item.digest)? {
        if origin.has_staged(&item.digest) || origin.is_uploading(&item.digest) {
            return Ok(Step::Arriving);
        }
        tracing::warn!(digest = %item.digest, "dropping a write-back whose upload never completed");
        return Ok(Step::Orphan);
    }
    let backend = inner.router.route(&item.namespace)?;
    let outcome = upload_blob(backend, &inner.cas, &item.digest).await?;
    inner.cas.set_persisted(&item.digest, true)?;
    inner.cas.set_pinned(&item.digest, false)?;
    Ok(Step::Done(outcome))
}
