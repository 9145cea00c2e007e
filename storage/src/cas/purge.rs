//! Deleting a blob on purpose (a registry `DELETE`, garbage collection), guarded by its
//! last use.
//!
//! [`Cas::purge`] decides and removes under the store's state lock, the lock every use
//! takes to register itself: opening a reader, an ingest finding the blob already there
//! (both record the use under that lock) and an ingest committing a new copy. So a use
//! either happened before the purge looked, and counts against `unused_since_ms`, or
//! comes after the record is gone and finds no blob (an ingest then stores a fresh copy).
//!
//! A blob with open readers loses its record at once (no new reader opens it) while its
//! file stays for the readers it has; the last one to close removes the file, unless a
//! new copy of the blob has been recorded meanwhile (it owns the path then). A crash in
//! between leaves a file without a record, which the startup sweep deletes.

use super::{BITFIELDS, BLOBS, BlobState, Cas, CasError, Inner, METAINFO, State};
use crate::digest::Digest;

/// What [`Cas::purge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeOutcome {
    /// The store held no record of the blob.
    Absent,
    /// The blob was written or used at or after the guard; it stays.
    Kept {
        /// Its last write or use, in ms since the epoch.
        last_used_ms: u64,
    },
    /// The blob is gone from the store.
    Removed {
        /// Its bytes (a partial blob's whole file).
        freed_bytes: u64,
        /// Readers still had it open: its file goes when the last one closes.
        deferred: bool,
    },
}

impl Cas {
    /// Removes `digest` (complete or partial, pinned or not: a purge is deliberate) unless
    /// `unused_since_ms` is given and the blob was written or used at or after it. A
    /// partial blob being written is [`CasError::Busy`].
    pub fn purge(
        &self,
        digest: &Digest,
        unused_since_ms: Option<u64>,
    ) -> Result<PurgeOutcome, CasError> {
        let inner = self.inner();
        let mut state = inner.lock();
        let Some(record) = inner.record(digest)? else {
            return Ok(PurgeOutcome::Absent);
        };
        let last_used_ms = record
            .created_ms
            .max(record.last_access_ms)
            .max(state.access.get(digest).copied().unwrap_or(0));
        if unused_since_ms.is_some_and(|since| last_used_ms >= since) {
            return Ok(PurgeOutcome::Kept { last_used_ms });
        }
        if state.writers.contains(digest) {
            return Err(CasError::Busy(*digest));
        }
        if record.state == BlobState::Complete && state.readers.contains_key(digest) {
            inner.forget_record(digest)?;
            state.access.remove(digest);
            state.doomed.insert(*digest, record.size);
            return Ok(PurgeOutcome::Removed {
                freed_bytes: record.size,
                deferred: true,
            });
        }
        let freed_bytes = inner.remove(&mut state, &[(*digest, record)])?;
        Ok(PurgeOutcome::Removed {
            freed_bytes,
            deferred: false,
        })
    }

    /// Records a use of `digest` now (a caller that relies on the blob without reading
    /// it, e.g. an upload answered "already there"), which a guarded purge respects.
    pub fn touch(&self, digest: &Digest) {
        self.inner().touch(digest);
    }
}

impl Inner {
    /// Deletes the blob's records in one transaction.
    pub(super) fn forget_record(&self, digest: &Digest) -> Result<(), CasError> {
        let txn = self.begin_write()?;
        {
            let key = digest.to_string();
            txn.open_table(BLOBS)?.remove(key.as_str())?;
            txn.open_table(METAINFO)?.remove(key.as_str())?;
            txn.open_table(BITFIELDS)?.remove(key.as_str())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The last reader of a purged blob closed: remove its file, unless a new copy of the
    /// blob was recorded since (it owns the path now).
    pub(super) fn finish_purge(&self, state: &mut State, digest: &Digest) {
        let Some(size) = state.doomed.remove(digest) else {
            return;
        };
        state.used = state.used.saturating_sub(size);
        match self.record(digest) {
            Ok(None) => {
                let path = self.blob_path(digest);
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    // No record points at it: the sweep deletes it at the next open.
                    tracing::warn!(path = %path.display(), error = %e, "cas: could not delete a purged file");
                }
            }
            Ok(Some(_)) => {}
            Err(e) => tracing::warn!(%digest, error = %e, "cas: purged file left to the sweep"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cas::CasConfig;

    fn store(dir: &std::path::Path) -> (Cas, Digest, Vec<u8>) {
        let cas = Cas::open(CasConfig::at(dir)).unwrap();
        let blob = vec![7u8; 100_000];
        let digest = Digest::sha256_of(&blob);
        cas.ingest(&digest, Some(blob.len() as u64), blob.as_slice())
            .unwrap();
        (cas, digest, blob)
    }

    #[test]
    fn a_guarded_purge_keeps_a_blob_used_since_and_removes_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cas, digest, blob) = store(dir.path());
        let created = cas.info(&digest).unwrap().unwrap().created;
        let created_ms = crate::time::to_ms(created);
        let kept = cas.purge(&digest, Some(created_ms)).unwrap();
        assert_eq!(
            kept,
            PurgeOutcome::Kept {
                last_used_ms: created_ms
            }
        );
        assert!(cas.contains(&digest).unwrap());
        // A use after the guard keeps it too, even one not yet written to the database.
        std::thread::sleep(std::time::Duration::from_millis(3));
        cas.touch(&digest);
        assert!(matches!(
            cas.purge(&digest, Some(created_ms + 2)).unwrap(),
            PurgeOutcome::Kept { .. }
        ));
        let gone = cas.purge(&digest, Some(u64::MAX)).unwrap();
        assert_eq!(
            gone,
            PurgeOutcome::Removed {
                freed_bytes: blob.len() as u64,
                deferred: false
            }
        );
        assert!(!cas.contains(&digest).unwrap());
        assert!(!cas.blob_path(&digest).exists());
        assert_eq!(cas.used_bytes(), 0);
        assert_eq!(cas.purge(&digest, None).unwrap(), PurgeOutcome::Absent);
    }

    #[test]
    fn housekeeping_reads_are_not_uses_but_client_reads_are() {
        let dir = tempfile::tempdir().unwrap();
        let (cas, digest, _) = store(&dir.path().join("housekeeping"));
        let (read, read_digest, _) = store(&dir.path().join("client"));
        std::thread::sleep(std::time::Duration::from_millis(3));
        let guard = crate::time::now_ms();
        std::thread::sleep(std::time::Duration::from_millis(3));
        // A copy to an owner or a backend, and a scrub, read the blob after the guard...
        drop(cas.housekeeping_reader(&digest).unwrap());
        let mut verifier = cas.verifier(&digest, false).unwrap();
        while !verifier.done() {
            verifier.step(1 << 20).unwrap();
        }
        drop(verifier);
        // ...and the guard still removes it: nobody wanted it since.
        assert!(matches!(
            cas.purge(&digest, Some(guard)).unwrap(),
            PurgeOutcome::Removed { .. }
        ));
        // A client's read is a use: the same guard keeps the blob.
        drop(read.reader(&read_digest).unwrap());
        assert!(matches!(
            read.purge(&read_digest, Some(guard)).unwrap(),
            PurgeOutcome::Kept { .. }
        ));
    }

    #[test]
    fn a_purged_blob_being_read_goes_when_its_last_reader_closes() {
        let dir = tempfile::tempdir().unwrap();
        let (cas, digest, blob) = store(dir.path());
        let reader = cas.reader(&digest).unwrap();
        let out = cas.purge(&digest, None).unwrap();
        assert!(matches!(out, PurgeOutcome::Removed { deferred: true, .. }));
        // No new reader, but the open one reads on.
        assert!(matches!(cas.reader(&digest), Err(CasError::NotFound(_))));
        assert_eq!(reader.read_all().unwrap(), blob);
        assert!(cas.blob_path(&digest).exists());
        drop(reader);
        assert!(!cas.blob_path(&digest).exists());
        assert_eq!(cas.used_bytes(), 0);
    }

    #[test]
    fn a_copy_stored_again_while_the_purged_one_is_read_survives_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (cas, digest, blob) = store(dir.path());
        let reader = cas.reader(&digest).unwrap();
        cas.purge(&digest, None).unwrap();
        cas.ingest(&digest, Some(blob.len() as u64), blob.as_slice())
            .unwrap();
        drop(reader);
        assert_eq!(cas.reader(&digest).unwrap().read_all().unwrap(), blob);
        assert_eq!(cas.used_bytes(), blob.len() as u64);
    }
}
