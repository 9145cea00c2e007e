//! `PieceIndex` and `Bitfield`: which pieces of a blob a node holds.
//!
//! The bitfield is MSB-first within each byte (piece 0 is bit 7 of byte 0), as BitTorrent
//! writes it, and its encoding carries the piece count so a decoder can reject a bitfield
//! whose length does not match the metainfo, or whose spare trailing bits are set.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Index of a piece within a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PieceIndex(pub u32);

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "piece {}", self.0)
    }
}

/// Why bytes are not a valid bitfield.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    /// The byte length does not match the piece count.
    #[error("bitfield of {pieces} pieces needs {expected} bytes, got {actual}")]
    WrongLength {
        /// Piece count.
        pieces: u32,
        /// Bytes required.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// Bits past the last piece are set.
    #[error("bitfield has bits set past its last piece")]
    TrailingBits,
}

/// A fixed-size set of pieces.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bitfield {
    len: u32,
    ones: u32,
    bytes: Vec<u8>,
}

impl Bitfield {
    /// An empty bitfield for `len` pieces.
    pub fn new(len: u32) -> Self {
        Bitfield {
            len,
            ones: 0,
            bytes: vec![0; byte_len(len)],
        }
    }

    /// A bitfield with every piece set.
    pub fn full(len: u32) -> Self {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(PieceIndex(i));
        }
        b
    }

    /// Rebuilds a bitfield from its bytes, checking length and spare bits.
    pub fn from_bytes(len: u32, bytes: Vec<u8>) -> Result<Self, BitfieldError> {
        let expected = byte_len(len);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength {
                pieces: len,
                expected,
                actual: bytes.len(),
            });
        }
        let spare = expected * 8 - len as usize;
        if spare > 0 && bytes[expected - 1] & ((1u8 << spare) - 1) != 0 {
            return Err(BitfieldError::TrailingBits);
        }
        let ones = bytes.iter().map(|b| b.count_ones()).sum();
        Ok(Bitfield { len, ones, bytes })
    }

    /// The raw bytes, MSB-first.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of pieces the bitfield covers.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when it covers no pieces at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces set.
    pub fn count_ones(&self) -> u32 {
        self.ones
    }

    /// True when every piece is set.
    pub fn is_complete(&self) -> bool {
        self.ones == self.len
    }

    /// Whether `piece` is set; out-of-range pieces are not.
    pub fn get(&self, piece: PieceIndex) -> bool {
        match self.locate(piece) {
            Some((byte, mask)) => self.bytes[byte] & mask != 0,
            None => false,
        }
    }

    /// Sets `piece`; returns true if it was newly set. Out of range is ignored (false).
    pub fn set(&mut self, piece: PieceIndex) -> bool {
        let Some((byte, mask)) = self.locate(piece) else {
            return false;
        };
        let fresh = self.bytes[byte] & mask == 0;
        self.bytes[byte] |= mask;
        self.ones += u32::from(fresh);
        fresh
    }

    /// Clears `piece`; returns true if it was set.
    pub fn unset(&mut self, piece: PieceIndex) -> bool {
        let Some((byte, mask)) = self.locate(piece) else {
            return false;
        };
        let was = self.bytes[byte] & mask != 0;
        self.bytes[byte] &= !mask;
        self.ones -= u32::from(was);
        was
    }

    /// Pieces that are set, ascending.
    pub fn ones(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        (0..self.len).map(PieceIndex).filter(|p| self.get(*p))
    }

    /// Pieces that are missing, ascending.
    pub fn missing(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        (0..self.len).map(PieceIndex).filter(|p| !self.get(*p))
    }

    /// Pieces set in `other` and missing here, ascending: what a peer with `other` can
    /// give us. Skips a byte (eight pieces) at a time where there is nothing to give,
    /// which is most of them; a scheduler asks this on every request it makes.
    pub fn missing_in<'a>(&'a self, other: &'a Bitfield) -> impl Iterator<Item = PieceIndex> + 'a {
        let len = self.len.min(other.len);
        self.bytes
            .iter()
            .zip(&other.bytes)
            .enumerate()
            .flat_map(move |(i, (&mine, &theirs))| {
                let mut wanted = !mine & theirs;
                std::iter::from_fn(move || {
                    if wanted == 0 {
                        return None;
                    }
                    let bit = wanted.leading_zeros();
                    wanted &= !(0x80u8 >> bit);
                    Some(PieceIndex(i as u32 * 8 + bit))
                })
            })
            .take_while(move |p| p.0 < len)
    }

    fn locate(&self, piece: PieceIndex) -> Option<(usize, u8)> {
        (piece.0 < self.len).then(|| ((piece.0 / 8) as usize, 0x80u8 >> (piece.0 % 8)))
    }
}

fn byte_len(len: u32) -> usize {
    (len as usize).div_ceil(8)
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

impl Serialize for Bitfield {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.len, serde_bytes_ref(&self.bytes)).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Bitfield {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (len, bytes): (u32, ByteBuf) = Deserialize::deserialize(d)?;
        Bitfield::from_bytes(len, bytes.0).map_err(serde::de::Error::custom)
    }
}

/// Serializes a byte slice as bytes (one length prefix) rather than a sequence of u8.
fn serde_bytes_ref(b: &[u8]) -> BytesRef<'_> {
    BytesRef(b)
}

struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Owned bytes deserialized with `deserialize_byte_buf`.
pub(crate) struct ByteBuf(pub(crate) Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ByteBuf, A::Error> {
                // Text formats write bytes as a list of numbers; bound the preallocation.
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_in_is_what_the_other_has_and_we_lack() {
        for len in [0u32, 1, 7, 8, 9, 63, 239] {
            let mut mine = Bitfield::new(len);
            let mut theirs = Bitfield::new(len);
            for i in 0..len {
                if i % 3 == 0 {
                    mine.set(PieceIndex(i));
                }
                if i % 2 == 0 || i % 5 == 0 {
                    theirs.set(PieceIndex(i));
                }
            }
            let fast: Vec<_> = mine.missing_in(&theirs).collect();
            let slow: Vec<_> = mine.missing().filter(|p| theirs.get(*p)).collect();
            assert_eq!(fast, slow, "len {len}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn set_get_count() {
        let mut b = Bitfield::new(10);
        assert!(b.set(PieceIndex(0)));
        assert!(!b.set(PieceIndex(0)));
        assert!(b.set(PieceIndex(9)));
        assert!(!b.set(PieceIndex(10)), "out of range is ignored");
        assert_eq!(b.count_ones(), 2);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(
            b.ones().collect::<Vec<_>>(),
            vec![PieceIndex(0), PieceIndex(9)]
        );
        assert_eq!(b.missing().count(), 8);
        assert!(b.unset(PieceIndex(9)));
        assert!(!b.is_complete());
        assert!(Bitfield::full(10).is_complete());
        assert!(Bitfield::new(0).is_complete());
    }

    #[test]
    fn rejects_bad_bytes() {
        assert!(matches!(
            Bitfield::from_bytes(10, vec![0]),
            Err(BitfieldError::WrongLength { .. })
        ));
        assert_eq!(
            Bitfield::from_bytes(10, vec![0, 0x20]),
            Err(BitfieldError::TrailingBits)
        );
        assert!(
            Bitfield::from_bytes(10, vec![0xff, 0xc0])
                .unwrap()
                .is_complete()
        );
    }

    proptest! {
        #[test]
        fn round_trips(len in 0u32..2000, seed in proptest::collection::vec(any::<u32>(), 0..50)) {
            let mut b = Bitfield::new(len);
            for s in seed { if len > 0 { b.set(PieceIndex(s % len)); } }
            let bin = postcard::to_allocvec(&b).unwrap();
            let back: Bitfield = postcard::from_bytes(&bin).unwrap();
            prop_assert_eq!(back.count_ones(), b.count_ones());
            prop_assert_eq!(back, b);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(b) = postcard::from_bytes::<Bitfield>(&bytes) {
                prop_assert_eq!(b.ones().count() as u32, b.count_ones());
            }
        }
    }
}
