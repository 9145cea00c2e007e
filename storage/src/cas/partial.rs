//! Partial blobs: downloads assembled piece by piece, in any order, across restarts.
//!
//! A partial blob is a sparse file of the final size under `partial/`, a metainfo and a
//! bitfield in redb. A piece counts only once BLAKE3-verified: `write_piece` checks it
//! before writing, a [`PieceWriter`] streams it into place and it is marked present only
//! after its hash matched. The bitfield is persisted every `flush_every_pieces` pieces,
//! after an fsync of the file, so it never claims bytes that a crash could lose: inline by
//! [`PartialBlob::mark_stored`], or by a [`FlushJob`] that a downloader which must not wait
//! on the disk runs on another thread. The digest is verified too (unless
//! `verify_digest_on_commit` is off): piece by piece as pieces are stored when the metainfo
//! carries chaining states ([`crate::chain`]), otherwise by re-hashing the whole
//! file at commit. Then the file is renamed into `blobs/`.
//!
//! Piece writers, and their direct I/O, are in [`super::piece_writer`].
//!
//! One writer per blob at a time: a second [`Cas::start_partial`] for the same digest gets
//! `CasError::Busy` until the first [`PartialBlob`] is dropped.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use redb::ReadableTable;

use super::meta::{BITFIELDS, BLOBS, BlobRecord, BlobState, METAINFO};
use super::piece_writer::{PieceWriter, VerifiedPiece, WriterTarget};
use super::{BlobInfo, Cas, CasError, sync_dir};
use crate::bitfield::{Bitfield, PieceIndex};
use crate::buffers::BufferPool;
use crate::chain::ChainHasher;
use crate::direct::DirectFile;
use crate::metainfo::{Metainfo, PieceError};

/// A download in progress. Dropping it keeps the progress (flushed best-effort) for a
/// later [`Cas::start_partial`] to resume.
pub struct PartialBlob {
    cas: Cas,
    metainfo: Arc<Metainfo>,
    bitfield: Bitfield,
    /// Pieces checked against the digest's hash chain by this handle. Pieces resumed
    /// from before a restart (or stored with the check off) are not in it, and commit
    /// checks them by reading them back.
    chained: Bitfield,
    file: File,
    /// `file` opened again for direct I/O, when the store asks for it and the filesystem
    /// allows it: piece writers then bypass the page cache.
    direct: Option<Arc<DirectFile>>,
    /// Whether this handle's piece writers may still write (see [`PartialBlob::close_writers`]).
    writers_open: Arc<RwLock<bool>>,
    path: PathBuf,
    unflushed: u32,
    /// Snapshots of the bitfield taken for flushing so far; each flush carries its number.
    flushes: u64,
    /// The number of the newest flush whose bitfield is in redb (`u64::MAX` once the blob is
    /// committed or discarded), so a slower, older flush never overwrites a newer one.
    persisted: Arc<Mutex<u64>>,
    finished: bool,
}

impl Cas {
    /// Starts, or resumes after a restart, the download of the blob `metainfo` describes.
    ///
    /// Resuming keeps the pieces persisted before, if the stored metainfo is identical;
    /// a different metainfo for the same digest discards the old progress.
    pub fn start_partial(&self, metainfo: &Metainfo) -> Result<PartialBlob, CasError> {
        let inner = self.inner();
        let digest = *metainfo.digest();
        let key = digest.to_string();
        let path = inner.partial_path(&digest);
        let mut state = inner.lock();
        if state.writers.contains(&digest) {
            return Err(CasError::Busy(digest));
        }
        if let Some(record) = inner.record(&digest)? {
            if record.state == BlobState::Complete {
                return Err(CasError::AlreadyExists(digest));
            }
            let same = inner
                .metainfo(&digest)
                .ok()
                .flatten()
                .is_some_and(|m| m.id() == metainfo.id());
            let stored = match same {
                true => self.stored_bitfield(&key, metainfo.piece_count())?,
                false => None,
            };
            // A missing file (lost after the last sweep) means starting over, not failing.
            let file = match stored {
                Some(_) => OpenOptions::new().read(true).write(true).open(&path).ok(),
                None => None,
            };
            if let (Some(bitfield), Some(file)) = (stored, file) {
                state.writers.insert(digest);
                state
                    .access
                    .insert(digest, super::meta::to_ms(SystemTime::now()));
                return Ok(PartialBlob::new(self, metainfo, bitfield, file, path));
            }
            tracing::info!(%digest, "cas: discarding a partial download with different metainfo");
            inner.remove(&mut state, &[(digest, record)])?;
        }

        let length = metainfo.length();
        inner.reserve_locked(&mut state, length)?;
        let created = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(CasError::io("create partial", &path))?;
            // Sparse: no blocks are allocated until pieces arrive.
            file.set_len(length)
                .map_err(CasError::io("size partial", &path))?;
            file.sync_all().map_err(CasError::io("sync", &path))?;
            sync_dir(&inner.partial_dir)?;
            let bitfield = Bitfield::new(metainfo.piece_count());
            let record = BlobRecord::new(BlobState::Partial, length, SystemTime::now());
            let txn = inner.begin_write()?;
            {
                txn.open_table(BLOBS)?
                    .insert(key.as_str(), record.encode().as_slice())?;
                txn.open_table(METAINFO)?
                    .insert(key.as_str(), metainfo.encode().as_slice())?;
                txn.open_table(BITFIELDS)?
                    .insert(key.as_str(), encode_bitfield(&bitfield).as_slice())?;
            }
            txn.commit()?;
            Ok::<_, CasError>((file, bitfield))
        })();
        state.reserved = state.reserved.saturating_sub(length);
        let (file, bitfield) = match created {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        state.used += length;
        state.writers.insert(digest);
        Ok(PartialBlob::new(self, metainfo, bitfield, file, path))
    }

    fn stored_bitfield(&self, key: &str, pieces: u32) -> Result<Option<Bitfield>, CasError> {
        let txn = self.inner().db.begin_read()?;
        let table = txn.open_table(BITFIELDS)?;
        let Some(v) = table.get(key)? else {
            return Ok(None);
        };
        Ok(postcard::from_bytes::<Bitfield>(v.value())
            .ok()
            .filter(|b| b.len() == pieces))
    }
}

impl PartialBlob {
    fn new(cas: &Cas, metainfo: &Metainfo, bitfield: Bitfield, file: File, path: PathBuf) -> Self {
        let direct = match cas.config().direct_writes {
            true => DirectFile::open(&path).map(Arc::new),
            false => None,
        };
        PartialBlob {
            direct,
            writers_open: Arc::new(RwLock::new(true)),
            cas: cas.clone(),
            metainfo: Arc::new(metainfo.clone()),
            chained: Bitfield::new(bitfield.len()),
            bitfield,
            file,
            path,
            unflushed: 0,
            flushes: 0,
            persisted: Arc::new(Mutex::new(0)),
            finished: false,
        }
    }

    /// The blob's metainfo.
    pub fn metainfo(&self) -> &Arc<Metainfo> {
        &self.metainfo
    }

    /// Pieces present (including any not yet flushed).
    pub fn bitfield(&self) -> &Bitfield {
        &self.bitfield
    }

    /// Whether piece writers write past the page cache (direct I/O): the store asks for
    /// it ([`CasConfig::direct_writes`](super::CasConfig::direct_writes)) and the
    /// filesystem took the file opened so.
    pub fn writes_direct(&self) -> bool {
        self.direct.as_ref().is_some_and(|d| !d.refused())
    }

    /// Stops this handle's piece writers for good, waiting for any batch being written:
    /// once the handle is committed, aborted or dropped, the file may be a complete blob
    /// or belong to the next download of the digest, and a late writer (a receiver that
    /// outlived its download) must not put its bytes over pieces verified since.
    fn close_writers(&self) {
        *self
            .writers_open
            .write()
            .unwrap_or_else(PoisonError::into_inner) = false;
    }

    /// True when every piece is present.
    pub fn is_complete(&self) -> bool {
        self.bitfield.is_complete()
    }

    /// Verifies and stores one piece. Returns false if the piece was already present.
    /// A piece that fails verification is not written: `CasError::Piece`.
    pub fn write_piece(&mut self, index: PieceIndex, bytes: &[u8]) -> Result<bool, CasError> {
        self.metainfo.verify_piece(index, bytes)?;
        if self.bitfield.get(index) {
            return Ok(false);
        }
        self.write_verified(index, bytes)?;
        Ok(true)
    }

    /// Stores a piece whose BLAKE3 hash the caller already checked while receiving it
    /// (e.g. with [`crate::metainfo::Metainfo::check_piece_hash`] on a streaming hasher).
    /// Its place in the digest's hash chain is checked here (see [`PartialBlob::commit`]).
    pub fn write_verified(&mut self, index: PieceIndex, bytes: &[u8]) -> Result<(), CasError> {
        let range = self.metainfo.checked_piece_range(index)?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(PieceError::WrongSize {
                index,
                expected: (range.end - range.start) as u32,
                actual: bytes.len(),
            }
            .into());
        }
        let chained = self.checks_chain();
        if chained {
            self.metainfo.verify_piece_chain(index, bytes)?;
        }
        self.file
            .write_all_at(bytes, range.start)
            .map_err(CasError::io("write piece to", &self.path))?;
        self.mark_stored(VerifiedPiece {
            index,
            chained,
            bytes: None,
        })?;
        Ok(())
    }

    /// A writer that streams piece `index` into place while hashing it, for receivers that
    /// must not buffer whole pieces. Its bytes count only once [`PieceWriter::finish`] has
    /// verified them and [`PartialBlob::mark_stored`] took the proof. The caller must let
    /// at most one writer work on a piece at a time: two writers of the same range could
    /// interleave a bad copy over a good one.
    pub fn piece_writer(&self, index: PieceIndex) -> Result<PieceWriter, CasError> {
        let range = self.metainfo.checked_piece_range(index)?;
        let target = WriterTarget {
            file: self
                .file
                .try_clone()
                .map_err(CasError::io("reopen partial", &self.path))?,
            direct: self.direct.clone(),
            open: self.writers_open.clone(),
            path: self.path.clone(),
            buffers: self.cas.buffers().clone(),
        };
        let chain = self.chain_from(index);
        Ok(PieceWriter::new(
            target,
            self.metainfo.clone(),
            index,
            range,
            chain,
        ))
    }

    /// A hasher for piece `index`'s place in the digest's chain, when the digest is
    /// to be verified and the metainfo makes that possible piece by piece.
    fn chain_from(&self, index: PieceIndex) -> Option<ChainHasher> {
        self.checks_chain()
            .then(|| self.metainfo.piece_chain(index))
            .flatten()
    }

    /// Whether stored pieces are checked against the digest's hash chain.
    fn checks_chain(&self) -> bool {
        self.cas.config().verify_digest_on_commit && self.metainfo.has_chain()
    }

    /// Records a piece that a [`PieceWriter`] wrote and verified, and flushes the progress
    /// (an fsync and a redb write) when `flush_every_pieces` pieces are unflushed. Returns
    /// false if the piece was already present.
    pub fn mark_stored(&mut self, piece: VerifiedPiece) -> Result<bool, CasError> {
        let fresh = self.record_stored(piece);
        if self.flush_due() {
            self.flush()?;
        }
        Ok(fresh)
    }

    /// [`PartialBlob::mark_stored`] without the flush, for callers that must not wait on the
    /// disk: they take a [`PartialBlob::flush_job`] when [`PartialBlob::flush_due`] and run
    /// it on a blocking thread. Returns false if the piece was already present.
    pub fn record_stored(&mut self, piece: VerifiedPiece) -> bool {
        if piece.chained {
            self.chained.set(piece.index);
        }
        let fresh = self.bitfield.set(piece.index);
        if fresh {
            self.unflushed += 1;
        }
        fresh
    }

    /// Whether `flush_every_pieces` pieces are stored but not yet flushed.
    pub fn flush_due(&self) -> bool {
        self.unflushed >= self.cas.config().flush_every_pieces
    }

    /// Reads a piece this node already has (to serve it to peers while downloading).
    pub fn read_piece(&self, index: PieceIndex) -> Result<Vec<u8>, CasError> {
        let range = self
            .metainfo
            .piece_range(index)
            .filter(|_| self.bitfield.get(index));
        let Some(range) = range else {
            return Err(CasError::MissingPiece {
                digest: *self.metainfo.digest(),
                index,
            });
        };
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        self.file
            .read_exact_at(&mut buf, range.start)
            .map_err(CasError::io("read piece from", &self.path))?;
        Ok(buf)
    }

    /// A handle that reads pieces of this blob from another thread (e.g. a blocking pool),
    /// so serving peers never waits on the downloader. It reads only what it is asked for;
    /// the caller asks only for pieces the bitfield has.
    pub fn piece_source(&self) -> Result<PieceSource, CasError> {
        PieceSource::new(
            &self.file,
            &self.path,
            self.metainfo.clone(),
            self.cas.buffers().clone(),
        )
    }

    /// Makes the pieces recorded so far durable: fsync the file, then persist the bitfield.
    /// Also covers any [`FlushJob`] handed out and perhaps not run yet.
    pub fn flush(&mut self) -> Result<(), CasError> {
        let outstanding = *lock(&self.persisted) < self.flushes;
        if self.unflushed == 0 && !outstanding {
            return Ok(());
        }
        self.take_flush_job()?.run()
    }

    /// The work of [`PartialBlob::flush`] for the pieces recorded so far, to run on another
    /// thread while more pieces arrive; `None` when nothing is unflushed. Jobs may finish in
    /// any order: an older snapshot never replaces a newer one, and none is written once the
    /// blob is committed or discarded or this handle is dropped (which flush themselves).
    pub fn flush_job(&mut self) -> Result<Option<FlushJob>, CasError> {
        if self.unflushed == 0 {
            return Ok(None);
        }
        self.take_flush_job().map(Some)
    }

    fn take_flush_job(&mut self) -> Result<FlushJob, CasError> {
        let file = self
            .file
            .try_clone()
            .map_err(CasError::io("reopen partial", &self.path))?;
        self.flushes += 1;
        self.unflushed = 0;
        Ok(FlushJob {
            cas: self.cas.clone(),
            file,
            path: self.path.clone(),
            digest: *self.metainfo.digest(),
            bitfield: encode_bitfield(&self.bitfield),
            number: self.flushes,
            persisted: self.persisted.clone(),
        })
    }

    /// Turns the finished download into a complete blob.
    pub fn commit(mut self) -> Result<BlobInfo, CasError> {
        let digest = *self.metainfo.digest();
        if !self.is_complete() {
            return Err(CasError::Incomplete {
                digest,
                have: self.bitfield.count_ones(),
                total: self.bitfield.len(),
            });
        }
        self.close_writers();
        self.flush()?;
        let inner = self.cas.inner();
        if self.cas.config().verify_digest_on_commit {
            // With chaining states the pieces stored through this handle were checked as
            // they came (`chain_from`); only the others are read back. Without them, the
            // whole blob is re-hashed.
            let checked = if self.metainfo.has_chain() {
                self.check_unchained_pieces()
            } else {
                self.rehash().and_then(|actual| match actual == digest {
                    true => Ok(()),
                    false => Err(CasError::DigestMismatch {
                        expected: digest,
                        actual,
                    }),
                })
            };
            if let Err(e @ (CasError::DigestMismatch { .. } | CasError::Piece(_))) = checked {
                // The pieces matched their BLAKE3 hashes, so the metainfo itself lied.
                self.finished = true;
                self.discard()?;
                return Err(e);
            }
            checked?;
        }
        let target = inner.blob_path(&digest);
        let shard = target.parent().unwrap_or(&inner.blobs_dir).to_path_buf();
        fs::create_dir_all(&shard).map_err(CasError::io("create directory", &shard))?;
        fs::rename(&self.path, &target).map_err(CasError::io("rename into place", &target))?;
        // Flushes still running on other threads must not bring the bitfield back.
        let mut persisted = lock(&self.persisted);
        let committed = (|| {
            sync_dir(&shard)?;
            sync_dir(&inner.partial_dir)?;
            let key = digest.to_string();
            let txn = inner.begin_write()?;
            let record = {
                let mut blobs = txn.open_table(BLOBS)?;
                let mut record = match blobs.get(key.as_str())? {
                    Some(v) => {
                        BlobRecord::decode(v.value()).ok_or(CasError::CorruptRecord(key.clone()))?
                    }
                    None => BlobRecord::new(
                        BlobState::Partial,
                        self.metainfo.length(),
                        SystemTime::now(),
                    ),
                };
                record.state = BlobState::Complete;
                blobs.insert(key.as_str(), record.encode().as_slice())?;
                txn.open_table(BITFIELDS)?.remove(key.as_str())?;
                record
            };
            txn.commit()?;
            Ok::<_, CasError>(record)
        })();
        let record = match committed {
            Ok(record) => record,
            Err(e) => {
                // Put the file back where the (still partial) record says it is.
                let _ = fs::rename(&target, &self.path);
                return Err(e);
            }
        };
        *persisted = u64::MAX;
        drop(persisted);
        self.finished = true;
        Ok(record.info(digest))
    }

    /// Abandons the download and deletes its progress: the file, its record, and its
    /// share of the quota.
    pub fn abort(mut self) -> Result<(), CasError> {
        self.finished = true;
        self.discard()
    }

    fn discard(&mut self) -> Result<(), CasError> {
        self.close_writers();
        let inner = self.cas.inner();
        let digest = *self.metainfo.digest();
        // Flushes still running on other threads must not bring the bitfield back.
        let mut persisted = lock(&self.persisted);
        *persisted = u64::MAX;
        let mut state = inner.lock();
        if let Some(record) = inner.record(&digest)? {
            inner.remove(&mut state, &[(digest, record)])?;
        }
        Ok(())
    }

    /// Checks the pieces this handle did not check against the digest's hash chain.
    fn check_unchained_pieces(&self) -> Result<(), CasError> {
        let mut buf = Vec::new();
        for i in 0..self.metainfo.piece_count() {
            let index = PieceIndex(i);
            if self.chained.get(index) {
                continue;
            }
            let range = self.metainfo.checked_piece_range(index)?;
            buf.resize((range.end - range.start) as usize, 0);
            self.file
                .read_exact_at(&mut buf, range.start)
                .map_err(CasError::io("read back", &self.path))?;
            self.metainfo.verify_piece_chain(index, &buf)?;
        }
        Ok(())
    }

    fn rehash(&self) -> Result<crate::digest::Digest, CasError> {
        let mut hasher = self.metainfo.digest().hasher();
        let mut buf = vec![0u8; 1 << 20];
        let len = self.metainfo.length();
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], offset)
                .map_err(CasError::io("read back", &self.path))?;
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(hasher.finish())
    }
}

impl Drop for PartialBlob {
    fn drop(&mut self) {
        self.close_writers();
        if !self.finished
            && let Err(e) = self.flush()
        {
            tracing::warn!(digest = %self.metainfo.digest(), error = %e, "cas: could not save partial progress");
        }
        // Jobs this handle gave out must not land once the next handle may own the blob
        // (this waits for one that is writing now).
        *lock(&self.persisted) = u64::MAX;
        self.cas
            .inner()
            .lock()
            .writers
            .remove(self.metainfo.digest());
    }
}

/// One flush of a partial blob's progress (see [`PartialBlob::flush_job`]): an fsync of
/// the file, then the bitfield snapshot it was taken with into redb, so the stored bitfield
/// never claims bytes a crash could lose. Blocks on the disk: run it on a blocking thread.
/// Dropping it unrun leaves its pieces to the next flush.
#[must_use = "the progress is saved only when the job runs"]
pub struct FlushJob {
    cas: Cas,
    file: File,
    path: PathBuf,
    digest: crate::digest::Digest,
    bitfield: Vec<u8>,
    number: u64,
    persisted: Arc<Mutex<u64>>,
}

impl std::fmt::Debug for FlushJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushJob")
            .field("blob", &self.digest)
            .field("number", &self.number)
            .finish_non_exhaustive()
    }
}

impl FlushJob {
    /// Syncs the file and persists the snapshot, unless a newer one (or the blob's commit
    /// or discard) got there first.
    pub fn run(self) -> Result<(), CasError> {
        self.file
            .sync_data()
            .map_err(CasError::io("sync", &self.path))?;
        let mut persisted = lock(&self.persisted);
        if *persisted >= self.number {
            return Ok(());
        }
        let inner = self.cas.inner();
        let txn = inner.begin_write()?;
        txn.open_table(BITFIELDS)?
            .insert(self.digest.to_string().as_str(), self.bitfield.as_slice())?;
        txn.commit()?;
        *persisted = self.number;
        // A download that makes progress is in use: eviction by idleness spares it.
        inner.touch(&self.digest);
        Ok(())
    }
}

/// The newest persisted flush's number, even if a thread panicked holding it (a number
/// is never left half-written).
fn lock(persisted: &Mutex<u64>) -> std::sync::MutexGuard<'_, u64> {
    persisted.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads pieces of a blob (partial or complete) through its own file handle, into
/// buffers its store reuses.
#[derive(Debug)]
pub struct PieceSource {
    file: File,
    path: PathBuf,
    metainfo: Arc<Metainfo>,
    buffers: BufferPool,
}

impl PieceSource {
    pub(crate) fn new(
        file: &File,
        path: &std::path::Path,
        metainfo: Arc<Metainfo>,
        buffers: BufferPool,
    ) -> Result<Self, CasError> {
        let file = file.try_clone().map_err(CasError::io("reopen", path))?;
        Ok(PieceSource {
            file,
            path: path.to_path_buf(),
            metainfo,
            buffers,
        })
    }

    /// Reads one piece (positioned reads: safe to share across threads), straight into
    /// memory that is not zeroed first (a memset of every byte served, otherwise) and, once
    /// the bytes are dropped, read into again (see [`crate::buffers`]).
    pub fn read_piece(&self, index: PieceIndex) -> Result<Bytes, CasError> {
        self.read_piece_part(index, 0..u64::MAX)
    }

    /// Reads bytes `part` of one piece (offsets within the piece, cut at its end), so
    /// that a reader streaming a piece to a slow client holds a small buffer, not the
    /// piece.
    pub fn read_piece_part(
        &self,
        index: PieceIndex,
        part: std::ops::Range<u64>,
    ) -> Result<Bytes, CasError> {
        let piece = self.metainfo.checked_piece_range(index)?;
        let piece_len = piece.end - piece.start;
        let from = part.start.min(piece_len);
        let range = piece.start + from..piece.start + part.end.clamp(from, piece_len);
        let len = (range.end - range.start) as usize;
        let mut buf = self.buffers.take(len);
        if buf.len() == len {
            // A kept buffer: overwrite what it held.
            self.file
                .read_exact_at(&mut buf, range.start)
                .map_err(CasError::io("read piece from", &self.path))?;
        }
        while buf.len() < len {
            let at = range.start + buf.len() as u64;
            let read =
                match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), at) {
                    Ok(n) => n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(CasError::io("read piece from", &self.path)(e.into())),
                };
            if read == 0 {
                return Err(CasError::io("read piece from", &self.path)(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
        }
        Ok(self.buffers.freeze(buf))
    }
}

fn encode_bitfield(b: &Bitfield) -> Vec<u8> {
    postcard::to_allocvec(b).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::test_blobs::{partial, piece};

    #[test]
    fn a_flush_ending_after_the_commit_or_the_abort_leaves_no_bitfield_behind() {
        for commit in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (cas, meta, blob) = partial(dir.path(), 3);
            let key = meta.digest().to_string();
            let mut p = cas.start_partial(&meta).unwrap();
            for i in 0..3 {
                p.write_piece(PieceIndex(i), piece(&blob, i)).unwrap();
            }
            let late = p.flush_job().unwrap().unwrap();
            match commit {
                true => drop(p.commit().unwrap()),
                false => p.abort().unwrap(),
            }
            late.run().unwrap();
            assert_eq!(
                cas.stored_bitfield(&key, 3).unwrap(),
                None,
                "commit: {commit}"
            );
        }
    }

    #[test]
    fn a_piece_read_into_a_reused_buffer_holds_that_piece_only() {
        let dir = tempfile::tempdir().unwrap();
        let (cas, meta, blob) = partial(dir.path(), 3);
        let mut p = cas.start_partial(&meta).unwrap();
        for i in 0..3 {
            p.write_piece(PieceIndex(i), piece(&blob, i)).unwrap();
        }
        let source = p.piece_source().unwrap();
        let first = source.read_piece(PieceIndex(0)).unwrap();
        let memory = first.as_ptr();
        assert_eq!(first, piece(&blob, 0));
        drop(first);
        let second = source.read_piece(PieceIndex(1)).unwrap();
        assert_eq!(
            second.as_ptr(),
            memory,
            "the first piece's buffer, read into again"
        );
        assert_eq!(second, piece(&blob, 1));
        // Held: the next read gets other memory, and neither sees the other's bytes.
        let third = source.read_piece(PieceIndex(2)).unwrap();
        assert_ne!(third.as_ptr(), memory);
        assert_eq!(third, piece(&blob, 2));
        assert_eq!(second, piece(&blob, 1));
        drop(second);
        let part = source.read_piece_part(PieceIndex(0), 1000..40_000).unwrap();
        assert_eq!(part, &piece(&blob, 0)[1000..40_000]);
    }

    #[test]
    fn parts_of_a_piece_read_back_cut_at_the_pieces_end() {
        let dir = tempfile::tempdir().unwrap();
        let (cas, meta, blob) = partial(dir.path(), 2);
        let mut p = cas.start_partial(&meta).unwrap();
        p.write_piece(PieceIndex(1), piece(&blob, 1)).unwrap();
        let source = p.piece_source().unwrap();
        let whole = piece(&blob, 1);
        assert_eq!(source.read_piece(PieceIndex(1)).unwrap(), whole);
        let part = source.read_piece_part(PieceIndex(1), 100..4196).unwrap();
        assert_eq!(part, &whole[100..4196]);
        let tail = source
            .read_piece_part(PieceIndex(1), 65_000..70_000)
            .unwrap();
        assert_eq!(tail, &whole[65_000..]);
        assert!(
            source
                .read_piece_part(PieceIndex(1), 70_000..80_000)
                .unwrap()
                .is_empty()
        );
        assert!(source.read_piece_part(PieceIndex(2), 0..10).is_err());
    }

    #[test]
    fn a_flush_also_covers_a_job_handed_out_and_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let (cas, meta, blob) = partial(dir.path(), 4);
        let mut p = cas.start_partial(&meta).unwrap();
        for i in 0..3 {
            p.write_piece(PieceIndex(i), piece(&blob, i)).unwrap();
        }
        let pending = p.flush_job().unwrap().unwrap();
        // Nothing is unflushed now, yet the pieces are not durable until a sync: a commit
        // (which flushes) right now must still sync them.
        p.flush().unwrap();
        assert_eq!(*lock(&p.persisted), p.flushes);
        let key = meta.digest().to_string();
        let stored = cas.stored_bitfield(&key, 4).unwrap().unwrap();
        assert_eq!(stored.count_ones(), 3);
        drop(pending);
        p.flush().unwrap();
        assert_eq!(p.flushes, 2, "nothing was left to flush");
    }

    #[test]
    fn a_job_of_a_dropped_handle_never_overwrites_the_next_handles_progress() {
        let dir = tempfile::tempdir().unwrap();
        let (cas, meta, blob) = partial(dir.path(), 4);
        let key = meta.digest().to_string();
        let mut first = cas.start_partial(&meta).unwrap();
        first.write_piece(PieceIndex(0), piece(&blob, 0)).unwrap();
        let late = first.flush_job().unwrap().unwrap();
        drop(first);
        let mut second = cas.start_partial(&meta).unwrap();
        assert_eq!(second.bitfield().count_ones(), 1);
        for i in 1..3 {
            second.write_piece(PieceIndex(i), piece(&blob, i)).unwrap();
        }
        second.flush().unwrap();
        late.run().unwrap();
        let stored = cas.stored_bitfield(&key, 4).unwrap().unwrap();
        assert_eq!(stored.count_ones(), 3);
    }
}
