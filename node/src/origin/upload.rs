//! The resumable upload: the origin's side, and the client's (from `kraken_client`).
//!
//! Server ([`Origin::upload`]): a new blob for a repository that mirrors a read-only
//! upstream registry is refused before anything is staged; otherwise bytes land in
//! `uploads/<digest>` (appended at the offset the client names, which must be where the
//! staged file ends) and are fsynced when the body ends, cleanly or not, so a client can ask [`crate::proto::Request::UploadStatus`] and
//! resume. Once the staged file is whole, the write-back is queued (durable), the CAS
//! ingests the file (sha256 checked, blob pinned), and only then is the upload
//! acknowledged. A crash between queueing and ingest leaves a queue item without a blob and
//! without a staged file; the executor drops such orphans (the client never heard
//! "uploaded").
//!
//! Client ([`push_file`], re-exported from `kraken_client::upload`): asks where to resume,
//! then sends the rest of a file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use kraken_storage::Digest;
use kraken_storage::cas::{Cas, CasError};
use kraken_transport::quic::{BiStream, StreamOutcome, codes};
use tokio::io::AsyncWriteExt;

pub use kraken_client::upload::{Pushed, push_file};

use super::{Origin, internal};
use crate::proto::{ErrorKind, RemoteError, Response};

/// An upload request's fields.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    /// Routes the write-back.
    pub namespace: String,
    /// The blob.
    pub digest: Digest,
    /// Where the body starts.
    pub offset: u64,
    /// The whole blob's length.
    pub length: u64,
    /// From another owner (no further replication).
    pub replica: bool,
    /// Already in the backend (no write-back).
    pub persisted: bool,
}

impl Origin {
    pub(super) fn staged_path(&self, digest: &Digest) -> PathBuf {
        self.inner.uploads_dir.join(digest.hex())
    }

    /// How much of an interrupted upload is staged; the blob's length if it is complete.
    pub(super) fn upload_status(&self, digest: &Digest) -> Response {
        match self.inner.cas.info(digest) {
            Ok(Some(info)) if info.state == kraken_storage::cas::BlobState::Complete => {
                return Response::UploadOffset(info.size);
            }
            Ok(_) => {}
            Err(e) => return Response::Error(internal(e)),
        }
        match std::fs::metadata(self.staged_path(digest)) {
            Ok(m) => Response::UploadOffset(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Response::UploadOffset(0),
            Err(e) => Response::Error(internal(e)),
        }
    }

    /// Whether a staged upload of `digest` exists (the write-back executor keeps its
    /// queue item).
    pub(crate) fn has_staged(&self, digest: &Digest) -> bool {
        self.staged_path(digest).exists()
    }

    /// Serves an upload; see the module docs.
    pub(super) async fn upload(
        &self,
        req: UploadRequest,
        stream: &mut BiStream,
    ) -> (Response, StreamOutcome) {
        let started = Instant::now();
        let fail = |kind, msg: String| {
            (
                Response::Error(RemoteError::new(kind, msg)),
                StreamOutcome::Done,
            )
        };
        if let Err(e) = self.admit(&req) {
            return (Response::Error(e), StreamOutcome::Done);
        }
        if req.offset > req.length {
            return fail(
                ErrorKind::BadRequest,
                format!(
                    "offset {} is past the blob's length {}",
                    req.offset, req.length
                ),
            );
        }
        let lock = self.upload_lock(&req.digest);
        let _guard = lock.lock().await;
        // Already here: nothing to receive.
        match self.present(&req) {
            Ok(Some(response)) => {
                let _ = stream.recv.stop(codes::STREAM_DONE);
                return (response, StreamOutcome::Done);
            }
            Ok(None) => {}
            Err(e) => {
                let _ = stream.recv.stop(codes::STREAM_DONE);
                return (Response::Error(e), StreamOutcome::Done);
            }
        }
        let path = self.staged_path(&req.digest);
        let staged = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return (Response::Error(internal(e)), StreamOutcome::Done),
        };
        if staged != req.offset {
            let _ = stream.recv.stop(codes::REFUSED);
            return (
                Response::Error(RemoteError::new(
                    ErrorKind::OffsetMismatch,
                    format!(
                        "origin holds {staged} bytes of {}; resume from there",
                        req.digest
                    ),
                )),
                StreamOutcome::Done,
            );
        }
        let received = match receive_body(&path, staged, req.length, stream).await {
            Ok(n) => n,
            Err(BodyError::TooLong) => {
                let _ = stream.recv.stop(codes::REFUSED);
                return (
                    Response::Error(RemoteError::new(
                        ErrorKind::BadRequest,
                        format!("body is longer than the declared {} bytes", req.length),
                    )),
                    StreamOutcome::Misbehaved,
                );
            }
            Err(BodyError::Disk(e)) => {
                let _ = stream.recv.stop(codes::INTERNAL);
                return (Response::Error(disk_error(e)), StreamOutcome::Done);
            }
        };
        self.inner.metrics.add_upload_bytes(received - staged);
        if received < req.length {
            // The body ended early (the client stopped or its connection broke): the bytes
            // are staged for a resume.
            return (Response::UploadOffset(received), StreamOutcome::Done);
        }
        match self.commit_staged(&req, &path).await {
            Ok(length) => {
                self.inner.metrics.upload_done(started.elapsed());
                if !req.replica {
                    self.spawn_replication(req.namespace.clone(), req.digest);
                }
                (Response::Uploaded { length }, StreamOutcome::Done)
            }
            Err(e) => (Response::Error(e), StreamOutcome::Done),
        }
    }

    /// Queues the write-back (unless persisted), ingests the staged file, and removes it.
    async fn commit_staged(&self, req: &UploadRequest, path: &Path) -> Result<u64, RemoteError> {
        self.queue_write_back(req)?;
        let staged = path.to_path_buf();
        let result = self
            .ingest_into_cas(req, move || {
                std::fs::File::open(&staged).map_err(|e| CasError::Io {
                    op: "open staged upload",
                    path: staged.clone(),
                    source: e,
                })
            })
            .await;
        // A verified blob no longer needs its staged copy; a mismatching one never will.
        if !matches!(&result, Err(e) if e.kind != ErrorKind::DigestMismatch) {
            let _ = tokio::fs::remove_file(path).await;
        }
        result
    }

    /// Refuses a blob this origin must not take: larger than its limit, a replica of a
    /// blob purged here lately, or a new blob for a repository that mirrors a read-only
    /// upstream registry. A copy of a blob the
    /// backend already holds (`persisted`: a read-through blob replicated or repaired to
    /// another owner) is no write into the upstream and is taken.
    pub(super) fn admit(&self, req: &UploadRequest) -> Result<(), RemoteError> {
        self.within_limit(req.length)?;
        self.admit_after_purge(req)?;
        if req.persisted {
            return Ok(());
        }
        crate::mirror::refuse_writes(&self.inner.router, &req.namespace)
    }

    /// Refuses a blob larger than this origin takes.
    fn within_limit(&self, length: u64) -> Result<(), RemoteError> {
        let max = self.inner.config.max_blob_size;
        if length > max {
            return Err(RemoteError::new(
                ErrorKind::BadRequest,
                format!("blob of {length} bytes exceeds this origin's limit of {max} bytes"),
            ));
        }
        Ok(())
    }

    /// Queues the blob's write-back, durably, unless the sender's copy is persisted. Done
    /// before the blob enters the store, so that no acknowledged blob is ever missing from
    /// the queue (an orphan item of an ingest that then fails is dropped by the executor).
    pub(super) fn queue_write_back(&self, req: &UploadRequest) -> Result<(), RemoteError> {
        if !req.persisted {
            self.enqueue_write_back(req)?;
        }
        Ok(())
    }

    /// Queues the write-back: due at once for the client's upload, after
    /// `replica_writeback_delay_secs` for a replica (the first owner's write-back is then
    /// done, and the replica's attempt only finds the blob in the backend).
    fn enqueue_write_back(&self, req: &UploadRequest) -> Result<(), RemoteError> {
        let delay = if req.replica {
            Duration::from_secs(self.inner.config.replica_writeback_delay_secs)
        } else {
            Duration::ZERO
        };
        self.inner
            .queue
            .enqueue_after(&req.namespace, &req.digest, SystemTime::now(), delay)
            .map_err(internal)?;
        Ok(())
    }

    /// Ingests the bytes `open` gives into the store, pinned, checking digest and length
    /// (sha256 and the BLAKE3 pieces in one pass); then marks a persisted blob so and
    /// unpins it, or wakes the write-back. A digest or length mismatch is
    /// [`ErrorKind::DigestMismatch`] and stores nothing.
    pub(super) async fn ingest_into_cas<R: std::io::Read>(
        &self,
        req: &UploadRequest,
        open: impl FnOnce() -> Result<R, CasError> + Send + 'static,
    ) -> Result<u64, RemoteError> {
        let (digest, length) = (req.digest, req.length);
        self.store_pinned(req, move |cas| {
            cas.ingest_pinned(&digest, Some(length), open()?)
        })
        .await
    }

    /// What [`Origin::ingest_into_cas`] does after the bytes are read, for any way of
    /// putting blob `req.digest` into the store pinned (`store`, run on a blocking
    /// thread).
    pub(super) async fn store_pinned(
        &self,
        req: &UploadRequest,
        store: impl FnOnce(&Cas) -> Result<kraken_storage::cas::Ingested, CasError> + Send + 'static,
    ) -> Result<u64, RemoteError> {
        let cas = self.inner.cas.clone();
        let ingested = tokio::task::spawn_blocking(move || store(&cas))
            .await
            .map_err(internal)?;
        match ingested {
            Ok(_) if let Err(refused) = self.admit_after_purge(req) => {
                // The blob was purged here while this replica arrived: it must not stay.
                let (cas, digest) = (self.inner.cas.clone(), req.digest);
                let _ = tokio::task::spawn_blocking(move || cas.purge(&digest, None)).await;
                Err(refused)
            }
            Ok(_) => {
                if req.persisted {
                    let cas = &self.inner.cas;
                    cas.set_persisted(&req.digest, true).map_err(internal)?;
                    cas.set_pinned(&req.digest, false).map_err(internal)?;
                } else {
                    self.inner.writeback_wake.notify_one();
                }
                Ok(req.length)
            }
            Err(e @ (CasError::DigestMismatch { .. } | CasError::LengthMismatch { .. })) => {
                Err(RemoteError::new(ErrorKind::DigestMismatch, e.to_string()))
            }
            Err(e) => Err(disk_error_cas(e)),
        }
    }

    /// `Some(Uploaded)` when the blob is complete here (and, as the request asks, marked
    /// persisted or queued for write-back), `None` when it is not. The blob here having
    /// another length is [`ErrorKind::DigestMismatch`]: bytes of the declared length cannot
    /// hash to this digest (nothing checks the bytes themselves, which are not read).
    pub(super) fn present(&self, req: &UploadRequest) -> Result<Option<Response>, RemoteError> {
        match self.inner.cas.info(&req.digest).map_err(internal)? {
            Some(info) if info.state == kraken_storage::cas::BlobState::Complete => {
                if info.size != req.length {
                    return Err(RemoteError::new(
                        ErrorKind::DigestMismatch,
                        format!("{} is {} bytes, not {}", req.digest, info.size, req.length),
                    ));
                }
                // A use: a purge guarded by the last use (garbage collection) keeps it.
                self.inner.cas.touch(&req.digest);
                self.ensure_durable(req)?;
                Ok(Some(Response::Uploaded { length: info.size }))
            }
            _ => Ok(None),
        }
    }

    /// A complete blob is persisted or queued for write-back.
    fn ensure_durable(&self, req: &UploadRequest) -> Result<(), RemoteError> {
        let cas = &self.inner.cas;
        let info = cas.info(&req.digest).map_err(internal)?;
        if info.is_some_and(|i| i.persisted) {
            return Ok(());
        }
        if req.persisted {
            cas.set_persisted(&req.digest, true).map_err(internal)?;
            return Ok(());
        }
        cas.set_pinned(&req.digest, true).map_err(internal)?;
        self.enqueue_write_back(req)?;
        self.inner.writeback_wake.notify_one();
        Ok(())
    }
}

enum BodyError {
    TooLong,
    Disk(std::io::Error),
}

/// Appends the request body to the staged file; returns the staged length afterwards.
/// What arrived is fsynced even if the stream broke.
async fn receive_body(
    path: &Path,
    staged: u64,
    length: u64,
    stream: &mut BiStream,
) -> Result<u64, BodyError> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(BodyError::Disk)?;
    let mut have = staged;
    let mut outcome = Ok(());
    loop {
        match stream.recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => {
                let n = chunk.bytes.len() as u64;
                if have + n > length {
                    outcome = Err(BodyError::TooLong);
                    break;
                }
                if let Err(e) = file.write_all(&chunk.bytes).await {
                    outcome = Err(BodyError::Disk(e));
                    break;
                }
                have += n;
            }
            Ok(None) => break,
            // The client went away: keep what arrived.
            Err(e) => {
                tracing::debug!(error = %e, staged = have, "upload body ended early");
                break;
            }
        }
    }
    if let Err(e) = file.flush().await.and(file.sync_data().await) {
        return Err(BodyError::Disk(e));
    }
    drop(file);
    match outcome {
        Ok(()) => Ok(have),
        Err(e) => {
            // Nothing of this call's bytes is kept: the staged prefix stays as it was.
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
                let _ = f.set_len(staged);
                let _ = f.sync_data();
            }
            Err(e)
        }
    }
}

fn disk_error(e: std::io::Error) -> RemoteError {
    if e.raw_os_error() == Some(28) {
        RemoteError::new(ErrorKind::Unavailable, format!("origin disk is full: {e}"))
    } else {
        internal(e)
    }
}

pub(super) fn disk_error_cas(e: CasError) -> RemoteError {
    match e {
        CasError::NoSpace { .. } => RemoteError::new(ErrorKind::Unavailable, e.to_string()),
        CasError::Io { ref source, .. } if source.raw_os_error() == Some(28) => {
            RemoteError::new(ErrorKind::Unavailable, format!("origin disk is full: {e}"))
        }
        e => internal(e),
    }
}
