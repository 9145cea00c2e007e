//! Manifests: their media types, and the checks a pushed manifest must pass.
//!
//! The cluster stores manifests as plain blobs, so the gateway works out what a manifest
//! is from its bytes: `content_type_of` for pulls (the `mediaType` field, else the
//! shape: `manifests` means an index, anything else a manifest), and `Manifest::parse`
//! for pushes (JSON object, `schemaVersion` 2, a media type consistent with the request's
//! `Content-Type`, well-formed descriptors, and the `subject` / `artifactType` the
//! referrers API needs).

use kraken_storage::Digest;
use serde_json::{Map, Value};

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

/// Why a pushed manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON.
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
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
        problem: String,
    },
}

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
}

/// Whether `s` looks like `type/subtype` made of token characters (safe as a header).
fn is_media_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 127
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    s.split_once('/').is_some_and(|(a, b)| token(a) && token(b))
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

fn is_index_type(t: &str) -> bool {
    t == OCI_INDEX || t == DOCKER_MANIFEST_LIST
}

fn is_image_manifest_type(t: &str) -> bool {
    t == OCI_MANIFEST || t == DOCKER_MANIFEST
}

/// Media type by shape, for a manifest without `mediaType`.
fn by_shape(obj: &Map<String, Value>) -> &'static str {
    if obj.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
        DOCKER_SCHEMA1_SIGNED
    } else if obj.contains_key("manifests") {
        OCI_INDEX
    } else {
        OCI_MANIFEST
    }
}

/// The `Content-Type` to serve a stored manifest with; `None` if the bytes are not a JSON
/// object (so not a manifest).
pub(crate) fn content_type_of(bytes: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let obj = value.as_object()?;
    match obj.get("mediaType").and_then(Value::as_str) {
        Some(t) if is_media_type(t) => Some(t.to_string()),
        _ => Some(by_shape(obj).to_string()),
    }
}

fn field(field: &'static str, problem: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        field,
        problem: problem.into(),
    }
}

/// Checks one descriptor: an object with a parseable `digest`, a `size` and a `mediaType`
/// if present.
fn descriptor(name: &'static str, v: &Value) -> Result<Digest, ManifestError> {
    let obj = v.as_object().ok_or_else(|| field(name, "not an object"))?;
    let digest = obj
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| field(name, "no digest"))?
        .parse::<Digest>()
        .map_err(|e| field(name, e.to_string()))?;
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

fn descriptors(
    obj: &Map<String, Value>,
    name: &'static str,
    required: bool,
) -> Result<(), ManifestError> {
    match obj.get(name) {
        None if required => Err(field(name, "missing")),
        None => Ok(()),
        Some(Value::Array(items)) => items
            .iter()
            .try_for_each(|d| descriptor(name, d).map(|_| ())),
        Some(_) => Err(field(name, "not an array")),
    }
}

impl Manifest {
    /// Validates a pushed manifest; `content_type` is the request's header, if any.
    pub(crate) fn parse(
        bytes: &[u8],
        content_type: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;
        let obj = value.as_object().ok_or(ManifestError::NotObject)?;
        if obj.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        let declared = match obj.get("mediaType") {
            None => None,
            Some(Value::String(t)) if is_media_type(t) => Some(t.clone()),
            Some(_) => return Err(field("mediaType", "not a media type")),
        };
        // A generic Content-Type says nothing about the manifest.
        let header = content_type.map(essence).filter(|c| {
            is_media_type(c) && c != "application/json" && c != "application/octet-stream"
        });
        if let (Some(d), Some(h)) = (&declared, &header)
            && !d.eq_ignore_ascii_case(h)
        {
            return Err(ManifestError::MediaTypeMismatch {
                media_type: d.clone(),
                content_type: h.clone(),
            });
        }
        let media_type = declared
            .or(header)
            .unwrap_or_else(|| by_shape(obj).to_string());

        if is_index_type(&media_type) {
            descriptors(obj, "manifests", true)?;
        } else if is_image_manifest_type(&media_type) {
            descriptor(
                "config",
                obj.get("config")
                    .ok_or_else(|| field("config", "missing"))?,
            )?;
            descriptors(obj, "layers", media_type == DOCKER_MANIFEST)?;
        } else {
            // Other artifacts: check what descriptors they carry.
            if let Some(c) = obj.get("config") {
                descriptor("config", c)?;
            }
            descriptors(obj, "layers", false)?;
            descriptors(obj, "manifests", false)?;
            descriptors(obj, "blobs", false)?;
        }

        let subject = obj
            .get("subject")
            .map(|s| descriptor("subject", s))
            .transpose()?;
        let artifact_type = match obj.get("artifactType") {
            None => None,
            Some(Value::String(t)) if is_media_type(t) => Some(t.clone()),
            Some(_) => return Err(field("artifactType", "not a media type")),
        };
        let config_type = obj
            .get("config")
            .and_then(|c| c.get("mediaType"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let annotations = match obj.get("annotations") {
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
            media_type,
            subject,
            artifact_type: artifact_type.or(config_type),
            annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(media: Option<&str>) -> String {
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
            content_type_of(br#"{"schemaVersion":2,"mediaType":"bad\nvalue"}"#).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(content_type_of(b"\x00\x01"), None);
        assert_eq!(content_type_of(b"[]"), None);
    }

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
            Err(ManifestError::Field {
                field: "config",
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

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), ct in ".{0,30}") {
            let _ = content_type_of(&bytes);
            let _ = Manifest::parse(&bytes, Some(&ct));
        }
    }
}
