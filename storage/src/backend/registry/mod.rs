//! [`RegistryStore`]: an OCI distribution registry as a read-only backend, the upstream
//! of a pull-through cache (and of the agents' direct pass-through).
//!
//! An origin that owns a digest it lacks reads it from here (`GET /v2/<repo>/blobs/<d>`,
//! falling back to `/manifests/<d>` for manifests, which registries do not serve as
//! blobs); the CAS ingest verifies the bytes against the digest, so nothing here hashes
//! a blob. The build-index resolves tags here (`HEAD` first: Docker Hub does not count
//! HEADs against its pull limit). Repository names lose the configured `strip_prefix` on
//! the way out.
//!
//! Modules: [`auth`] (credentials, challenges, the token cache), [`errors`] (upstream
//! statuses mapped to [`BackendError`]), [`request`] (one request, answering the
//! registry's challenge).
//!
//! Credentials: anonymous (answering bearer challenges with an anonymous token), basic,
//! or a bearer token from config or a file. Tokens are cached per scope until they expire,
//! so a thousand pulls do not become a thousand token requests. Secrets never reach a
//! log line or an error message.

mod auth;
mod errors;
mod request;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures::StreamExt;
use reqwest::{Method, StatusCode};

use crate::Digest;

use super::{BackendError, BlobStream, RegistryServiceConfig};
use auth::{Credentials, Secret, TokenCache};
pub use errors::BadResponse;
use errors::{Context, ErrorBody, bad_response, map_status, transport};

/// Every manifest media type asked for (`Accept`) when reading or resolving a manifest:
/// OCI index and manifest, Docker manifest list and v2 manifest.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The largest manifest [`RegistryStore::resolve_tag`] reads to hash it itself.
pub const MAX_MANIFEST_LEN: u64 = 4 << 20;

/// One upstream registry. Cheap to clone; clones share connections and cached tokens.
#[derive(Clone)]
pub struct RegistryStore {
    name: Arc<str>,
    url: Arc<str>,
    strip_prefix: Option<Arc<str>>,
    http: reqwest::Client,
    tag_cache_secs: u64,
    tag_stale_secs: u64,
    credentials: Credentials,
    tokens: Arc<TokenCache>,
    /// Set once the registry asked for basic credentials, which are then sent up front.
    basic_asked: Arc<AtomicBool>,
}

impl std::fmt::Debug for RegistryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryStore")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("strip_prefix", &self.strip_prefix)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Reads a secret file named in the config (trailing newline dropped).
fn read_secret(backend: &str, field: &'static str, path: &str) -> Result<Secret, BackendError> {
    let text = std::fs::read_to_string(path).map_err(|source| BackendError::SecretFile {
        backend: backend.to_string(),
        field,
        path: path.into(),
        source,
    })?;
    let text = text.trim_end_matches(['\r', '\n']);
    if text.is_empty() {
        return Err(BackendError::Config(format!(
            "registry: {field} {path:?} is empty"
        )));
    }
    Ok(Secret::new(text))
}

impl RegistryStore {
    /// The upstream `config` describes (validated by the caller). Reads `password_file`
    /// and `token_file` now, so a missing file is a startup error
    /// ([`BackendError::SecretFile`], naming the file and never its content).
    pub fn new(
        name: Arc<str>,
        config: &RegistryServiceConfig,
        http: reqwest::Client,
    ) -> Result<Self, BackendError> {
        let password = match (&config.password, &config.password_file) {
            (Some(p), _) => Some(Secret::new(p)),
            (None, Some(path)) => Some(read_secret(&name, "password_file", path)?),
            (None, None) => None,
        };
        let token = match (&config.token, &config.token_file) {
            (Some(t), _) => Some(Secret::new(t)),
            (None, Some(path)) => Some(read_secret(&name, "token_file", path)?),
            (None, None) => None,
        };
        let credentials = match (&config.username, password, token) {
            (Some(username), Some(password), _) => Credentials::Basic {
                username: username.clone(),
                password,
            },
            (_, _, Some(token)) => Credentials::Token(token),
            _ => Credentials::Anonymous,
        };
        Ok(RegistryStore {
            name,
            url: config.url.trim_end_matches('/').into(),
            strip_prefix: config.strip_prefix.as_deref().map(Into::into),
            http,
            tag_cache_secs: config.tag_cache_secs,
            tag_stale_secs: config.tag_stale_secs,
            credentials,
            tokens: Arc::default(),
            basic_asked: Arc::default(),
        })
    }

    /// The backend name given to [`RegistryStore::new`].
    pub fn name(&self) -> &str {
        &self.name
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

    fn context<'a>(
        &'a self,
        op: &'static str,
        repository: &'a str,
        digest: Option<&'a Digest>,
    ) -> Context<'a> {
        Context {
            backend: &self.name,
            op,
            repository,
            digest,
        }
    }

    /// The length of blob (or manifest) `digest` in `repo`, or `None` if the upstream
    /// does not have it (`404` for both the blob and the manifest).
    ///
    /// Errors: [`BackendError::UpstreamNameUnknown`] if the upstream says the repository
    /// does not exist; the other `Upstream*` errors for other failures.
    pub async fn stat(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, BackendError> {
        let repo = self.upstream_repository(repo);
        let cx = self.context("stat", repo, Some(digest));
        match self.find(cx, Method::HEAD).await? {
            Some(response) => content_length(cx, &response).map(Some),
            None => Ok(None),
        }
    }

    /// Streams blob (or manifest) `digest` of `repo`, checked for length against the
    /// upstream's `Content-Length` (an answer without one is refused:
    /// [`BadResponse::NoContentLength`]). The caller verifies the digest (the CAS ingest
    /// does).
    ///
    /// Errors: [`BackendError::NotFound`] if the upstream has neither a blob nor a
    /// manifest `digest`; see [`RegistryStore::stat`] for the others. Redirects (to a
    /// CDN) are followed; credentials are not sent to another host.
    pub async fn get(&self, repo: &str, digest: &Digest) -> Result<BlobStream, BackendError> {
        let repo = self.upstream_repository(repo);
        let cx = self.context("read", repo, Some(digest));
        let Some(response) = self.find(cx, Method::GET).await? else {
            return Err(map_status(cx, 404, &ErrorBody::default()));
        };
        let len = content_length(cx, &response)?;
        let chunks = futures::stream::unfold(response, |mut response| async move {
            match response.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), response)),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), response)),
            }
        });
        Ok(BlobStream::new(
            self.name.clone(),
            *digest,
            len,
            chunks.boxed(),
        ))
    }

    /// The successful answer to `method` on `blobs/<digest>`, else on
    /// `manifests/<digest>`; `None` if both are missing.
    async fn find(
        &self,
        cx: Context<'_>,
        method: Method,
    ) -> Result<Option<reqwest::Response>, BackendError> {
        let digest = cx
            .digest
            .copied()
            .map(|d| d.to_string())
            .unwrap_or_default();
        for (kind, accept) in [("blobs", false), ("manifests", true)] {
            let path = format!("{}/{kind}/{digest}", cx.repository);
            let response = self.send(cx, method.clone(), &path, accept).await?;
            if response.status().is_success() {
                return Ok(Some(response));
            }
            let status = response.status().as_u16();
            let body = ErrorBody::read(response).await;
            if status != 404 || body.is_name_unknown() {
                return Err(map_status(cx, status, &body));
            }
        }
        Ok(None)
    }

    /// The digest `repo:tag` points at upstream, or `None` if the upstream has no such
    /// tag. Asks with `HEAD` and reads `Docker-Content-Digest`; a registry that does not
    /// send it is asked with `GET` and the manifest (at most [`MAX_MANIFEST_LEN`]
    /// bytes) hashed.
    ///
    /// Errors: [`BackendError::UpstreamNameUnknown`] if the upstream says the repository
    /// does not exist; the other `Upstream*` errors for other failures.
    pub async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, BackendError> {
        let repo = self.upstream_repository(repo);
        let cx = self.context("resolve tag", repo, None);
        let path = format!("{repo}/manifests/{tag}");
        let Some(head) = self.tag_answer(cx, Method::HEAD, &path).await? else {
            return Ok(None);
        };
        if let Some(digest) = content_digest(cx, &head)? {
            return Ok(Some(digest));
        }
        // Some registries send no Docker-Content-Digest: hash the manifest ourselves.
        let Some(get) = self.tag_answer(cx, Method::GET, &path).await? else {
            return Ok(None);
        };
        match content_digest(cx, &get)? {
            Some(digest) => Ok(Some(digest)),
            None => hash_manifest(cx, get).await.map(Some),
        }
    }

    /// The successful answer to `method` on the manifest at `path`, `None` on a 404
    /// that is not `NAME_UNKNOWN`.
    async fn tag_answer(
        &self,
        cx: Context<'_>,
        method: Method,
        path: &str,
    ) -> Result<Option<reqwest::Response>, BackendError> {
        let response = self.send(cx, method, path, true).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(Some(response));
        }
        let body = ErrorBody::read(response).await;
        if status == StatusCode::NOT_FOUND && !body.is_name_unknown() {
            return Ok(None);
        }
        Err(map_status(cx, status.as_u16(), &body))
    }
}

/// The answer's `Docker-Content-Digest`, if it has one.
fn content_digest(
    cx: Context<'_>,
    response: &reqwest::Response,
) -> Result<Option<Digest>, BackendError> {
    let Some(value) = response.headers().get("docker-content-digest") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    text.parse::<Digest>()
        .map(Some)
        .map_err(|e| bad_response(cx, BadResponse::DigestHeader(e)))
}

/// The answer's `Content-Length` header (not `Response::content_length`, which is 0 for
/// the empty body of a `HEAD`).
fn content_length(cx: Context<'_>, response: &reqwest::Response) -> Result<u64, BackendError> {
    response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad_response(cx, BadResponse::NoContentLength))
}

/// The sha256 digest of a manifest body, refused past [`MAX_MANIFEST_LEN`].
async fn hash_manifest(
    cx: Context<'_>,
    mut response: reqwest::Response,
) -> Result<Digest, BackendError> {
    let too_large = || {
        bad_response(
            cx,
            BadResponse::ManifestTooLarge {
                limit: MAX_MANIFEST_LEN,
            },
        )
    };
    if content_length(cx, &response).is_ok_and(|len| len > MAX_MANIFEST_LEN) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(cx, e))? {
        if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_LEN {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Digest::sha256_of(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_store_shows_no_secret() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let mut config = RegistryServiceConfig::new("https://r.example/");
        config.username = Some("alice".into());
        config.password = Some("hunter2-pw".into());
        let store = RegistryStore::new("hub".into(), &config, http.clone()).unwrap();
        let debug = format!("{store:?}");
        assert!(
            debug.contains("alice") && !debug.contains("hunter2-pw"),
            "{debug}"
        );
        assert_eq!(store.url(), "https://r.example");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "tok-secret-1\n").unwrap();
        let mut config = RegistryServiceConfig::new("https://r.example");
        config.token_file = Some(file.display().to_string());
        let store = RegistryStore::new("hub".into(), &config, http.clone()).unwrap();
        assert!(
            matches!(&store.credentials, Credentials::Token(t) if t.expose() == "tok-secret-1")
        );
        assert!(!format!("{store:?}").contains("tok-secret-1"));

        std::fs::write(&file, "").unwrap();
        let err = RegistryStore::new("hub".into(), &config, http.clone()).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        config.token_file = Some(dir.path().join("missing").display().to_string());
        let err = RegistryStore::new("hub".into(), &config, http).unwrap_err();
        assert!(
            matches!(
                &err,
                BackendError::SecretFile {
                    field: "token_file",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn strip_prefix_applies_to_the_front_only() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = RegistryServiceConfig::new("https://r.example");
        config.strip_prefix = Some("docker.io/".into());
        let store = RegistryStore::new("hub".into(), &config, reqwest::Client::new()).unwrap();
        assert_eq!(
            store.upstream_repository("docker.io/library/x"),
            "library/x"
        );
        assert_eq!(
            store.upstream_repository("ghcr.io/docker.io/x"),
            "ghcr.io/docker.io/x"
        );
    }
}
