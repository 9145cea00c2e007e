//! Serving an axum router on a TCP listener with bounded resources ([`serve_app`]): the
//! accept loop, the limits of [`HttpLimits`] and the counts of [`ListenerMetrics`]. Every
//! HTTP listener of a node goes through it: the registry API (plain and TLS) and the
//! health/metrics port.
//!
//! - **Connections** are capped per listener ([`HttpLimits::max_connections`]). Past the
//!   cap a plain-HTTP connection is answered a short `503` with `Connection: close` and
//!   `Retry-After: 1` and closed (a TLS one is closed: it cannot be answered without a
//!   handshake). A connection's TLS handshake runs inside its slot, with a deadline.
//! - **Heads**: a request head must arrive within [`HttpLimits::header_read_timeout`] of
//!   its first byte; a connection trickling one is closed.
//! - **Idle**: a connection with no request in progress and no byte received for
//!   [`HttpLimits::idle_timeout`] is closed (idle keep-alive), and so is one whose client
//!   stopped reading a response for that long (a write blocked that long).
//! - **Buffers**: a connection queues at most [`CONNECTION_BUFFER`] bytes of a response
//!   ahead of its socket, and reads request heads of at most that much (longer: `431`).
//! - **Bodies**: request bodies are read through [`PacedBody`]: when the server waits
//!   for the client's next bytes, it waits at most [`HttpLimits::body_read_timeout`], and
//!   a body whose bytes come slower than [`HttpLimits::body_min_rate`] (averaged over the
//!   time spent waiting for them, after the first `body_read_timeout` of waiting) fails.
//!   Time the server itself takes (a slow disk, a slow origin) is not counted. The
//!   handler reading the body sees an error (an upload answers 400
//!   `BLOB_UPLOAD_INVALID` naming the reason and keeps its session at the last chunk it
//!   acknowledged) and the connection closes.
//!
//! Each closing for one of these reasons is counted in [`ListenerMetrics`] by reason and
//! logged through a [`LogLimiter`]: one line per reason per
//! [`HttpLimits::log_interval`], with the count held back. A request between the limits
//! costs two atomic operations on the connection's state and none on shared state.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::Service as _;
use tracing::Instrument as _;

use crate::loglimit::{DEFAULT_LOG_INTERVAL, LogLimiter};

/// Default cap on the connections one listener serves at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default time a request head may take from its first byte.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a connection may sit idle between requests.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default longest wait for the next bytes of a request body.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default slowest request body accepted, bytes per second of waiting.
pub const DEFAULT_BODY_MIN_RATE: u64 = 1024;
/// Bytes of response a connection queues ahead of its socket (and the longest request
/// head it reads). hyper's default (about 400 KiB) let every connection of a slow client
/// hold that much of a blob; with this, a thousand connections streaming a blob hold a
/// few tens of MiB between them. Larger buffers would not make one connection faster: the
/// socket's own buffer is the kernel's, and the body's chunks are written as they come.
pub(crate) const CONNECTION_BUFFER: usize = 64 * 1024;
/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals (503 answers past the cap) being written at once; past them a refused
/// connection is just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refusal may take to write and drain.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// The answer past the connection cap.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain\r\n\
content-length: 21\r\n\
connection: close\r\n\
retry-after: 1\r\n\
\r\n\
too many connections\n";

/// The limits of one HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; past it a new one is refused (`503`, closed).
    pub max_connections: usize,
    /// Longest time from a request head's first byte to its end.
    pub header_read_timeout: Duration,
    /// Longest time a connection may be idle: no request in progress and nothing
    /// received, or a response the client does not read.
    pub idle_timeout: Duration,
    /// Longest wait for the next bytes of a request body.
    pub body_read_timeout: Duration,
    /// Slowest request body accepted, bytes per second of waiting for it, enforced once
    /// the server has waited `body_read_timeout` in all; 0: no minimum.
    pub body_min_rate: u64,
    /// One log line per kind of problem per this interval.
    pub log_interval: Duration,
}

impl Default for HttpLimits {
    /// 1024 connections, 30 s heads, 60 s idle, 30 s body reads, 1 KiB/s bodies, one log
    /// line per problem per minute.
    fn default() -> Self {
        HttpLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            body_min_rate: DEFAULT_BODY_MIN_RATE,
            log_interval: DEFAULT_LOG_INTERVAL,
        }
    }
}

impl HttpLimits {
    /// Rejects limits that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if self.max_connections > Semaphore::MAX_PERMITS {
            return Err("max_connections is too large".into());
        }
        for (name, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_read_timeout", self.body_read_timeout),
        ] {
            if d < Duration::from_millis(10) {
                return Err(format!("{name} must be at least 10 ms"));
            }
            if d > Duration::from_secs(24 * 3600) {
                return Err(format!("{name} must be at most a day"));
            }
        }
        if self.log_interval.is_zero() {
            return Err("log_interval must be positive".into());
        }
        Ok(())
    }
}

/// Why a listener closed a connection itself (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// Past `max_connections`: refused.
    ConnectionCap,
    /// Idle between requests.
    Idle,
    /// A request head did not arrive in time.
    HeaderTimeout,
    /// The client did not read a response.
    WriteStalled,
    /// A request body stalled or came too slowly.
    BodyTimeout,
    /// The TLS handshake failed or timed out.
    Handshake,
}

impl Closed {
    const ALL: [Closed; 6] = [
        Closed::ConnectionCap,
        Closed::Idle,
        Closed::HeaderTimeout,
        Closed::WriteStalled,
        Closed::BodyTimeout,
        Closed::Handshake,
    ];

    fn label(self) -> &'static str {
        match self {
            Closed::ConnectionCap => "connection_cap",
            Closed::Idle => "idle",
            Closed::HeaderTimeout => "header_timeout",
            Closed::WriteStalled => "write_stalled",
            Closed::BodyTimeout => "body_timeout",
            Closed::Handshake => "tls_handshake",
        }
    }
}

type ClosedLabels = [(&'static str, &'static str); 1];

/// Counts of one listener's connections (clones share the values).
#[derive(Clone)]
pub struct ListenerMetrics {
    closed: Family<ClosedLabels, Counter>,
    by_reason: [Counter; Closed::ALL.len()],
    open: Gauge,
}

impl std::fmt::Debug for ListenerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerMetrics").finish_non_exhaustive()
    }
}

impl Default for ListenerMetrics {
    fn default() -> Self {
        let closed = Family::<ClosedLabels, Counter>::default();
        let by_reason = Closed::ALL.map(|r| closed.get_or_create_owned(&[("reason", r.label())]));
        ListenerMetrics {
            closed,
            by_reason,
            open: Gauge::default(),
        }
    }
}

impl ListenerMetrics {
    /// Fresh counts, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `<prefix>_connections_closed{reason}` and `<prefix>_connections_open`
    /// into `registry` (once per process and prefix).
    pub fn register(&self, registry: &mut PromRegistry, prefix: &str) {
        registry.register(
            format!("{prefix}_connections_closed"),
            "Connections the server closed or refused itself, by reason (connection_cap, \
             idle, header_timeout, write_stalled, body_timeout, tls_handshake)",
            self.closed.clone(),
        );
        registry.register(
            format!("{prefix}_connections_open"),
            "Connections being served",
            self.open.clone(),
        );
    }

    /// Connections closed or refused for `reason` (its label, as in the metric) so far.
    pub fn closed(&self, reason: &str) -> u64 {
        Closed::ALL
            .iter()
            .position(|r| r.label() == reason)
            .map_or(0, |i| self.by_reason[i].get())
    }

    /// Connections being served now.
    pub fn open(&self) -> i64 {
        self.open.get()
    }

    fn count(&self, reason: Closed) {
        if let Some(i) = Closed::ALL.iter().position(|r| *r == reason) {
            self.by_reason[i].inc();
        }
    }
}

/// What every connection of a listener shares.
struct Shared {
    limits: HttpLimits,
    metrics: ListenerMetrics,
    log: LogLimiter,
    /// The listener's name in log lines.
    name: &'static str,
}

impl Shared {
    /// Counts `reason` and logs it, rate-limited.
    fn closed(&self, reason: Closed, peer: SocketAddr) {
        self.metrics.count(reason);
        if let Some(suppressed) = self.log.allow(reason.label()) {
            tracing::warn!(
                listener = self.name,
                %peer,
                problem = reason.label(),
                suppressed,
                "closing an HTTP connection (one line per problem per {:?}; suppressed: \
                 those not logged since the last)",
                self.limits.log_interval,
            );
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then finishes
/// the requests in flight. With `tls`, each connection's handshake comes first. `name`
/// names the listener in log lines.
pub(crate) async fn serve_app(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: ListenerMetrics,
    tls: Option<TlsAcceptor>,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    limits.validate().map_err(io::Error::other)?;
    let shared = Arc::new(Shared {
        log: LogLimiter::new(limits.log_interval),
        limits,
        metrics,
        name,
    });
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    if let Some(suppressed) = shared.log.allow("accept_failed") {
                        tracing::warn!(listener = name, error = %e, suppressed,
                            "accepting a connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.closed(Closed::ConnectionCap, peer);
            if tls.is_none()
                && let Ok(permit) = refusals.clone().try_acquire_owned()
            {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse(tcp)).await;
                    drop(permit);
                });
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, shared, tls) = (app.clone(), shared.clone(), tls.clone());
        let watcher = graceful.watcher();
        let connection = async move {
            shared.metrics.open.inc();
            match tls {
                None => connection(tcp, peer, app, &shared, watcher).await,
                Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => connection(stream, peer, app, &shared, watcher).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        shared.closed(Closed::Handshake, peer);
                    }
                    Err(_) => shared.closed(Closed::Handshake, peer),
                },
            }
            shared.metrics.open.dec();
            drop(slot);
        };
        // In the caller's span (a node's): tokio tasks inherit none.
        tokio::spawn(connection.in_current_span());
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection past the cap: `503`, then reads what the client sent until it
/// closes, so that its unread request does not turn our close into a reset that would
/// discard the answer.
async fn refuse(mut tcp: TcpStream) {
    if tcp.write_all(REFUSAL).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    while let Ok(n) = tcp.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// Serves one connection until it ends, the watchdog closes it, or shutdown finishes it.
async fn connection<S>(
    io: S,
    peer: SocketAddr,
    app: Router,
    shared: &Arc<Shared>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Watched {
        inner: io,
        state: state.clone(),
    });
    let service = {
        let (state, shared) = (state.clone(), shared.clone());
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = Busy::start(state.clone());
            let mut req = req.map(|body| PacedBody::new(body, shared.clone(), peer));
            req.extensions_mut().insert(ConnectInfo(peer));
            let response = app.clone().call(req);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|inner| Tracked {
                    inner,
                    _busy: guard,
                }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Heads and idle time are watched below (hyper's own head timeout would also close
    // a connection idle between requests).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(CONNECTION_BUFFER);
    let conn = watcher.watch(builder.serve_connection(io, service));
    tokio::select! {
        served = conn => {
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        reason = watchdog(&state, &shared.limits) => shared.closed(reason, peer),
    }
}

/// A connection's progress, shared by its IO, its requests and its watchdog.
struct ConnState {
    /// When the connection started; times below are milliseconds since.
    epoch: Instant,
    /// Requests in progress (from the head received to the response body sent).
    busy: AtomicU32,
    /// When the connection last became idle.
    idle_since: AtomicU64,
    /// 1 + when the first byte of the next head arrived while idle; 0: none yet.
    head_started: AtomicU64,
    /// 1 + since when a write has been waiting for the client; 0: none is.
    write_blocked: AtomicU64,
    /// Wakes the watchdog when a deadline starts (a head's first byte, a blocked write).
    wake: Notify,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            epoch: Instant::now(),
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Ends when the connection must close, saying why.
async fn watchdog(state: &ConnState, limits: &HttpLimits) -> Closed {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (idle, header) = (ms(limits.idle_timeout), ms(limits.header_read_timeout));
    loop {
        let now = state.now_ms();
        let mut next = now.saturating_add(idle);
        let blocked = state.write_blocked.load(Ordering::Relaxed);
        if blocked != 0 {
            let deadline = (blocked - 1).saturating_add(idle);
            if now >= deadline {
                return Closed::WriteStalled;
            }
            next = next.min(deadline);
        }
        if state.busy.load(Ordering::SeqCst) == 0 {
            let started = state.head_started.load(Ordering::SeqCst);
            let (deadline, reason) = if started != 0 {
                ((started - 1).saturating_add(header), Closed::HeaderTimeout)
            } else {
                let since = state.idle_since.load(Ordering::SeqCst);
                (since.saturating_add(idle), Closed::Idle)
            };
            if now >= deadline {
                return reason;
            }
            next = next.min(deadline);
        }
        let at = state.epoch + Duration::from_millis(next);
        tokio::select! {
            () = tokio::time::sleep_until(at.into()) => {}
            () = state.wake.notified() => {}
        }
    }
}

/// A request in progress: the connection is not idle until it drops (with the response
/// body, or with the request's future if the connection ends first).
struct Busy(Arc<ConnState>);

impl Busy {
    fn start(state: Arc<ConnState>) -> Self {
        state.busy.fetch_add(1, Ordering::SeqCst);
        Busy(state)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let state = &self.0;
        state.head_started.store(0, Ordering::SeqCst);
        state.idle_since.store(state.now_ms(), Ordering::SeqCst);
        state.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request [`Busy`] until it is sent or dropped.
struct Tracked {
    inner: axum::body::Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's IO, noting the first byte of a head and writes the client blocks.
struct Watched<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S> Watched<S> {
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        let blocked = &self.state.write_blocked;
        match polled {
            Poll::Pending => {
                if blocked.load(Ordering::Relaxed) == 0 {
                    blocked.store(self.state.now_ms() + 1, Ordering::Relaxed);
                    self.state.wake.notify_one();
                }
            }
            Poll::Ready(_) => {
                if blocked.load(Ordering::Relaxed) != 0 {
                    blocked.store(0, Ordering::Relaxed);
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let state = &self.state;
            if state.busy.load(Ordering::SeqCst) == 0
                && state.head_started.load(Ordering::SeqCst) == 0
            {
                state
                    .head_started
                    .store(state.now_ms() + 1, Ordering::SeqCst);
                state.wake.notify_one();
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyTimeout {
    /// No bytes for the whole timeout.
    #[error("request body stalled: no bytes for {0:?}")]
    Stalled(Duration),
    /// Bytes, but too few.
    #[error(
        "request body too slow: {bytes} bytes in {waited:?} of waiting, below the minimum \
         of {min_rate} bytes per second"
    )]
    TooSlow {
        /// Bytes received.
        bytes: u64,
        /// Time spent waiting for them.
        waited: Duration,
        /// The configured minimum.
        min_rate: u64,
    },
}

/// A request body held to [`HttpLimits::body_read_timeout`] and
/// [`HttpLimits::body_min_rate`]; only the time spent waiting for the client counts.
pub(crate) struct PacedBody {
    inner: Incoming,
    shared: Arc<Shared>,
    peer: SocketAddr,
    bytes: u64,
    /// Time spent waiting for the client, not counting the current wait.
    waited: Duration,
    /// Since when the current wait runs.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    failed: bool,
}

impl PacedBody {
    fn new(inner: Incoming, shared: Arc<Shared>, peer: SocketAddr) -> Self {
        PacedBody {
            inner,
            shared,
            peer,
            bytes: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            failed: false,
        }
    }

    /// When the current wait, begun at `since`, fails, and as what.
    fn deadline(&self, since: Instant) -> (Instant, BodyTimeout) {
        let limits = &self.shared.limits;
        let stalled = since + limits.body_read_timeout;
        if limits.body_min_rate == 0 {
            return (stalled, BodyTimeout::Stalled(limits.body_read_timeout));
        }
        // Too slow once the total wait exceeds both the grace and what the bytes so far
        // pay for at the minimum rate.
        #[allow(clippy::cast_precision_loss)]
        let paid = Duration::from_secs_f64(self.bytes as f64 / limits.body_min_rate as f64);
        let allowed = paid.max(limits.body_read_timeout);
        let slow = since.checked_add(allowed.saturating_sub(self.waited));
        if let Some(slow) = slow
            && slow < stalled
        {
            let waited = self.waited + slow.saturating_duration_since(since);
            let e = BodyTimeout::TooSlow {
                bytes: self.bytes,
                waited,
                min_rate: limits.body_min_rate,
            };
            (slow, e)
        } else {
            (stalled, BodyTimeout::Stalled(limits.body_read_timeout))
        }
    }

    fn fail(&mut self, e: BodyTimeout) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.failed = true;
        self.timer = None;
        self.shared.closed(Closed::BodyTimeout, self.peer);
        Poll::Ready(Some(Err(axum::Error::new(e))))
    }
}

impl HttpBody for PacedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(Ok(f)) = &frame
                    && let Some(data) = f.data_ref()
                {
                    this.bytes += data.len() as u64;
                }
                Poll::Ready(frame.map(|r| r.map_err(axum::Error::new)))
            }
            Poll::Pending => {
                let now = Instant::now();
                let since = *this.waiting_since.get_or_insert(now);
                let (deadline, why) = this.deadline(since);
                if now >= deadline {
                    return this.fail(why);
                }
                let timer = match &mut this.timer {
                    Some(t) => {
                        if t.deadline() != deadline.into() {
                            t.as_mut().reset(deadline.into());
                        }
                        t
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline.into()))),
                };
                ready!(timer.as_mut().poll(cx));
                this.fail(why)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an error from a request body is a [`BodyTimeout`] (its message).
pub(crate) fn body_timeout(e: &axum::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<BodyTimeout>() {
            return Some(t.to_string());
        }
        source = s.source();
    }
    None
}

/// Serves any axum `app` (a node's health and metrics port) on `listener` within
/// `limits` until `shutdown` completes, counting in `metrics`; `name` names the listener
/// in log lines.
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: ListenerMetrics,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_app(listener, app, limits, metrics, None, name, shutdown).await
}
