//! `KeyLayout`: where a blob lives inside a backend, and how to recognise blob keys when
//! listing.
//!
//! Keys are relative to the service's root (the bucket prefix or directory), so the
//! same layout works under any root.
//!
//! - [`KeyLayout::Docker`] (the default) is the key scheme of the CNCF distribution
//!   registry's storage drivers: `docker/registry/v2/blobs/sha256/<first 2 hex>/<hex>/data`.
//!   Pointing a backend at an existing registry bucket (with the registry's
//!   `rootdirectory` as `root`) makes every blob the registry holds readable, and blobs
//!   written here are readable by the registry.
//! - [`KeyLayout::Plain`] is a flat, shorter scheme for buckets only this system uses:
//!   `blobs/sha256/<hex>`.

use serde::{Deserialize, Serialize};

use crate::Digest;

/// How blob keys are laid out in a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyLayout {
    /// `docker/registry/v2/blobs/<algorithm>/<first 2 hex>/<hex>/data`, as written by the
    /// Docker/CNCF distribution registry.
    #[default]
    Docker,
    /// `blobs/<algorithm>/<hex>`.
    Plain,
}

const DOCKER_PREFIX: &str = "docker/registry/v2/blobs/";
const PLAIN_PREFIX: &str = "blobs/";

impl KeyLayout {
    /// The key of `digest`'s bytes.
    pub fn key(self, digest: &Digest) -> String {
        let algorithm = digest.algorithm().name();
        let hex = digest.hex();
        match self {
            KeyLayout::Docker => format!("{DOCKER_PREFIX}{algorithm}/{}/{hex}/data", &hex[..2]),
            KeyLayout::Plain => format!("{PLAIN_PREFIX}{algorithm}/{hex}"),
        }
    }

    /// The prefix (ending in `/`) under which every blob key of this layout lies.
    pub fn prefix(self) -> &'static str {
        match self {
            KeyLayout::Docker => DOCKER_PREFIX,
            KeyLayout::Plain => PLAIN_PREFIX,
        }
    }

    /// The digest whose key is `key`, or `None` if `key` is not exactly a blob key of this
    /// layout (other registry files, temporary files, a wrong shard directory …).
    pub fn parse_key(self, key: &str) -> Option<Digest> {
        let rest = key.strip_prefix(self.prefix())?;
        let (algorithm, rest) = rest.split_once('/')?;
        let hex = match self {
            KeyLayout::Docker => {
                let (shard, rest) = rest.split_once('/')?;
                let hex = rest.strip_suffix("/data")?;
                if shard.len() != 2 || !hex.starts_with(shard) {
                    return None;
                }
                hex
            }
            KeyLayout::Plain => rest,
        };
        let digest: Digest = format!("{algorithm}:{hex}").parse().ok()?;
        // Reject anything that does not round-trip (extra slashes and the like).
        (self.key(&digest) == key).then_some(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn digest() -> Digest {
        Digest::sha256_of(b"")
    }

    #[test]
    fn docker_layout_matches_the_registry() {
        assert_eq!(
            KeyLayout::Docker.key(&digest()),
            format!("docker/registry/v2/blobs/sha256/e3/{HEX}/data")
        );
        assert_eq!(KeyLayout::default(), KeyLayout::Docker);
    }

    #[test]
    fn plain_layout() {
        assert_eq!(
            KeyLayout::Plain.key(&digest()),
            format!("blobs/sha256/{HEX}")
        );
    }

    #[test]
    fn keys_round_trip() {
        for layout in [KeyLayout::Docker, KeyLayout::Plain] {
            let key = layout.key(&digest());
            assert!(key.starts_with(layout.prefix()));
            assert_eq!(layout.parse_key(&key), Some(digest()));
        }
    }

    #[test]
    fn foreign_keys_are_skipped() {
        let cases = [
            format!("docker/registry/v2/blobs/sha256/e4/{HEX}/data"),
            format!("docker/registry/v2/blobs/sha256/e3/{HEX}/data/"),
            format!("docker/registry/v2/blobs/sha256/e3/{HEX}"),
            format!("docker/registry/v2/blobs/sha512/e3/{HEX}/data"),
            format!("docker/registry/v2/repositories/library/_layers/sha256/{HEX}/link"),
            "docker/registry/v2/blobs/sha256/e3/e3/data".to_string(),
            "docker/registry/v2/blobs/".to_string(),
            format!("blobs/sha256/{HEX}"),
        ];
        for key in &cases {
            assert_eq!(KeyLayout::Docker.parse_key(key), None, "{key}");
        }
        let cases = [
            format!("blobs/sha256/{}", HEX.to_uppercase()),
            format!("blobs/sha256/{HEX}/data"),
            format!("blobs/sha256//{HEX}"),
            format!("blobs/{HEX}"),
            format!("docker/registry/v2/blobs/sha256/e3/{HEX}/data"),
        ];
        for key in &cases {
            assert_eq!(KeyLayout::Plain.parse_key(key), None, "{key}");
        }
    }

    #[test]
    fn parses_from_toml() {
        #[derive(Deserialize)]
        struct T {
            layout: KeyLayout,
        }
        let t: T = toml::from_str("layout = \"plain\"").expect("plain parses");
        assert_eq!(t.layout, KeyLayout::Plain);
        assert!(toml::from_str::<T>("layout = \"flat\"").is_err());
    }
}
