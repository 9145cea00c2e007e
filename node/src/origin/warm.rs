//! Warming: an owner makes sure it holds a blob (reading it through from the backend, as a
//! metainfo request would) and says what the blob references if it is a manifest or an
//! index, so `krakenctl preheat` and push notifications can walk an image one blob at a
//! time without downloading anything themselves.

use std::time::Duration;

use kraken_registry_gateway::media::{self, Child, ChildRole, MAX_MANIFEST_LEN};
use kraken_storage::Digest;

use super::{Origin, internal};
use crate::proto::{
    ErrorKind, MAX_METAINFO_WAIT, Platform, RefKind, RemoteError, Response, WarmRef, Warmed,
};

impl Origin {
    /// Holds `digest` (read through from the backend routed by `namespace` if this owner
    /// lacks it, waiting up to `wait`, else [`Response::Pending`]) and lists what it
    /// references. Only owners warm: a blob warmed elsewhere is not where pulls look.
    pub async fn warm(&self, namespace: &str, digest: &Digest, wait: Duration) -> Response {
        if !self.is_owner(digest) {
            return Response::Error(RemoteError::new(
                ErrorKind::WrongNode,
                format!("{} does not own {digest}", self.inner.me),
            ));
        }
        let held = match self.inner.cas.contains(digest) {
            Ok(held) => held,
            Err(e) => return Response::Error(internal(e)),
        };
        if !held
            && let Err(answer) = self
                .read_through_within(namespace, digest, wait.min(MAX_METAINFO_WAIT))
                .await
        {
            return answer;
        }
        match self.warmed(digest, !held).await {
            Ok(warmed) => Response::Warmed(warmed),
            Err(e) => Response::Error(e),
        }
    }

    /// What this origin holds of `digest`, now that it holds it.
    async fn warmed(&self, digest: &Digest, fetched: bool) -> Result<Warmed, RemoteError> {
        let cas = self.inner.cas.clone();
        let digest = *digest;
        tokio::task::spawn_blocking(move || {
            let reader = cas.reader(&digest).map_err(|e| {
                RemoteError::new(
                    ErrorKind::Internal,
                    format!("{digest} was warmed but cannot be read: {e}"),
                )
            })?;
            let length = reader.len();
            // Layers are never manifests: only small blobs are read and parsed.
            let references = if length <= MAX_MANIFEST_LEN {
                let bytes = reader.read_all().map_err(internal)?;
                references_of(&bytes)
            } else {
                Vec::new()
            };
            Ok(Warmed {
                length,
                fetched,
                references,
            })
        })
        .await
        .map_err(internal)?
    }
}

/// The references of a blob, if it is a manifest the cluster recognises. A manifest with
/// a digest that does not parse has none: the walk stops there, as a pull would.
fn references_of(bytes: &[u8]) -> Vec<WarmRef> {
    let Ok(Some(children)) = media::children(bytes) else {
        return Vec::new();
    };
    children.into_iter().map(warm_ref).collect()
}

fn warm_ref(child: Child) -> WarmRef {
    WarmRef {
        digest: child.digest,
        kind: match child.role {
            ChildRole::Manifest => RefKind::Manifest,
            ChildRole::Config => RefKind::Config,
            ChildRole::Layer => RefKind::Layer,
            ChildRole::Subject => RefKind::Subject,
        },
        platform: child.platform.map(|p| Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_manifests_have_references() {
        let layer = Digest::sha256_of(b"layer");
        let manifest = format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{layer}"}}]}}"#);
        let refs = references_of(manifest.as_bytes());
        assert_eq!(
            refs,
            [WarmRef {
                digest: layer,
                kind: RefKind::Layer,
                platform: None
            }]
        );
        assert!(references_of(b"\x1f\x8b not json").is_empty());
        let bad = r#"{"schemaVersion":2,"layers":[{"digest":"sha256:zz"}]}"#;
        assert!(references_of(bad.as_bytes()).is_empty());
    }
}
