//! `CasConfig`: where the store lives, how big it may grow, and how it evicts.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::CasError;
use super::space;
use crate::metainfo::PieceLengthTable;

/// Configuration of a local CAS.
///
/// The defaults suit an agent with a dedicated cache disk: a 100 GiB quota (clamped to what
/// the file system holds, less a reserve of 1 GiB or 5% of it: see [`super::space`]),
/// blobs idle for a week expire, and above 90% of the quota idle blobs expire after an
/// hour and LRU eviction frees space down to 80%.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CasConfig {
    /// Directory holding `blobs/`, `partial/`, `tmp/` and `meta.redb`.
    pub root: PathBuf,
    /// Byte quota for complete and partial blobs together.
    pub capacity_bytes: u64,
    /// Remove blobs not read for this long (time to idle). `None` (0 in TOML) keeps them.
    #[serde(with = "opt_secs")]
    pub tti: Option<Duration>,
    /// Remove blobs this long after they arrived, however often read (time to live).
    /// `None` (0 in TOML) keeps them.
    #[serde(with = "opt_secs")]
    pub ttl: Option<Duration>,
    /// Fraction of the quota above which eviction turns aggressive.
    pub high_water: f64,
    /// Fraction of the quota that aggressive LRU eviction frees space down to.
    pub low_water: f64,
    /// The time to idle used while above the high-water mark (0 in TOML: none).
    #[serde(with = "opt_secs")]
    pub aggressive_tti: Option<Duration>,
    /// How piece lengths are chosen for ingested blobs.
    pub piece_lengths: PieceLengthTable,
    /// A partial blob fsyncs its file and persists its bitfield after this many pieces
    /// (and always on completion); pieces after the last flush are re-fetched after a crash.
    pub flush_every_pieces: u32,
    /// Check a downloaded blob's hash against its digest, not only each piece's BLAKE3
    /// hash against the origin's metainfo: an independent check that a metainfo describes
    /// the blob its digest names. With chaining states in the metainfo each piece is
    /// checked as it is stored (one hash pass in all, spread over the download, nothing
    /// left at commit); without them the whole blob is re-read and hashed at commit.
    pub verify_digest_on_commit: bool,
    /// Write downloaded pieces and ingested blobs (pushes) with direct I/O, past the page
    /// cache, where the filesystem allows (else through it, as with `false`). Copying every
    /// byte into fresh page-cache pages, and writing them back later, was the largest CPU
    /// cost of a download after the QUIC stack itself, and a fifth of a push's; a direct
    /// write hands the batch to the disk as it is. A downloaded piece that a streaming
    /// reader will read soon still goes through the page cache.
    pub direct_writes: bool,
    /// Bytes of the store's file system left free for everything else: the quota in
    /// force is `capacity_bytes` clamped to what the store has on disk plus what the file
    /// system has free, less this reserve (or less `fs_reserve_fraction` of the file
    /// system, if that is smaller). A store whose file system has less than the reserve
    /// free is not ready. Default 1 GiB.
    pub fs_reserve_bytes: u64,
    /// The reserve as a fraction of the file system's size, for file systems too small for
    /// `fs_reserve_bytes` (the smaller of the two applies). Default 0.05.
    pub fs_reserve_fraction: f64,
    /// How long a store whose write failed with "no space left on device" reports itself
    /// not ready, in seconds, however much space the failure freed. Default 30.
    pub disk_full_hold_secs: u64,
    /// Bytes the file system must have free for the store to start a metadata (redb)
    /// write; below it the write fails as on a full disk, before redb is touched (a
    /// metadata database whose commit failed is reopened, which costs a repair). Default
    /// 1 MiB.
    pub metadata_headroom_bytes: u64,
}

impl Default for CasConfig {
    fn default() -> Self {
        CasConfig {
            root: PathBuf::from("kraken-cas"),
            capacity_bytes: 100 << 30,
            tti: Some(Duration::from_secs(7 * 24 * 3600)),
            ttl: None,
            high_water: 0.9,
            low_water: 0.8,
            aggressive_tti: Some(Duration::from_secs(3600)),
            piece_lengths: PieceLengthTable::default(),
            flush_every_pieces: 16,
            verify_digest_on_commit: true,
            direct_writes: true,
            fs_reserve_bytes: 1 << 30,
            fs_reserve_fraction: 0.05,
            disk_full_hold_secs: 30,
            metadata_headroom_bytes: space::METADATA_HEADROOM,
        }
    }
}

impl CasConfig {
    /// The default configuration rooted at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        CasConfig {
            root: root.into(),
            ..CasConfig::default()
        }
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), CasError> {
        let bad = |m: String| Err(CasError::Config(m));
        if self.capacity_bytes == 0 {
            return bad("capacity_bytes must be above 0".into());
        }
        if !(0.0 < self.low_water && self.low_water <= self.high_water && self.high_water <= 1.0) {
            return bad(format!(
                "need 0 < low_water ({}) <= high_water ({}) <= 1",
                self.low_water, self.high_water
            ));
        }
        if !(0.0..0.5).contains(&self.fs_reserve_fraction) {
            return bad(format!(
                "fs_reserve_fraction ({}) must be at least 0 and below 0.5",
                self.fs_reserve_fraction
            ));
        }
        if self.flush_every_pieces == 0 {
            return bad("flush_every_pieces must be at least 1".into());
        }
        self.piece_lengths
            .validate()
            .map_err(CasError::PieceLengths)
    }
}

/// `Option<Duration>` as whole seconds in config files.
mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        // 0 means "never", so TOML (which has no null) can turn a default off.
        Ok(Option::<u64>::deserialize(d)?
            .filter(|&s| s > 0)
            .map(Duration::from_secs))
    }
}
