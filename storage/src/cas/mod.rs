//! The local content-addressed store: blobs as files, metadata in redb.
//!
//! Layout under the configured root:
//! - `blobs/<2 hex>/<hex>`: complete, verified blobs (immutable once there);
//! - `partial/<hex>`: sparse files of downloads in progress, pieces written at their offsets;
//! - `tmp/`: ingest temp files, emptied at every open;
//! - `quarantine/`: corrupt copies an origin's scrubber set aside, within a byte budget
//!   ([`scrub`]);
//! - `meta.redb`: records ([`BlobInfo`]), metainfo, and bitfields of partial blobs.
//!
//! Invariants, which the startup sweep restores after a crash:
//! - a blob is readable only if its record says `Complete` and its file has the recorded
//!   size. Files land by write-temp, fsync, rename, fsync the directory, and only then is
//!   the record committed; a crash in between leaves a file without a record, which the
//!   sweep deletes;
//! - a partial blob's persisted bitfield lists only pieces whose bytes were fsynced first.
//!
//! Modules: [`config`] (quota and eviction settings), `error`, `meta` (redb tables),
//! `ingest` (verified streaming ingest), [`partial`] (piece-by-piece downloads),
//! [`piece_writer`] (a piece streamed into place while hashed, with direct I/O),
//! [`reader`] (whole, ranged and per-piece reads), `evict` (the eviction planner),
//! `purge` (deleting a blob on purpose, guarded by its last use), [`scrub`] (re-verifying
//! a stored blob, and quarantining a corrupt one).
//!
//! The API is synchronous (std files, redb); async callers run it on a blocking pool.
//! Lock order: the in-memory state mutex may be taken before a redb write transaction,
//! never after one is open.

pub mod config;
mod error;
mod evict;
mod ingest;
mod meta;
pub mod partial;
pub mod piece_writer;
mod purge;
pub mod reader;
pub mod scrub;
pub mod space;
mod staging;
#[cfg(test)]
mod test_blobs;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use redb::ReadableTable;

pub use config::CasConfig;
pub use error::CasError;
pub use ingest::Ingested;
pub use meta::{BlobInfo, BlobState};
pub use partial::{FlushJob, PartialBlob, PieceSource};
pub use piece_writer::{PieceWriter, VerifiedPiece};
pub use purge::PurgeOutcome;
pub use reader::BlobReader;
pub use scrub::{Corruption, Quarantined, Verdict, Verifier};
pub use space::SpaceStatus;
pub use staging::StagedBlob;

use crate::buffers::BufferPool;
use crate::digest::Digest;
use crate::metainfo::Metainfo;
use crate::redb_handle::ReopeningDb;
use meta::{BITFIELDS, BLOBS, BlobRecord, METAINFO, to_ms};

/// Unused buffers a store keeps for its next piece reads and piece writers: eight 4 MiB
/// pieces, about what one connection's send window holds, so a seeder's steady stream of
/// reads and a leecher's of writes reuse memory instead of faulting in new pages.
const BUFFER_BUDGET: usize = 32 << 20;

/// The local store. Cheap to clone; all clones share one database and quota.
#[derive(Clone)]
pub struct Cas {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: CasConfig,
    db: ReopeningDb,
    blobs_dir: PathBuf,
    partial_dir: PathBuf,
    tmp_dir: PathBuf,
    state: Mutex<State>,
    sweep: SweepReport,
    /// Memory reused by piece reads and piece writers (see [`crate::buffers`]).
    buffers: BufferPool,
}

/// Bookkeeping that lives only in memory.
#[derive(Default)]
struct State {
    /// Bytes of complete and partial blobs on disk.
    used: u64,
    /// Bytes promised to ingests and partial downloads in flight.
    reserved: u64,
    /// Open readers per blob; such blobs are not evicted or deleted.
    readers: HashMap<Digest, usize>,
    /// Partial blobs with an open writer.
    writers: HashSet<Digest>,
    /// Last-access times not yet written to redb (written on eviction and on drop).
    access: BTreeMap<Digest, u64>,
    /// Purged blobs whose record is gone but whose file open readers still use: the file
    /// (this many bytes) goes when the last reader does.
    doomed: HashMap<Digest, u64>,
    /// The effective quota and the disk-full marks (see [`space`]).
    space: space::SpaceState,
}

/// What the startup sweep cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Leftover ingest temp files deleted.
    pub temp_files: usize,
    /// Blob or partial files with no record (crash before the record commit) deleted.
    pub orphan_files: usize,
    /// Records whose file was missing or the wrong size, deleted.
    pub dangling_records: usize,
}

/// What [`Cas::evict`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvictionReport {
    /// Blobs removed, in eviction order.
    pub evicted: Vec<Digest>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Whether the store was above its high-water mark.
    pub aggressive: bool,
}

impl Cas {
    /// Opens (or creates) the store at `config.root`, sweeping what a crash left behind.
    pub fn open(config: CasConfig) -> Result<Cas, CasError> {
        config.validate()?;
        let root = config.root.clone();
        let blobs_dir = root.join("blobs");
        let partial_dir = root.join("partial");
        let tmp_dir = root.join("tmp");
        for dir in [&root, &blobs_dir, &partial_dir, &tmp_dir] {
            fs::create_dir_all(dir).map_err(CasError::io("create directory", dir))?;
        }
        let db_path = root.join("meta.redb");
        let db = ReopeningDb::create(&db_path, "cas metadata")?;
        {
            let txn = db.begin_write()?;
            txn.open_table(BLOBS)?;
            txn.open_table(METAINFO)?;
            txn.open_table(BITFIELDS)?;
            txn.commit()?;
        }
        let mut inner = Inner {
            config,
            db,
            blobs_dir,
            partial_dir,
            tmp_dir,
            state: Mutex::new(State::default()),
            sweep: SweepReport::default(),
            buffers: BufferPool::new(BUFFER_BUDGET),
        };
        let (sweep, used) = inner.sweep()?;
        inner.sweep = sweep;
        {
            let mut state = inner.lock();
            state.used = used;
            inner.refresh_space(&mut state, std::time::Duration::ZERO);
        }
        if inner.sweep != SweepReport::default() {
            tracing::warn!(root = %root.display(), report = ?inner.sweep, "cas: cleaned up after an unclean shutdown");
        }
        Ok(Cas {
            inner: Arc::new(inner),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &CasConfig {
        &self.inner.config
    }

    /// What the startup sweep found.
    pub fn startup_sweep(&self) -> &SweepReport {
        &self.inner.sweep
    }

    /// Bytes used by complete and partial blobs.
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().used
    }

    /// Where a complete blob's file lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blob_path(digest)
    }

    /// Metadata of a blob, partial or complete.
    pub fn info(&self, digest: &Digest) -> Result<Option<BlobInfo>, CasError> {
        let record = self.inner.record(digest)?;
        let pending = self.inner.lock().access.get(digest).copied();
        Ok(record.map(|mut r| {
            if let Some(ms) = pending {
                r.last_access_ms = r.last_access_ms.max(ms);
            }
            r.info(*digest)
        }))
    }

    /// True if a complete blob is present.
    pub fn contains(&self, digest: &Digest) -> Result<bool, CasError> {
        Ok(self
            .inner
            .record(digest)?
            .is_some_and(|r| r.state == BlobState::Complete))
    }

    /// The metainfo of a blob, partial or complete.
    pub fn metainfo(&self, digest: &Digest) -> Result<Option<Metainfo>, CasError> {
        self.inner.metainfo(digest)
    }

    /// Every blob, ordered by digest.
    pub fn list(&self) -> Result<Vec<BlobInfo>, CasError> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let (digest, record) = decode_entry(k.value(), v.value())?;
            out.push(record.info(digest));
        }
        Ok(out)
    }

    /// Up to `limit` blobs whose digest string sorts after `after`, ordered by digest, with
    /// last-access times not yet flushed included: a page of an inventory (garbage
    /// collection lists an origin's store with it).
    pub fn list_page(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<BlobInfo>, CasError> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        let start = after.map(Digest::to_string);
        let range = match &start {
            Some(key) => table.range::<&str>((
                std::ops::Bound::Excluded(key.as_str()),
                std::ops::Bound::Unbounded,
            ))?,
            None => table.range::<&str>(..)?,
        };
        let mut out = Vec::new();
        for item in range.take(limit) {
            let (k, v) = item?;
            let (digest, record) = decode_entry(k.value(), v.value())?;
            out.push(record.info(digest));
        }
        let pending = &self.inner.lock().access;
        for info in &mut out {
            if let Some(ms) = pending.get(&info.digest) {
                info.last_access = info.last_access.max(meta::from_ms(*ms));
            }
        }
        Ok(out)
    }

    /// Pins or unpins a blob; pinned blobs are never evicted or deleted.
    pub fn set_pinned(&self, digest: &Digest, pinned: bool) -> Result<(), CasError> {
        self.inner.update_record(digest, |r| r.pinned = pinned)
    }

    /// Records whether the blob is safely in its backend.
    pub fn set_persisted(&self, digest: &Digest, persisted: bool) -> Result<(), CasError> {
        self.inner
            .update_record(digest, |r| r.persisted = persisted)
    }

    /// Deletes a blob (complete or partial). Fails if it is pinned or in use.
    pub fn delete(&self, digest: &Digest) -> Result<(), CasError> {
        let mut state = self.inner.lock();
        if state.readers.contains_key(digest) || state.writers.contains(digest) {
            return Err(CasError::Busy(*digest));
        }
        let record = self
            .inner
            .record(digest)?
            .ok_or(CasError::NotFound(*digest))?;
        if record.pinned {
            return Err(CasError::Pinned(*digest));
        }
        self.inner.remove(&mut state, &[(*digest, record)])?;
        Ok(())
    }

    /// Opens a complete blob for reading, as a use of it (which eviction and a purge
    /// guarded by the last use weigh). The blob cannot be evicted while the reader lives.
    pub fn reader(&self, digest: &Digest) -> Result<BlobReader, CasError> {
        BlobReader::open(self.clone(), *digest, true)
    }

    /// Like [`Cas::reader`], but not a use: for the node's own work on the blob (a copy to
    /// another owner or to a backend, a scrub). Such work must not make a blob look wanted,
    /// or a scrub walk or an anti-entropy copy would keep it from eviction and from a
    /// guarded purge.
    pub fn housekeeping_reader(&self, digest: &Digest) -> Result<BlobReader, CasError> {
        BlobReader::open(self.clone(), *digest, false)
    }

    /// Runs the eviction policy now.
    pub fn evict(&self) -> Result<EvictionReport, CasError> {
        self.evict_at(SystemTime::now())
    }

    /// Runs the eviction policy as if the time were `now` (tests, simulations).
    pub fn evict_at(&self, now: SystemTime) -> Result<EvictionReport, CasError> {
        let mut state = self.inner.lock();
        self.inner
            .refresh_space(&mut state, std::time::Duration::ZERO);
        self.inner.evict_locked(&mut state, 0, to_ms(now))
    }

    /// Writes pending last-access times to the database.
    pub fn flush_access_times(&self) -> Result<(), CasError> {
        let mut state = self.inner.lock();
        self.inner.flush_access_locked(&mut state)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The buffers piece reads and piece writers of this store reuse.
    pub(crate) fn buffers(&self) -> &BufferPool {
        &self.inner.buffers
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        // The file is named by the hex alone, as before sha512 came, so existing stores
        // open unchanged; a sha512 name (128 characters) can never equal a sha256 one (64).
        let hex = digest.hex();
        self.blobs_dir.join(&hex[..2]).join(hex)
    }

    fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.partial_dir.join(digest.hex())
    }

    fn record(&self, digest: &Digest) -> Result<Option<BlobRecord>, CasError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        let key = digest.to_string();
        match table.get(key.as_str())? {
            None => Ok(None),
            Some(v) => BlobRecord::decode(v.value())
                .map(Some)
                .ok_or(CasError::CorruptRecord(key)),
        }
    }

    fn metainfo(&self, digest: &Digest) -> Result<Option<Metainfo>, CasError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(METAINFO)?;
        match table.get(digest.to_string().as_str())? {
            None => Ok(None),
            Some(v) => Ok(Some(Metainfo::decode(v.value())?)),
        }
    }

    fn update_record(
        &self,
        digest: &Digest,
        f: impl FnOnce(&mut BlobRecord),
    ) -> Result<(), CasError> {
        // Under the state lock: an eviction planned from a snapshot must not miss a pin.
        let _state = self.lock();
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(BLOBS)?;
            let key = digest.to_string();
            let mut record = match table.get(key.as_str())? {
                None => return Err(CasError::NotFound(*digest)),
                Some(v) => {
                    BlobRecord::decode(v.value()).ok_or(CasError::CorruptRecord(key.clone()))?
                }
            };
            f(&mut record);
            table.insert(key.as_str(), record.encode().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn touch(&self, digest: &Digest) {
        self.lock().access.insert(*digest, to_ms(SystemTime::now()));
    }

    /// Reserves `need` bytes, evicting if the quota requires it.
    fn reserve(&self, need: u64) -> Result<Reservation<'_>, CasError> {
        let mut state = self.lock();
        self.reserve_locked(&mut state, need)?;
        Ok(Reservation {
            inner: self,
            bytes: need,
        })
    }

    /// Like [`Inner::reserve`] for callers that already hold the lock; the caller must
    /// release the bytes (or turn them into `used`) itself.
    fn reserve_locked(&self, state: &mut State, need: u64) -> Result<(), CasError> {
        self.refresh_space(state, space::REFRESH_EVERY);
        let capacity = self.capacity(state);
        // `need` may come from an untrusted Content-Length: no unchecked arithmetic on it.
        let taken = state.used.saturating_add(state.reserved);
        if need <= capacity && taken.saturating_add(need) > capacity {
            let in_flight = state.reserved;
            self.evict_locked(
                state,
                need.saturating_add(in_flight),
                to_ms(SystemTime::now()),
            )?;
        }
        let taken = state.used.saturating_add(state.reserved);
        if taken.saturating_add(need) > capacity {
            return Err(CasError::NoSpace {
                needed: need,
                available: capacity.saturating_sub(taken),
                capacity,
            });
        }
        state.reserved += need;
        Ok(())
    }

    /// The most one new blob could get, evicting everything evictable: an upper bound for
    /// streams of unknown length.
    fn max_new_blob(&self) -> u64 {
        let mut state = self.lock();
        self.refresh_space(&mut state, space::REFRESH_EVERY);
        self.capacity(&state).saturating_sub(state.reserved)
    }

    fn evict_locked(
        &self,
        state: &mut State,
        need: u64,
        now_ms: u64,
    ) -> Result<EvictionReport, CasError> {
        self.flush_access_locked(state)?;
        let mut cands = Vec::new();
        let mut records = Vec::new();
        {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(BLOBS)?;
            for item in table.iter()? {
                let (k, v) = item?;
                let (digest, record) = decode_entry(k.value(), v.value())?;
                cands.push(evict::Candidate {
                    digest,
                    size: record.size,
                    created_ms: record.created_ms,
                    last_access_ms: record.last_access_ms,
                    evictable: !record.pinned
                        && !state.readers.contains_key(&digest)
                        && !state.writers.contains(&digest),
                });
                records.push((digest, record));
            }
        }
        let c = &self.config;
        let policy = evict::Policy {
            capacity: self.capacity(state),
            tti: c.tti,
            ttl: c.ttl,
            high_water: c.high_water,
            low_water: c.low_water,
            aggressive_tti: c.aggressive_tti,
        };
        let plan = evict::plan(&cands, state.used, need, &policy, now_ms);
        let victims: Vec<_> = plan.evict.iter().map(|&i| records[i].clone()).collect();
        let freed_bytes = self.remove(state, &victims)?;
        if !victims.is_empty() {
            tracing::info!(
                count = victims.len(),
                freed_bytes,
                aggressive = plan.aggressive,
                "cas: evicted blobs"
            );
        }
        Ok(EvictionReport {
            evicted: victims.into_iter().map(|(d, _)| d).collect(),
            freed_bytes,
            aggressive: plan.aggressive,
        })
    }

    /// Removes records first, then files: a crash in between leaves orphan files, which the
    /// sweep deletes, never a record pointing at nothing. On a full disk the files are
    /// emptied and go first, so the metadata write finds room (see [`Inner::begin_write`]);
    /// a crash in between then leaves records without files, which the sweep deletes too.
    fn remove(&self, state: &mut State, victims: &[(Digest, BlobRecord)]) -> Result<u64, CasError> {
        if victims.is_empty() {
            return Ok(0);
        }
        let path_of = |digest: &Digest, record: &BlobRecord| match record.state {
            BlobState::Complete => self.blob_path(digest),
            BlobState::Partial => self.partial_path(digest),
        };
        if !self.metadata_headroom() {
            for (digest, record) in victims {
                // Emptied first: an unlinked file keeps its blocks while any handle on it
                // is open (a download's piece sources), and nobody reads a victim.
                let path = path_of(digest, record);
                let _ = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(0));
                let _ = fs::remove_file(&path);
            }
        }
        let txn = self.begin_write()?;
        {
            let mut blobs = txn.open_table(BLOBS)?;
            let mut metainfo = txn.open_table(METAINFO)?;
            let mut bitfields = txn.open_table(BITFIELDS)?;
            for (digest, _) in victims {
                let key = digest.to_string();
                blobs.remove(key.as_str())?;
                metainfo.remove(key.as_str())?;
                bitfields.remove(key.as_str())?;
            }
        }
        txn.commit()?;
        let mut freed = 0;
        for (digest, record) in victims {
            let path = path_of(digest, record);
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                // The record is gone, so the sweep will delete the file at the next open.
                tracing::warn!(path = %path.display(), error = %e, "cas: could not delete evicted file");
            }
            state.access.remove(digest);
            state.used = state.used.saturating_sub(record.size);
            freed += record.size;
        }
        Ok(freed)
    }

    fn flush_access_locked(&self, state: &mut State) -> Result<(), CasError> {
        if state.access.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(BLOBS)?;
            for (digest, ms) in &state.access {
                let key = digest.to_string();
                let Some(mut record) = table
                    .get(key.as_str())?
                    .and_then(|v| BlobRecord::decode(v.value()))
                else {
                    continue;
                };
                record.last_access_ms = record.last_access_ms.max(*ms);
                table.insert(key.as_str(), record.encode().as_slice())?;
            }
        }
        txn.commit()?;
        state.access.clear();
        Ok(())
    }

    /// Deletes temp files, orphan files and dangling records; returns bytes in use.
    fn sweep(&self) -> Result<(SweepReport, u64), CasError> {
        let mut report = SweepReport::default();
        for entry in read_dir(&self.tmp_dir)? {
            remove_path(&entry)?;
            report.temp_files += 1;
        }

        let mut used = 0;
        let mut known_blobs = HashSet::new();
        let mut known_partials = HashSet::new();
        let mut dangling = Vec::new();
        {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(BLOBS)?;
            for item in table.iter()? {
                let (k, v) = item?;
                let key = k.value().to_string();
                let Some((digest, record)) = decode_entry(&key, v.value()).ok() else {
                    dangling.push(key);
                    continue;
                };
                let path = match record.state {
                    BlobState::Complete => self.blob_path(&digest),
                    BlobState::Partial => self.partial_path(&digest),
                };
                match fs::metadata(&path) {
                    Ok(m) if m.len() == record.size => {
                        used += record.size;
                        match record.state {
                            BlobState::Complete => known_blobs.insert(path),
                            BlobState::Partial => known_partials.insert(path),
                        };
                    }
                    _ => dangling.push(key),
                }
            }
        }
        if !dangling.is_empty() {
            let txn = self.begin_write()?;
            {
                let mut blobs = txn.open_table(BLOBS)?;
                let mut metainfo = txn.open_table(METAINFO)?;
                let mut bitfields = txn.open_table(BITFIELDS)?;
                for key in &dangling {
                    blobs.remove(key.as_str())?;
                    metainfo.remove(key.as_str())?;
                    bitfields.remove(key.as_str())?;
                }
            }
            txn.commit()?;
            report.dangling_records = dangling.len();
        }

        for shard in read_dir(&self.blobs_dir)? {
            if !shard.is_dir() {
                remove_path(&shard)?;
                report.orphan_files += 1;
                continue;
            }
            for file in read_dir(&shard)? {
                if !known_blobs.contains(&file) {
                    remove_path(&file)?;
                    report.orphan_files += 1;
                }
            }
        }
        for file in read_dir(&self.partial_dir)? {
            if !known_partials.contains(&file) {
                remove_path(&file)?;
                report.orphan_files += 1;
            }
        }
        Ok((report, used))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut state = std::mem::take(&mut *self.lock());
        if let Err(e) = self.flush_access_locked(&mut state) {
            tracing::warn!(error = %e, "cas: could not persist access times on close");
        }
    }
}

/// Space promised to a write in flight; returned to the pool when dropped.
struct Reservation<'a> {
    inner: &'a Inner,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.reserved = state.reserved.saturating_sub(self.bytes);
    }
}

fn decode_entry(key: &str, value: &[u8]) -> Result<(Digest, BlobRecord), CasError> {
    let digest = key
        .parse()
        .map_err(|_| CasError::CorruptRecord(key.to_string()))?;
    let record =
        BlobRecord::decode(value).ok_or_else(|| CasError::CorruptRecord(key.to_string()))?;
    Ok((digest, record))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, CasError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(CasError::io("list", dir))? {
        out.push(entry.map_err(CasError::io("list", dir))?.path());
    }
    Ok(out)
}

fn remove_path(path: &Path) -> Result<(), CasError> {
    let r = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(CasError::io("remove", path))
}

/// Makes a rename or unlink in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CasError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(CasError::io("sync directory", dir))
}
