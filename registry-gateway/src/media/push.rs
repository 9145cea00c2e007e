//! The checks a pushed manifest must pass.
//!
//! A JSON object, `schemaVersion` 2, a media type consistent with the request's
//! `Content-Type`, well-formed descriptors, and the `subject` / `artifactType` the
//! referrers API needs. What passes is summed up in [`Manifest`].

use kraken_storage::Digest;
use serde_json::{Map, Value};

use super::required::{Required, required};
use super::{DOCKER_MANIFEST, Document, Kind, ManifestError, is_media_type, parse_digest};

/// What the gateway needs to know about a pushed manifest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Manifest {
    /// The media type it is served with.
    pub(crate) media_type: String,
    /// The manifest it refers to, if any (`subject`).
    pub(crate) subject: Option<Digest>,
    /// `artifactType`, else the config's media type.
    pub(crate) artifact_type: Option<String>,
    /// `annotations`, if an object.
    pub(crate) annotations: Option<Map<String, Value>>,
    /// The blobs and child manifests that must exist before it is stored.
    pub(crate) required: Vec<Required>,
}

/// The essence (`type/subtype`, lower case) of a `Content-Type` value.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn field(field: &'static str, problem: &'static str) -> ManifestError {
    ManifestError::Field { field, problem }
}

/// Checks one descriptor: an object with a parseable `digest`, a `size` and a `mediaType`
/// if present.
fn descriptor(name: &'static str, v: &Value) -> Result<Digest, ManifestError> {
    let obj = v.as_object().ok_or_else(|| field(name, "not an object"))?;
    let digest = obj
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| field(name, "no digest"))?;
    let digest = parse_digest(name, digest)?;
    match obj.get("size") {
        Some(s) if s.as_u64().is_none() => {
            return Err(field(name, "size is not a non-negative integer"));
        }
        _ => {}
    }
    match obj.get("mediaType") {
        Some(t) if !t.as_str().is_some_and(is_media_type) => {
            return Err(field(name, "mediaType is not a media type"));
        }
        _ => {}
    }
    Ok(digest)
}

fn descriptors(doc: &Document, name: &'static str, required: bool) -> Result<(), ManifestError> {
    match doc.get(name) {
        None if required => Err(field(name, "missing")),
        None => Ok(()),
        Some(Value::Array(items)) => items
            .iter()
            .try_for_each(|d| descriptor(name, d).map(|_| ())),
        Some(_) => Err(field(name, "not an array")),
    }
}

/// An optional field that must be a media type when present.
fn media_type_field(doc: &Document, name: &'static str) -> Result<Option<String>, ManifestError> {
    match doc.get(name) {
        None => Ok(None),
        Some(Value::String(t)) if is_media_type(t) => Ok(Some(t.clone())),
        Some(_) => Err(field(name, "not a media type")),
    }
}

/// The media type a pushed manifest is served with: its `mediaType`, which must agree with
/// a specific `Content-Type`; else that header; else its shape.
fn media_type(doc: &Document, content_type: Option<&str>) -> Result<String, ManifestError> {
    let declared = media_type_field(doc, "mediaType")?;
    // A generic Content-Type says nothing about the manifest.
    let header = content_type
        .map(essence)
        .filter(|c| is_media_type(c) && c != "application/json" && c != "application/octet-stream");
    if let (Some(d), Some(h)) = (&declared, &header)
        && !d.eq_ignore_ascii_case(h)
    {
        return Err(ManifestError::MediaTypeMismatch {
            media_type: d.clone(),
            content_type: h.clone(),
        });
    }
    Ok(declared
        .or(header)
        .unwrap_or_else(|| doc.media_type_by_shape().to_string()))
}

/// Checks the descriptors a manifest of `media_type` must (or may) carry.
fn check_descriptors(doc: &Document, media_type: &str) -> Result<(), ManifestError> {
    match Kind::of(media_type) {
        Some(Kind::Index) => descriptors(doc, "manifests", true),
        Some(Kind::Image) => {
            descriptor(
                "config",
                doc.get("config")
                    .ok_or_else(|| field("config", "missing"))?,
            )?;
            descriptors(doc, "layers", media_type == DOCKER_MANIFEST)
        }
        None => {
            // Other artifacts: check what descriptors they carry.
            if let Some(c) = doc.get("config") {
                descriptor("config", c)?;
            }
            descriptors(doc, "layers", false)?;
            descriptors(doc, "manifests", false)?;
            descriptors(doc, "blobs", false)
        }
    }
}

impl Manifest {
    /// Validates a pushed manifest; `content_type` is the request's header, if any.
    pub(crate) fn parse(
        bytes: &[u8],
        content_type: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        let doc = Document::parse(bytes)?;
        if doc.schema_version() != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        let media_type = media_type(&doc, content_type)?;
        check_descriptors(&doc, &media_type)?;
        let subject = doc
            .get("subject")
            .map(|s| descriptor("subject", s))
            .transpose()?;
        let artifact_type = media_type_field(&doc, "artifactType")?;
        let config_type = doc
            .get("config")
            .and_then(|c| c.get("mediaType"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let annotations = match doc.get("annotations") {
            None | Some(Value::Null) => None,
            Some(Value::Object(a)) => {
                if a.values().any(|v| !v.is_string()) {
                    return Err(field("annotations", "values must be strings"));
                }
                Some(a.clone())
            }
            Some(_) => return Err(field("annotations", "not an object")),
        };
        Ok(Manifest {
            required: required(&doc, &media_type),
            media_type,
            subject,
            artifact_type: artifact_type.or(config_type),
            annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{D, image};
    use super::super::{OCI_MANIFEST, content_type_of};
    use super::*;

    #[test]
    fn accepts_consistent_manifests() {
        let m = Manifest::parse(image(Some(OCI_MANIFEST)).as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let m = Manifest::parse(image(None).as_bytes(), Some(DOCKER_MANIFEST)).unwrap();
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        let m = Manifest::parse(image(None).as_bytes(), Some("application/json")).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        // The header's parameters and case do not matter.
        let m = Manifest::parse(
            image(Some(OCI_MANIFEST)).as_bytes(),
            Some("Application/VND.oci.image.manifest.v1+json; charset=utf-8"),
        )
        .unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        // What is accepted is served with the type it was accepted as.
        assert_eq!(
            content_type_of(image(Some(OCI_MANIFEST)).as_bytes()).as_deref(),
            Some(OCI_MANIFEST)
        );
    }

    #[test]
    fn refuses_inconsistent_or_malformed() {
        assert!(matches!(
            Manifest::parse(image(Some(OCI_MANIFEST)).as_bytes(), Some(DOCKER_MANIFEST)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            Manifest::parse(b"{", None),
            Err(ManifestError::NotJson(_))
        ));
        assert!(matches!(
            Manifest::parse(b"1", None),
            Err(ManifestError::NotObject)
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":1}"#, None),
            Err(ManifestError::SchemaVersion)
        ));
        assert!(matches!(
            Manifest::parse(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
                None
            ),
            Err(ManifestError::Field {
                field: "manifests",
                ..
            })
        ));
        assert!(matches!(
            Manifest::parse(
                br#"{"schemaVersion":2,"config":{"digest":"sha256:xyz"},"layers":[]}"#,
                None
            ),
            Err(ManifestError::BadDigest {
                field: "config",
                ..
            })
        ));
        assert!(matches!(
            Manifest::parse(
                format!(r#"{{"schemaVersion":2,"config":{{"digest":"{D}","size":-1}}}}"#)
                    .as_bytes(),
                None
            ),
            Err(ManifestError::Field {
                field: "config",
                problem: "size is not a non-negative integer"
            })
        ));
        // A Docker manifest must list its layers; an OCI one may omit them.
        let no_layers = format!(r#"{{"schemaVersion":2,"config":{{"digest":"{D}"}}}}"#);
        assert!(matches!(
            Manifest::parse(no_layers.as_bytes(), Some(DOCKER_MANIFEST)),
            Err(ManifestError::Field {
                field: "layers",
                problem: "missing"
            })
        ));
        assert!(Manifest::parse(no_layers.as_bytes(), Some(OCI_MANIFEST)).is_ok());
        assert!(matches!(
            Manifest::parse(
                format!(r#"{{"schemaVersion":2,"artifactType":"x","config":{{"digest":"{D}"}}}}"#)
                    .as_bytes(),
                None
            ),
            Err(ManifestError::Field {
                field: "artifactType",
                ..
            })
        ));
    }

    #[test]
    fn reads_subject_and_artifact_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/x.sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{D}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":10}},"annotations":{{"a":"b"}}}}"#
        );
        let m = Manifest::parse(body.as_bytes(), None).unwrap();
        assert_eq!(m.subject, Some(D.parse().unwrap()));
        assert_eq!(m.artifact_type.as_deref(), Some("application/x.sig"));
        assert_eq!(m.annotations.unwrap()["a"], "b");
    }

    #[test]
    fn artifacts_have_their_descriptors_checked() {
        let ok = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/x.art","blobs":[{{"digest":"{D}"}}]}}"#
        );
        assert_eq!(
            Manifest::parse(ok.as_bytes(), None).unwrap().media_type,
            "application/x.art"
        );
        let bad = r#"{"schemaVersion":2,"mediaType":"application/x.art","blobs":[1]}"#;
        assert!(matches!(
            Manifest::parse(bad.as_bytes(), None),
            Err(ManifestError::Field {
                field: "blobs",
                problem: "not an object"
            })
        ));
    }
}
