//! The referrers index, kept with the OCI "referrers tag schema".
//!
//! The cluster knows blobs and tags only, so the gateway keeps the list of manifests that
//! name a given `subject` as an OCI index stored like any manifest and tagged
//! `sha256-<hex of the subject>` in the same repository. A manifest PUT with a `subject`
//! adds its descriptor ([`add_referrer`]); `GET /v2/<name>/referrers/<digest>` serves the
//! index, filtered by `artifactType` when asked ([`filter_index`]). Indexes are rebuilt
//! from their parsed form, so a broken stored one is replaced rather than propagated.

use kraken_storage::Digest;
use serde_json::{Map, Value, json};

use crate::media::{Manifest, OCI_INDEX};

/// The tag under which `subject`'s referrers index lives: `<algorithm>-<hex>`, the hex
/// truncated to 64 characters as the referrers tag schema says (a whole sha512 would make
/// a 135-character tag, past the 128 a tag may have).
pub(crate) fn referrers_tag(subject: &Digest) -> String {
    let hex = subject.hex();
    format!(
        "{}-{}",
        subject.algorithm().name(),
        &hex[..hex.len().min(64)]
    )
}

/// The descriptor of a referrer manifest, as listed in the index.
pub(crate) fn descriptor(manifest: &Manifest, digest: &Digest, size: u64) -> Value {
    let mut d = Map::new();
    d.insert(
        "mediaType".into(),
        Value::String(manifest.media_type.clone()),
    );
    d.insert("digest".into(), Value::String(digest.to_string()));
    d.insert("size".into(), Value::from(size));
    if let Some(t) = &manifest.artifact_type {
        d.insert("artifactType".into(), Value::String(t.clone()));
    }
    if let Some(a) = &manifest.annotations {
        d.insert("annotations".into(), Value::Object(a.clone()));
    }
    Value::Object(d)
}

/// The descriptors listed in a stored index (empty if it is not one).
fn entries(index: Option<&[u8]>) -> Vec<Value> {
    index
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| v.get("manifests").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.get("digest").and_then(Value::as_str).is_some())
        .collect()
}

/// An index listing `manifests`.
fn index_of(manifests: Vec<Value>) -> Vec<u8> {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    })
    .to_string()
    .into_bytes()
}

/// An index with no referrers.
pub(crate) fn empty_index() -> Vec<u8> {
    index_of(Vec::new())
}

/// The index with `descriptor` added; `None` if it is already listed.
pub(crate) fn add_referrer(existing: Option<&[u8]>, descriptor: Value) -> Option<Vec<u8>> {
    let mut list = entries(existing);
    let digest = descriptor.get("digest").cloned();
    if list.iter().any(|d| d.get("digest") == digest.as_ref()) {
        return None;
    }
    list.push(descriptor);
    Some(index_of(list))
}

/// The stored index, normalised, keeping only descriptors of `artifact_type` when given.
pub(crate) fn filter_index(stored: &[u8], artifact_type: Option<&str>) -> Vec<u8> {
    let list = entries(Some(stored))
        .into_iter()
        .filter(|d| {
            artifact_type.is_none_or(|t| d.get("artifactType").and_then(Value::as_str) == Some(t))
        })
        .collect();
    index_of(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(t: &str) -> Manifest {
        Manifest {
            media_type: crate::media::OCI_MANIFEST.into(),
            subject: None,
            artifact_type: Some(t.into()),
            annotations: None,
        }
    }

    #[test]
    fn adds_without_duplicates_and_filters() {
        let d1 = Digest::sha256_of(b"1");
        let d2 = Digest::sha256_of(b"2");
        let idx = add_referrer(None, descriptor(&manifest("application/x.sig"), &d1, 10)).unwrap();
        assert!(
            add_referrer(
                Some(&idx),
                descriptor(&manifest("application/x.sig"), &d1, 10)
            )
            .is_none()
        );
        let idx = add_referrer(
            Some(&idx),
            descriptor(&manifest("application/x.sbom"), &d2, 20),
        )
        .unwrap();
        let all: Value = serde_json::from_slice(&filter_index(&idx, None)).unwrap();
        assert_eq!(all["manifests"].as_array().unwrap().len(), 2);
        let sigs: Value =
            serde_json::from_slice(&filter_index(&idx, Some("application/x.sig"))).unwrap();
        assert_eq!(sigs["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(sigs["manifests"][0]["digest"], d1.to_string());
        assert_eq!(sigs["mediaType"], OCI_INDEX);
    }

    #[test]
    fn tag_schema_and_garbage() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(referrers_tag(&d), format!("sha256-{}", d.hex()));
        let d = Digest::of(kraken_storage::DigestAlgorithm::Sha512, b"x");
        let tag = referrers_tag(&d);
        assert_eq!(tag, format!("sha512-{}", &d.hex()[..64]));
        crate::names::validate_tag(&tag).unwrap();
        crate::names::validate_tag(&referrers_tag(&d)).unwrap();
        let e: Value = serde_json::from_slice(&filter_index(b"garbage", None)).unwrap();
        assert_eq!(e["manifests"].as_array().unwrap().len(), 0);
    }
}
