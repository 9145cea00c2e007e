//! Cards: the signed statement "DHT peer X is kraken peer Y, reachable at Z, an agent or
//! origin", which binds a libp2p identity to a cluster certificate. Pure: encoding,
//! decoding of untrusted bytes (never panics, size-capped) and verification.
//!
//! Wire form (postcard): `{ version: u8, body: bytes, chain: [bytes], signature: bytes }`;
//! `body` is the postcard of [`Card`], and the signature (by the node's cluster
//! certificate key, [`MemberCertAuth`]) covers `CARD_DOMAIN ‖ body`.

use std::net::SocketAddr;

use kraken_membership::MemberAuth;
use kraken_transport::quic::MemberCertAuth;
use kraken_transport::swarm::PeerKind;
use kraken_transport::wire::PeerId as KrakenPeerId;
use libp2p::PeerId as DhtPeerId;
use serde::{Deserialize, Serialize};

/// The only card version.
pub const CARD_VERSION: u8 = 1;
/// Cards larger than this are refused unread (a chain of a few certificates fits).
pub const MAX_CARD_BYTES: usize = 8 * 1024;
/// Certificates a card's chain may carry at most (end entity and intermediates).
pub const MAX_CHAIN_LEN: usize = 4;
/// How far in the future a card's issue time may be (clock skew between nodes).
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// Separates card signatures from every other use of the cluster key.
const CARD_DOMAIN: &[u8] = b"kraken-dht-card-v1\0";
/// Prefix of the Kademlia key of a node's card.
const CARD_KEY_PREFIX: &[u8] = b"kraken-card/";

/// What a card says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// The libp2p peer that provides.
    pub dht_peer: DhtPeerId,
    /// Its kraken identity (from its cluster certificate).
    pub kraken_peer: KrakenPeerId,
    /// Its kraken QUIC address.
    pub addr: SocketAddr,
    /// Agent or origin.
    pub kind: PeerKind,
    /// When it was signed, ms since the Unix epoch.
    pub issued_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct WireBody {
    dht_peer: Vec<u8>,
    kraken_peer: KrakenPeerId,
    addr: SocketAddr,
    kind: PeerKind,
    issued_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct WireCard {
    version: u8,
    body: Vec<u8>,
    chain: Vec<Vec<u8>>,
    signature: Vec<u8>,
}

/// Why a card is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    /// Larger than [`MAX_CARD_BYTES`].
    #[error("card of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The bytes are not a card.
    #[error("malformed card: {0}")]
    Malformed(String),
    /// A version this node does not speak.
    #[error("card version {0} is not supported")]
    Version(u8),
    /// The chain does not verify against the cluster CA, or the signature does not
    /// verify with its key.
    #[error("card signature or certificate rejected: {0}")]
    Unverified(String),
    /// The kraken peer id is not the signing certificate's.
    #[error("card claims kraken peer {claimed:?} but is signed by {signer:?}")]
    WrongKrakenPeer {
        /// What the card says.
        claimed: KrakenPeerId,
        /// Whose certificate signed it.
        signer: KrakenPeerId,
    },
    /// The card is another DHT peer's (a replay under someone else's provider record).
    #[error("card of DHT peer {card} presented for {expected}")]
    WrongDhtPeer {
        /// The card's DHT peer.
        card: String,
        /// The DHT peer it was presented for.
        expected: String,
    },
    /// Issued too long ago (or too far in the future).
    #[error("card issued at {issued_ms} ms is out of date at {now_ms} ms")]
    OutOfDate {
        /// The card's issue time.
        issued_ms: u64,
        /// Now.
        now_ms: u64,
    },
    /// Signing failed (this node's key).
    #[error("signing the card failed: {0}")]
    Sign(String),
}

/// The Kademlia key under which `dht_peer` publishes its card.
pub fn card_key(dht_peer: &DhtPeerId) -> Vec<u8> {
    let mut key = CARD_KEY_PREFIX.to_vec();
    key.extend(dht_peer.to_bytes());
    key
}

/// The DHT peer whose card key `key` is, if it is one.
pub fn card_owner(key: &[u8]) -> Option<DhtPeerId> {
    let rest = key.strip_prefix(CARD_KEY_PREFIX)?;
    DhtPeerId::from_bytes(rest).ok()
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut message = CARD_DOMAIN.to_vec();
    message.extend_from_slice(body);
    message
}

/// Signs `card` with this node's cluster identity and encodes it.
pub fn encode(card: &Card, auth: &MemberCertAuth) -> Result<Vec<u8>, CardError> {
    let body = postcard::to_stdvec(&WireBody {
        dht_peer: card.dht_peer.to_bytes(),
        kraken_peer: card.kraken_peer,
        addr: card.addr,
        kind: card.kind,
        issued_ms: card.issued_ms,
    })
    .map_err(|e| CardError::Sign(e.to_string()))?;
    let signature = auth
        .sign(&signed_message(&body))
        .map_err(|e| CardError::Sign(e.0))?;
    let bytes = postcard::to_stdvec(&WireCard {
        version: CARD_VERSION,
        body,
        chain: auth.certificate_chain(),
        signature,
    })
    .map_err(|e| CardError::Sign(e.to_string()))?;
    if bytes.len() > MAX_CARD_BYTES {
        return Err(CardError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// The issue time of a card this node verified when it stored it, read without verifying
/// it again; `None` if the bytes are not a card.
pub(crate) fn issued_ms_of_stored(bytes: &[u8]) -> Option<u64> {
    let wire: WireCard = postcard::from_bytes(bytes).ok()?;
    let body: WireBody = postcard::from_bytes(&wire.body).ok()?;
    Some(body.issued_ms)
}

/// Decodes untrusted bytes and verifies them as the card of `expected` (the DHT peer whose
/// provider record or card key led here): size, version, chain against the cluster CA,
/// signature, kraken peer id equal to the signer's, DHT peer equal to `expected`, and an
/// issue time no older than `max_age_ms` and not more than [`MAX_CLOCK_SKEW_MS`] ahead.
pub fn decode_and_verify(
    bytes: &[u8],
    expected: &DhtPeerId,
    auth: &MemberCertAuth,
    now_ms: u64,
    max_age_ms: u64,
) -> Result<Card, CardError> {
    if bytes.len() > MAX_CARD_BYTES {
        return Err(CardError::TooLarge(bytes.len()));
    }
    let malformed = |e: &dyn std::fmt::Display| CardError::Malformed(e.to_string());
    let wire: WireCard = postcard::from_bytes(bytes).map_err(|e| malformed(&e))?;
    if wire.version != CARD_VERSION {
        return Err(CardError::Version(wire.version));
    }
    if wire.chain.is_empty() || wire.chain.len() > MAX_CHAIN_LEN {
        return Err(malformed(&format_args!(
            "{} certificates in the chain",
            wire.chain.len()
        )));
    }
    let body: WireBody = postcard::from_bytes(&wire.body).map_err(|e| malformed(&e))?;
    let dht_peer = DhtPeerId::from_bytes(&body.dht_peer).map_err(|e| malformed(&e))?;
    if &dht_peer != expected {
        return Err(CardError::WrongDhtPeer {
            card: dht_peer.to_base58(),
            expected: expected.to_base58(),
        });
    }
    let signer = auth
        .verify_signer(&wire.chain, &signed_message(&wire.body), &wire.signature)
        .map_err(|e| CardError::Unverified(e.to_string()))?;
    if signer != body.kraken_peer {
        return Err(CardError::WrongKrakenPeer {
            claimed: body.kraken_peer,
            signer,
        });
    }
    let too_old = now_ms.saturating_sub(body.issued_ms) > max_age_ms;
    let too_new = body.issued_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS);
    if too_old || too_new {
        return Err(CardError::OutOfDate {
            issued_ms: body.issued_ms,
            now_ms,
        });
    }
    Ok(Card {
        dht_peer,
        kraken_peer: body.kraken_peer,
        addr: body.addr,
        kind: body.kind,
        issued_ms: body.issued_ms,
    })
}

#[cfg(test)]
mod tests {
    use kraken_transport::quic::tls::dev::DevCa;
    use libp2p::identity::Keypair;
    use rand::{Rng, SeedableRng};

    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const AGE: u64 = 3_600_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        ca: DevCa,
        auth: MemberCertAuth,
        card: Card,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        let node = ca.issue_node_cert("agent-1").unwrap();
        let auth = MemberCertAuth::new(&node, &ca.cluster_ca()).unwrap();
        let card = Card {
            dht_peer: Keypair::generate_ed25519().public().to_peer_id(),
            kraken_peer: node.peer_id,
            addr: "127.0.0.1:7000".parse().unwrap(),
            kind: PeerKind::Agent,
            issued_ms: NOW,
        };
        Fixture {
            _dir: dir,
            ca,
            auth,
            card,
        }
    }

    #[test]
    fn a_card_round_trips_and_binds_both_identities() {
        let f = fixture();
        let bytes = encode(&f.card, &f.auth).unwrap();
        let back = decode_and_verify(&bytes, &f.card.dht_peer, &f.auth, NOW, AGE).unwrap();
        assert_eq!(back, f.card);
        assert_eq!(
            card_owner(&card_key(&f.card.dht_peer)),
            Some(f.card.dht_peer)
        );
        assert_eq!(card_owner(b"kraken-card/garbage"), None);
        assert_eq!(card_owner(b"other"), None);

        // Replayed under another DHT peer's provider record.
        let other = Keypair::generate_ed25519().public().to_peer_id();
        assert!(matches!(
            decode_and_verify(&bytes, &other, &f.auth, NOW, AGE),
            Err(CardError::WrongDhtPeer { .. })
        ));
        // Too old, from the future.
        assert!(matches!(
            decode_and_verify(&bytes, &f.card.dht_peer, &f.auth, NOW + AGE + 1, AGE),
            Err(CardError::OutOfDate { .. })
        ));
        assert!(matches!(
            decode_and_verify(
                &bytes,
                &f.card.dht_peer,
                &f.auth,
                NOW - MAX_CLOCK_SKEW_MS - 1,
                AGE
            ),
            Err(CardError::OutOfDate { .. })
        ));
    }

    #[test]
    fn a_card_claiming_another_kraken_peer_or_from_another_ca_is_refused() {
        let f = fixture();
        let victim = f.ca.issue_node_cert("origin-1").unwrap();
        let mut lie = f.card.clone();
        lie.kraken_peer = victim.peer_id;
        let bytes = encode(&lie, &f.auth).unwrap();
        assert!(matches!(
            decode_and_verify(&bytes, &lie.dht_peer, &f.auth, NOW, AGE),
            Err(CardError::WrongKrakenPeer { .. })
        ));

        let foreign_dir = tempfile::tempdir().unwrap();
        let foreign = DevCa::create(foreign_dir.path()).unwrap();
        let intruder = foreign.issue_node_cert("agent-1").unwrap();
        let intruder_auth = MemberCertAuth::new(&intruder, &foreign.cluster_ca()).unwrap();
        let mut card = f.card.clone();
        card.kraken_peer = intruder.peer_id;
        let bytes = encode(&card, &intruder_auth).unwrap();
        assert!(matches!(
            decode_and_verify(&bytes, &card.dht_peer, &f.auth, NOW, AGE),
            Err(CardError::Unverified(_))
        ));
    }

    #[test]
    fn garbled_truncated_and_huge_bytes_are_errors_never_panics() {
        let f = fixture();
        let good = encode(&f.card, &f.auth).unwrap();
        let check = |bytes: &[u8]| {
            let r = decode_and_verify(bytes, &f.card.dht_peer, &f.auth, NOW, AGE);
            assert!(r.is_err() || bytes == good.as_slice(), "{r:?}");
        };
        for n in 0..good.len() {
            check(&good[..n]);
        }
        let mut rng = rand::rngs::SmallRng::seed_from_u64(26);
        for _ in 0..2_000 {
            let mut bytes = good.clone();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            check(&bytes);
            let len = rng.random_range(0..600);
            let noise: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            check(&noise);
        }
        // Huge, and length prefixes claiming huge vectors.
        assert_eq!(
            decode_and_verify(
                &vec![0; MAX_CARD_BYTES + 1],
                &f.card.dht_peer,
                &f.auth,
                NOW,
                AGE
            ),
            Err(CardError::TooLarge(MAX_CARD_BYTES + 1))
        );
        check(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        check(&[1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        // A version from the future.
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(
            decode_and_verify(&v2, &f.card.dht_peer, &f.auth, NOW, AGE),
            Err(CardError::Version(2))
        );
    }
}
