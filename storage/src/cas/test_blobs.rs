//! Blobs for the store's unit tests.
#![allow(clippy::unwrap_used)]

use super::{Cas, CasConfig};
use crate::metainfo::{Metainfo, PieceLengthTable};

/// A store of 64 KiB pieces and a blob of `pieces` of them.
pub(super) fn partial(dir: &std::path::Path, pieces: u32) -> (Cas, Metainfo, Vec<u8>) {
    let lengths = PieceLengthTable::uniform(64 * 1024);
    let cas = Cas::open(CasConfig {
        piece_lengths: lengths.clone(),
        ..CasConfig::at(dir)
    })
    .unwrap();
    let blob: Vec<u8> = (0..pieces as usize * 64 * 1024)
        .map(|i| (i % 251) as u8)
        .collect();
    let meta = Metainfo::from_bytes(&blob, &lengths).unwrap();
    (cas, meta, blob)
}

pub(super) fn piece(blob: &[u8], i: u32) -> &[u8] {
    &blob[i as usize * 64 * 1024..(i as usize + 1) * 64 * 1024]
}
