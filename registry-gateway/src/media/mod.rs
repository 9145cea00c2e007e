//! Manifests: their media types, and the one parser of their JSON.
//!
//! The cluster stores manifests as plain blobs, so whoever meets one works out what it is
//! from its bytes. [`Document`] parses the JSON once (an object, or not a manifest at all),
//! and three readers share it and the media-type constants below:
//! - [`content_type_of`], for pulls: the type a stored manifest is served with (the
//!   `mediaType` field, else the shape: `manifests` means an index, anything else a
//!   manifest);
//! - `Manifest::parse` (`push`), for pushes: the checks a pushed manifest must pass;
//! - [`references`] (`references`), for the build index: the blobs and child manifests a
//!   tag depends on;
//! - [`children`] (`children`), for preheat: the same references with their roles and
//!   the platforms of an index's entries;
//! - `required`, for pushes: the descriptors whose blobs must exist before a manifest is
//!   stored, with the sizes they claim.

mod children;
mod push;
mod references;
mod required;

use kraken_storage::{Digest, DigestError};
use serde_json::{Map, Value};

pub use children::{Child, ChildPlatform, ChildRole, children};
pub(crate) use push::Manifest;
pub use references::{References, references};
pub(crate) use required::Required;

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 (signed), only ever served, never accepted.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The media types of non-distributable ("foreign") layers: OCI's (deprecated but still
/// written) and Docker's.
pub const FOREIGN_LAYERS: [&str; 5] = [
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
];

/// Whether `media_type` is a non-distributable layer's: with `urls`, such a layer is
/// fetched from there, so neither a push nor a tag needs the cluster to hold it.
pub fn is_foreign(media_type: &str) -> bool {
    FOREIGN_LAYERS
        .iter()
        .any(|t| t.eq_ignore_ascii_case(media_type))
}

/// The largest manifest read by default (registries cap them at 4 MiB too): the gateway's
/// default push limit and the build index's limit for following references.
pub const MAX_MANIFEST_LEN: u64 = 4 << 20;

/// Why a manifest is refused, or its references cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON.
    #[error("manifest is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// JSON, but not an object.
    #[error("manifest is not a JSON object")]
    NotObject,
    /// `schemaVersion` missing or not 2.
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    /// `mediaType` and `Content-Type` disagree.
    #[error("manifest mediaType {media_type:?} does not match Content-Type {content_type:?}")]
    MediaTypeMismatch {
        /// The manifest's field.
        media_type: String,
        /// The request header.
        content_type: String,
    },
    /// A field is missing or malformed.
    #[error("manifest field {field}: {problem}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A descriptor names a digest that does not parse: a tag must not point at a
    /// manifest the cluster cannot resolve.
    #[error("manifest field {field}: invalid digest {digest:?}: {source}")]
    BadDigest {
        /// The descriptor's field.
        field: &'static str,
        /// As written.
        digest: String,
        /// Why it does not parse.
        source: DigestError,
    },
}

/// The kind of a manifest that references others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image manifest (Docker schema2 or OCI): config + layers.
    Image,
    /// An index (Docker manifest list or OCI index): child manifests.
    Index,
}

impl Kind {
    /// The kind a media type names; `None` for any other type (artifacts, schema 1).
    pub fn of(media_type: &str) -> Option<Kind> {
        match media_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Some(Kind::Index),
            OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Image),
            _ => None,
        }
    }

    /// The media type OCI implies for this kind when `mediaType` is omitted.
    fn oci_default(self) -> &'static str {
        match self {
            Kind::Index => OCI_INDEX,
            Kind::Image => OCI_MANIFEST,
        }
    }
}

/// Whether `s` looks like `type/subtype` made of token characters (safe as a header).
pub(crate) fn is_media_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 127
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    s.split_once('/').is_some_and(|(a, b)| token(a) && token(b))
}

/// A parsed manifest: its top-level JSON object.
#[derive(Debug)]
pub(crate) struct Document {
    obj: Map<String, Value>,
}

impl Document {
    /// Parses `bytes` as a JSON object.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Document, ManifestError> {
        match serde_json::from_slice(bytes).map_err(ManifestError::NotJson)? {
            Value::Object(obj) => Ok(Document { obj }),
            _ => Err(ManifestError::NotObject),
        }
    }

    /// A top-level field.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key)
    }

    /// `schemaVersion`, if a non-negative integer.
    pub(crate) fn schema_version(&self) -> Option<u64> {
        self.get("schemaVersion").and_then(Value::as_u64)
    }

    /// The media type by shape, for a manifest without `mediaType`.
    pub(crate) fn media_type_by_shape(&self) -> &'static str {
        if self.schema_version() == Some(1) {
            DOCKER_SCHEMA1_SIGNED
        } else if self.obj.contains_key("manifests") {
            OCI_INDEX
        } else {
            OCI_MANIFEST
        }
    }

    /// The `Content-Type` to serve this manifest with: a well-formed `mediaType`, else
    /// the type its shape implies.
    pub(crate) fn content_type(&self) -> String {
        match self.get("mediaType").and_then(Value::as_str) {
            Some(t) if is_media_type(t) => t.to_string(),
            _ => self.media_type_by_shape().to_string(),
        }
    }
}

/// The `Content-Type` to serve a stored manifest with; `None` if the bytes are not a JSON
/// object (so not a manifest).
pub(crate) fn content_type_of(bytes: &[u8]) -> Option<String> {
    Document::parse(bytes).ok().map(|d| d.content_type())
}

/// Parses the digest `written` in the descriptor `field`.
fn parse_digest(field: &'static str, written: &str) -> Result<Digest, ManifestError> {
    written.parse().map_err(|source| ManifestError::BadDigest {
        field,
        digest: written.to_string(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A valid digest (of the empty blob).
    pub(crate) const D: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// An image manifest with one layer, with `mediaType` `media` if given.
    pub(crate) fn image(media: Option<&str>) -> String {
        let mt = media
            .map(|m| format!(r#""mediaType":"{m}","#))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":0}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D}","size":0}}]}}"#
        )
    }

    #[test]
    fn content_type_from_field_or_shape() {
        assert_eq!(
            content_type_of(image(Some(DOCKER_MANIFEST)).as_bytes()).as_deref(),
            Some(DOCKER_MANIFEST)
        );
        assert_eq!(
            content_type_of(image(None).as_bytes()).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(
            content_type_of(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(
            content_type_of(br#"{"schemaVersion":1,"fsLayers":[]}"#).as_deref(),
            Some(DOCKER_SCHEMA1_SIGNED)
        );
        assert_eq!(
            content_type_of(br#"{"schemaVersion":2,"mediaType":"bad\nvalue"}"#).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(content_type_of(b"\x00\x01"), None);
        assert_eq!(content_type_of(b"[]"), None);
    }

    #[test]
    fn kinds_of_media_types() {
        assert_eq!(Kind::of(OCI_INDEX), Some(Kind::Index));
        assert_eq!(Kind::of(DOCKER_MANIFEST_LIST), Some(Kind::Index));
        assert_eq!(Kind::of(OCI_MANIFEST), Some(Kind::Image));
        assert_eq!(Kind::of(DOCKER_MANIFEST), Some(Kind::Image));
        assert_eq!(Kind::of(DOCKER_SCHEMA1_SIGNED), None);
        assert_eq!(Kind::of("application/x.sig"), None);
    }

    #[test]
    fn media_type_grammar() {
        assert!(is_media_type(OCI_MANIFEST));
        assert!(is_media_type("a/b"));
        assert!(!is_media_type("a"));
        assert!(!is_media_type("a/"));
        assert!(!is_media_type("a/b c"));
        assert!(!is_media_type(&format!("a/{}", "b".repeat(128))));
    }

    #[test]
    fn bad_digests_name_their_field() {
        let err = parse_digest("layers", "sha256:nothex").unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::BadDigest {
                    field: "layers",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("layers"), "{err}");
        assert_eq!(parse_digest("config", D).unwrap().to_string(), D);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), ct in ".{0,30}") {
            let _ = content_type_of(&bytes);
            let _ = Manifest::parse(&bytes, Some(&ct));
            let _ = references(&bytes);
        }
    }
}
