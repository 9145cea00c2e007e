//! Which stored copies an agent has checked against their digest since their files last
//! changed, so that a warm read checks a copy once, not on every read.
//!
//! Every piece is checked as it arrives, but the file can change afterwards (a stray write,
//! an operator's tool, a corrupting disk). An agent therefore hashes a complete copy before
//! its first local read, and again whenever the file's [`FileStamp`] (inode, length, mtime
//! and ctime) is no longer the one it checked: any write through the file system moves
//! ctime, which no user-space call can set back. Rot below the file system, which changes
//! no stamp, is left to the copy being checked again after a restart (the map lives in
//! memory) and to clients, which check digests themselves.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use kraken_storage::Digest;

use crate::bounded::BoundedMap;

/// Copies remembered; past this the oldest are forgotten and hashed again on their next
/// read.
const REMEMBERED: usize = 65_536;

/// What identifies one version of a file's contents, short of reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of the file at `path`, `None` if it cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The stamps of the copies found to match their digests.
#[derive(Debug)]
pub struct VerifiedCopies {
    stamps: Mutex<BoundedMap<Digest, FileStamp>>,
    hashed: AtomicU64,
}

impl Default for VerifiedCopies {
    fn default() -> Self {
        VerifiedCopies {
            stamps: Mutex::new(BoundedMap::new(REMEMBERED)),
            hashed: AtomicU64::new(0),
        }
    }
}

impl VerifiedCopies {
    /// Whether `digest`'s copy was checked while its file had exactly `stamp`.
    pub fn is_verified(&self, digest: &Digest, stamp: &FileStamp) -> bool {
        self.lock().get(digest) == Some(stamp)
    }

    /// Remembers that `digest`'s copy matched while its file had `stamp`.
    pub fn verified(&self, digest: Digest, stamp: FileStamp) {
        self.lock().insert(digest, stamp);
    }

    /// Counts one copy hashed whole because it was not known good under its stamp.
    pub fn count_hash(&self) {
        self.hashed.fetch_add(1, Ordering::Relaxed);
    }

    /// Copies hashed whole so far.
    pub fn hashes(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// Forgets `digest` (its copy was evicted or found corrupt).
    pub fn forget(&self, digest: &Digest) {
        self.lock().remove(digest);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoundedMap<Digest, FileStamp>> {
        self.stamps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_to_the_file_changes_its_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"hello").unwrap();
        let before = FileStamp::of(&path).unwrap();
        assert_eq!(FileStamp::of(&path), Some(before));
        // The same length, one byte flipped: only the times tell. Wait for the clock to
        // move past the file system's timestamp granularity.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            std::fs::write(&path, b"hellp").unwrap();
            if FileStamp::of(&path) != Some(before) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the stamp never moved"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(FileStamp::of(&dir.path().join("gone")), None);
    }

    #[test]
    fn copies_are_verified_only_under_the_stamp_they_were_checked_with() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"hello").unwrap();
        let stamp = FileStamp::of(&path).unwrap();
        let digest = Digest::of(kraken_storage::DigestAlgorithm::Sha256, b"hello");
        let copies = VerifiedCopies::default();
        assert!(!copies.is_verified(&digest, &stamp));
        copies.verified(digest, stamp);
        assert!(copies.is_verified(&digest, &stamp));
        let other = FileStamp {
            ctime: (stamp.ctime.0 + 1, 0),
            ..stamp
        };
        assert!(!copies.is_verified(&digest, &other));
        copies.forget(&digest);
        assert!(!copies.is_verified(&digest, &stamp));
    }
}
