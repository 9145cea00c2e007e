//! The messages of deletion and garbage collection: the stages of a purge, an origin's
//! inventory entries, and a collection's report.

use kraken_storage::Digest;
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::Request;

/// The stages of a purge (see `kraken_node::purge`). The purge asks every origin for
/// [`PurgeStage::Store`] first and goes on to [`PurgeStage::Backends`] only when none kept
/// its copy, so a backend never loses a blob an origin still means to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurgeStage {
    /// Remove the origin's own copy (its store), unless the guard keeps it.
    Store,
    /// Remove the blob from every writable backend of the origin's routes (read-only
    /// mirrors of registries are skipped). An origin that holds a copy again (a push
    /// came in since the first stage) keeps the backends' and answers kept.
    Backends,
}

/// The key whose build-index owner runs garbage collection (one run cluster-wide).
pub const GC_KEY: &str = "kraken:gc";

/// One blob of an origin's store, as [`Request::ListBlobs`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    /// The blob.
    pub digest: Digest,
    /// Its length.
    pub length: u64,
    /// When it was last read or written, ms since the epoch.
    pub last_used_ms: u64,
    /// The `subject` it names, if it is a manifest with one (a referrer): read by the
    /// origin from its file, so listing does not count as a use.
    pub subject: Option<Digest>,
}

/// Where a garbage collection run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcPhase {
    /// Listing tags and following manifests.
    Marking,
    /// Listing what origins and backends hold.
    Inventory,
    /// Purging the planned blobs.
    Sweeping,
    /// Ended: every planned blob was purged or kept (or it was a dry run).
    Done,
    /// Ended with errors: the plan is kept and the next run resumes it.
    Interrupted,
}

/// A garbage collection run's report (also its progress while it runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// The run (ms since the epoch when it started, unique on its node).
    pub run_id: u64,
    /// Nothing was deleted and no plan was stored.
    pub dry_run: bool,
    /// This run resumed a plan an earlier run had stored.
    pub resumed: bool,
    /// Where it is.
    pub phase: GcPhase,
    /// Blobs not used since this time (ms since the epoch) may go: start minus grace.
    pub cutoff_ms: u64,
    /// Tags read (roots).
    pub roots: u64,
    /// Digests reachable from a tag.
    pub marked: u64,
    /// Unreachable blobs kept because they were used after the cutoff.
    pub kept_recent: u64,
    /// Unreachable blobs to delete (or deleted), with their lengths, ordered by digest: the
    /// first [`GcReport::LIST_LIMIT`] (an answer is one frame).
    pub planned: Vec<(Digest, u64)>,
    /// How many blobs the plan holds.
    pub planned_count: u64,
    /// Their bytes (each blob's length once).
    pub planned_bytes: u64,
    /// Planned blobs purged so far.
    pub purged: u64,
    /// Bytes those freed (the largest known copy of each).
    pub freed_bytes: u64,
    /// Planned blobs an origin kept at sweep time (used after the cutoff: a push raced).
    pub kept_at_sweep: u64,
    /// What went wrong (a node down, a manifest unreadable): the first
    /// [`GcReport::LIST_LIMIT`].
    pub errors: Vec<String>,
    /// How many things went wrong.
    pub error_count: u64,
}

impl GcReport {
    /// Most planned digests and errors one report lists (the counts cover them all).
    pub const LIST_LIMIT: usize = 1000;

    /// The report of run `run_id` at its start: in `phase`, keeping what was used at or
    /// after `cutoff_ms`, nothing counted yet.
    pub fn new(run_id: u64, dry_run: bool, phase: GcPhase, cutoff_ms: u64) -> Self {
        GcReport {
            run_id,
            dry_run,
            resumed: false,
            phase,
            cutoff_ms,
            roots: 0,
            marked: 0,
            kept_recent: 0,
            planned: Vec::new(),
            planned_count: 0,
            planned_bytes: 0,
            purged: 0,
            freed_bytes: 0,
            kept_at_sweep: 0,
            errors: Vec::new(),
            error_count: 0,
        }
    }

    /// Records the plan: its size, and the first [`Self::LIST_LIMIT`] entries.
    pub fn set_planned(&mut self, all: &[(Digest, u64)]) {
        self.planned_count = all.len() as u64;
        self.planned_bytes = all.iter().map(|(_, n)| n).sum();
        self.planned = all.iter().take(Self::LIST_LIMIT).copied().collect();
    }

    /// Records an error.
    pub fn add_error(&mut self, error: String) {
        self.error_count += 1;
        if self.errors.len() < Self::LIST_LIMIT {
            self.errors.push(error);
        }
    }
}

/// What an origin did in one [`Request::PurgeBlob`] stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    /// The origin keeps its copy: written or used at this time (ms since the epoch), at or
    /// after the guard (or, in the backends stage, a copy came back since the first).
    pub kept_ms: Option<u64>,
    /// Bytes removed from the origin's store.
    pub freed_bytes: u64,
    /// Backends the blob was removed from (by name), in the backends stage.
    pub backends: Vec<String>,
}
