//! A small blocking HTTP/1.1 client for the campaign: one connection per request
//! (`Connection: close`), bounded by timeouts, bodies read by `Content-Length`, chunked
//! encoding or to the end.
//!
//! A body shorter than its `Content-Length`, or a chunked body cut off before its last
//! chunk, is an error ([`HttpError::Truncated`]): the client knows it did not get the
//! whole answer. Only a complete body can be a wrong one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer body read (the campaign's blobs are a few MiB at most).
const MAX_BODY: usize = 64 << 20;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, sending or reading failed (refused, reset, timed out).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer ended before the body it announced.
    #[error("answer cut off: {got} of {want} bytes")]
    Truncated {
        /// Bytes read.
        got: usize,
        /// Bytes announced (`usize::MAX` for a chunked body without its last chunk).
        want: usize,
    },
    /// Not an HTTP/1.1 answer.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The body is larger than the client reads.
    #[error("answer body over {MAX_BODY} bytes")]
    TooLarge,
}

/// An answer: status, headers (names lowercased) and the whole body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The first header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` to `addr` with `headers` and `body`, waits at most `timeout` for
/// each read, and returns the whole answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, HttpError> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()?;
    read_answer(&mut BufReader::new(s), method == "HEAD")
}

/// Reads one answer from `r`.
fn read_answer(r: &mut impl BufRead, head_only: bool) -> Result<Answer, HttpError> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line {:?}", line.trim_end())))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(HttpError::Malformed("headers cut off".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(answer);
    }
    let chunked = answer
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = answer
        .header("content-length")
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| HttpError::Malformed(format!("content-length {v:?}")))
        })
        .transpose()?;
    answer.body = if chunked {
        read_chunked(r)?
    } else if let Some(want) = length {
        if want > MAX_BODY {
            return Err(HttpError::TooLarge);
        }
        let mut body = Vec::with_capacity(want);
        r.take(want as u64).read_to_end(&mut body)?;
        if body.len() != want {
            return Err(HttpError::Truncated {
                got: body.len(),
                want,
            });
        }
        body
    } else {
        let mut body = Vec::new();
        r.take(MAX_BODY as u64 + 1).read_to_end(&mut body)?;
        if body.len() > MAX_BODY {
            return Err(HttpError::TooLarge);
        }
        body
    };
    Ok(answer)
}

/// A chunked body, up to its last (empty) chunk.
fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(HttpError::Truncated {
                got: body.len(),
                want: usize::MAX,
            });
        }
        let size_text = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text.trim(), 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size {size_text:?}")))?;
        if size == 0 {
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(HttpError::TooLarge);
        }
        let start = body.len();
        r.take(size as u64).read_to_end(&mut body)?;
        if body.len() - start != size {
            return Err(HttpError::Truncated {
                got: body.len(),
                want: usize::MAX,
            });
        }
        line.clear();
        r.read_line(&mut line)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Answer, HttpError> {
        read_answer(&mut raw.as_bytes(), false)
    }

    #[test]
    fn bodies_are_read_by_length_chunks_or_to_the_end() {
        let a = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabcdef").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"abc"[..]));
        assert_eq!(a.header("x-a"), Some("b"));
        let c = parse("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(c.body, b"abc");
        let e = parse("HTTP/1.1 200 OK\r\n\r\nxyz").unwrap();
        assert_eq!(e.body, b"xyz");
    }

    #[test]
    fn a_cut_off_body_is_truncated_not_wrong() {
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
            Err(HttpError::Truncated { got: 3, want: 10 })
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),
            Err(HttpError::Truncated { .. })
        ));
        assert!(matches!(parse("garbage"), Err(HttpError::Malformed(_))));
    }
}
