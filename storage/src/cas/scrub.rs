//! Re-verifying a stored blob, and setting a corrupt one aside: the store's half of an
//! origin's scrubbing.
//!
//! A [`Verifier`] reads a complete blob in steps the caller paces (so a scrubber can hold
//! a read rate) and checks it the two ways peers depend on: the bytes hash to the digest,
//! and every piece hashes (BLAKE3) to the piece hash the stored metainfo lists, the hash
//! agents check each piece they receive against. It holds a [`BlobReader`], so the blob is
//! neither evicted nor deleted under it. With `drop_cache`, every range it read is dropped
//! from the page cache afterwards (`POSIX_FADV_DONTNEED`), so a scrub walking the store
//! does not push out the blobs being served; callers pass false for a blob being served
//! right now, whose pages are wanted.
//!
//! [`Cas::quarantine`] takes a corrupt blob out of the store at once: its record and
//! metainfo go (so nothing opens, serves or describes it any more), its file moves to
//! `quarantine/` under the store's root for a post-mortem, within a byte budget that
//! drops the oldest quarantined files first (a blob larger than the budget is deleted
//! instead). Readers that already hold the file read on from the moved file.

use std::fs;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::SystemTime;

use super::{BlobReader, BlobState, Cas, CasError};
use crate::bitfield::PieceIndex;
use crate::digest::{Digest, DigestHasher};
use crate::metainfo::PieceHasher;

/// Most bad pieces a [`Corruption`] names (it counts them all).
pub const MAX_NAMED_PIECES: usize = 16;

/// What a finished [`Verifier`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every byte as the digest and the metainfo say.
    Intact,
    /// The stored copy is not the blob.
    Corrupt(Corruption),
}

/// How a stored copy differs from its blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The first [`MAX_NAMED_PIECES`] pieces whose hash is not the metainfo's.
    pub bad_pieces: Vec<PieceIndex>,
    /// How many pieces failed.
    pub bad_piece_count: u64,
    /// The bytes read, when fewer than the blob's length (a truncated file).
    pub short: Option<u64>,
    /// Whether the bytes still hash to the digest (a corrupt metainfo, if so).
    pub digest_matches: bool,
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bad pieces", self.bad_piece_count)?;
        if !self.bad_pieces.is_empty() {
            let named: Vec<String> = self.bad_pieces.iter().map(|p| p.0.to_string()).collect();
            write!(f, " (first: {})", named.join(", "))?;
        }
        if let Some(n) = self.short {
            write!(f, ", file ends after {n} bytes")?;
        }
        if self.digest_matches {
            write!(f, ", bytes hash to the digest (the metainfo is wrong)")?;
        }
        Ok(())
    }
}

/// What [`Cas::quarantine`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quarantined {
    /// The store held no complete copy.
    Absent,
    /// The copy left the store; its file is here now.
    SetAside(PathBuf),
    /// The copy left the store; its file was deleted (larger than the budget, or it
    /// could not be moved).
    Deleted,
}

/// Re-reads one complete blob; see the module docs.
pub struct Verifier {
    reader: BlobReader,
    digest_hasher: DigestHasher,
    piece_hasher: PieceHasher,
    offset: u64,
    /// The file ended before the blob's length.
    short: bool,
    drop_cache: bool,
    buf: Vec<u8>,
}

impl Cas {
    /// A verifier of the complete blob `digest` ([`CasError::NotFound`] if there is none;
    /// [`CasError::CorruptRecord`] if its metainfo is missing).
    pub fn verifier(&self, digest: &Digest, drop_cache: bool) -> Result<Verifier, CasError> {
        let reader = self.housekeeping_reader(digest)?;
        let piece_length = reader.metainfo().piece_length();
        Ok(Verifier {
            digest_hasher: digest.hasher(),
            piece_hasher: PieceHasher::new(piece_length),
            reader,
            offset: 0,
            short: false,
            drop_cache,
            buf: Vec::new(),
        })
    }

    /// Takes the complete blob `digest` out of the store (see the module docs), pinned or
    /// not: a corrupt copy protects nothing.
    pub fn quarantine(&self, digest: &Digest, keep_bytes: u64) -> Result<Quarantined, CasError> {
        let inner = self.inner();
        let mut state = inner.lock();
        let record = match inner.record(digest)? {
            Some(r) if r.state == BlobState::Complete => r,
            _ => return Ok(Quarantined::Absent),
        };
        inner.forget_record(digest)?;
        state.access.remove(digest);
        state.used = state.used.saturating_sub(record.size);
        drop(state);
        let path = inner.blob_path(digest);
        let dir = self.config().root.join("quarantine");
        let stamp = crate::time::to_ms(SystemTime::now());
        let aside = dir.join(format!("{}.{stamp}", digest.hex()));
        let moved = record.size <= keep_bytes
            && fs::create_dir_all(&dir).is_ok()
            && fs::rename(&path, &aside).is_ok();
        if !moved {
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                // No record points at it: the sweep deletes it at the next open.
                tracing::warn!(path = %path.display(), error = %e, "cas: could not delete a quarantined file");
            }
            return Ok(Quarantined::Deleted);
        }
        prune(&dir, keep_bytes);
        Ok(Quarantined::SetAside(aside))
    }
}

/// Deletes the oldest files of `dir` until the rest take at most `keep_bytes`.
fn prune(dir: &std::path::Path, keep_bytes: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    // Newest first: they are kept first.
    files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.2.cmp(&a.2)));
    let mut kept = 0u64;
    for (_, len, path) in files {
        kept = kept.saturating_add(len);
        if kept > keep_bytes {
            let _ = fs::remove_file(path);
        }
    }
}

impl Verifier {
    /// The blob's length.
    pub fn len(&self) -> u64 {
        self.reader.len()
    }

    /// True for the empty blob.
    pub fn is_empty(&self) -> bool {
        self.reader.is_empty()
    }

    /// Bytes checked so far.
    pub fn checked(&self) -> u64 {
        self.offset
    }

    /// Whether every byte has been read.
    pub fn done(&self) -> bool {
        self.short || self.offset >= self.len()
    }

    /// Reads and hashes up to `max` more bytes; returns how many (0 once done).
    pub fn step(&mut self, max: usize) -> Result<u64, CasError> {
        if self.done() {
            return Ok(0);
        }
        let want = usize::try_from(self.len() - self.offset)
            .unwrap_or(usize::MAX)
            .min(max.max(1));
        self.buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            let n = self
                .reader
                .read_at(self.offset + got as u64, &mut self.buf[got..want])?;
            if n == 0 {
                self.short = true;
                break;
            }
            got += n;
        }
        let bytes = &self.buf[..got];
        self.digest_hasher.update(bytes);
        self.piece_hasher.update(bytes);
        if self.drop_cache && got > 0 {
            // Advice only: a failure costs the page cache, never the check.
            let _ = rustix::fs::fadvise(
                self.reader.file().as_fd(),
                self.offset,
                std::num::NonZeroU64::new(got as u64),
                rustix::fs::Advice::DontNeed,
            );
        }
        self.offset += got as u64;
        Ok(got as u64)
    }

    /// The verdict on the bytes read (call once [`Verifier::done`]; earlier, the unread
    /// rest counts as missing).
    pub fn finish(self) -> Verdict {
        let metainfo = self.reader.metainfo().clone();
        let digest = *self.reader.digest();
        let digest_matches = !self.short && self.digest_hasher.finish() == digest;
        let expected = metainfo.piece_hashes();
        let found = self
            .piece_hasher
            .finish(digest)
            .map(|m| m.piece_hashes().to_vec())
            .unwrap_or_default();
        let mut bad = Vec::new();
        let mut count = 0u64;
        for (i, hash) in expected.iter().enumerate() {
            if found.get(i) != Some(hash) {
                count += 1;
                if bad.len() < MAX_NAMED_PIECES {
                    bad.push(PieceIndex(u32::try_from(i).unwrap_or(u32::MAX)));
                }
            }
        }
        let short = (self.offset < metainfo.length()).then_some(self.offset);
        if count == 0 && digest_matches && short.is_none() {
            return Verdict::Intact;
        }
        Verdict::Corrupt(Corruption {
            bad_pieces: bad,
            bad_piece_count: count,
            short,
            digest_matches,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cas::test_blobs;
    use std::os::unix::fs::FileExt;

    fn verify(cas: &Cas, digest: &Digest, step: usize) -> Verdict {
        let mut v = cas.verifier(digest, true).unwrap();
        while v.step(step).unwrap() > 0 {}
        assert!(v.done());
        v.finish()
    }

    fn stored(pieces: u32) -> (tempfile::TempDir, Cas, Digest, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (cas, meta, blob) = test_blobs::partial(dir.path(), pieces);
        let digest = *meta.digest();
        cas.ingest(&digest, Some(blob.len() as u64), blob.as_slice())
            .unwrap();
        (dir, cas, digest, blob)
    }

    fn flip(cas: &Cas, digest: &Digest, at: u64) {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(cas.blob_path(digest))
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    }

    #[test]
    fn an_intact_blob_passes_in_any_step_size() {
        let (_dir, cas, digest, blob) = stored(5);
        for step in [1000, 64 * 1024, 1 << 20] {
            assert_eq!(verify(&cas, &digest, step), Verdict::Intact);
        }
        let mut v = cas.verifier(&digest, false).unwrap();
        assert_eq!(v.step(usize::MAX).unwrap(), blob.len() as u64);
        assert_eq!(v.checked(), blob.len() as u64);
        assert_eq!(v.finish(), Verdict::Intact);
    }

    #[test]
    fn a_flipped_bit_names_its_piece() {
        let (_dir, cas, digest, _) = stored(5);
        flip(&cas, &digest, 3 * 64 * 1024 + 17);
        match verify(&cas, &digest, 100_000) {
            Verdict::Corrupt(c) => {
                assert_eq!(c.bad_pieces, vec![PieceIndex(3)]);
                assert_eq!(c.bad_piece_count, 1);
                assert!(!c.digest_matches);
                assert_eq!(c.short, None);
                assert!(c.to_string().contains("first: 3"), "{c}");
            }
            Verdict::Intact => panic!("a flipped bit passed"),
        }
    }

    #[test]
    fn a_truncated_file_is_corrupt() {
        let (_dir, cas, digest, blob) = stored(3);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(cas.blob_path(&digest))
            .unwrap();
        f.set_len(blob.len() as u64 - 10).unwrap();
        match verify(&cas, &digest, 1 << 20) {
            Verdict::Corrupt(c) => {
                assert_eq!(c.short, Some(blob.len() as u64 - 10));
                assert_eq!(c.bad_pieces, vec![PieceIndex(2)]);
            }
            Verdict::Intact => panic!("a truncated file passed"),
        }
    }

    #[test]
    fn quarantine_takes_the_blob_out_and_keeps_its_file_aside_within_the_budget() {
        let (dir, cas, digest, blob) = stored(2);
        let len = blob.len() as u64;
        // A reader from before keeps reading the moved file.
        let reader = cas.reader(&digest).unwrap();
        let Quarantined::SetAside(aside) = cas.quarantine(&digest, len).unwrap() else {
            panic!("not set aside")
        };
        assert!(aside.starts_with(dir.path().join("quarantine")));
        assert_eq!(fs::read(&aside).unwrap(), blob);
        assert!(!cas.contains(&digest).unwrap());
        assert!(cas.metainfo(&digest).unwrap().is_none());
        assert!(matches!(cas.reader(&digest), Err(CasError::NotFound(_))));
        assert_eq!(cas.used_bytes(), 0);
        assert_eq!(reader.read_all().unwrap(), blob);
        drop(reader);
        assert!(
            aside.exists(),
            "the reader's close leaves the set-aside copy"
        );
        // Gone already: nothing to do.
        assert_eq!(cas.quarantine(&digest, len).unwrap(), Quarantined::Absent);
        // A fresh copy goes in as usual, and quarantining it again drops the older file
        // to stay within the budget.
        cas.ingest(&digest, Some(len), blob.as_slice()).unwrap();
        assert_eq!(cas.used_bytes(), len);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let Quarantined::SetAside(second) = cas.quarantine(&digest, len).unwrap() else {
            panic!("not set aside")
        };
        assert!(second.exists());
        let left = fs::read_dir(dir.path().join("quarantine")).unwrap().count();
        assert_eq!(left, 1, "the budget holds one copy");
        // Larger than the budget: deleted.
        cas.ingest(&digest, Some(len), blob.as_slice()).unwrap();
        assert_eq!(
            cas.quarantine(&digest, len - 1).unwrap(),
            Quarantined::Deleted
        );
        assert!(!cas.blob_path(&digest).exists());
        // The store reopens clean: no record, no orphan.
        drop(cas);
        let cas = Cas::open(crate::cas::CasConfig {
            piece_lengths: crate::metainfo::PieceLengthTable::uniform(64 * 1024),
            ..crate::cas::CasConfig::at(dir.path())
        })
        .unwrap();
        assert_eq!(cas.startup_sweep(), &crate::cas::SweepReport::default());
    }
}
