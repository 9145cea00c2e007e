//! The referrers API's answer: an OCI index of the manifests that name a `subject`.
//!
//! The cluster keeps the list (`Registry::put_referrer` on a manifest PUT with a
//! `subject`, `Registry::referrers` to read it); this module makes the descriptors it lists
//! ([`descriptor`]) and the index served from them, filtered by `artifactType` when asked
//! ([`index_of`]). No `sha256-<hex>` "referrers tag schema" tag is created any more (they
//! showed in `tags/list`, `_catalog` and `crane ls`); one left by an older version is still
//! read ([`legacy_entries`]) and merged into the answer.

use kraken_storage::Digest;
use serde_json::{Map, Value, json};

use crate::media::{Manifest, OCI_INDEX};

/// The tag under which older versions kept `subject`'s referrers index (`<algorithm>-<hex>`,
/// the hex cut to 64 characters as the referrers tag schema says: a whole sha512 would make
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

/// The descriptors listed in an index kept by an older version under [`referrers_tag`]
/// (empty if it is not one).
pub(crate) fn legacy_entries(index: &[u8]) -> Vec<Value> {
    serde_json::from_slice::<Value>(index)
        .ok()
        .and_then(|v| v.get("manifests").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.get("digest").and_then(Value::as_str).is_some())
        .collect()
}

/// The descriptors the cluster lists (JSON objects with a `digest`; anything else is
/// skipped), then those of `legacy` it does not list.
pub(crate) fn merge(listed: &[String], legacy: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = listed
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|d| d.get("digest").and_then(Value::as_str).is_some())
        .collect();
    for d in legacy {
        if !out.iter().any(|o| o.get("digest") == d.get("digest")) {
            out.push(d);
        }
    }
    out
}

/// The index listing `descriptors`, only those of `artifact_type` when given.
pub(crate) fn index_of(descriptors: Vec<Value>, artifact_type: Option<&str>) -> Vec<u8> {
    let list: Vec<Value> = descriptors
        .into_iter()
        .filter(|d| {
            artifact_type.is_none_or(|t| d.get("artifactType").and_then(Value::as_str) == Some(t))
        })
        .collect();
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": list,
    })
    .to_string()
    .into_bytes()
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
            required: Vec::new(),
        }
    }

    #[test]
    fn merges_without_duplicates_and_filters() {
        let d1 = Digest::sha256_of(b"1");
        let d2 = Digest::sha256_of(b"2");
        let listed = vec![
            descriptor(&manifest("application/x.sig"), &d1, 10).to_string(),
            "not json".to_string(),
        ];
        let legacy = legacy_entries(&index_of(
            vec![
                descriptor(&manifest("application/x.sig"), &d1, 10),
                descriptor(&manifest("application/x.sbom"), &d2, 20),
            ],
            None,
        ));
        let all = merge(&listed, legacy);
        assert_eq!(all.len(), 2);
        let v: Value = serde_json::from_slice(&index_of(all.clone(), None)).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(v["mediaType"], OCI_INDEX);
        let sigs: Value =
            serde_json::from_slice(&index_of(all, Some("application/x.sig"))).unwrap();
        assert_eq!(sigs["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(sigs["manifests"][0]["digest"], d1.to_string());
    }

    #[test]
    fn legacy_tag_schema_and_garbage() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(referrers_tag(&d), format!("sha256-{}", d.hex()));
        assert!(legacy_entries(b"garbage").is_empty());
        let d = Digest::of(kraken_storage::DigestAlgorithm::Sha512, b"x");
        let tag = referrers_tag(&d);
        assert_eq!(tag, format!("sha512-{}", &d.hex()[..64]));
        crate::names::validate_tag(&tag).unwrap();
    }
}
