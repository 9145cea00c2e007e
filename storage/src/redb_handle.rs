//! A long-lived redb database that reopens itself after an I/O error poisoned it.
//!
//! redb latches the first failed write (a commit on a full disk, say): from then on every
//! transaction on that `Database` fails with `PreviousIo` ("Previous I/O error occurred.
//! Please close and re-open the database.") until it is closed and opened again. A node
//! that holds its database for its whole life would refuse every metadata operation until
//! restarted. [`ReopeningDb`] holds the database behind one accessor instead: when
//! beginning a transaction reports `PreviousIo`, it drops its handle and reopens the same
//! file (redb repairs it from the last durable commit), once per poisoned handle however
//! many callers saw the error, and begins the transaction again. Nothing had happened in
//! the failed attempt, so the retry is safe for reads and writes alike; the write whose
//! commit failed has already reported its own error to its caller.
//!
//! A reopen needs exclusive access to the file: it succeeds once the old handle and its
//! transactions are gone. If it fails (a transaction still open elsewhere, or the disk
//! still too full for the repair), the database is [`unavailable`](ReopeningDb::unavailable)
//! and the next transaction tries again. Reopens are counted ([`ReopeningDb::reopens`]) and
//! logged at most once per [`LOG_EVERY`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};

/// Longest quiet period between two log lines about reopening one database.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Whether a redb error is the latched "previous I/O error" that only a reopen clears.
pub trait PreviousIo {
    /// True for `PreviousIo`, however wrapped.
    fn is_previous_io(&self) -> bool;
}

impl PreviousIo for redb::StorageError {
    fn is_previous_io(&self) -> bool {
        matches!(self, redb::StorageError::PreviousIo)
    }
}

impl PreviousIo for redb::TransactionError {
    fn is_previous_io(&self) -> bool {
        matches!(self, redb::TransactionError::Storage(s) if s.is_previous_io())
    }
}

impl PreviousIo for redb::CommitError {
    fn is_previous_io(&self) -> bool {
        matches!(self, redb::CommitError::Storage(s) if s.is_previous_io())
    }
}

impl PreviousIo for redb::TableError {
    fn is_previous_io(&self) -> bool {
        matches!(self, redb::TableError::Storage(s) if s.is_previous_io())
    }
}

impl PreviousIo for redb::Error {
    fn is_previous_io(&self) -> bool {
        matches!(self, redb::Error::PreviousIo)
    }
}

/// A redb database that reopens itself after `PreviousIo` (see the module docs).
pub struct ReopeningDb {
    path: PathBuf,
    /// What the logs call it ("cas metadata", "write-back queue").
    name: &'static str,
    /// The handle and its generation; `None` while a reopen failed.
    current: RwLock<Slot>,
    reopens: AtomicU64,
    failed_reopens: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

struct Slot {
    generation: u64,
    db: Option<Arc<Database>>,
    /// Why the last reopen failed, while `db` is `None`.
    error: Option<String>,
}

impl ReopeningDb {
    /// Opens (or creates) the database at `path`.
    pub fn create(path: impl Into<PathBuf>, name: &'static str) -> Result<Self, redb::Error> {
        let path = path.into();
        let db = Database::create(&path)?;
        Ok(ReopeningDb {
            path,
            name,
            current: RwLock::new(Slot {
                generation: 0,
                db: Some(Arc::new(db)),
                error: None,
            }),
            reopens: AtomicU64::new(0),
            failed_reopens: AtomicU64::new(0),
            last_log: Mutex::new(None),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Times the database was reopened after `PreviousIo`.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }

    /// Reopens that failed (each is retried at the next transaction).
    pub fn failed_reopens(&self) -> u64 {
        self.failed_reopens.load(Ordering::Relaxed)
    }

    /// Why the database cannot be used now (its reopen failed); `None` when it can.
    pub fn unavailable(&self) -> Option<String> {
        let slot = self.current.read().unwrap_or_else(|e| e.into_inner());
        slot.db.is_none().then(|| {
            slot.error
                .clone()
                .unwrap_or_else(|| "the database is being reopened".into())
        })
    }

    /// Begins a read transaction, reopening the database first if it is poisoned.
    pub fn begin_read(&self) -> Result<ReadTransaction, redb::Error> {
        self.begin(|db| db.begin_read())
    }

    /// Begins a write transaction, reopening the database first if it is poisoned.
    pub fn begin_write(&self) -> Result<WriteTransaction, redb::Error> {
        self.begin(|db| db.begin_write())
    }

    /// Reopens the database if `e` says it is poisoned, so that the next transaction
    /// works; for callers that saw `PreviousIo` inside a transaction (opening a table,
    /// reading, committing). Returns whether it reopened.
    pub fn recover_from(&self, e: &impl PreviousIo) -> bool {
        if !e.is_previous_io() {
            return false;
        }
        let generation = self.lock_read().generation;
        self.reopen(generation).is_ok()
    }

    fn begin<T>(
        &self,
        f: impl Fn(&Database) -> Result<T, redb::TransactionError>,
    ) -> Result<T, redb::Error> {
        let (generation, db) = self.handle()?;
        match f(&db) {
            Err(e) if e.is_previous_io() => {
                // The reopen needs every handle gone, this one included.
                drop(db);
                let (_, db) = self.reopen(generation)?;
                Ok(f(&db)?)
            }
            other => Ok(other?),
        }
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, Slot> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The handle now, reopening first if the last reopen failed.
    fn handle(&self) -> Result<(u64, Arc<Database>), redb::Error> {
        let generation = {
            let slot = self.lock_read();
            if let Some(db) = &slot.db {
                return Ok((slot.generation, db.clone()));
            }
            slot.generation
        };
        self.reopen(generation)
    }

    /// Replaces the handle of `generation` by a freshly opened one; a caller that comes
    /// after another one reopened gets the new handle (one reopen per poisoned handle).
    fn reopen(&self, generation: u64) -> Result<(u64, Arc<Database>), redb::Error> {
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        if slot.generation != generation
            && let Some(db) = &slot.db
        {
            return Ok((slot.generation, db.clone()));
        }
        // Close ours; handles other callers still hold close when they drop them.
        drop(slot.db.take());
        slot.generation += 1;
        match Database::create(&self.path) {
            Ok(db) => {
                let db = Arc::new(db);
                slot.db = Some(db.clone());
                slot.error = None;
                let n = self.reopens.fetch_add(1, Ordering::Relaxed) + 1;
                if self.should_log() {
                    tracing::warn!(db = self.name, path = %self.path.display(), reopens = n,
                        "redb: reopened the database after an I/O error (a write failed, e.g. on a full disk)");
                }
                Ok((slot.generation, db))
            }
            Err(e) => {
                let e = redb::Error::from(e);
                slot.error = Some(format!(
                    "the {} database cannot be reopened: {e}",
                    self.name
                ));
                let n = self.failed_reopens.fetch_add(1, Ordering::Relaxed) + 1;
                if self.should_log() {
                    tracing::warn!(db = self.name, path = %self.path.display(), error = %e, failed = n,
                        "redb: could not reopen the database after an I/O error; retrying at the next transaction");
                }
                Err(e)
            }
        }
    }

    fn should_log(&self) -> bool {
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}
