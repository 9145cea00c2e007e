//! The swarm's vocabulary with its driver: peers as the tracker hands them out, the news
//! the driver reports ([`PeerEvent`], [`PieceOutcome`]), and what the swarm asks of it
//! ([`Transmit`], [`StorageOp`]) or tells it ([`SwarmEvent`]).

use std::net::SocketAddr;
use std::time::Instant;

use kraken_storage::PieceIndex;

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

impl PeerKind {
    /// `agent` or `origin`, as reports and tools print it.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Agent => "agent",
            PeerKind::Origin => "origin",
        }
    }
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
    /// The peer's session cannot take another message: the driver's queue for it is full
    /// (it does not read what we send). The swarm drops the peer: a
    /// [`Transmit::Disconnect`] for it comes out before anything else queued, so nothing
    /// more is written to it, and the rest is as for `Disconnected`.
    Congested {
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
    /// [`Swarm::handle_piece_sent`](super::Swarm::handle_piece_sent) when done (or failed).
    SendPiece {
        /// The peer.
        to: PeerId,
        /// The piece.
        index: PieceIndex,
        /// Give the upload up (report it failed) if it is not sent by then, so a stalled
        /// peer does not hold an upload slot, and a piece buffer, forever.
        deadline: Instant,
    },
}

/// A session the driver holds with a peer, as it stands when a second one with the same
/// peer opens (see [`Swarm::handle_second_session`](super::Swarm::handle_second_session)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSession {
    /// True if we opened it.
    pub outbound: bool,
    /// False once its connection is gone (the peer's new connection superseded it, or
    /// the link died before the session's end was noticed).
    pub alive: bool,
}

/// Which of two sessions with one peer the driver keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChoice {
    /// Keep the open session and refuse the new one.
    KeepOpen,
    /// Close the open session and take the new one. The swarm has forgotten the peer's
    /// state (without counting it against the peer); report
    /// [`PeerEvent::Connected`] for the new session next.
    TakeNew,
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
    /// Time to announce to the tracker; answer with
    /// [`Swarm::handle_handout`](super::Swarm::handle_handout).
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
