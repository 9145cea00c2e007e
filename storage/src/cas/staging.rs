//! Blobs received before their digest is known.
//!
//! A registry client's chunked upload names its digest only when it finishes, and its
//! length only then too. [`Cas::stage`] takes the bytes as they arrive into a temp file
//! (through the page cache: the commit reads them once more), computing sha256 on the way
//! with its chaining state every `granularity` bytes, the smallest piece length of the
//! store's table. [`Cas::commit_staged`] then checks the digest the client names against
//! the one computed, picks the chaining states at the boundaries of the piece length the
//! now known length calls for (every piece length of the table is a multiple of the
//! smallest), hashes the BLAKE3 pieces in a pass over the file, and commits the file into
//! the store as an ingest does: fsync, rename, record. The bytes are written once.
//!
//! A staged blob that is dropped, or whose digest does not match, deletes its temp file;
//! temp files a crash left behind go at the store's next start, as an ingest's do.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::ingest::{Hashes, Limit, Pass, TempFile, hash_and_write, hash_pieces_from_file};
use super::{Cas, CasError, Ingested};
use crate::chain::ChainState;
use crate::digest::Digest;
use crate::metainfo::{Metainfo, PieceHash, piece_count};

/// Bytes read back per call when the pieces are hashed at commit.
const READ_BACK: usize = 1 << 20;
/// Threads hashing the pieces at commit, at most.
const HASH_THREADS: usize = 4;

/// A blob held in the store's temp directory until its digest is named
/// ([`Cas::commit_staged`]); dropping it deletes the bytes.
pub struct StagedBlob {
    tmp: TempFile,
    digest: Digest,
    length: u64,
    /// Bytes between two of `chain`'s states (0: none were recorded).
    granularity: u32,
    /// The sha256 chaining state every `granularity` bytes, before the end.
    chain: Vec<ChainState>,
}

impl std::fmt::Debug for StagedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedBlob")
            .field("path", &self.tmp.path)
            .field("digest", &self.digest)
            .field("length", &self.length)
            .finish()
    }
}

impl StagedBlob {
    /// The sha256 digest of the bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// How many bytes there are.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The file holding them (to read, not to move: it goes with this value).
    pub fn path(&self) -> &std::path::Path {
        &self.tmp.path
    }
}

impl Cas {
    /// Reads `source` to its end into a temp file, hashing it with sha256; at most
    /// `max_length` bytes (and what the store could ever hold), or [`CasError::NoSpace`].
    /// The file is fsynced when this returns. A failing source or disk leaves nothing.
    pub fn stage(&self, source: impl Read, max_length: u64) -> Result<StagedBlob, CasError> {
        self.stage_inner(source, max_length)
            .map_err(|e| self.check_disk_full(e))
    }

    fn stage_inner(&self, mut source: impl Read, max_length: u64) -> Result<StagedBlob, CasError> {
        let inner = self.inner();
        let tmp = TempFile::create_named(&inner.tmp_dir, "staged")?;
        let granularity = inner
            .config
            .piece_lengths
            .entries
            .iter()
            .map(|e| e.piece_length)
            .min()
            .unwrap_or(0);
        let limit = Limit::Quota {
            max: inner.max_new_blob().min(max_length),
            capacity: inner.capacity(&inner.lock()),
        };
        // Only the algorithm of this digest matters: the bytes are hashed with sha256.
        let algorithm_of = Digest::sha256_of(b"");
        let hashes = Hashes {
            pieces: None,
            chain: Some(granularity),
        };
        let Pass {
            digest,
            length,
            chain,
            ..
        } = hash_and_write(&mut source, &tmp, algorithm_of, limit, hashes)?;
        tmp.file
            .sync_all()
            .map_err(CasError::io("sync", &tmp.path))?;
        // No states means the granularity was not a whole number of sha256 blocks (or
        // the blob is shorter than one): the commit hashes the chain again.
        let granularity = if chain.is_empty() && length > u64::from(granularity) {
            0
        } else {
            granularity
        };
        Ok(StagedBlob {
            tmp,
            digest,
            length,
            granularity,
            chain,
        })
    }

    /// Stores `staged` as blob `expected`, pinned if `pin` (as [`Cas::ingest_pinned`]).
    /// [`CasError::DigestMismatch`] if its bytes do not hash to `expected` (nothing is
    /// stored and the bytes are deleted). A blob already here is answered as such, and
    /// the staged bytes are deleted.
    pub fn commit_staged(
        &self,
        staged: StagedBlob,
        expected: &Digest,
        pin: bool,
    ) -> Result<Ingested, CasError> {
        self.commit_staged_inner(staged, expected, pin)
            .map_err(|e| self.check_disk_full(e))
    }

    fn commit_staged_inner(
        &self,
        staged: StagedBlob,
        expected: &Digest,
        pin: bool,
    ) -> Result<Ingested, CasError> {
        if staged.digest != *expected {
            return Err(CasError::DigestMismatch {
                expected: *expected,
                actual: staged.digest,
            });
        }
        if let Some(existing) = self.existing_pinned(expected, pin)? {
            return Ok(existing);
        }
        let inner = self.inner();
        let _reservation = inner.reserve(staged.length)?;
        let piece_length = inner.config.piece_lengths.piece_length_for(staged.length);
        let tmp = &staged.tmp;
        let metainfo = match states_every(&staged.chain, staged.granularity, piece_length) {
            Some(chain) => {
                let pieces = hash_pieces(&tmp.file, staged.length, piece_length)
                    .map_err(CasError::io("read back", &tmp.path))?;
                Metainfo::new(*expected, staged.length, piece_length, pieces)?.with_chain(chain)?
            }
            None => {
                hash_pieces_from_file(&tmp.file, &tmp.path, *expected, staged.length, piece_length)?
            }
        };
        self.commit_ingest(staged.tmp, metainfo, pin)
    }
}

/// The BLAKE3 hashes of the `length` bytes of `file` in pieces of `piece_length`, on up
/// to [`HASH_THREADS`] threads (each a run of whole pieces): the commit is the one step
/// of a chunked upload its client waits for, with the machine otherwise idle.
fn hash_pieces(file: &File, length: u64, piece_length: u32) -> io::Result<Vec<PieceHash>> {
    let count = piece_count(length, piece_length);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(HASH_THREADS) as u64;
    let per_thread = count.div_ceil(threads.max(1)).max(1);
    let piece = u64::from(piece_length);
    let runs: Vec<(u64, u64)> = (0..count)
        .step_by(per_thread as usize)
        .map(|first| (first, (first + per_thread).min(count)))
        .collect();
    let hashed = std::thread::scope(|s| {
        let workers: Vec<_> = runs
            .iter()
            .map(|&(first, end)| {
                s.spawn(move || -> io::Result<Vec<PieceHash>> {
                    let mut buf = vec![0u8; READ_BACK];
                    let mut out = Vec::with_capacity((end - first) as usize);
                    for index in first..end {
                        let start = index * piece;
                        let stop = (start + piece).min(length);
                        let mut hasher = blake3::Hasher::new();
                        let mut at = start;
                        while at < stop {
                            let want =
                                usize::try_from(stop - at).map_or(READ_BACK, |n| n.min(READ_BACK));
                            file.read_exact_at(&mut buf[..want], at)?;
                            hasher.update(&buf[..want]);
                            at += want as u64;
                        }
                        out.push(PieceHash(*hasher.finalize().as_bytes()));
                    }
                    Ok(out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a hashing thread panicked")))
            })
            .collect::<io::Result<Vec<_>>>()
    })?;
    Ok(hashed.into_iter().flatten().collect())
}

/// The states at every `piece_length` bytes, from states recorded every `granularity`
/// bytes; `None` when those do not line up (the chain is then hashed again).
fn states_every(
    chain: &[ChainState],
    granularity: u32,
    piece_length: u32,
) -> Option<Vec<ChainState>> {
    if granularity == 0 || !piece_length.is_multiple_of(granularity) {
        return None;
    }
    let step = (piece_length / granularity) as usize;
    Some(chain.iter().skip(step - 1).step_by(step).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::CasConfig;
    use crate::metainfo::{PieceLengthEntry, PieceLengthTable};

    const KIB: u32 = 1024;

    /// A store whose piece length grows with the blob: 16, 64 and 256 KiB.
    fn store(dir: &std::path::Path) -> Cas {
        store_with(
            dir,
            [(0, 16 * KIB), (100_000, 64 * KIB), (600_000, 256 * KIB)],
        )
    }

    fn store_with(dir: &std::path::Path, table: [(u64, u32); 3]) -> Cas {
        let mut config = CasConfig::at(dir);
        let entries = table
            .into_iter()
            .map(|(min_blob_size, piece_length)| PieceLengthEntry {
                min_blob_size,
                piece_length,
            })
            .collect();
        config.piece_lengths = PieceLengthTable { entries };
        Cas::open(config).unwrap()
    }

    /// Files in the store's temp directory.
    fn temp_files(root: &std::path::Path) -> usize {
        std::fs::read_dir(root.join("tmp")).unwrap().count()
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn a_staged_blob_commits_with_the_metainfo_an_ingest_computes() {
        // The last table's middle piece length is no multiple of the smallest: the chain
        // is hashed again at commit.
        let odd_table = [(0, 16 * KIB), (100_000, 24 * KIB), (600_000, 256 * KIB)];
        let sizes = [
            0, 1, 16_383, 16_384, 16_385, 99_999, 100_000, 131_072, 600_000, 786_432, 1_000_001,
        ];
        for (n, odd) in sizes.into_iter().flat_map(|n| [(n, false), (n, true)]) {
            let data = bytes(n);
            let digest = Digest::sha256_of(&data);
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (staging, ingesting) = if odd {
                (
                    store_with(a.path(), odd_table),
                    store_with(b.path(), odd_table),
                )
            } else {
                (store(a.path()), store(b.path()))
            };
            let staged = staging.stage(&data[..], u64::MAX).unwrap();
            assert_eq!((staged.digest(), staged.length()), (&digest, n as u64));
            let committed = staging.commit_staged(staged, &digest, true).unwrap();
            let ingested = ingesting
                .ingest(&digest, Some(n as u64), &data[..])
                .unwrap();
            assert_eq!(committed.metainfo, ingested.metainfo, "{n} bytes");
            assert!(committed.info.pinned && !committed.already_present);
            assert_eq!(staging.reader(&digest).unwrap().read_all().unwrap(), data);
            assert_eq!(temp_files(a.path()), 0);
        }
    }

    #[test]
    fn a_wrong_digest_stores_nothing_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let cas = store(dir.path());
        let data = bytes(50_000);
        let staged = cas.stage(&data[..], u64::MAX).unwrap();
        let wrong = Digest::sha256_of(b"something else");
        let err = cas.commit_staged(staged, &wrong, true).unwrap_err();
        assert!(matches!(err, CasError::DigestMismatch { .. }), "{err}");
        assert!(cas.info(&wrong).unwrap().is_none());
        assert!(cas.info(&Digest::sha256_of(&data)).unwrap().is_none());
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[test]
    fn too_many_bytes_or_a_failing_source_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cas = store(dir.path());
        let err = cas.stage(&bytes(50_000)[..], 49_999).unwrap_err();
        assert!(matches!(err, CasError::NoSpace { .. }), "{err}");
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("connection lost"));
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
        }
        let err = cas.stage(Broken(30_000), u64::MAX).unwrap_err();
        assert!(
            matches!(err, CasError::Source { read: 30_000, .. }),
            "{err}"
        );
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[test]
    fn a_staged_blob_dropped_or_already_stored_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let cas = store(dir.path());
        let data = bytes(3_000);
        let digest = Digest::sha256_of(&data);
        drop(cas.stage(&data[..], u64::MAX).unwrap());
        assert_eq!(temp_files(dir.path()), 0);
        cas.ingest(&digest, Some(3_000), &data[..]).unwrap();
        let staged = cas.stage(&data[..], u64::MAX).unwrap();
        let again = cas.commit_staged(staged, &digest, true).unwrap();
        assert!(again.already_present && again.info.pinned);
        assert_eq!(temp_files(dir.path()), 0);
    }
}
