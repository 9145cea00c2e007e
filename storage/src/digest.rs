//! `Digest`: the registry's name for a blob, `sha256:<64 lower-case hex>`.
//!
//! Parsing follows the OCI distribution spec's canonical form strictly: one known
//! algorithm, a colon, exactly the algorithm's hex length in lower case, nothing after.
//! The type is an enum over algorithms so `sha512:` can be added without touching callers.

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
}

/// The hash algorithm of a [`Digest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    /// `sha256`, the only algorithm registries require.
    Sha256,
}

impl DigestAlgorithm {
    /// The name used before the colon.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
        }
    }

    /// Length of the encoded hash in hex characters.
    pub fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(DigestAlgorithm::Sha256),
            _ => None,
        }
    }
}

/// Why a string is not a valid digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `:` between algorithm and hash.
    #[error("digest {0:?} has no ':' between algorithm and hash")]
    MissingSeparator(String),
    /// The algorithm is not one we support.
    #[error("unsupported digest algorithm {0:?} (supported: sha256)")]
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

    /// The algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self {
            Digest::Sha256(_) => DigestAlgorithm::Sha256,
        }
    }

    /// The raw hash bytes.
    pub fn hash_bytes(&self) -> &[u8] {
        match self {
            Digest::Sha256(h) => h,
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
        let mut out = [0u8; 32];
        // Cannot fail: length and alphabet were checked above.
        hex::decode_to_slice(hash, &mut out).map_err(|_| DigestError::WrongLength {
            algorithm: algorithm.name(),
            expected: algorithm.hex_len(),
            actual: hash.len(),
        })?;
        Ok(Digest::Sha256(out))
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
            }
            Ok(match Raw::deserialize(d)? {
                Raw::Sha256(h) => Digest::Sha256(h),
            })
        }
    }
}

/// Incremental hasher producing a [`Digest`]. It is an [`io::Write`] too, so `io::copy`
/// (or any writer adapter) can feed it.
#[derive(Clone)]
pub enum DigestHasher {
    /// SHA-256 state.
    Sha256(sha2::Sha256),
}

impl DigestHasher {
    /// A hasher for `algorithm`.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => DigestHasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            DigestHasher::Sha256(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        match self {
            DigestHasher::Sha256(h) => Digest::Sha256(h.finalize().into()),
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
            (format!("sha512:{hex}"), "unsupported digest algorithm"),
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
        let d = Digest::sha256_of(b"abc");
        let bin = postcard::to_allocvec(&d).unwrap();
        assert_eq!(bin.len(), 33);
        assert_eq!(postcard::from_bytes::<Digest>(&bin).unwrap(), d);
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
        fn arbitrary_strings_never_panic(s in ".*") {
            let _ = s.parse::<Digest>();
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = postcard::from_bytes::<Digest>(&b);
        }
    }
}
