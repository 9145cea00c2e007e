//! The swarm: one blob's download and seeding, as a sans-IO state machine.
//!
//! A [`Swarm`] decides everything about one blob on one node and does nothing itself:
//!
//! ```text
//! driver ── handle_handout / handle_peer / handle_message / handle_piece_started /
//!           handle_piece_received / handle_piece_sent / handle_timeout(now, ..) ──► Swarm
//! driver ◄── poll_transmit (connect, disconnect, message, send piece) /
//!            poll_storage (commit) / poll_event (announce, progress, blacklist) /
//!            poll_timeout ── Swarm
//! ```
//!
//! Policy, in brief:
//! - **Connections**: up to `max_connections` per blob from the tracker's handout, in the
//!   handout's order (complete peers and origins first); never ourselves, never twice,
//!   never a blacklisted peer. The driver keeps one session per (blob, peer), so two
//!   peers dialling each other at once share it. A complete node does not dial.
//! - **Requests**: rarest piece first among those the peer has and nobody is fetching,
//!   ties broken at random (seeded), up to a pipeline per peer (3 to agents, 5 to origins).
//!   Origins are asked only for pieces no connected agent has (`spare_origins`), so the
//!   swarm, not the origin, carries the copies.
//!   A request waits in the peer's upload queue until the peer starts sending it
//!   (`handle_piece_started`); from then it must finish within `base + size / min_rate`.
//!   Waiting requests give up only when the peer started or finished nothing for us for
//!   that long (see `requests`): a busy uploader serving others is not stalled. Expired
//!   requests are cancelled, their pieces go back to the pool, and the peer collects one
//!   strike per expiry. In the endgame (few pieces missing) outstanding
//!   pieces are requested from a second peer, and the slower copy is cancelled.
//! - **Serving**: requests for pieces we have are served through `upload_slots`
//!   concurrent uploads, round-robin across peers; others are rejected.
//! - **Health**: a corrupt piece or a metainfo mismatch blacklists the peer for
//!   `blacklist_bad_peer`; an unreachable or stalled peer for `blacklist_unreachable`; a
//!   peer that refused our session (at its connection limit) for `blacklist_busy`, long
//!   enough not to redial it at once, short enough to try again as its sessions end;
//!   idle connections and connections between two complete peers are closed.
//! - **Completion**: commit, announce complete, tell every peer, and keep seeding until no
//!   upload happened for `seed_tti`.
//!
//! Time is an argument everywhere and randomness comes from a ChaCha8 RNG seeded by the
//! config, so the same inputs give the same outputs on every platform.

mod config;
pub mod handout;
mod requests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kraken_storage::{Bitfield, Metainfo, MetainfoId, PieceIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use config::{SwarmConfig, SwarmConfigError};
use requests::Requests;

use crate::wire::{PeerId, PeerMessage};

/// What kind of node a peer is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum PeerKind {
    /// A host's agent.
    Agent,
    /// A dedicated seeder.
    Origin,
}

/// A peer as the tracker hands it out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerInfo {
    /// Its identity.
    pub id: PeerId,
    /// Where to dial it.
    pub addr: SocketAddr,
    /// Agent or origin.
    pub kind: PeerKind,
    /// Whether it had the whole blob when it last announced.
    pub complete: bool,
}

/// Connection-level news from the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A session for this blob is open (we dialled it, or it dialled us).
    Connected {
        /// The peer.
        id: PeerId,
        /// Agent or origin.
        kind: PeerKind,
        /// True if we opened the session.
        outbound: bool,
    },
    /// Dialling failed (unreachable, TLS refused, timed out).
    ConnectFailed {
        /// The peer.
        id: PeerId,
    },
    /// The session ended.
    Disconnected {
        /// The peer.
        id: PeerId,
    },
    /// The driver swapped the peer's session for another (both sides dialled at once):
    /// forget its state without counting it against the peer; `Connected` follows.
    Replaced {
        /// The peer.
        id: PeerId,
    },
}

/// What the driver found when a piece arrived. The driver verifies BLAKE3 while it
/// receives and writes only verified bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceOutcome {
    /// Verified and stored.
    Stored,
    /// Failed verification (or had the wrong length); nothing was stored.
    Corrupt,
}

/// Something the driver must send or do on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Open a session with this peer.
    Connect {
        /// The peer.
        id: PeerId,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// Close the session with this peer.
    Disconnect {
        /// The peer.
        id: PeerId,
    },
    /// Send a session message.
    Message {
        /// The peer.
        to: PeerId,
        /// The message.
        msg: PeerMessage,
    },
    /// Read a piece from storage and send it on its own stream; report
    /// [`Swarm::handle_piece_sent`] when done (or failed).
    SendPiece {
        /// The peer.
        to: PeerId,
        /// The piece.
        index: PieceIndex,
    },
}

/// Storage work the swarm asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageOp {
    /// Every piece is present: make the blob complete (flush, verify, rename). Also issued
    /// once by a swarm that starts complete; a blob already committed needs nothing.
    Commit,
}

/// Why a peer was blacklisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlacklistReason {
    /// It sent a piece that failed verification.
    BadPiece,
    /// It broke the session protocol (wrong metainfo, message before handshake, ...).
    ProtocolViolation,
    /// It could not be reached.
    Unreachable,
    /// Too many of its requests timed out.
    Stalled,
    /// It refused our session before its handshake (at its connection limit).
    Busy,
}

/// Things worth telling the driver, a log, or a pull report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmEvent {
    /// Time to announce to the tracker; answer with [`Swarm::handle_handout`].
    Announce {
        /// Whether we have the whole blob.
        complete: bool,
        /// Bytes we have.
        have_bytes: u64,
    },
    /// A piece arrived and verified.
    PieceStored {
        /// From whom.
        from: PeerId,
        /// Which.
        index: PieceIndex,
        /// Its size.
        bytes: u32,
    },
    /// A piece failed verification.
    BadPiece {
        /// From whom.
        from: PeerId,
        /// Which.
        index: PieceIndex,
    },
    /// A request timed out and will be retried elsewhere.
    RequestTimedOut {
        /// The peer.
        peer: PeerId,
        /// The piece.
        index: PieceIndex,
    },
    /// A peer broke the session protocol (it is blacklisted and disconnected too).
    Violation {
        /// The peer.
        peer: PeerId,
        /// What it did.
        what: &'static str,
    },
    /// A peer was blacklisted.
    Blacklisted {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: BlacklistReason,
        /// Until when.
        until: Instant,
    },
    /// Every piece is present.
    Completed,
    /// Seeding is over: nobody downloaded for `seed_tti`. The driver may drop the swarm.
    SeedingExpired,
}

/// Bytes moved, by peer and by kind: the raw material of a pull report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmStats {
    /// Verified bytes received from origins.
    pub bytes_from_origins: u64,
    /// Verified bytes received from agents.
    pub bytes_from_agents: u64,
    /// Bytes uploaded to peers.
    pub bytes_uploaded: u64,
    /// Requests that timed out.
    pub requests_timed_out: u64,
    /// Pieces that failed verification.
    pub bad_pieces: u64,
    /// Per peer: (kind, bytes received from it, bytes sent to it).
    pub per_peer: BTreeMap<PeerId, PeerStats>,
}

impl SwarmStats {
    /// The entry of `id`, created on first traffic.
    fn peer(&mut self, id: PeerId, kind: PeerKind) -> &mut PeerStats {
        self.per_peer.entry(id).or_insert(PeerStats {
            kind,
            downloaded: 0,
            uploaded: 0,
            bad_pieces: 0,
        })
    }
}

/// Traffic with one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStats {
    /// Agent or origin.
    pub kind: PeerKind,
    /// Verified bytes received from it.
    pub downloaded: u64,
    /// Bytes sent to it.
    pub uploaded: u64,
    /// Pieces from it that failed verification (it was blacklisted for them).
    pub bad_pieces: u32,
}

#[derive(Debug)]
struct Peer {
    kind: PeerKind,
    /// Their bitfield; `None` until their handshake arrives.
    bitfield: Option<Bitfield>,
    /// Our requests to them, with deadlines.
    requested: Requests,
    /// Their requests to us, waiting for an upload slot.
    queued: VecDeque<PieceIndex>,
    /// Pieces they refused; not asked of them again outside the endgame.
    rejected: BTreeSet<PieceIndex>,
    /// Pieces being uploaded to them now.
    uploading: usize,
    strikes: u32,
    last_activity: Instant,
    /// The `pool_epoch` of this peer's last full scan that found nothing to ask it for
    /// while its pipeline had room. Until the epoch moves, only a piece it newly announces
    /// can be worth asking for, so a `Have` checks that piece alone.
    scanned_dry: Option<u64>,
}

/// Whether a blacklist entry is for a fault (bad piece, protocol violation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault(bool);

/// The swarm state machine for one blob. See the module docs.
#[derive(Debug)]
pub struct Swarm {
    config: SwarmConfig,
    me: PeerId,
    metainfo: Arc<Metainfo>,
    /// `metainfo.id()`, computed once: it hashes the whole encoding.
    metainfo_id: MetainfoId,
    have: Bitfield,
    have_bytes: u64,
    peers: BTreeMap<PeerId, Peer>,
    /// Handed-out peers we might connect to, in handout order.
    candidates: Vec<PeerInfo>,
    /// Moves whenever a piece may have become askable of peers other than the one that
    /// announced it (a request released, a peer gone, the endgame): see `Peer::scanned_dry`.
    pool_epoch: u64,
    /// Reused by `schedule_requests` (it runs on most inputs; allocating there showed).
    scratch_ids: Vec<PeerId>,
    /// Dials in progress, with the kind the handout gave.
    connecting: BTreeMap<PeerId, PeerKind>,
    /// Shunned peers: until when, and whether for a fault (bad piece, protocol) rather
    /// than for being unreachable or stalled.
    blacklist: BTreeMap<PeerId, (Instant, Fault)>,
    /// No later than the earliest blacklist expiry (exact after each timeout pass): the
    /// deadline without scanning a blacklist that can hold thousands of peers.
    blacklist_next: Option<Instant>,
    /// No later than the earliest request or idle deadline of any peer (exact after each
    /// timeout pass): `poll_timeout` runs after every input and must not walk every peer
    /// (an origin has hundreds). Deadlines only ever move later except where one is set,
    /// and each setter lowers this; a wake-up it makes early only rescans.
    peer_deadline: Option<Instant>,
    /// Per piece: how many connected peers have it.
    availability: Vec<u32>,
    /// Per piece: how many connected agents (not origins) have it.
    agent_availability: Vec<u32>,
    /// Per missing piece being fetched: from whom.
    inflight: Vec<Vec<PeerId>>,
    uploads_active: usize,
    /// Per piece: uploads of it started so far (saturating).
    sent: Vec<u16>,
    /// Round-robin cursor over peers for serving.
    serve_cursor: Option<PeerId>,
    rng: ChaCha8Rng,
    transmits: VecDeque<Transmit>,
    storage_ops: VecDeque<StorageOp>,
    events: VecDeque<SwarmEvent>,
    announce_interval: Duration,
    next_announce: Instant,
    last_upload: Instant,
    committed: bool,
    expired: bool,
    stats: SwarmStats,
}

impl Swarm {
    /// A swarm for `metainfo` starting with the pieces in `have` (all of them for a seeder,
    /// the persisted bitfield for a resumed download). Announces at once.
    pub fn new(
        config: SwarmConfig,
        me: PeerId,
        metainfo: Arc<Metainfo>,
        have: Bitfield,
        now: Instant,
    ) -> Result<Self, SwarmConfigError> {
        config.validate()?;
        if have.len() != metainfo.piece_count() {
            return Err(SwarmConfigError(format!(
                "bitfield has {} pieces, metainfo {}",
                have.len(),
                metainfo.piece_count()
            )));
        }
        let have_bytes = have
            .ones()
            .filter_map(|i| metainfo.piece_size(i))
            .map(u64::from)
            .sum();
        let pieces = metainfo.piece_count() as usize;
        let mut swarm = Swarm {
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed),
            announce_interval: config.announce_interval,
            availability: vec![0; pieces],
            agent_availability: vec![0; pieces],
            config,
            me,
            metainfo_id: metainfo.id(),
            metainfo,
            committed: false,
            have,
            have_bytes,
            peers: BTreeMap::new(),
            candidates: Vec::new(),
            connecting: BTreeMap::new(),
            scratch_ids: Vec::new(),
            pool_epoch: 0,
            blacklist: BTreeMap::new(),
            blacklist_next: None,
            peer_deadline: None,
            inflight: vec![Vec::new(); pieces],
            uploads_active: 0,
            sent: vec![0; pieces],
            serve_cursor: None,
            transmits: VecDeque::new(),
            storage_ops: VecDeque::new(),
            events: VecDeque::new(),
            next_announce: now,
            last_upload: now,
            expired: false,
            stats: SwarmStats::default(),
        };
        if swarm.have.is_complete() {
            // Every piece is already here (a seeder, or a download that crashed just
            // before its commit): make sure the blob is committed. Idempotent for drivers.
            swarm.committed = true;
            swarm.storage_ops.push_back(StorageOp::Commit);
        }
        swarm.announce(now);
        Ok(swarm)
    }

    /// The blob's metainfo.
    pub fn metainfo(&self) -> &Arc<Metainfo> {
        &self.metainfo
    }

    /// Pieces we have.
    pub fn bitfield(&self) -> &Bitfield {
        &self.have
    }

    /// True when every piece is present.
    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    /// Traffic so far.
    pub fn stats(&self) -> &SwarmStats {
        &self.stats
    }

    /// Peers with an open session.
    pub fn connected_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    /// True if we asked `peer` for `index` and are still waiting: the only pieces a
    /// driver should accept from it.
    pub fn is_requested(&self, peer: &PeerId, index: PieceIndex) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.requested.contains_key(&index))
    }

    /// The request timeout for `index` (drivers bound transfers by it).
    pub fn piece_timeout(&self, index: PieceIndex) -> Duration {
        self.config
            .request_timeout(self.metainfo.piece_size(index).unwrap_or(0))
    }

    /// True if `peer` is blacklisted at `now`.
    pub fn is_blacklisted(&self, peer: &PeerId, now: Instant) -> bool {
        self.blacklist
            .get(peer)
            .is_some_and(|(until, _)| *until > now)
    }

    // ---- inputs ------------------------------------------------------------------------

    /// The tracker's answer to an announce: peers to consider, and the interval it wants.
    pub fn handle_handout(
        &mut self,
        now: Instant,
        peers: Vec<PeerInfo>,
        interval: Option<Duration>,
    ) {
        if let Some(i) = interval.filter(|i| !i.is_zero()) {
            self.announce_interval = i;
            self.next_announce = now + i;
        }
        let mut seen = BTreeSet::new();
        self.candidates = peers
            .into_iter()
            .filter(|p| p.id != self.me && seen.insert(p.id))
            .collect();
        self.maybe_connect(now);
    }

    /// A session opened, failed or closed.
    pub fn handle_peer(&mut self, now: Instant, event: PeerEvent) {
        match event {
            PeerEvent::Connected { id, kind, outbound } => {
                self.on_connected(now, id, kind, outbound)
            }
            PeerEvent::ConnectFailed { id } => {
                self.connecting.remove(&id);
                self.ban(now, id, BlacklistReason::Unreachable);
                self.maybe_connect(now);
            }
            PeerEvent::Replaced { id } => {
                self.connecting.remove(&id);
                self.drop_peer(id);
            }
            PeerEvent::Disconnected { id } => {
                self.connecting.remove(&id);
                // Ended before its handshake: refused (at its connection limit) or broken
                // (a dial that fails is `ConnectFailed`). Back off rather than redialling
                // it at once, but only briefly: it was reachable.
                let unanswered = self.peers.get(&id).is_some_and(|p| p.bitfield.is_none());
                if unanswered {
                    self.ban(now, id, BlacklistReason::Busy);
                }
                self.drop_peer(id);
                self.maybe_connect(now);
                self.schedule_requests(now);
                self.serve(now);
            }
        }
    }

    /// A session message from `from`.
    pub fn handle_message(&mut self, now: Instant, from: PeerId, msg: PeerMessage) {
        let Some(peer) = self.peers.get_mut(&from) else {
            return; // A message racing a disconnect.
        };
        peer.last_activity = now;
        let handshaken = peer.bitfield.is_some();
        match msg {
            PeerMessage::Handshake { .. } if handshaken => {
                self.violation(now, from, "second handshake");
            }
            PeerMessage::Handshake {
                metainfo_id,
                bitfield,
            } => {
                if metainfo_id != self.metainfo_id || bitfield.len() != self.metainfo.piece_count()
                {
                    self.violation(now, from, "metainfo mismatch");
                    return;
                }
                let kind = self.peers.get(&from).map_or(PeerKind::Agent, |p| p.kind);
                self.add_availability(&bitfield, kind);
                let complete = bitfield.is_complete();
                if let Some(p) = self.peers.get_mut(&from) {
                    p.bitfield = Some(bitfield);
                }
                if complete && self.is_complete() {
                    self.disconnect(from);
                    return;
                }
                self.schedule_peer(now, from);
            }
            _ if !handshaken => self.violation(now, from, "message before handshake"),
            PeerMessage::Have(index) => {
                if index.0 >= self.metainfo.piece_count() {
                    self.violation(now, from, "have out of range");
                    return;
                }
                if let Some(kind) = self.peer_learns(from, index) {
                    if kind == PeerKind::Agent {
                        self.reroute_from_origins(index);
                    }
                    self.schedule_after_have(now, from, index);
                }
            }
            PeerMessage::Complete => {
                for i in 0..self.metainfo.piece_count() {
                    self.peer_learns(from, PieceIndex(i));
                }
                if self.is_complete() {
                    self.disconnect(from);
                } else {
                    self.schedule_peer(now, from);
                }
            }
            PeerMessage::Request(index) => self.on_request(now, from, index),
            PeerMessage::Cancel(index) => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.queued.retain(|i| *i != index);
                }
            }
            PeerMessage::Reject(index) => {
                if self.forget_request(from, index)
                    && let Some(p) = self.peers.get_mut(&from)
                {
                    p.rejected.insert(index);
                }
                // The piece is free again: anyone may be asked for it.
                self.schedule_requests(now);
            }
        }
    }

    /// `from` started sending `index` (its first bytes or header arrived): the request
    /// stops waiting in their queue and becomes a transfer, timed from now.
    pub fn handle_piece_started(&mut self, now: Instant, from: PeerId, index: PieceIndex) {
        let timeout = self.piece_timeout(index);
        let patience = now + self.patience();
        if let Some(p) = self.peers.get_mut(&from) {
            p.last_activity = now;
            if p.requested.start(index, now + timeout) {
                p.requested.progress(patience);
                self.note_deadline(now + timeout);
            }
        }
    }

    /// A piece from `from` arrived; the driver already verified (and, if good, stored) it.
    pub fn handle_piece_received(
        &mut self,
        now: Instant,
        from: PeerId,
        index: PieceIndex,
        outcome: PieceOutcome,
    ) {
        let requested = self.forget_request(from, index);
        let patience = now + self.patience();
        if let Some(p) = self.peers.get_mut(&from) {
            p.last_activity = now;
            p.strikes = 0;
            p.requested.progress(patience);
        }
        let Some(size) = self.metainfo.piece_size(index) else {
            self.violation(now, from, "piece out of range");
            return;
        };
        match outcome {
            PieceOutcome::Corrupt => {
                self.stats.bad_pieces += 1;
                let kind = self.peers.get(&from).map_or(PeerKind::Agent, |p| p.kind);
                let entry = self.stats.peer(from, kind);
                entry.bad_pieces = entry.bad_pieces.saturating_add(1);
                self.events.push_back(SwarmEvent::BadPiece { from, index });
                self.ban(now, from, BlacklistReason::BadPiece);
                self.disconnect(from);
            }
            PieceOutcome::Stored => {
                // Unsolicited pieces are kept too: they verified, so they are good bytes.
                let _ = requested;
                if self.have.set(index) {
                    self.have_bytes += u64::from(size);
                    let kind = self.peers.get(&from).map_or(PeerKind::Agent, |p| p.kind);
                    match kind {
                        PeerKind::Origin => self.stats.bytes_from_origins += u64::from(size),
                        PeerKind::Agent => self.stats.bytes_from_agents += u64::from(size),
                    }
                    self.stats.peer(from, kind).downloaded += u64::from(size);
                    self.events.push_back(SwarmEvent::PieceStored {
                        from,
                        index,
                        bytes: size,
                    });
                    // Endgame duplicates still out elsewhere are now useless.
                    let others = std::mem::take(&mut self.inflight[index.0 as usize]);
                    for other in others {
                        if let Some(p) = self.peers.get_mut(&other) {
                            p.requested.remove(&index);
                            self.transmits.push_back(Transmit::Message {
                                to: other,
                                msg: PeerMessage::Cancel(index),
                            });
                        }
                    }
                    self.broadcast_have(index);
                    if self.have.is_complete() {
                        self.on_complete(now);
                        return;
                    }
                }
                // A delivery frees a slot in the sender's pipeline and no piece for anyone
                // else (outside the endgame, where duplicates were just cancelled and every
                // peer may take a second copy), so only the sender is scheduled: a scan of
                // every peer on every delivery showed in the simulator's profile.
                if !self.in_endgame() {
                    self.schedule_peer(now, from);
                    return;
                }
            }
        }
        self.schedule_requests(now);
    }

    /// An upload the swarm asked for (`Transmit::SendPiece`) finished or failed.
    pub fn handle_piece_sent(&mut self, now: Instant, to: PeerId, index: PieceIndex, ok: bool) {
        // A dropped peer's uploads were released when it was dropped.
        if let Some(p) = self.peers.get_mut(&to)
            && p.uploading > 0
        {
            p.uploading -= 1;
            p.last_activity = now;
            self.uploads_active = self.uploads_active.saturating_sub(1);
            if p.uploading == 0 {
                self.note_deadline(now + self.config.idle_timeout);
            }
        }
        if ok && let Some(size) = self.metainfo.piece_size(index) {
            self.stats.bytes_uploaded += u64::from(size);
            if let Some(p) = self.peers.get(&to) {
                let kind = p.kind;
                self.stats.peer(to, kind).uploaded += u64::from(size);
            }
            self.last_upload = now;
        }
        self.serve(now);
    }

    /// Time passed: expire requests, idle peers, blacklist entries; announce; stop seeding.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Requests past their deadline go back to the pool, and the peer is told so it
        // does not send what nobody waits for. One strike per peer per expiry: a stalled
        // pipeline is one stall, not one per piece in it.
        let expired: Vec<(PeerId, Vec<PieceIndex>)> = self
            .peers
            .iter()
            .map(|(id, p)| (*id, p.requested.expired(now)))
            .filter(|(_, e)| !e.is_empty())
            .collect();
        for (id, indexes) in expired {
            for index in indexes {
                self.forget_request(id, index);
                self.stats.requests_timed_out += 1;
                self.events
                    .push_back(SwarmEvent::RequestTimedOut { peer: id, index });
                self.transmits.push_back(Transmit::Message {
                    to: id,
                    msg: PeerMessage::Cancel(index),
                });
            }
            let strikes = self.peers.get_mut(&id).map_or(0, |p| {
                p.strikes += 1;
                p.strikes
            });
            if strikes >= self.config.stall_strikes {
                self.ban(now, id, BlacklistReason::Stalled);
                self.disconnect(id);
            }
        }
        let idle: Vec<_> = self
            .peers
            .iter()
            .filter(|(_, p)| p.last_activity + self.config.idle_timeout <= now && p.uploading == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.disconnect(id);
        }
        self.peer_deadline = self.exact_peer_deadline();
        self.blacklist.retain(|_, (until, _)| *until > now);
        self.blacklist_next = self.blacklist.values().map(|(until, _)| *until).min();
        if self.next_announce <= now {
            self.announce(now);
        }
        if self.is_complete()
            && !self.expired
            && self.uploads_active == 0
            && self.last_upload + self.config.seed_tti <= now
        {
            self.expired = true;
            self.events.push_back(SwarmEvent::SeedingExpired);
        }
        self.maybe_connect(now);
        self.schedule_requests(now);
        self.serve(now);
    }

    /// The earliest request or idle deadline of any peer, by walking them all.
    fn exact_peer_deadline(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                // Idle disconnects skip peers we are uploading to; so does the deadline.
                let idle = (p.uploading == 0).then(|| p.last_activity + self.config.idle_timeout);
                [p.requested.next_deadline(), idle]
            })
            .flatten()
            .min()
    }

    /// A peer deadline was set at `t`.
    fn note_deadline(&mut self, t: Instant) {
        self.peer_deadline = Some(self.peer_deadline.map_or(t, |d| d.min(t)));
    }

    // ---- outputs -----------------------------------------------------------------------

    /// The next thing to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next storage operation.
    pub fn poll_storage(&mut self) -> Option<StorageOp> {
        self.storage_ops.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SwarmEvent> {
        self.events.pop_front()
    }

    /// When [`Swarm::handle_timeout`] must next be called at the latest (it may be
    /// earlier than anything is due: a call then changes nothing but this answer).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = Some(self.next_announce);
        let mut consider = |t: Instant| {
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        };
        if let Some(d) = self.peer_deadline {
            consider(d);
        }
        if !self.candidates.is_empty()
            && let Some(until) = self.blacklist_next
        {
            consider(until);
        }
        if self.is_complete() && !self.expired && self.uploads_active == 0 {
            consider(self.last_upload + self.config.seed_tti);
        }
        next
    }

    // ---- internals ---------------------------------------------------------------------

    fn announce(&mut self, now: Instant) {
        self.next_announce = now + self.announce_interval;
        self.events.push_back(SwarmEvent::Announce {
            complete: self.is_complete(),
            have_bytes: self.have_bytes,
        });
    }

    fn on_connected(&mut self, now: Instant, id: PeerId, kind: PeerKind, outbound: bool) {
        self.connecting.remove(&id);
        // A peer shunned as unreachable or stalled that dials us is back (restarted, or
        // its network healed): a ban for a fault stands.
        if !outbound && let Some((_, Fault(false))) = self.blacklist.get(&id) {
            self.blacklist.remove(&id);
        }
        if id == self.me || self.is_blacklisted(&id, now) {
            self.transmits.push_back(Transmit::Disconnect { id });
            return;
        }
        if self.peers.contains_key(&id) {
            // The driver keeps one session per (blob, peer): a second `Connected` for the
            // same peer (both sides dialled at once) is the same session.
            return;
        }
        if !outbound && self.connected(kind) >= self.connection_limit(kind) {
            self.transmits.push_back(Transmit::Disconnect { id });
            return;
        }
        self.peers.insert(
            id,
            Peer {
                kind,
                bitfield: None,
                requested: Requests::new(now),
                queued: VecDeque::new(),
                rejected: BTreeSet::new(),
                uploading: 0,
                strikes: 0,
                last_activity: now,
                scanned_dry: None,
            },
        );
        self.note_deadline(now + self.config.idle_timeout);
        self.transmits.push_back(Transmit::Message {
            to: id,
            msg: PeerMessage::Handshake {
                metainfo_id: self.metainfo_id,
                bitfield: self.have.clone(),
            },
        });
    }

    fn maybe_connect(&mut self, now: Instant) {
        if self.is_complete() {
            return;
        }
        let free = |kind| {
            let dialling = self.connecting.values().filter(|k| **k == kind).count();
            self.connection_limit(kind)
                .saturating_sub(self.connected(kind) + dialling)
        };
        let mut agent_slots = free(PeerKind::Agent);
        let mut origin_slots = free(PeerKind::Origin);
        for c in &self.candidates {
            if agent_slots == 0 && origin_slots == 0 {
                break;
            }
            let slots = match c.kind {
                PeerKind::Agent => &mut agent_slots,
                PeerKind::Origin => &mut origin_slots,
            };
            let busy = self.peers.contains_key(&c.id) || self.connecting.contains_key(&c.id);
            if *slots == 0 || busy || self.is_blacklisted(&c.id, now) {
                continue;
            }
            *slots -= 1;
            self.connecting.insert(c.id, c.kind);
            self.transmits.push_back(Transmit::Connect {
                id: c.id,
                addr: c.addr,
            });
        }
    }

    /// Connected peers of `kind`.
    fn connected(&self, kind: PeerKind) -> usize {
        self.peers.values().filter(|p| p.kind == kind).count()
    }

    /// Most connected peers of `kind`.
    fn connection_limit(&self, kind: PeerKind) -> usize {
        match kind {
            PeerKind::Agent => self.config.max_connections,
            PeerKind::Origin => self.config.max_origin_connections,
        }
    }

    /// Records that `peer` has `index`; returns the peer's kind if that is news.
    fn peer_learns(&mut self, peer: PeerId, index: PieceIndex) -> Option<PeerKind> {
        let p = self.peers.get_mut(&peer)?;
        let kind = p.kind;
        if !p.bitfield.as_mut()?.set(index) {
            return None;
        }
        self.availability[index.0 as usize] += 1;
        if kind == PeerKind::Agent {
            self.agent_availability[index.0 as usize] += 1;
        }
        Some(kind)
    }

    /// An agent peer now has `index`: requests for it still waiting in an origin's queue
    /// are cancelled, so the origin's uplink carries pieces no agent has (`spare_origins`).
    fn reroute_from_origins(&mut self, index: PieceIndex) {
        if !self.config.spare_origins || self.inflight[index.0 as usize].is_empty() {
            return;
        }
        let waiting: Vec<PeerId> = self.inflight[index.0 as usize]
            .iter()
            .copied()
            .filter(|id| {
                self.peers
                    .get(id)
                    .is_some_and(|p| p.kind == PeerKind::Origin && p.requested.is_waiting(&index))
            })
            .collect();
        for origin in waiting {
            self.pool_epoch += 1;
            self.forget_request(origin, index);
            self.transmits.push_back(Transmit::Message {
                to: origin,
                msg: PeerMessage::Cancel(index),
            });
        }
    }

    fn add_availability(&mut self, bitfield: &Bitfield, kind: PeerKind) {
        for i in bitfield.ones() {
            self.availability[i.0 as usize] += 1;
            if kind == PeerKind::Agent {
                self.agent_availability[i.0 as usize] += 1;
            }
        }
    }

    fn drop_peer(&mut self, id: PeerId) {
        let Some(peer) = self.peers.remove(&id) else {
            return;
        };
        // Its requests go back to the pool; an origin may be needed where it served.
        self.pool_epoch += 1;
        if let Some(bf) = &peer.bitfield {
            for i in bf.ones() {
                let a = &mut self.availability[i.0 as usize];
                *a = a.saturating_sub(1);
                if peer.kind == PeerKind::Agent {
                    let a = &mut self.agent_availability[i.0 as usize];
                    *a = a.saturating_sub(1);
                }
            }
        }
        for index in peer.requested.keys() {
            self.remove_inflight(*index, id);
        }
        self.uploads_active = self.uploads_active.saturating_sub(peer.uploading);
        if self.serve_cursor == Some(id) {
            self.serve_cursor = None;
        }
    }

    fn disconnect(&mut self, id: PeerId) {
        if self.peers.contains_key(&id) {
            self.drop_peer(id);
            self.transmits.push_back(Transmit::Disconnect { id });
        }
    }

    fn ban(&mut self, now: Instant, id: PeerId, reason: BlacklistReason) {
        let fault = matches!(
            reason,
            BlacklistReason::BadPiece | BlacklistReason::ProtocolViolation
        );
        let span = match reason {
            _ if fault => self.config.blacklist_bad_peer,
            BlacklistReason::Busy => self.config.blacklist_busy,
            _ => self.config.blacklist_unreachable,
        };
        let until = now + span;
        // A fault's longer ban is not shortened by a later stall.
        let fault = fault
            || self
                .blacklist
                .get(&id)
                .is_some_and(|(u, f)| f.0 && *u > now);
        let until = match self.blacklist.get(&id) {
            Some((u, _)) if fault => until.max(*u),
            _ => until,
        };
        self.blacklist.insert(id, (until, Fault(fault)));
        // A replaced, later entry may leave this early: an early wake-up only rescans.
        self.blacklist_next = Some(self.blacklist_next.map_or(until, |n| n.min(until)));
        self.events.push_back(SwarmEvent::Blacklisted {
            peer: id,
            reason,
            until,
        });
    }

    fn violation(&mut self, now: Instant, id: PeerId, what: &'static str) {
        self.events
            .push_back(SwarmEvent::Violation { peer: id, what });
        self.ban(now, id, BlacklistReason::ProtocolViolation);
        self.disconnect(id);
    }

    /// Removes our request for `index` from `peer`; true if there was one.
    fn forget_request(&mut self, peer: PeerId, index: PieceIndex) -> bool {
        let had = self
            .peers
            .get_mut(&peer)
            .is_some_and(|p| p.requested.remove(&index));
        if had {
            self.remove_inflight(index, peer);
        }
        had
    }

    fn remove_inflight(&mut self, index: PieceIndex, peer: PeerId) {
        if let Some(list) = self.inflight.get_mut(index.0 as usize) {
            list.retain(|p| *p != peer);
        }
    }

    /// How long requests may wait in a peer's queue without the peer starting or
    /// finishing anything for us: a whole piece's timeout.
    fn patience(&self) -> Duration {
        self.config.request_timeout(self.metainfo.piece_length())
    }

    fn pipeline(&self, kind: PeerKind) -> usize {
        match kind {
            PeerKind::Agent => self.config.pipeline_to_agents,
            PeerKind::Origin => self.config.pipeline_to_origins,
        }
    }

    fn missing(&self) -> u32 {
        self.have.len() - self.have.count_ones()
    }

    /// Few enough pieces are missing that outstanding ones are asked of a second peer.
    fn in_endgame(&self) -> bool {
        self.missing() <= self.config.endgame_pieces
    }

    fn schedule_requests(&mut self, now: Instant) {
        if self.is_complete() {
            return;
        }
        self.pool_epoch += 1;
        // Visit peers from a random starting point so no peer is always asked first.
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.clear();
        ids.extend(self.peers.keys().copied());
        if !ids.is_empty() {
            let start = self.rng.random_range(0..ids.len());
            for k in 0..ids.len() {
                self.schedule_peer(now, ids[(start + k) % ids.len()]);
            }
        }
        self.scratch_ids = ids;
    }

    /// Fills `id`'s request pipeline.
    fn schedule_peer(&mut self, now: Instant, id: PeerId) {
        if self.is_complete() {
            return;
        }
        let endgame = self.in_endgame();
        while let Some(peer) = self.peers.get(&id) {
            if peer.bitfield.is_none() || peer.requested.len() >= self.pipeline(peer.kind) {
                break;
            }
            let Some(index) = self.pick_piece(id, endgame) else {
                let epoch = self.pool_epoch;
                if let Some(p) = self.peers.get_mut(&id) {
                    p.scanned_dry = Some(epoch);
                }
                break;
            };
            self.request(now, id, index);
        }
    }

    /// `id` announced `index`. A peer scanned dry since the pool last changed has only
    /// `index` to offer: checking it alone spares a rescan of everything the peer has on
    /// every `Have` (that rescan was the simulator's hottest spot at 10,000 hosts).
    fn schedule_after_have(&mut self, now: Instant, id: PeerId, index: PieceIndex) {
        let Some(p) = self.peers.get(&id) else {
            return;
        };
        if p.scanned_dry != Some(self.pool_epoch) {
            self.schedule_peer(now, id);
            return;
        }
        if self.is_complete() || self.have.get(index) || p.requested.len() >= self.pipeline(p.kind)
        {
            return;
        }
        let endgame = self.in_endgame();
        if self.rank(p, index, endgame).is_some() {
            self.request(now, id, index);
        }
    }

    fn request(&mut self, now: Instant, id: PeerId, index: PieceIndex) {
        let patience = now + self.patience();
        if let Some(p) = self.peers.get_mut(&id) {
            p.requested.insert(index, patience);
        }
        self.note_deadline(patience);
        self.inflight[index.0 as usize].push(id);
        self.transmits.push_back(Transmit::Message {
            to: id,
            msg: PeerMessage::Request(index),
        });
    }

    /// Whether `p` may be asked for `index` (which it has and we lack), and its place in
    /// rarest-first order (lower first): not if enough peers fetch it already (one, or two
    /// in the endgame), nor if `p` fetches it or refused it, nor if `p` is an origin
    /// spared because an agent peer has it.
    #[inline]
    fn rank(&self, p: &Peer, index: PieceIndex, endgame: bool) -> Option<u32> {
        // Cheapest tests first: this runs for every candidate piece of every scan.
        let i = index.0 as usize;
        let fetchers = self.inflight[i].len();
        let allowed = if endgame { fetchers < 2 } else { fetchers == 0 };
        if !allowed {
            return None;
        }
        // Origins are asked only for what no connected agent can give (outside the
        // endgame), so they send about one copy of the blob and agents carry the rest.
        let spare = p.kind == PeerKind::Origin && self.config.spare_origins && !endgame;
        if spare && self.agent_availability[i] > 0 {
            return None;
        }
        // Only a piece someone fetches can be one this peer fetches.
        if fetchers > 0 && p.requested.contains_key(&index) {
            return None;
        }
        if !endgame && p.rejected.contains(&index) {
            return None;
        }
        // In the endgame, pieces nobody fetches come before duplicates.
        Some(self.availability[i] + if fetchers > 0 { 1 << 24 } else { 0 })
    }

    /// Rarest piece `peer` has that we lack and nobody is fetching (in the endgame: that
    /// this peer is not fetching and at most one other is); random among equals.
    fn pick_piece(&mut self, peer: PeerId, endgame: bool) -> Option<PieceIndex> {
        let p = self.peers.get(&peer)?;
        let theirs = p.bitfield.as_ref()?;
        let mut best: Option<(u32, PieceIndex)> = None;
        let mut ties = 0u32;
        // Only what they have and we lack, a byte of the bitfields at a time.
        for index in self.have.missing_in(theirs) {
            let Some(rank) = self.rank(p, index, endgame) else {
                continue;
            };
            match best {
                Some((r, _)) if rank > r => {}
                Some((r, _)) if rank == r => {
                    ties += 1;
                    if self.rng.random_range(0..ties) == 0 {
                        best = Some((rank, index));
                    }
                }
                _ => {
                    best = Some((rank, index));
                    ties = 1;
                }
            }
        }
        best.map(|(_, i)| i)
    }

    fn on_request(&mut self, now: Instant, from: PeerId, index: PieceIndex) {
        let limit = self.config.max_queued_requests_per_peer;
        let have = self.have.get(index);
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        if !have || peer.queued.len() >= limit {
            self.transmits.push_back(Transmit::Message {
                to: from,
                msg: PeerMessage::Reject(index),
            });
            return;
        }
        if !peer.queued.contains(&index) {
            peer.queued.push_back(index);
        }
        self.serve(now);
    }

    /// Starts uploads while slots are free, one request per peer per round.
    fn serve(&mut self, _now: Instant) {
        while self.uploads_active < self.config.upload_slots {
            let Some((id, pos)) = self.next_upload() else {
                break;
            };
            let Some(peer) = self.peers.get_mut(&id) else {
                break;
            };
            let Some(index) = peer.queued.remove(pos) else {
                break;
            };
            peer.uploading += 1;
            let sent = &mut self.sent[index.0 as usize];
            *sent = sent.saturating_add(1);
            self.uploads_active += 1;
            self.serve_cursor = Some(id);
            self.transmits
                .push_back(Transmit::SendPiece { to: id, index });
        }
    }

    /// The next request to serve: peers in turn after the cursor, each one's oldest
    /// request; with `new_pieces_first`, requests for pieces never sent come first. That
    /// lets an origin's uplink, when it bounds the whole swarm, carry each piece about
    /// once: while it sends new pieces, requesters of pieces it already sent hear of those
    /// copies from agents and cancel (see `reroute_from_origins`).
    fn next_upload(&self) -> Option<(PeerId, usize)> {
        let fresh = self.config.new_pieces_first;
        fresh
            .then(|| self.first_queued(|i| self.sent[i.0 as usize] == 0))
            .flatten()
            .or_else(|| self.first_queued(|_| true))
    }

    /// The first peer in turn after the serve cursor with a queued request that `ok`
    /// accepts, and that request's position in its queue.
    fn first_queued(&self, ok: impl Fn(&PieceIndex) -> bool) -> Option<(PeerId, usize)> {
        let cursor = self.serve_cursor;
        let after = self
            .peers
            .iter()
            .filter(|(id, _)| cursor.is_none_or(|c| **id > c));
        let before = self
            .peers
            .iter()
            .filter(|(id, _)| cursor.is_some_and(|c| **id <= c));
        after
            .chain(before)
            .find_map(|(id, p)| p.queued.iter().position(&ok).map(|pos| (*id, pos)))
    }

    fn broadcast_have(&mut self, index: PieceIndex) {
        for (id, p) in &self.peers {
            let knows = p.bitfield.as_ref().is_some_and(|b| b.get(index));
            if p.bitfield.is_some() && !knows {
                self.transmits.push_back(Transmit::Message {
                    to: *id,
                    msg: PeerMessage::Have(index),
                });
            }
        }
    }

    fn on_complete(&mut self, now: Instant) {
        if !self.committed {
            self.committed = true;
            self.storage_ops.push_back(StorageOp::Commit);
        }
        self.events.push_back(SwarmEvent::Completed);
        self.last_upload = now;
        self.announce(now);
        // Outstanding endgame requests are moot.
        let outstanding: Vec<(PeerId, PieceIndex)> = self
            .peers
            .iter()
            .flat_map(|(id, p)| p.requested.keys().map(move |i| (*id, *i)))
            .collect();
        for (id, index) in outstanding {
            self.forget_request(id, index);
            self.transmits.push_back(Transmit::Message {
                to: id,
                msg: PeerMessage::Cancel(index),
            });
        }
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            let complete = self.peers[&id]
                .bitfield
                .as_ref()
                .is_some_and(Bitfield::is_complete);
            if complete {
                self.disconnect(id);
            } else {
                self.transmits.push_back(Transmit::Message {
                    to: id,
                    msg: PeerMessage::Complete,
                });
            }
        }
        self.candidates.clear();
    }
}

#[cfg(test)]
mod tests;
