//! Scrubbing: an origin re-verifies the blobs it stores, quarantines a corrupt copy at
//! once and restores it.
//!
//! What is checked: every byte of a complete blob is re-read and hashed, against the
//! digest (sha256 or sha512) and against the piece hashes of its stored metainfo (BLAKE3,
//! what agents check each received piece against) — `kraken_storage::cas::Verifier`.
//!
//! When: three ways, all through [`Origin::check`] (one check of a digest at a time;
//! concurrent askers share it).
//! - The background walk ([`run`]) goes through the store in digest order at
//!   `scrub_bytes_per_sec` (a token bucket shared by the walk), one pass at most every
//!   `scrub_interval_ms`. It reads the pages it checks past the page cache's favour
//!   (`POSIX_FADV_DONTNEED` after each step), so the walk does not evict the blobs being
//!   served. How far the pass got is written to `scrub.state` in the data directory every
//!   few seconds and at the end of each pass; after a restart the walk resumes after the
//!   last digest recorded (at most [`SAVE_EVERY`] of work is redone), and a finished
//!   pass's start time keeps the interval across restarts.
//! - Suspects: a peer that received a bad piece from this origin says so
//!   (`Request::SuspectBlob`), and a write-back the backend refused because the bytes did
//!   not hash to the digest does too. Suspects go into a [`SuspectQueue`]: bounded, one
//!   entry per digest, and each digest at most once per [`SUSPECT_COOLDOWN`], so no peer
//!   can make the origin re-hash without end; they are checked ahead of the walk, at a
//!   faster rate of their own ([`prompt_rate`]), even when the walk is off.
//! - `Request::Scrub`: one digest or the whole store, now, without a rate limit (an
//!   operator asked and waits for the report).
//!
//! A corrupt copy is quarantined at once: its seeding task stops (no more pieces from it),
//! its record and metainfo leave the store (no metainfo, `BlobStat` says not present,
//! sessions for it are refused), and its file is set aside in the store's `quarantine/`
//! within [`QUARANTINE_KEEP_BYTES`] (for a post-mortem of what rotted; a larger blob is
//! deleted). It is then restored: downloaded whole from another owner (checked against
//! the digest on the way in; an owner whose copy is corrupt too is told so), else read
//! through from the backend if it was written back. While it is quarantined its write-back
//! item waits; a copy restored from another owner is queued for write-back again unless it
//! was persisted. A corrupt copy is never written back: the backend's upload checks the
//! digest before committing (see [`super::writeback`]).

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kraken_client::download::{Download, DownloadError};
use kraken_membership::Member;
use kraken_storage::Digest;
use kraken_storage::cas::{BlobState, CasError, Quarantined, Verdict, Verifier};
use kraken_storage::time::now_ms;
use kraken_transport::limit::RateLimiter;
use tokio::sync::{Notify, watch};
use tracing::Instrument as _;

use super::Origin;
use super::upload::UploadRequest;
use crate::bounded::Cooldown;
use crate::bridge::{channel_reader, feed};
use crate::flight::Flights;
use crate::proto::{DEFAULT_NAMESPACE, ErrorKind, Request, Response, ScrubReport};

/// Default `scrub_bytes_per_sec`: 32 MiB/s.
pub const DEFAULT_BYTES_PER_SEC: u64 = 32 << 20;
/// Default `scrub_interval_ms`: one day.
pub const DEFAULT_INTERVAL_MS: u64 = 24 * 3600 * 1000;
/// Bytes of corrupt copies kept in `quarantine/`; the oldest go first.
pub const QUARANTINE_KEEP_BYTES: u64 = 1 << 30;
/// Suspects waiting for a check, at most.
pub const SUSPECT_QUEUE: usize = 256;
/// A digest is checked for a suspect report at most this often.
pub const SUSPECT_COOLDOWN: Duration = Duration::from_secs(600);
/// How often the walk records how far it got.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);
/// Blobs listed at a time by the walk.
const PAGE: usize = 64;
/// Bytes read per step under a rate limit (a token-bucket grant).
const STEP: usize = 1 << 20;
/// Bytes read per step without one.
const FAST_STEP: usize = 8 << 20;
/// How long the walk waits after the store could not be listed.
const RETRY_LIST: Duration = Duration::from_secs(30);

/// Suspects' read rate: four times the walk's, and at least 128 MiB/s, so a reported
/// blob is checked in seconds while a flood of reports still cannot take the disk.
pub fn prompt_rate(scrub_bytes_per_sec: u64) -> u64 {
    scrub_bytes_per_sec.saturating_mul(4).max(128 << 20)
}

/// What became of a [`SuspectQueue::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for a check.
    Queued,
    /// Already waiting.
    Duplicate,
    /// Checked for a report within [`SUSPECT_COOLDOWN`].
    Recent,
    /// The queue is full; the report is dropped (the walk still gets there).
    Full,
}

/// Digests reported as possibly corrupt, waiting for a check: bounded, deduplicated, and
/// each digest at most once per cooldown. Pure: time comes from the caller.
#[derive(Debug)]
pub struct SuspectQueue {
    queue: VecDeque<Digest>,
    cap: usize,
    recent: Cooldown<Digest>,
}

impl SuspectQueue {
    /// A queue of at most `cap` digests, each accepted at most once per `cooldown`.
    pub fn new(cap: usize, cooldown: Duration) -> Self {
        SuspectQueue {
            queue: VecDeque::new(),
            cap,
            // Remembering more keys than the queue holds: a flood of distinct digests
            // cannot make a recent one forgotten before its cooldown passes.
            recent: Cooldown::new(cap.saturating_mul(16), cooldown),
        }
    }

    /// Offers `digest` for a check.
    pub fn offer(&mut self, digest: Digest, now: Instant) -> Offer {
        if self.queue.contains(&digest) {
            return Offer::Duplicate;
        }
        if self.queue.len() >= self.cap {
            return Offer::Full;
        }
        if !self.recent.allow(digest, now) {
            return Offer::Recent;
        }
        self.queue.push_back(digest);
        Offer::Queued
    }

    /// The next digest to check, oldest report first.
    pub fn pop(&mut self) -> Option<Digest> {
        self.queue.pop_front()
    }

    /// Digests waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// How far the background walk got: the last digest checked in the pass under way
/// (`None` between passes), and when the last pass started. Kept in `scrub.state`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkState {
    /// The pass resumes after this digest; `None`: no pass under way.
    pub cursor: Option<Digest>,
    /// When the latest pass started (ms since the epoch).
    pub pass_started_ms: Option<u64>,
}

impl WalkState {
    /// The file's text: one `key=value` line each.
    pub fn encode(&self) -> String {
        let cursor = self.cursor.map(|d| d.to_string()).unwrap_or_default();
        let started = self
            .pass_started_ms
            .map(|ms| ms.to_string())
            .unwrap_or_default();
        format!("cursor={cursor}\npass_started_ms={started}\n")
    }

    /// Reads the file's text; what does not parse is left out (losing the state only
    /// costs a pass started early or from the beginning).
    pub fn decode(text: &str) -> WalkState {
        let mut state = WalkState::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("cursor", v)) => state.cursor = v.parse().ok(),
                Some(("pass_started_ms", v)) => state.pass_started_ms = v.parse().ok(),
                _ => {}
            }
        }
        state
    }

    /// How long until the walk should read on at `now_ms`: at once while a pass is under
    /// way, else when `interval_ms` has passed since the last pass started.
    pub fn wait(&self, now_ms: u64, interval_ms: u64) -> Duration {
        if self.cursor.is_some() {
            return Duration::ZERO;
        }
        let due = self
            .pass_started_ms
            .map_or(0, |ms| ms.saturating_add(interval_ms));
        Duration::from_millis(due.saturating_sub(now_ms))
    }
}

/// What one check of a blob found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The store holds no complete copy.
    Absent,
    /// The copy is intact.
    Intact {
        /// Bytes read.
        bytes: u64,
    },
    /// The copy was corrupt, was quarantined, and a correct one took its place.
    Restored {
        /// Bytes read by the check.
        bytes: u64,
        /// Where the correct copy came from.
        from: String,
    },
    /// The copy was corrupt and quarantined, and no correct copy was found.
    Lost {
        /// Bytes read by the check.
        bytes: u64,
        /// Why each source failed.
        error: String,
    },
    /// The copy could not be checked (it stays as it is).
    Failed(String),
}

impl Checked {
    /// The check's counts.
    pub fn report(&self) -> ScrubReport {
        let one = |bytes, corrupt, restored, failed| ScrubReport {
            checked: 1,
            bytes,
            corrupt,
            restored,
            failed,
        };
        match self {
            Checked::Absent => ScrubReport::default(),
            Checked::Intact { bytes } => one(*bytes, 0, 0, 0),
            Checked::Restored { bytes, .. } => one(*bytes, 1, 1, 0),
            Checked::Lost { bytes, .. } => one(*bytes, 1, 0, 1),
            Checked::Failed(_) => one(0, 0, 0, 1),
        }
    }
}

/// How a check reads: its rate, whether it drops what it read from the page cache, and
/// what stops it.
#[derive(Clone)]
pub(crate) struct Pace {
    limiter: Option<RateLimiter>,
    drop_cache: bool,
    stop: Option<watch::Receiver<bool>>,
}

/// The scrubber's part of an origin.
pub(crate) struct ScrubState {
    suspects: Mutex<SuspectQueue>,
    wake: Notify,
    checks: Arc<Flights<Digest, Checked>>,
    /// Quarantined and not (yet) restored: their write-back items wait.
    quarantined: Mutex<HashSet<Digest>>,
    /// The walk's bucket; `None`: no walk.
    walk: Option<RateLimiter>,
    /// The suspects' bucket.
    prompt: Option<RateLimiter>,
    interval_ms: u64,
    state_path: PathBuf,
}

impl ScrubState {
    pub(crate) fn new(config: &super::OriginConfig, state_path: PathBuf) -> Self {
        let rate = config.scrub_bytes_per_sec;
        ScrubState {
            suspects: Mutex::new(SuspectQueue::new(SUSPECT_QUEUE, SUSPECT_COOLDOWN)),
            wake: Notify::new(),
            checks: Arc::default(),
            quarantined: Mutex::new(HashSet::new()),
            walk: (rate > 0).then(|| RateLimiter::new(rate, 0).ok()).flatten(),
            prompt: RateLimiter::new(prompt_rate(rate), 0).ok(),
            interval_ms: config.scrub_interval_ms,
            state_path,
        }
    }
}

impl Origin {
    fn scrub_state(&self) -> &ScrubState {
        &self.inner.scrub
    }

    /// Queues a prompt check of `digest` (a peer got a bad piece of it from here, or its
    /// write-back did not match); answers at once.
    pub(crate) fn suspect(&self, digest: &Digest) -> Response {
        if !self.inner.cas.contains(digest).unwrap_or(false) {
            tracing::debug!(%digest, "suspect report about a blob not held here");
            return Response::SuspectNoted { queued: false };
        }
        let offer = self
            .scrub_state()
            .suspects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .offer(*digest, Instant::now());
        let queued = offer == Offer::Queued;
        if queued {
            tracing::warn!(%digest, "blob reported as possibly corrupt; checking it");
            self.inner.metrics.scrub().suspects.inc();
            self.scrub_state().wake.notify_one();
        } else {
            tracing::debug!(%digest, ?offer, "suspect report not queued");
        }
        Response::SuspectNoted { queued }
    }

    /// Whether `digest` is quarantined and not restored (its write-back waits).
    pub(crate) fn is_quarantined(&self, digest: &Digest) -> bool {
        self.scrub_state()
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(digest)
    }

    /// Checks one blob (`Some`) or every complete blob now, without a rate limit.
    pub async fn scrub_now(&self, digest: Option<Digest>) -> ScrubReport {
        let pace = |drop_cache| Pace {
            limiter: None,
            drop_cache,
            stop: None,
        };
        if let Some(digest) = digest {
            // One blob someone asked about is likely being served: keep its pages.
            return self.check(digest, pace(false)).await.report();
        }
        let cas = self.inner.cas.clone();
        let blobs = match tokio::task::spawn_blocking(move || cas.list()).await {
            Ok(Ok(blobs)) => blobs,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "scrub: cannot list the store");
                return ScrubReport {
                    failed: 1,
                    ..ScrubReport::default()
                };
            }
            Err(_) => return ScrubReport::default(),
        };
        let mut report = ScrubReport::default();
        for info in blobs.iter().filter(|b| b.state == BlobState::Complete) {
            report.add(&self.check(info.digest, pace(true)).await.report());
        }
        tracing::info!(?report, "scrub pass on request done");
        report
    }

    /// Checks `digest`, and quarantines and restores it if it is corrupt. Concurrent
    /// checks of one digest share the first one's run.
    pub(crate) async fn check(&self, digest: Digest, pace: Pace) -> Checked {
        let origin = self.clone();
        let span = tracing::info_span!("scrub", %digest);
        let work = move || async move { origin.check_once(digest, pace).await }.instrument(span);
        self.scrub_state()
            .checks
            .run(digest, work)
            .await
            .unwrap_or_else(|| Checked::Failed("the check's task died".into()))
    }

    async fn check_once(&self, digest: Digest, pace: Pace) -> Checked {
        let metrics = self.inner.metrics.scrub();
        let (verdict, bytes) = match self.verify(&digest, &pace).await {
            Ok(Some(found)) => found,
            Ok(None) => return Checked::Absent,
            Err(e) => {
                tracing::warn!(error = %e, "scrub: cannot check the blob");
                return Checked::Failed(e.to_string());
            }
        };
        metrics.blobs.inc();
        let corruption = match verdict {
            Verdict::Intact => return Checked::Intact { bytes },
            Verdict::Corrupt(c) => c.to_string(),
        };
        metrics.corrupt.inc();
        tracing::error!(corruption, "stored copy is corrupt; quarantining it");
        match self.quarantine_and_restore(&digest).await {
            Ok(Some(from)) => {
                metrics.restored.inc();
                tracing::info!(from, "corrupt copy restored");
                Checked::Restored { bytes, from }
            }
            Ok(None) => Checked::Absent,
            Err(error) => {
                metrics.restore_failures.inc();
                tracing::error!(error, "corrupt copy quarantined and not restored");
                Checked::Lost { bytes, error }
            }
        }
    }

    /// Reads the whole blob at `pace`: `None` if it is not held, else the verdict and the
    /// bytes read. A read that fails (an I/O error on the medium) is a corrupt copy: it
    /// cannot be served either; a missing metainfo is one too.
    async fn verify(
        &self,
        digest: &Digest,
        pace: &Pace,
    ) -> Result<Option<(Verdict, u64)>, VerifyError> {
        let (cas, d, drop_cache) = (self.inner.cas.clone(), *digest, pace.drop_cache);
        let opened = tokio::task::spawn_blocking(move || cas.verifier(&d, drop_cache)).await?;
        let mut verifier: Verifier = match opened {
            Ok(v) => v,
            Err(CasError::NotFound(_)) => return Ok(None),
            Err(CasError::CorruptRecord(why)) => return Ok(Some((unreadable(why), 0))),
            Err(e) => return Err(e.into()),
        };
        let step = if pace.limiter.is_some() {
            STEP
        } else {
            FAST_STEP
        };
        let metrics = self.inner.metrics.scrub();
        while !verifier.done() {
            if pace.stop.as_ref().is_some_and(|s| *s.borrow()) {
                return Err(VerifyError::Stopped);
            }
            if let Some(limiter) = &pace.limiter {
                let left = verifier.len() - verifier.checked();
                limiter.acquire(left.min(step as u64)).await;
            }
            let (v, read) = tokio::task::spawn_blocking(move || {
                let read = verifier.step(step);
                (verifier, read)
            })
            .await?;
            verifier = v;
            match read {
                Ok(n) => {
                    metrics.bytes.inc_by(n);
                }
                Err(e) => {
                    let bytes = verifier.checked();
                    return Ok(Some((unreadable(e.to_string()), bytes)));
                }
            }
        }
        let bytes = verifier.checked();
        Ok(Some((verifier.finish(), bytes)))
    }

    /// Takes the corrupt copy out of service and puts a correct one in its place:
    /// `Ok(Some(source))` once restored, `Ok(None)` if the copy was gone already,
    /// `Err(why)` if no source had a correct copy.
    async fn quarantine_and_restore(&self, digest: &Digest) -> Result<Option<String>, String> {
        let cas = self.inner.cas.clone();
        let info = match cas.info(digest) {
            Ok(Some(info)) => info,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let namespace = self
            .queued_namespace(digest)
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        self.set_quarantined(digest, true);
        let d = *digest;
        let moved = tokio::task::spawn_blocking(move || cas.quarantine(&d, QUARANTINE_KEEP_BYTES))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        // The record went first, so no new seeding task can open the copy; the running
        // one goes now (and with it, its reader): no more pieces from it.
        self.inner.exchange.stop(digest).await;
        match moved {
            Ok(Quarantined::SetAside(aside)) => {
                tracing::warn!(aside = %aside.display(), "corrupt copy quarantined");
            }
            Ok(Quarantined::Deleted) => tracing::warn!("corrupt copy quarantined and deleted"),
            Ok(Quarantined::Absent) => {
                self.set_quarantined(digest, false);
                return Ok(None);
            }
            Err(e) => {
                self.set_quarantined(digest, false);
                return Err(format!("cannot quarantine: {e}"));
            }
        }
        let restored = self
            .restore(&namespace, digest, info.size, info.persisted)
            .await;
        self.set_quarantined(digest, false);
        if restored.is_err() {
            // Nothing to write back any more: let the executor drop the item now.
            self.inner.writeback_wake.notify_one();
        }
        restored.map(Some)
    }

    fn set_quarantined(&self, digest: &Digest, on: bool) {
        let mut set = self
            .scrub_state()
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if on {
            set.insert(*digest);
        } else {
            set.remove(digest);
        }
    }

    /// A correct copy of `digest` back into the store: from another owner, else from the
    /// backend. Returns where it came from, or why every source failed.
    async fn restore(
        &self,
        namespace: &str,
        digest: &Digest,
        length: u64,
        persisted: bool,
    ) -> Result<String, String> {
        let mut errors = Vec::new();
        let others: Vec<Member> = self
            .owners(digest)
            .into_iter()
            .filter(|m| m.id != self.inner.me)
            .collect();
        for owner in others {
            match self
                .restore_from(&owner, namespace, digest, length, persisted)
                .await
            {
                Ok(()) => return Ok(format!("origin {}", owner.id)),
                Err(e) => errors.push(format!("{}: {e}", owner.id)),
            }
        }
        let mut fetch = self.read_through(namespace, digest);
        match fetch.wait_for(Option::is_some).await.as_deref() {
            Ok(Some(Ok(()))) => return Ok("the backend".into()),
            Ok(Some(Err(e))) => errors.push(format!("backend: {e}")),
            _ => errors.push("backend: the read-through ended without a result".into()),
        }
        Err(errors.join("; "))
    }

    /// Downloads the whole blob from `owner` into the store (checked against the digest on
    /// the way in), queued for write-back unless it was `persisted`. An owner whose copy
    /// does not match is told to check it.
    async fn restore_from(
        &self,
        owner: &Member,
        namespace: &str,
        digest: &Digest,
        length: u64,
        persisted: bool,
    ) -> Result<(), String> {
        let cluster = &self.inner.cluster;
        let download = Download::open(cluster, owner.quic_addr, digest, None)
            .await
            .map_err(|e| e.to_string())?;
        if download.total() != length {
            return Err(format!("it holds {} bytes, not {length}", download.total()));
        }
        let req = UploadRequest {
            namespace: namespace.to_string(),
            digest: *digest,
            offset: 0,
            length,
            replica: true,
            persisted,
        };
        let lock = self.upload_lock(digest);
        let _guard = lock.lock().await;
        if self.inner.cas.contains(digest).unwrap_or(false) {
            // An upload or a read-through stored a fresh copy meanwhile.
            return Ok(());
        }
        self.queue_write_back(&req).map_err(|e| e.to_string())?;
        let mismatch = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = mismatch.clone();
        let body = Box::pin(futures::StreamExt::inspect(
            download.into_stream(),
            move |r| {
                if matches!(r, Err(DownloadError::Mismatch { .. })) {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            },
        ));
        let (tx, reader) = channel_reader();
        let (stored, _) = tokio::join!(
            self.ingest_into_cas(&req, move || Ok(reader)),
            feed(body, tx)
        );
        match stored {
            Ok(_) => Ok(()),
            Err(e) => {
                let bad_copy = mismatch.load(std::sync::atomic::Ordering::Relaxed)
                    || e.kind == ErrorKind::DigestMismatch;
                if bad_copy {
                    self.tell_suspect(owner, digest);
                }
                Err(e.to_string())
            }
        }
    }

    /// Tells `owner` its copy of `digest` did not match (fire-and-forget).
    fn tell_suspect(&self, owner: &Member, digest: &Digest) {
        let (cluster, addr) = (self.inner.cluster.clone(), owner.quic_addr);
        let request = Request::SuspectBlob { digest: *digest };
        crate::spawn(async move {
            if let Err(e) = cluster.call(addr, &request).await {
                tracing::debug!(%addr, error = %e, "could not report a corrupt copy");
            }
        });
    }

    fn next_suspect(&self) -> Option<Digest> {
        self.scrub_state()
            .suspects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Checks every queued suspect.
    async fn drain_suspects(&self, stop: &watch::Receiver<bool>) {
        while let Some(digest) = self.next_suspect() {
            let pace = Pace {
                limiter: self.scrub_state().prompt.clone(),
                drop_cache: false,
                stop: Some(stop.clone()),
            };
            self.check(digest, pace).await;
        }
    }

    fn load_walk(&self) -> WalkState {
        std::fs::read_to_string(&self.scrub_state().state_path)
            .map(|t| WalkState::decode(&t))
            .unwrap_or_default()
    }

    /// Writes the walk's state (write-then-rename: a crash leaves the old or the new).
    fn save_walk(&self, walk: &WalkState) {
        let path = &self.scrub_state().state_path;
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, walk.encode()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "scrub: cannot record progress");
        }
    }
}

/// Why a blob could not be checked (it stays as it is).
#[derive(Debug, thiserror::Error)]
enum VerifyError {
    /// The store failed before the blob's bytes could be read.
    #[error(transparent)]
    Cas(#[from] CasError),
    /// A task of the check died.
    #[error("a scrub task died: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopped,
}

/// The corrupt verdict of a copy that cannot be read whole.
fn unreadable(why: String) -> Verdict {
    tracing::warn!(error = %why, "scrub: the stored copy cannot be read");
    Verdict::Corrupt(kraken_storage::cas::Corruption {
        bad_pieces: Vec::new(),
        bad_piece_count: 0,
        short: None,
        digest_matches: false,
    })
}

/// The scrubber: suspects first, then the background walk; until `stop`.
pub async fn run(origin: Origin, mut stop: watch::Receiver<bool>) {
    let mut walk = origin.load_walk();
    let mut saved = Instant::now();
    let mut pass = ScrubReport::default();
    loop {
        if *stop.borrow() {
            origin.save_walk(&walk);
            return;
        }
        origin.drain_suspects(&stop).await;
        let s = origin.scrub_state();
        let wait = match &s.walk {
            Some(_) => walk.wait(now_ms(), s.interval_ms),
            None => Duration::MAX,
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
                _ = s.wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        if walk.cursor.is_none() {
            walk.pass_started_ms = Some(now_ms());
            pass = ScrubReport::default();
            origin.save_walk(&walk);
        }
        let (cas, after) = (origin.inner.cas.clone(), walk.cursor);
        let page = tokio::task::spawn_blocking(move || cas.list_page(after.as_ref(), PAGE)).await;
        let page = match page {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "scrub: cannot list the store");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_LIST) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            Err(_) => return,
        };
        if page.is_empty() {
            walk.cursor = None;
            origin.save_walk(&walk);
            tracing::info!(report = ?pass, "scrub pass done");
            continue;
        }
        for info in page {
            if *stop.borrow() {
                break;
            }
            origin.drain_suspects(&stop).await;
            if info.state == BlobState::Complete {
                let pace = Pace {
                    limiter: s.walk.clone(),
                    drop_cache: true,
                    stop: Some(stop.clone()),
                };
                let checked = origin.check(info.digest, pace).await;
                if matches!(&checked, Checked::Failed(_)) && *stop.borrow() {
                    break; // Stopped mid-blob: resume at it.
                }
                pass.add(&checked.report());
            }
            walk.cursor = Some(info.digest);
            if saved.elapsed() >= SAVE_EVERY {
                origin.save_walk(&walk);
                saved = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u8) -> Digest {
        Digest::sha256_of(&[i])
    }

    #[test]
    fn suspects_are_bounded_deduplicated_and_cooled_down() {
        let t0 = Instant::now();
        let mut q = SuspectQueue::new(2, Duration::from_secs(60));
        assert_eq!(q.offer(d(1), t0), Offer::Queued);
        assert_eq!(q.offer(d(1), t0), Offer::Duplicate);
        assert_eq!(q.offer(d(2), t0), Offer::Queued);
        // Full: the report is dropped, and its cooldown not spent.
        assert_eq!(q.offer(d(3), t0), Offer::Full);
        assert_eq!(q.pop(), Some(d(1)));
        assert_eq!(q.offer(d(3), t0), Offer::Queued);
        assert_eq!(q.pop(), Some(d(2)));
        // Checked lately: not again until the cooldown passed.
        assert_eq!(q.offer(d(1), t0 + Duration::from_secs(59)), Offer::Recent);
        assert_eq!((q.pop(), q.pop()), (Some(d(3)), None));
        assert!(q.is_empty());
        assert_eq!(q.offer(d(1), t0 + Duration::from_secs(60)), Offer::Queued);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_flood_of_reports_costs_one_check_per_digest_per_cooldown() {
        let t0 = Instant::now();
        let mut q = SuspectQueue::new(SUSPECT_QUEUE, SUSPECT_COOLDOWN);
        let mut checks = 0;
        for round in 0..100u64 {
            let now = t0 + Duration::from_secs(round);
            for i in 0..50 {
                q.offer(d(i), now);
            }
            while q.pop().is_some() {
                checks += 1;
            }
        }
        assert_eq!(checks, 50, "100 s of reports, well inside the cooldown");
    }

    #[test]
    fn the_walk_state_round_trips_and_survives_garbage() {
        let state = WalkState {
            cursor: Some(d(7)),
            pass_started_ms: Some(1_700_000_000_000),
        };
        assert_eq!(WalkState::decode(&state.encode()), state);
        assert_eq!(
            WalkState::decode(&WalkState::default().encode()),
            WalkState::default()
        );
        let torn = "cursor=sha256:zz\npass_started_ms=12\nother=1\nnonsense";
        assert_eq!(
            WalkState::decode(torn),
            WalkState {
                cursor: None,
                pass_started_ms: Some(12)
            }
        );
    }

    #[test]
    fn a_pass_resumes_at_once_and_the_next_waits_for_its_interval() {
        let hour = 3_600_000;
        let mid_pass = WalkState {
            cursor: Some(d(1)),
            pass_started_ms: Some(0),
        };
        assert_eq!(mid_pass.wait(10 * hour, hour), Duration::ZERO);
        let between = WalkState {
            cursor: None,
            pass_started_ms: Some(10 * hour),
        };
        assert_eq!(
            between.wait(10 * hour + 1000, hour),
            Duration::from_millis(hour - 1000)
        );
        assert_eq!(between.wait(12 * hour, hour), Duration::ZERO);
        assert_eq!(WalkState::default().wait(5, hour), Duration::ZERO);
    }

    #[test]
    fn suspects_read_faster_than_the_walk() {
        assert_eq!(prompt_rate(0), 128 << 20);
        assert_eq!(prompt_rate(32 << 20), 128 << 20);
        assert_eq!(prompt_rate(64 << 20), 256 << 20);
        assert_eq!(prompt_rate(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_check_counts_what_it_did() {
        let r = Checked::Restored {
            bytes: 10,
            from: "x".into(),
        }
        .report();
        assert_eq!((r.checked, r.bytes, r.corrupt, r.restored), (1, 10, 1, 1));
        let mut total = Checked::Intact { bytes: 5 }.report();
        total.add(&r);
        total.add(
            &Checked::Lost {
                bytes: 1,
                error: String::new(),
            }
            .report(),
        );
        total.add(&Checked::Absent.report());
        assert_eq!(
            total,
            ScrubReport {
                checked: 3,
                bytes: 16,
                corrupt: 2,
                restored: 1,
                failed: 1
            }
        );
    }
}
