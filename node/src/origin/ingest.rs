//! The streaming ingest: the origin's side of [`Request::Ingest`](crate::proto::Request).
//!
//! A whole blob goes from the QUIC stream straight into the CAS ingest: one pass computes
//! sha256 (with its chaining states) and the BLAKE3 piece hashes and writes the blob once,
//! then fsync, rename and the redb commit. Nothing is staged: a body that breaks off, is
//! longer or shorter than declared, or does not hash to the digest stores nothing (the
//! temp file goes), and the sender starts again from byte 0.
//!
//! Order, as for the resumable upload: a blob too large, or new to a repository that
//! mirrors a read-only upstream registry, is refused at once; the upload lock of the
//! digest is taken (one upload of a digest at a time, and the write-back executor waits
//! for it); a blob already here is answered at once; otherwise the write-back is queued
//! (durable) **before** [`Response::Proceed`] asks for the body, so an origin that cannot
//! queue refuses before a byte is spent; the body is ingested; and only once the blob is
//! fsynced in the store and pinned is [`Response::Uploaded`] sent, and replication to the
//! other owners started.
//!
//! The stream's chunks (one per packet) cross to the blocking ingest in batches through
//! [`crate::bridge`], without a copy; the ingest copies them once into its buffers.

use std::io;
use std::time::Instant;

use bytes::Bytes;
use kraken_transport::quic::{BiStream, StreamOutcome, codes};
use quinn::RecvStream;

use super::Origin;
use super::upload::UploadRequest;
use crate::bridge::{BatchSender, channel_reader};
use crate::proto::{ErrorKind, RemoteError, Response};

/// Chunks taken from the stream per read.
const CHUNKS_PER_READ: usize = 32;

/// How the body's transfer ended ([`pump`]).
#[derive(Debug)]
pub(super) enum Pumped {
    /// Exactly the declared bytes (any number, when none were declared), then the end of
    /// the stream.
    Whole,
    /// More bytes than declared (the stream was stopped).
    TooLong,
    /// The sender finished after this many bytes, fewer than declared.
    Short(u64),
    /// The stream broke (reset by the sender, or the connection was lost).
    Broken(quinn::ReadError),
    /// No byte came for this long.
    Quiet(std::time::Duration),
    /// The ingest stopped reading (its own error says why).
    IngestStopped,
}

impl Origin {
    /// Serves an ingest; see the module docs.
    pub(super) async fn ingest(
        &self,
        req: UploadRequest,
        stream: &mut BiStream,
    ) -> (Response, StreamOutcome) {
        let started = Instant::now();
        if let Err(e) = self.admit(&req) {
            return refuse(stream, e);
        }
        let lock = self.upload_lock(&req.digest);
        let guard = lock.lock().await;
        let answer = self.ingest_locked(&req, stream, started).await;
        drop(guard);
        if matches!(answer.0, Response::Error(_)) && !req.persisted {
            // The item queued for a blob that never came: with the upload lock released,
            // the executor drops it now rather than at its next poll.
            self.inner.writeback_wake.notify_one();
        }
        answer
    }

    /// [`Origin::ingest`] under the digest's upload lock.
    async fn ingest_locked(
        &self,
        req: &UploadRequest,
        stream: &mut BiStream,
        started: Instant,
    ) -> (Response, StreamOutcome) {
        match self.present(req) {
            Ok(Some(response)) => {
                let _ = stream.recv.stop(codes::STREAM_DONE);
                return (response, StreamOutcome::Done);
            }
            Ok(None) => {}
            Err(e) => return refuse(stream, e),
        }
        if let Err(e) = self.queue_write_back(req) {
            return refuse(stream, e);
        }
        if stream.respond(&Response::Proceed).await.is_err() {
            // The sender is gone; its orphan queue item is dropped by the executor.
            return (
                Response::Error(RemoteError::new(ErrorKind::Unavailable, "sender gone")),
                StreamOutcome::Done,
            );
        }
        let (tx, reader) = channel_reader();
        let (committed, pumped) = tokio::join!(
            self.ingest_into_cas(req, move || Ok(reader)),
            pump(&mut stream.recv, tx, Some(req.length), None),
        );
        let fail = |kind, message: String| {
            (
                Response::Error(RemoteError::new(kind, message)),
                StreamOutcome::Done,
            )
        };
        match pumped {
            Pumped::Whole | Pumped::IngestStopped => {}
            Pumped::TooLong => {
                let _ = stream.recv.stop(codes::REFUSED);
                let message = format!("body is longer than the declared {} bytes", req.length);
                return (
                    Response::Error(RemoteError::new(ErrorKind::BadRequest, message)),
                    StreamOutcome::Misbehaved,
                );
            }
            Pumped::Short(n) => {
                let message = format!("body ended after {n} of the declared {} bytes", req.length);
                return fail(ErrorKind::BadRequest, message);
            }
            Pumped::Broken(e) => {
                tracing::debug!(error = %e, "ingest body broke off; nothing stored");
                return fail(ErrorKind::Unavailable, format!("body broke off: {e}"));
            }
            // Not asked for: an ingest's body is bounded by QUIC's idle timeout.
            Pumped::Quiet(after) => {
                let message = format!("no byte for {} s", after.as_secs());
                return fail(ErrorKind::Unavailable, message);
            }
        }
        match committed {
            Ok(length) => {
                self.inner.metrics.add_upload_bytes(length);
                self.inner.metrics.upload_done(started.elapsed());
                // An interrupted resumable upload of the same blob is now moot.
                let _ = tokio::fs::remove_file(self.staged_path(&req.digest)).await;
                if !req.replica {
                    self.spawn_replication(req.namespace.clone(), req.digest);
                }
                (Response::Uploaded { length }, StreamOutcome::Done)
            }
            Err(e) => {
                let _ = stream.recv.stop(codes::INTERNAL);
                (Response::Error(e), StreamOutcome::Done)
            }
        }
    }
}

/// Refuses the ingest (or a stage): stops the stream and answers `e`. Before the body,
/// the sender keeps it for the next owner.
pub(super) fn refuse(stream: &mut BiStream, e: RemoteError) -> (Response, StreamOutcome) {
    let _ = stream.recv.stop(codes::REFUSED);
    (Response::Error(e), StreamOutcome::Done)
}

/// Moves the body from the stream to the blocking reader: exactly `length` bytes when
/// given (else any number), then the end; with `idle`, no more than that between two
/// reads. Anything else fails the reader's read, so that it stores nothing.
pub(super) async fn pump(
    recv: &mut RecvStream,
    mut tx: BatchSender,
    length: Option<u64>,
    idle: Option<std::time::Duration>,
) -> Pumped {
    let mut chunks: [Bytes; CHUNKS_PER_READ] = Default::default();
    let mut have = 0u64;
    loop {
        let read = match idle {
            None => recv.read_chunks(&mut chunks).await,
            Some(idle) => match tokio::time::timeout(idle, recv.read_chunks(&mut chunks)).await {
                Ok(read) => read,
                Err(_) => {
                    let why = format!("no byte for {} s", idle.as_secs());
                    tx.fail(io::Error::new(io::ErrorKind::TimedOut, why)).await;
                    return Pumped::Quiet(idle);
                }
            },
        };
        let n = match read {
            Ok(Some(n)) => n,
            Ok(None) if length.is_none_or(|l| have == l) => {
                return match tx.finish().await {
                    Ok(()) => Pumped::Whole,
                    Err(_) => Pumped::IngestStopped,
                };
            }
            Ok(None) => {
                tx.fail(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body ended early",
                ))
                .await;
                return Pumped::Short(have);
            }
            Err(e) => {
                tx.fail(io::Error::other(e.clone())).await;
                return Pumped::Broken(e);
            }
        };
        for chunk in &mut chunks[..n] {
            let chunk = std::mem::take(chunk);
            have += chunk.len() as u64;
            if length.is_some_and(|l| have > l) {
                tx.fail(io::Error::new(io::ErrorKind::InvalidData, "body too long"))
                    .await;
                return Pumped::TooLong;
            }
            if tx.push(chunk).await.is_err() {
                return Pumped::IngestStopped;
            }
        }
    }
}
