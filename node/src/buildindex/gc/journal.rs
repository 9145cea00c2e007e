//! The durable plan of a garbage collection run (`gc.redb` in the build-index's data
//! directory): written whole before the sweep deletes anything, each entry marked when its
//! purge ends, cleared when every entry has ended. A run that stopped part-way (crash,
//! kill -9, an origin down) leaves its plan here, and the next run resumes it.

use std::path::Path;

use kraken_storage::Digest;
use kraken_storage::redb_handle::ReopeningDb;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// The run the plan belongs to, under [`RUN_KEY`].
const RUN: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("gc_run");
/// Planned blobs: digest → postcard [`Entry`].
const PLAN: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("gc_plan");
const RUN_KEY: &str = "current";

/// Why the journal failed: the build-index's database error.
pub use crate::buildindex::store::StoreError as JournalError;

/// What a run decided before sweeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run.
    pub run_id: u64,
    /// Its purge guard: blobs used at or after this time are kept.
    pub cutoff_ms: u64,
    /// Tags read.
    pub roots: u64,
    /// Digests marked.
    pub marked: u64,
    /// Unmarked blobs kept as recently used.
    pub kept_recent: u64,
}

/// Where one planned blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryState {
    /// Not purged yet (or its purge failed).
    Pending,
    /// Purged.
    Purged,
    /// An origin kept it (used after the cutoff).
    Kept,
}

/// One planned blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its length.
    pub length: u64,
    /// Where it is.
    pub state: EntryState,
}

/// A stored run and its entries, ordered by digest.
pub type StoredPlan = (RunRecord, Vec<(Digest, Entry)>);

/// The plan table.
pub struct Journal {
    /// Reopens itself after a commit failed on a full disk (see
    /// `kraken_storage::redb_handle`).
    db: ReopeningDb,
}

impl Journal {
    /// Opens or creates the journal at `path`.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let db = ReopeningDb::create(path, "gc journal")?;
        let txn = db.begin_write()?;
        txn.open_table(RUN)?;
        txn.open_table(PLAN)?;
        txn.commit()?;
        Ok(Journal { db })
    }

    /// Stores a run's whole plan (replacing any other), durably, in one transaction.
    pub fn store(&self, run: &RunRecord, sweep: &[(Digest, u64)]) -> Result<(), JournalError> {
        let txn = self.db.begin_write()?;
        {
            let mut plan = txn.open_table(PLAN)?;
            plan.retain(|_, _| false)?;
            for (digest, length) in sweep {
                let entry = Entry {
                    length: *length,
                    state: EntryState::Pending,
                };
                let bytes = postcard::to_allocvec(&entry).unwrap_or_default();
                plan.insert(digest.to_string().as_str(), bytes.as_slice())?;
            }
            let bytes = postcard::to_allocvec(run).unwrap_or_default();
            txn.open_table(RUN)?.insert(RUN_KEY, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The stored run and its plan, ordered by digest, if a run left one.
    pub fn load(&self) -> Result<Option<StoredPlan>, JournalError> {
        let txn = self.db.begin_read()?;
        let Some(run) = txn.open_table(RUN)?.get(RUN_KEY)? else {
            return Ok(None);
        };
        let run: RunRecord =
            postcard::from_bytes(run.value()).map_err(|_| JournalError::Corrupt(RUN_KEY.into()))?;
        let mut entries = Vec::new();
        for item in txn.open_table(PLAN)?.iter()? {
            let (k, v) = item?;
            let corrupt = || JournalError::Corrupt(k.value().to_string());
            let digest: Digest = k.value().parse().map_err(|_| corrupt())?;
            let entry: Entry = postcard::from_bytes(v.value()).map_err(|_| corrupt())?;
            entries.push((digest, entry));
        }
        Ok(Some((run, entries)))
    }

    /// Records where one planned blob is, durably.
    pub fn set(&self, digest: &Digest, entry: Entry) -> Result<(), JournalError> {
        let txn = self.db.begin_write()?;
        {
            let bytes = postcard::to_allocvec(&entry).unwrap_or_default();
            txn.open_table(PLAN)?
                .insert(digest.to_string().as_str(), bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Forgets the run: every entry ended.
    pub fn clear(&self) -> Result<(), JournalError> {
        let txn = self.db.begin_write()?;
        txn.open_table(PLAN)?.retain(|_, _| false)?;
        txn.open_table(RUN)?.remove(RUN_KEY)?;
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_survives_reopening_with_each_entrys_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gc.redb");
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let run = RunRecord {
            run_id: 7,
            cutoff_ms: 100,
            roots: 1,
            marked: 2,
            kept_recent: 0,
        };
        {
            let j = Journal::open(&path).unwrap();
            assert!(j.load().unwrap().is_none());
            j.store(&run, &[(a, 1), (b, 2)]).unwrap();
            j.set(
                &a,
                Entry {
                    length: 1,
                    state: EntryState::Purged,
                },
            )
            .unwrap();
        }
        let j = Journal::open(&path).unwrap();
        let (got, entries) = j.load().unwrap().unwrap();
        assert_eq!(got, run);
        let states: Vec<_> = entries.iter().map(|(d, e)| (*d, e.state)).collect();
        let mut want = vec![(a, EntryState::Purged), (b, EntryState::Pending)];
        want.sort_by_key(|(d, _)| d.to_string());
        assert_eq!(states, want);
        j.clear().unwrap();
        assert!(j.load().unwrap().is_none());
    }
}
