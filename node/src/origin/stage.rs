//! Staged blobs: the origin's side of [`Request::Stage`](crate::proto::Request) and
//! `CommitStaged`, with which a proxy passes on a registry client's chunked upload while
//! the chunks arrive, before the client has named the digest.
//!
//! - **Stage**: refused at once (`TooManyRequests`) while [`MAX_STAGED`] stages are open
//!   or waiting here; otherwise [`Response::Proceed`], and the body goes into
//!   [`Cas::stage`](kraken_storage::cas::Cas::stage) through the bridge: sha256 as the
//!   bytes land, through the page cache, fsynced at the end. A body that breaks off, goes
//!   quiet for [`STAGE_IDLE`] or passes `max_blob_size` leaves nothing. The answer,
//!   [`Response::Staged`], names the bytes by a random token; they wait for their commit
//!   at most [`HOLD_FOR`], and no longer than this process (the store's temp directory is
//!   emptied at start).
//! - **Commit**: the token's bytes are taken (`NotFound` if it is unknown); a digest that
//!   is not theirs is `DigestMismatch` (they are deleted). A digest this origin does not
//!   own is sent on to its owners in ring order, as the proxy sends a file
//!   (`crate::push::ingest_file_to_owners`), with an ingest from the staged file (one copy
//!   between origins, not a second one from the proxy), whose answer is the commit's.
//!   Otherwise it runs as an ingest does ([`super::ingest`]): the admission checks, the digest's
//!   upload lock, a blob already here answered at once, the write-back queued durably
//!   before the blob enters the store, then the store's commit (the BLAKE3 pieces in one
//!   pass over the file, fsync, rename, record, pinned), and only then
//!   [`Response::Uploaded`] and replication to the other owners.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kraken_client::ingest::IngestRequest;
use kraken_storage::Digest;
use kraken_storage::cas::StagedBlob;
use kraken_transport::quic::{BiStream, StreamOutcome};

use super::ingest::{Pumped, pump, refuse};
use super::upload::UploadRequest;
use super::{Origin, internal};
use crate::bridge::channel_reader;
use crate::proto::{ErrorKind, RemoteError, Response};

/// Stages open or waiting for their commit on one origin, at most.
pub const MAX_STAGED: usize = 64;
/// Longest staged bytes wait for their commit.
pub const HOLD_FOR: Duration = Duration::from_secs(600);
/// Longest a stage's body may go without a byte (a registry client between two chunks).
pub const STAGE_IDLE: Duration = Duration::from_secs(600);

/// Staged bytes waiting for their commit.
struct Held {
    blob: StagedBlob,
    /// When the stage started (the upload's duration is counted from there).
    started: Instant,
    /// When the bytes were complete.
    staged_at: Instant,
}

/// The stages of one origin.
#[derive(Default)]
pub(super) struct Stages {
    held: std::sync::Mutex<HashMap<u64, Held>>,
    /// Stages whose body is still coming.
    open: AtomicUsize,
}

impl Stages {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes what waited too long; returns how many stages are open or waiting.
    fn sweep(&self) -> usize {
        let mut held = self.held();
        held.retain(|_, h| h.staged_at.elapsed() < HOLD_FOR);
        held.len() + self.open.load(Ordering::Relaxed)
    }
}

/// Counts a stage as open while it lives.
struct OpenStage<'a>(&'a AtomicUsize);

impl Drop for OpenStage<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Origin {
    /// Serves a stage; see the module docs.
    pub(super) async fn stage(
        &self,
        namespace: &str,
        stream: &mut BiStream,
    ) -> (Response, StreamOutcome) {
        let started = Instant::now();
        let stages = &self.inner.stages;
        if stages.sweep() >= MAX_STAGED {
            let message = format!("{MAX_STAGED} staged uploads are open here already");
            return refuse(
                stream,
                RemoteError::new(ErrorKind::TooManyRequests, message),
            );
        }
        if let Err(e) = crate::mirror::refuse_writes(&self.inner.router, namespace) {
            return refuse(stream, e);
        }
        stages.open.fetch_add(1, Ordering::Relaxed);
        let _open = OpenStage(&stages.open);
        if stream.respond(&Response::Proceed).await.is_err() {
            let gone = RemoteError::new(ErrorKind::Unavailable, "sender gone");
            return (Response::Error(gone), StreamOutcome::Done);
        }
        let (tx, reader) = channel_reader();
        let cas = self.inner.cas.clone();
        let max = self.inner.config.max_blob_size;
        let staging = tokio::task::spawn_blocking(move || cas.stage(reader, max));
        let pumping = pump(&mut stream.recv, tx, None, Some(STAGE_IDLE));
        let (staged, pumped) = tokio::join!(staging, pumping);
        let why = match pumped {
            Pumped::Whole | Pumped::IngestStopped => None,
            Pumped::Broken(e) => Some(e.to_string()),
            Pumped::Quiet(after) => Some(format!("no byte for {} s", after.as_secs())),
            // Neither without a declared length.
            Pumped::TooLong | Pumped::Short(_) => Some("the body's length was wrong".into()),
        };
        if let Some(why) = why {
            tracing::debug!(why, "a staged body broke off; nothing kept");
            let message = format!("body broke off: {why}");
            return refuse(stream, RemoteError::new(ErrorKind::Unavailable, message));
        }
        let blob = match staged.map_err(internal) {
            Ok(Ok(blob)) => blob,
            Ok(Err(e)) => return refuse(stream, super::upload::disk_error_cas(e)),
            Err(e) => return (Response::Error(e), StreamOutcome::Done),
        };
        let (length, digest) = (blob.length(), *blob.digest());
        tracing::debug!(length, %digest, took = ?started.elapsed(), "upload staged");
        let token = rand::random::<u64>();
        let now = Instant::now();
        stages.held().insert(
            token,
            Held {
                blob,
                started,
                staged_at: now,
            },
        );
        let answer = Response::Staged {
            token,
            length,
            digest,
        };
        (answer, StreamOutcome::Done)
    }

    /// Serves a commit of staged bytes; see the module docs.
    pub(super) async fn commit_stage(
        &self,
        namespace: &str,
        token: u64,
        digest: &Digest,
    ) -> Response {
        let stages = &self.inner.stages;
        stages.sweep();
        let Some(held) = stages.held().remove(&token) else {
            return Response::Error(RemoteError::new(
                ErrorKind::NotFound,
                format!("no staged upload {token:016x} here (expired, or this origin restarted)"),
            ));
        };
        if held.blob.digest() != digest {
            return Response::Error(RemoteError::new(
                ErrorKind::DigestMismatch,
                format!("the staged bytes are {}, not {digest}", held.blob.digest()),
            ));
        }
        if !self.is_owner(digest) {
            return self.forward(namespace, held, digest).await;
        }
        let req = UploadRequest {
            namespace: namespace.to_string(),
            digest: *digest,
            offset: 0,
            length: held.blob.length(),
            replica: false,
            persisted: false,
        };
        if let Err(e) = self.admit(&req) {
            return Response::Error(e);
        }
        let lock = self.upload_lock(digest);
        let guard = lock.lock().await;
        let answer = self.commit_locked(&req, held).await;
        drop(guard);
        if matches!(answer, Response::Error(_)) {
            // The item queued for a blob that never came: dropped now, not at the next poll.
            self.inner.writeback_wake.notify_one();
        }
        answer
    }

    /// [`Origin::commit_stage`] under the digest's upload lock.
    async fn commit_locked(&self, req: &UploadRequest, held: Held) -> Response {
        match self.present(req) {
            Ok(Some(response)) => return response,
            Ok(None) => {}
            Err(e) => return Response::Error(e),
        }
        if let Err(e) = self.queue_write_back(req) {
            return Response::Error(e);
        }
        let Held { blob, started, .. } = held;
        let digest = req.digest;
        let committing = Instant::now();
        let stored = self
            .store_pinned(req, move |cas| cas.commit_staged(blob, &digest, true))
            .await;
        match stored {
            Ok(length) => {
                tracing::debug!(%digest, length, commit = ?committing.elapsed(), since_start = ?started.elapsed(), "staged upload committed");
                self.inner.metrics.add_upload_bytes(length);
                self.inner.metrics.upload_done(started.elapsed());
                // This owner may not be the first in ring order: until the copy arrives,
                // an owner ahead answers reads from this one ([`Origin::metainfo`]).
                self.spawn_replication(req.namespace.clone(), digest);
                Response::Uploaded { length }
            }
            Err(e) => Response::Error(e),
        }
    }

    /// Sends staged bytes of a digest this origin does not own to its owners, as the
    /// proxy's own copy would have gone: one copy between origins rather than a second
    /// one from the proxy. The owner's answer is the commit's.
    async fn forward(&self, namespace: &str, held: Held, digest: &Digest) -> Response {
        let ingest = IngestRequest {
            namespace,
            digest,
            length: held.blob.length(),
            replica: false,
            persisted: false,
        };
        let cluster = &self.inner.cluster;
        match crate::push::ingest_file_to_owners(cluster, ingest, held.blob.path()).await {
            Ok(length) => {
                tracing::debug!(%digest, "staged upload forwarded to its owner");
                Response::Uploaded { length }
            }
            Err(e) => Response::Error(crate::fetch::call_error(e)),
        }
    }
}
