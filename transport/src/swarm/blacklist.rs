//! The blacklist: who is shunned, until when, and why. A fault (a bad piece, a protocol
//! violation) is banned longest and is not forgiven early; an unreachable, stalled or busy
//! peer is banned briefly and taken back if it dials us.

use std::time::Instant;

use super::{BlacklistReason, Swarm, SwarmEvent};
use crate::wire::PeerId;

/// Whether a blacklist entry is for a fault (bad piece, protocol violation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fault(pub(super) bool);

impl Swarm {
    /// True if `peer` is blacklisted at `now`.
    pub fn is_blacklisted(&self, peer: &PeerId, now: Instant) -> bool {
        self.blacklist
            .get(peer)
            .is_some_and(|(until, _)| *until > now)
    }

    pub(super) fn ban(&mut self, now: Instant, id: PeerId, reason: BlacklistReason) {
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

    pub(super) fn violation(&mut self, now: Instant, id: PeerId, what: &'static str) {
        self.events
            .push_back(SwarmEvent::Violation { peer: id, what });
        self.ban(now, id, BlacklistReason::ProtocolViolation);
        self.disconnect(id);
    }
}
