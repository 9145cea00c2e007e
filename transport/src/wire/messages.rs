//! The messages of `kraken/1`.
//!
//! Streams on a connection:
//! - **bidirectional, RPC**: the opener sends [`StreamHeader::Rpc`], then one request frame
//!   (its type belongs to the caller, e.g. the node's announce or metainfo request),
//!   optionally a raw bulk body whose length the request names; the acceptor answers with
//!   one response frame and optionally a bulk body.
//! - **bidirectional, session**: the opener sends [`StreamHeader::Session`] naming a blob;
//!   both sides then exchange [`PeerMessage`] frames for that blob, starting with a
//!   [`PeerMessage::Handshake`] carrying the sender's bitfield.
//! - **unidirectional, piece**: a [`PieceHeader`] frame, then exactly the piece's bytes.
//!   The receiver knows the length from the metainfo and checks the header against it.

use std::fmt;

use kraken_storage::{Bitfield, Digest, MetainfoId, PieceIndex};
use serde::{Deserialize, Serialize};

use super::frame::{MessageKind, WireError};

/// The protocol version both ends must speak (the ALPN names the major version).
pub const PROTOCOL_VERSION: u16 = 1;
/// QUIC ALPN of this protocol.
pub const ALPN: &[u8] = b"kraken/1";

/// A node's identity: the BLAKE3 hash of its certificate's public key (or, in tests and
/// simulations, any 32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 32]);

impl Ord for PeerId {
    /// Byte order, as a derived `Ord` would give, but in word compares the compiler
    /// inlines: the derived one calls `memcmp`, and maps keyed by peer are the swarm's
    /// (and the simulator's) hottest lookups.
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let word = |id: &PeerId, k: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&id.0[8 * k..8 * k + 8]);
            u64::from_be_bytes(w)
        };
        (0..4)
            .map(|k| word(self, k).cmp(&word(other, k)))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

impl PartialOrd for PeerId {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PeerId {
    /// A peer id from a small number (tests, simulations).
    pub fn from_u64(n: u64) -> Self {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&n.to_be_bytes());
        PeerId(id)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

/// First frame on every bidirectional stream: what the stream is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamHeader {
    /// A request/response exchange.
    Rpc {
        /// Protocol version of the opener.
        version: u16,
    },
    /// A piece-exchange session for one blob.
    Session {
        /// Protocol version of the opener.
        version: u16,
        /// The blob.
        digest: Digest,
    },
}

impl StreamHeader {
    /// Rejects a header from a peer speaking another version.
    pub fn check_version(&self) -> Result<(), WireError> {
        let got = match self {
            StreamHeader::Rpc { version } | StreamHeader::Session { version, .. } => *version,
        };
        if got != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion {
                got,
                expected: PROTOCOL_VERSION,
            });
        }
        Ok(())
    }
}

/// A message of a piece-exchange session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// First message each way: which metainfo the sender holds and what it has.
    Handshake {
        /// Both sides must hold the same metainfo.
        metainfo_id: MetainfoId,
        /// Pieces the sender has.
        bitfield: Bitfield,
    },
    /// The sender now has this piece.
    Have(PieceIndex),
    /// Please send this piece.
    Request(PieceIndex),
    /// Never mind that request.
    Cancel(PieceIndex),
    /// The request will not be served (busy, or the piece is not there).
    Reject(PieceIndex),
    /// The sender has every piece.
    Complete,
}

impl MessageKind for StreamHeader {
    const KINDS: u32 = 2;
}

impl MessageKind for PeerMessage {
    const KINDS: u32 = 6;
}

/// First frame of a piece stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceHeader {
    /// The blob.
    pub digest: Digest,
    /// Which piece follows.
    pub index: PieceIndex,
    /// Its length in bytes.
    pub len: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FrameDecoder, decode_message, decode_payload, encode_frame};
    use proptest::prelude::*;

    fn digest() -> Digest {
        Digest::sha256_of(b"blob")
    }

    fn messages() -> Vec<PeerMessage> {
        let mut bitfield = Bitfield::new(20);
        bitfield.set(PieceIndex(3));
        vec![
            PeerMessage::Handshake {
                metainfo_id: MetainfoId([7; 32]),
                bitfield,
            },
            PeerMessage::Have(PieceIndex(1)),
            PeerMessage::Request(PieceIndex(2)),
            PeerMessage::Cancel(PieceIndex(3)),
            PeerMessage::Reject(PieceIndex(4)),
            PeerMessage::Complete,
        ]
    }

    #[test]
    fn frames_round_trip_through_the_decoder_in_any_split() {
        let mut bytes = Vec::new();
        for m in messages() {
            bytes.extend(encode_frame(&m).unwrap());
        }
        for split in [1, 2, 3, 7, 100, bytes.len()] {
            let mut dec = FrameDecoder::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(split) {
                dec.push(chunk);
                while let Some(m) = dec.next_message::<PeerMessage>().unwrap() {
                    got.push(m);
                }
            }
            dec.finish().unwrap();
            assert_eq!(got, messages());
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&100u32.to_be_bytes());
        assert_eq!(
            dec.next_payload(),
            Err(WireError::FrameTooLarge { len: 100, max: 16 })
        );

        let mut dec = FrameDecoder::default();
        let frame = encode_frame(&PeerMessage::Complete).unwrap();
        dec.push(&frame[..frame.len() - 1]);
        assert_eq!(dec.next_payload(), Ok(None));
        assert!(matches!(dec.finish(), Err(WireError::Truncated { .. })));

        // Variant 100 does not exist.
        assert_eq!(
            decode_message::<PeerMessage>(&[6]),
            Err(WireError::UnknownKind)
        );
        assert!(matches!(
            decode_payload::<PeerMessage>(&[100]),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(
            decode_message::<PeerMessage>(&[5, 0]),
            Err(WireError::TrailingBytes(1))
        );
        let old = StreamHeader::Rpc { version: 0 };
        assert!(matches!(
            old.check_version(),
            Err(WireError::UnsupportedVersion { got: 0, .. })
        ));
        let hdr = StreamHeader::Session {
            version: PROTOCOL_VERSION,
            digest: digest(),
        };
        let frame = encode_frame(&hdr).unwrap();
        assert_eq!(decode_message::<StreamHeader>(&frame[4..]).unwrap(), hdr);
    }

    proptest! {
        #[test]
        fn piece_headers_round_trip(index in any::<u32>(), len in any::<u32>()) {
            let h = PieceHeader { digest: digest(), index: PieceIndex(index), len };
            let frame = encode_frame(&h).unwrap();
            prop_assert_eq!(decode_payload::<PieceHeader>(&frame[4..]).unwrap(), h);
        }

        #[test]
        fn peer_ids_order_as_their_bytes(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), k in 0usize..32) {
            prop_assert_eq!(PeerId(a).cmp(&PeerId(b)), a.cmp(&b));
            // Ids equal up to byte k, to reach every word of the comparison.
            let mut c = a;
            c[k..].copy_from_slice(&b[k..]);
            prop_assert_eq!(PeerId(a).cmp(&PeerId(c)), a.cmp(&c));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_message::<PeerMessage>(&bytes);
            let _ = decode_message::<StreamHeader>(&bytes);
            let _ = decode_payload::<PieceHeader>(&bytes);
            let mut dec = FrameDecoder::default();
            dec.push(&bytes);
            while let Ok(Some(p)) = dec.next_payload() {
                let _ = decode_payload::<PeerMessage>(&p);
            }
        }
    }
}
