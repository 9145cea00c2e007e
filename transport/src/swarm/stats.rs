//! Bytes moved, by peer and by kind: what a pull report is made of.

use std::collections::BTreeMap;

use super::PeerKind;
use crate::wire::PeerId;

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
    pub(super) fn peer(&mut self, id: PeerId, kind: PeerKind) -> &mut PeerStats {
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
