//! The file system under the store: the effective quota, and whether the node can store.
//!
//! The configured quota (`capacity_bytes`, 100 GiB by default) can be far more than the
//! file system holds; a store that trusts it writes until the disk is full. So the store
//! works to an *effective* quota, the configured one clamped to what the file system can
//! hold for it:
//!
//! ```text
//! effective = min(capacity_bytes, on_disk + available - reserve)
//! ```
//!
//! where `on_disk` is what the store's files take now (complete blobs, the pieces of
//! partial downloads written so far, ingest temp files), `available` what the file system
//! has free for unprivileged writers (`statvfs`'s `f_bavail`), and `reserve` the space
//! left free for everything else: [`CasConfig::fs_reserve_bytes`], or
//! [`CasConfig::fs_reserve_fraction`] of the file system if that is less. A partial
//! download counts at its full length in the quota but only at what it wrote in
//! `on_disk` (its file is sparse), so the rest of it must still fit in `available`. The
//! clamp is computed at open, at each eviction run, and before a reservation when the last
//! one is more than [`REFRESH_EVERY`] old; it is logged once when it starts (and when it
//! ends).
//!
//! Metadata: a redb commit that fails for want of space leaves the database refusing
//! every later transaction until it is reopened; the store reopens it by itself at the
//! next transaction (see [`crate::redb_handle`]), which costs a repair. To make that rare,
//! no metadata write starts while the file system has less than
//! [`CasConfig::metadata_headroom_bytes`] (default [`METADATA_HEADROOM`]) free (it fails as
//! a full disk would), and deletions on a full disk remove files before their records, to
//! make room first.
//!
//! Readiness ([`Cas::space`]): a store cannot take new blobs while the file system has
//! less than `reserve` free, for [`CasConfig::disk_full_hold_secs`] after a write failed
//! with ENOSPC (or EDQUOT), and while its metadata database could not be reopened.
//!
//! [`CasConfig::fs_reserve_bytes`]: super::CasConfig::fs_reserve_bytes
//! [`CasConfig::fs_reserve_fraction`]: super::CasConfig::fs_reserve_fraction
//! [`CasConfig::disk_full_hold_secs`]: super::CasConfig::disk_full_hold_secs
//! [`CasConfig::metadata_headroom_bytes`]: super::CasConfig::metadata_headroom_bytes

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Cas, CasError, Inner, State};

/// Free space a metadata (redb) write needs by default
/// ([`CasConfig::metadata_headroom_bytes`](super::CasConfig::metadata_headroom_bytes)):
/// below it, the store refuses to write metadata (see [`Inner::begin_write`]).
pub const METADATA_HEADROOM: u64 = 1 << 20;

/// Longest a reservation trusts the last look at the file system.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// What [`Cas::space`] found: the quota, the file system, and whether the store can take
/// new blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceStatus {
    /// The configured quota (`capacity_bytes`).
    pub configured_bytes: u64,
    /// The quota in force: the configured one clamped to the file system.
    pub effective_bytes: u64,
    /// Bytes the file system has free (for unprivileged writers).
    pub fs_available_bytes: u64,
    /// The file system's size.
    pub fs_total_bytes: u64,
    /// Bytes left free for everything else.
    pub reserve_bytes: u64,
    /// Writes that failed because the disk was full, since the store opened.
    pub disk_full_errors: u64,
    /// Times the metadata database was reopened after a failed write poisoned it.
    pub metadata_reopens: u64,
    /// Why the store cannot take new blobs now; `None` when it can.
    pub cannot_store: Option<String>,
}

/// The file system's size and free space.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FsSpace {
    pub(crate) total: u64,
    pub(crate) available: u64,
}

/// `statvfs` of the file system holding `path`.
pub(crate) fn fs_space(path: &Path) -> Result<FsSpace, CasError> {
    let s = rustix::fs::statvfs(path)
        .map_err(|e| CasError::io("measure the file system of", path)(e.into()))?;
    Ok(FsSpace {
        total: s.f_blocks.saturating_mul(s.f_frsize),
        available: s.f_bavail.saturating_mul(s.f_frsize),
    })
}

/// The disk-space bookkeeping of [`State`].
#[derive(Debug, Default)]
pub(crate) struct SpaceState {
    /// The effective quota; `None` until first computed.
    pub(crate) effective: Option<u64>,
    /// When the file system was last looked at.
    pub(crate) refreshed: Option<Instant>,
    /// The last write that failed because the disk was full.
    pub(crate) disk_full_at: Option<Instant>,
    /// How many such writes there were.
    pub(crate) disk_full_errors: u64,
}

impl Inner {
    /// Whether the file system has `metadata_headroom_bytes` free (or cannot be measured).
    pub(crate) fn metadata_headroom(&self) -> bool {
        let headroom = self.config.metadata_headroom_bytes;
        fs_space(&self.config.root).map_or(true, |fs| fs.available >= headroom)
    }

    /// A metadata write transaction, refused with a "no space left on device" error
    /// before redb is touched when the file system has less than `metadata_headroom_bytes`
    /// free: a redb commit that fails on a full disk leaves the database refusing every
    /// later transaction until it is reopened (which the store does, at a repair's cost).
    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, CasError> {
        if !self.metadata_headroom() {
            return Err(CasError::Io {
                op: "write metadata under",
                path: self.config.root.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "no space left on device (less than {} bytes free)",
                        self.config.metadata_headroom_bytes
                    ),
                ),
            });
        }
        Ok(self.db.begin_write()?)
    }

    /// The reserve left free on a file system of `total` bytes.
    pub(crate) fn reserve_for(&self, total: u64) -> u64 {
        let by_fraction = (total as f64 * self.config.fs_reserve_fraction) as u64;
        self.config.fs_reserve_bytes.min(by_fraction)
    }

    /// The quota in force (the configured one until the file system was looked at).
    pub(super) fn capacity(&self, state: &State) -> u64 {
        state.space.effective.unwrap_or(self.config.capacity_bytes)
    }

    /// Recomputes the effective quota if the last look is older than `max_age` (always
    /// with `Duration::ZERO`). A file system that cannot be measured leaves the quota as
    /// it was, with a warning: the store keeps working to the configured one.
    pub(super) fn refresh_space(&self, state: &mut State, max_age: Duration) {
        if state
            .space
            .refreshed
            .is_some_and(|t| t.elapsed() < max_age && max_age > Duration::ZERO)
        {
            return;
        }
        state.space.refreshed = Some(Instant::now());
        let fs = match fs_space(&self.config.root) {
            Ok(fs) => fs,
            Err(e) => {
                tracing::warn!(error = %e, "cas: cannot measure the file system; using the configured quota");
                return;
            }
        };
        let on_disk = state
            .used
            .saturating_sub(unwritten_bytes(&self.partial_dir))
            .saturating_add(allocated_bytes(&self.tmp_dir));
        let reserve = self.reserve_for(fs.total);
        let fits = on_disk.saturating_add(fs.available).saturating_sub(reserve);
        let configured = self.config.capacity_bytes;
        let effective = configured.min(fits).max(1);
        let was_clamped = state.space.effective.is_some_and(|e| e < configured);
        let clamped = effective < configured;
        if clamped && !was_clamped {
            tracing::warn!(
                root = %self.config.root.display(),
                configured,
                effective,
                fs_total = fs.total,
                fs_available = fs.available,
                reserve,
                "cas: the file system holds less than the configured quota; clamping the quota to it"
            );
        } else if was_clamped && !clamped {
            tracing::info!(
                configured,
                "cas: the file system holds the configured quota again"
            );
        }
        state.space.effective = Some(effective);
    }
}

impl Cas {
    /// The quota in force: `capacity_bytes` clamped to what the file system can hold (see
    /// the module docs).
    pub fn capacity_bytes(&self) -> u64 {
        let inner = self.inner();
        inner.capacity(&inner.lock())
    }

    /// Looks at the file system again and recomputes the effective quota now.
    pub fn refresh_capacity(&self) -> u64 {
        let inner = self.inner();
        let mut state = inner.lock();
        inner.refresh_space(&mut state, Duration::ZERO);
        inner.capacity(&state)
    }

    /// Records that a write failed because the disk was full (the store marks itself
    /// unable to store for `disk_full_hold_secs`). Callers that see
    /// [`CasError::is_disk_full`] errors from the store call it; the store's own write
    /// paths do.
    pub fn note_disk_full(&self) {
        let inner = self.inner();
        let mut state = inner.lock();
        state.space.disk_full_at = Some(Instant::now());
        state.space.disk_full_errors += 1;
        // The next reservation looks at the file system again.
        state.space.refreshed = None;
    }

    /// The quota, the file system's space now, and whether the store can take new blobs.
    pub fn space(&self) -> SpaceStatus {
        let inner = self.inner();
        let fs = fs_space(&inner.config.root);
        let mut state = inner.lock();
        inner.refresh_space(&mut state, REFRESH_EVERY);
        let (total, available) = match &fs {
            Ok(fs) => (fs.total, fs.available),
            Err(_) => (0, 0),
        };
        let reserve = inner.reserve_for(total);
        let hold = Duration::from_secs(inner.config.disk_full_hold_secs);
        let metadata_down = inner.db.unavailable();
        let cannot_store = match (&fs, state.space.disk_full_at) {
            _ if metadata_down.is_some() => metadata_down,
            (Err(e), _) => Some(format!("the store's file system cannot be measured: {e}")),
            (Ok(_), Some(at)) if at.elapsed() < hold => Some(format!(
                "a write to the store failed {}s ago: no space left on device ({available} bytes free)",
                at.elapsed().as_secs()
            )),
            (Ok(_), _) if available < reserve => Some(format!(
                "the store's file system has {available} bytes free, below the {reserve}-byte reserve"
            )),
            _ => None,
        };
        SpaceStatus {
            configured_bytes: inner.config.capacity_bytes,
            effective_bytes: inner.capacity(&state),
            fs_available_bytes: available,
            fs_total_bytes: total,
            reserve_bytes: reserve,
            disk_full_errors: state.space.disk_full_errors,
            metadata_reopens: inner.db.reopens(),
            cannot_store,
        }
    }

    /// Passes `e` on, noting it first if it says the disk is full.
    pub fn check_disk_full(&self, e: CasError) -> CasError {
        if e.is_disk_full() {
            self.note_disk_full();
        }
        e
    }
}

/// The bytes partial downloads have not written yet: their files are sparse, so the file
/// system has not given them those blocks.
fn unwritten_bytes(dir: &Path) -> u64 {
    files(dir)
        .map(|m| m.len().saturating_sub(m.blocks().saturating_mul(512)))
        .sum()
}

/// The bytes the file system gave the files in `dir`.
fn allocated_bytes(dir: &Path) -> u64 {
    files(dir).map(|m| m.blocks().saturating_mul(512)).sum()
}

fn files(dir: &Path) -> impl Iterator<Item = fs::Metadata> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(fs::Metadata::is_file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::CasConfig;

    #[test]
    fn the_quota_is_clamped_to_what_the_file_system_holds_less_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let config = CasConfig {
            capacity_bytes: u64::MAX / 2,
            ..CasConfig::at(dir.path())
        };
        let cas = Cas::open(config).unwrap();
        let fs = fs_space(dir.path()).unwrap();
        let space = cas.space();
        assert_eq!(space.configured_bytes, u64::MAX / 2);
        assert!(space.effective_bytes <= fs.total, "{space:?}");
        assert_eq!(space.effective_bytes, cas.capacity_bytes());
        assert_eq!(
            space.reserve_bytes,
            (1 << 30).min((fs.total as f64 * 0.05) as u64)
        );
        // A quota the file system holds is left alone.
        let small = CasConfig {
            capacity_bytes: 1 << 20,
            ..CasConfig::at(dir.path().join("small"))
        };
        assert_eq!(Cas::open(small).unwrap().refresh_capacity(), 1 << 20);
    }

    #[test]
    fn a_disk_full_error_marks_the_store_unable_to_store_for_the_hold() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(CasConfig::at(dir.path())).unwrap();
        let before = cas.space();
        let full = CasError::Io {
            op: "write",
            path: dir.path().into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert!(full.is_disk_full());
        let other = CasError::Io {
            op: "write",
            path: dir.path().into(),
            source: std::io::Error::from_raw_os_error(5),
        };
        assert!(!other.is_disk_full());
        drop(cas.check_disk_full(other));
        assert_eq!(cas.space().disk_full_errors, 0);
        drop(cas.check_disk_full(full));
        let after = cas.space();
        assert_eq!(after.disk_full_errors, 1);
        let why = after.cannot_store.unwrap();
        assert!(why.contains("no space left on device"), "{why}");
        // Unless the test machine's disk is itself nearly full, it could store before.
        if before.fs_available_bytes >= before.reserve_bytes {
            assert_eq!(before.cannot_store, None);
        }
    }
}
