//! Durable blob upload sessions on the local disk.
//!
//! Each session is a directory `<uploads_dir>/<id>/` holding `data` (the bytes received so
//! far) and `meta.json` (`repo`, `received`, `updated_unix`). `meta.json` is the truth: it
//! is replaced atomically (write, fsync, rename, fsync the directory) only after the chunk
//! it counts is on disk, and a chunk that fails half-way is cut off again, so after a crash
//! or restart a session resumes at exactly the offset the client was last told.
//!
//! - Ids are 128 random bits as 32 lower-case hex characters; anything else is refused
//!   before a path is built from it (no traversal).
//! - A session is built in `<uploads_dir>/.staging/` and renamed into place, so a
//!   half-created one is never seen. `.staging/` also holds the gateway's temporary
//!   manifest files and is emptied at start.
//! - One writer at a time per session (an async lock); status reads take no lock.
//! - Sessions idle longer than the TTL are forgotten on access and swept at start and
//!   then every few minutes when sessions are created.

use std::collections::HashMap;
use std::io::{self, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;

use crate::config::GatewayError;
use crate::metrics::GatewayMetrics;

const DATA: &str = "data";
const META: &str = "meta.json";
const STAGING: &str = ".staging";
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Chunks of a request body queued for the blocking writer.
const WRITE_AHEAD: usize = 16;
/// Bytes written between background flushes to disk.
const FLUSH_EVERY: usize = 64 << 20;

/// A session id: 32 lower-case hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct UploadId(String);

impl UploadId {
    /// A fresh random id.
    pub(crate) fn random() -> Self {
        UploadId(format!("{:032x}", rand::random::<u128>()))
    }

    /// Parses an id from a URL; `None` unless exactly 32 lower-case hex characters.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        (s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| UploadId(s.to_string()))
    }

    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// What `meta.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    repo: String,
    received: u64,
    updated_unix: u64,
    /// When the session started, in milliseconds since the epoch (0 in sessions written
    /// before it was kept: their duration is unknown).
    #[serde(default)]
    created_unix_ms: u64,
}

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    /// No such session (unknown id, other repository, finished or expired).
    #[error("upload session unknown")]
    Unknown,
    /// The client's body broke off; nothing of it was kept.
    #[error("request body failed: {0}")]
    Body(#[source] axum::Error),
    /// A chunk's length differs from its `Content-Range`.
    #[error("chunk has {got} bytes but its range says {expected}")]
    Length {
        /// From the `Content-Range`.
        expected: u64,
        /// What arrived (at least).
        got: u64,
    },
    /// The disk failed.
    #[error("upload storage: {0}")]
    Io(#[from] io::Error),
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn now_unix() -> u64 {
    since_epoch().as_secs()
}

fn now_unix_ms() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

fn joined(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Writes `meta.json` atomically and durably.
fn write_meta_sync(dir: &Path, meta: &Meta) -> io::Result<()> {
    let bytes = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let tmp = dir.join("meta.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(META))?;
    std::fs::File::open(dir)?.sync_all()
}

fn read_meta_sync(dir: &Path) -> Option<Meta> {
    let bytes = std::fs::read(dir.join(META)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// All upload sessions under one directory.
pub(crate) struct UploadStore {
    dir: PathBuf,
    ttl: Duration,
    metrics: GatewayMetrics,
    locks: Mutex<HashMap<UploadId, Weak<tokio::sync::Mutex<()>>>>,
    last_sweep: Mutex<Instant>,
}

impl std::fmt::Debug for UploadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl UploadStore {
    /// Opens (creating) the directory, empties its staging area and sweeps expired
    /// sessions.
    pub(crate) fn open(
        dir: PathBuf,
        ttl: Duration,
        metrics: GatewayMetrics,
    ) -> Result<Self, GatewayError> {
        let fail = |source| GatewayError::UploadsDir {
            path: dir.clone(),
            source,
        };
        let staging = dir.join(STAGING);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(fail)?;
        }
        std::fs::create_dir_all(&staging).map_err(fail)?;
        let store = UploadStore {
            dir: dir.clone(),
            ttl,
            metrics,
            locks: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(Instant::now()),
        };
        sweep_sync(&dir, ttl, &HashMap::new()).map_err(fail)?;
        Ok(store)
    }

    fn session_dir(&self, id: &UploadId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    /// The staging directory (same file system as the sessions).
    pub(crate) fn staging_dir(&self) -> PathBuf {
        self.dir.join(STAGING)
    }

    fn lock_for(&self, id: &UploadId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = locks.get(id).and_then(Weak::upgrade) {
            return l;
        }
        if locks.len() > 1024 {
            locks.retain(|_, w| w.strong_count() > 0);
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(id.clone(), Arc::downgrade(&l));
        l
    }

    /// Starts a session for `repo`, already locked by the caller.
    pub(crate) async fn create(&self, repo: &str) -> Result<Session, UploadError> {
        self.maybe_sweep();
        let id = UploadId::random();
        let guard = self.lock_for(&id).lock_owned().await;
        let meta = Meta {
            repo: repo.to_string(),
            received: 0,
            updated_unix: now_unix(),
            created_unix_ms: now_unix_ms(),
        };
        let staged = self.staging_dir().join(format!("session-{}", id.as_str()));
        let dir = self.session_dir(&id);
        let m = meta.clone();
        let d = dir.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            std::fs::create_dir(&staged)?;
            std::fs::File::create(staged.join(DATA))?.sync_all()?;
            write_meta_sync(&staged, &m)?;
            std::fs::rename(&staged, &d)?;
            if let Some(parent) = d.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(joined)??;
        Ok(Session {
            id,
            dir,
            meta,
            metrics: self.metrics.clone(),
            _guard: guard,
        })
    }

    /// Reads a session's metadata, checking its repository and age.
    async fn load(&self, repo: &str, id: &UploadId) -> Result<Meta, UploadError> {
        let dir = self.session_dir(id);
        let meta = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || read_meta_sync(&dir)
        })
        .await
        .map_err(joined)?
        .ok_or(UploadError::Unknown)?;
        if meta.repo != repo {
            return Err(UploadError::Unknown);
        }
        if now_unix().saturating_sub(meta.updated_unix) > self.ttl.as_secs() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(UploadError::Unknown);
        }
        Ok(meta)
    }

    /// The bytes received so far by session `id` of `repo`.
    pub(crate) async fn status(
        &self,
        repo: &str,
        id: &str,
    ) -> Result<(UploadId, u64), UploadError> {
        let id = UploadId::parse(id).ok_or(UploadError::Unknown)?;
        let meta = self.load(repo, &id).await?;
        Ok((id, meta.received))
    }

    /// Opens session `id` of `repo` for writing (waiting for any other writer).
    pub(crate) async fn open_session(&self, repo: &str, id: &str) -> Result<Session, UploadError> {
        let id = UploadId::parse(id).ok_or(UploadError::Unknown)?;
        let guard = self.lock_for(&id).lock_owned().await;
        let meta = self.load(repo, &id).await?;
        Ok(Session {
            dir: self.session_dir(&id),
            id,
            meta,
            metrics: self.metrics.clone(),
            _guard: guard,
        })
    }

    /// A fresh path in the staging directory, removed when the returned guard drops.
    pub(crate) fn staging_file(&self) -> StagedFile {
        StagedFile {
            path: self
                .staging_dir()
                .join(format!("file-{}", UploadId::random().as_str())),
        }
    }

    fn maybe_sweep(&self) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < SWEEP_EVERY {
                return;
            }
            *last = Instant::now();
        }
        let busy = self.locks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (dir, ttl) = (self.dir.clone(), self.ttl);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = sweep_sync(&dir, ttl, &busy) {
                tracing::warn!(dir = %dir.display(), error = %e, "sweeping upload sessions failed");
            }
        });
    }
}

/// Deletes expired or broken sessions that nobody is writing to.
fn sweep_sync(
    dir: &Path,
    ttl: Duration,
    busy: &HashMap<UploadId, Weak<tokio::sync::Mutex<()>>>,
) -> io::Result<()> {
    let now = now_unix();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(UploadId::parse) else {
            continue;
        };
        if busy.get(&id).is_some_and(|w| w.strong_count() > 0) {
            continue;
        }
        let expired = match read_meta_sync(&entry.path()) {
            Some(meta) => now.saturating_sub(meta.updated_unix) > ttl.as_secs(),
            None => true,
        };
        if expired {
            tracing::info!(id = id.as_str(), "removing expired upload session");
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// A session opened for writing; holds its lock until dropped.
pub(crate) struct Session {
    id: UploadId,
    dir: PathBuf,
    meta: Meta,
    metrics: GatewayMetrics,
    _guard: OwnedMutexGuard<()>,
}

impl Session {
    /// The id.
    pub(crate) fn id(&self) -> &UploadId {
        &self.id
    }

    /// Bytes received so far.
    pub(crate) fn received(&self) -> u64 {
        self.meta.received
    }

    /// The file holding the bytes.
    pub(crate) fn data_path(&self) -> PathBuf {
        self.dir.join(DATA)
    }

    /// Appends `body` at the current end; with `expected`, the body must be exactly that
    /// long. All or nothing: on any failure the data is cut back and the count unchanged.
    /// Durable when it returns: the bytes are fsynced, then `meta.json` counts them.
    ///
    /// The bytes are written by one blocking thread in the chunks the body arrives in, with
    /// a flush to disk every [`FLUSH_EVERY`] bytes on another, so the one fsync at the end
    /// has little left to wait for.
    pub(crate) async fn append(
        &mut self,
        body: Body,
        expected: Option<u64>,
    ) -> Result<u64, UploadError> {
        let start = self.meta.received;
        let (tx, rx) = tokio::sync::mpsc::channel(WRITE_AHEAD);
        let path = self.data_path();
        let writer = tokio::task::spawn_blocking(move || write_at_end(&path, start, rx));
        let fed = feed(body, expected, &tx).await;
        if fed.is_ok() {
            // The writer is gone only if it failed, which it reports below.
            let _ = tx.send(Write::Commit).await;
        }
        drop(tx);
        let written = writer.await.map_err(joined)?;
        let n = match (fed, written) {
            (Err(e), _) => return Err(e),
            (Ok(_), Err(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Err(UploadError::Unknown);
            }
            (Ok(_), Err(e)) => return Err(e.into()),
            (Ok(n), Ok(())) => n,
        };
        if n > 0 {
            let meta = Meta {
                received: start + n,
                updated_unix: now_unix(),
                ..self.meta.clone()
            };
            let (dir, m) = (self.dir.clone(), meta.clone());
            tokio::task::spawn_blocking(move || write_meta_sync(&dir, &m))
                .await
                .map_err(joined)??;
            self.meta = meta;
            self.metrics.add_upload_bytes(n);
        }
        Ok(n)
    }

    /// Deletes the session of an upload whose blob is stored, counting its duration
    /// (since the session started, when known).
    pub(crate) async fn completed(self) -> io::Result<()> {
        if self.meta.created_unix_ms > 0 {
            let ms = now_unix_ms().saturating_sub(self.meta.created_unix_ms);
            self.metrics.upload_done(Duration::from_millis(ms));
        }
        self.remove().await
    }

    /// Deletes the session and its bytes.
    pub(crate) async fn remove(self) -> io::Result<()> {
        match tokio::fs::remove_dir_all(&self.dir).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// What the body feeds the writer of [`Session::append`].
enum Write {
    /// The next bytes.
    Chunk(Bytes),
    /// The body is complete and its length right: make it durable. Without it, the writer
    /// cuts the file back.
    Commit,
}

/// Sends `body` to the writer, refusing more than `limit` bytes (and, with a limit, fewer);
/// returns the count.
async fn feed(
    body: Body,
    limit: Option<u64>,
    tx: &tokio::sync::mpsc::Sender<Write>,
) -> Result<u64, UploadError> {
    let mut stream = body.into_data_stream();
    let mut n: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(UploadError::Body)?;
        let next = n + chunk.len() as u64;
        if let Some(l) = limit
            && next > l
        {
            return Err(UploadError::Length {
                expected: l,
                got: next,
            });
        }
        n = next;
        if tx.send(Write::Chunk(chunk)).await.is_err() {
            // The writer failed; it says why.
            break;
        }
    }
    match limit {
        Some(l) if l != n => Err(UploadError::Length {
            expected: l,
            got: n,
        }),
        _ => Ok(n),
    }
}

/// The blocking side of [`Session::append`]: writes the chunks from `rx` at `start` in
/// `path` and, on [`Write::Commit`], fsyncs them; without it (the body failed) or on any
/// error, cuts the file back to `start`. The bytes are counted by the feeder.
fn write_at_end(
    path: &Path,
    start: u64,
    mut rx: tokio::sync::mpsc::Receiver<Write>,
) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(start)?;
    file.seek(io::SeekFrom::Start(start))?;
    let file = &file;
    let committed = std::thread::scope(|s| {
        // Flushing as we go overlaps the disk's work with receiving. Requests coalesce:
        // at most one pending. Errors resurface at the final, checked fsync.
        let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel::<()>(1);
        s.spawn(move || {
            for () in flush_rx {
                let _ = file.sync_data();
            }
        });
        let mut out = file;
        let mut unflushed = 0usize;
        while let Some(write) = rx.blocking_recv() {
            match write {
                Write::Chunk(bytes) => {
                    out.write_all(&bytes)?;
                    unflushed += bytes.len();
                    if unflushed >= FLUSH_EVERY {
                        let _ = flush_tx.try_send(());
                        unflushed = 0;
                    }
                }
                Write::Commit => {
                    file.sync_data()?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    });
    match committed {
        Ok(true) => Ok(()),
        Ok(false) => file.set_len(start),
        Err(e) => {
            let _ = file.set_len(start);
            Err(e)
        }
    }
}

/// A temporary file in the staging directory, deleted on drop.
#[derive(Debug)]
pub(crate) struct StagedFile {
    path: PathBuf,
}

impl StagedFile {
    /// Where to write.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strict() {
        let id = UploadId::random();
        assert_eq!(UploadId::parse(id.as_str()), Some(id));
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            &"A".repeat(32),
            &"a".repeat(31),
            &"a".repeat(33),
            ".staging",
        ] {
            assert!(UploadId::parse(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn sessions_survive_reopen_and_cut_failed_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let store =
            UploadStore::open(tmp.path().into(), DEFAULT_TTL, GatewayMetrics::new()).unwrap();
        let mut s = store.create("repo").await.unwrap();
        assert_eq!(s.append(Body::from("hello "), None).await.unwrap(), 6);
        // Wrong length: refused, nothing kept.
        assert!(matches!(
            s.append(Body::from("xx"), Some(5)).await,
            Err(UploadError::Length { .. })
        ));
        assert_eq!(s.received(), 6);
        let id = s.id().as_str().to_string();
        drop(s);
        drop(store);

        let store =
            UploadStore::open(tmp.path().into(), DEFAULT_TTL, GatewayMetrics::new()).unwrap();
        assert_eq!(store.status("repo", &id).await.unwrap().1, 6);
        assert!(matches!(
            store.status("other", &id).await,
            Err(UploadError::Unknown)
        ));
        let mut s = store.open_session("repo", &id).await.unwrap();
        s.append(Body::from("world"), Some(5)).await.unwrap();
        assert_eq!(s.received(), 11);
        assert_eq!(std::fs::read(s.data_path()).unwrap(), b"hello world");
        // A body shorter than its range: refused, nothing kept.
        assert!(matches!(
            s.append(Body::from("ab"), Some(3)).await,
            Err(UploadError::Length {
                expected: 3,
                got: 2
            })
        ));
        assert_eq!(std::fs::read(s.data_path()).unwrap(), b"hello world");
        s.remove().await.unwrap();
        assert!(matches!(
            store.status("repo", &id).await,
            Err(UploadError::Unknown)
        ));
    }

    #[tokio::test]
    async fn completed_sessions_count_their_duration_when_known() {
        let tmp = tempfile::tempdir().unwrap();
        let metrics = GatewayMetrics::new();
        let store = UploadStore::open(tmp.path().into(), DEFAULT_TTL, metrics.clone()).unwrap();
        let mut s = store.create("repo").await.unwrap();
        s.append(Body::from("x"), None).await.unwrap();
        let id = s.id().as_str().to_string();
        drop(s);
        // Reopened (as by the PUT that finishes it), it still knows when it started.
        let s = store.open_session("repo", &id).await.unwrap();
        s.completed().await.unwrap();
        let counted = "kraken_gateway_upload_duration_seconds_count 1";
        assert!(metrics.render().lines().any(|l| l == counted));
        assert!(matches!(
            store.status("repo", &id).await,
            Err(UploadError::Unknown)
        ));

        // A session written before the start time was kept: completed, not counted.
        let s = store.create("repo").await.unwrap();
        let id = s.id().as_str().to_string();
        drop(s);
        let dir = tmp.path().join(&id);
        let old = format!(
            r#"{{"repo":"repo","received":0,"updated_unix":{}}}"#,
            now_unix()
        );
        std::fs::write(dir.join(META), old).unwrap();
        let s = store.open_session("repo", &id).await.unwrap();
        s.completed().await.unwrap();
        assert!(metrics.render().lines().any(|l| l == counted));
    }

    #[tokio::test]
    async fn expired_sessions_are_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        let store = UploadStore::open(
            tmp.path().into(),
            Duration::from_secs(1),
            GatewayMetrics::new(),
        )
        .unwrap();
        let s = store.create("repo").await.unwrap();
        let id = s.id().as_str().to_string();
        drop(s);
        // Age the session by rewriting its metadata.
        let dir = tmp.path().join(&id);
        let mut meta = read_meta_sync(&dir).unwrap();
        meta.updated_unix -= 10;
        write_meta_sync(&dir, &meta).unwrap();
        assert!(matches!(
            store.status("repo", &id).await,
            Err(UploadError::Unknown)
        ));
        assert!(!dir.exists());
    }

    const DEFAULT_TTL: Duration = Duration::from_secs(3600);
}
