//! `Metainfo`: what a peer needs to download and verify a blob piece by piece.
//!
//! A metainfo names the blob (`Digest`), its length, its piece length and one BLAKE3 hash
//! per piece. Only origins produce it (they hold the whole blob and have checked its sha256);
//! agents receive it over authenticated QUIC and verify each piece against it, so a piece
//! can be checked on arrival without waiting for the whole blob.
//!
//! Encoding: postcard of a versioned struct (`version = 1`), at most
//! [`MAX_ENCODED_LEN`] bytes. Decoding checks everything a malicious peer could get wrong
//! (version, piece length bounds, piece count against the length, trailing bytes) and never
//! panics. [`Metainfo::id`] is the BLAKE3 hash of the encoding, so two nodes can tell in
//! 32 bytes whether they hold the same metainfo.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::bitfield::PieceIndex;
use crate::digest::Digest;

/// Current encoding version.
pub const METAINFO_VERSION: u8 = 1;
/// Smallest piece length a metainfo may use.
pub const MIN_PIECE_LENGTH: u32 = 16 * 1024;
/// Largest piece length a metainfo may use (a piece is one QUIC stream and one buffer).
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;
/// Most pieces one blob may have (1 TiB at 4 MiB pieces).
pub const MAX_PIECES: u32 = 1 << 18;
/// Upper bound of an encoded metainfo, checked before decoding.
pub const MAX_ENCODED_LEN: usize = 64 + 33 * MAX_PIECES as usize;

const KIB: u32 = 1024;
const MIB: u32 = 1024 * KIB;

/// BLAKE3 hash of one piece.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PieceHash(pub [u8; 32]);

impl PieceHash {
    /// BLAKE3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        PieceHash(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Debug for PieceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PieceHash({})", hex::encode(&self.0[..8]))
    }
}

/// BLAKE3 of a metainfo's encoding: equal ids mean identical metainfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MetainfoId(pub [u8; 32]);

impl fmt::Display for MetainfoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MetainfoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MetainfoId({})", hex::encode(&self.0[..8]))
    }
}

/// Why a metainfo (or a table) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetainfoError {
    /// The encoding is longer than [`MAX_ENCODED_LEN`].
    #[error("encoded metainfo is {actual} bytes, more than the {max} allowed")]
    TooLong {
        /// Bytes given.
        actual: usize,
        /// Limit.
        max: usize,
    },
    /// The bytes are not a postcard metainfo.
    #[error("malformed metainfo: {0}")]
    Malformed(String),
    /// Bytes remain after the metainfo.
    #[error("metainfo is followed by {0} unexpected bytes")]
    TrailingBytes(usize),
    /// An encoding version we do not speak.
    #[error("unsupported metainfo version {0} (this node speaks {METAINFO_VERSION})")]
    UnsupportedVersion(u8),
    /// Piece length outside the allowed bounds.
    #[error("piece length {0} is outside {MIN_PIECE_LENGTH}..={MAX_PIECE_LENGTH}")]
    BadPieceLength(u32),
    /// The number of piece hashes does not match the length.
    #[error(
        "a {length}-byte blob with {piece_length}-byte pieces has {expected} pieces, metainfo lists {actual}"
    )]
    PieceCountMismatch {
        /// Blob length.
        length: u64,
        /// Piece length.
        piece_length: u32,
        /// Pieces implied by the length.
        expected: u64,
        /// Hashes present.
        actual: usize,
    },
    /// More pieces than [`MAX_PIECES`].
    #[error(
        "a {length}-byte blob needs {pieces} pieces of {piece_length} bytes, more than the {MAX_PIECES} allowed"
    )]
    TooManyPieces {
        /// Blob length.
        length: u64,
        /// Piece length.
        piece_length: u32,
        /// Pieces required.
        pieces: u64,
    },
    /// The piece length table is unusable.
    #[error("invalid piece length table: {0}")]
    BadTable(String),
}

/// Why a piece failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// No such piece.
    #[error("{index} is out of range: the blob has {count} pieces")]
    OutOfRange {
        /// Piece asked for.
        index: PieceIndex,
        /// Pieces in the blob.
        count: u32,
    },
    /// The piece has the wrong number of bytes.
    #[error("{index} should be {expected} bytes, got {actual}")]
    WrongSize {
        /// Piece.
        index: PieceIndex,
        /// Its length per the metainfo.
        expected: u32,
        /// Bytes given.
        actual: usize,
    },
    /// The bytes hash to something else.
    #[error("{index} does not match its BLAKE3 hash")]
    HashMismatch {
        /// Piece.
        index: PieceIndex,
    },
}

/// Chooses the piece length from the blob size.
///
/// Entries are `(min_blob_size, piece_length)`; the last entry whose `min_blob_size` is at
/// most the blob size wins. The default gives every blob of 64 MiB or more at least 256
/// pieces: a swarm forwards whole verified pieces, so each piece costs a store-and-forward
/// delay per hop, and with too few pieces that delay dominates (a 100 MiB blob on
/// 100 Mbit/s links took 1.99 × the lower bound in 4 MiB pieces, 1.37 × in 1 MiB and
/// 1.20 × in 256 KiB; see the README's benchmarks). Blobs of 1 GiB and more use 4 MiB
/// pieces: few enough hashes and requests, large enough to keep QUIC streams busy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceLengthTable {
    /// `(min_blob_size, piece_length)` pairs, ascending by size, the first at size 0.
    pub entries: Vec<PieceLengthEntry>,
}

/// One row of a [`PieceLengthTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceLengthEntry {
    /// Blobs of at least this many bytes use `piece_length`.
    pub min_blob_size: u64,
    /// Piece length in bytes.
    pub piece_length: u32,
}

impl Default for PieceLengthTable {
    /// `< 256 MiB`: 256 KiB pieces; `< 1 GiB`: 1 MiB; otherwise 4 MiB.
    fn default() -> Self {
        let e = |min_blob_size, piece_length| PieceLengthEntry {
            min_blob_size,
            piece_length,
        };
        PieceLengthTable {
            entries: vec![
                e(0, 256 * KIB),
                e(256 * u64::from(MIB), MIB),
                e(1 << 30, 4 * MIB),
            ],
        }
    }
}

impl PieceLengthTable {
    /// One piece length for every blob size.
    pub fn uniform(piece_length: u32) -> Self {
        PieceLengthTable {
            entries: vec![PieceLengthEntry {
                min_blob_size: 0,
                piece_length,
            }],
        }
    }

    /// Rejects empty tables, unsorted sizes, a first row above 0 and out-of-bounds lengths.
    pub fn validate(&self) -> Result<(), MetainfoError> {
        let bad = |m: String| Err(MetainfoError::BadTable(m));
        let Some(first) = self.entries.first() else {
            return bad("it has no entries".into());
        };
        if first.min_blob_size != 0 {
            return bad(format!(
                "the first entry must start at min_blob_size 0, not {}",
                first.min_blob_size
            ));
        }
        for pair in self.entries.windows(2) {
            if pair[1].min_blob_size <= pair[0].min_blob_size {
                return bad(format!(
                    "min_blob_size must increase: {} follows {}",
                    pair[1].min_blob_size, pair[0].min_blob_size
                ));
            }
        }
        for e in &self.entries {
            if !(MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&e.piece_length) {
                return bad(format!(
                    "piece_length {} is outside {MIN_PIECE_LENGTH}..={MAX_PIECE_LENGTH}",
                    e.piece_length
                ));
            }
        }
        Ok(())
    }

    /// Piece length for a blob of `blob_size` bytes.
    pub fn piece_length_for(&self, blob_size: u64) -> u32 {
        self.entries
            .iter()
            .rev()
            .find(|e| e.min_blob_size <= blob_size)
            .map_or(4 * MIB, |e| e.piece_length)
    }
}

/// Length, piece length and per-piece BLAKE3 hashes of one blob.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MetainfoWire", into = "MetainfoWire")]
pub struct Metainfo {
    digest: Digest,
    length: u64,
    piece_length: u32,
    pieces: Vec<PieceHash>,
}

/// The encoded form; kept separate so decoding always goes through validation.
#[derive(Clone, Serialize, Deserialize)]
struct MetainfoWire {
    version: u8,
    digest: Digest,
    length: u64,
    piece_length: u32,
    pieces: Vec<PieceHash>,
}

impl TryFrom<MetainfoWire> for Metainfo {
    type Error = MetainfoError;

    fn try_from(w: MetainfoWire) -> Result<Self, Self::Error> {
        if w.version != METAINFO_VERSION {
            return Err(MetainfoError::UnsupportedVersion(w.version));
        }
        Metainfo::new(w.digest, w.length, w.piece_length, w.pieces)
    }
}

impl From<Metainfo> for MetainfoWire {
    fn from(m: Metainfo) -> Self {
        MetainfoWire {
            version: METAINFO_VERSION,
            digest: m.digest,
            length: m.length,
            piece_length: m.piece_length,
            pieces: m.pieces,
        }
    }
}

/// Number of pieces of `piece_length` needed for `length` bytes.
pub fn piece_count(length: u64, piece_length: u32) -> u64 {
    length.div_ceil(u64::from(piece_length.max(1)))
}

impl Metainfo {
    /// Assembles a metainfo, checking piece length and count against the length.
    pub fn new(
        digest: Digest,
        length: u64,
        piece_length: u32,
        pieces: Vec<PieceHash>,
    ) -> Result<Self, MetainfoError> {
        check_layout(length, piece_length)?;
        let expected = piece_count(length, piece_length);
        if pieces.len() as u64 != expected {
            return Err(MetainfoError::PieceCountMismatch {
                length,
                piece_length,
                expected,
                actual: pieces.len(),
            });
        }
        Ok(Metainfo {
            digest,
            length,
            piece_length,
            pieces,
        })
    }

    /// Hashes a blob held in memory (tests, small blobs). The digest is computed, not trusted.
    pub fn from_bytes(data: &[u8], table: &PieceLengthTable) -> Result<Self, MetainfoError> {
        let piece_length = table.piece_length_for(data.len() as u64);
        check_layout(data.len() as u64, piece_length)?;
        let pieces = data
            .chunks(piece_length as usize)
            .map(PieceHash::of)
            .collect();
        Metainfo::new(
            Digest::sha256_of(data),
            data.len() as u64,
            piece_length,
            pieces,
        )
    }

    /// The blob's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The blob's length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Length of every piece but the last.
    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        // Bounded by MAX_PIECES at construction.
        self.pieces.len() as u32
    }

    /// Hash of one piece.
    pub fn piece_hash(&self, index: PieceIndex) -> Option<&PieceHash> {
        self.pieces.get(index.0 as usize)
    }

    /// All piece hashes, in order.
    pub fn piece_hashes(&self) -> &[PieceHash] {
        &self.pieces
    }

    /// Byte range of a piece within the blob.
    pub fn piece_range(&self, index: PieceIndex) -> Option<Range<u64>> {
        if index.0 >= self.piece_count() {
            return None;
        }
        let start = u64::from(index.0) * u64::from(self.piece_length);
        let end = (start + u64::from(self.piece_length)).min(self.length);
        Some(start..end)
    }

    /// Byte range of a piece, or the error naming the blob's piece count.
    pub fn checked_piece_range(&self, index: PieceIndex) -> Result<Range<u64>, PieceError> {
        self.piece_range(index).ok_or(PieceError::OutOfRange {
            index,
            count: self.piece_count(),
        })
    }

    /// Size of a piece in bytes.
    pub fn piece_size(&self, index: PieceIndex) -> Option<u32> {
        // A piece is at most piece_length, so the difference fits.
        self.piece_range(index).map(|r| (r.end - r.start) as u32)
    }

    /// Checks that `bytes` are exactly piece `index`.
    pub fn verify_piece(&self, index: PieceIndex, bytes: &[u8]) -> Result<(), PieceError> {
        let expected = self.piece_size(index).ok_or(PieceError::OutOfRange {
            index,
            count: self.piece_count(),
        })?;
        if bytes.len() != expected as usize {
            return Err(PieceError::WrongSize {
                index,
                expected,
                actual: bytes.len(),
            });
        }
        self.check_piece_hash(index, &PieceHash::of(bytes))
    }

    /// Compares a hash computed elsewhere (e.g. while streaming) with piece `index`.
    pub fn check_piece_hash(&self, index: PieceIndex, hash: &PieceHash) -> Result<(), PieceError> {
        match self.piece_hash(index) {
            Some(h) if h == hash => Ok(()),
            Some(_) => Err(PieceError::HashMismatch { index }),
            None => Err(PieceError::OutOfRange {
                index,
                count: self.piece_count(),
            }),
        }
    }

    /// The compact binary encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        postcard::to_allocvec(&MetainfoWire::from(self.clone())).unwrap_or_default()
    }

    /// Decodes and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetainfoError> {
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(MetainfoError::TooLong {
                actual: bytes.len(),
                max: MAX_ENCODED_LEN,
            });
        }
        let (wire, rest): (MetainfoWire, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| MetainfoError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(MetainfoError::TrailingBytes(rest.len()));
        }
        Metainfo::try_from(wire)
    }

    /// BLAKE3 of the encoding.
    pub fn id(&self) -> MetainfoId {
        MetainfoId(*blake3::hash(&self.encode()).as_bytes())
    }
}

fn check_layout(length: u64, piece_length: u32) -> Result<(), MetainfoError> {
    if !(MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&piece_length) {
        return Err(MetainfoError::BadPieceLength(piece_length));
    }
    let pieces = piece_count(length, piece_length);
    if pieces > u64::from(MAX_PIECES) {
        return Err(MetainfoError::TooManyPieces {
            length,
            piece_length,
            pieces,
        });
    }
    Ok(())
}

impl fmt::Debug for Metainfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metainfo")
            .field("digest", &self.digest)
            .field("length", &self.length)
            .field("piece_length", &self.piece_length)
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

/// Computes piece hashes over a stream fed in arbitrary chunks.
#[derive(Clone)]
pub struct PieceHasher {
    piece_length: u32,
    current: blake3::Hasher,
    in_piece: u32,
    length: u64,
    pieces: Vec<PieceHash>,
}

impl PieceHasher {
    /// A hasher cutting pieces of `piece_length` bytes.
    pub fn new(piece_length: u32) -> Self {
        PieceHasher {
            piece_length: piece_length.max(1),
            current: blake3::Hasher::new(),
            in_piece: 0,
            length: 0,
            pieces: Vec::new(),
        }
    }

    /// Feeds the next bytes of the blob.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.length += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = (self.piece_length - self.in_piece) as usize;
            let take = room.min(bytes.len());
            self.current.update(&bytes[..take]);
            // take <= room <= piece_length, which is a u32.
            self.in_piece += take as u32;
            bytes = &bytes[take..];
            if self.in_piece == self.piece_length {
                self.pieces
                    .push(PieceHash(*self.current.finalize().as_bytes()));
                self.current.reset();
                self.in_piece = 0;
            }
        }
    }

    /// Bytes fed so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Finishes the last (short) piece and builds the metainfo for `digest`.
    pub fn finish(mut self, digest: Digest) -> Result<Metainfo, MetainfoError> {
        if self.in_piece > 0 {
            self.pieces
                .push(PieceHash(*self.current.finalize().as_bytes()));
        }
        Metainfo::new(digest, self.length, self.piece_length, self.pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table() -> PieceLengthTable {
        PieceLengthTable::default()
    }

    #[test]
    fn default_table_gives_blobs_many_pieces() {
        let t = table();
        t.validate().unwrap();
        assert_eq!(t.piece_length_for(0), 256 * KIB);
        assert_eq!(t.piece_length_for(100 << 20), 256 * KIB);
        assert_eq!(t.piece_length_for(256 << 20), MIB);
        assert_eq!(t.piece_length_for(1 << 30), 4 * MIB);
        let data = vec![7u8; 10 * 1024 * 1024];
        assert_eq!(Metainfo::from_bytes(&data, &t).unwrap().piece_count(), 40);
        // Every blob from 64 MiB up splits into at least 256 pieces.
        for mib in [64u64, 255, 256, 1023, 1024, 4096] {
            let len = mib << 20;
            let pieces = len.div_ceil(u64::from(t.piece_length_for(len)));
            assert!(pieces >= 256, "{mib} MiB: {pieces} pieces");
        }
    }

    #[test]
    fn table_validation_names_the_problem() {
        let e = |min_blob_size, piece_length| PieceLengthEntry {
            min_blob_size,
            piece_length,
        };
        let cases = [
            (vec![], "no entries"),
            (vec![e(1, MIB)], "must start at min_blob_size 0"),
            (vec![e(0, MIB), e(0, MIB)], "must increase"),
            (vec![e(0, 1)], "piece_length 1 is outside"),
        ];
        for (entries, want) in cases {
            let err = PieceLengthTable { entries }
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn pieces_cover_the_blob_and_verify() {
        let data: Vec<u8> = (0..600 * 1024u32).map(|i| (i % 251) as u8).collect();
        let m = Metainfo::from_bytes(&data, &table()).unwrap();
        assert_eq!(m.piece_count(), 3);
        assert_eq!(m.piece_range(PieceIndex(2)), Some(512 * 1024..600 * 1024));
        for i in 0..3 {
            let r = m.piece_range(PieceIndex(i)).unwrap();
            m.verify_piece(PieceIndex(i), &data[r.start as usize..r.end as usize])
                .unwrap();
        }
        let mut bad = data[..256 * 1024].to_vec();
        bad[5] ^= 1;
        assert_eq!(
            m.verify_piece(PieceIndex(0), &bad),
            Err(PieceError::HashMismatch {
                index: PieceIndex(0)
            })
        );
        assert!(matches!(
            m.verify_piece(PieceIndex(0), &bad[1..]),
            Err(PieceError::WrongSize { .. })
        ));
        assert!(matches!(
            m.verify_piece(PieceIndex(3), &bad),
            Err(PieceError::OutOfRange { .. })
        ));
    }

    #[test]
    fn streaming_hasher_matches_in_memory() {
        let data: Vec<u8> = (0..1_300_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let want = Metainfo::from_bytes(&data, &table()).unwrap();
        let mut h = PieceHasher::new(want.piece_length());
        for chunk in data.chunks(77_777) {
            h.update(chunk);
        }
        let got = h.finish(Digest::sha256_of(&data)).unwrap();
        assert_eq!(got, want);
        assert_eq!(got.id(), want.id());
    }

    #[test]
    fn decode_rejects_bad_metainfo() {
        let m = Metainfo::from_bytes(b"hello", &table()).unwrap();
        let mut enc = m.encode();
        assert_eq!(Metainfo::decode(&enc).unwrap(), m);
        enc.push(0);
        assert_eq!(Metainfo::decode(&enc), Err(MetainfoError::TrailingBytes(1)));
        let mut wire = MetainfoWire::from(m.clone());
        wire.version = 9;
        let enc = postcard::to_allocvec(&wire).unwrap();
        assert_eq!(
            Metainfo::decode(&enc),
            Err(MetainfoError::UnsupportedVersion(9))
        );
        let mut wire = MetainfoWire::from(m);
        wire.pieces.push(PieceHash([0; 32]));
        let enc = postcard::to_allocvec(&wire).unwrap();
        assert!(matches!(
            Metainfo::decode(&enc),
            Err(MetainfoError::PieceCountMismatch { .. })
        ));
        assert!(matches!(
            Metainfo::decode(&vec![0; MAX_ENCODED_LEN + 1]),
            Err(MetainfoError::TooLong { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..70_000), pl in 16u32..64) {
            let table = PieceLengthTable { entries: vec![PieceLengthEntry { min_blob_size: 0, piece_length: pl * 1024 }] };
            let m = Metainfo::from_bytes(&data, &table).unwrap();
            let back = Metainfo::decode(&m.encode()).unwrap();
            prop_assert_eq!(back.id(), m.id());
            prop_assert_eq!(back, m);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Metainfo::decode(&bytes);
        }

        #[test]
        fn mutated_encodings_never_panic(pos in any::<usize>(), val in any::<u8>()) {
            let m = Metainfo::from_bytes(&[1u8; 40_000], &PieceLengthTable {
                entries: vec![PieceLengthEntry { min_blob_size: 0, piece_length: 16 * 1024 }],
            }).unwrap();
            let mut enc = m.encode();
            let i = pos % enc.len();
            enc[i] = val;
            if let Ok(d) = Metainfo::decode(&enc) {
                prop_assert_eq!(d.piece_count() as u64, piece_count(d.length(), d.piece_length()));
            }
        }
    }
}
