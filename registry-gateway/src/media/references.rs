//! What a manifest references: the blobs and child manifests a tag depends on.
//!
//! The four manifest kinds the registry world uses — Docker schema2 manifest and manifest
//! list, OCI image manifest and image index — plus the OCI 1.1 `subject` field. Anything
//! that is not one of them is a plain blob with no references: the build index follows
//! references only through documents it recognises, and a malformed field makes a
//! document unrecognised rather than refused (the push checks are `Manifest::parse`'s).
//! A reference whose digest does not parse is an error: a tag must not point at a manifest
//! the cluster cannot resolve.

use kraken_storage::Digest;
use serde_json::Value;

use super::{Document, Kind, MAX_MANIFEST_LEN, ManifestError, parse_digest};

/// What one manifest references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct References {
    /// Image or index.
    pub kind: Kind,
    /// The media type it declares (or was recognised as).
    pub media_type: String,
    /// Blobs (config, layers but foreign ones with `urls`) that must exist.
    pub blobs: Vec<Digest>,
    /// Manifests (children of an index) that must exist, and whose own references must
    /// exist too.
    pub manifests: Vec<Digest>,
    /// The manifest the OCI 1.1 `subject` names: not a dependency (it need not exist).
    pub subject: Option<Digest>,
}

/// The fields references are read from, each checked for its type: absent and `null` are
/// `None`, any other type makes the document unrecognised.
struct Outline<'a> {
    schema_version: Option<u64>,
    media_type: Option<&'a str>,
    config: Option<&'a str>,
    /// Layers' digests, without the foreign layers that carry `urls`.
    layers: Option<Vec<&'a str>>,
    manifests: Option<Vec<&'a str>>,
    subject: Option<&'a str>,
}

/// `Some(None)` when `v` is absent or `null`, `Some(Some(_))` when `read` accepts it,
/// `None` when it is of another type.
fn optional<'a, T>(
    v: Option<&'a Value>,
    read: impl Fn(&'a Value) -> Option<T>,
) -> Option<Option<T>> {
    match v {
        None | Some(Value::Null) => Some(None),
        Some(v) => read(v).map(Some),
    }
}

/// The digest a descriptor names, as written.
fn digest_of(v: &Value) -> Option<&str> {
    v.as_object()?.get("digest")?.as_str()
}

fn digests_of(v: &Value) -> Option<Vec<&str>> {
    v.as_array()?.iter().map(digest_of).collect()
}

/// Whether a layer descriptor is a foreign layer with `urls` (see [`super::is_foreign`]).
fn is_external(v: &Value) -> bool {
    v.get("mediaType")
        .and_then(Value::as_str)
        .is_some_and(super::is_foreign)
        && v.get("urls")
            .and_then(Value::as_array)
            .is_some_and(|u| !u.is_empty())
}

/// The digests of the layers the cluster must hold.
fn layer_digests_of(v: &Value) -> Option<Vec<&str>> {
    let all = digests_of(v)?;
    let layers = v.as_array()?;
    Some(
        all.into_iter()
            .zip(layers)
            .filter(|(_, l)| !is_external(l))
            .map(|(d, _)| d)
            .collect(),
    )
}

impl<'a> Outline<'a> {
    fn read(doc: &'a Document) -> Option<Outline<'a>> {
        Some(Outline {
            schema_version: optional(doc.get("schemaVersion"), |v| {
                v.as_u64().filter(|n| u32::try_from(*n).is_ok())
            })?,
            media_type: optional(doc.get("mediaType"), Value::as_str)?,
            config: optional(doc.get("config"), digest_of)?,
            layers: optional(doc.get("layers"), layer_digests_of)?,
            manifests: optional(doc.get("manifests"), digests_of)?,
            subject: optional(doc.get("subject"), digest_of)?,
        })
    }

    /// Image or index, by `mediaType`, else by shape (OCI allows omitting it).
    fn kind(&self) -> Option<Kind> {
        match (self.media_type, &self.manifests, &self.layers) {
            (Some(t), _, _) => Kind::of(t),
            (None, Some(_), None) => Some(Kind::Index),
            (None, None, Some(_)) => Some(Kind::Image),
            _ => None,
        }
    }
}

/// The references of `bytes` if it is a manifest or index; `Ok(None)` for any other blob.
pub fn references(bytes: &[u8]) -> Result<Option<References>, ManifestError> {
    if bytes.len() as u64 > MAX_MANIFEST_LEN || bytes.first() != Some(&b'{') {
        return Ok(None);
    }
    let Ok(doc) = Document::parse(bytes) else {
        return Ok(None);
    };
    let Some(outline) = Outline::read(&doc) else {
        return Ok(None);
    };
    if outline.schema_version != Some(2) {
        return Ok(None);
    }
    let Some(kind) = outline.kind() else {
        return Ok(None);
    };
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    match kind {
        Kind::Image => {
            if let Some(c) = outline.config {
                blobs.push(parse_digest("config", c)?);
            }
            for l in outline.layers.iter().flatten() {
                blobs.push(parse_digest("layers", l)?);
            }
        }
        Kind::Index => {
            for m in outline.manifests.iter().flatten() {
                manifests.push(parse_digest("manifests", m)?);
            }
        }
    }
    let subject = outline
        .subject
        .map(|s| parse_digest("subject", s))
        .transpose()?;
    Ok(Some(References {
        kind,
        media_type: outline
            .media_type
            .map_or_else(|| kind.oci_default().to_string(), str::to_string),
        blobs,
        manifests,
        subject,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
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
        // The subject is reported apart: it is no dependency.
        assert_eq!(r.manifests, [Digest::sha256_of(&[4])]);
        assert_eq!(r.subject, Some(Digest::sha256_of(&[5])));

        // No mediaType: recognised by shape.
        let bare = format!(
            r#"{{"schemaVersion":2,"layers":[{{"digest":"{}"}}]}}"#,
            d(6)
        );
        let r = references(bare.as_bytes()).unwrap().unwrap();
        assert_eq!((r.kind, r.media_type.as_str()), (Kind::Image, OCI_MANIFEST));
        let bare = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}"}}],"layers":null}}"#,
            d(7)
        );
        let r = references(bare.as_bytes()).unwrap().unwrap();
        assert_eq!((r.kind, r.media_type.as_str()), (Kind::Index, OCI_INDEX));
    }

    #[test]
    fn foreign_layers_with_urls_are_no_dependencies() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}"}},"layers":[
              {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{}","urls":["https://example.com/l"]}},
              {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{}"}},
              {{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","urls":["https://example.com/l"]}}]}}"#,
            d(1),
            d(2),
            d(3),
            d(4)
        );
        let r = references(m.as_bytes()).unwrap().unwrap();
        let want: Vec<Digest> = [1u8, 3, 4]
            .iter()
            .map(|n| Digest::sha256_of(&[*n]))
            .collect();
        // Without urls a foreign layer has nowhere else to come from; a distributable
        // layer with urls is still the cluster's.
        assert_eq!(r.blobs, want);
        assert_eq!(r.subject, None);
    }

    #[test]
    fn other_blobs_have_no_references_and_bad_digests_are_errors() {
        assert_eq!(references(b"\x1f\x8b gzip layer").unwrap(), None);
        assert_eq!(references(b"{\"not\":\"a manifest\"}").unwrap(), None);
        assert_eq!(references(b"{ truncated").unwrap(), None);
        let bad = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{"digest":"sha256:nothex"}]}"#;
        assert!(matches!(
            references(bad.as_bytes()),
            Err(ManifestError::BadDigest {
                field: "layers",
                ..
            })
        ));
    }

    #[test]
    fn unrecognised_documents_are_plain_blobs() {
        let l = d(1);
        for doc in [
            // Artifacts and other versions.
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/x.sig","layers":[{{"digest":"{l}"}}]}}"#
            ),
            format!(r#"{{"schemaVersion":1,"layers":[{{"digest":"{l}"}}]}}"#),
            // Ambiguous or missing shape.
            r#"{"schemaVersion":2,"layers":[],"manifests":[]}"#.to_string(),
            format!(r#"{{"schemaVersion":2,"config":{{"digest":"{l}"}}}}"#),
            // A field of the wrong type.
            format!(r#"{{"schemaVersion":"2","layers":[{{"digest":"{l}"}}]}}"#),
            r#"{"schemaVersion":2,"mediaType":7,"layers":[]}"#.to_string(),
            r#"{"schemaVersion":2,"layers":[{"size":1}]}"#.to_string(),
            format!(r#"{{"schemaVersion":2,"layers":{{"digest":"{l}"}}}}"#),
            format!(r#"{{"schemaVersion":2,"layers":[],"subject":"{l}"}}"#),
        ] {
            assert_eq!(references(doc.as_bytes()).unwrap(), None, "{doc}");
        }
        // Too large to be a manifest, however well-formed.
        let mut big =
            format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{l}"}}],"pad":""#).into_bytes();
        big.resize(MAX_MANIFEST_LEN as usize, b'x');
        big.extend_from_slice(b"\"}");
        assert_eq!(references(&big).unwrap(), None);
        big.truncate(big.len() - 100);
        big.extend_from_slice(b"\"}");
        assert!(references(&big).unwrap().is_some());
    }
}
