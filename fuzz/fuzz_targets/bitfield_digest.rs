//! Bitfield and digest decoders (binary and text) on untrusted bytes.
#![no_main]

use kraken_storage::{Bitfield, Digest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = postcard::from_bytes::<Bitfield>(data) {
        assert_eq!(b.ones().count() as u32, b.count_ones());
    }
    let _ = postcard::from_bytes::<Digest>(data);
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(d) = s.parse::<Digest>()
    {
        assert_eq!(d.to_string(), s);
    }
});
