//! Piece writers: a piece streamed into a partial blob's file while it is hashed.
//!
//! A [`PieceWriter`] gathers a piece's bytes in aligned batches of [`WRITE_BATCH`], hashes
//! each batch and writes it at its offset; [`PieceWriter::finish`] checks the piece and
//! hands the proof, a [`VerifiedPiece`], to the partial blob. Writers write with direct
//! I/O where the filesystem allows (`CasConfig::direct_writes`): a download's bytes go to
//! the disk without first being copied into fresh page-cache pages, which cost about as
//! much CPU as hashing them. The fsync of a flush or commit covers them as it covers the
//! page cache. The page cache is filled when, and if, the blob is read. A refused direct
//! write sends that batch, and every later one of the blob, through the page cache
//! instead.
//!
//! **One hash per check.** A piece is proven by one hash: its place in the digest's
//! hash chain when the partial blob checks the digest and the metainfo has chaining
//! states (version 2, every default piece length), else its BLAKE3 hash from the
//! metainfo. Both come from the same metainfo, so BLAKE3 on top of the chain proves
//! nothing more about the bytes; it cost a second pass over every byte received (about
//! 0.25 CPU-s per GiB here, see docs/performance.md). BLAKE3 still tells who is to blame:
//! a piece that breaks the chain is hashed with BLAKE3 then, from the bytes kept or read
//! back from the file. If that fails too the peer sent bad bytes
//! ([`PieceError::HashMismatch`]); if it passes, the metainfo's hashes and chaining states
//! disagree, and the metainfo is at fault ([`PieceError::ChainMismatch`]). That costs a
//! read only for a bad piece.
//!
//! **Bytes for readers.** A writer told to [`PieceWriter::keep_bytes`] hands each written
//! batch over whole instead of reusing its buffer, and the verified piece carries them
//! ([`VerifiedPiece::take_bytes`]): a reader streaming the blob gets the piece from memory,
//! not from the disk it was just written to with direct I/O.
//!
//! A writer that outlives its download (the partial blob was committed, aborted or
//! dropped) writes nothing: each batch's write holds the blob's writers open, and closing
//! them waits for it.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;

use super::CasError;
use crate::bitfield::PieceIndex;
use crate::buffers::BufferPool;
use crate::chain::ChainHasher;
use crate::direct::{self, AlignedBuf, DirectFile};
use crate::metainfo::{Metainfo, PieceError};

/// Streams one piece into a partial blob's file, hashing as it goes.
///
/// Bytes gather in an aligned batch of [`WRITE_BATCH`]; each full batch is hashed (along
/// the hash chain when checked, else BLAKE3: see the module docs) and written at its
/// offset, bypassing the page cache when the store allows
/// ([`CasConfig::direct_writes`](super::CasConfig::direct_writes)).
/// The hashing is CPU work and the write is disk work: an async caller can hash on its own
/// thread ([`PieceWriter::hash_gathered`]) and send only the write to a blocking thread.
pub struct PieceWriter {
    target: WriterTarget,
    metainfo: Arc<Metainfo>,
    index: PieceIndex,
    start: u64,
    len: u64,
    /// Bytes hashed and written.
    written: u64,
    batch: AlignedBuf,
    /// How much of `batch` is hashed already (see [`PieceWriter::hash_gathered`]).
    hashed: usize,
    /// The one hash that proves the piece.
    proof: Proof,
    /// The batches written so far, kept for a reader ([`PieceWriter::keep_bytes`]).
    kept: Option<Vec<Bytes>>,
    /// Write through the page cache even where direct I/O is on
    /// ([`PieceWriter::read_soon`]).
    cached: bool,
}

/// What a [`PieceWriter`] hashes its bytes with (see the module docs).
#[expect(
    clippy::large_enum_variant,
    reason = "one per piece being written, and swapped out once per piece: a sha512 chain's \
              216 bytes inline cost less than an allocation"
)]
enum Proof {
    /// The piece's place in the digest's hash chain.
    Chain(ChainHasher),
    /// The piece's BLAKE3 hash from the metainfo: without chaining states, or when the
    /// digest is not checked. Boxed: a BLAKE3 hasher is about 2 KiB.
    Blake3(Box<blake3::Hasher>),
}

/// Bytes a [`PieceWriter`] gathers before it hashes and writes them: large enough that the
/// syscall and the hashing run in bulk (BLAKE3's SIMD spans many 1 KiB chunks), small
/// enough that many pieces in flight stay cheap.
pub const WRITE_BATCH: usize = 512 * 1024;

/// Where a partial blob's piece writers write: its file, and whether they still may.
pub(super) struct WriterTarget {
    /// The partial file, through the page cache.
    pub(super) file: File,
    /// The blob's direct-I/O handle, if it has one.
    pub(super) direct: Option<Arc<DirectFile>>,
    /// The partial blob's writers are still open: held (shared) across each batch's write.
    pub(super) open: Arc<RwLock<bool>>,
    /// The partial file's path, for errors.
    pub(super) path: PathBuf,
    /// The store's pool the write batches come from.
    pub(super) buffers: BufferPool,
}

/// Proof that a piece's bytes are on disk and matched their hash.
pub struct VerifiedPiece {
    pub(super) index: PieceIndex,
    /// Whether the digest's hash chain was checked (else the piece's BLAKE3 hash was).
    pub(super) chained: bool,
    /// The piece's bytes, in order, if its writer kept them.
    pub(super) bytes: Option<Vec<Bytes>>,
}

impl std::fmt::Debug for VerifiedPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedPiece")
            .field("index", &self.index)
            .field("chained", &self.chained)
            .field("kept", &self.bytes.as_ref().map(Vec::len))
            .finish()
    }
}

impl VerifiedPiece {
    /// The piece.
    pub fn index(&self) -> PieceIndex {
        self.index
    }

    /// The piece's bytes, in order, if its writer kept them ([`PieceWriter::keep_bytes`]).
    pub fn take_bytes(&mut self) -> Option<Vec<Bytes>> {
        self.bytes.take()
    }
}

impl PieceWriter {
    /// A writer of piece `index`, which covers `range` of the blob's file; `chain` is its
    /// place in the digest's hash chain when that is checked.
    pub(super) fn new(
        target: WriterTarget,
        metainfo: Arc<Metainfo>,
        index: PieceIndex,
        range: Range<u64>,
        chain: Option<ChainHasher>,
    ) -> Self {
        let len = range.end - range.start;
        let batch = AlignedBuf::pooled(Self::batch_len(len), &target.buffers);
        PieceWriter {
            target,
            metainfo,
            index,
            start: range.start,
            len,
            written: 0,
            batch,
            hashed: 0,
            proof: match chain {
                Some(chain) => Proof::Chain(chain),
                None => Proof::Blake3(Box::default()),
            },
            kept: None,
            cached: false,
        }
    }

    fn batch_len(piece_len: u64) -> usize {
        usize::try_from(piece_len)
            .unwrap_or(WRITE_BATCH)
            .min(WRITE_BATCH)
    }

    /// Keeps the piece's bytes for [`VerifiedPiece::take_bytes`]: each batch's buffer goes
    /// with its bytes once written, and a fresh one gathers the next. Costs the piece's
    /// length in memory until the bytes are dropped.
    pub fn keep_bytes(&mut self) {
        self.kept.get_or_insert_with(Vec::new);
    }

    /// The piece will be read soon (a reader streaming the blob is on its way to it, but
    /// it is not kept in memory): its bytes go through the page cache, where that read
    /// finds them, instead of past it with direct I/O, where the read would have to fetch
    /// them back from the disk. Costs a copy into the page cache per batch.
    pub fn read_soon(&mut self) {
        self.cached = true;
    }

    /// The piece being written.
    pub fn index(&self) -> PieceIndex {
        self.index
    }

    /// Appends the next bytes of the piece, writing every batch that fills. More bytes
    /// than the piece has is an error.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), CasError> {
        while !bytes.is_empty() {
            let n = self.gather(bytes)?;
            bytes = &bytes[n..];
            if self.batch_full() {
                self.write_batch()?;
            }
        }
        Ok(())
    }

    /// Copies as much of the next bytes as the batch has room for, without touching the
    /// disk; returns how many. Once [`PieceWriter::batch_full`], nothing more fits until
    /// [`PieceWriter::write_batch`] (which blocks on the disk: an async caller runs it on a
    /// blocking thread). More bytes than the piece has is an error.
    pub fn gather(&mut self, bytes: &[u8]) -> Result<usize, CasError> {
        let end = self.written + self.batch.len() as u64 + bytes.len() as u64;
        if end > self.len {
            return Err(PieceError::WrongSize {
                index: self.index,
                expected: self.len as u32,
                actual: usize::try_from(end).unwrap_or(usize::MAX),
            }
            .into());
        }
        Ok(self.batch.fill(bytes))
    }

    /// Whether the batch is full and must be written before more bytes fit.
    pub fn batch_full(&self) -> bool {
        self.batch.is_full()
    }

    /// Hashes the gathered bytes not hashed yet. Only CPU work: it never touches the disk,
    /// and [`PieceWriter::write_batch`] and [`PieceWriter::finish`] hash whatever it left.
    pub fn hash_gathered(&mut self) {
        let bytes = &self.batch.bytes()[self.hashed..];
        if bytes.is_empty() {
            return;
        }
        match &mut self.proof {
            Proof::Chain(chain) => chain.update(bytes),
            Proof::Blake3(hasher) => {
                hasher.update(bytes);
            }
        }
        self.hashed = self.batch.len();
    }

    /// Hashes the gathered bytes (those [`PieceWriter::hash_gathered`] did not) and writes
    /// them at their offset. Blocks on the disk. Fails with [`CasError::DownloadClosed`]
    /// once the partial blob is committed, aborted or dropped.
    pub fn write_batch(&mut self) -> Result<(), CasError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.hash_gathered();
        let bytes = self.batch.bytes();
        // Held until the bytes are written: closing the blob waits for this write.
        let open = self
            .target
            .open
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if !*open {
            return Err(CasError::DownloadClosed(*self.metainfo.digest()));
        }
        let at = self.start + self.written;
        let direct = self.target.direct.as_deref().filter(|_| !self.cached);
        direct::write_at(direct, &self.target.file, bytes, at)
            .map_err(CasError::io("write piece to", &self.target.path))?;
        drop(open);
        self.written += bytes.len() as u64;
        match self.kept.as_mut() {
            Some(kept) => {
                let next = AlignedBuf::pooled(
                    Self::batch_len(self.len - self.written),
                    &self.target.buffers,
                );
                kept.push(std::mem::replace(&mut self.batch, next).into_bytes());
            }
            None => self.batch.clear(),
        }
        self.hashed = 0;
        Ok(())
    }

    /// Writes what is gathered, then checks length and hash; the proof goes to
    /// [`PartialBlob::mark_stored`](super::PartialBlob::mark_stored). Blocks on the disk.
    /// A piece that breaks the hash chain is [`PieceError::HashMismatch`] if its BLAKE3
    /// hash is wrong too (the sender's fault), else [`PieceError::ChainMismatch`] (the
    /// metainfo's).
    pub fn finish(mut self) -> Result<VerifiedPiece, CasError> {
        self.write_batch()?;
        if self.written != self.len {
            return Err(PieceError::WrongSize {
                index: self.index,
                expected: self.len as u32,
                actual: self.written as usize,
            }
            .into());
        }
        // A default chain in its place costs nothing; `self` is needed whole for the blame.
        let proof = std::mem::replace(&mut self.proof, Proof::Chain(ChainHasher::default()));
        let chained = matches!(proof, Proof::Chain(_));
        match proof {
            Proof::Chain(chain) => {
                if let Err(broken) = self.metainfo.check_piece_chain(self.index, chain) {
                    return Err(self.blame(broken));
                }
            }
            Proof::Blake3(hasher) => {
                let hash = crate::metainfo::PieceHash(*hasher.finalize().as_bytes());
                self.metainfo.check_piece_hash(self.index, &hash)?;
            }
        }
        Ok(VerifiedPiece {
            index: self.index,
            chained,
            bytes: self.kept.take(),
        })
    }

    /// Who broke the chain: the bytes, if they fail their BLAKE3 hash too (hashed from the
    /// bytes kept, or read back from the file), else the metainfo (`broken`).
    fn blame(&self, broken: PieceError) -> CasError {
        let mut hasher = blake3::Hasher::new();
        if let Some(kept) = &self.kept {
            kept.iter().for_each(|b| {
                hasher.update(b);
            });
        } else {
            let mut buf = vec![0u8; Self::batch_len(self.len)];
            let mut at = 0;
            while at < self.len {
                let n = buf
                    .len()
                    .min(usize::try_from(self.len - at).unwrap_or(usize::MAX));
                if let Err(e) = self
                    .target
                    .file
                    .read_exact_at(&mut buf[..n], self.start + at)
                {
                    return CasError::io("read back", &self.target.path)(e);
                }
                hasher.update(&buf[..n]);
                at += n as u64;
            }
        }
        let hash = crate::metainfo::PieceHash(*hasher.finalize().as_bytes());
        match self.metainfo.check_piece_hash(self.index, &hash) {
            Err(bad_bytes) => bad_bytes.into(),
            Ok(()) => broken.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::test_blobs::{partial, piece};
    use crate::cas::{Cas, CasConfig};
    use crate::metainfo::PieceLengthTable;

    #[test]
    fn direct_writes_land_every_byte_whatever_the_pieces_alignment() {
        // Aligned pieces of one batch (direct but for the blob's short last piece, and for
        // the pieces a reader will read soon, written through the page cache); pieces
        // on no block boundary (page cache); 18 KiB pieces (aligned starts, unaligned ends,
        // so a block is shared with the next piece); pieces of several batches, aligned and
        // not.
        let lengths = [
            64 * 1024,
            16 * 1024 + 1,
            18 * 1024,
            1024 * 1024,
            600 * 1024 + 1,
        ];
        for piece_length in lengths {
            for direct_writes in [true, false] {
                let dir = tempfile::tempdir().unwrap();
                let lengths = PieceLengthTable::uniform(piece_length);
                let cas = Cas::open(CasConfig {
                    piece_lengths: lengths.clone(),
                    direct_writes,
                    ..CasConfig::at(dir.path())
                })
                .unwrap();
                let blob: Vec<u8> = (0..7 * piece_length as usize / 2 + 1000)
                    .map(|i| (i * 7 % 253) as u8)
                    .collect();
                let meta = Metainfo::from_bytes(&blob, &lengths).unwrap();
                let mut p = cas.start_partial(&meta).unwrap();
                let direct = p.writes_direct();
                if !direct_writes {
                    assert!(!direct);
                } else if on_ext4(dir.path()) {
                    assert!(direct, "ext4 takes direct I/O");
                }
                for i in 0..meta.piece_count() {
                    let r = meta.piece_range(PieceIndex(i)).unwrap();
                    let mut w = p.piece_writer(PieceIndex(i)).unwrap();
                    // Every third piece goes through the page cache for a reader.
                    if i % 3 == 1 {
                        w.read_soon();
                    }
                    // Chunks of odd sizes, as a network delivers them.
                    for chunk in blob[r.start as usize..r.end as usize].chunks(1_111) {
                        w.write(chunk).unwrap();
                    }
                    assert!(p.mark_stored(w.finish().unwrap()).unwrap());
                }
                assert_eq!(p.writes_direct(), direct, "no direct write was refused");
                p.commit().unwrap();
                let stored = cas.reader(meta.digest()).unwrap().read_all().unwrap();
                assert!(
                    stored == blob,
                    "{piece_length}-byte pieces, direct {direct_writes}"
                );
            }
        }
    }

    #[test]
    fn bytes_hashed_before_their_write_are_hashed_once_and_still_checked() {
        // Pieces of two batches and a bit: hashed after every chunk, after some, or only by
        // the writes, as an async receiver may; the piece hashes and the hash chain must
        // come out the same, and a corrupt byte hashed early must still fail its piece.
        let piece_length = 2 * WRITE_BATCH as u32 + 1000;
        let dir = tempfile::tempdir().unwrap();
        let lengths = PieceLengthTable::uniform(piece_length);
        let cas = Cas::open(CasConfig {
            piece_lengths: lengths.clone(),
            ..CasConfig::at(dir.path())
        })
        .unwrap();
        let blob: Vec<u8> = (0..3 * piece_length as usize)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let meta = Metainfo::from_bytes(&blob, &lengths).unwrap();
        let mut p = cas.start_partial(&meta).unwrap();
        let write = |w: &mut PieceWriter, bytes: &[u8], hash_every: usize| {
            for (n, mut chunk) in bytes.chunks(8_952).enumerate() {
                while !chunk.is_empty() {
                    let took = w.gather(chunk).unwrap();
                    chunk = &chunk[took..];
                    if hash_every > 0 && n % hash_every == 0 {
                        w.hash_gathered();
                        w.hash_gathered(); // Nothing new: hashes nothing twice.
                    }
                    if w.batch_full() {
                        if hash_every > 0 {
                            w.hash_gathered();
                        }
                        w.write_batch().unwrap();
                    }
                }
            }
            if hash_every > 0 {
                w.hash_gathered();
            }
        };
        let range = |i: u32| {
            let r = meta.piece_range(PieceIndex(i)).unwrap();
            r.start as usize..r.end as usize
        };
        let mut corrupt = blob[range(1)].to_vec();
        corrupt[WRITE_BATCH + 7] ^= 1;
        let mut w = p.piece_writer(PieceIndex(1)).unwrap();
        write(&mut w, &corrupt, 1);
        assert!(
            w.finish().is_err(),
            "a corrupt byte hashed early is still caught"
        );
        for (i, hash_every) in [(0, 1), (1, 5), (2, 0)] {
            let mut w = p.piece_writer(PieceIndex(i)).unwrap();
            write(&mut w, &blob[range(i)], hash_every);
            assert!(p.mark_stored(w.finish().unwrap()).unwrap());
        }
        p.commit().unwrap();
        assert!(cas.reader(meta.digest()).unwrap().read_all().unwrap() == blob);
    }

    #[test]
    fn a_refused_direct_write_goes_through_the_page_cache_and_so_do_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (cas, meta, blob) = partial(dir.path(), 2);
        let mut p = cas.start_partial(&meta).unwrap();
        let mut w = p.piece_writer(PieceIndex(0)).unwrap();
        // A buffer one byte off its alignment: ext4 refuses it for direct I/O (EINVAL).
        w.batch = AlignedBuf::with_offset(w.batch.capacity(), 1);
        w.write(piece(&blob, 0)).unwrap();
        p.mark_stored(w.finish().unwrap()).unwrap();
        if on_ext4(dir.path()) {
            assert!(!p.writes_direct(), "the blob's writers gave direct I/O up");
        }
        let mut w = p.piece_writer(PieceIndex(1)).unwrap();
        w.write(piece(&blob, 1)).unwrap();
        p.mark_stored(w.finish().unwrap()).unwrap();
        p.commit().unwrap();
        assert!(cas.reader(meta.digest()).unwrap().read_all().unwrap() == blob);
    }

    #[test]
    fn a_writer_that_outlives_its_download_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (cas, meta, blob) = partial(dir.path(), 2);
        let first = cas.start_partial(&meta).unwrap();
        let mut stale = first.piece_writer(PieceIndex(0)).unwrap();
        drop(first);
        // The next download of the blob stores piece 0 from an honest peer...
        let mut next = cas.start_partial(&meta).unwrap();
        next.write_piece(PieceIndex(0), piece(&blob, 0)).unwrap();
        // ...and the stale receiver, whose peer sends garbage, cannot write over it.
        let garbage = vec![0xAA; piece(&blob, 0).len()];
        let err = stale.write(&garbage).unwrap_err();
        assert!(matches!(err, CasError::DownloadClosed(_)), "{err}");
        assert!(matches!(stale.finish(), Err(CasError::DownloadClosed(_))));
        next.write_piece(PieceIndex(1), piece(&blob, 1)).unwrap();
        next.commit().unwrap();
        assert!(cas.reader(meta.digest()).unwrap().read_all().unwrap() == blob);
    }

    #[test]
    fn a_corrupt_piece_breaks_the_chain_and_is_blamed_on_its_sender_without_a_blake3_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (cas, meta, blob) = partial(dir.path(), 3);
        assert!(meta.has_chain());
        let mut p = cas.start_partial(&meta).unwrap();
        let mut bad = piece(&blob, 1).to_vec();
        bad[40_000] ^= 0x10;
        // Kept in memory for a reader, or not (then read back for the blame): one bad
        // byte fails the piece, and as the sender's fault, not the metainfo's.
        for keep in [false, true] {
            let mut w = p.piece_writer(PieceIndex(1)).unwrap();
            assert!(
                matches!(w.proof, Proof::Chain(_)),
                "the hash chain alone proves a good piece: no BLAKE3 pass"
            );
            if keep {
                w.keep_bytes();
            }
            w.write(&bad).unwrap();
            let err = w.finish().unwrap_err();
            assert!(
                matches!(
                    err,
                    CasError::Piece(PieceError::HashMismatch {
                        index: PieceIndex(1)
                    })
                ),
                "kept {keep}: {err}"
            );
        }
        assert_eq!(p.bitfield().count_ones(), 0, "nothing bad counted");
        // The honest piece passes, and a kept one hands its bytes over in order.
        let mut w = p.piece_writer(PieceIndex(1)).unwrap();
        w.keep_bytes();
        w.write(piece(&blob, 1)).unwrap();
        let mut verified = w.finish().unwrap();
        assert!(verified.chained);
        let kept = verified.take_bytes().unwrap();
        assert!(kept.concat() == piece(&blob, 1));
        assert!(p.mark_stored(verified).unwrap());
        for i in [0, 2] {
            p.write_piece(PieceIndex(i), piece(&blob, i)).unwrap();
        }
        p.commit().unwrap();
        assert!(cas.reader(meta.digest()).unwrap().read_all().unwrap() == blob);
    }

    #[test]
    fn without_the_digest_check_a_piece_is_proven_by_its_blake3_hash() {
        let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_, meta, blob) = partial(other.path(), 2);
        let cas = Cas::open(CasConfig {
            piece_lengths: PieceLengthTable::uniform(64 * 1024),
            verify_digest_on_commit: false,
            ..CasConfig::at(dir.path())
        })
        .unwrap();
        let p = cas.start_partial(&meta).unwrap();
        let mut w = p.piece_writer(PieceIndex(0)).unwrap();
        assert!(matches!(w.proof, Proof::Blake3(_)));
        let mut bad = piece(&blob, 0).to_vec();
        bad[7] ^= 1;
        w.write(&bad).unwrap();
        assert!(matches!(
            w.finish(),
            Err(CasError::Piece(PieceError::HashMismatch { .. }))
        ));
        let mut w = p.piece_writer(PieceIndex(0)).unwrap();
        w.write(piece(&blob, 0)).unwrap();
        assert!(!w.finish().unwrap().chained);
    }

    /// The filesystem `path` is on is ext4, which takes aligned direct writes and refuses
    /// misaligned ones (tmpfs, say, takes both).
    fn on_ext4(path: &std::path::Path) -> bool {
        const EXT4_SUPER_MAGIC: i64 = 0xEF53;
        // `f_type`'s width differs between targets.
        #[allow(clippy::unnecessary_cast)]
        rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == EXT4_SUPER_MAGIC)
    }
}
