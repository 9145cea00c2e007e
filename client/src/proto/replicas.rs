//! The types of the replica RPCs: anti-entropy between origins
//! ([`Request::ReplicaSummary`](super::Request::ReplicaSummary),
//! [`Request::ReplicaDigests`](super::Request::ReplicaDigests)), `krakenctl repair`
//! ([`Request::Repair`](super::Request::Repair)) and the replica status `krakenctl members`
//! shows ([`Request::ReplicaStatus`](super::Request::ReplicaStatus)).

use kraken_storage::Digest;
use serde::{Deserialize, Serialize};

/// Buckets a summary cuts the digest space into: one per value of the first byte of the
/// hash (uniform for sha256 and sha512 alike).
pub const SUMMARY_BUCKETS: usize = 256;

/// Largest page of [`Request::ReplicaDigests`](super::Request::ReplicaDigests): 2,048
/// sha512 digests are about 135 KiB, well inside a frame.
pub const MAX_DIGEST_PAGE: u32 = 2048;

/// Most digests a [`RepairReport`] names.
pub const MAX_REPORTED_DIGESTS: usize = 1000;

/// The summary of one bucket of a set of digests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSum {
    /// Digests in the bucket.
    pub count: u32,
    /// BLAKE3 of the bucket's digests in order (all zero for an empty bucket).
    pub hash: [u8; 32],
}

/// What an origin found and did in a repair (an anti-entropy pass, or the check of one
/// digest). A blob held by several origins is counted by each of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// Complete blobs this origin holds that it checked.
    pub blobs: u64,
    /// Of those, blobs some owner lacked before this pass copied anything.
    pub under_replicated: u64,
    /// Copies made (an owner that already held the blob is no copy).
    pub copied: u64,
    /// Bytes those copies sent.
    pub copied_bytes: u64,
    /// Blobs read through from the backend because no origin held them.
    pub fetched: u64,
    /// Copies and reads that failed.
    pub failed: u64,
    /// Blobs still short of an owner after the pass.
    pub remaining: u64,
    /// Origins that could not be compared with (unreachable, or an error).
    pub unreachable: Vec<String>,
    /// The blobs still short, at most [`MAX_REPORTED_DIGESTS`].
    pub short: Vec<Digest>,
}

/// An origin's last anti-entropy pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Passes since start.
    pub passes: u64,
    /// Seconds since the last pass ended (`None`: none yet).
    pub last_pass_secs_ago: Option<u64>,
    /// Complete blobs the last pass checked.
    pub blobs: u64,
    /// Blobs it left short of an owner.
    pub under_replicated: u64,
    /// Copies that failed in it.
    pub failed: u64,
}
