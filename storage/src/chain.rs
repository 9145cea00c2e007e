//! sha256 piece by piece: a blob's digest checked as its pieces arrive, in any order.
//!
//! sha256 runs a compression function over 64-byte blocks, carrying a 32-byte chaining
//! state from each block to the next; the digest is the state after the padded last block.
//! When pieces are whole blocks long, whoever hashes the blob (an origin, at ingest) can
//! record the state at every piece boundary in the metainfo. A receiver then hashes each
//! piece on its own, from the state recorded at its start, and compares the result with
//! the state recorded at its end; the last piece is padded and compared with the digest
//! itself. By induction, once every piece has passed, each continued the true chain from
//! sha256's initial state, so the blob's sha256 is the digest: the guarantee of re-hashing
//! the whole blob before commit, but spread over the download, parallel across pieces, and
//! with nothing left to do after the last byte. The recorded states need no trust: a wrong
//! one makes a piece fail, never a wrong blob pass.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;
use sha2::digest::typenum::U64;

/// sha256's block size: piece boundaries must fall on multiples of it.
pub const BLOCK: u64 = 64;

/// sha256's initial state (FIPS 180-4, 5.3.3).
const INITIAL: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// sha256's chaining state between two blocks, as 32 big-endian bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChainState(pub [u8; 32]);

impl ChainState {
    /// The state before the first block.
    pub const INITIAL: ChainState = ChainState::from_words(INITIAL);

    const fn from_words(words: [u32; 8]) -> Self {
        let mut out = [0u8; 32];
        let mut i = 0;
        while i < 8 {
            let b = words[i].to_be_bytes();
            out[4 * i] = b[0];
            out[4 * i + 1] = b[1];
            out[4 * i + 2] = b[2];
            out[4 * i + 3] = b[3];
            i += 1;
        }
        ChainState(out)
    }

    fn words(&self) -> [u32; 8] {
        let mut w = [0u32; 8];
        for (i, word) in w.iter_mut().enumerate() {
            let mut b = [0u8; 4];
            b.copy_from_slice(&self.0[4 * i..4 * i + 4]);
            *word = u32::from_be_bytes(b);
        }
        w
    }
}

impl fmt::Debug for ChainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainState({})", hex::encode(&self.0[..8]))
    }
}

/// sha256 over a stretch of a blob that starts on a block boundary, from the chaining
/// state there.
#[derive(Clone)]
pub struct ChainHasher {
    state: [u32; 8],
    /// Blob offset of the next byte (counted from the blob's start: the padding needs it).
    offset: u64,
    /// The block being filled: `offset % 64` bytes of it.
    pending: GenericArray<u8, U64>,
}

impl Default for ChainHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainHasher {
    /// A hasher at the start of a blob.
    pub fn new() -> Self {
        Self::resume(ChainState::INITIAL, 0)
    }

    /// A hasher at blob offset `offset` (a multiple of [`BLOCK`]) whose chaining state
    /// there is `state`.
    pub fn resume(state: ChainState, offset: u64) -> Self {
        debug_assert!(
            offset.is_multiple_of(BLOCK),
            "a chain resumes on a block boundary"
        );
        ChainHasher {
            state: state.words(),
            offset,
            pending: GenericArray::default(),
        }
    }

    /// Blob offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        const B: usize = BLOCK as usize;
        let used = (self.offset % BLOCK) as usize;
        if used > 0 {
            let take = (B - used).min(bytes.len());
            self.pending[used..used + take].copy_from_slice(&bytes[..take]);
            self.offset += take as u64;
            bytes = &bytes[take..];
            if !self.offset.is_multiple_of(BLOCK) {
                return;
            }
            sha2::compress256(&mut self.state, std::slice::from_ref(&self.pending));
        }
        // Whole blocks straight from the input: no copy.
        let mut blocks = bytes.chunks_exact(B);
        for block in &mut blocks {
            sha2::compress256(
                &mut self.state,
                std::slice::from_ref(GenericArray::from_slice(block)),
            );
        }
        let tail = blocks.remainder();
        self.pending[..tail.len()].copy_from_slice(tail);
        self.offset += bytes.len() as u64;
    }

    /// The chaining state here, if this is a block boundary.
    pub fn state(&self) -> Option<ChainState> {
        self.offset
            .is_multiple_of(BLOCK)
            .then(|| ChainState::from_words(self.state))
    }

    /// The sha256 of the blob, if it ends here.
    pub fn finalize(mut self) -> [u8; 32] {
        let bits = self.offset.wrapping_mul(8);
        let zeros = (BLOCK - (self.offset + 1 + 8) % BLOCK) % BLOCK;
        self.update(&[0x80]);
        self.update(&[0u8; BLOCK as usize][..zeros as usize]);
        self.update(&bits.to_be_bytes());
        debug_assert!(self.offset.is_multiple_of(BLOCK));
        ChainState::from_words(self.state).0
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
    /// A recorder for pieces of `piece_length` bytes; `None` unless that is a whole number
    /// of blocks.
    pub fn new(piece_length: u32) -> Option<Self> {
        let piece_length = u64::from(piece_length);
        (piece_length > 0 && piece_length.is_multiple_of(BLOCK)).then(|| ChainRecorder {
            hasher: ChainHasher::new(),
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

    /// The blob's sha256 and the state at the start of each piece after the first.
    pub fn finish(self) -> ([u8; 32], Vec<ChainState>) {
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
    use sha2::{Digest as _, Sha256};

    fn sha256(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn matches_sha256_at_every_length_around_the_padding_edges() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let mut h = ChainHasher::new();
            h.update(&data[..len]);
            assert_eq!(h.finalize(), sha256(&data[..len]), "length {len}");
        }
    }

    #[test]
    fn a_piece_hashed_alone_continues_the_chain() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut recorder = ChainRecorder::new(1024).unwrap();
        recorder.update(&data);
        let (digest, states) = recorder.finish();
        assert_eq!(digest, sha256(&data));
        assert_eq!(states.len(), 9, "pieces 1..=9 of 10");
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

    #[test]
    fn a_blob_ending_on_a_boundary_records_no_state_past_its_end() {
        let data = vec![9u8; 4096];
        let mut r = ChainRecorder::new(1024).unwrap();
        r.update(&data);
        let (digest, states) = r.finish();
        assert_eq!((digest, states.len()), (sha256(&data), 3));
        let (empty, none) = ChainRecorder::new(1024).unwrap().finish();
        assert_eq!((empty, none.len()), (sha256(b""), 0));
    }

    #[test]
    fn pieces_that_split_blocks_get_no_chain() {
        assert!(ChainRecorder::new(1000).is_none());
        assert!(ChainRecorder::new(0).is_none());
        assert!(ChainRecorder::new(64).is_some());
    }

    proptest! {
        #[test]
        fn any_chunking_gives_sha256(data in proptest::collection::vec(any::<u8>(), 0..5000),
                                     cuts in proptest::collection::vec(0usize..5000, 0..8)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut r = ChainRecorder::new(128).unwrap();
            let mut at = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                r.update(&data[at..c]);
                at = c;
            }
            let (digest, states) = r.finish();
            prop_assert_eq!(digest, sha256(&data));
            prop_assert_eq!(states.len() as u64, (data.len() as u64).div_ceil(128).saturating_sub(1));
        }
    }
}
