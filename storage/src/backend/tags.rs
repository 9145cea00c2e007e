//! Tags in a backend, in the Docker registry's layout, so that a build-index can write its
//! tags through and a wiped build-index (or one pointed at an existing registry bucket) can
//! read them back.
//!
//! A tag is the file
//! `docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link` holding the
//! digest as text (`sha256:…`), exactly as the CNCF distribution registry writes it.

use futures::StreamExt;

use super::{Backend, BackendError};
use crate::Digest;

const REPOSITORIES: &str = "docker/registry/v2/repositories/";
const TAGS_INFIX: &str = "/_manifests/tags/";
const LINK_SUFFIX: &str = "/current/link";
/// A link file holds one digest; anything longer is not one.
const MAX_LINK_LEN: u64 = 256;

/// The key of a tag's link file.
pub fn tag_key(repo: &str, tag: &str) -> String {
    format!("{REPOSITORIES}{repo}{TAGS_INFIX}{tag}{LINK_SUFFIX}")
}

/// The repository and tag of a link file's key, if `key` is one.
pub fn parse_tag_key(key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix(REPOSITORIES)?;
    let rest = rest.strip_suffix(LINK_SUFFIX)?;
    let (repo, tag) = rest.rsplit_once(TAGS_INFIX)?;
    if repo.is_empty() || tag.is_empty() || tag.contains('/') {
        return None;
    }
    Some((repo.to_string(), tag.to_string()))
}

impl Backend {
    /// Writes `repo:tag → digest`.
    pub async fn put_tag(
        &self,
        repo: &str,
        tag: &str,
        digest: &Digest,
    ) -> Result<(), BackendError> {
        self.op("write tag")?
            .write(&tag_key(repo, tag), digest.to_string().into_bytes())
            .await
            .map(|_| ())
            .map_err(|e| self.error("write tag", None, e))
    }

    /// Removes `repo:tag`'s link (removing a missing one succeeds).
    pub async fn delete_tag(&self, repo: &str, tag: &str) -> Result<(), BackendError> {
        self.op("delete tag")?
            .delete(&tag_key(repo, tag))
            .await
            .map_err(|e| self.error("delete tag", None, e))
    }

    /// The digest `repo:tag` points at, or `None`. An upstream registry is asked (a `HEAD`
    /// of the manifest first).
    pub async fn get_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, BackendError> {
        if let Some(registry) = self.registry() {
            return registry.resolve_tag(repo, tag).await;
        }
        let key = tag_key(repo, tag);
        let op = self.op("read tag")?;
        match op.stat(&key).await {
            Ok(meta) if meta.content_length() > MAX_LINK_LEN => {
                return Err(BackendError::TagLinkTooLong {
                    key,
                    len: meta.content_length(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error("stat tag", None, e)),
        }
        let bytes = match op.read(&key).await {
            Ok(b) => b.to_vec(),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error("read tag", None, e)),
        };
        let text = String::from_utf8_lossy(&bytes);
        text.trim()
            .parse()
            .map(Some)
            .map_err(|source| BackendError::TagLinkNotDigest { key, source })
    }

    /// Every tag in the backend as `(repo, tag, digest)`, in listing order. Unreadable
    /// links are skipped with a warning.
    /// An upstream registry lists none: its tags are resolved on demand.
    pub async fn list_tags(&self) -> Result<Vec<(String, String, Digest)>, BackendError> {
        if self.is_read_only() {
            return Ok(Vec::new());
        }
        let mut lister = match self
            .op("list tags")?
            .lister_with(REPOSITORIES)
            .recursive(true)
            .await
        {
            Ok(l) => l,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.error("list tags", None, e)),
        };
        let mut keys = Vec::new();
        while let Some(entry) = lister.next().await {
            match entry {
                Ok(entry) => {
                    if let Some(rt) = parse_tag_key(entry.path()) {
                        keys.push(rt);
                    }
                }
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => {}
                Err(e) => return Err(self.error("list tags", None, e)),
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for (repo, tag) in keys {
            match self.get_tag(&repo, &tag).await {
                Ok(Some(d)) => out.push((repo, tag, d)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%repo, %tag, error = %e, "skipping an unreadable tag link")
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_keys_round_trip() {
        let key = tag_key("library/ubuntu", "22.04");
        assert_eq!(
            key,
            "docker/registry/v2/repositories/library/ubuntu/_manifests/tags/22.04/current/link"
        );
        assert_eq!(
            parse_tag_key(&key),
            Some(("library/ubuntu".into(), "22.04".into()))
        );
        assert_eq!(
            parse_tag_key("docker/registry/v2/repositories/x/_layers/sha256/ab/link"),
            None
        );
        assert_eq!(
            parse_tag_key(
                "docker/registry/v2/repositories/x/_manifests/tags/a/index/sha256/b/link"
            ),
            None
        );
    }
}
