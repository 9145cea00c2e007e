//! `CasError`: everything the local store can report.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::metainfo::{MetainfoError, PieceError};

/// An error from the local CAS. Every variant leaves the store consistent: a failed write
/// never makes a blob visible, and temporary files are removed (or swept at the next open).
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// A filesystem operation failed (disk full, permissions, I/O error).
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The bytes stream failed (e.g. the uploader disconnected).
    #[error("reading the blob stream failed after {read} bytes: {source}")]
    Source {
        /// Bytes read before the failure.
        read: u64,
        /// The reader's error.
        source: io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Metadata(#[from] redb::Error),
    /// A stored record could not be decoded.
    #[error("corrupt metadata record for {0}")]
    CorruptRecord(String),
    /// The bytes did not hash to the expected digest; nothing was stored.
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        /// Digest the caller named.
        expected: Digest,
        /// Digest of the bytes received.
        actual: Digest,
    },
    /// The stream was longer or shorter than announced; nothing was stored.
    #[error("length mismatch for {digest}: expected {expected} bytes, got {actual}")]
    LengthMismatch {
        /// The blob.
        digest: Digest,
        /// Announced length.
        expected: u64,
        /// Bytes received (a lower bound when the stream ran long).
        actual: u64,
    },
    /// No complete blob with that digest.
    #[error("blob {0} not found")]
    NotFound(Digest),
    /// The blob is already complete.
    #[error("blob {0} already exists")]
    AlreadyExists(Digest),
    /// The blob is in use (open readers, or a partial already being written).
    #[error("blob {0} is in use")]
    Busy(Digest),
    /// The blob is pinned and cannot be deleted.
    #[error("blob {0} is pinned")]
    Pinned(Digest),
    /// A piece writer outlived its download (committed, aborted or dropped): its bytes
    /// are not written, since the next download of the blob may own the file.
    #[error("the download of blob {0} is closed; the piece was not written")]
    DownloadClosed(Digest),
    /// The quota leaves no room even after evicting everything evictable.
    #[error(
        "no space for {needed} bytes: {available} bytes free in a {capacity}-byte store after eviction"
    )]
    NoSpace {
        /// Bytes asked for.
        needed: u64,
        /// Bytes free.
        available: u64,
        /// The quota.
        capacity: u64,
    },
    /// A partial blob is not complete yet.
    #[error("blob {digest} is incomplete: {have} of {total} pieces")]
    Incomplete {
        /// The blob.
        digest: Digest,
        /// Pieces present.
        have: u32,
        /// Pieces in the blob.
        total: u32,
    },
    /// A piece that is not (yet) present was asked for.
    #[error("{digest} does not have {index} yet")]
    MissingPiece {
        /// The blob.
        digest: Digest,
        /// The piece.
        index: crate::bitfield::PieceIndex,
    },
    /// A byte range outside the blob.
    #[error("range {start}..{end} is outside the {len}-byte blob {digest}")]
    BadRange {
        /// The blob.
        digest: Digest,
        /// Range start.
        start: u64,
        /// Range end (exclusive).
        end: u64,
        /// Blob length.
        len: u64,
    },
    /// A piece failed verification; it was not stored.
    #[error(transparent)]
    Piece(#[from] PieceError),
    /// A metainfo was invalid.
    #[error(transparent)]
    Metainfo(#[from] MetainfoError),
    /// The configuration is unusable.
    #[error("invalid cas config: {0}")]
    Config(String),
    /// The configured piece length table is unusable.
    #[error("invalid cas config: {0}")]
    PieceLengths(#[source] MetainfoError),
}

impl CasError {
    /// True if the local disk is full (ENOSPC) or its quota is spent (EDQUOT): no other
    /// peer, and no retry before space is freed, can help.
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            CasError::Io { source, .. } => source,
            CasError::Metadata(redb::Error::Io(source)) => source,
            _ => return false,
        };
        is_disk_full(io)
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| CasError::Io { op, path, source }
    }
}

from_redb_errors!(CasError::Metadata);

/// ENOSPC or EDQUOT.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error().is_some_and(|c| {
        c == rustix::io::Errno::NOSPC.raw_os_error() || c == rustix::io::Errno::DQUOT.raw_os_error()
    })
}
