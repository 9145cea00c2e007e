//! Byte ranges: the `Range` header of blob reads and the `Content-Range` of upload chunks.
//!
//! - [`ByteRange::parse`] reads one `bytes=a-b`, `bytes=a-` or `bytes=-n`; anything else
//!   (several ranges, other units, garbage) is `None`, and RFC 9110 lets a server ignore
//!   such a header and send the whole blob. [`ByteRange::resolve`] turns it into a
//!   half-open range over a blob of known length, or `None` when it is unsatisfiable (416).
//!   The gateway hands the unresolved range to `Registry::read_blob`, which knows the
//!   length once it has found the blob: one lookup and one check per request.
//! - [`parse_chunk_range`] reads an upload chunk's `Content-Range: a-b` (inclusive; a
//!   leading `bytes ` and a trailing `/total` are tolerated).

use std::ops::Range;

/// One range of a `Range: bytes=…` header, not yet resolved against a blob's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `a-b`, both inclusive.
    FromTo(u64, u64),
    /// `a-`: from `a` to the end.
    From(u64),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

fn number(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl ByteRange {
    /// Parses a `Range` header value; `None` if it is not a single byte range.
    pub fn parse(value: &str) -> Option<ByteRange> {
        let spec = value.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        match (a.trim().is_empty(), b.trim().is_empty()) {
            (true, true) => None,
            (true, false) => Some(ByteRange::Suffix(number(b)?)),
            (false, true) => Some(ByteRange::From(number(a)?)),
            (false, false) => {
                let (a, b) = (number(a)?, number(b)?);
                (a <= b).then_some(ByteRange::FromTo(a, b))
            }
        }
    }

    /// The half-open range this selects in a blob of `total` bytes; `None` if
    /// unsatisfiable.
    pub fn resolve(self, total: u64) -> Option<Range<u64>> {
        match self {
            ByteRange::FromTo(a, b) => (a < total).then(|| a..b.saturating_add(1).min(total)),
            ByteRange::From(a) => (a < total).then_some(a..total),
            ByteRange::Suffix(n) => (n > 0 && total > 0).then(|| total - n.min(total)..total),
        }
    }
}

/// Parses an upload chunk's `Content-Range` into the half-open range it covers.
pub(crate) fn parse_chunk_range(value: &str) -> Option<Range<u64>> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes")
        .map_or(v, |r| r.trim_start_matches([' ', '=']));
    let v = v.split_once('/').map_or(v, |(r, _)| r);
    let (a, b) = v.split_once('-')?;
    let (a, b) = (number(a)?, number(b)?);
    (a <= b).then(|| a..b.saturating_add(1))
}

/// The `Range` header of an upload's progress: `0-<last byte>`, or `0-0` when empty.
pub(crate) fn upload_range_header(received: u64) -> String {
    format!("0-{}", received.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_single_ranges() {
        assert_eq!(ByteRange::parse("bytes=0-9"), Some(ByteRange::FromTo(0, 9)));
        assert_eq!(ByteRange::parse("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(ByteRange::parse("bytes=-3"), Some(ByteRange::Suffix(3)));
        for bad in [
            "bytes=9-0",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=-",
            "bytes=a-b",
            "0-1",
        ] {
            assert_eq!(ByteRange::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn resolves_against_length() {
        assert_eq!(ByteRange::FromTo(0, 9).resolve(100), Some(0..10));
        assert_eq!(ByteRange::FromTo(90, 200).resolve(100), Some(90..100));
        assert_eq!(ByteRange::FromTo(100, 200).resolve(100), None);
        assert_eq!(ByteRange::From(99).resolve(100), Some(99..100));
        assert_eq!(ByteRange::From(0).resolve(0), None);
        assert_eq!(ByteRange::Suffix(10).resolve(5), Some(0..5));
        assert_eq!(ByteRange::Suffix(0).resolve(5), None);
        assert_eq!(ByteRange::FromTo(0, u64::MAX).resolve(5), Some(0..5));
    }

    #[test]
    fn chunk_ranges() {
        assert_eq!(parse_chunk_range("0-99"), Some(0..100));
        assert_eq!(parse_chunk_range("bytes 10-19/*"), Some(10..20));
        assert_eq!(parse_chunk_range("bytes=10-19"), Some(10..20));
        assert_eq!(parse_chunk_range("5-4"), None);
        assert_eq!(parse_chunk_range("x"), None);
        assert_eq!(upload_range_header(0), "0-0");
        assert_eq!(upload_range_header(10), "0-9");
    }

    proptest! {
        #[test]
        fn resolved_ranges_lie_inside(v in "bytes=[0-9]{0,3}-[0-9]{0,3}", total in 0u64..2000) {
            if let Some(r) = ByteRange::parse(&v).and_then(|r| r.resolve(total)) {
                prop_assert!(r.start < r.end && r.end <= total);
            }
        }

        #[test]
        fn never_panics(v in ".{0,40}") {
            let _ = ByteRange::parse(&v).map(|r| r.resolve(10));
            let _ = parse_chunk_range(&v);
        }
    }
}
