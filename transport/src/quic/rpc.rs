//! Request/response over bidirectional streams: the client [`call`] and the server
//! dispatcher [`serve`].
//!
//! A call opens a bidirectional stream and sends [`StreamHeader::Rpc`], one request frame
//! and optionally a raw body, then finishes its side. The server answers with one response
//! frame and optionally a raw body, then finishes. Request and response types belong to
//! the caller (the node's protocol enums); their frames say whether and how long a body
//! follows. [`open_call`] is the same call taken apart, for a body that arrives over time
//! (streamed as it comes, without copying) and for RPCs that answer in two steps (an
//! interim "send the body", then the outcome).
//!
//! [`serve`] accepts every stream the peer opens on a connection and routes it:
//! bidirectional streams by their [`StreamHeader`] — RPCs to [`Service::rpc`], piece
//! sessions to [`Service::session`] — and unidirectional streams (pieces) to
//! [`Service::uni_stream`]. A stream whose header or request is malformed, too large,
//! truncated, of another protocol version or of an unknown kind, or that does not arrive
//! within [`RpcConfig::header_timeout`], is closed on its own with the matching code from
//! [`codes`]; after [`RpcConfig::max_bad_streams`] such streams on one connection (handlers
//! can add to the count by returning [`StreamOutcome::Misbehaved`]) the connection is
//! closed with [`codes::CONN_ABUSE`].

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kraken_storage::Digest;
use quinn::{RecvStream, SendStream, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::Instrument as _;

use super::codes;
use super::endpoint::PeerConnection;
use super::stream::{StreamError, abort, read_frame, read_message, write_frame};
use crate::wire::{
    LEN_PREFIX, MAX_FRAME_LEN, PROTOCOL_VERSION, PeerId, StreamHeader, WireError, encode_frame,
};

/// Server-side limits of the dispatcher.
///
/// The defaults suit cluster nodes: frames up to the wire cap of 256 KiB, 10 s for a peer to
/// send a stream's header and request (a live peer needs one round trip), and 16 bad
/// streams before a connection is considered hostile — enough to ride out a version skew
/// during a rolling upgrade being noticed in logs, few enough that garbage costs little.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcConfig {
    /// Largest header or request frame accepted, in payload bytes.
    pub max_frame_len: usize,
    /// Time allowed for the stream header and the request frame to arrive.
    pub header_timeout: Duration,
    /// Bad streams tolerated on one connection; reaching it closes the connection.
    pub max_bad_streams: u32,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            max_frame_len: MAX_FRAME_LEN,
            header_timeout: Duration::from_secs(10),
            max_bad_streams: 16,
        }
    }
}

impl RpcConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), RpcError> {
        let bad = |m: String| Err(RpcError::Config(m));
        if !(64..=MAX_FRAME_LEN).contains(&self.max_frame_len) {
            return bad(format!(
                "max_frame_len must be within 64..={MAX_FRAME_LEN}, not {}",
                self.max_frame_len
            ));
        }
        if self.header_timeout.is_zero() {
            return bad("header_timeout must be above 0".into());
        }
        if self.max_bad_streams == 0 {
            return bad("max_bad_streams must be at least 1".into());
        }
        Ok(())
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No stream could be opened (the connection is gone).
    #[error("cannot open a stream: {0}")]
    Open(#[source] quinn::ConnectionError),
    /// Sending the request failed.
    #[error("sending the request failed: {0}")]
    Send(#[source] StreamError),
    /// The caller's request body failed to read; the stream was reset.
    #[error("reading the request body failed: {0}")]
    Body(#[source] io::Error),
    /// The response could not be read. A peer that refused the request shows up here as
    /// [`StreamError::Reset`] with its code ([`RpcError::rejected_with`]).
    #[error("reading the response failed: {0}")]
    Response(#[source] StreamError),
    /// The peer finished the stream without a response frame.
    #[error("the peer closed the stream without a response")]
    NoResponse,
    /// An [`RpcConfig`] is invalid.
    #[error("invalid rpc config: {0}")]
    Config(String),
}

impl RpcError {
    /// The stream code the peer refused the request with, if it did.
    pub fn rejected_with(&self) -> Option<VarInt> {
        match self {
            RpcError::Response(StreamError::Reset { code })
            | RpcError::Send(StreamError::Stopped { code }) => Some(*code),
            _ => None,
        }
    }
}

/// A request's raw body, sent after the request frame.
pub enum RequestBody<'a> {
    /// No body.
    None,
    /// Bytes in memory (sent without copying).
    Bytes(Bytes),
    /// Bytes from a reader, until it ends.
    Reader(&'a mut (dyn AsyncRead + Unpin + Send)),
}

impl std::fmt::Debug for RequestBody<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::None => f.write_str("None"),
            RequestBody::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            RequestBody::Reader(_) => f.write_str("Reader"),
        }
    }
}

/// Sends `request` (and its body) on a new bidirectional stream and reads one response
/// frame of at most [`MAX_FRAME_LEN`] bytes. Returns the response and the receive stream,
/// which carries the response body if the response announced one (read it, or drop it).
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    conn: &quinn::Connection,
    request: &Req,
    body: RequestBody<'_>,
) -> Result<(Resp, RecvStream), RpcError> {
    call_with_limit(conn, request, body, MAX_FRAME_LEN).await
}

/// [`call`] with a cap on the response frame other than [`MAX_FRAME_LEN`].
pub async fn call_with_limit<Req: Serialize, Resp: DeserializeOwned>(
    conn: &quinn::Connection,
    request: &Req,
    body: RequestBody<'_>,
    max_response_len: usize,
) -> Result<(Resp, RecvStream), RpcError> {
    let mut call = open_call(conn, request, max_response_len).await?;
    match body {
        RequestBody::None => {}
        RequestBody::Bytes(bytes) => {
            call.send(bytes).await;
        }
        RequestBody::Reader(reader) => {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        call.abort(codes::INTERNAL);
                        return Err(RpcError::Body(e));
                    }
                };
                if n == 0 || !call.send_slice(&buf[..n]).await {
                    break;
                }
            }
        }
    }
    call.finish().await
}

/// Opens a call: sends the stream header and `request` on a new bidirectional stream and
/// hands back the stream, so the caller can read interim answers ([`OpenCall::answer`])
/// and send the body as it comes ([`OpenCall::send`]) before [`OpenCall::finish`] reads
/// the response. Response frames are capped at `max_response_len` bytes.
pub async fn open_call<Req: Serialize>(
    conn: &quinn::Connection,
    request: &Req,
    max_response_len: usize,
) -> Result<OpenCall, RpcError> {
    let (send, recv) = conn.open_bi().await.map_err(RpcError::Open)?;
    let mut call = OpenCall {
        send,
        recv: Some(recv),
        max_response_len,
        failed: None,
    };
    // Header and request in one write: one packet for small requests.
    let frames = encode_frame(&StreamHeader::Rpc {
        version: PROTOCOL_VERSION,
    })
    .and_then(|mut f| {
        f.extend(encode_frame(request)?);
        Ok(f)
    })
    .map_err(|e| RpcError::Send(e.into()))?;
    if let Err(e) = call.send.write_all(&frames).await {
        let e = StreamError::from(e);
        // Anything but a stop leaves no answer to read.
        if !matches!(e, StreamError::Stopped { .. }) {
            call.abort(codes::INTERNAL);
            return Err(RpcError::Send(e));
        }
        call.failed = Some(e);
    }
    Ok(call)
}

/// A call in progress: the request is sent, the body and the answer are not (see
/// [`open_call`]). Dropping it before [`OpenCall::finish`] resets the stream with
/// [`codes::ABANDONED`] (quinn would otherwise finish it, and the peer would take a cut-off
/// body for a whole one).
#[derive(Debug)]
pub struct OpenCall {
    send: SendStream,
    /// `None` once [`OpenCall::finish`] has taken it (or the call was abandoned).
    recv: Option<RecvStream>,
    max_response_len: usize,
    /// Why sending stopped, if it did; [`OpenCall::finish`] reports it.
    failed: Option<StreamError>,
}

impl OpenCall {
    /// Sends the next part of the body without copying it. False once the peer stopped
    /// reading or the stream failed: stop sending and call [`OpenCall::finish`], which
    /// returns the peer's answer (a refusal, or an answer that needed no more bytes) or
    /// the failure.
    pub async fn send(&mut self, bytes: Bytes) -> bool {
        if self.failed.is_some() {
            return false;
        }
        let written = self.send.write_chunk(bytes).await;
        self.sent(written)
    }

    /// [`OpenCall::send`] for bytes the caller keeps (they are copied).
    async fn send_slice(&mut self, bytes: &[u8]) -> bool {
        if self.failed.is_some() {
            return false;
        }
        let written = self.send.write_all(bytes).await;
        self.sent(written)
    }

    /// Records a write's failure, if it failed; whether sending may go on.
    fn sent(&mut self, written: Result<(), quinn::WriteError>) -> bool {
        match written {
            Ok(()) => true,
            Err(e) => {
                self.failed = Some(e.into());
                false
            }
        }
    }

    /// Reads one answer frame before the body is done (an RPC that answers in two steps,
    /// such as "send the body" and then the outcome). `Ok(None)`: the peer finished
    /// without one.
    pub async fn answer<Resp: DeserializeOwned>(&mut self) -> Result<Option<Resp>, RpcError> {
        let Some(recv) = self.recv.as_mut() else {
            return Err(RpcError::Response(StreamError::ClosedStream));
        };
        match read_frame::<Resp>(recv, self.max_response_len).await {
            Ok(r) => Ok(r),
            Err(e) => {
                if let Some(code) = e.reply_code() {
                    let _ = recv.stop(code);
                }
                Err(RpcError::Response(e))
            }
        }
    }

    /// Gives up: resets the stream with `code` (the body's source failed), so the peer
    /// keeps nothing of it.
    pub fn abort(mut self, code: VarInt) {
        self.close(code);
    }

    fn close(&mut self, code: VarInt) {
        if let Some(mut recv) = self.recv.take() {
            abort(&mut self.send, &mut recv, code);
        }
    }

    /// Ends the body and reads the response. Returns it with the receive stream, which
    /// carries the response body if the response announced one.
    pub async fn finish<Resp: DeserializeOwned>(mut self) -> Result<(Resp, RecvStream), RpcError> {
        match self.failed.take() {
            None => {
                // Already closed means stopped or reset, which the response read reports.
                let _ = self.send.finish();
            }
            // The peer stopped reading: it may have answered (a refusal, or a response
            // that did not need the whole body). Its answer says more than the stop.
            Some(e @ StreamError::Stopped { .. }) => {
                let answer = self.answer::<Resp>().await;
                return match (answer, self.recv.take()) {
                    (Ok(Some(resp)), Some(recv)) => Ok((resp, recv)),
                    (Ok(_), _) => Err(RpcError::Send(e)),
                    (Err(e), _) => Err(e),
                };
            }
            Some(e) => {
                self.close(codes::INTERNAL);
                return Err(RpcError::Send(e));
            }
        }
        let answer = self.answer::<Resp>().await?;
        match (answer, self.recv.take()) {
            (Some(resp), Some(recv)) => Ok((resp, recv)),
            _ => Err(RpcError::NoResponse),
        }
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.close(codes::ABANDONED);
    }
}

/// Both halves of a bidirectional stream the peer opened, after its header (and, for an
/// RPC, its request frame) were read.
#[derive(Debug)]
pub struct BiStream {
    /// Our sending half: the response frame and body, or session messages.
    pub send: SendStream,
    /// The peer's sending half: the rest of the request (its body), or session messages.
    pub recv: RecvStream,
}

/// The stream an RPC handler answers on.
pub type RpcStream = BiStream;

impl BiStream {
    /// Writes one response (or session) frame.
    pub async fn respond<T: Serialize>(&mut self, msg: &T) -> Result<(), StreamError> {
        write_frame(&mut self.send, msg).await
    }

    /// Finishes our sending half: the peer reads to its end.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.send.finish().map_err(|_| StreamError::ClosedStream)
    }

    /// Closes both halves with a stream code (see [`codes`]): a refusal.
    pub fn reject(mut self, code: VarInt) {
        abort(&mut self.send, &mut self.recv, code);
    }
}

/// What a handler made of a stream; [`StreamOutcome::Misbehaved`] counts toward
/// [`RpcConfig::max_bad_streams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    /// Served, refused or failed for reasons that are not the peer's fault.
    Done,
    /// The peer broke the protocol on this stream (e.g. a corrupt piece, a body of the
    /// wrong length).
    Misbehaved,
}

/// The server side of a connection: what to do with each stream the peer opens.
///
/// One `Service` serves every connection; each stream runs in its own task.
pub trait Service: Send + Sync + 'static {
    /// The request type of RPC streams.
    type Request: DeserializeOwned + Send + 'static;

    /// Serves one RPC: answer with [`BiStream::respond`] (then any body) and finish, or
    /// [`BiStream::reject`] it. The request body, if any, is on `stream.recv`.
    fn rpc(
        &self,
        peer: PeerId,
        request: Self::Request,
        stream: RpcStream,
    ) -> impl Future<Output = StreamOutcome> + Send;

    /// Serves a piece-exchange session for `digest`. The default refuses it with
    /// [`codes::UNSUPPORTED_STREAM`].
    fn session(
        &self,
        peer: PeerId,
        digest: Digest,
        stream: BiStream,
    ) -> impl Future<Output = StreamOutcome> + Send {
        let _ = (peer, digest);
        async move {
            stream.reject(codes::UNSUPPORTED_STREAM);
            StreamOutcome::Done
        }
    }

    /// Serves a unidirectional stream (a piece, see [`recv_piece`](super::recv_piece)).
    /// The default stops it with [`codes::UNSUPPORTED_STREAM`].
    fn uni_stream(
        &self,
        peer: PeerId,
        recv: RecvStream,
    ) -> impl Future<Output = StreamOutcome> + Send {
        let _ = peer;
        async move {
            let mut recv = recv;
            let _ = recv.stop(codes::UNSUPPORTED_STREAM);
            StreamOutcome::Done
        }
    }
}

/// Counts a connection's bad streams and closes it at the limit.
struct Strikes {
    conn: quinn::Connection,
    count: AtomicU32,
    max: u32,
}

impl Strikes {
    fn record(&self, peer: PeerId, why: &dyn std::fmt::Display) {
        let n = self.count.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        tracing::debug!(%peer, strikes = n, %why, "bad stream");
        if n >= self.max {
            tracing::warn!(%peer, strikes = n, "closing connection: too many bad streams");
            self.conn.close(codes::CONN_ABUSE, b"too many bad streams");
        }
    }
}

/// Serves every stream the peer opens on `conn` until the connection ends, and returns
/// why it ended. Spawn one per connection (e.g. from the pool's connection callback).
///
/// `config` is used as given (call [`RpcConfig::validate`] when loading it); a
/// `max_bad_streams` of 0 counts as 1.
pub async fn serve<S: Service>(
    conn: PeerConnection,
    service: Arc<S>,
    config: RpcConfig,
) -> quinn::ConnectionError {
    let peer = conn.peer_id();
    // Every stream of the connection is handled in it, so a request's log lines say
    // which peer asked.
    let span = tracing::info_span!("conn", %peer);
    let quinn_conn = conn.connection().clone();
    let config = Arc::new(config);
    let strikes = Arc::new(Strikes {
        conn: quinn_conn.clone(),
        count: AtomicU32::new(0),
        max: config.max_bad_streams.max(1),
    });
    loop {
        tokio::select! {
            bi = quinn_conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let (service, config, strikes) =
                        (service.clone(), config.clone(), strikes.clone());
                    let stream = async move {
                        serve_bi(&*service, peer, send, recv, &config, &strikes).await;
                    };
                    tokio::spawn(stream.instrument(span.clone()));
                }
                Err(e) => return e,
            },
            uni = quinn_conn.accept_uni() => match uni {
                Ok(recv) => {
                    let (service, strikes) = (service.clone(), strikes.clone());
                    let stream = async move {
                        if service.uni_stream(peer, recv).await == StreamOutcome::Misbehaved {
                            strikes.record(peer, &"handler reported a bad unidirectional stream");
                        }
                    };
                    tokio::spawn(stream.instrument(span.clone()));
                }
                Err(e) => return e,
            },
        }
    }
}

enum Opened<R> {
    Rpc(R),
    Session(Digest),
}

async fn serve_bi<S: Service>(
    service: &S,
    peer: PeerId,
    mut send: SendStream,
    mut recv: RecvStream,
    config: &RpcConfig,
    strikes: &Strikes,
) {
    let max = config.max_frame_len;
    let opened = tokio::time::timeout(config.header_timeout, async {
        let missing = || WireError::Truncated {
            have: 0,
            need: LEN_PREFIX,
        };
        let header = read_message::<StreamHeader>(&mut recv, max)
            .await?
            .ok_or_else(missing)?;
        header.check_version()?;
        match header {
            StreamHeader::Rpc { .. } => {
                let request = read_frame::<S::Request>(&mut recv, max)
                    .await?
                    .ok_or_else(missing)?;
                Ok::<_, StreamError>(Opened::Rpc(request))
            }
            StreamHeader::Session { digest, .. } => Ok(Opened::Session(digest)),
        }
    })
    .await;
    let outcome = match opened {
        Err(_) => {
            abort(&mut send, &mut recv, codes::TIMEOUT);
            strikes.record(peer, &"no header before the timeout");
            return;
        }
        Ok(Err(e)) => {
            // Errors the peer's bytes caused get an answer and a strike; a stream the peer
            // reset itself, or a lost connection, needs neither.
            if let Some(code) = e.reply_code() {
                abort(&mut send, &mut recv, code);
                strikes.record(peer, &e);
            }
            return;
        }
        Ok(Ok(Opened::Rpc(request))) => service.rpc(peer, request, BiStream { send, recv }).await,
        Ok(Ok(Opened::Session(digest))) => {
            service.session(peer, digest, BiStream { send, recv }).await
        }
    };
    if outcome == StreamOutcome::Misbehaved {
        strikes.record(peer, &"handler reported a bad stream");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        RpcConfig::default().validate().unwrap();
        for c in [
            RpcConfig {
                max_frame_len: MAX_FRAME_LEN + 1,
                ..RpcConfig::default()
            },
            RpcConfig {
                header_timeout: Duration::ZERO,
                ..RpcConfig::default()
            },
            RpcConfig {
                max_bad_streams: 0,
                ..RpcConfig::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
