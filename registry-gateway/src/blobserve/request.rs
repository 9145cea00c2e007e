//! Reading one request head: bounded in size and time, parsed by `httparse`, refused at
//! the first thing the blob server does not serve.
//!
//! [`parse`] is pure (a buffer in, a [`Head`] or a [`Refused`] out); [`read_head`] feeds it
//! from the socket under the deadlines. A head must fit in [`MAX_HEAD`] bytes and
//! [`MAX_HEADERS`] fields; only `GET` and `HEAD` without a body, in origin form, over
//! HTTP/1.0 or 1.1 (with `Host`), pass. Bytes after the head stay in the buffer: they are
//! the next pipelined request.

use std::time::Duration;

use axum::http::StatusCode;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// The largest request head read.
pub(crate) const MAX_HEAD: usize = 8 << 10;
/// The most header fields in one head.
pub(crate) const MAX_HEADERS: usize = 32;

/// `GET` or `HEAD`: nothing else is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
}

/// A request head the blob server accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// The method.
    pub(crate) verb: Verb,
    /// The request target as sent (path and query, origin form).
    pub(crate) target: String,
    /// The `Host` field, if any (HTTP/1.0 may omit it).
    pub(crate) host: Option<String>,
    /// The `Range` field, if any and readable as text.
    pub(crate) range: Option<String>,
    /// Whether the connection may carry another request after this one.
    pub(crate) keep_alive: bool,
}

impl Head {
    /// The target's path (without the query).
    pub(crate) fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(p, _)| p)
    }
}

/// Why a request head is refused; the connection closes after the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// Not HTTP/1.x, or broken in a way the parser or these rules reject.
    #[error("malformed request head")]
    Malformed,
    /// Longer than [`MAX_HEAD`] or more than [`MAX_HEADERS`] fields.
    #[error("request head too large")]
    TooLarge,
    /// A method other than `GET` and `HEAD`.
    #[error("method not allowed")]
    Method,
    /// A request with a body (`Content-Length` above 0 or `Transfer-Encoding`).
    #[error("requests with a body are not served")]
    Body,
    /// The head was not complete within the header timeout.
    #[error("request head not complete in time")]
    Timeout,
}

impl Refused {
    /// The status it is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refused::Malformed | Refused::Body => StatusCode::BAD_REQUEST,
            Refused::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refused::Method => StatusCode::METHOD_NOT_ALLOWED,
            Refused::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// Parses the head at the start of `buf`: the head and its length in bytes, or `None`
/// while it is incomplete.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Head, usize)>, Refused> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) => return Err(Refused::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(Refused::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refused::TooLarge),
        Err(_) => return Err(Refused::Malformed),
    };
    let verb = match req.method {
        Some("GET") => Verb::Get,
        Some("HEAD") => Verb::Head,
        _ => return Err(Refused::Method),
    };
    let http11 = match req.version {
        Some(1) => true,
        Some(0) => false,
        _ => return Err(Refused::Malformed),
    };
    let target = match req.path {
        Some(p) if p.starts_with('/') => p.to_string(),
        _ => return Err(Refused::Malformed),
    };
    let mut host = None;
    let mut range = None;
    let mut close = false;
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            if field.value.trim_ascii() != b"0" {
                return Err(Refused::Body);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Refused::Body);
        } else if name.eq_ignore_ascii_case("host") {
            let value = std::str::from_utf8(field.value).map_err(|_| Refused::Malformed)?;
            if host.replace(value.trim().to_string()).is_some() {
                return Err(Refused::Malformed);
            }
        } else if name.eq_ignore_ascii_case("range") {
            let value = std::str::from_utf8(field.value).ok().map(str::to_string);
            if range.replace(value).is_some() {
                return Err(Refused::Malformed);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            close |= field
                .value
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    // RFC 9112 section 3.2: an HTTP/1.1 request without Host is a 400.
    if http11 && host.is_none() {
        return Err(Refused::Malformed);
    }
    let head = Head {
        verb,
        target,
        host,
        range: range.flatten(),
        // HTTP/1.0 keep-alive would need the answer to say so; one request each is enough.
        keep_alive: http11 && !close,
    };
    Ok(Some((head, len)))
}

/// How long a head may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// From a head's first byte (a fresh connection: from its accept) to its end.
    pub(crate) header: Duration,
    /// How long a kept-alive connection waits for the next request's first byte.
    pub(crate) idle: Duration,
}

/// Reads the next head from `stream` into `buf` (which may already hold its start), and
/// removes it from `buf`. `Ok(None)` when the connection is done: closed or failed by the
/// peer, idle past its timeout, or the server shutting down between requests.
pub(crate) async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadlines: Deadlines,
    fresh: bool,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Head>, Refused> {
    let now = Instant::now();
    let idle_until = now + deadlines.idle;
    let mut head_until = (fresh || !buf.is_empty()).then_some(now + deadlines.header);
    let mut chunk = [0u8; 2048];
    loop {
        if !buf.is_empty() {
            if let Some((head, len)) = parse(buf)? {
                buf.drain(..len);
                return Ok(Some(head));
            }
            head_until.get_or_insert_with(|| Instant::now() + deadlines.header);
        }
        let until = head_until.unwrap_or(idle_until);
        let idle = buf.is_empty();
        let read = tokio::select! {
            read = tokio::time::timeout_at(until, stream.read(&mut chunk)) => read,
            _ = shutdown.wait_for(|stop| *stop), if idle => return Ok(None),
        };
        match read {
            Err(_) if idle => return Ok(None),
            Err(_) => return Err(Refused::Timeout),
            Ok(Ok(0) | Err(_)) => return Ok(None),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(raw: &str) -> Result<Option<(Head, usize)>, Refused> {
        parse(raw.as_bytes())
    }

    #[test]
    fn reads_a_blob_get_with_a_range() {
        let raw = "GET /v2/a/blobs/sha256:00?ns=x HTTP/1.1\r\nHost: localhost:5001\r\n\
                   Range: bytes=0-9\r\nContent-Length: 0\r\n\r\nGET /next";
        let (h, len) = head(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - "GET /next".len());
        assert_eq!(h.verb, Verb::Get);
        assert_eq!(h.path(), "/v2/a/blobs/sha256:00");
        assert_eq!(h.host.as_deref(), Some("localhost:5001"));
        assert_eq!(h.range.as_deref(), Some("bytes=0-9"));
        assert!(h.keep_alive);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let h = |raw: &str| head(raw).unwrap().unwrap().0;
        assert!(
            !h("HEAD / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive
        );
        assert!(!h("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert_eq!(h("HEAD / HTTP/1.0\r\n\r\n").verb, Verb::Head);
    }

    #[test]
    fn incomplete_heads_wait_and_oversized_ones_do_not() {
        assert_eq!(head("GET / HTTP/1.1\r\nHost: h\r\n"), Ok(None));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(head(&long), Err(Refused::TooLarge));
        let partial = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(head(&partial), Err(Refused::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(
            head(&format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n")),
            Err(Refused::TooLarge)
        );
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        for (raw, why) in [
            ("POST / HTTP/1.1\r\nHost: h\r\n\r\n", Refused::Method),
            ("DELETE / HTTP/1.1\r\nHost: h\r\n\r\n", Refused::Method),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
                Refused::Body,
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refused::Body,
            ),
            ("GET / HTTP/1.1\r\n\r\n", Refused::Malformed),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Refused::Malformed,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n",
                Refused::Malformed,
            ),
            (
                "GET http://x/ HTTP/1.1\r\nHost: h\r\n\r\n",
                Refused::Malformed,
            ),
            ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", Refused::Malformed),
            ("GET /\0 HTTP/1.1\r\nHost: h\r\n\r\n", Refused::Malformed),
            (
                "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03",
                Refused::Malformed,
            ),
        ] {
            assert_eq!(head(raw).map(|_| ()), Err(why.clone()), "{raw:?}");
        }
        assert_eq!(Refused::TooLarge.status().as_u16(), 431);
    }

    proptest! {
        #[test]
        fn never_panics(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&raw);
        }

        #[test]
        fn a_complete_head_is_consumed_exactly(path in "/[a-z0-9/:]{0,100}", extra in "[A-Z]{0,20}") {
            let raw = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n{extra}");
            let (h, len) = parse(raw.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(h.target, path);
            prop_assert_eq!(&raw[len..], extra.as_str());
        }
    }
}
