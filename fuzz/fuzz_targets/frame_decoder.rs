//! Arbitrary bytes, split arbitrarily, through the frame decoder and message decoders.
#![no_main]

use kraken_transport::wire::{FrameDecoder, PeerMessage, StreamHeader, decode_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut dec = FrameDecoder::new(4096);
    for chunk in rest.chunks(usize::from(split).max(1)) {
        dec.push(chunk);
        while let Ok(Some(payload)) = dec.next_payload() {
            let _ = decode_message::<PeerMessage>(&payload);
            let _ = decode_message::<StreamHeader>(&payload);
        }
    }
    let _ = dec.finish();
});
