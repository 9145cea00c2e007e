//! Metainfo decoding of untrusted bytes: never panics; what decodes is self-consistent.
#![no_main]

use kraken_storage::{Metainfo, PieceIndex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metainfo::decode(data) {
        assert_eq!(Metainfo::decode(&m.encode()).ok().as_ref(), Some(&m));
        let last = m.piece_count().checked_sub(1).map(PieceIndex);
        if let Some(last) = last {
            let r = m.piece_range(last).expect("last piece has a range");
            assert_eq!(r.end, m.length());
        }
        let _ = m.verify_piece(PieceIndex(0), &data[..data.len().min(16)]);
    }
});
