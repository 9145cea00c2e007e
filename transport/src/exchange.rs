//! The piece exchange: one tokio task per active blob drives its [`Swarm`] over QUIC and
//! the local CAS (feature `quic`).
//!
//! The driver holds no policy. For each blob it owns the swarm, the blob's storage (a
//! `PartialBlob` while downloading, a `BlobReader` once complete) and one session stream
//! per peer, and it turns the swarm's outputs into network and disk work:
//!
//! - `Connect` dials through the [`ConnectionPool`] and opens a session stream
//!   (`StreamHeader::Session`); sessions opened by peers arrive through
//!   [`PieceExchange::accept_session`]. When two peers dial each other at once, both keep
//!   the session opened by the lower `PeerId`, so each pair has exactly one.
//! - `Message` goes to the session's writer task; a reader task turns frames into inputs.
//! - `SendPiece` reads the piece from storage and sends it on its own unidirectional
//!   stream. `upload_slots` bounds how many are in flight, so memory is bounded too.
//! - Pieces arrive through [`PieceExchange::accept_piece`]: the bytes gather in batches of
//!   a `PieceWriter`; each batch is hashed on the runtime's thread and written to its
//!   offset in the partial file on the blocking pool (direct I/O where the filesystem
//!   allows), so a piece is never held in memory whole, the runtime's threads never wait
//!   on the disk, and only a verified piece is marked present. One writer per piece at a
//!   time; a second copy (endgame) is refused at once. Every `flush_every_pieces` pieces
//!   the progress is saved (an fsync, then the bitfield) by a `FlushJob` on the blocking
//!   pool, one at a time, so the task never waits on the disk.
//! - `Announce` calls the [`Tracker`]; `Commit` completes the blob in the CAS.
//!
//! Bandwidth: [`ExchangeConfig::egress`] and [`ExchangeConfig::ingress`] are optional
//! [`RateLimiter`]s on piece payloads (session messages and headers are not counted).
//! A sender asks the egress limiter for each [`LIMIT_CHUNK`] before writing it; a receiver
//! asks the ingress limiter before reading each chunk, so a throttled receiver stops
//! reading and quinn's flow control slows the sender down. Clones of a limiter share one
//! bucket: the same limiter in every exchange of a node caps the node as a whole.
//!
//! Watching: [`PieceExchange::start_download`] starts a download without waiting for it
//! and [`PieceExchange::watch`] looks at one already running (or complete); both give a
//! [`BlobWatch`], which follows the set of verified, stored pieces as the blob task marks
//! them and reads any of them while the rest are still on their way — so a blob can be
//! streamed, in order, before it is complete. A streamed piece is trusted by its BLAKE3
//! hash from the metainfo; the whole blob's sha256 is checked at the commit, whose outcome
//! the watch reports too.
//!
//! Backpressure: each blob task reads its inputs from a bounded channel
//! ([`INPUT_QUEUE`]). Session readers, piece receivers and stream handlers wait when it is
//! full, so a slow disk or a chatty peer stops our reads and quinn's flow control stalls
//! the sender; nothing queues without bound. The blob task itself never waits on its own
//! queue: what it would tell itself it handles on the spot.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use kraken_storage::cas::{
    BlobReader, Cas, CasError, PartialBlob, PieceSource, PieceWriter, VerifiedPiece,
};
use kraken_storage::{Bitfield, Digest, Metainfo, PieceError, PieceIndex};
use quinn::{RecvStream, SendStream};
use tokio::sync::{mpsc, watch};

use crate::limit::{LIMIT_CHUNK, RateLimiter};
use crate::quic::{
    BiStream, ConnectionPool, PeerConnection, StreamOutcome, codes, read_frame, read_message,
    send_piece_limited, write_frame,
};
use crate::swarm::{
    PeerEvent, PeerInfo, PeerKind, PieceOutcome, StorageOp, Swarm, SwarmConfig, SwarmEvent,
    SwarmStats, Transmit,
};
use crate::wire::{
    MAX_FRAME_LEN, PROTOCOL_VERSION, PeerId, PeerMessage, PieceHeader, StreamHeader,
};

/// Inputs a blob task buffers before its feeders wait.
pub const INPUT_QUEUE: usize = 1024;
/// Session messages buffered for a peer that is slow to read them; a peer that lets this
/// fill is disconnected.
pub const SESSION_QUEUE: usize = 512;

/// A tracker's answer to an announce.
#[derive(Debug, Clone, Default)]
pub struct Handout {
    /// Peers to consider, best first.
    pub peers: Vec<PeerInfo>,
    /// The announce interval the tracker wants.
    pub interval: Option<Duration>,
}

/// Where the exchange announces. The node implements it with an RPC to the digest's
/// tracker; tests use an in-process `PeerStore`.
pub trait Tracker: Send + Sync + 'static {
    /// Announces that `me` holds `have_bytes` of `digest` (all of it if `complete`).
    fn announce(
        &self,
        digest: Digest,
        me: PeerInfo,
        have_bytes: u64,
    ) -> impl Future<Output = Result<Handout, String>> + Send;
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The local store failed.
    #[error(transparent)]
    Cas(#[from] CasError),
    /// The blob's task stopped before the blob was complete.
    #[error("download of {digest} stopped: {reason}")]
    Stopped {
        /// The blob.
        digest: Digest,
        /// Why.
        reason: String,
    },
    /// No such blob to seed.
    #[error("blob {0} is not in the local store")]
    NotFound(Digest),
    /// Bad swarm settings.
    #[error(transparent)]
    Config(#[from] crate::swarm::SwarmConfigError),
    /// A read on the blocking pool panicked or was cancelled (the runtime shutting down).
    #[error("blocking read failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

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

/// A view of one blob's download, to stream the blob before it is complete.
///
/// It follows the set of pieces that are verified (BLAKE3, against the metainfo) and
/// stored, as the blob task marks them, and the task's [`DoneState`]; it reads any stored
/// piece through its own file descriptor, which stays valid when the finished download is
/// renamed into the CAS. Cheap to clone; a watch does not keep the download going or
/// stop it. Made by [`PieceExchange::start_download`] and [`PieceExchange::watch`].
///
/// Bytes read through a watch are each piece's verified bytes; the whole blob's sha256
/// is checked only at the commit, whose outcome [`BlobWatch::finished`] reports.
#[derive(Clone)]
pub struct BlobWatch {
    digest: Digest,
    metainfo: Arc<Metainfo>,
    pieces: watch::Receiver<Arc<Bitfield>>,
    done: watch::Receiver<DoneState>,
    source: Arc<PieceSource>,
    /// Keeps a complete blob from eviction while watched (watches made without a task).
    _pin: Option<Arc<BlobReader>>,
}

impl std::fmt::Debug for BlobWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWatch")
            .field("digest", &self.digest)
            .field("have", &self.pieces.borrow().count_ones())
            .field("pieces", &self.metainfo.piece_count())
            .field("done", &*self.done.borrow())
            .finish_non_exhaustive()
    }
}

impl BlobWatch {
    fn of(h: BlobHandle) -> Self {
        BlobWatch {
            digest: *h.metainfo.digest(),
            metainfo: h.metainfo,
            pieces: h.pieces,
            done: h.done,
            source: h.source,
            _pin: None,
        }
    }

    /// The blob.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The blob's metainfo: its length, piece length and piece hashes.
    pub fn metainfo(&self) -> &Arc<Metainfo> {
        &self.metainfo
    }

    /// The pieces verified and stored so far (a snapshot).
    pub fn have(&self) -> Arc<Bitfield> {
        self.pieces.borrow().clone()
    }

    /// A receiver of the stored pieces, updated each time one is stored; await its
    /// `changed()` to follow the download. It closes when the blob task ends.
    pub fn pieces(&self) -> watch::Receiver<Arc<Bitfield>> {
        self.pieces.clone()
    }

    /// A receiver of the blob task's [`DoneState`].
    pub fn done(&self) -> watch::Receiver<DoneState> {
        self.done.clone()
    }

    /// The blob task's [`DoneState`] now.
    pub fn outcome(&self) -> DoneState {
        self.done.borrow().clone()
    }

    /// Waits until the download is complete and committed; the swarm's totals then (all
    /// zero for a blob that was already complete), or why it stopped.
    pub async fn finished(&mut self) -> Result<SwarmStats, ExchangeError> {
        let result = match self.done.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_else(|| Err("no result".into())),
            Err(_) => Err("the blob task ended".into()),
        };
        result.map_err(|reason| ExchangeError::Stopped {
            digest: self.digest,
            reason,
        })
    }

    /// Waits until piece `index` is verified and stored; fails if the download stops
    /// first, or at once for an index the blob does not have.
    pub async fn wait_piece(&mut self, index: PieceIndex) -> Result<(), ExchangeError> {
        self.check_index(index)?;
        loop {
            self.pieces.borrow_and_update();
            self.done.borrow_and_update();
            if self.is_stored(index) {
                return Ok(());
            }
            if let Some(Err(reason)) = &*self.done.borrow() {
                return Err(ExchangeError::Stopped {
                    digest: self.digest,
                    reason: reason.clone(),
                });
            }
            let open = tokio::select! {
                r = self.pieces.changed() => r.is_ok(),
                r = self.done.changed() => r.is_ok(),
            };
            if !open {
                // The task is gone: whatever it left is final.
                if self.is_stored(index) {
                    return Ok(());
                }
                let reason = match &*self.done.borrow() {
                    Some(Err(reason)) => reason.clone(),
                    _ => format!("the blob task ended before {index} arrived"),
                };
                return Err(ExchangeError::Stopped {
                    digest: self.digest,
                    reason,
                });
            }
        }
    }

    /// Reads piece `index`, verified and stored (see [`BlobWatch::wait_piece`]), on the
    /// blocking pool. A piece not stored yet is `CasError::MissingPiece`.
    pub async fn read_piece(&self, index: PieceIndex) -> Result<Bytes, ExchangeError> {
        self.check_index(index)?;
        if !self.is_stored(index) {
            return Err(CasError::MissingPiece {
                digest: self.digest,
                index,
            }
            .into());
        }
        let source = self.source.clone();
        let bytes = tokio::task::spawn_blocking(move || source.read_piece(index)).await??;
        Ok(Bytes::from(bytes))
    }

    /// True once the piece is stored: marked by the blob task, or the blob is complete.
    fn is_stored(&self, index: PieceIndex) -> bool {
        self.pieces.borrow().get(index) || matches!(&*self.done.borrow(), Some(Ok(_)))
    }

    fn check_index(&self, index: PieceIndex) -> Result<(), ExchangeError> {
        let count = self.metainfo.piece_count();
        if index.0 >= count {
            return Err(CasError::Piece(PieceError::OutOfRange { index, count }).into());
        }
        Ok(())
    }
}

/// Settings of a [`PieceExchange`].
///
/// The default is tuned for a node with the network to itself: the default swarm
/// settings and no bandwidth limits.
#[derive(Debug, Clone, Default)]
pub struct ExchangeConfig {
    /// The scheduler's settings, shared by every blob.
    pub swarm: SwarmConfig,
    /// Caps the piece bytes this node sends, over all blobs and peers; `None` (the
    /// default) is unlimited. A piece waits for its tokens within its send timeout
    /// ([`Swarm::piece_timeout`]), so keep `swarm.min_transfer_rate` below the limit
    /// divided by `swarm.upload_slots` times the blobs seeded at once, or slow pieces time
    /// out and are sent again.
    pub egress: Option<RateLimiter>,
    /// Caps the piece bytes this node receives, over all blobs and peers; `None` (the
    /// default) is unlimited. As for `egress`, the pieces in flight share the limit within
    /// their request timeouts.
    pub ingress: Option<RateLimiter>,
}

/// What a blob task has reported so far: `None` while it runs, then the swarm's totals
/// once the blob is complete and committed, or the reason it stopped.
pub type DoneState = Option<Result<SwarmStats, String>>;

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
    closed: watch::Sender<bool>,
    counters: Arc<ExchangeCounters>,
}

/// Piece traffic of every blob of an exchange since it started (for metrics).
#[derive(Debug, Default)]
pub struct ExchangeCounters {
    /// Verified pieces stored.
    pub pieces_received: std::sync::atomic::AtomicU64,
    /// Their bytes.
    pub bytes_received: std::sync::atomic::AtomicU64,
    /// Pieces sent to peers.
    pub pieces_sent: std::sync::atomic::AtomicU64,
    /// Their bytes.
    pub bytes_sent: std::sync::atomic::AtomicU64,
    /// Pieces that failed verification.
    pub bad_pieces: std::sync::atomic::AtomicU64,
}

impl ExchangeCounters {
    fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct BlobHandle {
    tx: mpsc::Sender<Input>,
    done: watch::Receiver<DoneState>,
    metainfo: Arc<Metainfo>,
    /// Verified, stored pieces, updated by the blob task.
    pieces: watch::Receiver<Arc<Bitfield>>,
    /// Reads the blob's file through its own descriptor (valid across the commit's rename).
    source: Arc<PieceSource>,
}

enum Input {
    Handout(Result<Handout, String>),
    Session {
        peer: PeerId,
        conn: PeerConnection,
        stream: BiStream,
        outbound: bool,
    },
    ConnectFailed {
        peer: PeerId,
    },
    Message {
        peer: PeerId,
        sid: u64,
        msg: PeerMessage,
    },
    SessionEnded {
        peer: PeerId,
        sid: u64,
    },
    IncomingPiece {
        peer: PeerId,
        header: PieceHeader,
        recv: RecvStream,
    },
    PieceDone {
        peer: PeerId,
        index: PieceIndex,
        result: Result<VerifiedPiece, PieceFault>,
    },
    PieceSent {
        peer: PeerId,
        index: PieceIndex,
        ok: bool,
    },
    /// A flush of the partial blob's progress ended.
    Flushed(Result<(), String>),
}

/// Why a piece stream did not yield a verified piece.
#[derive(Debug)]
enum PieceFault {
    /// The peer sent bad bytes.
    Peer,
    /// The stream or the disk failed; not the peer's fault.
    Other,
    /// The piece matched the metainfo's BLAKE3 hash but not the sha256 chain of the
    /// blob's digest: the metainfo does not describe this blob, and no peer can help.
    Metainfo(PieceError),
}

impl PieceFault {
    /// A piece error (wrong size, wrong hash) is the peer's doing, except a broken sha256
    /// chain, which is the metainfo's; anything else is ours.
    fn of(e: CasError) -> Self {
        match e {
            CasError::Piece(e @ PieceError::ChainMismatch { .. }) => PieceFault::Metainfo(e),
            CasError::Piece(_) => PieceFault::Peer,
            _ => PieceFault::Other,
        }
    }
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
                config,
                blobs: Mutex::new(HashMap::new()),
                closed: watch::channel(false).0,
                counters: Arc::default(),
            }),
        })
    }

    /// The local store.
    pub fn cas(&self) -> &Cas {
        &self.inner.cas
    }

    /// Stops every blob task (node shutdown): downloads in progress fail with "closed",
    /// partial blobs stay resumable, and no new task starts.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    /// Piece traffic counters.
    pub fn counters(&self) -> &ExchangeCounters {
        &self.inner.counters
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
        Ok(BlobWatch::of(handle))
    }

    /// A [`BlobWatch`] on `digest` if its task is running (downloading or seeding) or the
    /// blob is complete in the CAS; `None` otherwise (unknown, or a partial download with
    /// no task). A watch on a complete blob with no task holds a reader of it, which keeps
    /// the blob from eviction while the watch lives.
    pub fn watch(&self, digest: &Digest) -> Option<BlobWatch> {
        let running = self.lock().get(digest).cloned();
        if let Some(h) = running.filter(|h| !h.tx.is_closed()) {
            return Some(BlobWatch::of(h));
        }
        let reader = match self.inner.cas.reader(digest) {
            Ok(r) => r,
            Err(CasError::NotFound(_)) => return None,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot open a complete blob to watch");
                return None;
            }
        };
        let source = match reader.piece_source() {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot open a complete blob to watch");
                return None;
            }
        };
        let metainfo = reader.metainfo().clone();
        // The senders go at once: the receivers keep the final values.
        let (_, pieces) = watch::channel(Arc::new(Bitfield::full(metainfo.piece_count())));
        let (_, done) = watch::channel(Some(Ok(SwarmStats::default())));
        Some(BlobWatch {
            digest: *digest,
            metainfo,
            pieces,
            done,
            source,
            _pin: Some(Arc::new(reader)),
        })
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, BlobHandle>> {
        self.inner
            .blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The running task for the blob, started if needed.
    fn start(&self, metainfo: Arc<Metainfo>) -> Result<BlobHandle, ExchangeError> {
        let digest = *metainfo.digest();
        if *self.inner.closed.borrow() {
            return Err(ExchangeError::Stopped {
                digest,
                reason: "the exchange was closed".into(),
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
        let (pieces_tx, pieces) = watch::channel(Arc::new(have.clone()));
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
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let (done_tx, done) = watch::channel(None);
        if store.is_complete() {
            done_tx.send_replace(Some(Ok(SwarmStats::default())));
        }
        let handle = BlobHandle {
            tx: tx.clone(),
            done,
            metainfo: metainfo.clone(),
            pieces,
            source,
        };
        blobs.insert(digest, handle.clone());
        drop(blobs);
        let task = BlobTask {
            ex: self.clone(),
            digest,
            metainfo,
            swarm,
            store: Some(store),
            tx,
            rx,
            sessions: HashMap::new(),
            known: HashMap::new(),
            receiving: HashSet::new(),
            flushing: false,
            next_sid: 0,
            done: done_tx,
            pieces: pieces_tx,
            closed: self.inner.closed.subscribe(),
        };
        tokio::spawn(task.run());
        Ok(handle)
    }

    /// Serves a session stream a peer opened for `digest` (from the node's
    /// `Service::session`). Seeds complete local blobs on demand.
    pub async fn accept_session(
        &self,
        peer: PeerId,
        digest: Digest,
        stream: BiStream,
    ) -> StreamOutcome {
        let handle = match self.lock().get(&digest).cloned() {
            Some(h) if !h.tx.is_closed() => Some(h),
            _ => None,
        };
        let handle = match handle {
            Some(h) => h,
            None => match self.seed(&digest) {
                Ok(()) => match self.lock().get(&digest).cloned() {
                    Some(h) => h,
                    None => {
                        stream.reject(codes::INTERNAL);
                        return StreamOutcome::Done;
                    }
                },
                Err(_) => {
                    stream.reject(codes::REFUSED);
                    return StreamOutcome::Done;
                }
            },
        };
        let Some(conn) = self.inner.pool.get(&peer) else {
            stream.reject(codes::INTERNAL);
            return StreamOutcome::Done;
        };
        let input = Input::Session {
            peer,
            conn,
            stream,
            outbound: false,
        };
        if let Err(mpsc::error::SendError(Input::Session { stream, .. })) =
            handle.tx.send(input).await
        {
            stream.reject(codes::REFUSED);
        }
        StreamOutcome::Done
    }

    /// Serves a unidirectional stream a peer opened (from the node's `Service::uni_stream`):
    /// a piece for one of our downloads.
    pub async fn accept_piece(&self, peer: PeerId, mut recv: RecvStream) -> StreamOutcome {
        let header: PieceHeader = match read_frame(&mut recv, 1024).await {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => {
                let _ = recv.stop(codes::MALFORMED);
                return StreamOutcome::Misbehaved;
            }
        };
        let handle = self.lock().get(&header.digest).cloned();
        match handle {
            Some(h) if header.index.0 < h.metainfo.piece_count() => {
                if let Err(mpsc::error::SendError(Input::IncomingPiece { mut recv, .. })) =
                    h.tx.send(Input::IncomingPiece { peer, header, recv }).await
                {
                    let _ = recv.stop(codes::REFUSED);
                }
                StreamOutcome::Done
            }
            Some(_) => {
                let _ = recv.stop(codes::BAD_PIECE);
                StreamOutcome::Misbehaved
            }
            None => {
                let _ = recv.stop(codes::REFUSED);
                StreamOutcome::Done
            }
        }
    }
}

enum Store {
    Partial(PartialBlob),
    Complete(BlobReader),
}

impl Store {
    fn is_complete(&self) -> bool {
        matches!(self, Store::Complete(_))
    }

    fn piece_source(&self) -> Result<PieceSource, CasError> {
        match self {
            Store::Partial(p) => p.piece_source(),
            Store::Complete(r) => r.piece_source(),
        }
    }
}

struct Session {
    sid: u64,
    conn: PeerConnection,
    writer: mpsc::Sender<PeerMessage>,
    opened_by_us: bool,
    reader: tokio::task::AbortHandle,
}

struct BlobTask<T: Tracker> {
    ex: PieceExchange<T>,
    digest: Digest,
    metainfo: Arc<Metainfo>,
    swarm: Swarm,
    /// `None` only while a commit runs on the blocking pool.
    store: Option<Store>,
    tx: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Input>,
    sessions: HashMap<PeerId, Session>,
    /// Addresses and kinds of handed-out peers.
    known: HashMap<PeerId, (SocketAddr, PeerKind)>,
    /// Pieces being written by a receiver right now.
    receiving: HashSet<PieceIndex>,
    /// A flush of the partial blob's progress runs on the blocking pool.
    flushing: bool,
    next_sid: u64,
    done: watch::Sender<DoneState>,
    /// Verified, stored pieces, for [`BlobWatch`]es.
    pieces: watch::Sender<Arc<Bitfield>>,
    closed: watch::Receiver<bool>,
}

impl<T: Tracker> BlobTask<T> {
    async fn run(mut self) {
        let outcome = self.event_loop().await;
        if let Err(reason) = &outcome {
            if *self.closed.borrow() {
                tracing::debug!(digest = %self.digest, %reason, "blob task stopped");
            } else {
                tracing::warn!(digest = %self.digest, %reason, "blob task stopped");
            }
            self.done.send_if_modified(|d| {
                if d.is_none() {
                    *d = Some(Err(reason.clone()));
                    true
                } else {
                    false
                }
            });
        }
        for (_, s) in self.sessions.drain() {
            s.reader.abort();
        }
        // The partial blob saves its progress and frees the digest before the handle goes:
        // a download started again the moment this one is gone must find it free.
        drop(self.store.take());
        let mut blobs = self.ex.lock();
        if blobs
            .get(&self.digest)
            .is_some_and(|h| h.tx.same_channel(&self.tx))
        {
            blobs.remove(&self.digest);
        }
    }

    async fn event_loop(&mut self) -> Result<(), String> {
        loop {
            if self.drain_outputs().await? {
                return Ok(());
            }
            if *self.closed.borrow() {
                return Err("the exchange was closed".into());
            }
            let deadline = self.swarm.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let input = tokio::select! {
                input = self.rx.recv() => input,
                () = sleep => {
                    self.swarm.handle_timeout(Instant::now());
                    continue;
                }
                _ = self.closed.changed() => continue,
            };
            let Some(input) = input else {
                return Err("input channel closed".into());
            };
            self.handle(input)?;
        }
    }

    /// Acts on everything the swarm wants; returns true when the blob is done seeding.
    async fn drain_outputs(&mut self) -> Result<bool, String> {
        loop {
            if let Some(t) = self.swarm.poll_transmit() {
                self.transmit(t);
                continue;
            }
            if let Some(StorageOp::Commit) = self.swarm.poll_storage() {
                self.commit().await?;
                continue;
            }
            if let Some(ev) = self.swarm.poll_event() {
                match ev {
                    SwarmEvent::Announce {
                        have_bytes,
                        complete,
                    } => {
                        let ex = self.ex.clone();
                        let tx = self.tx.clone();
                        let digest = self.digest;
                        let mut me = ex.inner.me.clone();
                        me.complete = complete;
                        tokio::spawn(async move {
                            let r = ex.inner.tracker.announce(digest, me, have_bytes).await;
                            let _ = tx.send(Input::Handout(r)).await;
                        });
                    }
                    SwarmEvent::SeedingExpired => return Ok(true),
                    SwarmEvent::BadPiece { from, index } => {
                        tracing::warn!(digest = %self.digest, peer = %from, %index, "bad piece");
                    }
                    SwarmEvent::RequestTimedOut { peer, index } => {
                        tracing::debug!(digest = %self.digest, %peer, %index, "request timed out");
                    }
                    SwarmEvent::Blacklisted { peer, reason, .. } => {
                        tracing::info!(digest = %self.digest, %peer, ?reason, "peer blacklisted");
                    }
                    _ => {}
                }
                continue;
            }
            return Ok(false);
        }
    }

    async fn commit(&mut self) -> Result<(), String> {
        if !matches!(self.store, Some(Store::Partial(_))) {
            // Already complete (a seeder's swarm asks once at start): nothing to do.
            return Ok(());
        }
        let Some(Store::Partial(partial)) = self.store.take() else {
            return Ok(());
        };
        let cas = self.ex.inner.cas.clone();
        let digest = self.digest;
        let committed = tokio::task::spawn_blocking(move || {
            partial.commit()?;
            cas.reader(&digest)
        })
        .await
        .map_err(|e| format!("commit task failed: {e}"))?
        .map_err(|e| format!("commit failed: {e}"))?;
        self.store = Some(Store::Complete(committed));
        self.done.send_replace(Some(Ok(self.swarm.stats().clone())));
        Ok(())
    }

    fn transmit(&mut self, t: Transmit) {
        match t {
            Transmit::Connect { id, addr } => {
                let pool = self.ex.inner.pool.clone();
                let tx = self.tx.clone();
                let digest = self.digest;
                tokio::spawn(async move {
                    let input = match open_session(&pool, addr, id, digest).await {
                        Some((conn, stream)) => Input::Session {
                            peer: id,
                            conn,
                            stream,
                            outbound: true,
                        },
                        None => Input::ConnectFailed { peer: id },
                    };
                    let _ = tx.send(input).await;
                });
            }
            Transmit::Disconnect { id } => {
                if let Some(s) = self.sessions.remove(&id) {
                    s.reader.abort();
                    // Dropping the writer's sender finishes the stream.
                }
            }
            Transmit::Message { to, msg } => {
                let full = self
                    .sessions
                    .get(&to)
                    .is_some_and(|s| s.writer.try_send(msg).is_err());
                if full {
                    // The peer does not read what we send: drop it rather than buffer.
                    if let Some(s) = self.sessions.remove(&to) {
                        s.reader.abort();
                    }
                    self.swarm
                        .handle_peer(Instant::now(), PeerEvent::Disconnected { id: to });
                }
            }
            Transmit::SendPiece { to, index } => self.send_piece(to, index),
        }
    }

    /// Reads the piece on the blocking pool and sends it on its own stream, so neither a
    /// slow disk nor a slow peer holds up the blob task.
    fn send_piece(&mut self, to: PeerId, index: PieceIndex) {
        let conn = self.sessions.get(&to).map(|s| s.conn.clone());
        let source = self.store.as_ref().map(Store::piece_source);
        let (Some(conn), Some(Ok(source))) = (conn, source) else {
            self.swarm
                .handle_piece_sent(Instant::now(), to, index, false);
            return;
        };
        let tx = self.tx.clone();
        let digest = self.digest;
        let egress = self.ex.inner.config.egress.clone();
        // A stalled peer must not hold an upload slot (and a piece buffer) forever. Twice
        // the receiver's limit: that one starts at the header, this one before the read
        // and the stream's opening, and the receiver is the one to judge a slow transfer.
        let limit = 2 * self.swarm.piece_timeout(index);
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || source.read_piece(index)).await;
            let ok = match read {
                Ok(Ok(bytes)) => {
                    let header = PieceHeader {
                        digest,
                        index,
                        len: bytes.len() as u32,
                    };
                    let send = send_piece_limited(
                        conn.connection(),
                        header,
                        Bytes::from(bytes),
                        egress.as_ref(),
                    );
                    matches!(tokio::time::timeout(limit, send).await, Ok(Ok(())))
                }
                _ => false,
            };
            let _ = tx
                .send(Input::PieceSent {
                    peer: to,
                    index,
                    ok,
                })
                .await;
        });
    }

    fn handle(&mut self, input: Input) -> Result<(), String> {
        let now = Instant::now();
        match input {
            Input::Handout(Ok(h)) => {
                for p in &h.peers {
                    self.known.insert(p.id, (p.addr, p.kind));
                }
                self.swarm.handle_handout(now, h.peers, h.interval);
            }
            Input::Handout(Err(e)) => {
                tracing::warn!(digest = %self.digest, error = %e, "announce failed; will retry");
            }
            Input::Session {
                peer,
                conn,
                stream,
                outbound,
            } => self.on_session(now, peer, conn, stream, outbound),
            Input::ConnectFailed { peer } => {
                self.swarm
                    .handle_peer(now, PeerEvent::ConnectFailed { id: peer });
            }
            Input::Message { peer, sid, msg } => {
                if self.sessions.get(&peer).is_some_and(|s| s.sid == sid) {
                    self.swarm.handle_message(now, peer, msg);
                }
            }
            Input::SessionEnded { peer, sid } => {
                if self.sessions.get(&peer).is_some_and(|s| s.sid == sid) {
                    self.sessions.remove(&peer);
                    self.swarm
                        .handle_peer(now, PeerEvent::Disconnected { id: peer });
                }
            }
            Input::IncomingPiece { peer, header, recv } => {
                self.on_incoming_piece(peer, header, recv)
            }
            Input::PieceDone {
                peer,
                index,
                result,
            } => {
                self.receiving.remove(&index);
                match result {
                    Ok(verified) => {
                        if let Some(Store::Partial(p)) = self.store.as_mut() {
                            let fresh = p.record_stored(verified);
                            self.flush_if_due()?;
                            if fresh {
                                let c = &self.ex.inner.counters;
                                let size = self.metainfo.piece_size(index).unwrap_or(0);
                                ExchangeCounters::add(&c.pieces_received, 1);
                                ExchangeCounters::add(&c.bytes_received, u64::from(size));
                                // Copies the bitfield only while a watcher holds the last one.
                                self.pieces.send_modify(|b| {
                                    Arc::make_mut(b).set(index);
                                });
                            }
                        }
                        self.swarm
                            .handle_piece_received(now, peer, index, PieceOutcome::Stored);
                    }
                    Err(PieceFault::Peer) => {
                        ExchangeCounters::add(&self.ex.inner.counters.bad_pieces, 1);
                        self.swarm
                            .handle_piece_received(now, peer, index, PieceOutcome::Corrupt);
                    }
                    Err(PieceFault::Other) => {}
                    Err(PieceFault::Metainfo(e)) => {
                        // What committing would have found at the end: give up now.
                        return Err(format!(
                            "the metainfo does not describe {}: {e}",
                            self.digest
                        ));
                    }
                }
            }
            Input::PieceSent { peer, index, ok } => {
                if ok {
                    let c = &self.ex.inner.counters;
                    let size = self.metainfo.piece_size(index).unwrap_or(0);
                    ExchangeCounters::add(&c.pieces_sent, 1);
                    ExchangeCounters::add(&c.bytes_sent, u64::from(size));
                }
                self.swarm.handle_piece_sent(now, peer, index, ok);
            }
            Input::Flushed(result) => {
                self.flushing = false;
                match (result, &self.store) {
                    (Err(e), Some(Store::Partial(_))) => {
                        return Err(format!("saving the download's progress: {e}"));
                    }
                    // The commit synced and recorded everything since: nothing was lost.
                    (Err(e), _) => {
                        tracing::debug!(digest = %self.digest, error = %e, "late flush failed");
                    }
                    (Ok(()), _) => self.flush_if_due()?,
                }
            }
        }
        Ok(())
    }

    /// Starts a flush of the partial blob's progress on the blocking pool when one is due
    /// and none runs: an fsync must not hold up this task (and the runtime thread under
    /// it, which drives connections too) while pieces keep arriving.
    fn flush_if_due(&mut self) -> Result<(), String> {
        let Some(Store::Partial(p)) = self.store.as_mut() else {
            return Ok(());
        };
        if self.flushing || !p.flush_due() {
            return Ok(());
        }
        let Some(job) = p
            .flush_job()
            .map_err(|e| format!("saving the download's progress: {e}"))?
        else {
            return Ok(());
        };
        self.flushing = true;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = match tokio::task::spawn_blocking(move || job.run()).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(format!("the flush task failed: {e}")),
            };
            let _ = tx.send(Input::Flushed(result)).await;
        });
        Ok(())
    }

    fn on_session(
        &mut self,
        now: Instant,
        peer: PeerId,
        conn: PeerConnection,
        stream: BiStream,
        outbound: bool,
    ) {
        let me = self.ex.inner.me.id;
        if let Some(existing) = self.sessions.get(&peer) {
            // Keep the session opened by the lower id, on both sides; a session whose
            // connection is gone (superseded by the peer's new one) always gives way.
            let existing_opener = if existing.opened_by_us { me } else { peer };
            let new_opener = if outbound { me } else { peer };
            // The lower opener's session wins; between two of one opener, the newer.
            if existing.conn.is_alive() && existing_opener < new_opener {
                stream.reject(codes::REFUSED);
                return;
            }
            if let Some(old) = self.sessions.remove(&peer) {
                old.reader.abort();
            }
            self.swarm
                .handle_peer(now, PeerEvent::Replaced { id: peer });
        }
        self.next_sid += 1;
        let sid = self.next_sid;
        let BiStream { send, recv } = stream;
        let (writer, writes) = mpsc::channel(SESSION_QUEUE);
        tokio::spawn(write_session(send, writes));
        let reader = tokio::spawn(read_session(recv, peer, sid, self.tx.clone())).abort_handle();
        self.sessions.insert(
            peer,
            Session {
                sid,
                conn,
                writer,
                opened_by_us: outbound,
                reader,
            },
        );
        let kind = self.known.get(&peer).map_or(PeerKind::Agent, |(_, k)| *k);
        self.swarm.handle_peer(
            now,
            PeerEvent::Connected {
                id: peer,
                kind,
                outbound,
            },
        );
    }

    fn on_incoming_piece(&mut self, peer: PeerId, header: PieceHeader, mut recv: RecvStream) {
        let index = header.index;
        let size = self.metainfo.piece_size(index);
        // Only pieces we asked this peer for, one receiver per piece.
        let wanted = self.swarm.is_requested(&peer, index) && !self.receiving.contains(&index);
        let writer = match self.store.as_ref() {
            Some(Store::Partial(p)) if wanted && size == Some(header.len) => {
                p.piece_writer(index).ok()
            }
            _ => None,
        };
        let Some(writer) = writer else {
            let code = if size == Some(header.len) {
                codes::REFUSED
            } else {
                codes::BAD_PIECE
            };
            let _ = recv.stop(code);
            tracing::debug!(digest = %self.digest, %peer, %index, wanted, "piece stream refused");
            if code == codes::BAD_PIECE {
                self.swarm.handle_piece_received(
                    Instant::now(),
                    peer,
                    index,
                    PieceOutcome::Corrupt,
                );
            }
            return;
        };
        self.receiving.insert(index);
        // The request stops waiting in the peer's queue; its transfer clock starts now.
        self.swarm.handle_piece_started(Instant::now(), peer, index);
        let tx = self.tx.clone();
        let limit = self.swarm.piece_timeout(index);
        let ingress = self.ex.inner.config.ingress.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + limit;
            let len = u64::from(header.len);
            // Too slow counts as the swarm's timeout would, not as a bad piece.
            let limiter = ingress.as_ref();
            let result = receive_piece(&mut recv, writer, len, limiter, deadline, &tx).await;
            if matches!(result, Err(PieceFault::Peer)) {
                let _ = recv.stop(codes::BAD_PIECE);
            }
            tracing::debug!(%peer, %index, secs = started.elapsed().as_secs_f64(), ok = result.is_ok(), "piece received");
            let _ = tx
                .send(Input::PieceDone {
                    peer,
                    index,
                    result,
                })
                .await;
        });
    }
}

/// Receives exactly `len` bytes of a piece stream into `writer`, expects the end, and
/// verifies the piece. With a limiter, every [`LIMIT_CHUNK`] is admitted by it before it is
/// read. Past `deadline`, or once the blob's task is gone (`blob` closed), the stream is
/// given up (not the peer's fault), but never while a write is under way: once this
/// returns, nothing of the piece is still being written, so another receiver may take the
/// piece over. (A receiver outlived by its partial blob cannot write at all.)
async fn receive_piece(
    recv: &mut RecvStream,
    mut writer: PieceWriter,
    len: u64,
    limiter: Option<&RateLimiter>,
    deadline: tokio::time::Instant,
    blob: &mpsc::Sender<Input>,
) -> Result<VerifiedPiece, PieceFault> {
    // A wait on the peer (or on the limiter), cut short by the deadline or the blob's end.
    async fn wait<F: std::future::Future>(
        deadline: tokio::time::Instant,
        blob: &mpsc::Sender<Input>,
        f: F,
    ) -> Result<F::Output, PieceFault> {
        tokio::select! {
            out = tokio::time::timeout_at(deadline, f) => out.map_err(|_| PieceFault::Other),
            () = blob.closed() => Err(PieceFault::Other),
        }
    }

    let mut got = 0u64;
    // Bytes the limiter admitted and that are not read yet.
    let mut credit = 0usize;
    while got < len {
        let mut max = usize::try_from(len - got).unwrap_or(usize::MAX);
        if let Some(limiter) = limiter {
            if credit == 0 {
                credit = max.min(LIMIT_CHUNK);
                wait(deadline, blob, limiter.acquire(credit as u64)).await?;
            }
            max = max.min(credit);
        }
        // A chunk is taken under quinn's connection lock and copied (into the writer's
        // batch) after it is released; `read` would copy under the lock, holding up the
        // connection's driver and the other pieces' readers (~4 % of the exchange's time).
        let mut bytes = match wait(deadline, blob, recv.read_chunk(max, true)).await? {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => return Err(PieceFault::Peer), // Ended short.
            Err(_) => return Err(PieceFault::Other),
        };
        got += bytes.len() as u64;
        credit = credit.saturating_sub(bytes.len());
        while !bytes.is_empty() {
            let n = writer.gather(&bytes).map_err(PieceFault::of)?;
            bytes.advance(n);
            if writer.batch_full() {
                writer = hash_and_write(writer, |mut w| w.write_batch().map(|()| w)).await?;
            }
        }
    }
    // Anything after the piece is a protocol violation.
    match wait(deadline, blob, recv.read_chunk(1, true)).await? {
        Ok(None) => {}
        Ok(Some(_)) => return Err(PieceFault::Peer),
        Err(_) => return Err(PieceFault::Other),
    }
    hash_and_write(writer, PieceWriter::finish).await
}

/// Hashes what a piece writer gathered on this thread, then runs its disk work (`work`:
/// the batch's write, or the last one's and the check) on the blocking pool: with direct
/// writes that thread waits for the disk, and the runtime's threads must keep driving the
/// connections meanwhile. The hashing stays here because on the pool it had the pool's
/// threads competing with the runtime's for the cores, and the connections' drivers
/// waiting for a time slice: the exchange took about 10 % longer. A batch is about half a
/// millisecond of this thread.
async fn hash_and_write<T: Send + 'static>(
    mut writer: PieceWriter,
    work: fn(PieceWriter) -> Result<T, CasError>,
) -> Result<T, PieceFault> {
    writer.hash_gathered();
    match tokio::task::spawn_blocking(move || work(writer)).await {
        Ok(result) => result.map_err(PieceFault::of),
        Err(_) => Err(PieceFault::Other),
    }
}

async fn open_session(
    pool: &ConnectionPool,
    addr: SocketAddr,
    id: PeerId,
    digest: Digest,
) -> Option<(PeerConnection, BiStream)> {
    let conn = pool.connect(addr, Some(id)).await.ok()?;
    let (mut send, recv) = conn.connection().open_bi().await.ok()?;
    let header = StreamHeader::Session {
        version: PROTOCOL_VERSION,
        digest,
    };
    write_frame(&mut send, &header).await.ok()?;
    Some((conn, BiStream { send, recv }))
}

async fn write_session(mut send: SendStream, mut writes: mpsc::Receiver<PeerMessage>) {
    while let Some(msg) = writes.recv().await {
        if write_frame(&mut send, &msg).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

async fn read_session(mut recv: RecvStream, peer: PeerId, sid: u64, tx: mpsc::Sender<Input>) {
    loop {
        match read_message::<PeerMessage>(&mut recv, MAX_FRAME_LEN).await {
            Ok(Some(msg)) => {
                if tx.send(Input::Message { peer, sid, msg }).await.is_err() {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                let _ = tx.send(Input::SessionEnded { peer, sid }).await;
                return;
            }
        }
    }
}
