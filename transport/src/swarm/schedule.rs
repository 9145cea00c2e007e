//! Requests: which piece to ask of whom (readers' streaming windows, then rarest first,
//! origins spared, the endgame's second copies), how many at once (the pipeline), and what
//! a delivery or a refusal changes. When a request gives up is `requests`' business.

use std::time::{Duration, Instant};

use kraken_storage::PieceIndex;
use rand::Rng;

use super::{BlacklistReason, Peer, PeerKind, PieceOutcome, Swarm, SwarmEvent, Transmit};
use crate::wire::{PeerId, PeerMessage};

impl Swarm {
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

    /// An agent peer now has `index`: requests for it still waiting in an origin's queue
    /// are cancelled, so the origin's uplink carries pieces no agent has (`spare_origins`).
    pub(super) fn reroute_from_origins(&mut self, index: PieceIndex) {
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

    /// Removes our request for `index` from `peer`; true if there was one.
    pub(super) fn forget_request(&mut self, peer: PeerId, index: PieceIndex) -> bool {
        let had = self
            .peers
            .get_mut(&peer)
            .is_some_and(|p| p.requested.remove(&index));
        if had {
            self.remove_inflight(index, peer);
        }
        had
    }

    pub(super) fn remove_inflight(&mut self, index: PieceIndex, peer: PeerId) {
        if let Some(list) = self.inflight.get_mut(index.0 as usize) {
            list.retain(|p| *p != peer);
        }
    }

    /// How long requests may wait in a peer's queue without the peer starting or
    /// finishing anything for us: a whole piece's timeout.
    pub(super) fn patience(&self) -> Duration {
        self.config.request_timeout(self.metainfo.piece_length())
    }

    pub(super) fn pipeline(&self, kind: PeerKind) -> usize {
        match kind {
            PeerKind::Agent => self.config.pipeline_to_agents,
            PeerKind::Origin => self.config.pipeline_to_origins,
        }
    }

    pub(super) fn schedule_requests(&mut self, now: Instant) {
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
    pub(super) fn schedule_peer(&mut self, now: Instant, id: PeerId) {
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
    pub(super) fn schedule_after_have(&mut self, now: Instant, id: PeerId, index: PieceIndex) {
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

    pub(super) fn request(&mut self, now: Instant, id: PeerId, index: PieceIndex) {
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
    pub(super) fn rank(&self, p: &Peer, index: PieceIndex, endgame: bool) -> Option<u32> {
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

    /// The first piece of a reader's streaming window that `peer` has, we lack and nobody
    /// fetches; else the rarest piece `peer` has that we lack and nobody is fetching (in
    /// the endgame: that this peer is not fetching and at most one other is), random among
    /// equals.
    pub(super) fn pick_piece(&mut self, peer: PeerId, endgame: bool) -> Option<PieceIndex> {
        let p = self.peers.get(&peer)?;
        if !self.streaming.is_empty()
            && let Some(index) = self.pick_streamed(p, endgame)
        {
            return Some(index);
        }
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
}
