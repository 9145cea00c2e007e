//! Response heads written by hand: the status line, the fields, `Date`, the API version,
//! and `Connection: close` when the connection ends after the answer.
//!
//! Small answers (errors, redirects, `HEAD`) are built as axum responses with a complete
//! body, so they carry exactly the registry API's JSON error bodies, and then serialised
//! here ([`small`]); a blob's head comes from [`blob_fields`].

use std::io::Write as _;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderName, LOCATION,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kraken_storage::Digest;

use crate::access::API_VERSION_HEADER;
use crate::error::ApiError;
use crate::handlers::pull::DIGEST_HEADER;

/// The largest body of a small answer (an error's JSON is far smaller).
const MAX_SMALL_BODY: usize = 64 << 10;

/// A status line and fields, ready for the wire.
pub(crate) fn head(status: StatusCode, fields: &HeaderMap, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(384);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(out, "date: {}\r\n", http_date(SystemTime::now()));
    let _ = write!(out, "{API_VERSION_HEADER}: registry/2.0\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The fields of a blob answer: `range` of a `total`-byte blob (206 with `Content-Range`
/// when `partial`).
pub(crate) fn blob_fields(
    digest: &Digest,
    range: &Range<u64>,
    total: u64,
    partial: bool,
) -> HeaderMap {
    let mut fields = HeaderMap::with_capacity(8);
    fields.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    fields.insert(CONTENT_LENGTH, HeaderValue::from(range.end - range.start));
    fields.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let digest = digest.to_string();
    if let Ok(v) = HeaderValue::from_str(&digest) {
        fields.insert(HeaderName::from_static(DIGEST_HEADER), v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        fields.insert(ETAG, v);
    }
    if partial
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{total}",
            range.start,
            range.end.saturating_sub(1)
        ))
    {
        fields.insert(CONTENT_RANGE, v);
    }
    fields
}

/// A small answer: its status and its bytes on the wire.
pub(crate) struct Small {
    /// The status.
    pub(crate) status: StatusCode,
    /// Head and body.
    pub(crate) bytes: Vec<u8>,
    /// Body bytes among them.
    pub(crate) body_len: u64,
}

/// Serialises a response with a complete, small body (`HEAD`: the head alone).
pub(crate) async fn small(response: Response, close: bool, head_only: bool) -> Small {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_SMALL_BODY)
        .await
        .unwrap_or_else(|_| Bytes::new());
    let mut fields = parts.headers;
    fields.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut bytes = head(parts.status, &fields, close);
    let body_len = if head_only {
        0
    } else {
        bytes.extend_from_slice(&body);
        body.len() as u64
    };
    Small {
        status: parts.status,
        bytes,
        body_len,
    }
}

/// A registry error as a small answer.
pub(crate) async fn error(e: ApiError, close: bool, head_only: bool) -> Small {
    small(e.into_response(), close, head_only).await
}

/// A bare status with no body (refused heads).
pub(crate) fn bare(status: StatusCode, close: bool) -> Small {
    let mut fields = HeaderMap::new();
    fields.insert(CONTENT_LENGTH, HeaderValue::from(0));
    Small {
        status,
        bytes: head(status, &fields, close),
        body_len: 0,
    }
}

/// `307 Temporary Redirect` to `location`, no body.
pub(crate) fn redirect(location: &str) -> Response {
    let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), what `Date` carries.
pub(crate) fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = kraken_storage::time::civil_from_days(days);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_imf_fixdates() {
        let at = |s| http_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
    }

    #[test]
    fn heads_end_with_the_fields_every_answer_carries() {
        let d = Digest::sha256_of(b"x");
        let fields = blob_fields(&d, &(2..5), 10, true);
        let text = String::from_utf8(head(StatusCode::PARTIAL_CONTENT, &fields, true)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 206 Partial Content\r\n"),
            "{text}"
        );
        for line in [
            "content-length: 3",
            "content-range: bytes 2-4/10",
            "accept-ranges: bytes",
            &format!("docker-content-digest: {d}"),
            &format!("etag: \"{d}\""),
            "docker-distribution-api-version: registry/2.0",
            "connection: close",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in {text}");
        }
        assert!(text.ends_with("\r\n\r\n"));
        let whole = blob_fields(&d, &(0..10), 10, false);
        assert!(whole.get(CONTENT_RANGE).is_none());
    }

    #[tokio::test]
    async fn small_answers_keep_the_error_body_and_drop_it_for_head() {
        let e = || ApiError::method_not_allowed("GET, HEAD");
        let get = error(e(), false, false).await;
        let text = String::from_utf8(get.bytes).unwrap();
        assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(text.contains("allow: GET, HEAD\r\n"), "{text}");
        assert!(
            text.ends_with(
                "\"UNSUPPORTED\",\"message\":\"method not allowed on this endpoint\"}]}"
            ),
            "{text}"
        );
        let head_only = error(e(), false, true).await;
        assert_eq!(head_only.body_len, 0);
        assert!(head_only.bytes.ends_with(b"\r\n\r\n"));
        assert_eq!(bare(StatusCode::BAD_REQUEST, true).body_len, 0);
    }
}
