//! sha256 and sha512 piece by piece: a blob's digest checked as its pieces arrive, in any
//! order.
//!
//! Both algorithms run a compression function over fixed-size blocks (sha256: 64 bytes,
//! sha512: 128), carrying a chaining state (sha256: eight 32-bit words, sha512: eight
//! 64-bit words, both big-endian) from each block to the next; the digest is the state
//! after the padded last block. When pieces are whole blocks long, whoever hashes the blob
//! (an origin, at ingest) can record the state at every piece boundary in the metainfo. A
//! receiver then hashes each piece on its own, from the state recorded at its start, and
//! compares the result with the state recorded at its end; the last piece is padded and
//! compared with the digest itself. By induction, once every piece has passed, each
//! continued the true chain from the algorithm's initial state, so the blob's hash is the
//! digest: the guarantee of re-hashing the whole blob before commit, but spread over the
//! download, parallel across pieces, and with nothing left to do after the last byte. The
//! recorded states need no trust: a wrong one makes a piece fail, never a wrong blob pass.

use std::fmt;

use crate::digest::{Digest, DigestAlgorithm};

/// sha256's block size: piece boundaries must fall on multiples of it.
pub const BLOCK: u64 = 64;
/// sha512's block size.
pub const BLOCK_512: u64 = 128;
/// The largest block of any algorithm.
const MAX_BLOCK: usize = BLOCK_512 as usize;

/// The compression block of `algorithm`: piece boundaries must fall on multiples of it.
pub fn block_len(algorithm: DigestAlgorithm) -> u64 {
    match algorithm {
        DigestAlgorithm::Sha256 => BLOCK,
        DigestAlgorithm::Sha512 => BLOCK_512,
    }
}

/// sha256's initial state (FIPS 180-4, 5.3.3).
const INITIAL_256: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// sha512's initial state (FIPS 180-4, 5.3.5).
const INITIAL_512: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

/// The chaining state between two blocks, as the words' big-endian bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainState {
    /// sha256's: 32 bytes.
    Sha256([u8; 32]),
    /// sha512's: 64 bytes.
    Sha512([u8; 64]),
}

impl ChainState {
    /// sha256's state before the first block.
    pub const INITIAL: ChainState = ChainState::Sha256(be_bytes_32(INITIAL_256));

    /// `algorithm`'s state before the first block.
    pub fn initial(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => ChainState::INITIAL,
            DigestAlgorithm::Sha512 => ChainState::Sha512(be_bytes_64(INITIAL_512)),
        }
    }

    /// The algorithm whose chain this is.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self {
            ChainState::Sha256(_) => DigestAlgorithm::Sha256,
            ChainState::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    /// The state's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ChainState::Sha256(b) => b,
            ChainState::Sha512(b) => b,
        }
    }

    fn words(&self) -> Words {
        match self {
            ChainState::Sha256(b) => Words::Sha256(std::array::from_fn(|i| {
                u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
            })),
            ChainState::Sha512(b) => Words::Sha512(std::array::from_fn(|i| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&b[8 * i..8 * i + 8]);
                u64::from_be_bytes(w)
            })),
        }
    }
}

const fn be_bytes_32(words: [u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = words[i / 4].to_be_bytes()[i % 4];
        i += 1;
    }
    out
}

const fn be_bytes_64(words: [u64; 8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        out[i] = words[i / 8].to_be_bytes()[i % 8];
        i += 1;
    }
    out
}

impl fmt::Debug for ChainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.algorithm().name();
        write!(
            f,
            "ChainState({name}:{})",
            hex::encode(&self.as_bytes()[..8])
        )
    }
}

/// The compression function's state, as it works on it.
#[derive(Clone, Copy)]
enum Words {
    Sha256([u32; 8]),
    Sha512([u64; 8]),
}

impl Words {
    fn state(&self) -> ChainState {
        match *self {
            Words::Sha256(w) => ChainState::Sha256(be_bytes_32(w)),
            Words::Sha512(w) => ChainState::Sha512(be_bytes_64(w)),
        }
    }

    /// Compresses whole blocks of this algorithm (`blocks.len()` a multiple of it), in one
    /// call: the SHA-NI kernel loads and stores its state once per call, which per block
    /// cost about 8 % of sha256's time.
    fn compress(&mut self, blocks: &[u8]) {
        match self {
            Words::Sha256(state) => {
                let (whole, rest) = blocks.as_chunks();
                debug_assert!(rest.is_empty(), "whole sha256 blocks only");
                sha2::block_api::compress256(state, whole);
            }
            Words::Sha512(state) => {
                let (whole, rest) = blocks.as_chunks();
                debug_assert!(rest.is_empty(), "whole sha512 blocks only");
                sha2::block_api::compress512(state, whole);
            }
        }
    }
}

/// The algorithm's hash over a stretch of a blob that starts on a block boundary, from the
/// chaining state there.
#[derive(Clone)]
pub struct ChainHasher {
    words: Words,
    /// The algorithm's block length.
    block: u64,
    /// Blob offset of the next byte (counted from the blob's start: the padding needs it).
    offset: u64,
    /// The block being filled: `offset % block` bytes of it.
    pending: [u8; MAX_BLOCK],
}

impl Default for ChainHasher {
    /// A sha256 hasher at the start of a blob.
    fn default() -> Self {
        Self::new(DigestAlgorithm::Sha256)
    }
}

impl ChainHasher {
    /// An `algorithm` hasher at the start of a blob.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        Self::resume(ChainState::initial(algorithm), 0)
    }

    /// A hasher at blob offset `offset` (a multiple of the state's algorithm's block) whose
    /// chaining state there is `state`.
    pub fn resume(state: ChainState, offset: u64) -> Self {
        let block = block_len(state.algorithm());
        debug_assert!(
            offset.is_multiple_of(block),
            "a chain resumes on a block boundary"
        );
        ChainHasher {
            words: state.words(),
            block,
            offset,
            pending: [0; MAX_BLOCK],
        }
    }

    /// The algorithm being computed.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self.words {
            Words::Sha256(_) => DigestAlgorithm::Sha256,
            Words::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    /// Blob offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        let b = self.block as usize;
        let used = (self.offset % self.block) as usize;
        if used > 0 {
            let take = (b - used).min(bytes.len());
            self.pending[used..used + take].copy_from_slice(&bytes[..take]);
            self.offset += take as u64;
            bytes = &bytes[take..];
            if !self.offset.is_multiple_of(self.block) {
                return;
            }
            let pending = self.pending;
            self.words.compress(&pending[..b]);
        }
        // Whole blocks straight from the input: no copy.
        let whole = bytes.len() - bytes.len() % b;
        self.words.compress(&bytes[..whole]);
        let tail = &bytes[whole..];
        self.pending[..tail.len()].copy_from_slice(tail);
        self.offset += bytes.len() as u64;
    }

    /// The chaining state here, if this is a block boundary.
    pub fn state(&self) -> Option<ChainState> {
        self.offset
            .is_multiple_of(self.block)
            .then(|| self.words.state())
    }

    /// The blob's digest, if it ends here: the padding (FIPS 180-4, 5.1) appends `0x80`,
    /// zeros, and the length in bits as a big-endian field of 8 bytes (sha256) or 16
    /// (sha512), to a whole number of blocks.
    pub fn finalize(mut self) -> Digest {
        let bits = u128::from(self.offset) * 8;
        let field = (self.block / 8) as usize;
        let zeros = (self.block - (self.offset + 1 + field as u64) % self.block) % self.block;
        self.update(&[0x80]);
        self.update(&[0u8; MAX_BLOCK][..zeros as usize]);
        self.update(&bits.to_be_bytes()[16 - field..]);
        debug_assert!(self.offset.is_multiple_of(self.block));
        match self.words.state() {
            ChainState::Sha256(h) => Digest::Sha256(h),
            ChainState::Sha512(h) => Digest::Sha512(h),
        }
    }
}

/// Hashes a whole blob fed in arbitrary chunks, recording the chaining state at the start
/// of every piece but the first.
#[derive(Clone)]
pub struct ChainRecorder {
    hasher: ChainHasher,
    piece_length: u64,
    states: Vec<ChainState>,
}

impl ChainRecorder {
    /// An `algorithm` recorder for pieces of `piece_length` bytes; `None` unless that is a
    /// whole number of the algorithm's blocks.
    pub fn new(algorithm: DigestAlgorithm, piece_length: u32) -> Option<Self> {
        let piece_length = u64::from(piece_length);
        let whole = piece_length > 0 && piece_length.is_multiple_of(block_len(algorithm));
        whole.then(|| ChainRecorder {
            hasher: ChainHasher::new(algorithm),
            piece_length,
            states: Vec::new(),
        })
    }

    /// Feeds the next bytes of the blob.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let to_boundary = self.piece_length - self.hasher.offset() % self.piece_length;
            let take = usize::try_from(to_boundary)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            self.hasher.update(&bytes[..take]);
            bytes = &bytes[take..];
            if self.hasher.offset().is_multiple_of(self.piece_length)
                && let Some(state) = self.hasher.state()
            {
                self.states.push(state);
            }
        }
    }

    /// The blob's digest and the state at the start of each piece after the first.
    pub fn finish(self) -> (Digest, Vec<ChainState>) {
        let mut states = self.states;
        // A blob that ends on a piece boundary recorded the end too: no piece starts there.
        if self.hasher.offset() > 0 && self.hasher.offset().is_multiple_of(self.piece_length) {
            states.pop();
        }
        (self.hasher.finalize(), states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHA256: DigestAlgorithm = DigestAlgorithm::Sha256;
    const SHA512: DigestAlgorithm = DigestAlgorithm::Sha512;

    #[test]
    fn matches_the_hash_at_every_length_around_the_padding_edges() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for algorithm in DigestAlgorithm::ALL {
            for len in 0..data.len() {
                let mut h = ChainHasher::new(algorithm);
                h.update(&data[..len]);
                let want = Digest::of(algorithm, &data[..len]);
                assert_eq!(h.finalize(), want, "{algorithm} length {len}");
            }
        }
    }

    #[test]
    fn sha512_initial_state_is_fips() {
        // FIPS 180-4, 5.3.5: H(0) of sha512, big-endian.
        let bytes = ChainState::initial(SHA512);
        assert_eq!(
            hex::encode(&bytes.as_bytes()[..16]),
            "6a09e667f3bcc908bb67ae8584caa73b"
        );
        assert_eq!(bytes.as_bytes().len(), 64);
        assert_eq!(ChainState::initial(SHA256), ChainState::INITIAL);
    }

    #[test]
    fn a_piece_hashed_alone_continues_the_chain() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for algorithm in DigestAlgorithm::ALL {
            let mut recorder = ChainRecorder::new(algorithm, 1024).unwrap();
            recorder.update(&data);
            let (digest, states) = recorder.finish();
            assert_eq!(digest, Digest::of(algorithm, &data));
            assert_eq!(states.len(), 9, "pieces 1..=9 of 10");
            assert!(states.iter().all(|s| s.algorithm() == algorithm));
            // Piece 3 from the state at its start ends at the state at piece 4's start.
            let mut h = ChainHasher::resume(states[2], 3 * 1024);
            h.update(&data[3 * 1024..4 * 1024]);
            assert_eq!(h.state(), Some(states[3]));
            // The last piece, padded, gives the digest.
            let mut last = ChainHasher::resume(states[8], 9 * 1024);
            last.update(&data[9 * 1024..]);
            assert_eq!(last.finalize(), digest);
            // A changed byte breaks it.
            let mut bad = data[3 * 1024..4 * 1024].to_vec();
            bad[100] ^= 1;
            let mut h = ChainHasher::resume(states[2], 3 * 1024);
            h.update(&bad);
            assert_ne!(h.state(), Some(states[3]));
        }
    }

    #[test]
    fn a_blob_ending_on_a_boundary_records_no_state_past_its_end() {
        let data = vec![9u8; 4096];
        for algorithm in DigestAlgorithm::ALL {
            let mut r = ChainRecorder::new(algorithm, 1024).unwrap();
            r.update(&data);
            let (digest, states) = r.finish();
            assert_eq!((digest, states.len()), (Digest::of(algorithm, &data), 3));
            let (empty, none) = ChainRecorder::new(algorithm, 1024).unwrap().finish();
            assert_eq!((empty, none.len()), (Digest::of(algorithm, b""), 0));
        }
    }

    #[test]
    fn pieces_that_split_blocks_get_no_chain() {
        assert!(ChainRecorder::new(SHA256, 1000).is_none());
        assert!(ChainRecorder::new(SHA256, 0).is_none());
        assert!(ChainRecorder::new(SHA256, 64).is_some());
        // A whole number of sha256 blocks is not always one of sha512's.
        assert!(ChainRecorder::new(SHA512, 64).is_none());
        assert!(ChainRecorder::new(SHA512, 192).is_none());
        assert!(ChainRecorder::new(SHA512, 256).is_some());
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_hash(data in proptest::collection::vec(any::<u8>(), 0..5000),
                                       cuts in proptest::collection::vec(0usize..5000, 0..8),
                                       sha512 in any::<bool>()) {
            let algorithm = if sha512 { SHA512 } else { SHA256 };
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut r = ChainRecorder::new(algorithm, 256).unwrap();
            let mut at = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                r.update(&data[at..c]);
                at = c;
            }
            let (digest, states) = r.finish();
            prop_assert_eq!(digest, Digest::of(algorithm, &data));
            prop_assert_eq!(states.len() as u64, (data.len() as u64).div_ceil(256).saturating_sub(1));
        }
    }
}
