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
//!   never a blacklisted peer. One session per (blob, peer): when two peers dial each
//!   other at once, both keep the session opened by the lower `PeerId`
//!   (`handle_second_session`). A peer that does not read what we send (the driver's
//!   queue for it is full) is dropped. A complete node does not dial.
//! - **Requests**: rarest piece first among those the peer has and nobody is fetching,
//!   ties broken at random (seeded), up to a pipeline per peer (3 to agents, 5 to origins);
//!   while a reader streams the blob, the pieces just ahead of it come first (`streaming`).
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
//!   concurrent uploads, round-robin across peers; others are rejected. An upload not
//!   sent within twice the piece's request timeout is given up.
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
//!
//! Modules: `events` (the inputs and outputs above), `peers` (sessions: dialling,
//! accepting, dropping), `schedule` (requests: what to ask of whom), `streaming` (the
//! windows of readers streaming the blob, asked for first), `requests` (one
//! peer's outstanding requests and their deadlines), `serve` (upload slots), `blacklist`,
//! `timers` (expiry and `poll_timeout`), `stats`, `config`, and [`handout`] (the
//! tracker's side: which peers to hand out).

mod blacklist;
mod config;
mod events;
pub mod handout;
mod peers;
mod requests;
mod schedule;
mod serve;
mod stats;
mod streaming;
mod timers;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kraken_storage::{Bitfield, Metainfo, MetainfoId, PieceIndex};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use blacklist::Fault;
pub use config::{SwarmConfig, SwarmConfigError};
pub use events::{
    BlacklistReason, OpenSession, PeerEvent, PeerInfo, PeerKind, PieceOutcome, SessionChoice,
    StorageOp, SwarmEvent, Transmit,
};
use requests::Requests;
pub use stats::{PeerStats, SwarmStats};

use crate::wire::{PeerId, PeerMessage};

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
    /// The pieces readers stream next, one window per reader, sorted (see `streaming`);
    /// empty when nobody streams.
    streaming: Vec<Range<u32>>,
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
            streaming: Vec::new(),
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

    fn announce(&mut self, now: Instant) {
        self.next_announce = now + self.announce_interval;
        self.events.push_back(SwarmEvent::Announce {
            complete: self.is_complete(),
            have_bytes: self.have_bytes,
        });
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

    fn missing(&self) -> u32 {
        self.have.len() - self.have.count_ones()
    }

    /// Few enough pieces are missing that outstanding ones are asked of a second peer.
    fn in_endgame(&self) -> bool {
        self.missing() <= self.config.endgame_pieces
    }
}

#[cfg(test)]
mod tests;
