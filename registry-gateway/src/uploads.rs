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
//! - `data` is written past the page cache where the file system allows (direct I/O, in
//!   1 MiB writes, a chunk's unaligned tail through the page cache): it is read again only
//!   when the closing `PUT` must send the file itself, and copying every pushed byte into
//!   fresh page-cache pages costs the proxy CPU and evicts what it serves. The fsync that
//!   makes a chunk durable covers direct writes as it covers the page cache.
//! - Sessions idle longer than the TTL, and sessions that received no byte within the
//!   empty TTL of their start, are forgotten on access and swept at start and then every
//!   few minutes (at least twice per empty TTL) when sessions are created.
//! - Caps ([`UploadLimits`]): open sessions and staged bytes, per client address (the one
//!   that started the session, kept in `meta.json`) and in total, counted with atomics
//!   (recounted from `meta.json` at start); past one, a new session or a chunk is refused
//!   with [`UploadError::TooMany`] and, for a chunk, nothing of it is kept. A session
//!   leaves the counts when it is removed (finished, cancelled, expired): a removal first
//!   renames the directory into `.staging/`, so exactly one remover counts it.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use kraken_storage::direct::DirectAppender;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;

use crate::config::{GatewayError, UploadLimits};
use crate::metrics::GatewayMetrics;
use crate::pass_on::{Leg, Legs};

const DATA: &str = "data";
const META: &str = "meta.json";
const STAGING: &str = ".staging";
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Chunks of a request body queued for the blocking writer.
const WRITE_AHEAD: usize = 16;
/// Bytes written between background flushes to disk.
const FLUSH_EVERY: usize = 64 << 20;
/// Bytes of one write of a session's data (a multiple of the direct-I/O alignment).
const WRITE_BUFFER: usize = 1 << 20;

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
    /// The client address that started the session (charged for it); absent in sessions
    /// written before it was kept (charged to `0.0.0.0`).
    #[serde(default)]
    client: Option<IpAddr>,
}

impl Meta {
    /// Whether the session is past `ttl` since its last byte, or past `empty_ttl` since
    /// its start without a byte.
    fn expired(&self, ttl: Duration, empty_ttl: Duration) -> bool {
        let now = now_unix();
        if now.saturating_sub(self.updated_unix) > ttl.as_secs() {
            return true;
        }
        if self.received > 0 {
            return false;
        }
        let empty_ms = u64::try_from(empty_ttl.as_millis()).unwrap_or(u64::MAX);
        if self.created_unix_ms > 0 {
            now_unix_ms().saturating_sub(self.created_unix_ms) > empty_ms
        } else {
            now.saturating_sub(self.updated_unix) > empty_ttl.as_secs()
        }
    }

    fn client(&self) -> IpAddr {
        self.client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

/// Sessions and staged bytes, of one client or of all.
#[derive(Debug, Default)]
struct Counts {
    sessions: AtomicU64,
    bytes: AtomicU64,
}

/// Takes `n` from `counter`, never below zero.
fn take(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

/// Adds `n` to `counter` unless that passes `max`.
fn add_within(counter: &AtomicU64, n: u64, max: u64) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            v.checked_add(n).filter(|t| *t <= max)
        })
        .is_ok()
}

/// The counts against [`UploadLimits`].
#[derive(Debug)]
struct Usage {
    limits: UploadLimits,
    total: Counts,
    clients: Mutex<HashMap<IpAddr, Arc<Counts>>>,
}

impl Usage {
    fn new(limits: UploadLimits) -> Self {
        Usage {
            limits,
            total: Counts::default(),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The counts of `client` (kept while anything holds or counts them).
    fn client(&self, client: IpAddr) -> Arc<Counts> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&client) {
            return c.clone();
        }
        if clients.len() >= 4096 {
            clients.retain(|_, c| {
                Arc::strong_count(c) > 1
                    || c.sessions.load(Ordering::Relaxed) > 0
                    || c.bytes.load(Ordering::Relaxed) > 0
            });
        }
        let c = Arc::new(Counts::default());
        clients.insert(client, c.clone());
        c
    }

    /// Counts a new session of `client`, unless a cap refuses it.
    fn add_session(&self, client: &Counts, ip: IpAddr) -> Result<(), UploadError> {
        let l = &self.limits;
        if !add_within(&self.total.sessions, 1, l.max_sessions) {
            return Err(UploadError::TooMany(format!(
                "the gateway holds its maximum of {} open upload sessions",
                l.max_sessions
            )));
        }
        if !add_within(&client.sessions, 1, l.max_sessions_per_client) {
            take(&self.total.sessions, 1);
            return Err(UploadError::TooMany(format!(
                "client {ip} holds its maximum of {} open upload sessions",
                l.max_sessions_per_client
            )));
        }
        Ok(())
    }

    /// Counts `n` more staged bytes of `client`, unless a cap refuses them.
    fn add_bytes(&self, client: &Counts, ip: IpAddr, n: u64) -> Result<(), UploadError> {
        let l = &self.limits;
        if !add_within(&self.total.bytes, n, l.max_staged_bytes) {
            return Err(UploadError::TooMany(format!(
                "the gateway stages its maximum of {} bytes of uploads",
                l.max_staged_bytes
            )));
        }
        if !add_within(&client.bytes, n, l.max_staged_bytes_per_client) {
            take(&self.total.bytes, n);
            return Err(UploadError::TooMany(format!(
                "client {ip} stages its maximum of {} bytes of uploads",
                l.max_staged_bytes_per_client
            )));
        }
        Ok(())
    }

    /// Forgets `sessions` sessions and `bytes` bytes of `client`.
    fn release(&self, client: &Counts, sessions: u64, bytes: u64) {
        take(&self.total.sessions, sessions);
        take(&client.sessions, sessions);
        take(&self.total.bytes, bytes);
        take(&client.bytes, bytes);
    }

    /// Forgets a removed session.
    fn forget(&self, meta: &Meta) {
        let client = self.client(meta.client());
        self.release(&client, 1, meta.received);
    }

    /// Counts a session found at start, whatever the caps.
    fn recount(&self, meta: &Meta) {
        let client = self.client(meta.client());
        for c in [&self.total, &*client] {
            c.sessions.fetch_add(1, Ordering::Relaxed);
            c.bytes.fetch_add(meta.received, Ordering::Relaxed);
        }
    }
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
    /// A cap on sessions or staged bytes ([`UploadLimits`]) refuses more.
    #[error("{0}")]
    TooMany(String),
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

/// Removes session directory `dir` (under `root`) by first renaming it into the staging
/// area: `true` only for the caller whose rename took it (it accounts for the session).
fn claim_and_remove_sync(root: &Path, dir: &Path) -> io::Result<bool> {
    let Some(grave) = claim_sync(root, dir)? else {
        return Ok(false);
    };
    std::fs::remove_dir_all(&grave)?;
    Ok(true)
}

/// Moves session directory `dir` into the staging area, where nobody sees it as a
/// session; `None` if another remover got there first. The caller deletes it.
fn claim_sync(root: &Path, dir: &Path) -> io::Result<Option<PathBuf>> {
    let grave = root
        .join(STAGING)
        .join(format!("gone-{}", UploadId::random().as_str()));
    match std::fs::rename(dir, &grave) {
        Ok(()) => Ok(Some(grave)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// All upload sessions under one directory.
pub(crate) struct UploadStore {
    dir: PathBuf,
    ttl: Duration,
    empty_ttl: Duration,
    sweep_every: Duration,
    usage: Arc<Usage>,
    metrics: GatewayMetrics,
    locks: Mutex<HashMap<UploadId, Weak<tokio::sync::Mutex<()>>>>,
    last_sweep: Mutex<Instant>,
    /// Sessions' bytes on their way to the cluster ([`crate::pass_on`]).
    legs: Legs,
}

impl std::fmt::Debug for UploadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl UploadStore {
    /// Opens (creating) the directory, empties its staging area, sweeps expired sessions
    /// and counts the others against `limits`.
    pub(crate) fn open(
        dir: PathBuf,
        ttl: Duration,
        limits: UploadLimits,
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
        let empty_ttl = limits.empty_ttl;
        let store = UploadStore {
            dir: dir.clone(),
            ttl,
            empty_ttl,
            sweep_every: SWEEP_EVERY.min(empty_ttl / 2),
            usage: Arc::new(Usage::new(limits)),
            metrics,
            locks: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(Instant::now()),
            legs: Legs::default(),
        };
        sweep_sync(&dir, ttl, empty_ttl, &HashMap::new()).map_err(fail)?;
        for entry in std::fs::read_dir(&dir).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let is_session = entry.file_name().to_str().and_then(UploadId::parse);
            if let Some(meta) = is_session.and_then(|_| read_meta_sync(&entry.path())) {
                store.usage.recount(&meta);
            }
        }
        Ok(store)
    }

    /// The sessions' legs ([`crate::pass_on`]).
    pub(crate) fn legs(&self) -> &Legs {
        &self.legs
    }

    /// How long a session lives without a byte.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    fn session_dir(&self, id: &UploadId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    /// The staging directory (same file system as the sessions).
    pub(crate) fn staging_dir(&self) -> PathBuf {
        self.dir.join(STAGING)
    }

    /// Whether a writer holds (or waits for) session `id`'s lock.
    fn busy(&self, id: &UploadId) -> bool {
        let locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.get(id).is_some_and(|w| w.strong_count() > 0)
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

    /// Starts a session for `repo`, charged to `client`, already locked by the caller.
    pub(crate) async fn create(&self, repo: &str, client: IpAddr) -> Result<Session, UploadError> {
        self.maybe_sweep();
        let counts = self.usage.client(client);
        self.usage.add_session(&counts, client)?;
        let charged = Charged {
            usage: self.usage.clone(),
            counts,
            ip: client,
            session: true,
        };
        let id = UploadId::random();
        let guard = self.lock_for(&id).lock_owned().await;
        let meta = Meta {
            repo: repo.to_string(),
            received: 0,
            updated_unix: now_unix(),
            created_unix_ms: now_unix_ms(),
            client: Some(client),
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
            root: self.dir.clone(),
            meta,
            metrics: self.metrics.clone(),
            charged: charged.keep(),
            _guard: guard,
        })
    }

    /// Reads a session's metadata, checking its repository and age. Without `locked` (a
    /// status read), a session someone is writing to is never expired here: its first
    /// chunk may still be arriving.
    async fn load(&self, repo: &str, id: &UploadId, locked: bool) -> Result<Meta, UploadError> {
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
        if meta.expired(self.ttl, self.empty_ttl) && (locked || !self.busy(id)) {
            let (root, usage, m) = (self.dir.clone(), self.usage.clone(), meta.clone());
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(true) = claim_and_remove_sync(&root, &dir) {
                    usage.forget(&m);
                }
            })
            .await;
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
        let meta = self.load(repo, &id, false).await?;
        Ok((id, meta.received))
    }

    /// Opens session `id` of `repo` for writing (waiting for any other writer).
    pub(crate) async fn open_session(&self, repo: &str, id: &str) -> Result<Session, UploadError> {
        let id = UploadId::parse(id).ok_or(UploadError::Unknown)?;
        let guard = self.lock_for(&id).lock_owned().await;
        let meta = self.load(repo, &id, true).await?;
        let ip = meta.client();
        Ok(Session {
            dir: self.session_dir(&id),
            root: self.dir.clone(),
            id,
            charged: Charged {
                usage: self.usage.clone(),
                counts: self.usage.client(ip),
                ip,
                session: false,
            },
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
            if last.elapsed() < self.sweep_every {
                return;
            }
            *last = Instant::now();
        }
        let busy = self.locks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (dir, ttl, empty_ttl) = (self.dir.clone(), self.ttl, self.empty_ttl);
        let usage = self.usage.clone();
        tokio::task::spawn_blocking(move || match sweep_sync(&dir, ttl, empty_ttl, &busy) {
            Ok(gone) => gone.iter().for_each(|m| usage.forget(m)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "sweeping upload sessions failed");
            }
        });
    }
}

/// Deletes expired or broken sessions that nobody is writing to; the metadata of the
/// sessions it removed (to be forgotten by the counts).
fn sweep_sync(
    dir: &Path,
    ttl: Duration,
    empty_ttl: Duration,
    busy: &HashMap<UploadId, Weak<tokio::sync::Mutex<()>>>,
) -> io::Result<Vec<Meta>> {
    let mut gone = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(UploadId::parse) else {
            continue;
        };
        if busy.get(&id).is_some_and(|w| w.strong_count() > 0) {
            continue;
        }
        let meta = read_meta_sync(&entry.path());
        if meta.as_ref().is_none_or(|m| m.expired(ttl, empty_ttl)) {
            tracing::debug!(id = id.as_str(), "removing expired upload session");
            if claim_and_remove_sync(dir, &entry.path())?
                && let Some(meta) = meta
            {
                gone.push(meta);
            }
        }
    }
    Ok(gone)
}

/// A session's claim on the counts: its client's, and whether it holds a session slot
/// not yet written to disk (released if the session is never made).
struct Charged {
    usage: Arc<Usage>,
    counts: Arc<Counts>,
    ip: IpAddr,
    session: bool,
}

impl Charged {
    /// The session exists on disk: from now on its removal releases its slot.
    fn keep(mut self) -> Self {
        self.session = false;
        self
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        if self.session {
            self.usage.release(&self.counts, 1, 0);
        }
    }
}

/// A session opened for writing; holds its lock until dropped.
pub(crate) struct Session {
    id: UploadId,
    dir: PathBuf,
    /// The uploads directory.
    root: PathBuf,
    meta: Meta,
    charged: Charged,
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
    /// The bytes are written by one blocking thread in [`WRITE_BUFFER`] writes (past the
    /// page cache where the file system allows), with a flush to disk every
    /// [`FLUSH_EVERY`] bytes on another, so the one fsync at the end has little left to
    /// wait for.
    ///
    /// With a `leg` whose bytes are the session's so far, each chunk is also handed to it
    /// as it arrives; the leg is dropped (set to `None`) if the chunk fails, or the leg
    /// does ([`crate::pass_on`]).
    pub(crate) async fn append(
        &mut self,
        body: Body,
        expected: Option<u64>,
        leg: &mut Option<Leg>,
    ) -> Result<u64, UploadError> {
        let start = self.meta.received;
        if leg.as_ref().is_some_and(|l| l.sent() != start) {
            *leg = None;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(WRITE_AHEAD);
        let path = self.data_path();
        let writer = tokio::task::spawn_blocking(move || write_at_end(&path, start, rx));
        let mut fed_bytes = 0;
        let fed = feed(body, expected, &tx, leg, &self.charged, &mut fed_bytes).await;
        if fed.is_ok() {
            // The writer is gone only if it failed, which it reports below.
            let _ = tx.send(Write::Commit).await;
        }
        drop(tx);
        let written = writer.await;
        // What was charged for chunks not kept is released.
        let kept = matches!((&fed, &written), (Ok(_), Ok(Ok(()))));
        if !kept {
            let c = &self.charged;
            c.usage.release(&c.counts, 0, fed_bytes);
        }
        if !kept {
            // The leg holds bytes the session does not.
            *leg = None;
        }
        let written = written.map_err(joined)?;
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
            let counted = tokio::task::spawn_blocking(move || write_meta_sync(&dir, &m))
                .await
                .map_err(joined)
                .and_then(|r| r);
            if let Err(e) = counted {
                // The chunk is not counted in `meta.json`: not charged either.
                *leg = None;
                let c = &self.charged;
                c.usage.release(&c.counts, 0, n);
                return Err(e.into());
            }
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

    /// Deletes the session and its bytes (and releases them from the counts). The session
    /// is gone when this returns; its bytes are deleted in the background (deleting a
    /// large file takes a while, and the client waits for the answer this precedes), or
    /// at the next start if the process dies first.
    pub(crate) async fn remove(self) -> io::Result<()> {
        let (root, dir) = (self.root.clone(), self.dir.clone());
        let claimed = tokio::task::spawn_blocking(move || claim_sync(&root, &dir))
            .await
            .map_err(joined)??;
        if let Some(grave) = claimed {
            let c = &self.charged;
            c.usage.release(&c.counts, 1, self.meta.received);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::remove_dir_all(&grave) {
                    tracing::warn!(path = %grave.display(), error = %e, "deleting a removed upload session");
                }
            });
        }
        Ok(())
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

/// Sends `body` to the writer, refusing more than `limit` bytes (and, with a limit, fewer)
/// and bytes past the staged-byte caps; returns the count. `charged` counts the bytes
/// charged to the caps, whatever the outcome.
async fn feed(
    body: Body,
    limit: Option<u64>,
    tx: &tokio::sync::mpsc::Sender<Write>,
    leg: &mut Option<Leg>,
    charge: &Charged,
    charged: &mut u64,
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
        charge
            .usage
            .add_bytes(&charge.counts, charge.ip, chunk.len() as u64)?;
        *charged += chunk.len() as u64;
        if let Some(l) = leg
            && !l.send(chunk.clone()).await
        {
            tracing::debug!("the cluster stopped taking an upload's chunks; the PUT sends them");
            *leg = None;
        }
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
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(start)?;
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
        let mut out = DirectAppender::new(file, start, WRITE_BUFFER);
        let mut unflushed = 0usize;
        while let Some(write) = rx.blocking_recv() {
            match write {
                Write::Chunk(bytes) => {
                    out.append(&bytes)?;
                    unflushed += bytes.len();
                    if unflushed >= FLUSH_EVERY {
                        let _ = flush_tx.try_send(());
                        unflushed = 0;
                    }
                }
                Write::Commit => {
                    out.finish()?;
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
        let store = store_at(tmp.path(), limits());
        let mut s = store.create("repo", CLIENT).await.unwrap();
        assert_eq!(
            s.append(Body::from("hello "), None, &mut None)
                .await
                .unwrap(),
            6
        );
        // Wrong length: refused, nothing kept.
        assert!(matches!(
            s.append(Body::from("xx"), Some(5), &mut None).await,
            Err(UploadError::Length { .. })
        ));
        assert_eq!(s.received(), 6);
        let id = s.id().as_str().to_string();
        drop(s);
        drop(store);

        let store = store_at(tmp.path(), limits());
        assert_eq!(store.status("repo", &id).await.unwrap().1, 6);
        assert!(matches!(
            store.status("other", &id).await,
            Err(UploadError::Unknown)
        ));
        let mut s = store.open_session("repo", &id).await.unwrap();
        s.append(Body::from("world"), Some(5), &mut None)
            .await
            .unwrap();
        assert_eq!(s.received(), 11);
        assert_eq!(std::fs::read(s.data_path()).unwrap(), b"hello world");
        // A body shorter than its range: refused, nothing kept.
        assert!(matches!(
            s.append(Body::from("ab"), Some(3), &mut None).await,
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

    /// A body of `data` in chunks of `chunk` bytes, as a client's stream arrives.
    fn streamed(data: &[u8], chunk: usize) -> Body {
        let parts: Vec<Result<Bytes, io::Error>> = data
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(futures::stream::iter(parts))
    }

    #[tokio::test]
    async fn chunks_of_odd_lengths_land_whole_and_a_failed_one_is_cut_back() {
        // Past the 1 MiB writes and their alignment: unaligned starts, tails, a chunk
        // refused after some of it was written.
        let tmp = tempfile::tempdir().unwrap();
        let store = store_at(tmp.path(), limits());
        let mut s = store.create("repo", CLIENT).await.unwrap();
        let data: Vec<u8> = (0..(5 << 20) + 12_345u32)
            .map(|i| (i % 251) as u8)
            .collect();
        let (a, rest) = data.split_at((2 << 20) + 5);
        let n = s
            .append(streamed(a, 65_536), None, &mut None)
            .await
            .unwrap();
        assert_eq!(n, a.len() as u64);
        // Longer than its range says: refused once past it, with 2 MiB already written.
        let bad = vec![9u8; 3 << 20];
        let refused = s
            .append(
                streamed(&bad, 100_000),
                Some(bad.len() as u64 - 1),
                &mut None,
            )
            .await;
        assert!(matches!(refused, Err(UploadError::Length { .. })));
        assert_eq!(s.received(), a.len() as u64);
        assert!(std::fs::read(s.data_path()).unwrap() == a);
        let n = s
            .append(streamed(rest, 77_777), None, &mut None)
            .await
            .unwrap();
        assert_eq!(n, rest.len() as u64);
        assert!(std::fs::read(s.data_path()).unwrap() == data);
    }

    #[tokio::test]
    async fn completed_sessions_count_their_duration_when_known() {
        let tmp = tempfile::tempdir().unwrap();
        let metrics = GatewayMetrics::new();
        let store =
            UploadStore::open(tmp.path().into(), DEFAULT_TTL, limits(), metrics.clone()).unwrap();
        let mut s = store.create("repo", CLIENT).await.unwrap();
        s.append(Body::from("x"), None, &mut None).await.unwrap();
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
        let s = store.create("repo", CLIENT).await.unwrap();
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
            UploadLimits {
                empty_ttl: Duration::from_secs(1),
                ..limits()
            },
            GatewayMetrics::new(),
        )
        .unwrap();
        let s = store.create("repo", CLIENT).await.unwrap();
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
    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn limits() -> UploadLimits {
        UploadLimits::default()
    }

    fn store_at(dir: &Path, limits: UploadLimits) -> UploadStore {
        UploadStore::open(dir.into(), DEFAULT_TTL, limits, GatewayMetrics::new()).unwrap()
    }

    #[tokio::test]
    async fn caps_count_sessions_and_bytes_per_client_and_in_total() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = UploadLimits {
            max_sessions: 3,
            max_sessions_per_client: 2,
            max_staged_bytes: 10,
            max_staged_bytes_per_client: 6,
            ..limits()
        };
        let open = || store_at(tmp.path(), limits.clone());
        let store = open();
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let third = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
        let mut a = store.create("repo", CLIENT).await.unwrap();
        let b = store.create("repo", CLIENT).await.unwrap();
        // Per client: a third session of CLIENT is refused; another client's is not.
        assert!(matches!(
            store.create("repo", CLIENT).await,
            Err(UploadError::TooMany(m)) if m.contains("127.0.0.1")
        ));
        let mut c = store.create("repo", other).await.unwrap();
        // In total: 3 sessions.
        assert!(matches!(
            store.create("repo", third).await,
            Err(UploadError::TooMany(_))
        ));
        // Bytes per client: 6; a chunk past it is refused whole and not counted.
        a.append(Body::from("12345"), None, &mut None)
            .await
            .unwrap();
        assert!(matches!(
            a.append(Body::from("67"), None, &mut None).await,
            Err(UploadError::TooMany(_))
        ));
        assert_eq!(a.received(), 5);
        assert_eq!(std::fs::read(a.data_path()).unwrap(), b"12345");
        a.append(Body::from("6"), None, &mut None).await.unwrap();
        // Bytes in total: 10 (6 of CLIENT's, so 4 left for the other).
        c.append(Body::from("1234"), None, &mut None).await.unwrap();
        assert!(matches!(
            c.append(Body::from("5"), None, &mut None).await,
            Err(UploadError::TooMany(_))
        ));
        let (a_id, c_id) = (a.id().clone(), c.id().clone());
        drop((a, c));
        // Reopened, the counts are recounted from disk.
        drop(store);
        let store = open();
        assert!(matches!(
            store.create("repo", third).await,
            Err(UploadError::TooMany(_))
        ));
        // Removing a session frees its slot and its bytes.
        let a = store.open_session("repo", a_id.as_str()).await.unwrap();
        a.remove().await.unwrap();
        let mut c = store.open_session("repo", c_id.as_str()).await.unwrap();
        c.append(Body::from("56"), None, &mut None).await.unwrap();
        let d = store.create("repo", third).await.unwrap();
        drop((b, c, d));
    }

    #[tokio::test]
    async fn empty_sessions_expire_early_and_free_their_slot() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = UploadLimits {
            max_sessions: 1,
            max_sessions_per_client: 1,
            empty_ttl: Duration::from_millis(200),
            ..limits()
        };
        let store = store_at(tmp.path(), limits);
        let s = store.create("repo", CLIENT).await.unwrap();
        let id = s.id().as_str().to_string();
        drop(s);
        assert!(store.status("repo", &id).await.is_ok());
        assert!(matches!(
            store.create("repo", CLIENT).await,
            Err(UploadError::TooMany(_))
        ));
        // Past its empty TTL while a writer holds it (a first chunk still arriving): a
        // status read leaves it alone.
        let writing = store.open_session("repo", &id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(store.status("repo", &id).await.unwrap().1, 0);
        drop(writing);
        assert!(matches!(
            store.status("repo", &id).await,
            Err(UploadError::Unknown)
        ));
        assert!(!tmp.path().join(&id).exists());
        // A session with bytes is not "empty".
        let mut s = store.create("repo", CLIENT).await.unwrap();
        s.append(Body::from("x"), None, &mut None).await.unwrap();
        let id = s.id().as_str().to_string();
        drop(s);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(store.status("repo", &id).await.unwrap().1, 1);
    }
}
