//! Streaming windows: the pieces that readers of the blob (a registry client streaming it
//! while it downloads) need next are asked for before the rarest.
//!
//! Rarest first serves the swarm: every piece spreads at once. A reader streams in order,
//! and rarest first hands it pieces in random order (for a node pulling from origins alone
//! every piece is equally rare), so its contiguous prefix grows slowly and then all at
//! once at the end. The driver says where its readers are ([`Swarm::set_streaming`]): one
//! window of pieces per reader, from the piece it waits for. While a window has a missing
//! piece nobody fetches, a peer that has it is asked for the window's first such piece
//! before anything else; requests still waiting in a peer's queue for pieces outside every
//! window give way to it. The rest of the pipeline, and every piece once the windows are
//! covered, goes rarest first as before, so the download as a whole runs at full speed
//! whatever the reader does. With no window, nothing changes.

use std::ops::Range;
use std::time::Instant;

use kraken_storage::PieceIndex;

use super::{Peer, Swarm, Transmit};
use crate::wire::{PeerId, PeerMessage};

impl Swarm {
    /// Where the blob's readers are: each range holds the pieces one reader streams next,
    /// from the piece it waits for (empty ranges and pieces past the end are ignored). They
    /// replace the previous windows; none means nobody streams. Requests waiting in a
    /// peer's queue (not started) for pieces outside every window give way to window pieces
    /// the peer has and nobody fetches: they are cancelled and the window's pieces asked
    /// for in their place.
    pub fn set_streaming(
        &mut self,
        now: Instant,
        windows: impl IntoIterator<Item = Range<PieceIndex>>,
    ) {
        let count = self.metainfo.piece_count();
        let mut windows: Vec<Range<u32>> = windows
            .into_iter()
            .map(|w| w.start.0..w.end.0.min(count))
            .filter(|w| !w.is_empty())
            .collect();
        windows.sort_by_key(|w| (w.start, w.end));
        windows.dedup();
        self.streaming = windows;
        if !self.streaming.is_empty() && !self.is_complete() {
            self.make_room_for_windows(now);
        }
    }

    /// The first piece of a streaming window that `p` has, we lack and nobody fetches
    /// (nor refused, nor spared from origins: see `rank`), windows in order.
    pub(super) fn pick_streamed(&self, p: &Peer, endgame: bool) -> Option<PieceIndex> {
        let theirs = p.bitfield.as_ref()?;
        self.streaming.iter().find_map(|w| {
            w.clone().map(PieceIndex).find(|&i| {
                !self.have.get(i)
                    && theirs.get(i)
                    && self.inflight[i.0 as usize].is_empty()
                    && self.rank(p, i, endgame).is_some()
            })
        })
    }

    fn in_window(&self, index: PieceIndex) -> bool {
        self.streaming.iter().any(|w| w.contains(&index.0))
    }

    /// Trades requests waiting in peers' queues for pieces outside every window for window
    /// pieces those peers have and nobody fetches, one for one.
    fn make_room_for_windows(&mut self, now: Instant) {
        let endgame = self.in_endgame();
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            while let Some(p) = self.peers.get(&id) {
                let Some(want) = self.pick_streamed(p, endgame) else {
                    break;
                };
                let give_up = p
                    .requested
                    .keys()
                    .copied()
                    .filter(|i| p.requested.is_waiting(i) && !self.in_window(*i))
                    .max();
                if p.requested.len() >= self.pipeline(p.kind) {
                    let Some(give_up) = give_up else { break };
                    self.pool_epoch += 1;
                    self.forget_request(id, give_up);
                    self.transmits.push_back(Transmit::Message {
                        to: id,
                        msg: PeerMessage::Cancel(give_up),
                    });
                }
                self.request(now, id, want);
            }
        }
    }
}
