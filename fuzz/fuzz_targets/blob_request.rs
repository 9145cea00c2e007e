//! Request heads as the agents' zero-copy blob server reads them from any client on the
//! network: untrusted bytes never panic, and what is accepted keeps the decoding's
//! invariants (a head within its input and the cap, a range inside the blob, a valid
//! redirect target).
#![no_main]

use kraken_registry_gateway::decode_blob_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes pick the blob's length; the rest is the request.
    let (total, raw) = match data.split_first_chunk::<8>() {
        Some((len, raw)) => (u64::from_le_bytes(*len), raw),
        None => (1 << 20, data),
    };
    let _ = decode_blob_request(raw, total);
});
