//! `Digest`: the registry's name for a blob, `sha256:<64 lower-case hex>` or
//! `sha512:<128 lower-case hex>` (the two algorithms the OCI image spec registers).
//!
//! Parsing follows the OCI distribution spec's canonical form strictly: one known
//! algorithm, a colon, exactly the algorithm's hex length in lower case, nothing after.
//! sha256 is the default wherever a digest is computed rather than given.
//!
//! Binary encoding (postcard, the wire and the stores): the variant index, then the raw
//! hash: `0` and 32 bytes for sha256 (unchanged since before sha512), `1` and 64 bytes for
//! sha512.

use std::fmt;
use std::io;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// A content digest as the registry writes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Digest {
    /// SHA-256 of the blob's bytes.
    Sha256([u8; 32]),
    /// SHA-512 of the blob's bytes.
    Sha512([u8; 64]),
}

/// The hash algorithm of a [`Digest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    /// `sha256`, the only algorithm registries require, and the default.
    Sha256,
    /// `sha512`.
    Sha512,
}

impl DigestAlgorithm {
    /// The name used before the colon.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// Length of the raw hash in bytes.
    pub fn hash_len(self) -> usize {
        self.hex_len() / 2
    }

    /// Length of the encoded hash in hex characters.
    pub fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    /// Every supported algorithm, the default first.
    pub const ALL: [DigestAlgorithm; 2] = [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512];

    fn from_name(name: &str) -> Option<Self> {
        DigestAlgorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl Default for DigestAlgorithm {
    /// sha256: what registries and clients compute unless told otherwise.
    fn default() -> Self {
        DigestAlgorithm::Sha256
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DigestAlgorithm {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DigestAlgorithm::from_name(s).ok_or_else(|| DigestError::UnsupportedAlgorithm(truncate(s)))
    }
}

/// Why a string is not a valid digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `:` between algorithm and hash.
    #[error("digest {0:?} has no ':' between algorithm and hash")]
    MissingSeparator(String),
    /// The algorithm is not one we support.
    #[error("unsupported digest algorithm {0:?} (supported: sha256, sha512)")]
    UnsupportedAlgorithm(String),
    /// The hash part has the wrong number of characters (covers trailing bytes).
    #[error("{algorithm} digest must have {expected} hex characters, got {actual}")]
    WrongLength {
        /// Algorithm name.
        algorithm: &'static str,
        /// Required hex length.
        expected: usize,
        /// Length seen.
        actual: usize,
    },
    /// A character that is not lower-case hex.
    #[error("invalid character {ch:?} at position {position} of digest hash (lower-case hex only)")]
    InvalidCharacter {
        /// Offending character.
        ch: char,
        /// Byte position within the hash part.
        position: usize,
    },
}

impl Digest {
    /// SHA-256 of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Digest::Sha256(sha2::Sha256::digest(bytes).into())
    }

    /// The `algorithm` digest of `bytes`.
    pub fn of(algorithm: DigestAlgorithm, bytes: &[u8]) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => Digest::sha256_of(bytes),
            DigestAlgorithm::Sha512 => Digest::Sha512(sha2::Sha512::digest(bytes).into()),
        }
    }

    /// Whether `bytes` hash to this digest (with this digest's algorithm).
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Digest::of(self.algorithm(), bytes) == *self
    }

    /// The algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self {
            Digest::Sha256(_) => DigestAlgorithm::Sha256,
            Digest::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    /// The raw hash bytes.
    pub fn hash_bytes(&self) -> &[u8] {
        match self {
            Digest::Sha256(h) => h,
            Digest::Sha512(h) => h,
        }
    }

    /// The hash as lower-case hex, without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(self.hash_bytes())
    }

    /// A fresh hasher for this digest's algorithm.
    pub fn hasher(&self) -> DigestHasher {
        DigestHasher::new(self.algorithm())
    }

    /// The digest of everything `reader` yields, and how many bytes that was: how a file
    /// (or any stream) is hashed. Reads 1 MiB at a time, so a large file costs few calls.
    pub fn of_reader(algorithm: DigestAlgorithm, reader: impl io::Read) -> io::Result<(Self, u64)> {
        let mut hasher = DigestHasher::new(algorithm);
        // A BufReader of this capacity makes `io::copy` read in 1 MiB calls (its own buffer
        // is 8 KiB).
        let mut reader = io::BufReader::with_capacity(HASH_READ_LEN, reader);
        let n = io::copy(&mut reader, &mut hasher)?;
        Ok((hasher.finish(), n))
    }
}

/// Bytes [`Digest::of_reader`] asks its reader for at a time.
const HASH_READ_LEN: usize = 1 << 20;

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, hash) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingSeparator(truncate(s)))?;
        let algorithm = DigestAlgorithm::from_name(algo)
            .ok_or_else(|| DigestError::UnsupportedAlgorithm(truncate(algo)))?;
        if hash.len() != algorithm.hex_len() {
            return Err(DigestError::WrongLength {
                algorithm: algorithm.name(),
                expected: algorithm.hex_len(),
                actual: hash.len(),
            });
        }
        if let Some((position, ch)) = hash
            .char_indices()
            .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            return Err(DigestError::InvalidCharacter { ch, position });
        }
        // Cannot fail: length and alphabet were checked above.
        let wrong_length = |_| DigestError::WrongLength {
            algorithm: algorithm.name(),
            expected: algorithm.hex_len(),
            actual: hash.len(),
        };
        Ok(match algorithm {
            DigestAlgorithm::Sha256 => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(hash, &mut out).map_err(wrong_length)?;
                Digest::Sha256(out)
            }
            DigestAlgorithm::Sha512 => {
                let mut out = [0u8; 64];
                hex::decode_to_slice(hash, &mut out).map_err(wrong_length)?;
                Digest::Sha512(out)
            }
        })
    }
}

/// Bounds what an error message echoes back from untrusted input.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm().name(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

// Text formats (JSON, TOML) get the registry string; binary formats get the raw hash.
impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            match self {
                Digest::Sha256(h) => s.serialize_newtype_variant("Digest", 0, "Sha256", h),
                Digest::Sha512(h) => {
                    s.serialize_newtype_variant("Digest", 1, "Sha512", &Bytes64(*h))
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            #[derive(Deserialize)]
            enum Raw {
                Sha256([u8; 32]),
                Sha512(Bytes64),
            }
            Ok(match Raw::deserialize(d)? {
                Raw::Sha256(h) => Digest::Sha256(h),
                Raw::Sha512(h) => Digest::Sha512(h.0),
            })
        }
    }
}

/// 64 bytes serialized as a fixed-size tuple, as serde does `[u8; 32]` (serde's array
/// impls stop at 32): postcard writes the bytes as they are, no length prefix.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bytes64(pub(crate) [u8; 64]);

impl Serialize for Bytes64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Bytes64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Bytes64;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 bytes")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Bytes64, A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Bytes64(out))
            }
        }
        d.deserialize_tuple(64, Visitor)
    }
}

/// Incremental hasher producing a [`Digest`]. It is an [`io::Write`] too, so `io::copy`
/// (or any writer adapter) can feed it.
#[derive(Clone)]
pub enum DigestHasher {
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
}

impl DigestHasher {
    /// A hasher for `algorithm`.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => DigestHasher::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha512 => DigestHasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            DigestHasher::Sha256(h) => h.update(bytes),
            DigestHasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        match self {
            DigestHasher::Sha256(h) => Digest::Sha256(h.finalize().into()),
            DigestHasher::Sha512(h) => Digest::Sha512(h.finalize().into()),
        }
    }
}

impl io::Write for DigestHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_canonical_form() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::sha256_of(b""));
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
    }

    #[test]
    fn rejects_non_canonical_forms() {
        let hex = &EMPTY[7..];
        let cases = [
            (
                format!("sha512:{hex}"),
                "sha512 digest must have 128 hex characters, got 64",
            ),
            (format!("sha384:{hex}"), "unsupported digest algorithm"),
            (format!("SHA256:{hex}"), "unsupported digest algorithm"),
            (hex.to_string(), "no ':'"),
            (
                format!("sha256:{}", &hex[1..]),
                "must have 64 hex characters, got 63",
            ),
            (format!("sha256:{hex}0"), "got 65"),
            (format!("sha256:{hex}\n"), "got 65"),
            (
                format!("sha256:{}", hex.to_uppercase()),
                "invalid character 'E'",
            ),
            (
                format!("sha256:{}g", &hex[1..]),
                "invalid character 'g' at position 63",
            ),
            ("sha256:".to_string(), "got 0"),
        ];
        for (input, want) in cases {
            let err = input.parse::<Digest>().unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn serde_text_is_the_registry_string_and_binary_is_compact() {
        // sha256's encoding predates sha512 and must not change: variant 0, 32 bytes.
        let d = Digest::sha256_of(b"abc");
        let bin = postcard::to_allocvec(&d).unwrap();
        assert_eq!(bin.len(), 33);
        assert_eq!(bin[0], 0);
        assert_eq!(&bin[1..], d.hash_bytes());
        assert_eq!(postcard::from_bytes::<Digest>(&bin).unwrap(), d);
        // sha512: variant 1, 64 bytes.
        let d = Digest::of(DigestAlgorithm::Sha512, b"abc");
        let bin = postcard::to_allocvec(&d).unwrap();
        assert_eq!(bin.len(), 65);
        assert_eq!(bin[0], 1);
        assert_eq!(&bin[1..], d.hash_bytes());
        assert_eq!(postcard::from_bytes::<Digest>(&bin).unwrap(), d);
        assert!(postcard::from_bytes::<Digest>(&bin[..64]).is_err());
        // Text formats carry the registry string.
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    /// FIPS 180-2 appendix C.1 ("abc") and C.3 (a million 'a').
    const SHA512_ABC: &str = "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                              2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";
    const SHA512_MILLION_A: &str = "sha512:e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973eb\
                                    de0ff244877ea60a4cb0432ce577c31beb009c5c2c49aa2e4eadb217ad8cc09b";

    #[test]
    fn sha512_follows_the_fips_test_vectors() {
        let abc: Digest = SHA512_ABC.parse().unwrap();
        assert_eq!(abc.algorithm(), DigestAlgorithm::Sha512);
        assert_eq!(abc.to_string(), SHA512_ABC);
        assert_eq!(Digest::of(DigestAlgorithm::Sha512, b"abc"), abc);
        assert!(abc.matches(b"abc") && !abc.matches(b"abd"));
        let mut h = abc.hasher();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), abc);
        let million = vec![b'a'; 1_000_000];
        let (d, n) = Digest::of_reader(DigestAlgorithm::Sha512, million.as_slice()).unwrap();
        assert_eq!((d.to_string().as_str(), n), (SHA512_MILLION_A, 1_000_000));
        // sha256 of "abc" (FIPS 180-2 B.1) is still the default's.
        assert_eq!(
            Digest::of(DigestAlgorithm::default(), b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            "sha512".parse::<DigestAlgorithm>().unwrap(),
            DigestAlgorithm::Sha512
        );
        assert!("md5".parse::<DigestAlgorithm>().is_err());
        assert_eq!(DigestAlgorithm::Sha512.hash_len(), 64);
    }

    #[test]
    fn sha512_rejects_non_canonical_forms() {
        let hex = &SHA512_ABC[7..];
        for (input, want) in [
            (format!("sha512:{}", &hex[1..]), "got 127"),
            (format!("sha512:{hex}0"), "got 129"),
            (
                format!("sha512:{}", hex.to_uppercase()),
                "invalid character",
            ),
            (
                format!("sha256:{hex}"),
                "sha256 digest must have 64 hex characters, got 128",
            ),
        ] {
            let err = input.parse::<Digest>().unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn readers_hash_like_their_bytes() {
        // More than one read's worth, not a multiple of it: the tail counts too.
        let bytes: Vec<u8> = (0..HASH_READ_LEN * 2 + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        let (digest, n) = Digest::of_reader(DigestAlgorithm::Sha256, bytes.as_slice()).unwrap();
        assert_eq!((digest, n), (Digest::sha256_of(&bytes), bytes.len() as u64));
        let (empty, n) = Digest::of_reader(DigestAlgorithm::Sha256, io::empty()).unwrap();
        assert_eq!((empty.to_string().as_str(), n), (EMPTY, 0));
    }

    #[test]
    fn the_hasher_is_a_writer() {
        use std::io::Write;
        let mut hasher = DigestHasher::new(DigestAlgorithm::Sha256);
        hasher.write_all(b"hello ").unwrap();
        write!(hasher, "world").unwrap();
        hasher.flush().unwrap();
        assert_eq!(hasher.finish(), Digest::sha256_of(b"hello world"));
    }

    #[test]
    fn read_errors_reach_the_caller() {
        struct Broken;
        impl io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let e = Digest::of_reader(DigestAlgorithm::Sha256, Broken).unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
    }

    proptest! {
        #[test]
        fn round_trips(bytes in any::<[u8; 32]>()) {
            let d = Digest::Sha256(bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
            let bin = postcard::to_allocvec(&d).unwrap();
            prop_assert_eq!(postcard::from_bytes::<Digest>(&bin).unwrap(), d);
        }

        #[test]
        fn sha512_round_trips(bytes in proptest::collection::vec(any::<u8>(), 64)) {
            let d = Digest::Sha512(bytes.try_into().unwrap());
            prop_assert_eq!(d.to_string().len(), 7 + 128);
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
            let bin = postcard::to_allocvec(&d).unwrap();
            prop_assert_eq!(postcard::from_bytes::<Digest>(&bin).unwrap(), d);
        }

        #[test]
        fn both_algorithms_hash_like_their_reference(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            for algorithm in DigestAlgorithm::ALL {
                let (d, _) = Digest::of_reader(algorithm, data.as_slice()).unwrap();
                prop_assert_eq!(d, Digest::of(algorithm, &data));
                prop_assert_eq!(d.algorithm(), algorithm);
                prop_assert!(d.matches(&data));
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".*") {
            let _ = s.parse::<Digest>();
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..130)) {
            let _ = postcard::from_bytes::<Digest>(&b);
        }
    }
}
