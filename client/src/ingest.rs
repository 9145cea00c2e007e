//! The streaming ingest's client: a whole blob sent to one origin with [`Request::Ingest`],
//! from a file ([`ingest_file`]) or handed over as it arrives ([`IngestCall`]).
//!
//! The call has two steps. The origin answers the request first: [`Response::Proceed`]
//! (send the body), or at once [`Response::Uploaded`] (it holds the blob already) or an
//! error. No byte of the body is consumed before `Proceed`, so a caller whose owner is
//! down, busy or not the owner moves on to the next one having lost nothing, and a blob the
//! owner has costs one round trip. After the body the origin answers again: `Uploaded`
//! once the blob is verified, fsynced in its store and its write-back queued, or an error
//! (a digest mismatch stores nothing).
//!
//! Unlike the resumable upload ([`crate::upload`]), nothing is staged on the origin: a body
//! that breaks off stores nothing, and the sender starts again from byte 0.
//!
//! Every step (the first answer, each write of the body, the verdict) runs under the stall
//! watchdog ([`crate::stall`]): an origin that makes no progress and answers no ping fails
//! the call with [`CallError::Stalled`] within seconds, so the caller moves to the next
//! owner long before QUIC's idle timeout.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use kraken_storage::Digest;
use kraken_transport::quic::{OpenCall, RpcError, codes};
use tokio::sync::mpsc;

use crate::cluster::{CallError, Cluster};
use crate::proto::{Request, Response};
use crate::stall;
use crate::upload::{Pushed, push_file};

/// Bytes read from a file per chunk sent.
const FILE_CHUNK: usize = 1 << 20;
/// Chunks read ahead of the network.
const READ_AHEAD: usize = 4;

/// What to ingest: [`Request::Ingest`]'s fields.
#[derive(Debug, Clone, Copy)]
pub struct IngestRequest<'a> {
    /// Routes the write-back.
    pub namespace: &'a str,
    /// The blob.
    pub digest: &'a Digest,
    /// The body's exact length.
    pub length: u64,
    /// Sent by another owner (no further replication).
    pub replica: bool,
    /// Already in the backend (no write-back).
    pub persisted: bool,
}

impl IngestRequest<'_> {
    fn request(&self) -> Request {
        Request::Ingest {
            namespace: self.namespace.to_string(),
            digest: *self.digest,
            length: self.length,
            replica: self.replica,
            persisted: self.persisted,
        }
    }
}

/// How the origin answered an ingest's request.
#[derive(Debug)]
pub enum Opened {
    /// It takes the blob: send the body.
    Proceed(IngestCall),
    /// It holds the blob already (verified, and its write-back queued unless persisted):
    /// nothing to send.
    Present {
        /// The blob's length.
        length: u64,
    },
}

/// An ingest whose body is being sent. Dropping it before [`IngestCall::finish`] resets
/// the stream, and the origin stores nothing.
#[derive(Debug)]
pub struct IngestCall {
    call: OpenCall,
    addr: SocketAddr,
    length: u64,
    /// Whom the stall watchdog asks about the origin.
    stall: Box<Cluster>,
    /// Set once a send stalled and the origin was given up.
    stalled: Option<Box<CallError>>,
}

impl IngestCall {
    /// Sends the request to the origin at `addr` and waits (at most the cluster's call
    /// timeout, and less when the origin stalls and answers no ping: [`crate::stall`]) for
    /// its first answer.
    pub async fn open(
        cluster: &Cluster,
        addr: SocketAddr,
        ingest: IngestRequest<'_>,
    ) -> Result<Opened, CallError> {
        Self::open_request(cluster, addr, &ingest.request(), ingest.length).await
    }

    /// [`IngestCall::open`] for any request answered like [`Request::Ingest`] (first
    /// [`Response::Proceed`]), with a body of `length` bytes.
    pub(crate) async fn open_request(
        cluster: &Cluster,
        addr: SocketAddr,
        request: &Request,
        length: u64,
    ) -> Result<Opened, CallError> {
        if cluster.stalled_lately(addr) {
            // Given up on moments ago (a stage to it stalled, say): on to the next owner.
            let after = std::time::Duration::ZERO;
            return Err(CallError::Stalled { addr, after });
        }
        let limit = cluster.call_timeout;
        let opening = async {
            let rpc = |source| CallError::Rpc { addr, source };
            let mut call = cluster.open_call(addr, request).await?;
            match call.answer::<Response>().await.map_err(rpc)? {
                Some(Response::Proceed) => Ok(Opened::Proceed(IngestCall {
                    call,
                    addr,
                    length,
                    stall: Box::new(cluster.clone()),
                    stalled: None,
                })),
                Some(Response::Uploaded { length }) => Ok(Opened::Present { length }),
                Some(other) => Err(CallError::unexpected(addr, other)),
                None => Err(rpc(RpcError::NoResponse)),
            }
        };
        match tokio::time::timeout(limit, stall::guard(cluster, addr, opening)).await {
            Ok(r) => r?,
            Err(_) => Err(CallError::Timeout { addr, after: limit }),
        }
    }

    /// Sends the next bytes of the body. False once the origin stopped reading, the
    /// stream failed or the origin stalled and answers no ping ([`crate::stall`]): call
    /// [`IngestCall::finish`] for its answer or the failure.
    pub async fn send(&mut self, bytes: Bytes) -> bool {
        if self.stalled.is_some() {
            return false;
        }
        match stall::guard(&self.stall, self.addr, self.call.send(bytes)).await {
            Ok(sent) => sent,
            Err(e) => {
                self.stalled = Some(Box::new(e));
                false
            }
        }
    }

    /// Gives up because the body's source failed: the origin stores nothing.
    pub fn abort(self) {
        self.call.abort(codes::ABANDONED);
    }

    /// Sends all of `body` and waits for the origin's verdict ([`IngestCall::finish`]);
    /// returns the blob's length. The first error of `body` aborts the call (the origin
    /// stores nothing) and comes back as [`SendAllError::Source`].
    pub async fn send_all<S>(mut self, body: &mut S) -> Result<u64, SendAllError>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin + ?Sized,
    {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    if !self.send(bytes).await {
                        break;
                    }
                }
                Err(e) => {
                    self.abort();
                    return Err(SendAllError::Source(e));
                }
            }
        }
        Ok(self.finish().await?)
    }

    /// Ends the body and waits for the origin's verdict; returns the blob's length.
    /// An origin that stalls and answers no ping meanwhile fails it with
    /// [`CallError::Stalled`] (the stream is reset: it stores nothing).
    pub async fn finish(self) -> Result<u64, CallError> {
        let (addr, expected) = (self.addr, self.length);
        match self.verdict().await? {
            Response::Uploaded { length } if length == expected => Ok(length),
            other => Err(CallError::unexpected(addr, other)),
        }
    }

    /// Ends the body and returns the origin's answer, whatever it is (errors included).
    pub(crate) async fn verdict(self) -> Result<Response, CallError> {
        let addr = self.addr;
        if let Some(e) = self.stalled {
            self.call.abort(codes::ABANDONED);
            return Err(*e);
        }
        let (response, _) = stall::guard(&self.stall, addr, self.call.finish::<Response>())
            .await?
            .map_err(|source| CallError::Rpc { addr, source })?;
        Ok(response)
    }
}

/// Ingests `length` bytes of the file at `path` as `ingest.digest` on the origin at
/// `addr`. An origin from before the ingest RPC gets the resumable upload instead.
pub async fn ingest_file(
    cluster: &Cluster,
    addr: SocketAddr,
    ingest: IngestRequest<'_>,
    path: &Path,
) -> Result<Pushed, CallError> {
    let length = ingest.length;
    let call = match IngestCall::open(cluster, addr, ingest).await {
        Ok(Opened::Proceed(call)) => call,
        Ok(Opened::Present { length }) => return Ok(Pushed { sent: 0, length }),
        Err(e) if predates_ingest(&e) => {
            let IngestRequest {
                namespace,
                digest,
                replica,
                persisted,
                ..
            } = ingest;
            return push_file(
                cluster, addr, namespace, digest, path, length, replica, persisted,
            )
            .await;
        }
        Err(e) => return Err(e),
    };
    let mut chunks = read_file(path.to_path_buf(), length);
    let mut chunks = futures::stream::poll_fn(move |cx| chunks.poll_recv(cx));
    match call.send_all(&mut chunks).await {
        Ok(length) => Ok(Pushed {
            sent: length,
            length,
        }),
        Err(SendAllError::Call(e)) => Err(e),
        Err(SendAllError::Source(source)) => Err(CallError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether [`IngestCall::open`] failed because the origin predates [`Request::Ingest`]
/// (it refused the request as a kind it does not know): send it the resumable upload.
pub fn predates_ingest(e: &CallError) -> bool {
    e.predates_request()
}

/// Why [`IngestCall::send_all`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SendAllError {
    /// The body's source failed; the call was aborted and the origin stored nothing.
    #[error("the ingest's body failed")]
    Source(#[source] io::Error),
    /// The call failed, or the origin refused the blob.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// The first `length` bytes of the file at `path`, read on a thread of their own in
/// chunks of [`FILE_CHUNK`], [`READ_AHEAD`] ahead of the receiver. A file shorter than
/// `length` ends in an [`io::ErrorKind::UnexpectedEof`] error. Dropping the receiver stops
/// the reading.
pub fn read_file(path: PathBuf, length: u64) -> mpsc::Receiver<io::Result<Bytes>> {
    read_range(move || std::fs::File::open(&path).map(Arc::new), 0..length)
}

/// Bytes `range` of the file `open` returns, as [`read_file`] reads them, with positional
/// reads (the file's offset is left alone, so a file another handle appends to can be
/// read back).
pub fn read_range<F>(open: F, range: Range<u64>) -> mpsc::Receiver<io::Result<Bytes>>
where
    F: FnOnce() -> io::Result<Arc<std::fs::File>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let reading = move || {
        let file = match open() {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut at = range.start;
        while at < range.end {
            let want = usize::try_from(range.end - at).map_or(FILE_CHUNK, |l| l.min(FILE_CHUNK));
            let chunk = read_at(&file, at, want).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ended {} bytes short", range.end - at),
                ),
                _ => e,
            });
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
            at += want as u64;
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("ingest-read".into())
        .spawn(reading)
    {
        // No thread: the receiver reports it.
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Err(e));
        return rx;
    }
    rx
}

/// `want` bytes of `file` from offset `at`; [`io::ErrorKind::UnexpectedEof`] if it ends
/// first.
fn read_at(file: &std::fs::File, at: u64, want: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; want];
    file.read_exact_at(&mut buf, at)?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unknown_kind_refusal_means_an_origin_from_before_ingest() {
        use kraken_transport::quic::StreamError;
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let refused = |code| CallError::Rpc {
            addr,
            source: RpcError::Send(StreamError::Stopped { code }),
        };
        assert!(predates_ingest(&refused(codes::UNKNOWN_KIND)));
        assert!(!predates_ingest(&refused(codes::REFUSED)));
        let timeout = CallError::Timeout {
            addr,
            after: std::time::Duration::from_secs(1),
        };
        assert!(!predates_ingest(&timeout));
    }

    #[tokio::test]
    async fn files_are_read_in_order_and_short_ones_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(FILE_CHUNK * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();

        let mut rx = read_file(path.clone(), data.len() as u64 - 5);
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, data[..data.len() - 5]);

        let mut rx = read_file(path.clone(), data.len() as u64 + 1);
        let mut last = None;
        while let Some(chunk) = rx.recv().await {
            last = Some(chunk);
        }
        let err = last.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let mut rx = read_file(dir.path().join("missing"), 1);
        assert!(rx.recv().await.unwrap().is_err());
    }
}
