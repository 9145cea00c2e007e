//! Serving: peers' requests wait in per-peer queues and go out through `upload_slots`
//! concurrent uploads, round-robin across peers (new pieces first for an origin).

use std::time::Instant;

use kraken_storage::PieceIndex;

use super::{Swarm, Transmit};
use crate::wire::{PeerId, PeerMessage};

impl Swarm {
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

    pub(super) fn on_request(&mut self, now: Instant, from: PeerId, index: PieceIndex) {
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
    pub(super) fn serve(&mut self, now: Instant) {
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
            // Twice the receiver's limit: that one starts at the header, this one before
            // the read and the stream's opening, and the receiver is the one to judge a
            // slow transfer.
            let deadline = now + 2 * self.piece_timeout(index);
            self.transmits.push_back(Transmit::SendPiece {
                to: id,
                index,
                deadline,
            });
        }
    }

    /// The next request to serve: peers in turn after the cursor, each one's oldest
    /// request; with `new_pieces_first`, requests for pieces never sent come first. That
    /// lets an origin's uplink, when it bounds the whole swarm, carry each piece about
    /// once: while it sends new pieces, requesters of pieces it already sent hear of those
    /// copies from agents and cancel (see `reroute_from_origins`).
    pub(super) fn next_upload(&self) -> Option<(PeerId, usize)> {
        let fresh = self.config.new_pieces_first;
        fresh
            .then(|| self.first_queued(|i| self.sent[i.0 as usize] == 0))
            .flatten()
            .or_else(|| self.first_queued(|_| true))
    }

    /// The first peer in turn after the serve cursor with a queued request that `ok`
    /// accepts, and that request's position in its queue.
    pub(super) fn first_queued(&self, ok: impl Fn(&PieceIndex) -> bool) -> Option<(PeerId, usize)> {
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
}
