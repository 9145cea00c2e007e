//! The outermost layer: the API version header, the access log and the request metrics.
//!
//! The response body is wrapped so that the log line (method, path, status, body bytes
//! actually sent, elapsed time, and whether the body finished) is written when the body is
//! done or dropped, not when the headers leave: a streamed blob is logged with its real
//! size and duration.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tracing::Instrument as _;

use crate::metrics::GatewayMetrics;

/// The header every response carries.
pub(crate) const API_VERSION_HEADER: &str = "docker-distribution-api-version";

/// What the access layer needs: the metrics, and the span requests are logged under.
#[derive(Clone)]
pub(crate) struct Access {
    pub(crate) metrics: GatewayMetrics,
    /// The span current when the router was built (a node's): hyper runs each connection
    /// in a task of its own, which inherits no span.
    pub(crate) parent: tracing::Span,
}

/// Adds the version header, and logs and counts the request once its body is done. The
/// request is handled, and its body streamed, in a `request` span.
pub(crate) async fn observe(
    State(Access { metrics, parent }): State<Access>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = clip_path(req.uri().path());
    let span = tracing::info_span!(parent: &parent, "request", %method, %path);
    metrics.in_flight(1);
    let mut response = next.run(req).instrument(span.clone()).await;
    response
        .headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    let status = response.status();
    let (parts, body) = response.into_parts();
    let expected = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let record = Record {
        span,
        metrics,
        method,
        path,
        status,
        start,
        bytes: 0,
        expected,
        finished: body.is_end_stream(),
    };
    Response::from_parts(
        parts,
        Body::new(Observed {
            inner: body,
            record,
        }),
    )
}

/// A request path as logged: at most 512 characters.
pub(crate) fn clip_path(path: &str) -> String {
    path.chars().take(512).collect()
}

struct Record {
    span: tracing::Span,
    metrics: GatewayMetrics,
    method: Method,
    path: String,
    status: StatusCode,
    start: Instant,
    bytes: u64,
    /// The body's length, when the response says it: hyper stops polling a body once
    /// that many bytes are out, so the final `None` may never come.
    expected: Option<u64>,
    finished: bool,
}

impl Drop for Record {
    fn drop(&mut self) {
        let _in_request = self.span.enter();
        Served {
            method: &self.method,
            path: &self.path,
            status: self.status,
            bytes: self.bytes,
            start: self.start,
            complete: self.finished,
        }
        .finish(&self.metrics);
    }
}

/// A request served, as the access log and the metrics see it (the registry API's and the
/// blob server's alike).
pub(crate) struct Served<'a> {
    pub(crate) method: &'a Method,
    /// The path, clipped to 512 characters.
    pub(crate) path: &'a str,
    pub(crate) status: StatusCode,
    /// Body bytes sent.
    pub(crate) bytes: u64,
    pub(crate) start: Instant,
    /// Whether the whole body went out (a HEAD always counts as complete).
    pub(crate) complete: bool,
}

impl Served<'_> {
    /// Counts the request, ends its in-flight count and writes its access log line (in
    /// the current span: the request's).
    pub(crate) fn finish(&self, metrics: &GatewayMetrics) {
        metrics.in_flight(-1);
        metrics.record(self.method, self.status, self.bytes);
        tracing::info!(
            target: "kraken_registry_gateway::access",
            // Repeated from the span: an access log line stands alone in log pipelines.
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            bytes = self.bytes,
            elapsed_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            complete = self.complete || *self.method == Method::HEAD,
            "request"
        );
    }
}

/// A response body that counts what it yields.
struct Observed {
    inner: Body,
    record: Record,
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let _in_request = this.record.span.clone().entered();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() || this.record.expected == Some(this.record.bytes) {
                    this.record.finished = true;
                }
            }
            Poll::Ready(None) => this.record.finished = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
