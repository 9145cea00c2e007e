//! What a manifest references: the blobs and child manifests a tag depends on.
//!
//! Pure parsing of the four manifest kinds the registry world uses — Docker schema2
//! manifest and manifest list, OCI image manifest and image index — plus the OCI 1.1
//! `subject` field. Anything that is not one of them is a plain blob with no references.
//! A reference whose digest does not parse is an error: a tag must not point at a manifest
//! the cluster cannot resolve.

use kraken_storage::Digest;
use serde::Deserialize;

/// Manifests larger than this are not parsed (registries cap them at 4 MiB too).
pub const MAX_MANIFEST_LEN: u64 = 4 << 20;

/// Docker schema2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The kind of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image manifest (Docker schema2 or OCI): config + layers.
    Image,
    /// An index (Docker manifest list or OCI index): child manifests.
    Index,
}

/// What one manifest references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct References {
    /// Image or index.
    pub kind: Kind,
    /// The media type it declares (or was recognised as).
    pub media_type: String,
    /// Blobs (config, layers) that must exist.
    pub blobs: Vec<Digest>,
    /// Manifests (children of an index, and the `subject`) that must exist, and whose own
    /// references must exist too.
    pub manifests: Vec<Digest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

/// Why a manifest's references could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// A referenced digest is malformed.
    #[error("manifest references an invalid digest {digest:?}: {reason}")]
    BadDigest {
        /// As written.
        digest: String,
        /// Why it does not parse.
        reason: String,
    },
}

fn parse_digest(d: &Descriptor) -> Result<Digest, ManifestError> {
    d.digest
        .parse()
        .map_err(|e: kraken_storage::DigestError| ManifestError::BadDigest {
            digest: d.digest.clone(),
            reason: e.to_string(),
        })
}

/// The references of `bytes` if it is a manifest or index; `Ok(None)` for any other blob.
pub fn references(bytes: &[u8]) -> Result<Option<References>, ManifestError> {
    if bytes.len() as u64 > MAX_MANIFEST_LEN || bytes.first() != Some(&b'{') {
        return Ok(None);
    }
    let Ok(doc) = serde_json::from_slice::<Doc>(bytes) else {
        return Ok(None);
    };
    if doc.schema_version != Some(2) {
        return Ok(None);
    }
    let declared = doc.media_type.clone();
    let kind = match (declared.as_deref(), &doc.manifests, &doc.layers) {
        (Some(DOCKER_MANIFEST_LIST | OCI_INDEX), _, _) => Kind::Index,
        (Some(DOCKER_MANIFEST | OCI_MANIFEST), _, _) => Kind::Image,
        // OCI allows omitting mediaType: recognise by shape.
        (None, Some(_), None) => Kind::Index,
        (None, None, Some(_)) => Kind::Image,
        _ => return Ok(None),
    };
    let media_type = declared.unwrap_or_else(|| match kind {
        Kind::Index => OCI_INDEX.to_string(),
        Kind::Image => OCI_MANIFEST.to_string(),
    });
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    match kind {
        Kind::Image => {
            if let Some(c) = &doc.config {
                blobs.push(parse_digest(c)?);
            }
            for l in doc.layers.iter().flatten() {
                blobs.push(parse_digest(l)?);
            }
        }
        Kind::Index => {
            for m in doc.manifests.iter().flatten() {
                manifests.push(parse_digest(m)?);
            }
        }
    }
    if let Some(s) = &doc.subject {
        manifests.push(parse_digest(s)?);
    }
    Ok(Some(References {
        kind,
        media_type,
        blobs,
        manifests,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        Digest::sha256_of(&[n]).to_string()
    }

    #[test]
    fn docker_and_oci_manifests_and_indexes() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"{}","size":1}},"layers":[{{"digest":"{}"}},{{"digest":"{}"}}]}}"#,
            d(1),
            d(2),
            d(3)
        );
        let r = references(m.as_bytes()).unwrap().unwrap();
        assert_eq!(r.kind, Kind::Image);
        assert_eq!(r.blobs.len(), 3);
        assert!(r.manifests.is_empty());

        let i = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"digest":"{}"}}],"subject":{{"digest":"{}"}}}}"#,
            d(4),
            d(5)
        );
        let r = references(i.as_bytes()).unwrap().unwrap();
        assert_eq!(r.kind, Kind::Index);
        assert_eq!(r.manifests.len(), 2);

        // No mediaType: recognised by shape.
        let bare = format!(
            r#"{{"schemaVersion":2,"layers":[{{"digest":"{}"}}]}}"#,
            d(6)
        );
        let r = references(bare.as_bytes()).unwrap().unwrap();
        assert_eq!((r.kind, r.media_type.as_str()), (Kind::Image, OCI_MANIFEST));
    }

    #[test]
    fn other_blobs_have_no_references_and_bad_digests_are_errors() {
        assert_eq!(references(b"\x1f\x8b gzip layer").unwrap(), None);
        assert_eq!(references(b"{\"not\":\"a manifest\"}").unwrap(), None);
        assert_eq!(references(b"{ truncated").unwrap(), None);
        let bad = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{"digest":"sha256:nothex"}]}"#;
        assert!(matches!(
            references(bad.as_bytes()),
            Err(ManifestError::BadDigest { .. })
        ));
    }
}
