//! The per-blob event loop: a [`BlobTask`] owns one blob's [`Swarm`] and storage, feeds
//! the swarm the inputs that arrive on its channel (and its timeouts), and turns what the
//! swarm asks for into work: network work in `session`, `upload` and `receive`, disk
//! work (flushes, the commit) on the blocking pool.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use kraken_storage::cas::{BlobReader, BlobState, CasError, PartialBlob, PieceSource};
use kraken_storage::{Bitfield, Digest, Metainfo, PieceIndex};
use quinn::RecvStream;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::receive::{PieceFault, Received};
use super::session::Session;
use super::window::Streaming;
use super::{DoneState, ExchangeCounters, Handout, PieceExchange, StopReason, Tracker};
use crate::quic::{BiStream, PeerConnection};
use crate::swarm::{
    BlacklistReason, PeerEvent, PeerKind, PieceOutcome, StorageOp, Swarm, SwarmEvent, Transmit,
};
use crate::wire::{PeerId, PeerMessage, PieceHeader};

/// What a blob task hears about: from the tracker, its peers' streams, and the work it
/// started.
pub(super) enum Input {
    /// The tracker answered an announce (a failed one is only logged).
    Handout(Handout),
    /// A session stream opened, by us (`outbound`) or by the peer.
    Session {
        peer: PeerId,
        conn: PeerConnection,
        stream: BiStream,
        outbound: bool,
    },
    /// Dialling the peer, or opening the session on its connection, failed.
    ConnectFailed { peer: PeerId },
    /// A session message from the peer's session `sid`.
    Message {
        peer: PeerId,
        sid: u64,
        msg: PeerMessage,
    },
    /// The peer's session `sid` ended (finished, broken or malformed).
    SessionEnded { peer: PeerId, sid: u64 },
    /// The peer opened a piece stream for this blob.
    IncomingPiece {
        peer: PeerId,
        header: PieceHeader,
        recv: RecvStream,
    },
    /// A piece stream's receiver is done with it.
    PieceDone {
        peer: PeerId,
        index: PieceIndex,
        result: Result<Received, PieceFault>,
    },
    /// An upload ended, sent (`ok`) or not.
    PieceSent {
        peer: PeerId,
        index: PieceIndex,
        ok: bool,
    },
    /// A flush of the partial blob's progress ended.
    Flushed(Result<(), StopReason>),
    /// The blob was deleted from the cluster: stop seeding and downloading it.
    Stop,
    /// The store needs the space of this complete blob: stop seeding it
    /// ([`PieceExchange::release_seeders`]).
    Release,
}

/// The blob's bytes: still arriving, or complete in the CAS.
pub(super) enum Store {
    Partial(PartialBlob),
    Complete(BlobReader),
}

impl Store {
    pub(super) fn is_complete(&self) -> bool {
        matches!(self, Store::Complete(_))
    }

    pub(super) fn piece_source(&self) -> Result<PieceSource, CasError> {
        match self {
            Store::Partial(p) => p.piece_source(),
            Store::Complete(r) => r.piece_source(),
        }
    }
}

/// One blob's task. See the module docs.
pub(super) struct BlobTask<T: Tracker> {
    pub(super) ex: PieceExchange<T>,
    pub(super) digest: Digest,
    pub(super) metainfo: Arc<Metainfo>,
    pub(super) swarm: Swarm,
    /// `None` only while a commit runs on the blocking pool.
    pub(super) store: Option<Store>,
    pub(super) tx: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Input>,
    pub(super) sessions: HashMap<PeerId, Session>,
    /// Addresses and kinds of handed-out peers.
    pub(super) known: HashMap<PeerId, (SocketAddr, PeerKind)>,
    /// Pieces being written by a receiver right now.
    pub(super) receiving: HashSet<PieceIndex>,
    /// When each outstanding request left, for the piece latency (only with an observer).
    pub(super) requested: HashMap<(PeerId, PieceIndex), Instant>,
    /// A flush of the partial blob's progress runs on the blocking pool.
    flushing: bool,
    pub(super) next_sid: u64,
    done: watch::Sender<DoneState>,
    /// Verified, stored pieces, for [`BlobWatch`](super::BlobWatch)es.
    pieces: watch::Sender<Arc<Bitfield>>,
    /// The blob's streaming readers and the pieces kept in memory for them.
    pub(super) streaming: Arc<Streaming>,
    closed: watch::Receiver<bool>,
}

impl<T: Tracker> BlobTask<T> {
    /// A task for `swarm`'s blob, stored in `store`, reading `channel`'s inputs and
    /// serving its watchers: their outcome (`done`), the stored pieces (`pieces`) and the
    /// streaming readers (`streaming`).
    pub(super) fn new(
        ex: PieceExchange<T>,
        swarm: Swarm,
        store: Store,
        channel: (mpsc::Sender<Input>, mpsc::Receiver<Input>),
        (done, pieces, streaming): (
            watch::Sender<DoneState>,
            watch::Sender<Arc<Bitfield>>,
            Arc<Streaming>,
        ),
    ) -> Self {
        let metainfo = swarm.metainfo().clone();
        let closed = ex.inner.closed.subscribe();
        BlobTask {
            ex,
            digest: *metainfo.digest(),
            metainfo,
            swarm,
            store: Some(store),
            tx: channel.0,
            rx: channel.1,
            sessions: HashMap::new(),
            known: HashMap::new(),
            receiving: HashSet::new(),
            requested: HashMap::new(),
            flushing: false,
            next_sid: 0,
            done,
            pieces,
            streaming,
            closed,
        }
    }

    /// Runs the blob until it is done seeding or stops, then leaves the registry.
    pub(super) async fn run(mut self) {
        let outcome = self.event_loop().await;
        if let Err(reason) = &outcome {
            if *self.closed.borrow() {
                tracing::debug!(%reason, "blob task stopped");
            } else if matches!(reason, StopReason::Released) {
                tracing::info!(%reason, "blob task stopped");
            } else {
                tracing::warn!(%reason, "blob task stopped");
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
        if let Err(reason) = &outcome
            && reason.is_disk_full()
        {
            self.release_on_full_disk().await;
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

    /// A download stopped by a full disk is discarded, not kept to resume: its file, its
    /// record and its share of the quota are released, so the space goes to the blobs
    /// that fit. The store is told, so it reports itself unable to store for a while.
    async fn release_on_full_disk(&mut self) {
        let cas = self.ex.inner.cas.clone();
        cas.note_disk_full();
        let partial = self.store.take_if(|s| !s.is_complete());
        let digest = self.digest;
        let discard = move || {
            // Dropped here (its file closed) whether or not the abort went through.
            let aborted = match partial {
                Some(Store::Partial(p)) => p.abort(),
                _ => Ok(()),
            };
            if aborted.is_ok()
                && !cas
                    .info(&digest)?
                    .is_some_and(|i| i.state == BlobState::Partial)
            {
                return Ok(());
            }
            // The record stayed: the disk was too full to write metadata until the file's
            // blocks came back, which an unlinked file gives only once its last handle
            // closes (piece writers and readers end within moments). So is a record left by
            // a failed commit, which dropped its handle, saving its progress.
            let mut tries = 0;
            loop {
                let result = match cas.info(&digest)? {
                    Some(info) if info.state == BlobState::Partial => cas.delete(&digest),
                    _ => Ok(()),
                };
                tries += 1;
                if result.is_ok() || tries == 20 {
                    return result;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        };
        match tokio::task::spawn_blocking(discard).await {
            Ok(Ok(())) => tracing::info!("disk full: the partial download was discarded"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "disk full: discarding the partial download failed")
            }
            Err(e) => {
                tracing::warn!(error = %e, "disk full: discarding the partial download failed")
            }
        }
    }

    async fn event_loop(&mut self) -> Result<(), StopReason> {
        loop {
            if self.drain_outputs().await? {
                return Ok(());
            }
            if *self.closed.borrow() {
                return Err(StopReason::Closed);
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
                () = self.streaming.moved() => {
                    self.swarm.set_streaming(Instant::now(), self.streaming.windows());
                    continue;
                }
                _ = self.closed.changed() => continue,
            };
            // The task holds a sender itself, so the channel cannot close under it.
            let Some(input) = input else {
                return Err(StopReason::Ended);
            };
            self.handle(input)?;
        }
    }

    /// Acts on everything the swarm wants; returns true when the blob is done seeding.
    async fn drain_outputs(&mut self) -> Result<bool, StopReason> {
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
                if self.on_event(ev) {
                    return Ok(true);
                }
                continue;
            }
            return Ok(false);
        }
    }

    /// Acts on a swarm event; true when seeding is over.
    fn on_event(&mut self, ev: SwarmEvent) -> bool {
        match ev {
            SwarmEvent::Announce {
                have_bytes,
                complete,
            } => self.announce(have_bytes, complete),
            SwarmEvent::SeedingExpired => return true,
            SwarmEvent::BadPiece { from, index } => {
                tracing::warn!(peer = %from, %index, "bad piece");
                if let Some(observer) = &self.ex.inner.config.bad_piece {
                    observer.observe(super::BadPiece {
                        digest: self.digest,
                        index,
                        peer: from,
                        from: self.known.get(&from).copied(),
                    });
                }
            }
            SwarmEvent::RequestTimedOut { peer, index } => {
                tracing::debug!(%peer, %index, "request timed out");
            }
            // A peer at its connection limit is ordinary back-pressure, not a fault.
            SwarmEvent::Blacklisted {
                peer,
                reason: BlacklistReason::Busy,
                ..
            } => tracing::debug!(%peer, "peer busy, trying others"),
            SwarmEvent::Blacklisted { peer, reason, .. } => {
                tracing::info!(%peer, ?reason, "peer blacklisted");
            }
            _ => {}
        }
        false
    }

    /// Announces in the background; the handout comes back as an input.
    fn announce(&self, have_bytes: u64, complete: bool) {
        let ex = self.ex.clone();
        let tx = self.tx.clone();
        let digest = self.digest;
        let mut me = ex.inner.me.clone();
        me.complete = complete;
        let announce = async move {
            match ex.inner.tracker.announce(digest, me, have_bytes).await {
                Ok(h) => {
                    let _ = tx.send(Input::Handout(h)).await;
                }
                Err(e) => match ex.inner.announce_warn.allow(std::time::Instant::now()) {
                    Some(held_back) => {
                        tracing::warn!(error = %e, held_back, "announce failed; will retry");
                    }
                    None => tracing::debug!(error = %e, "announce failed; will retry"),
                },
            }
        };
        tokio::spawn(announce.in_current_span());
    }

    async fn commit(&mut self) -> Result<(), StopReason> {
        let Some(Store::Partial(partial)) = self.store.take_if(|s| !s.is_complete()) else {
            // Already complete (a seeder's swarm asks once at start): nothing to do.
            return Ok(());
        };
        let cas = self.ex.inner.cas.clone();
        let digest = self.digest;
        let committed = tokio::task::spawn_blocking(move || {
            partial.commit()?;
            cas.reader(&digest)
        })
        .await
        .map_err(|e| StopReason::blocking("commit", e))?
        .map_err(|e| StopReason::Commit(Arc::new(e)))?;
        self.store = Some(Store::Complete(committed));
        self.done.send_replace(Some(Ok(self.swarm.stats().clone())));
        Ok(())
    }

    fn transmit(&mut self, t: Transmit) {
        match t {
            Transmit::Connect { id, addr } => self.connect(id, addr),
            Transmit::Disconnect { id } => self.close_session(id),
            Transmit::Message { to, msg } => self.send_message(to, msg),
            Transmit::SendPiece {
                to,
                index,
                deadline,
            } => self.send_piece(to, index, deadline),
        }
    }

    fn handle(&mut self, input: Input) -> Result<(), StopReason> {
        let now = Instant::now();
        match input {
            Input::Handout(h) => {
                for p in &h.peers {
                    self.known.insert(p.id, (p.addr, p.kind));
                }
                self.swarm.handle_handout(now, h.peers, h.interval);
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
                if self.is_current(peer, sid) {
                    self.swarm.handle_message(now, peer, msg);
                }
            }
            Input::SessionEnded { peer, sid } => {
                if self.is_current(peer, sid) {
                    self.sessions.remove(&peer);
                    self.forget_requests(peer);
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
            } => self.on_piece_done(now, peer, index, result)?,
            Input::PieceSent { peer, index, ok } => {
                if ok {
                    let c = &self.ex.inner.counters;
                    let size = self.metainfo.piece_size(index).unwrap_or(0);
                    ExchangeCounters::add(&c.pieces_sent, 1);
                    ExchangeCounters::add(&c.bytes_sent, u64::from(size));
                }
                self.swarm.handle_piece_sent(now, peer, index, ok);
            }
            Input::Flushed(result) => self.on_flushed(result)?,
            Input::Stop => return Err(StopReason::Deleted),
            Input::Release => return Err(StopReason::Released),
        }
        Ok(())
    }

    /// A receiver is done with piece `index` from `peer`.
    fn on_piece_done(
        &mut self,
        now: Instant,
        peer: PeerId,
        index: PieceIndex,
        result: Result<Received, PieceFault>,
    ) -> Result<(), StopReason> {
        self.receiving.remove(&index);
        match result {
            Ok(Received { verified, kept }) => {
                if let Some(Store::Partial(p)) = self.store.as_mut() {
                    let fresh = p.record_stored(verified);
                    self.flush_if_due()?;
                    if fresh {
                        self.observe_latency(now, peer, index);
                        let c = &self.ex.inner.counters;
                        let size = self.metainfo.piece_size(index).unwrap_or(0);
                        ExchangeCounters::add(&c.pieces_received, 1);
                        ExchangeCounters::add(&c.bytes_received, u64::from(size));
                        // In memory before the readers hear of the piece.
                        if let Some(kept) = kept {
                            self.streaming.keep(index, kept);
                        }
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
            // Our disk failed: no peer can help, and waiting would hang the pull.
            Err(PieceFault::Storage(e)) => return Err(StopReason::Storage(e)),
            // What committing would have found at the end: give up now.
            Err(PieceFault::Metainfo(e)) => return Err(StopReason::Metainfo(e)),
        }
        Ok(())
    }

    /// Reports how long the piece took since we asked `peer` for it.
    fn observe_latency(&mut self, now: Instant, peer: PeerId, index: PieceIndex) {
        if let Some(asked) = self.requested.remove(&(peer, index))
            && let Some(observer) = &self.ex.inner.config.piece_latency
        {
            observer.observe(now.saturating_duration_since(asked));
        }
    }

    /// A flush of the progress ended.
    fn on_flushed(&mut self, result: Result<(), StopReason>) -> Result<(), StopReason> {
        self.flushing = false;
        match (result, &self.store) {
            (Err(e), Some(Store::Partial(_))) => Err(e),
            // The commit synced and recorded everything since: nothing was lost.
            (Err(e), _) => {
                tracing::debug!(error = %e, "late flush failed");
                Ok(())
            }
            (Ok(()), _) => self.flush_if_due(),
        }
    }

    /// Starts a flush of the partial blob's progress on the blocking pool when one is due
    /// and none runs: an fsync must not hold up this task (and the runtime thread under
    /// it, which drives connections too) while pieces keep arriving.
    fn flush_if_due(&mut self) -> Result<(), StopReason> {
        let Some(Store::Partial(p)) = self.store.as_mut() else {
            return Ok(());
        };
        if self.flushing || !p.flush_due() {
            return Ok(());
        }
        let Some(job) = p.flush_job().map_err(|e| StopReason::Flush(Arc::new(e)))? else {
            return Ok(());
        };
        self.flushing = true;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = match tokio::task::spawn_blocking(move || job.run()).await {
                Ok(r) => r.map_err(|e| StopReason::Flush(Arc::new(e))),
                Err(e) => Err(StopReason::blocking("flush", e)),
            };
            let _ = tx.send(Input::Flushed(result)).await;
        });
        Ok(())
    }

    /// True if `sid` is the peer's current session (not one replaced or closed since).
    fn is_current(&self, peer: PeerId, sid: u64) -> bool {
        self.sessions.get(&peer).is_some_and(|s| s.sid == sid)
    }
}
