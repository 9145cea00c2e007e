//! The piece exchange: one tokio task per active blob drives its [`Swarm`] over QUIC and
//! the local CAS (feature `quic`).
//!
//! The driver holds no policy. For each blob it owns the swarm, the blob's storage (a
//! `PartialBlob` while downloading, a `BlobReader` once complete) and one session stream
//! per peer, and it turns the swarm's outputs into network and disk work:
//!
//! - `Connect` dials through the [`ConnectionPool`] and opens a session stream
//!   (`StreamHeader::Session`); sessions opened by peers arrive through
//!   [`PieceExchange::accept_session`]. When a second session with a peer opens (both
//!   dialled at once), the swarm says which one to keep
//!   ([`Swarm::handle_second_session`]), so each pair keeps exactly one.
//! - `Message` goes to the session's writer task through a queue of [`SESSION_QUEUE`]
//!   messages; a peer that lets it fill is reported `Congested`, and the swarm drops it.
//!   A reader task turns frames into inputs.
//! - `SendPiece` reads the piece from storage and sends it on its own unidirectional
//!   stream, given up at the swarm's deadline. `upload_slots` bounds how many are in
//!   flight, so memory is bounded too.
//! - Pieces arrive through [`PieceExchange::accept_piece`]: the bytes gather in batches of
//!   a `PieceWriter`; each batch is hashed once (along the hash chain, or with BLAKE3
//!   without one: see `receive`) on the runtime's thread and written to its offset in the
//!   partial file on the blocking pool (direct I/O where the filesystem allows), so a
//!   piece is never held in memory whole (unless a streaming reader waits for it), the
//!   runtime's threads never wait on the disk, and only a verified piece is marked
//!   present. One writer per piece at a time; a second copy (endgame) is refused at once. Every `flush_every_pieces` pieces
//!   the progress is saved (an fsync, then the bitfield) by a `FlushJob` on the blocking
//!   pool, one at a time, so the task never waits on the disk.
//! - `Announce` calls the [`Tracker`]; `Commit` completes the blob in the CAS.
//!
//! Bandwidth: [`ExchangeConfig::egress`] and [`ExchangeConfig::ingress`] are optional
//! [`RateLimiter`]s on piece payloads (session messages and headers are not counted).
//! A sender asks the egress limiter for each [`LIMIT_CHUNK`](crate::limit::LIMIT_CHUNK)
//! before writing it; a receiver asks the ingress limiter before reading each chunk, so a
//! throttled receiver stops reading and quinn's flow control slows the sender down.
//! Clones of a limiter share one bucket: the same limiter in every exchange of a node caps
//! the node as a whole.
//!
//! Bad pieces: [`ExchangeConfig::bad_piece`] is told of every piece that failed
//! verification, with the peer that sent it and, for a handed-out peer, its address and
//! kind (an agent uses it to tell an origin its copy may be corrupt).
//!
//! Watching: [`PieceExchange::start_download`] starts a download without waiting for it
//! and [`PieceExchange::watch`] looks at one already running (or complete); both give a
//! [`BlobWatch`], which follows the set of verified, stored pieces as the blob task marks
//! them and reads any of them while the rest are still on their way — so a blob can be
//! streamed, in order, before it is complete ([`BlobWatch::read_range`]). A streamed piece
//! is trusted by its proof from the metainfo (its place in the digest's hash chain, or
//! its BLAKE3 hash); the whole blob is known to be the digest's at the commit, whose
//! outcome the watch reports too. A reader's position steers the swarm: the pieces just
//! ahead of it are asked for first and kept in memory for it as they land, within
//! [`ExchangeConfig::stream_window`] per reader and [`ExchangeConfig::stream_memory`] in
//! all (`window`), so it never reads back from the disk a piece just written there with
//! direct I/O.
//!
//! Backpressure: each blob task reads its inputs from a bounded channel
//! ([`INPUT_QUEUE`]). Session readers, piece receivers and stream handlers wait when it is
//! full, so a slow disk or a chatty peer stops our reads and quinn's flow control stalls
//! the sender; nothing queues without bound. The blob task itself never waits on its own
//! queue: what it would tell itself it handles on the spot.
//!
//! Space: a blob task holds its blob open (a `PartialBlob`, then a `BlobReader` while it
//! seeds), so the store never evicts it. [`PieceExchange::release_seeders`] stops the
//! tasks of complete blobs nobody downloads or watches, least recently used first, and
//! waits until they closed their blobs; the agent calls it when the store refuses a
//! download for want of space, then asks again (the CAS stays independent of the
//! exchange). The stopped swarms are counted in [`ExchangeCounters::seeders_released`].
//!
//! Logs: each blob task runs in a `blob` span carrying the digest, each session's reader
//! and writer in a `session` span carrying the peer, and each piece moved in a `send` or
//! `receive` span carrying the peer and the piece.
//!
//! Modules: `tracker` (the [`Tracker`] trait), `error`, `watch` ([`BlobWatch`]), `stream`
//! (reading a range in order), `window` (streaming readers and the pieces kept for them),
//! `accept` (streams peers open), `task` (the per-blob event loop), `session` (session
//! streams), `upload` and `receive` (piece streams).

mod accept;
mod error;
mod receive;
mod session;
mod stream;
mod task;
mod tracker;
mod upload;
mod watch;
mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kraken_storage::cas::{Cas, CasError, PieceSource};
use kraken_storage::{Bitfield, Digest, Metainfo};
use tokio::sync::{mpsc, watch as channel};
use tracing::Instrument;

pub use error::{DoneState, ExchangeError, StopReason};
pub use tracker::{Handout, Tracker};
pub use watch::BlobWatch;

use crate::limit::RateLimiter;
use crate::quic::ConnectionPool;
use crate::swarm::{PeerInfo, Swarm, SwarmConfig, SwarmStats};
use task::{BlobTask, Input, Store};
use window::{StreamMemory, Streaming};

/// Inputs a blob task buffers before its feeders wait.
pub const INPUT_QUEUE: usize = 1024;
/// Session messages buffered for a peer that is slow to read them; a peer that lets this
/// fill is reported `Congested` to the swarm, which drops it.
pub const SESSION_QUEUE: usize = 512;

/// What a finished download moved.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    /// Bytes by peer and kind.
    pub stats: SwarmStats,
    /// Wall time from start to commit.
    pub elapsed: Duration,
    /// True if the blob was already local and nothing was fetched.
    pub already_present: bool,
}

/// Settings of a [`PieceExchange`].
///
/// The default is tuned for a node with the network to itself: the default swarm
/// settings, no bandwidth limits, and streaming readers with 64 MiB windows within a
/// 128 MiB budget.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// The scheduler's settings, shared by every blob.
    pub swarm: SwarmConfig,
    /// Caps the piece bytes this node sends, over all blobs and peers; `None` (the
    /// default) is unlimited. A piece waits for its tokens within its send timeout
    /// (twice [`Swarm::piece_timeout`]), so keep `swarm.min_transfer_rate` below the
    /// limit divided by `swarm.upload_slots` times the blobs seeded at once, or slow
    /// pieces time out and are sent again.
    pub egress: Option<RateLimiter>,
    /// Caps the piece bytes this node receives, over all blobs and peers; `None` (the
    /// default) is unlimited. As for `egress`, the pieces in flight share the limit within
    /// their request timeouts.
    pub ingress: Option<RateLimiter>,
    /// Told how long each verified piece took, from our request to the piece stored
    /// (for a latency histogram); `None` (the default) measures nothing.
    pub piece_latency: Option<PieceLatencyObserver>,
    /// Told of every piece that failed verification, with the peer that sent it (so a
    /// node can tell an origin that its copy looks corrupt); `None` (the default) tells
    /// no one.
    pub bad_piece: Option<BadPieceObserver>,
    /// Bytes of a streaming reader's window: the pieces from the one it waits for that
    /// the swarm asks for first and that are kept in memory for it as they arrive (at
    /// least one piece). Default: 64 MiB (16 pieces of 4 MiB, 4 of 16 MiB): at least what
    /// three origins have in flight at once (5 requests each), so a reader that keeps up
    /// with such a download finds every piece in memory. (With 32 MiB about half the
    /// pieces landed past the window and went through the page cache, a copy in and a copy
    /// out each: a cold 1 GiB pull took 7 % longer.)
    pub stream_window: u64,
    /// Most piece bytes kept in memory for streaming readers, over every blob; a piece
    /// that finds it spent goes to the disk only, and its reader reads it from there.
    /// Default: 128 MiB (two full windows).
    pub stream_memory: u64,
    /// Most bytes read from the CAS in large chunks for streaming readers, over every
    /// blob. A reader reads a piece that is not in memory 512 KiB at a time while this
    /// has room (one thread hop and one HTTP chunk per 512 KiB), else 32 KiB at a time (so
    /// a thousand readers of one blob stay small); a chunk's bytes count until its
    /// consumer drops them. Default: 16 MiB.
    pub read_memory: u64,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            swarm: SwarmConfig::default(),
            egress: None,
            ingress: None,
            piece_latency: None,
            bad_piece: None,
            stream_window: 64 << 20,
            stream_memory: 128 << 20,
            read_memory: 16 << 20,
        }
    }
}

/// Receives the latency of every piece this node requested and stored: from the request
/// leaving for the peer to the piece verified and written. Called on the blob's task, so
/// it must be cheap (an atomic histogram update).
#[derive(Clone)]
pub struct PieceLatencyObserver(Arc<dyn Fn(std::time::Duration) + Send + Sync>);

impl PieceLatencyObserver {
    /// An observer calling `f`.
    pub fn new(f: impl Fn(std::time::Duration) + Send + Sync + 'static) -> Self {
        PieceLatencyObserver(Arc::new(f))
    }

    pub(super) fn observe(&self, latency: std::time::Duration) {
        (self.0)(latency);
    }
}

impl std::fmt::Debug for PieceLatencyObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PieceLatencyObserver")
    }
}

/// A piece that failed verification, and who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPiece {
    /// The blob.
    pub digest: Digest,
    /// The piece.
    pub index: kraken_storage::PieceIndex,
    /// The peer that sent it.
    pub peer: crate::wire::PeerId,
    /// Where the peer is dialled and what it is, when it was handed out to us (peers that
    /// dialled us are not).
    pub from: Option<(std::net::SocketAddr, crate::swarm::PeerKind)>,
}

/// Receives every [`BadPiece`]. Called on the blob's task, so it must be cheap (a
/// `try_send` into a bounded channel).
#[derive(Clone)]
pub struct BadPieceObserver(Arc<dyn Fn(BadPiece) + Send + Sync>);

impl BadPieceObserver {
    /// An observer calling `f`.
    pub fn new(f: impl Fn(BadPiece) + Send + Sync + 'static) -> Self {
        BadPieceObserver(Arc::new(f))
    }

    pub(super) fn observe(&self, bad: BadPiece) {
        (self.0)(bad);
    }
}

impl std::fmt::Debug for BadPieceObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BadPieceObserver")
    }
}

/// Piece traffic of every blob of an exchange since it started (for metrics).
#[derive(Debug, Default)]
pub struct ExchangeCounters {
    /// Verified pieces stored.
    pub pieces_received: AtomicU64,
    /// Their bytes.
    pub bytes_received: AtomicU64,
    /// Pieces sent to peers.
    pub pieces_sent: AtomicU64,
    /// Their bytes.
    pub bytes_sent: AtomicU64,
    /// Pieces that failed verification.
    pub bad_pieces: AtomicU64,
    /// Pieces a reader streaming a running download took from memory, as they landed.
    pub streamed_from_memory: AtomicU64,
    /// Pieces a reader streaming a running download read back from the CAS (outside its
    /// window, or past the memory budget).
    pub streamed_from_disk: AtomicU64,
    /// Swarms of complete blobs stopped to free space in the store
    /// ([`PieceExchange::release_seeders`]).
    pub seeders_released: AtomicU64,
}

impl ExchangeCounters {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Longest [`PieceExchange::release_seeders`] waits for a stopped seeder's task to end.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// What [`PieceExchange::release_seeders`] stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReleasedSeeders {
    /// Swarms stopped.
    pub blobs: u64,
    /// Their blobs' bytes.
    pub bytes: u64,
}

/// Drives the swarms of every blob this node downloads or seeds. Cheap to clone.
pub struct PieceExchange<T: Tracker> {
    inner: Arc<Inner<T>>,
}

impl<T: Tracker> Clone for PieceExchange<T> {
    fn clone(&self) -> Self {
        PieceExchange {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    pool: ConnectionPool,
    cas: Cas,
    tracker: T,
    me: PeerInfo,
    config: ExchangeConfig,
    blobs: Mutex<HashMap<Digest, BlobHandle>>,
    /// Turns true when the node shuts down: every blob task stops.
    closed: channel::Sender<bool>,
    counters: Arc<ExchangeCounters>,
    /// Piece bytes kept for streaming readers, over every blob.
    stream_memory: StreamMemory,
    /// Chunks read from the CAS for streaming readers, over every blob.
    read_memory: StreamMemory,
    /// Failed announces, warned about once per [`ANNOUNCE_WARN_EVERY`] over every blob.
    announce_warn: LogLimit,
}

/// How often a failing tracker is warned about: every blob announces every few seconds,
/// so a tracker that is down would otherwise log one line per blob per interval.
const ANNOUNCE_WARN_EVERY: Duration = Duration::from_secs(10);

/// At most one log line per interval for a recurring problem; the lines held back are
/// counted and reported with the next one.
#[derive(Debug)]
struct LogLimit {
    every: Duration,
    /// When the last line went out, and the events held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    fn new(every: Duration) -> Self {
        LogLimit {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(events held back since the last line)` if a line may go out now.
    fn allow(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let held = s.1;
                *s = (Some(now), 0);
                Some(held)
            }
        }
    }
}

/// The registry's entry for a running blob task: how to reach it and watch it.
#[derive(Clone)]
struct BlobHandle {
    tx: mpsc::Sender<Input>,
    done: channel::Receiver<DoneState>,
    metainfo: Arc<Metainfo>,
    /// Verified, stored pieces, updated by the blob task.
    pieces: channel::Receiver<Arc<Bitfield>>,
    /// Reads the blob's file through its own descriptor (valid across the commit's rename).
    source: Arc<PieceSource>,
    /// The blob's streaming readers and the pieces kept for them.
    streaming: Arc<Streaming>,
}

impl<T: Tracker> PieceExchange<T> {
    /// An exchange announcing itself as `me` (its id, the address peers dial, its kind).
    pub fn new(
        pool: ConnectionPool,
        cas: Cas,
        tracker: T,
        me: PeerInfo,
        config: ExchangeConfig,
    ) -> Result<Self, ExchangeError> {
        config.swarm.validate()?;
        Ok(PieceExchange {
            inner: Arc::new(Inner {
                pool,
                cas,
                tracker,
                me,
                blobs: Mutex::new(HashMap::new()),
                closed: channel::channel(false).0,
                counters: Arc::default(),
                stream_memory: StreamMemory::new(config.stream_memory),
                read_memory: StreamMemory::new(config.read_memory),
                announce_warn: LogLimit::new(ANNOUNCE_WARN_EVERY),
                config,
            }),
        })
    }

    /// The local store.
    pub fn cas(&self) -> &Cas {
        &self.inner.cas
    }

    /// Stops every blob task (node shutdown): downloads in progress fail with
    /// [`StopReason::Closed`], partial blobs stay resumable, and no new task starts.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    /// Piece traffic counters.
    pub fn counters(&self) -> &ExchangeCounters {
        &self.inner.counters
    }

    /// Piece bytes held in memory for streaming readers now, over every blob (at most
    /// [`ExchangeConfig::stream_memory`]).
    pub fn stream_memory_used(&self) -> u64 {
        self.inner.stream_memory.used()
    }

    /// Blobs with a running task (downloading or seeding).
    pub fn active_blobs(&self) -> usize {
        self.lock().values().filter(|h| !h.tx.is_closed()).count()
    }

    /// Downloads the blob `metainfo` describes through the swarm; returns once it is
    /// complete in the CAS. The blob keeps seeding afterwards until its seeding TTI.
    pub async fn download(&self, metainfo: Metainfo) -> Result<DownloadReport, ExchangeError> {
        let started = Instant::now();
        let digest = *metainfo.digest();
        if self.inner.cas.contains(&digest)? {
            return Ok(DownloadReport {
                stats: SwarmStats::default(),
                elapsed: started.elapsed(),
                already_present: true,
            });
        }
        let stats = self.start_download(metainfo)?.finished().await?;
        Ok(DownloadReport {
            stats,
            elapsed: started.elapsed(),
            already_present: false,
        })
    }

    /// Starts downloading the blob `metainfo` describes (or joins its running task) and
    /// returns at once with a [`BlobWatch`] on it; the download goes on whether or not
    /// the watch is kept. A blob already complete in the CAS is not fetched again: its
    /// watch shows every piece present and the download done.
    pub fn start_download(&self, metainfo: Metainfo) -> Result<BlobWatch, ExchangeError> {
        let digest = *metainfo.digest();
        if self.inner.cas.contains(&digest)?
            && let Some(w) = self.watch(&digest)
        {
            return Ok(w);
        }
        let handle = self.start(Arc::new(metainfo))?;
        Ok(BlobWatch::of(handle, self.inner.read_memory.clone()))
    }

    /// A [`BlobWatch`] on `digest` if its task is running (downloading or seeding) or the
    /// blob is complete in the CAS; `None` otherwise (unknown, or a partial download with
    /// no task). A watch on a complete blob with no task holds a reader of it, which keeps
    /// the blob from eviction while the watch lives.
    pub fn watch(&self, digest: &Digest) -> Option<BlobWatch> {
        if let Some(h) = self.running(digest) {
            return Some(BlobWatch::of(h, self.inner.read_memory.clone()));
        }
        let reader = self.inner.cas.reader(digest);
        match reader
            .and_then(|r| BlobWatch::of_complete(*digest, r, self.inner.read_memory.clone()))
        {
            Ok(w) => Some(w),
            Err(CasError::NotFound(_)) => None,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot open a complete blob to watch");
                None
            }
        }
    }

    /// Starts seeding a complete local blob (an origin after ingest).
    pub fn seed(&self, digest: &Digest) -> Result<(), ExchangeError> {
        let metainfo = self
            .inner
            .cas
            .metainfo(digest)?
            .filter(|_| self.inner.cas.contains(digest).unwrap_or(false))
            .ok_or(ExchangeError::NotFound(*digest))?;
        self.start(Arc::new(metainfo))?;
        Ok(())
    }

    /// Stops the blob's task, if one runs (the blob was deleted): it seeds and downloads
    /// no more, its watchers see [`StopReason::Deleted`], and a later pull starts afresh.
    pub async fn stop(&self, digest: &Digest) {
        let handle = self.lock().remove(digest);
        if let Some(h) = handle {
            // A task that already ended has closed its channel: nothing to stop.
            let _ = h.tx.send(Input::Stop).await;
        }
    }

    /// Stops the swarms of complete blobs that only seed, least recently used first, until
    /// their sizes add up to `bytes` (or none is left), and returns once their tasks have
    /// ended and closed the blob, so that the store may evict them. Never a download in
    /// progress, nor a blob someone watches (a registry client streaming it: its
    /// [`BlobWatch`] shares the task). A blob that a client reads from the store itself
    /// holds that client's own reader, so it stays until the client is done.
    ///
    /// A pull that the store refuses for want of space calls this with the shortfall and
    /// tries again: without it, every blob pulled in the last `seed_tti` stays open, and a
    /// small store refuses new pulls although nothing but idle seeding holds its blobs.
    pub async fn release_seeders(&self, bytes: u64) -> ReleasedSeeders {
        let idle: Vec<(Digest, BlobHandle)> = self
            .lock()
            .iter()
            .filter(|(_, h)| {
                !h.tx.is_closed()
                    && matches!(*h.done.borrow(), Some(Ok(_)))
                    // The registry's entry and the task: any more is a watcher.
                    && Arc::strong_count(&h.streaming) <= 2
            })
            .map(|(d, h)| (*d, h.clone()))
            .collect();
        if idle.is_empty() {
            return ReleasedSeeders::default();
        }
        let cas = self.inner.cas.clone();
        let digests: Vec<Digest> = idle.iter().map(|(d, _)| *d).collect();
        let infos = tokio::task::spawn_blocking(move || {
            digests
                .iter()
                .map(|d| cas.info(d).ok().flatten())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut ranked: Vec<(std::time::SystemTime, Digest, u64, BlobHandle)> = idle
            .into_iter()
            .zip(infos)
            .filter_map(|((d, h), info)| info.map(|i| (i.last_access, d, i.size, h)))
            .collect();
        ranked.sort_by_key(|(at, d, _, _)| (*at, *d));
        let mut released = ReleasedSeeders::default();
        let mut stopped = Vec::new();
        for (_, digest, size, handle) in ranked {
            if released.bytes >= bytes {
                break;
            }
            {
                let mut blobs = self.lock();
                // Still the same, still unwatched: a watch may have come since.
                if !blobs.get(&digest).is_some_and(|h| {
                    h.tx.same_channel(&handle.tx) && Arc::strong_count(&h.streaming) <= 3
                }) {
                    continue;
                }
                blobs.remove(&digest);
            }
            if handle.tx.send(Input::Release).await.is_ok() {
                released.blobs += 1;
                released.bytes = released.bytes.saturating_add(size);
                stopped.push(handle.tx);
            }
        }
        // The task drops its reader, then its channel: closed means the blob is free.
        for tx in stopped {
            let _ = tokio::time::timeout(RELEASE_WAIT, tx.closed()).await;
        }
        if released.blobs > 0 {
            ExchangeCounters::add(&self.inner.counters.seeders_released, released.blobs);
            tracing::info!(
                count = released.blobs,
                bytes = released.bytes,
                wanted = bytes,
                "stopped seeding blobs to free space in the store"
            );
        }
        released
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, BlobHandle>> {
        self.inner
            .blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The blob's task, if one is running.
    fn running(&self, digest: &Digest) -> Option<BlobHandle> {
        self.lock()
            .get(digest)
            .filter(|h| !h.tx.is_closed())
            .cloned()
    }

    /// The running task for the blob, started if needed.
    fn start(&self, metainfo: Arc<Metainfo>) -> Result<BlobHandle, ExchangeError> {
        let digest = *metainfo.digest();
        if *self.inner.closed.borrow() {
            return Err(ExchangeError::Stopped {
                digest,
                reason: StopReason::Closed,
            });
        }
        let mut blobs = self.lock();
        if let Some(h) = blobs.get(&digest)
            && !h.tx.is_closed()
        {
            return Ok(h.clone());
        }
        let cas = &self.inner.cas;
        let (store, have) = if cas.contains(&digest)? {
            let reader = cas.reader(&digest)?;
            (
                Store::Complete(reader),
                Bitfield::full(metainfo.piece_count()),
            )
        } else {
            let partial = cas.start_partial(&metainfo)?;
            let have = partial.bitfield().clone();
            (Store::Partial(partial), have)
        };
        let (pieces_tx, pieces) = channel::channel(Arc::new(have.clone()));
        let mut config = self.inner.config.swarm.clone();
        // Each blob's choices differ, yet stay reproducible for a given node and blob.
        config.rng_seed ^=
            u64::from_be_bytes(digest.hash_bytes()[..8].try_into().unwrap_or_default());
        let swarm = Swarm::new(
            config,
            self.inner.me.id,
            metainfo.clone(),
            have,
            Instant::now(),
        )?;
        let source = Arc::new(store.piece_source()?);
        let window = self.inner.config.stream_window / u64::from(metainfo.piece_length());
        let streaming = Arc::new(Streaming::new(
            u32::try_from(window).unwrap_or(u32::MAX),
            metainfo.piece_count(),
            self.inner.counters.clone(),
        ));
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let (done_tx, done) = channel::channel(None);
        if store.is_complete() {
            done_tx.send_replace(Some(Ok(SwarmStats::default())));
        }
        let handle = BlobHandle {
            tx: tx.clone(),
            done,
            metainfo: metainfo.clone(),
            pieces,
            source,
            streaming,
        };
        blobs.insert(digest, handle.clone());
        drop(blobs);
        let watchers = (done_tx, pieces_tx, handle.streaming.clone());
        let task = BlobTask::new(self.clone(), swarm, store, (tx, rx), watchers);
        let span = tracing::info_span!("blob", %digest);
        tokio::spawn(task.run().instrument(span));
        Ok(handle)
    }
}

#[cfg(test)]
mod log_limit_tests {
    use super::*;

    /// Found by the fault campaign: with a tracker down, every blob's failed announce
    /// logged a WARN line each interval (7,355 lines from one agent in 16 minutes).
    #[test]
    fn a_recurring_problem_logs_once_per_interval_and_counts_the_rest() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.allow(t0), Some(0));
        for ms in 1..=500 {
            assert_eq!(limit.allow(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.allow(t0 + Duration::from_secs(10)), Some(500));
        assert_eq!(limit.allow(t0 + Duration::from_secs(11)), None);
        assert_eq!(limit.allow(t0 + Duration::from_secs(25)), Some(1));
    }
}
