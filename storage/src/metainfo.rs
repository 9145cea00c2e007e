//! `Metainfo`: what a peer needs to download and verify a blob piece by piece.
//!
//! A metainfo names the blob (`Digest`), its length, its piece length and one BLAKE3 hash
//! per piece. Only origins produce it (they hold the whole blob and have checked its digest);
//! agents receive it over authenticated QUIC and verify each piece against it, so a piece
//! can be checked on arrival without waiting for the whole blob.
//!
//! When pieces are whole blocks of the digest's algorithm (every default piece length is,
//! for sha256 and sha512 alike), it also carries the algorithm's chaining state at the start
//! of each piece after the first (see [`crate::chain`]):
//! a receiver then checks the blob's digest piece by piece as pieces arrive, instead of
//! re-hashing the whole blob after the last one.
//!
//! Encoding: postcard of a versioned struct, at most [`MAX_ENCODED_LEN`] bytes: version 2
//! with chaining states, version 1 (what nodes before them speak) without, so a metainfo
//! without states keeps its encoding and its id across the upgrade. A chaining state is
//! its raw bytes (32 for sha256, 64 for sha512; the digest, encoded before the states,
//! says which), so sha256 metainfos kept their encoding when sha512 came. Decoding checks
//! everything a malicious peer could get wrong (version, piece length bounds, piece count
//! against the length, the number of chaining states and the pieces' block alignment,
//! trailing bytes) and never panics. [`Metainfo::id`] is the BLAKE3 hash of the encoding,
//! so two nodes can tell in 32 bytes whether they hold the same metainfo.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::bitfield::PieceIndex;
use crate::chain::{self, ChainHasher, ChainRecorder, ChainState};
use crate::digest::{Bytes64, Digest, DigestAlgorithm};

/// Current encoding version.
pub const METAINFO_VERSION: u8 = 2;
/// The version before chaining states, still decoded.
const METAINFO_VERSION_1: u8 = 1;
/// Smallest piece length a metainfo may use.
pub const MIN_PIECE_LENGTH: u32 = 16 * 1024;
/// Largest piece length a metainfo may use (a piece is one QUIC stream and one buffer).
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;
/// Most pieces one blob may have (1 TiB at 4 MiB pieces).
pub const MAX_PIECES: u32 = 1 << 18;
/// Upper bound of an encoded metainfo, checked before decoding (a BLAKE3 hash and a
/// chaining state of up to 64 bytes per piece, and the fixed fields).
pub const MAX_ENCODED_LEN: usize = 160 + 96 * MAX_PIECES as usize;

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
    Malformed(#[source] postcard::Error),
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
    /// Chaining states that cannot belong to this layout.
    #[error(
        "a metainfo of {pieces} pieces of {piece_length} bytes carries {actual} \
         chaining states (expected {} or none, of the digest's algorithm, and pieces of \
         whole blocks of it)",
        pieces.saturating_sub(1)
    )]
    ChainMismatch {
        /// Pieces in the blob.
        pieces: u32,
        /// Piece length.
        piece_length: u32,
        /// States present.
        actual: usize,
    },
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
    /// The bytes match the piece's BLAKE3 hash but do not continue the chain of the blob's
    /// digest:
    /// the metainfo is inconsistent (its hashes or its chaining states do not describe the
    /// blob its digest names). Not the sender's fault.
    #[error("{index} matches its BLAKE3 hash but not the hash chain of the blob's digest")]
    ChainMismatch {
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
/// 1.20 × in 256 KiB; see docs/performance.md). Blobs of 1 GiB and more use 4 MiB
/// pieces: few enough hashes and requests, large enough to keep QUIC streams busy; from
/// 8 GiB, 16 MiB pieces keep the metainfo (64 bytes a piece: a hash and a chaining state)
/// small (a 100 GiB blob's: 400 KiB) and blobs up to 4 TiB within [`MAX_PIECES`]. A seeder
/// holds one piece in memory per upload slot, so those pieces cost up to 8 × 16 MiB per
/// blob being served.
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
    /// `< 256 MiB`: 256 KiB pieces; `< 1 GiB`: 1 MiB; `< 8 GiB`: 4 MiB; otherwise 16 MiB.
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
                e(8 << 30, 16 * MIB),
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

/// Length, piece length, per-piece BLAKE3 hashes and chaining states of one blob.
#[derive(Clone, PartialEq, Eq)]
pub struct Metainfo {
    digest: Digest,
    length: u64,
    piece_length: u32,
    pieces: Vec<PieceHash>,
    /// The digest algorithm's chaining state at the start of pieces `1..`, or empty.
    chain: Vec<ChainState>,
}

/// The encoded form; kept separate so decoding always goes through validation. `S` is a
/// chaining state's bytes: `[u8; 32]` for a sha256 digest, [`Bytes64`] for sha512.
#[derive(Clone, Serialize, Deserialize)]
struct MetainfoWire<S> {
    version: u8,
    digest: Digest,
    length: u64,
    piece_length: u32,
    pieces: Vec<PieceHash>,
    chain: Vec<S>,
}

/// The fields every version starts with, read first to pick the chaining states' size.
#[derive(Deserialize)]
struct WireHead {
    version: u8,
    digest: Digest,
}

/// Version 1's encoding: no chaining states.
#[derive(Clone, Serialize, Deserialize)]
struct MetainfoWireV1 {
    version: u8,
    digest: Digest,
    length: u64,
    piece_length: u32,
    pieces: Vec<PieceHash>,
}

impl<S: Into<ChainState>> TryFrom<MetainfoWire<S>> for Metainfo {
    type Error = MetainfoError;

    fn try_from(w: MetainfoWire<S>) -> Result<Self, Self::Error> {
        if w.version != METAINFO_VERSION {
            return Err(MetainfoError::UnsupportedVersion(w.version));
        }
        let chain = w.chain.into_iter().map(Into::into).collect();
        Metainfo::new(w.digest, w.length, w.piece_length, w.pieces)?.with_chain(chain)
    }
}

impl From<[u8; 32]> for ChainState {
    fn from(bytes: [u8; 32]) -> Self {
        ChainState::Sha256(bytes)
    }
}

impl From<Bytes64> for ChainState {
    fn from(bytes: Bytes64) -> Self {
        ChainState::Sha512(bytes.0)
    }
}

impl<S> MetainfoWire<S> {
    /// The wire form of `m`, its states taken by `state` (`None`: not this size).
    fn of(m: &Metainfo, state: impl Fn(&ChainState) -> Option<S>) -> Self {
        MetainfoWire {
            version: METAINFO_VERSION,
            digest: m.digest,
            length: m.length,
            piece_length: m.piece_length,
            pieces: m.pieces.clone(),
            // A metainfo's states are all of its digest's algorithm (`with_chain`).
            chain: m.chain.iter().filter_map(state).collect(),
        }
    }
}

fn state_32(s: &ChainState) -> Option<[u8; 32]> {
    match s {
        ChainState::Sha256(b) => Some(*b),
        ChainState::Sha512(_) => None,
    }
}

fn state_64(s: &ChainState) -> Option<Bytes64> {
    match s {
        ChainState::Sha512(b) => Some(Bytes64(*b)),
        ChainState::Sha256(_) => None,
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
            chain: Vec::new(),
        })
    }

    /// Adds the digest algorithm's chaining state at the start of every piece after the
    /// first (as [`ChainRecorder`] records them); empty means none. Rejects a count that
    /// does not fit the pieces, states of another algorithm, and states for pieces that are
    /// not whole blocks of the algorithm.
    pub fn with_chain(mut self, chain: Vec<ChainState>) -> Result<Self, MetainfoError> {
        let algorithm = self.digest.algorithm();
        let fits = chain.len() == self.pieces.len().saturating_sub(1)
            && self.chain_capable()
            && chain.iter().all(|s| s.algorithm() == algorithm);
        if !chain.is_empty() && !fits {
            return Err(MetainfoError::ChainMismatch {
                pieces: self.piece_count(),
                piece_length: self.piece_length,
                actual: chain.len(),
            });
        }
        self.chain = chain;
        Ok(self)
    }

    /// Hashes a blob held in memory (tests, small blobs) with sha256. The digest is
    /// computed, not trusted.
    pub fn from_bytes(data: &[u8], table: &PieceLengthTable) -> Result<Self, MetainfoError> {
        Metainfo::from_bytes_as(DigestAlgorithm::Sha256, data, table)
    }

    /// Hashes a blob held in memory with `algorithm`. The digest is computed, not trusted.
    pub fn from_bytes_as(
        algorithm: DigestAlgorithm,
        data: &[u8],
        table: &PieceLengthTable,
    ) -> Result<Self, MetainfoError> {
        let piece_length = table.piece_length_for(data.len() as u64);
        check_layout(data.len() as u64, piece_length)?;
        let pieces = data
            .chunks(piece_length as usize)
            .map(PieceHash::of)
            .collect();
        let (digest, chain) = match ChainRecorder::new(algorithm, piece_length) {
            Some(mut r) => {
                r.update(data);
                r.finish()
            }
            None => (Digest::of(algorithm, data), Vec::new()),
        };
        Metainfo::new(digest, data.len() as u64, piece_length, pieces)?.with_chain(chain)
    }

    /// The chaining state at the start of each piece after the first; empty without.
    pub fn chain(&self) -> &[ChainState] {
        &self.chain
    }

    /// Whether pieces can be checked against the digest one by one (see [`crate::chain`]).
    pub fn has_chain(&self) -> bool {
        !self.chain.is_empty() || (self.pieces.len() == 1 && self.chain_capable())
    }

    /// Whether this layout admits chaining states at all: pieces of whole blocks of the
    /// digest's algorithm.
    fn chain_capable(&self) -> bool {
        u64::from(self.piece_length).is_multiple_of(chain::block_len(self.digest.algorithm()))
    }

    /// A hasher of the digest's algorithm positioned at the start of piece `index`, to be fed its bytes and
    /// handed to [`Metainfo::check_piece_chain`]; `None` without chaining states.
    pub fn piece_chain(&self, index: PieceIndex) -> Option<ChainHasher> {
        if !self.has_chain() || index.0 >= self.piece_count() {
            return None;
        }
        let start = u64::from(index.0) * u64::from(self.piece_length);
        let state = match index.0 {
            0 => ChainState::initial(self.digest.algorithm()),
            i => *self.chain.get(i as usize - 1)?,
        };
        Some(ChainHasher::resume(state, start))
    }

    /// Checks that `bytes`, the whole of piece `index`, continue the digest's hash chain
    /// (for pieces held in memory; see [`Metainfo::check_piece_chain`]).
    pub fn verify_piece_chain(&self, index: PieceIndex, bytes: &[u8]) -> Result<(), PieceError> {
        self.checked_piece_range(index)?;
        let mut hasher = self
            .piece_chain(index)
            .ok_or(PieceError::ChainMismatch { index })?;
        hasher.update(bytes);
        self.check_piece_chain(index, hasher)
    }

    /// Checks that piece `index`, fed whole to `hasher` (from [`Metainfo::piece_chain`]),
    /// continues the digest's hash chain: it ends at the next piece's recorded state, or,
    /// for the last piece, at the digest. Without chaining states nothing can pass.
    pub fn check_piece_chain(
        &self,
        index: PieceIndex,
        hasher: ChainHasher,
    ) -> Result<(), PieceError> {
        let range = self.checked_piece_range(index)?;
        if !self.has_chain() {
            return Err(PieceError::ChainMismatch { index });
        }
        if hasher.offset() != range.end {
            return Err(PieceError::WrongSize {
                index,
                expected: (range.end - range.start) as u32,
                actual: usize::try_from(hasher.offset().saturating_sub(range.start))
                    .unwrap_or(usize::MAX),
            });
        }
        let ok = if index.0 + 1 == self.piece_count() {
            hasher.finalize() == self.digest
        } else {
            hasher.state().as_ref() == self.chain.get(index.0 as usize)
        };
        if ok {
            Ok(())
        } else {
            Err(PieceError::ChainMismatch { index })
        }
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
        if self.chain.is_empty() {
            let v1 = MetainfoWireV1 {
                version: METAINFO_VERSION_1,
                digest: self.digest,
                length: self.length,
                piece_length: self.piece_length,
                pieces: self.pieces.clone(),
            };
            return postcard::to_allocvec(&v1).unwrap_or_default();
        }
        match self.digest.algorithm() {
            DigestAlgorithm::Sha256 => postcard::to_allocvec(&MetainfoWire::of(self, state_32)),
            DigestAlgorithm::Sha512 => postcard::to_allocvec(&MetainfoWire::of(self, state_64)),
        }
        .unwrap_or_default()
    }

    /// Decodes and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetainfoError> {
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(MetainfoError::TooLong {
                actual: bytes.len(),
                max: MAX_ENCODED_LEN,
            });
        }
        fn take<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, MetainfoError> {
            let (wire, rest) =
                postcard::take_from_bytes(bytes).map_err(MetainfoError::Malformed)?;
            if !rest.is_empty() {
                return Err(MetainfoError::TrailingBytes(rest.len()));
            }
            Ok(wire)
        }
        // The version is the first byte (postcard writes a u8 as itself).
        if bytes.first() == Some(&METAINFO_VERSION_1) {
            let w: MetainfoWireV1 = take(bytes)?;
            return Metainfo::new(w.digest, w.length, w.piece_length, w.pieces);
        }
        let (head, _) =
            postcard::take_from_bytes::<WireHead>(bytes).map_err(MetainfoError::Malformed)?;
        if head.version != METAINFO_VERSION {
            return Err(MetainfoError::UnsupportedVersion(head.version));
        }
        match head.digest.algorithm() {
            DigestAlgorithm::Sha256 => Metainfo::try_from(take::<MetainfoWire<[u8; 32]>>(bytes)?),
            DigestAlgorithm::Sha512 => Metainfo::try_from(take::<MetainfoWire<Bytes64>>(bytes)?),
        }
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
            .field("chain", &self.has_chain())
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
        assert_eq!(t.piece_length_for(8 << 30), 16 * MIB);
        let data = vec![7u8; 10 * 1024 * 1024];
        assert_eq!(Metainfo::from_bytes(&data, &t).unwrap().piece_count(), 40);
        // Every blob from 64 MiB up splits into at least 256 pieces.
        for mib in [64u64, 255, 256, 1023, 1024, 4096, 8192, 65536] {
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
        let mut chain = ChainRecorder::new(DigestAlgorithm::Sha256, want.piece_length()).unwrap();
        chain.update(&data);
        let (sha256, states) = chain.finish();
        let got = h.finish(sha256).unwrap();
        assert!(!got.has_chain());
        let got = got.with_chain(states).unwrap();
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
        let mut wire = MetainfoWire::of(&m, state_32);
        wire.version = 9;
        let enc = postcard::to_allocvec(&wire).unwrap();
        assert_eq!(
            Metainfo::decode(&enc),
            Err(MetainfoError::UnsupportedVersion(9))
        );
        let mut wire = MetainfoWire::of(&m, state_32);
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

    #[test]
    fn pieces_check_the_digest_one_by_one_through_the_chain() {
        let data: Vec<u8> = (0..600 * 1024u32).map(|i| (i % 249) as u8).collect();
        let m = Metainfo::from_bytes(&data, &table()).unwrap();
        assert!(m.has_chain());
        let piece = |i: u32| {
            let r = m.piece_range(PieceIndex(i)).unwrap();
            &data[r.start as usize..r.end as usize]
        };
        // In any order, each piece alone.
        for i in [2, 0, 1] {
            let mut h = m.piece_chain(PieceIndex(i)).unwrap();
            h.update(piece(i));
            m.check_piece_chain(PieceIndex(i), h).unwrap();
        }
        // A metainfo whose BLAKE3 hashes describe other bytes than the digest names: every
        // piece still matches its hash, and the chain catches the lie.
        let mut other = data.clone();
        other[300 * 1024] ^= 1;
        let honest = Metainfo::from_bytes(&other, &table()).unwrap();
        let liar = Metainfo::new(
            *m.digest(),
            m.length(),
            m.piece_length(),
            honest.piece_hashes().to_vec(),
        )
        .unwrap()
        .with_chain(m.chain.clone())
        .unwrap();
        let r = liar.piece_range(PieceIndex(1)).unwrap();
        let forged = &other[r.start as usize..r.end as usize];
        liar.verify_piece(PieceIndex(1), forged).unwrap();
        let mut h = liar.piece_chain(PieceIndex(1)).unwrap();
        h.update(forged);
        assert_eq!(
            liar.check_piece_chain(PieceIndex(1), h),
            Err(PieceError::ChainMismatch {
                index: PieceIndex(1)
            })
        );
        // A short piece is a size error, not a chain error.
        let mut h = m.piece_chain(PieceIndex(0)).unwrap();
        h.update(&piece(0)[1..]);
        assert!(matches!(
            m.check_piece_chain(PieceIndex(0), h),
            Err(PieceError::WrongSize { .. })
        ));
    }

    #[test]
    fn chains_that_do_not_fit_are_rejected_and_version_1_still_decodes() {
        let data = vec![3u8; 600 * 1024];
        let m = Metainfo::from_bytes(&data, &table()).unwrap();
        let bare = || Metainfo::new(*m.digest(), m.length(), m.piece_length(), m.pieces.clone());
        assert!(matches!(
            bare()
                .unwrap()
                .with_chain(vec![ChainState::Sha256([0; 32])]),
            Err(MetainfoError::ChainMismatch { actual: 1, .. })
        ));
        // Pieces that split sha256 blocks carry no chain.
        let odd = PieceLengthTable::uniform(16 * 1024 + 1);
        let o = Metainfo::from_bytes(&data, &odd).unwrap();
        assert!(!o.has_chain() && o.piece_chain(PieceIndex(0)).is_none());
        // A version 1 encoding decodes, without a chain.
        let v1 = MetainfoWireV1 {
            version: 1,
            digest: m.digest,
            length: m.length,
            piece_length: m.piece_length,
            pieces: m.pieces.clone(),
        };
        let old = Metainfo::decode(&postcard::to_allocvec(&v1).unwrap()).unwrap();
        assert_eq!(old, bare().unwrap());
        assert!(!old.has_chain());
        // A chain of the wrong length in a version 2 encoding is refused.
        let mut wire = MetainfoWire::of(&m, state_32);
        wire.chain.pop();
        assert!(matches!(
            Metainfo::decode(&postcard::to_allocvec(&wire).unwrap()),
            Err(MetainfoError::ChainMismatch { .. })
        ));
        // Without states the encoding stays version 1 (nodes before the chain read it, and
        // the id does not change); with them it is version 2.
        assert_eq!(bare().unwrap().encode()[0], 1);
        assert_eq!(bare().unwrap().id(), old.id());
        assert_eq!(m.encode()[0], 2);
        assert!(
            bare()
                .unwrap()
                .check_piece_chain(PieceIndex(0), ChainHasher::default())
                .is_err()
        );
        // A single piece needs no states: its sha256 is the digest.
        let one = Metainfo::from_bytes(b"hello", &table()).unwrap();
        assert!(one.has_chain());
        let mut h = one.piece_chain(PieceIndex(0)).unwrap();
        h.update(b"hello");
        one.check_piece_chain(PieceIndex(0), h).unwrap();
    }

    #[test]
    fn sha512_pieces_check_the_digest_one_by_one() {
        let data: Vec<u8> = (0..600 * 1024u32).map(|i| (i % 247) as u8).collect();
        let m = Metainfo::from_bytes_as(DigestAlgorithm::Sha512, &data, &table()).unwrap();
        assert_eq!(*m.digest(), Digest::of(DigestAlgorithm::Sha512, &data));
        assert!(m.has_chain());
        assert_eq!(m.chain().len(), 2);
        assert!(m.chain().iter().all(|s| s.as_bytes().len() == 64));
        let piece = |i: u32| {
            let r = m.piece_range(PieceIndex(i)).unwrap();
            &data[r.start as usize..r.end as usize]
        };
        for i in [1, 2, 0] {
            m.verify_piece(PieceIndex(i), piece(i)).unwrap();
            m.verify_piece_chain(PieceIndex(i), piece(i)).unwrap();
        }
        // A corrupted piece is refused by its BLAKE3 hash and by the sha512 chain; the last
        // piece is checked against the digest itself.
        for i in [0, 2] {
            let mut bad = piece(i).to_vec();
            bad[7] ^= 0x40;
            let index = PieceIndex(i);
            assert_eq!(
                m.verify_piece(index, &bad),
                Err(PieceError::HashMismatch { index })
            );
            assert_eq!(
                m.verify_piece_chain(index, &bad),
                Err(PieceError::ChainMismatch { index })
            );
        }
        // The encoding carries 64-byte states and round-trips, id included.
        let enc = m.encode();
        assert_eq!(enc[0], METAINFO_VERSION);
        assert_eq!(enc.len(), 1 + 65 + 3 + 3 + 1 + 3 * 32 + 1 + 2 * 64);
        let back = Metainfo::decode(&enc).unwrap();
        assert_eq!((back.id(), &back), (m.id(), &m));
        // Truncated states do not decode; nor do sha256 states under a sha512 digest.
        assert!(Metainfo::decode(&enc[..enc.len() - 1]).is_err());
        let bare = || Metainfo::new(*m.digest(), m.length(), m.piece_length(), m.pieces.clone());
        assert!(matches!(
            bare()
                .unwrap()
                .with_chain(vec![ChainState::Sha256([0; 32]); 2]),
            Err(MetainfoError::ChainMismatch { actual: 2, .. })
        ));
        let mixed = MetainfoWire::<[u8; 32]> {
            chain: vec![[0; 32]; 4],
            ..MetainfoWire::of(&bare().unwrap(), state_32)
        };
        assert!(Metainfo::decode(&postcard::to_allocvec(&mixed).unwrap()).is_err());
        // Without states a sha512 metainfo is version 1 too.
        assert_eq!(bare().unwrap().encode()[0], 1);
        let v1 = Metainfo::decode(&bare().unwrap().encode()).unwrap();
        assert_eq!(v1, bare().unwrap());
    }

    #[test]
    fn sha512_needs_pieces_of_whole_128_byte_blocks() {
        // 16 KiB + 64 is whole sha256 blocks but not sha512's.
        let odd = PieceLengthTable::uniform(16 * 1024 + 64);
        let data = vec![5u8; 40_000];
        let s256 = Metainfo::from_bytes(&data, &odd).unwrap();
        assert!(!s256.chain().is_empty());
        let s512 = Metainfo::from_bytes_as(DigestAlgorithm::Sha512, &data, &odd).unwrap();
        assert!(s512.chain().is_empty() && !s512.has_chain());
        assert_eq!(*s512.digest(), Digest::of(DigestAlgorithm::Sha512, &data));
        assert!(s512.piece_chain(PieceIndex(0)).is_none());
        assert!(
            s512.verify_piece_chain(PieceIndex(0), &data[..16 * 1024 + 64])
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn sha512_round_trips(data in proptest::collection::vec(any::<u8>(), 0..70_000), pl in 16u32..64) {
            let table = PieceLengthTable::uniform(pl * 1024);
            let m = Metainfo::from_bytes_as(DigestAlgorithm::Sha512, &data, &table).unwrap();
            let back = Metainfo::decode(&m.encode()).unwrap();
            prop_assert_eq!(back.id(), m.id());
            prop_assert_eq!(&back, &m);
            for i in 0..m.piece_count() {
                let r = m.piece_range(PieceIndex(i)).unwrap();
                prop_assert!(m.verify_piece_chain(PieceIndex(i), &data[r.start as usize..r.end as usize]).is_ok());
            }
        }

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

#[cfg(test)]
mod golden {
    use super::*;

    /// The encodings (and so the ids) of existing sha256 metainfos must never change:
    /// nodes compare ids, and stores hold encoded metainfos.
    #[test]
    fn sha256_encodings_are_pinned() {
        let data: Vec<u8> = (0..600 * 1024u32).map(|i| (i % 253) as u8).collect();
        let chained = Metainfo::from_bytes(&data, &PieceLengthTable::default()).unwrap();
        let bare = Metainfo::new(
            *chained.digest(),
            chained.length(),
            chained.piece_length(),
            chained.piece_hashes().to_vec(),
        )
        .unwrap();
        let enc = chained.encode();
        assert_eq!(enc.len(), 1 + 33 + 3 + 3 + 1 + 3 * 32 + 1 + 2 * 32);
        assert_eq!(
            hex::encode(&enc[..48]),
            "0200733217b5843ea68c4b6859300d64b3657aca5976debbdfd058a263999e52086180c02580801003c90b63e13ef8c7"
        );
        assert_eq!(
            chained.id().to_string(),
            "60cd042096954bdd21887c29fd83889504d2b6a5861aa9650caf78e902932cc5"
        );
        assert_eq!(
            bare.id().to_string(),
            "a09601221f66740446145ffdfabdb8ab6fe053db3cc043c49ab34086086118c3"
        );
    }
}
