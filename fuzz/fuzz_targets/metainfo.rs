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
        // Chain checks of whatever the states say never panic.
        for index in [Some(PieceIndex(0)), last].into_iter().flatten() {
            if let Some(mut h) = m.piece_chain(index) {
                h.update(&data[..data.len().min(100)]);
                let _ = m.check_piece_chain(index, h);
            }
        }
    }
});
