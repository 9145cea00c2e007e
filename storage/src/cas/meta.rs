//! The CAS's redb metadata: table definitions and the per-blob record.
//!
//! Keys are digest strings (`sha256:<hex>`, `sha512:<hex>`: the algorithm keeps them
//! apart). A blob is visible to readers only while its record says `Complete`; partial
//! downloads keep their bitfield in a table of their own so a progress update rewrites a
//! few bytes, not the whole record.

use std::time::SystemTime;

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
pub(crate) use crate::time::{from_ms, to_ms};

/// Per-blob record, postcard-encoded.
pub(crate) const BLOBS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("blobs");
/// Encoded metainfo of every blob, partial or complete.
pub(crate) const METAINFO: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("metainfo");
/// Postcard bitfield of every partial blob.
pub(crate) const BITFIELDS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("bitfields");

/// Whether a blob is fully present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobState {
    /// Being downloaded piece by piece; not readable as a whole.
    Partial,
    /// Verified and readable.
    Complete,
}

/// What the CAS records about a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlobRecord {
    pub(crate) state: BlobState,
    pub(crate) size: u64,
    pub(crate) created_ms: u64,
    pub(crate) last_access_ms: u64,
    pub(crate) pinned: bool,
    pub(crate) persisted: bool,
}

impl BlobRecord {
    pub(crate) fn new(state: BlobState, size: u64, now: SystemTime) -> Self {
        let ms = to_ms(now);
        BlobRecord {
            state,
            size,
            created_ms: ms,
            last_access_ms: ms,
            pinned: false,
            persisted: false,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }

    pub(crate) fn info(&self, digest: Digest) -> BlobInfo {
        BlobInfo {
            digest,
            state: self.state,
            size: self.size,
            created: from_ms(self.created_ms),
            last_access: from_ms(self.last_access_ms),
            pinned: self.pinned,
            persisted: self.persisted,
        }
    }
}

/// A blob's metadata as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The blob.
    pub digest: Digest,
    /// Partial or complete.
    pub state: BlobState,
    /// Length in bytes (the final length for partial blobs).
    pub size: u64,
    /// When it entered the CAS.
    pub created: SystemTime,
    /// Last time it was read or written (persisted lazily, so possibly a little stale).
    pub last_access: SystemTime,
    /// Pinned blobs are never evicted (e.g. an origin's blob not yet written back).
    pub pinned: bool,
    /// Set once the blob is safely in its backend.
    pub persisted: bool,
}
