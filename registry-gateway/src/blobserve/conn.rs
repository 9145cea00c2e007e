//! One connection of the blob server: read a head, answer it, again while the client
//! keeps the connection alive; and what each request is answered with.

use std::ops::Range;
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::Server;
use super::redirect::back_to_registry;
use super::request::{Head, Refused, Verb, read_head};
use super::response::{self, Small};
use super::send::{SendError, send_blob};
use crate::access::{Served, clip_path};
use crate::error::ApiError;
use crate::range::ByteRange;
use crate::reference::{check_name, parse_digest};
use crate::registry::{LocalBlob, Registry, resolve_range};
use crate::route::Route;

/// Whether the connection is served, or only answered once with a redirect back to the
/// registry API (it came in beyond the connection cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Served, kept alive as the client asks.
    Serve,
    /// One request, sent back to the registry API, then closed.
    Overflow,
}

/// Serves `stream` until the client closes it, idles out, breaks a rule, or the server
/// shuts down.
pub(crate) async fn connection<R: Registry>(
    server: Arc<Server<R>>,
    mut stream: TcpStream,
    mode: Mode,
    mut shutdown: watch::Receiver<bool>,
) {
    // Heads, redirects and errors are one write each: send them now, not after an ACK.
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut fresh = true;
    loop {
        let read = read_head(
            &mut stream,
            &mut buf,
            server.deadlines,
            fresh,
            &mut shutdown,
        )
        .await;
        let head = match read {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refused) => return refuse(&server, &mut stream, &refused).await,
        };
        fresh = false;
        let close = !head.keep_alive || mode == Mode::Overflow || *shutdown.borrow();
        match request(&server, stream, &head, mode, close).await {
            Some(kept) if !close => stream = kept,
            _ => return,
        }
    }
}

/// Answers a refused head (405 with `Allow`, else its bare status), logs it, and closes
/// the connection.
async fn refuse<R>(server: &Server<R>, stream: &mut TcpStream, refused: &Refused) {
    let start = Instant::now();
    server.config.metrics.in_flight(1);
    let answer = match refused {
        Refused::Method => {
            response::error(ApiError::method_not_allowed("GET, HEAD"), true, false).await
        }
        _ => response::bare(refused.status(), true),
    };
    // The client may be gone or still sending: the answer is best effort.
    let _ = stream.write_all(&answer.bytes).await;
    linger(stream).await;
    let _in_server = server.parent.enter();
    tracing::debug!(reason = %refused, "blob server refused a request");
    // No method is known of a refused head: `-` (counted as OTHER).
    let unknown = Method::from_bytes(b"-").unwrap_or_default();
    Served {
        method: &unknown,
        path: "-",
        status: answer.status,
        bytes: answer.body_len,
        start,
        complete: true,
    }
    .finish(&server.config.metrics);
}

/// Ends the sending side, then reads and drops what the client still sends, for a short
/// while: closing a socket with unread bytes resets the connection, and the reset can
/// destroy the answer before the client has read it.
async fn linger(stream: &mut TcpStream) {
    const LINGER: Duration = Duration::from_millis(500);
    const MAX_DRAIN: usize = 64 << 10;
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut chunk = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_DRAIN {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

/// What one request is answered with.
enum Answer {
    /// A head and perhaps a small body, in memory.
    Small(Small),
    /// A blob's bytes from its file.
    Blob {
        status: StatusCode,
        head: Vec<u8>,
        blob: LocalBlob,
        range: Range<u64>,
    },
}

/// Serves one request; the stream back if it can carry another.
async fn request<R: Registry>(
    server: &Server<R>,
    mut stream: TcpStream,
    head: &Head,
    mode: Mode,
    close: bool,
) -> Option<TcpStream> {
    let start = Instant::now();
    let method = match head.verb {
        Verb::Get => Method::GET,
        Verb::Head => Method::HEAD,
    };
    let path = clip_path(head.path());
    let span = tracing::info_span!(parent: &server.parent, "request", %method, %path);
    server.config.metrics.in_flight(1);
    let answer = answer(server, head, mode, close)
        .instrument(span.clone())
        .await;
    let (status, expected, sent, kept) = match answer {
        Answer::Small(small) => {
            let ok = stream.write_all(&small.bytes).await.is_ok();
            let sent = if ok { small.body_len } else { 0 };
            (small.status, small.body_len, sent, ok.then_some(stream))
        }
        Answer::Blob {
            status,
            head,
            blob,
            range,
        } => {
            let expected = range.end - range.start;
            let stall = server.config.send_timeout;
            let sending = tokio::task::spawn_blocking(move || {
                let (sent, result) = send_blob(stream.as_fd(), &head, blob.file(), range, stall);
                // The reader goes only now: until here the store could not evict the blob.
                drop(blob);
                (stream, sent, result)
            });
            match sending.await {
                Ok((stream, sent, result)) => {
                    let _in_request = span.enter();
                    match &result {
                        Ok(()) => {}
                        Err(e @ SendError::FileEnded { .. }) => {
                            tracing::warn!(error = %e, "blob cut short")
                        }
                        Err(e) => tracing::debug!(error = %e, "blob not sent whole"),
                    }
                    (status, expected, sent, result.is_ok().then_some(stream))
                }
                Err(e) => {
                    tracing::error!(parent: &span, error = %e, "blob send task failed");
                    (status, expected, 0, None)
                }
            }
        }
    };
    let _in_request = span.enter();
    Served {
        method: &method,
        path: &path,
        status,
        bytes: sent,
        start,
        complete: kept.is_some() && sent == expected,
    }
    .finish(&server.config.metrics);
    kept
}

/// The answer to `head`: the blob (or range) if this host holds it, else a redirect back
/// to the registry API; an error for anything but a blob.
async fn answer<R: Registry>(server: &Server<R>, head: &Head, mode: Mode, close: bool) -> Answer {
    let head_only = head.verb == Verb::Head;
    let error =
        |e: ApiError| async move { Answer::Small(response::error(e, close, head_only).await) };
    let (name, digest) = match Route::parse(head.path()) {
        Some(Route::Blob { name, digest }) => (name, digest),
        _ => return error(ApiError::not_found(head.path())).await,
    };
    let digest = match check_name(&name).and_then(|()| parse_digest(&digest)) {
        Ok(d) => d,
        Err(e) => return error(e).await,
    };
    let blob = match mode {
        Mode::Serve => server.registry.local_blob(&digest).await,
        Mode::Overflow => None,
    };
    let Some(blob) = blob else {
        let back = back_to_registry(server.config.registry, head.host.as_deref(), &name, &digest);
        return Answer::Small(response::small(back, close, head_only).await);
    };
    let total = blob.len();
    let asked = head.range.as_deref().and_then(ByteRange::parse);
    let range = match resolve_range(asked, total) {
        Ok(range) => range,
        Err(e) => return error(e.into()).await,
    };
    let status = if asked.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let fields = response::blob_fields(&digest, &range, total, asked.is_some());
    let head_bytes = response::head(status, &fields, close);
    if head_only {
        return Answer::Small(Small {
            status,
            bytes: head_bytes,
            body_len: 0,
        });
    }
    Answer::Blob {
        status,
        head: head_bytes,
        blob,
        range,
    }
}
