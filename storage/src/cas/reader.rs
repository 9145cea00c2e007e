//! Reading complete blobs: whole, by byte range, or by piece.
//!
//! A [`BlobReader`] holds the blob open and registers itself with the store, which then
//! neither evicts nor deletes the blob until the reader is dropped. Reads use positioned
//! I/O (`pread`), so one reader can serve concurrent requests. [`BlobReader::copy_range_to`]
//! goes through `std::io::copy` on a file handle, which Linux turns into `sendfile`,
//! `splice` or `copy_file_range` when the destination is a socket, pipe or file: zero-copy
//! where the OS allows.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::meta::BlobState;
use super::{Cas, CasError};
use crate::bitfield::PieceIndex;
use crate::digest::Digest;
use crate::metainfo::Metainfo;

/// An open, complete blob.
pub struct BlobReader {
    cas: Cas,
    digest: Digest,
    metainfo: Arc<Metainfo>,
    file: File,
    path: PathBuf,
}

impl BlobReader {
    /// Opens `digest`; `is_use` records the opening as a use of the blob.
    pub(crate) fn open(cas: Cas, digest: Digest, is_use: bool) -> Result<Self, CasError> {
        let inner = cas.inner();
        let path = inner.blob_path(&digest);
        // Registering under the lock closes the race with eviction.
        let mut state = inner.lock();
        match inner.record(&digest)? {
            Some(r) if r.state == BlobState::Complete => {}
            _ => return Err(CasError::NotFound(digest)),
        }
        let metainfo = inner
            .metainfo(&digest)?
            .ok_or_else(|| CasError::CorruptRecord(format!("{digest} (no metainfo)")))?;
        let file = File::open(&path).map_err(CasError::io("open blob", &path))?;
        *state.readers.entry(digest).or_insert(0) += 1;
        drop(state);
        if is_use {
            inner.touch(&digest);
        }
        Ok(BlobReader {
            cas: cas.clone(),
            digest,
            metainfo: Arc::new(metainfo),
            file,
            path,
        })
    }

    /// The blob's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.metainfo.length()
    }

    /// True for the empty blob.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The blob's metainfo.
    pub fn metainfo(&self) -> &Arc<Metainfo> {
        &self.metainfo
    }

    /// The open file, for callers with their own zero-copy path.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns the count (0 at the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, CasError> {
        self.file
            .read_at(buf, offset)
            .map_err(CasError::io("read", &self.path))
    }

    /// Reads a byte range into memory.
    pub fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, CasError> {
        self.check_range(&range)?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        self.file
            .read_exact_at(&mut buf, range.start)
            .map_err(CasError::io("read", &self.path))?;
        Ok(buf)
    }

    /// Reads the whole blob into memory.
    pub fn read_all(&self) -> Result<Vec<u8>, CasError> {
        self.read_range(0..self.len())
    }

    /// A handle that reads pieces from another thread (see [`super::PieceSource`]); the
    /// reader must stay alive meanwhile to keep the blob from eviction.
    pub fn piece_source(&self) -> Result<super::PieceSource, CasError> {
        super::PieceSource::new(
            &self.file,
            &self.path,
            self.metainfo.clone(),
            self.cas.buffers().clone(),
        )
    }

    /// Reads one piece.
    pub fn read_piece(&self, index: PieceIndex) -> Result<Vec<u8>, CasError> {
        let range = self.metainfo.checked_piece_range(index)?;
        self.read_range(range)
    }

    /// Copies a byte range to `out` without going through user-space buffers where the OS
    /// can (sendfile/splice/copy_file_range). Returns the bytes copied.
    pub fn copy_range_to(&self, range: Range<u64>, out: &mut impl Write) -> Result<u64, CasError> {
        self.check_range(&range)?;
        // A fresh handle has its own offset, so concurrent copies do not interfere.
        let mut file = File::open(&self.path).map_err(CasError::io("open blob", &self.path))?;
        file.seek(SeekFrom::Start(range.start))
            .map_err(CasError::io("seek", &self.path))?;
        let want = range.end - range.start;
        let copied =
            io::copy(&mut file.take(want), out).map_err(CasError::io("copy", &self.path))?;
        if copied != want {
            return Err(CasError::io("copy", &self.path)(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob ended after {copied} of {want} bytes"),
            )));
        }
        Ok(copied)
    }

    fn check_range(&self, range: &Range<u64>) -> Result<(), CasError> {
        if range.start > range.end || range.end > self.len() {
            return Err(CasError::BadRange {
                digest: self.digest,
                start: range.start,
                end: range.end,
                len: self.len(),
            });
        }
        Ok(())
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        let inner = self.cas.inner();
        let mut state = inner.lock();
        if let Some(n) = state.readers.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                state.readers.remove(&self.digest);
                if state.doomed.contains_key(&self.digest) {
                    inner.finish_purge(&mut state, &self.digest);
                }
            }
        }
    }
}
