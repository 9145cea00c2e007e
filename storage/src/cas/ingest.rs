//! Verified ingest of a whole blob from a byte stream.
//!
//! One pass over the bytes on two cores: the calling thread reads the source and computes
//! the digest with the expected digest's algorithm (sha256 or sha512), recording its
//! chaining state at every piece boundary for the metainfo (see [`crate::chain`]); a scoped
//! worker thread computes the BLAKE3 piece hashes and writes the temp file, with direct
//! I/O where the store asks for it and the filesystem allows ([`crate::direct`]). Chunks
//! travel between them in a small pool of reused buffers, so nothing is copied twice and
//! memory stays at `BUFFERS × CHUNK` whatever the blob size. A third thread flushes
//! written data to disk every `SYNC_EVERY` bytes, so the final fsync is short. The blob
//! becomes visible only after its digest and length match: fsync, rename into `blobs/`,
//! fsync the directory, then commit the record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::thread;
use std::time::SystemTime;

use super::meta::{BITFIELDS, BLOBS, BlobRecord, BlobState, METAINFO, to_ms};
use super::{BlobInfo, Cas, CasError, sync_dir};
use crate::chain::{ChainRecorder, ChainState};
use crate::digest::{Digest, DigestHasher};
use crate::direct::{self, AlignedBuf, DirectFile};
use crate::metainfo::{Metainfo, PieceHasher};

const CHUNK: usize = 1 << 20;
const BUFFERS: usize = 4;
/// Bytes written between background flushes to disk.
const SYNC_EVERY: usize = 64 << 20;

/// The outcome of [`Cas::ingest`].
#[derive(Debug, Clone)]
pub struct Ingested {
    /// The stored blob.
    pub info: BlobInfo,
    /// Its metainfo (piece hashes), computed during ingest.
    pub metainfo: Metainfo,
    /// True when the blob was already present; the source was then not read at all.
    pub already_present: bool,
}

impl Cas {
    /// Stores the bytes of `source` as blob `expected`.
    ///
    /// With `length` known, space is reserved up front, the piece hashes are computed in
    /// the same pass, and a stream of any other length is rejected. Without it, pieces are
    /// hashed in a second pass over the written file. A digest or length mismatch, a failing
    /// source or a failing disk stores nothing and leaves no temp file.
    pub fn ingest(
        &self,
        expected: &Digest,
        length: Option<u64>,
        source: impl Read,
    ) -> Result<Ingested, CasError> {
        self.ingest_inner(expected, length, source, false)
            .map_err(|e| self.check_disk_full(e))
    }

    /// Like [`Cas::ingest`], and the blob is pinned in the same transaction that makes it
    /// visible, so it can never be evicted before the caller unpins it (an origin pins
    /// uploads until they are written back). An already present blob is pinned too.
    pub fn ingest_pinned(
        &self,
        expected: &Digest,
        length: Option<u64>,
        source: impl Read,
    ) -> Result<Ingested, CasError> {
        self.ingest_inner(expected, length, source, true)
            .map_err(|e| self.check_disk_full(e))
    }

    fn ingest_inner(
        &self,
        expected: &Digest,
        length: Option<u64>,
        mut source: impl Read,
        pin: bool,
    ) -> Result<Ingested, CasError> {
        if let Some(existing) = self.existing_pinned(expected, pin)? {
            return Ok(existing);
        }
        let inner = self.inner();
        let reservation = length.map(|n| inner.reserve(n)).transpose()?;
        let piece_length = length.map(|n| inner.config.piece_lengths.piece_length_for(n));
        let mut tmp = TempFile::create(&inner.tmp_dir, expected)?;
        if inner.config.direct_writes {
            tmp.direct = DirectFile::open(&tmp.path);
        }

        let limit = match length {
            Some(n) => Limit::Exact(n),
            None => Limit::Quota {
                max: inner.max_new_blob(),
                capacity: inner.capacity(&inner.lock()),
            },
        };
        let Pass {
            digest: actual,
            length: total,
            pieces: hasher,
            chain,
        } = hash_and_write(
            &mut source,
            &tmp,
            *expected,
            limit,
            Hashes {
                pieces: piece_length,
                chain: piece_length,
            },
        )?;
        if let Some(expected_len) = length
            && total != expected_len
        {
            return Err(CasError::LengthMismatch {
                digest: *expected,
                expected: expected_len,
                actual: total,
            });
        }
        if actual != *expected {
            return Err(CasError::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        let metainfo = match hasher {
            Some(h) => h.finish(*expected)?.with_chain(chain)?,
            None => hash_pieces_from_file(
                &tmp.file,
                &tmp.path,
                *expected,
                total,
                inner.config.piece_lengths.piece_length_for(total),
            )?,
        };
        tmp.file
            .sync_all()
            .map_err(CasError::io("sync", &tmp.path))?;
        // Unknown length: claim the space now that we know it.
        let _reservation = match reservation {
            Some(r) => r,
            None => inner.reserve(total)?,
        };
        self.commit_ingest(tmp, metainfo, pin)
    }

    /// [`Cas::existing`], pinned first if `pin`.
    pub(super) fn existing_pinned(
        &self,
        digest: &Digest,
        pin: bool,
    ) -> Result<Option<Ingested>, CasError> {
        let Some(mut existing) = self.existing(digest)? else {
            return Ok(None);
        };
        if pin && !existing.info.pinned {
            self.set_pinned(digest, true)?;
            existing.info.pinned = true;
        }
        Ok(Some(existing))
    }

    fn existing(&self, digest: &Digest) -> Result<Option<Ingested>, CasError> {
        let inner = self.inner();
        // The look-up and the touch under one lock: a purge guarded by the last use sees
        // this use, or removed the blob before it (then this is no longer `existing`).
        let mut state = inner.lock();
        let Some(record) = inner.record(digest)? else {
            return Ok(None);
        };
        if record.state != BlobState::Complete {
            return Ok(None);
        }
        let metainfo = inner
            .metainfo(digest)?
            .ok_or_else(|| CasError::CorruptRecord(format!("{digest} (no metainfo)")))?;
        state.access.insert(*digest, to_ms(SystemTime::now()));
        drop(state);
        Ok(Some(Ingested {
            info: record.info(*digest),
            metainfo,
            already_present: true,
        }))
    }

    pub(super) fn commit_ingest(
        &self,
        mut tmp: TempFile,
        metainfo: Metainfo,
        pin: bool,
    ) -> Result<Ingested, CasError> {
        let inner = self.inner();
        let digest = *metainfo.digest();
        let mut state = inner.lock();
        let previous = inner.record(&digest)?;
        match &previous {
            Some(r) if r.state == BlobState::Complete => {
                drop(state);
                // Another ingest of the same blob won the race; ours is redundant.
                return self.existing(&digest)?.ok_or(CasError::NotFound(digest));
            }
            Some(_) if state.writers.contains(&digest) => return Err(CasError::Busy(digest)),
            _ => {}
        }

        let path = inner.blob_path(&digest);
        let shard = path.parent().unwrap_or(&inner.blobs_dir).to_path_buf();
        let new_shard = !shard.exists();
        fs::create_dir_all(&shard).map_err(CasError::io("create directory", &shard))?;
        fs::rename(&tmp.path, &path).map_err(CasError::io("rename into place", &path))?;
        tmp.disarm();

        let mut record = BlobRecord::new(BlobState::Complete, metainfo.length(), SystemTime::now());
        record.pinned = pin;
        let key = digest.to_string();
        let committed = (|| {
            sync_dir(&shard)?;
            if new_shard {
                sync_dir(&inner.blobs_dir)?;
            }
            let txn = inner.begin_write()?;
            {
                txn.open_table(BLOBS)?
                    .insert(key.as_str(), record.encode().as_slice())?;
                txn.open_table(METAINFO)?
                    .insert(key.as_str(), metainfo.encode().as_slice())?;
                txn.open_table(BITFIELDS)?.remove(key.as_str())?;
            }
            txn.commit()?;
            Ok::<_, CasError>(())
        })();
        if let Err(e) = committed {
            // No record points at the file: remove it now rather than at the next sweep.
            let _ = fs::remove_file(&path);
            return Err(e);
        }

        // A stale partial download of the same blob is superseded.
        if let Some(old) = previous {
            let _ = fs::remove_file(inner.partial_path(&digest));
            state.used = state.used.saturating_sub(old.size);
        }
        state.used += record.size;
        Ok(Ingested {
            info: record.info(digest),
            metainfo,
            already_present: false,
        })
    }
}

/// How long the stream may be.
#[derive(Clone, Copy)]
pub(super) enum Limit {
    /// The announced length: anything else is a length mismatch.
    Exact(u64),
    /// Unknown length: at most what the quota could ever give one blob.
    Quota { max: u64, capacity: u64 },
}

/// The expected digest's algorithm over the whole stream, with the chaining states at piece
/// boundaries when the piece length is known and a whole number of blocks.
enum DigestPass {
    Chain(ChainRecorder),
    Plain(DigestHasher),
}

impl DigestPass {
    fn new(expected: &Digest, chain_every: Option<u32>) -> Self {
        let chain = chain_every.and_then(|p| ChainRecorder::new(expected.algorithm(), p));
        match chain {
            Some(r) => DigestPass::Chain(r),
            None => DigestPass::Plain(expected.hasher()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            DigestPass::Chain(r) => r.update(bytes),
            DigestPass::Plain(h) => h.update(bytes),
        }
    }

    fn finish(self) -> (Digest, Vec<ChainState>) {
        match self {
            DigestPass::Chain(r) => r.finish(),
            DigestPass::Plain(h) => (h.finish(), Vec::new()),
        }
    }
}

/// What one pass over an ingest's bytes computed.
pub(super) struct Pass {
    pub(super) digest: Digest,
    pub(super) length: u64,
    /// The BLAKE3 piece hashes, when the piece length was known.
    pub(super) pieces: Option<PieceHasher>,
    pub(super) chain: Vec<ChainState>,
}

/// What one pass computes besides the digest: BLAKE3 hashes of pieces of this length,
/// and the digest's chaining states every this many bytes.
#[derive(Clone, Copy)]
pub(super) struct Hashes {
    pub(super) pieces: Option<u32>,
    pub(super) chain: Option<u32>,
}

/// Reads `source` to the end: the digest here, BLAKE3 pieces and the file write on a
/// worker. `expected` gives the digest's algorithm (and names the blob in errors).
pub(super) fn hash_and_write(
    source: &mut impl Read,
    tmp: &TempFile,
    expected: Digest,
    limit: Limit,
    hashes: Hashes,
) -> Result<Pass, CasError> {
    let piece_length = hashes.pieces;
    let (full_tx, full_rx) = sync_channel::<AlignedBuf>(BUFFERS);
    let (empty_tx, empty_rx) = sync_channel::<AlignedBuf>(BUFFERS);
    for _ in 0..BUFFERS {
        let _ = empty_tx.send(AlignedBuf::new(CHUNK));
    }
    let file = &tmp.file;
    let direct = tmp.direct.as_ref();

    thread::scope(|s| {
        // Flushing to disk as we go overlaps the disk's work with hashing, so the fsync
        // before the rename has little left to do. Requests coalesce: at most one pending.
        let (sync_tx, sync_rx) = sync_channel::<()>(1);
        s.spawn(move || {
            for () in sync_rx {
                // Errors resurface at the final, checked fsync.
                let _ = file.sync_data();
            }
        });
        let worker = s.spawn(move || -> io::Result<Option<PieceHasher>> {
            let mut hasher = piece_length.map(PieceHasher::new);
            let mut at = 0u64;
            let mut unsynced = 0;
            for mut buf in full_rx {
                let n = buf.len();
                if let Some(h) = hasher.as_mut() {
                    h.update(buf.bytes());
                }
                // Past the page cache where the disk allows: the blob is read again only
                // to be copied elsewhere, and a page-cache write costs a copy per byte.
                direct::write_at(direct, file, buf.bytes(), at)?;
                at += n as u64;
                unsynced += n;
                if unsynced >= SYNC_EVERY {
                    let _ = sync_tx.try_send(());
                    unsynced = 0;
                }
                buf.clear();
                // The reader may have finished; a closed pool is fine.
                let _ = empty_tx.send(buf);
            }
            Ok(hasher)
        });

        let mut sha = DigestPass::new(&expected, hashes.chain);
        let mut total = 0u64;
        let read_result = loop {
            // Fails only when the worker has stopped; its own error is reported below.
            let Ok(mut buf) = empty_rx.recv() else {
                break Ok(());
            };
            let n = match fill(source, &mut buf, &mut total) {
                Ok(n) => n,
                Err(source) => {
                    break Err(CasError::Source {
                        read: total,
                        source,
                    });
                }
            };
            if n == 0 {
                break Ok(());
            }
            match limit {
                Limit::Exact(n) if total > n => {
                    break Err(CasError::LengthMismatch {
                        digest: expected,
                        expected: n,
                        actual: total,
                    });
                }
                Limit::Quota { max, capacity } if total > max => {
                    break Err(CasError::NoSpace {
                        needed: total,
                        available: max,
                        capacity,
                    });
                }
                _ => {}
            }
            sha.update(buf.bytes());
            if full_tx.send(buf).is_err() {
                break Ok(());
            }
        };
        drop(full_tx);
        let written = match worker.join() {
            Ok(r) => r.map_err(CasError::io("write", &tmp.path)),
            Err(_) => Err(CasError::io("hash and write", &tmp.path)(io::Error::other(
                "ingest worker thread panicked",
            ))),
        };
        // A write failure explains a short read loop, so it takes precedence.
        let hasher = written?;
        read_result?;
        let (digest, chain) = sha.finish();
        Ok(Pass {
            digest,
            length: total,
            pieces: hasher,
            chain,
        })
    })
}

/// Reads until `buf` is full or the source ends; returns the bytes read and adds them to
/// `total` as they arrive, so an error reports exactly how far the stream got.
fn fill(source: &mut impl Read, buf: &mut AlignedBuf, total: &mut u64) -> io::Result<usize> {
    while !buf.is_full() {
        match buf.read_from(source) {
            Ok(0) => break,
            Ok(n) => *total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf.len())
}

/// Second pass for ingests whose length was unknown up front (the chaining states need the
/// piece length, so the digest runs again too; every production ingest knows its length).
pub(super) fn hash_pieces_from_file(
    file: &File,
    path: &Path,
    digest: Digest,
    length: u64,
    piece_length: u32,
) -> Result<Metainfo, CasError> {
    let mut hasher = PieceHasher::new(piece_length);
    let mut chain = ChainRecorder::new(digest.algorithm(), piece_length);
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < length {
        let want = (length - offset).min(CHUNK as u64) as usize;
        file.read_exact_at(&mut buf[..want], offset)
            .map_err(CasError::io("read back", path))?;
        hasher.update(&buf[..want]);
        if let Some(c) = chain.as_mut() {
            c.update(&buf[..want]);
        }
        offset += want as u64;
    }
    let metainfo = hasher.finish(digest)?;
    let Some(chain) = chain else {
        return Ok(metainfo);
    };
    // The file was checked against the digest in the first pass; a different hash now
    // means it changed under us.
    let (again, states) = chain.finish();
    if again != digest {
        return Err(CasError::DigestMismatch {
            expected: digest,
            actual: again,
        });
    }
    Ok(metainfo.with_chain(states)?)
}

/// A temp file in `tmp/`, deleted on drop unless it was renamed into place.
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    /// The same file opened for direct writes, when the store asks for them and the
    /// filesystem allows.
    pub(crate) direct: Option<DirectFile>,
    armed: bool,
}

impl TempFile {
    pub(crate) fn create(dir: &Path, digest: &Digest) -> Result<Self, CasError> {
        Self::create_named(dir, &digest.hex())
    }

    /// A temp file whose name starts with `prefix` (and is unique in this process).
    pub(crate) fn create_named(dir: &Path, prefix: &str) -> Result<Self, CasError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{prefix}.{}.{n}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(CasError::io("create temp file", &path))?;
        Ok(TempFile {
            path,
            file,
            direct: None,
            armed: true,
        })
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}
