//! Sessions: whom to dial from the handout, whom to accept, and what a peer's arrival
//! and departure change (availability, requests in flight, upload slots).

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use kraken_storage::{Bitfield, PieceIndex};

use super::{
    BlacklistReason, Fault, OpenSession, Peer, PeerEvent, PeerKind, Requests, SessionChoice, Swarm,
    Transmit,
};
use crate::wire::{PeerId, PeerMessage};

impl Swarm {
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
            PeerEvent::Congested { id } => {
                // Drop it rather than buffer for it without bound; the close goes first
                // so the driver writes nothing more to it.
                self.transmits.push_front(Transmit::Disconnect { id });
                self.on_disconnected(now, id);
            }
            PeerEvent::Disconnected { id } => self.on_disconnected(now, id),
        }
    }

    /// A second session with `id` opened while the driver holds `open` (both sides
    /// dialled at once, or the peer reconnected): which one to keep.
    ///
    /// Both ends of a crossing must keep the same session, so the rule depends only on
    /// who opened each: the session opened by the lower `PeerId` wins, and between two of
    /// one opener the newer (the older one's connection is being replaced). A session
    /// whose connection is gone always gives way. When the new one wins, the peer's state
    /// is forgotten without counting against it, and the driver reports
    /// [`PeerEvent::Connected`] for the new session.
    pub fn handle_second_session(
        &mut self,
        id: PeerId,
        open: OpenSession,
        outbound: bool,
    ) -> SessionChoice {
        let opener = |outbound: bool| if outbound { self.me } else { id };
        if open.alive && opener(open.outbound) < opener(outbound) {
            return SessionChoice::KeepOpen;
        }
        self.connecting.remove(&id);
        self.drop_peer(id);
        SessionChoice::TakeNew
    }

    /// The session with `id` ended (or the driver gave it up).
    fn on_disconnected(&mut self, now: Instant, id: PeerId) {
        self.connecting.remove(&id);
        // Ended before its handshake: refused (at its connection limit) or broken (a dial
        // that fails is `ConnectFailed`). Back off rather than redialling it at once, but
        // only briefly: it was reachable.
        let unanswered = self.peers.get(&id).is_some_and(|p| p.bitfield.is_none());
        if unanswered {
            self.ban(now, id, BlacklistReason::Busy);
        }
        self.drop_peer(id);
        self.maybe_connect(now);
        self.schedule_requests(now);
        self.serve(now);
    }

    pub(super) fn on_connected(
        &mut self,
        now: Instant,
        id: PeerId,
        kind: PeerKind,
        outbound: bool,
    ) {
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
            // One session per (blob, peer): a driver that merges crossing dials into one
            // session (the simulator) reports it `Connected` on both ends.
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

    pub(super) fn maybe_connect(&mut self, now: Instant) {
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
    pub(super) fn connected(&self, kind: PeerKind) -> usize {
        self.peers.values().filter(|p| p.kind == kind).count()
    }

    /// Most connected peers of `kind`.
    pub(super) fn connection_limit(&self, kind: PeerKind) -> usize {
        match kind {
            PeerKind::Agent => self.config.max_connections,
            PeerKind::Origin => self.config.max_origin_connections,
        }
    }

    /// Records that `peer` has `index`; returns the peer's kind if that is news.
    pub(super) fn peer_learns(&mut self, peer: PeerId, index: PieceIndex) -> Option<PeerKind> {
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

    pub(super) fn add_availability(&mut self, bitfield: &Bitfield, kind: PeerKind) {
        for i in bitfield.ones() {
            self.availability[i.0 as usize] += 1;
            if kind == PeerKind::Agent {
                self.agent_availability[i.0 as usize] += 1;
            }
        }
    }

    pub(super) fn drop_peer(&mut self, id: PeerId) {
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

    pub(super) fn disconnect(&mut self, id: PeerId) {
        if self.peers.contains_key(&id) {
            self.drop_peer(id);
            self.transmits.push_back(Transmit::Disconnect { id });
        }
    }
}
