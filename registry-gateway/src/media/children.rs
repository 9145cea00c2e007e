//! The descriptors a manifest names, each with its role and (for an index's entries) its
//! platform: what a preheat walks. Recognition is [`references`]'s, so a document is
//! walked exactly when the build index would follow it.

use kraken_storage::Digest;
use serde_json::Value;

use super::{Document, Kind, ManifestError, references};

/// The role of a [`Child`] in the manifest that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildRole {
    /// An entry of an index: a manifest.
    Manifest,
    /// An image's config blob.
    Config,
    /// An image's layer.
    Layer,
    /// The manifest an OCI 1.1 `subject` names.
    Subject,
}

/// An index entry's `platform`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildPlatform {
    /// `os`.
    pub os: String,
    /// `architecture`.
    pub architecture: String,
    /// `variant`, if given.
    pub variant: Option<String>,
}

/// One descriptor of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// The blob it names.
    pub digest: Digest,
    /// Its role.
    pub role: ChildRole,
    /// For an index entry: its platform, when the entry names a complete one.
    pub platform: Option<ChildPlatform>,
}

/// The descriptors of `bytes` if it is a manifest or index, in document order (config
/// first); `Ok(None)` for any other blob.
pub fn children(bytes: &[u8]) -> Result<Option<Vec<Child>>, ManifestError> {
    let Some(refs) = references(bytes)? else {
        return Ok(None);
    };
    // `references` accepted the document, so it parses and its digests do.
    let Ok(doc) = Document::parse(bytes) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    let child = |digest, role, platform| Child {
        digest,
        role,
        platform,
    };
    match refs.kind {
        Kind::Image => {
            let has_config = doc.get("config").is_some_and(|c| !c.is_null());
            for (i, digest) in refs.blobs.into_iter().enumerate() {
                let role = if i == 0 && has_config {
                    ChildRole::Config
                } else {
                    ChildRole::Layer
                };
                out.push(child(digest, role, None));
            }
        }
        Kind::Index => {
            let entries = doc.get("manifests").and_then(Value::as_array);
            for (i, digest) in refs.manifests.into_iter().enumerate() {
                let platform = entries.and_then(|e| e.get(i)).and_then(platform_of);
                out.push(child(digest, ChildRole::Manifest, platform));
            }
        }
    }
    if let Some(subject) = refs.subject {
        out.push(child(subject, ChildRole::Subject, None));
    }
    Ok(Some(out))
}

/// The `platform` of an index entry, if it names `os` and `architecture`.
fn platform_of(entry: &Value) -> Option<ChildPlatform> {
    let p = entry.get("platform")?.as_object()?;
    let field = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    Some(ChildPlatform {
        os: field("os")?,
        architecture: field("architecture")?,
        variant: field("variant").filter(|v| !v.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::OCI_INDEX;
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn images_name_config_then_layers() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"{}"}}],"subject":{{"digest":"{}"}}}}"#,
            d(1),
            d(2),
            d(3),
            d(4)
        );
        let c = children(m.as_bytes()).unwrap().unwrap();
        let roles: Vec<_> = c.iter().map(|c| (c.digest, c.role)).collect();
        assert_eq!(
            roles,
            [
                (d(1), ChildRole::Config),
                (d(2), ChildRole::Layer),
                (d(3), ChildRole::Layer),
                (d(4), ChildRole::Subject)
            ]
        );
        // No config: every blob is a layer.
        let m = format!(
            r#"{{"schemaVersion":2,"layers":[{{"digest":"{}"}}]}}"#,
            d(2)
        );
        let c = children(m.as_bytes()).unwrap().unwrap();
        assert_eq!(c[0].role, ChildRole::Layer);
    }

    #[test]
    fn index_entries_carry_their_platforms() {
        let i = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"digest":"{}","platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"digest":"{}","platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
              {{"digest":"{}","platform":{{"os":"linux"}}}},
              {{"digest":"{}"}}],"subject":{{"digest":"{}"}}}}"#,
            d(1),
            d(2),
            d(3),
            d(4),
            d(5)
        );
        let c = children(i.as_bytes()).unwrap().unwrap();
        assert_eq!(c.len(), 5);
        assert!(c[..4].iter().all(|c| c.role == ChildRole::Manifest));
        let amd = c[0].platform.as_ref().unwrap();
        assert_eq!(
            (amd.os.as_str(), amd.architecture.as_str()),
            ("linux", "amd64")
        );
        assert_eq!(
            c[1].platform.as_ref().unwrap().variant.as_deref(),
            Some("v7")
        );
        assert_eq!(c[2].platform, None, "an incomplete platform is none");
        assert_eq!(c[3].platform, None);
        assert_eq!((c[4].digest, c[4].role), (d(5), ChildRole::Subject));
    }

    #[test]
    fn other_blobs_have_no_children() {
        assert_eq!(children(b"\x1f\x8b layer").unwrap(), None);
        assert_eq!(children(b"{\"config\":1}").unwrap(), None);
        assert!(children(br#"{"schemaVersion":2,"layers":[{"digest":"sha256:x"}]}"#).is_err());
    }
}
