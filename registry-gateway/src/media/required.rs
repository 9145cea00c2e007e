//! What must exist in the cluster before a pushed manifest is stored.
//!
//! Every blob descriptor (an image's `config` and `layers`, an artifact's `blobs`) and every
//! child manifest of an index, each with the size it claims. Not the `subject`: the
//! specification lets a referrer be pushed before the manifest it refers to. Not a
//! non-distributable ("foreign") layer that carries `urls`: clients fetch it from there, so
//! the cluster never holds it ([`is_foreign`]). The gateway checks this list before it stores
//! anything (a refused manifest leaves no trace); the build index's deep check of a tag
//! follows the same rules through [`super::references`].

use kraken_storage::Digest;
use serde_json::Value;

use super::{Document, Kind, is_foreign, parse_digest};

/// One descriptor whose blob must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Required {
    /// The field that names it (`config`, `layers`, `blobs`, `manifests`).
    pub(crate) field: &'static str,
    /// The blob (or child manifest).
    pub(crate) digest: Digest,
    /// The size the descriptor claims, if it gives one.
    pub(crate) size: Option<u64>,
}

/// Whether the descriptor is a foreign layer the cluster need not hold.
fn is_external(d: &Value) -> bool {
    let media_type = d.get("mediaType").and_then(Value::as_str);
    let has_urls = d
        .get("urls")
        .and_then(Value::as_array)
        .is_some_and(|u| !u.is_empty());
    has_urls && media_type.is_some_and(is_foreign)
}

/// Adds the descriptor `d` of `field` unless it is a foreign layer; a descriptor that does
/// not parse is skipped (`Manifest::parse` has refused those already).
fn push(out: &mut Vec<Required>, field: &'static str, d: &Value) {
    if is_external(d) {
        return;
    }
    let Some(Ok(digest)) = d
        .get("digest")
        .and_then(Value::as_str)
        .map(|s| parse_digest(field, s))
    else {
        return;
    };
    out.push(Required {
        field,
        digest,
        size: d.get("size").and_then(Value::as_u64),
    });
}

/// What a manifest of `media_type` (already checked by `Manifest::parse`) needs to exist.
pub(crate) fn required(doc: &Document, media_type: &str) -> Vec<Required> {
    let fields: &[&'static str] = match Kind::of(media_type) {
        Some(Kind::Index) => &["manifests"],
        Some(Kind::Image) => &["config", "layers"],
        // Artifacts: whatever descriptors they carry.
        None => &["config", "layers", "blobs", "manifests"],
    };
    let mut out = Vec::new();
    for &field in fields {
        match doc.get(field) {
            Some(Value::Array(items)) => items.iter().for_each(|d| push(&mut out, field, d)),
            Some(d @ Value::Object(_)) => push(&mut out, field, d),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn of(json: &str, media_type: &str) -> Vec<Required> {
        required(&Document::parse(json.as_bytes()).unwrap(), media_type)
    }

    #[test]
    fn images_need_config_and_layers_but_not_subject_or_foreign_layers() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":2}},"layers":[
              {{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":5}},
              {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{}","size":7,"urls":["https://example.com/l"]}},
              {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{}","size":7}}],
              "subject":{{"digest":"{}","size":9}}}}"#,
            d(1),
            d(2),
            d(3),
            d(4),
            d(5)
        );
        let r = of(&m, super::super::OCI_MANIFEST);
        let got: Vec<_> = r.iter().map(|r| (r.field, r.digest, r.size)).collect();
        assert_eq!(
            got,
            [
                ("config", d(1), Some(2)),
                ("layers", d(2), Some(5)),
                // A foreign layer without urls has nowhere else to come from.
                ("layers", d(4), Some(7)),
            ]
        );
    }

    #[test]
    fn indexes_need_their_children_and_artifacts_their_blobs() {
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":3}}],"subject":{{"digest":"{}"}}}}"#,
            d(1),
            d(2)
        );
        let r = of(&i, super::super::OCI_INDEX);
        assert_eq!((r.len(), r[0].field, r[0].digest), (1, "manifests", d(1)));
        let a = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/x.art","blobs":[{{"digest":"{}"}}]}}"#,
            d(3)
        );
        let r = of(&a, "application/x.art");
        assert_eq!((r.len(), r[0].field, r[0].size), (1, "blobs", None));
    }
}
