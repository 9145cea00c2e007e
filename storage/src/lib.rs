//! Content addressing, the local content-addressed store, and storage backends.
//!
//! Modules, bottom up:
//! - [`digest`]: `Digest`, the registry's name for a blob (`sha256:<hex>`), strictly parsed.
//! - [`bitfield`]: `PieceIndex` and the `Bitfield` of pieces a node holds.
//! - [`chain`]: sha256's and sha512's chaining states at piece boundaries, so a blob's
//!   digest is checked piece by piece, in any order, as pieces arrive.
//! - [`metainfo`]: `Metainfo` (length, piece length, one BLAKE3 hash per piece, the chaining
//!   states), the piece length table, piece verification and the compact postcard encoding
//!   with its own id.
//! - `cas` (feature `local`): blobs as files under `<root>/blobs/<2 hex>/<hex>` with metadata
//!   in redb; verified ingest, resumable partial downloads, ranged and per-piece readers,
//!   quota eviction and a crash-safe startup sweep.
//! - `buffers` (feature `local`): `BufferPool`, the memory piece reads and piece writers
//!   reuse instead of faulting in new pages for every piece.
//! - `direct` (feature `local`): writes past the page cache (direct I/O) where the
//!   filesystem takes them, for bytes written once and not read soon.
//! - `dirlock` (feature `local`): `DirLock`, one process at a time on a data directory,
//!   with a message naming the holder's pid.
//! - `queue` (feature `local`): the durable write-back queue (redb) an origin drains to its
//!   backend, with exponential backoff and jitter; `queue::executor` (feature `executor`)
//!   is the loop that drains such a queue, for any job (blob write-back, tag replication).
//! - `backend` (feature `backends`): OpenDAL-backed remote storage (fs, memory, s3, gcs,
//!   webhdfs), namespace routing, the Docker-registry key layout, and the upload path from
//!   the CAS to a backend.
//!
//! Without default features only the first four exist: pure types with no I/O, shared by
//! the transport, the simulator and every node.

/// Implements `From<E>` for `$err` for every redb error type, through `redb::Error`, so
/// `?` works on any redb call in a function returning `$err`.
#[cfg(feature = "local")]
macro_rules! from_redb_errors {
    ($err:ident :: $variant:ident) => {
        from_redb_errors!(@each $err $variant redb::DatabaseError, redb::TransactionError,
            redb::TableError, redb::StorageError, redb::CommitError);
    };
    (@each $err:ident $variant:ident $($t:ty),*) => {$(
        impl From<$t> for $err {
            fn from(e: $t) -> Self {
                $err::$variant(redb::Error::from(e))
            }
        }
    )*};
}

pub mod bitfield;
pub mod chain;
pub mod digest;
pub mod metainfo;
// Plain std: wall-clock ms and calendar dates, for every crate (not only local stores).
pub mod time;

#[cfg(feature = "local")]
pub mod buffers;
#[cfg(feature = "local")]
pub mod cas;
#[cfg(feature = "local")]
pub mod direct;
#[cfg(feature = "local")]
pub mod dirlock;
#[cfg(feature = "local")]
pub mod queue;
#[cfg(feature = "local")]
pub mod redb_handle;

#[cfg(feature = "backends")]
pub mod backend;

pub use bitfield::{Bitfield, BitfieldError, PieceIndex};
pub use digest::{Digest, DigestAlgorithm, DigestError, DigestHasher};
pub use metainfo::{
    Metainfo, MetainfoError, MetainfoId, PieceError, PieceHash, PieceHasher, PieceLengthEntry,
    PieceLengthTable,
};
