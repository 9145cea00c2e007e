//! Every wire message decoder on arbitrary payloads; what decodes must re-encode identically.
#![no_main]

use kraken_transport::wire::{
    PeerMessage, PieceHeader, StreamHeader, decode_message, decode_payload, encode_frame,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_message::<PeerMessage>(data) {
        let frame = encode_frame(&m).expect("a decoded message encodes");
        assert_eq!(decode_message::<PeerMessage>(&frame[4..]).ok(), Some(m));
    }
    if let Ok(h) = decode_message::<StreamHeader>(data) {
        let _ = h.check_version();
    }
    let _ = decode_payload::<PieceHeader>(data);
});
