//! The blob server's decoding of untrusted request bytes, end to end and without a socket,
//! for the `fuzz/` crate's `blob_request` target and the property test below: the head
//! parser, the route, the name and digest, the `Range` against a blob's length, and the
//! `Location` a redirect would name from the client's `Host`.

use std::net::SocketAddr;

use axum::http::HeaderValue;

use super::redirect::authority;
use super::request::{MAX_HEAD, parse};
use crate::range::ByteRange;
use crate::reference::{check_name, parse_digest};
use crate::route::Route;

/// Decodes the request head at the start of `bytes` as the blob server does, for a blob of
/// `total` bytes; the head's length if it is accepted. Panics only if an invariant of the
/// decoding breaks (what a fuzzer looks for): a head longer than its input or than the
/// cap, a range outside the blob, a redirect target that is no valid header value.
pub fn decode_blob_request(bytes: &[u8], total: u64) -> Option<usize> {
    let (head, len) = parse(bytes).ok()??;
    assert!(len <= bytes.len() && len <= MAX_HEAD, "head of {len} bytes");
    if let Some(range) = head.range.as_deref().and_then(ByteRange::parse)
        && let Some(r) = range.resolve(total)
    {
        assert!(r.start < r.end && r.end <= total, "{r:?} of {total}");
    }
    let targets: [SocketAddr; 2] = [
        SocketAddr::from(([0, 0, 0, 0], 5001)),
        SocketAddr::from(([0u16; 8], 5001)),
    ];
    for target in targets {
        let location = format!(
            "http://{}/v2/x/blobs/y",
            authority(target, head.host.as_deref())
        );
        assert!(HeaderValue::from_str(&location).is_ok(), "{location:?}");
    }
    if let Some(Route::Blob { name, digest }) = Route::parse(head.path()) {
        let _ = check_name(&name).and_then(|()| parse_digest(&digest));
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_a_blob_request() {
        let raw = b"GET /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: [::1]:9\r\nRange: bytes=-5\r\n\r\n";
        assert_eq!(decode_blob_request(raw, 3), Some(raw.len()));
        assert_eq!(decode_blob_request(b"GET / HTTP/1.1\r\n", 3), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_keep_the_invariants(
            raw in proptest::collection::vec(any::<u8>(), 0..1024),
            total in any::<u64>(),
        ) {
            let _ = decode_blob_request(&raw, total);
        }

        #[test]
        fn arbitrary_fields_keep_the_invariants(
            host in "[ -~]{0,40}",
            range in "bytes=[0-9, -]{0,30}",
            path in "/[ -~&&[^ ]]{0,80}",
            total in 0u64..1 << 40,
        ) {
            let raw = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: {range}\r\n\r\n");
            let _ = decode_blob_request(raw.as_bytes(), total);
        }
    }
}
