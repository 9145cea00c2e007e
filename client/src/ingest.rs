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

use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use kraken_storage::Digest;
use kraken_transport::quic::{OpenCall, RpcError, codes, open_call};
use kraken_transport::wire::MAX_FRAME_LEN;
use tokio::sync::mpsc;

use crate::cluster::{CallError, Cluster};
use crate::proto::{Request, Response};
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
}

impl IngestCall {
    /// Sends the request to the origin at `addr` and waits (at most the cluster's call
    /// timeout) for its first answer.
    pub async fn open(
        cluster: &Cluster,
        addr: SocketAddr,
        ingest: IngestRequest<'_>,
    ) -> Result<Opened, CallError> {
        let limit = cluster.call_timeout;
        let opening = async {
            let conn = cluster
                .pool()
                .get_or_connect(addr)
                .await
                .map_err(|source| CallError::Connect { addr, source })?;
            let rpc = |source| CallError::Rpc { addr, source };
            let mut call = open_call(conn.connection(), &ingest.request(), MAX_FRAME_LEN)
                .await
                .map_err(rpc)?;
            match call.answer::<Response>().await.map_err(rpc)? {
                Some(Response::Proceed) => Ok(Opened::Proceed(IngestCall {
                    call,
                    addr,
                    length: ingest.length,
                })),
                Some(Response::Uploaded { length }) => Ok(Opened::Present { length }),
                Some(other) => Err(CallError::unexpected(addr, other)),
                None => Err(rpc(RpcError::NoResponse)),
            }
        };
        match tokio::time::timeout(limit, opening).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout { addr, after: limit }),
        }
    }

    /// Sends the next bytes of the body. False once the origin stopped reading or the
    /// stream failed: call [`IngestCall::finish`] for its answer or the failure.
    pub async fn send(&mut self, bytes: Bytes) -> bool {
        self.call.send(bytes).await
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
    pub async fn finish(self) -> Result<u64, CallError> {
        let addr = self.addr;
        let (response, _) = self
            .call
            .finish::<Response>()
            .await
            .map_err(|source| CallError::Rpc { addr, source })?;
        match response {
            Response::Uploaded { length } if length == self.length => Ok(length),
            other => Err(CallError::unexpected(addr, other)),
        }
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
    matches!(e, CallError::Rpc { source, .. } if source.rejected_with() == Some(codes::UNKNOWN_KIND))
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
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let reading = move || {
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut left = length;
        while left > 0 {
            let want = usize::try_from(left).map_or(FILE_CHUNK, |l| l.min(FILE_CHUNK));
            // Read into spare capacity: nothing is zeroed first.
            let mut buf = Vec::with_capacity(want);
            let chunk = match (&mut file).take(want as u64).read_to_end(&mut buf) {
                Ok(n) if n == want => Ok(Bytes::from(buf)),
                Ok(n) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ended {} bytes short", left - n as u64),
                )),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
            left -= want as u64;
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
