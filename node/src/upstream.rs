//! Direct pass-through to upstream registries, for repositories that must not be cached.
//!
//! An agent's registry API may front a registry directly: `[[registry.upstreams]]` maps a
//! namespace regex (over the repository name, first match wins) to a registry URL, with
//! `cache = false` said explicitly. When the cluster does not know a tag or blob of a
//! matching repository, the agent asks the upstream and streams the answer through,
//! checking every byte against the digest (a mismatch ends the stream with an error, so a
//! client never takes a bad blob for a good one). Nothing fetched this way enters the
//! cluster. To have an upstream's images travel the swarm instead, route its repositories
//! to a `[[backends]]` `registry` backend on origins and the build-index.
//!
//! The HTTP side (authentication, token cache, status mapping) is the storage crate's
//! [`RegistryStore`], the same client the origins' pull-through cache uses.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use kraken_registry_gateway::registry::{BlobBody, ByteRange, RegistryError, resolve_range};
use kraken_storage::backend::{BackendError, BlobStream, RegistryServiceConfig, RegistryStore};
use kraken_storage::{Digest, DigestHasher};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// One `[[registry.upstreams]]` entry. `Debug` redacts the secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Regex over the repository name (anchored).
    pub namespace: String,
    /// Base URL of the registry, e.g. `https://registry-1.docker.io`.
    pub url: String,
    /// Must be `false`: this entry passes through without caching. (Caching through the
    /// swarm is a `[[backends]]` `registry` route on origins and the build-index.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// User for basic credentials (and for the token exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password of `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// File holding the password of `username` (read at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// A bearer token sent as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding a bearer token (read at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

impl UpstreamConfig {
    /// An anonymous pass-through entry (`cache = false`).
    pub fn pass_through(namespace: impl Into<String>, url: impl Into<String>) -> Self {
        UpstreamConfig {
            namespace: namespace.into(),
            url: url.into(),
            cache: Some(false),
            username: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
        }
    }

    /// The registry client's config for this entry.
    fn registry(&self) -> RegistryServiceConfig {
        let mut c = RegistryServiceConfig::new(self.url.clone());
        c.username.clone_from(&self.username);
        c.password.clone_from(&self.password);
        c.password_file.clone_from(&self.password_file);
        c.token.clone_from(&self.token);
        c.token_file.clone_from(&self.token_file);
        c
    }
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The registry config's Debug redacts the secrets.
        f.debug_struct("UpstreamConfig")
            .field("namespace", &self.namespace)
            .field("cache", &self.cache)
            .field("registry", &self.registry())
            .finish()
    }
}

/// The configured upstreams.
#[derive(Clone)]
pub struct Upstreams {
    routes: Arc<[(Regex, RegistryStore)]>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|(r, u)| (r.as_str(), u.url())))
            .finish()
    }
}

/// Why `[[registry.upstreams]]` was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// An entry's namespace is not a regex.
    #[error("registry.upstreams[{index}]: bad namespace regex: {source}")]
    Namespace {
        /// The entry's position in the list.
        index: usize,
        /// The regex parser's complaint.
        source: regex::Error,
    },
    /// An entry does not say `cache = false`: direct pass-through must be chosen
    /// explicitly, since caching through the swarm is what most upstreams want.
    #[error(
        "registry.upstreams[{index}]: set `cache = false` to pass this upstream through \
         uncached, or cache it through the swarm with a [[backends]] `registry` route \
         (backend.registry = {{ url = ... }}) on origins and the build-index"
    )]
    CacheNotFalse {
        /// The entry's position in the list.
        index: usize,
    },
    /// An entry's URL or credentials are invalid, or a credential file cannot be read.
    #[error("registry.upstreams[{index}]: {source}")]
    Registry {
        /// The entry's position in the list.
        index: usize,
        /// The registry client's complaint.
        source: BackendError,
    },
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(#[from] BackendError),
}

/// Checks the entries: regexes compile, `cache = false`, URLs are http(s), credentials
/// are consistent. Credential files are read when the upstreams are built.
pub fn validate(configs: &[UpstreamConfig]) -> Result<(), UpstreamError> {
    for (index, c) in configs.iter().enumerate() {
        namespace(index, c)?;
    }
    Ok(())
}

/// An entry's checked, compiled namespace.
fn namespace(index: usize, c: &UpstreamConfig) -> Result<Regex, UpstreamError> {
    let re = Regex::new(&format!("^(?:{})$", c.namespace))
        .map_err(|source| UpstreamError::Namespace { index, source })?;
    if c.cache != Some(false) {
        return Err(UpstreamError::CacheNotFalse { index });
    }
    c.registry()
        .validate()
        .map_err(|source| UpstreamError::Registry { index, source })?;
    Ok(re)
}

/// What a pass-through failure is to the registry API's client.
fn registry_error(err: BackendError) -> RegistryError {
    match err {
        BackendError::NotFound { digest, .. } => {
            RegistryError::BlobUnknown(format!("{digest} (upstream too)"))
        }
        BackendError::UpstreamNameUnknown {
            repository,
            message,
            ..
        } => RegistryError::NameUnknown(format!("{repository} (upstream: {message})")),
        BackendError::UpstreamUnauthorized { message, .. } => {
            RegistryError::Unauthorized(format!("upstream: {message}"))
        }
        BackendError::UpstreamTooManyRequests { message, .. } => {
            RegistryError::TooManyRequests(format!("upstream: {message}"))
        }
        other => RegistryError::Unavailable(error_chain(&other)),
    }
}

/// `err` and its sources, `: `-separated.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Upstreams {
    /// Upstreams from config (validated); reads credential files.
    pub fn new(configs: &[UpstreamConfig]) -> Result<Self, UpstreamError> {
        let http = kraken_storage::backend::default_http_client()?;
        let routes = configs
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let re = namespace(index, c)?;
                let name = format!("registry.upstreams[{index}]");
                let store = RegistryStore::new(name.into(), &c.registry(), http.clone())
                    .map_err(|source| UpstreamError::Registry { index, source })?;
                Ok((re, store))
            })
            .collect::<Result<Vec<_>, UpstreamError>>()?;
        Ok(Upstreams {
            routes: routes.into(),
        })
    }

    /// The upstream for `repo`, if one is configured.
    pub fn route(&self, repo: &str) -> Option<&RegistryStore> {
        self.routes
            .iter()
            .find(|(re, _)| re.is_match(repo))
            .map(|(_, store)| store)
    }

    /// The upstream for `repo`, or the error for a repository none routes.
    fn store(&self, repo: &str) -> Result<&RegistryStore, RegistryError> {
        self.route(repo)
            .ok_or_else(|| RegistryError::NameUnknown(format!("{repo} (no upstream)")))
    }

    /// The digest `repo:tag` points at upstream.
    pub async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Digest, RegistryError> {
        match self.store(repo)?.resolve_tag(repo, tag).await {
            Ok(Some(digest)) => Ok(digest),
            Ok(None) => Err(RegistryError::TagUnknown(format!(
                "{repo}:{tag} (upstream too)"
            ))),
            Err(e) => Err(registry_error(e)),
        }
    }

    /// The length of blob (or manifest) `digest` upstream.
    pub async fn stat(&self, repo: &str, digest: &Digest) -> Result<u64, RegistryError> {
        match self.store(repo)?.stat(repo, digest).await {
            Ok(Some(len)) => Ok(len),
            Ok(None) => Err(RegistryError::BlobUnknown(format!(
                "{digest} (upstream too)"
            ))),
            Err(e) => Err(registry_error(e)),
        }
    }

    /// The blob (or manifest) `digest` from upstream, streamed and checked.
    pub async fn read(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobBody, RegistryError> {
        // The whole blob is read (and hashed); the range is cut from the verified stream.
        let body = self
            .store(repo)?
            .get(repo, digest)
            .await
            .map_err(registry_error)?;
        let total = body.len();
        let range = resolve_range(range, total)?;
        let state = Verify {
            body: Some(body),
            hasher: Some(DigestHasher::new(digest.algorithm())),
            digest: *digest,
            seen: 0,
            range: range.clone(),
            total,
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        });
        Ok(BlobBody {
            total,
            range,
            stream: stream.boxed(),
        })
    }
}

/// Reads the whole upstream body, hashing it, and yields the part in `range`. The last
/// chunk is released only after the digest checks out.
struct Verify {
    body: Option<BlobStream>,
    hasher: Option<DigestHasher>,
    digest: Digest,
    seen: u64,
    range: Range<u64>,
    total: u64,
}

impl Verify {
    async fn next(&mut self) -> Option<Result<Bytes, RegistryError>> {
        loop {
            let body = self.body.as_mut()?;
            match body.next().await.transpose() {
                Ok(Some(chunk)) => {
                    let start = self.seen;
                    self.seen += chunk.len() as u64;
                    if let Some(h) = &mut self.hasher {
                        h.update(&chunk);
                    }
                    let from = self.range.start.max(start);
                    let to = self.range.end.min(self.seen);
                    let is_last = self.seen >= self.total;
                    if is_last && let Some(e) = self.finish() {
                        return Some(Err(e));
                    }
                    if from < to {
                        let slice = chunk.slice((from - start) as usize..(to - start) as usize);
                        return Some(Ok(slice));
                    }
                    if is_last {
                        return None;
                    }
                }
                Ok(None) => {
                    self.body = None;
                    return self.finish().map(Err);
                }
                Err(e) => {
                    self.body = None;
                    return Some(Err(RegistryError::Unavailable(error_chain(&e))));
                }
            }
        }
    }

    /// Checks length and digest once; `Some` is the error to end the stream with.
    fn finish(&mut self) -> Option<RegistryError> {
        let hasher = self.hasher.take()?;
        self.body = None;
        if self.seen != self.total {
            return Some(RegistryError::Unavailable(format!(
                "upstream sent {} of {} bytes",
                self.seen, self.total
            )));
        }
        let actual = hasher.finish();
        (actual != self.digest).then(|| {
            RegistryError::DigestInvalid(format!("upstream sent {actual} for {}", self.digest))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(namespace: &str, url: &str) -> UpstreamConfig {
        UpstreamConfig::pass_through(namespace, url)
    }

    #[test]
    fn upstream_refusals_keep_their_meaning_and_message() {
        let backend = || "hub".to_string();
        let e = registry_error(BackendError::UpstreamUnauthorized {
            backend: backend(),
            message: "log in".into(),
        });
        assert!(
            matches!(&e, RegistryError::Unauthorized(m) if m.contains("log in")),
            "{e:?}"
        );
        let e = registry_error(BackendError::UpstreamTooManyRequests {
            backend: backend(),
            message: "pull rate limit".into(),
        });
        assert!(
            matches!(&e, RegistryError::TooManyRequests(m) if m.contains("pull rate limit")),
            "{e:?}"
        );
    }

    #[test]
    fn entries_are_checked_in_order_and_the_bad_one_is_named() {
        let good = entry("library/.*", "https://registry-1.docker.io/");
        let err = validate(&[good.clone(), entry("(", "https://x")]).unwrap_err();
        assert!(
            matches!(err, UpstreamError::Namespace { index: 1, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("registry.upstreams[1]: bad namespace regex"),
            "{err}"
        );
        let err = validate(&[entry(".*", "ftp://x"), good.clone()]).unwrap_err();
        assert!(
            matches!(err, UpstreamError::Registry { index: 0, .. }),
            "{err:?}"
        );
        let mut half = entry(".*", "https://x");
        half.password = Some("pw-only".into());
        let err = validate(&[half]).unwrap_err();
        assert!(err.to_string().contains("username"), "{err}");

        let upstreams = Upstreams::new(&[good]).unwrap();
        // Anchored, and the trailing slash dropped.
        assert_eq!(
            upstreams.route("library/alpine").map(|s| s.url()),
            Some("https://registry-1.docker.io")
        );
        assert!(upstreams.route("x/library/alpine").is_none());
    }

    #[test]
    fn pass_through_must_be_chosen_with_cache_false() {
        for cache in [None, Some(true)] {
            let mut e = entry("library/.*", "https://registry-1.docker.io");
            e.cache = cache;
            let err = validate(&[entry(".*", "https://x"), e]).unwrap_err();
            assert!(
                matches!(err, UpstreamError::CacheNotFalse { index: 1 }),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains("cache = false") && text.contains("[[backends]]"),
                "{text}"
            );
        }
    }

    #[test]
    fn debug_redacts_secrets_and_missing_files_are_named() {
        let mut e = entry(".*", "https://x");
        e.username = Some("ci".into());
        e.password = Some("pw-secret-9".into());
        let debug = format!("{e:?}");
        assert!(
            debug.contains("ci") && !debug.contains("pw-secret-9"),
            "{debug}"
        );
        let upstreams = Upstreams::new(&[e]).unwrap();
        assert!(!format!("{upstreams:?}").contains("pw-secret-9"));

        let mut e = entry(".*", "https://x");
        e.token_file = Some("/nonexistent/kraken-token".into());
        validate(std::slice::from_ref(&e)).unwrap();
        let err = Upstreams::new(&[e]).unwrap_err();
        assert!(
            error_chain(&err).contains("/nonexistent/kraken-token"),
            "{err}"
        );
    }
}
