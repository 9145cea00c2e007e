//! What goes wrong: [`ExchangeError`] for the exchange's callers, and [`StopReason`], why a
//! blob task stopped, which every watcher of the blob is told.

use std::sync::Arc;

use kraken_storage::cas::CasError;
use kraken_storage::{Digest, PieceError, PieceIndex};
use tokio::task::JoinError;

use crate::swarm::SwarmStats;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The local store failed.
    #[error(transparent)]
    Cas(#[from] CasError),
    /// The blob's task stopped before the blob was complete.
    #[error("download of {digest} stopped: {reason}")]
    Stopped {
        /// The blob.
        digest: Digest,
        /// Why.
        #[source]
        reason: StopReason,
    },
    /// No such blob to seed.
    #[error("blob {0} is not in the local store")]
    NotFound(Digest),
    /// Bad swarm settings.
    #[error(transparent)]
    Config(#[from] crate::swarm::SwarmConfigError),
    /// A read on the blocking pool panicked or was cancelled (the runtime shutting down).
    #[error("blocking read failed: {0}")]
    Join(#[from] JoinError),
}

/// Why a blob task stopped before its blob was complete. Every watcher of the blob gets a
/// copy, so it clones: the sources that do not are shared behind an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StopReason {
    /// The exchange was closed (the node is shutting down); a partial download stays
    /// resumable.
    #[error("the exchange was closed")]
    Closed,
    /// A piece matched its BLAKE3 hash but broke the hash chain of the blob's digest:
    /// the metainfo does not describe the blob, and no peer can help.
    #[error("the metainfo does not describe the blob: {0}")]
    Metainfo(#[source] PieceError),
    /// Saving the download's progress (an fsync, then the bitfield) failed.
    #[error("saving the download's progress: {0}")]
    Flush(#[source] Arc<CasError>),
    /// Completing the blob in the store (flush, verify, rename) failed.
    #[error("commit failed: {0}")]
    Commit(#[source] Arc<CasError>),
    /// A flush or the commit, run on the blocking pool, panicked or was cancelled (the
    /// runtime shutting down).
    #[error("the {work} task failed: {source}")]
    Blocking {
        /// `"flush"` or `"commit"`.
        work: &'static str,
        /// The pool's report.
        source: Arc<JoinError>,
    },
    /// The task went away without saying why.
    #[error("the blob task ended")]
    Ended,
    /// The blob was deleted from the cluster ([`super::PieceExchange::stop`]).
    #[error("the blob was deleted")]
    Deleted,
    /// The task ended, leaving the piece a watcher waited for missing.
    #[error("the blob task ended before {0} arrived")]
    EndedBefore(PieceIndex),
    /// Writing a piece to the local store failed (the disk is full, an I/O error). A
    /// download stopped by a full disk is discarded, so its space is free again.
    #[error("writing to the local store: {0}")]
    Storage(#[source] Arc<CasError>),
    /// The blob was complete and only seeding; its swarm was stopped to free space in the
    /// store for a new download ([`super::PieceExchange::release_seeders`]).
    #[error("seeding stopped to free space in the store")]
    Released,
}

impl StopReason {
    /// True if the local disk filled up (or its quota was spent): the download was
    /// discarded, and retrying before space is freed cannot help.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StopReason::Storage(e) | StopReason::Flush(e) | StopReason::Commit(e) => {
                e.is_disk_full()
            }
            _ => false,
        }
    }

    /// A flush or commit that did not run to its end on the blocking pool.
    pub(super) fn blocking(work: &'static str, e: JoinError) -> Self {
        StopReason::Blocking {
            work,
            source: Arc::new(e),
        }
    }
}

/// What a blob task has reported so far: `None` while it runs, then the swarm's totals
/// once the blob is complete and committed, or the reason it stopped.
pub type DoneState = Option<Result<SwarmStats, StopReason>>;
