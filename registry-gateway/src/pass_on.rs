//! Chunked uploads passed on to the cluster as their chunks arrive.
//!
//! A registry client's chunked upload (`PATCH`es, or one `PATCH` with no length, as
//! skopeo, podman and docker send every blob) names its digest only in the closing `PUT`.
//! The session keeps every chunk on this disk as before (that copy is what a `202`
//! promises, and what a retry, a resumption or a failure falls back to), and a [`Leg`]
//! also sends each chunk on to the cluster while it arrives ([`Registry::stage_blob`]),
//! where it is hashed and written as it comes. The `PUT` then only names the digest
//! ([`Registry::commit_staged`]) instead of sending the whole blob again.
//!
//! A leg is only ever a shortcut. It starts with a session's first byte, lives in memory
//! (a restart forgets it), and is dropped, and the cluster's copy with it, whenever it
//! could disagree with the session: a chunk that failed or was refused, a cluster that
//! stalled or refused the bytes, a digest that is not sha256. The `PUT` of a session
//! without a leg sends the staged file as it always did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::registry::{Registry, RegistryError, StagedUpload};
use crate::uploads::UploadId;

/// Chunks queued for the cluster ahead of its reading.
const AHEAD: usize = 64;
/// Longest a chunk waits for the cluster to take it before the leg is given up (the
/// cluster's own stall watchdog normally decides much sooner).
const SEND_LIMIT: Duration = Duration::from_secs(30);
/// Legs kept at once: past this, new sessions go without one.
const MAX_LEGS: usize = 256;

/// One upload session's bytes on their way to the cluster. Dropping it abandons them.
pub(crate) struct Leg {
    tx: Option<mpsc::Sender<Bytes>>,
    /// Bytes handed to the cluster, in the session's order from its first byte.
    sent: u64,
    task: JoinHandle<Result<StagedUpload, RegistryError>>,
    touched: Instant,
}

impl Drop for Leg {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Leg {
    /// Starts passing a new session's bytes of `repo` on to `registry`.
    pub(crate) fn start<R: Registry>(registry: &Arc<R>, repo: &str) -> Leg {
        let (tx, rx) = mpsc::channel(AHEAD);
        let (registry, repo) = (registry.clone(), repo.to_string());
        let task = tokio::spawn(async move { registry.stage_blob(&repo, rx).await });
        Leg {
            tx: Some(tx),
            sent: 0,
            task,
            touched: Instant::now(),
        }
    }

    /// Bytes handed on so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Hands the next chunk on; false if the cluster failed or stopped taking them (the
    /// leg is then useless: drop it).
    pub(crate) async fn send(&mut self, chunk: Bytes) -> bool {
        let Some(tx) = &self.tx else { return false };
        let n = chunk.len() as u64;
        // Most chunks find room at once: no timer for them.
        let sent = match tx.try_send(chunk) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(chunk)) => {
                matches!(
                    tokio::time::timeout(SEND_LIMIT, tx.send(chunk)).await,
                    Ok(Ok(()))
                )
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        if sent {
            self.sent += n;
            self.touched = Instant::now();
        } else {
            self.tx = None;
        }
        sent
    }

    /// Ends the bytes and waits for the cluster to hold them all.
    pub(crate) async fn finish(mut self) -> Result<StagedUpload, RegistryError> {
        if self.tx.take().is_none() {
            return Err(RegistryError::Unavailable("the leg was given up".into()));
        }
        match (&mut self.task).await {
            Ok(staged) => staged,
            Err(e) => Err(RegistryError::Internal(e.to_string())),
        }
    }
}

/// The legs of a gateway's sessions, by session.
#[derive(Default)]
pub(crate) struct Legs {
    legs: Mutex<HashMap<UploadId, Leg>>,
}

impl Legs {
    /// Takes session `id`'s leg out (the session's writer holds it while it writes).
    pub(crate) fn take(&self, id: &UploadId) -> Option<Leg> {
        self.lock().remove(id)
    }

    /// Keeps `leg` for session `id`'s next chunk. Legs idle longer than `idle` go (their
    /// sessions expired or were abandoned), and past [`MAX_LEGS`] this one goes instead.
    pub(crate) fn keep(&self, id: UploadId, leg: Leg, idle: Duration) {
        let mut legs = self.lock();
        legs.retain(|_, l| l.touched.elapsed() < idle);
        if legs.len() < MAX_LEGS {
            legs.insert(id, leg);
        }
    }

    /// Whether a new session may start a leg.
    pub(crate) fn room(&self) -> bool {
        self.lock().len() < MAX_LEGS
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, Leg>> {
        self.legs.lock().unwrap_or_else(|e| e.into_inner())
    }
}
