//! Time: request, idle and blacklist expiry, announces, the end of seeding, and the one
//! deadline a driver must wake up for (`poll_timeout`) without walking every peer.

use std::time::Instant;

use kraken_storage::PieceIndex;

use super::{BlacklistReason, Swarm, SwarmEvent, Transmit};
use crate::wire::{PeerId, PeerMessage};

impl Swarm {
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
    pub(super) fn exact_peer_deadline(&self) -> Option<Instant> {
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
    pub(super) fn note_deadline(&mut self, t: Instant) {
        self.peer_deadline = Some(self.peer_deadline.map_or(t, |d| d.min(t)));
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
}
