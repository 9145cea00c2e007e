//! Pass-through to upstream registries for images the cluster does not have.
//!
//! An agent's registry API may front Docker Hub or a private registry: `[[registry.upstreams]]`
//! maps a namespace regex (over the repository name, first match wins) to a registry URL.
//! When the cluster does not know a tag or blob of a matching repository, the agent asks
//! the upstream with the distribution API and streams the answer through, checking every
//! byte against the digest (a mismatch ends the stream with an error, so a client never
//! takes a bad blob for a good one). Bearer-token challenges (Docker Hub's anonymous token
//! flow) are answered. Nothing fetched this way enters the cluster: push an image through
//! the proxy to have it distributed P2P.

use std::ops::Range;

use bytes::Bytes;
use futures::StreamExt;
use kraken_registry_gateway::registry::{BlobBody, ByteRange, RegistryError, resolve_range};
use kraken_storage::{Digest, DigestHasher};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// One `[[registry.upstreams]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Regex over the repository name (anchored).
    pub namespace: String,
    /// Base URL of the registry, e.g. `https://registry-1.docker.io`.
    pub url: String,
}

/// Every manifest type the gateway serves, for `Accept`.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The configured upstreams.
#[derive(Clone)]
pub struct Upstreams {
    routes: Vec<(Regex, String)>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|(r, u)| (r.as_str(), u)))
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
    /// An entry's URL is not http(s).
    #[error("registry.upstreams[{index}]: url must start with http:// or https://")]
    Url {
        /// The entry's position in the list.
        index: usize,
    },
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(#[from] kraken_storage::backend::BackendError),
}

/// Checks the entries: regexes compile, URLs are http(s).
pub fn validate(configs: &[UpstreamConfig]) -> Result<(), UpstreamError> {
    routes(configs).map(drop)
}

/// Each entry's compiled namespace and its URL without a trailing slash.
fn routes(configs: &[UpstreamConfig]) -> Result<Vec<(Regex, String)>, UpstreamError> {
    configs
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let re = Regex::new(&format!("^(?:{})$", c.namespace))
                .map_err(|source| UpstreamError::Namespace { index, source })?;
            if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                return Err(UpstreamError::Url { index });
            }
            Ok((re, c.url.trim_end_matches('/').to_string()))
        })
        .collect()
}

impl Upstreams {
    /// Upstreams from config (validated).
    pub fn new(configs: &[UpstreamConfig]) -> Result<Self, UpstreamError> {
        let routes = routes(configs)?;
        let http = kraken_storage::backend::default_http_client()?;
        Ok(Upstreams { routes, http })
    }

    /// The upstream URL for `repo`, if one is configured.
    pub fn route(&self, repo: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|(re, _)| re.is_match(repo))
            .map(|(_, u)| u.as_str())
    }

    /// A request, answering one bearer challenge if the registry asks for a token.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        range: Option<&Range<u64>>,
    ) -> Result<reqwest::Response, RegistryError> {
        let build = |token: Option<&str>| {
            let mut r = self
                .http
                .request(method.clone(), url)
                .header("accept", ACCEPT);
            if let Some(t) = token {
                r = r.header("authorization", format!("Bearer {t}"));
            }
            if let Some(range) = range
                && range.end > range.start
            {
                r = r.header("range", format!("bytes={}-{}", range.start, range.end - 1));
            }
            r
        };
        let unavailable =
            |e: reqwest::Error| RegistryError::Unavailable(format!("upstream {url}: {e}"));
        let first = build(None).send().await.map_err(unavailable)?;
        if first.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let Some(token) = self.token(&challenge).await? else {
            return Ok(first);
        };
        build(Some(&token)).send().await.map_err(unavailable)
    }

    /// An anonymous token for a `Bearer realm=…,service=…,scope=…` challenge.
    async fn token(&self, challenge: &str) -> Result<Option<String>, RegistryError> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Ok(None);
        };
        let mut realm = None;
        let mut query = Vec::new();
        for part in params.split(',') {
            let Some((k, v)) = part.trim().split_once('=') else {
                continue;
            };
            let v = v.trim_matches('"').to_string();
            match k {
                "realm" => realm = Some(v),
                "service" | "scope" => query.push((k.to_string(), v)),
                _ => {}
            }
        }
        let Some(realm) = realm else { return Ok(None) };
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let url = reqwest::Url::parse_with_params(&realm, &query)
            .map_err(|e| RegistryError::Unavailable(format!("token realm {realm}: {e}")))?;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("token from {realm}: {e}")))?;
        let body = response
            .bytes()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("token from {realm}: {e}")))?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Unavailable(format!("token from {realm}: {e}")))?;
        Ok(t.token.or(t.access_token))
    }

    /// The digest `repo:tag` points at upstream.
    pub async fn resolve_tag(
        &self,
        base: &str,
        repo: &str,
        tag: &str,
    ) -> Result<Digest, RegistryError> {
        let url = format!("{base}/v2/{repo}/manifests/{tag}");
        let r = self.send(reqwest::Method::GET, &url, None).await?;
        match r.status().as_u16() {
            200 => {}
            404 => {
                return Err(RegistryError::TagUnknown(format!(
                    "{repo}:{tag} (upstream too)"
                )));
            }
            s => {
                return Err(RegistryError::Unavailable(format!(
                    "upstream {url}: HTTP {s}"
                )));
            }
        }
        let header = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let body = r
            .bytes()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("upstream {url}: {e}")))?;
        let actual = Digest::sha256_of(&body);
        if header.is_some_and(|h| h != actual) {
            return Err(RegistryError::DigestInvalid(format!(
                "upstream {url} sent a manifest that does not match its Docker-Content-Digest"
            )));
        }
        Ok(actual)
    }

    /// The length of blob (or manifest) `digest` upstream.
    pub async fn stat(
        &self,
        base: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<u64, RegistryError> {
        for kind in ["blobs", "manifests"] {
            let url = format!("{base}/v2/{repo}/{kind}/{digest}");
            let r = self.send(reqwest::Method::HEAD, &url, None).await?;
            match r.status().as_u16() {
                200 => {
                    return r
                        .headers()
                        .get("content-length")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| {
                            RegistryError::Unavailable(format!("upstream {url}: no Content-Length"))
                        });
                }
                404 => continue,
                s => {
                    return Err(RegistryError::Unavailable(format!(
                        "upstream {url}: HTTP {s}"
                    )));
                }
            }
        }
        Err(RegistryError::BlobUnknown(format!(
            "{digest} (upstream too)"
        )))
    }

    /// The blob (or manifest) `digest` from upstream, streamed and checked.
    pub async fn read(
        &self,
        base: &str,
        repo: &str,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobBody, RegistryError> {
        // Registries serve manifests only under /manifests; try blobs first.
        let mut response = None;
        for kind in ["blobs", "manifests"] {
            let url = format!("{base}/v2/{repo}/{kind}/{digest}");
            // Ranges are applied here, over the whole verified stream.
            let r = self.send(reqwest::Method::GET, &url, None).await?;
            match r.status().as_u16() {
                200 => {
                    response = Some((url, r));
                    break;
                }
                404 => continue,
                s => {
                    return Err(RegistryError::Unavailable(format!(
                        "upstream {url}: HTTP {s}"
                    )));
                }
            }
        }
        let Some((url, response)) = response else {
            return Err(RegistryError::BlobUnknown(format!(
                "{digest} (upstream too)"
            )));
        };
        let total = response.content_length().ok_or_else(|| {
            RegistryError::Unavailable(format!("upstream {url}: no Content-Length"))
        })?;
        let range = resolve_range(range, total)?;
        let state = Verify {
            response: Some(response),
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
    response: Option<reqwest::Response>,
    hasher: Option<DigestHasher>,
    digest: Digest,
    seen: u64,
    range: Range<u64>,
    total: u64,
}

impl Verify {
    async fn next(&mut self) -> Option<Result<Bytes, RegistryError>> {
        loop {
            let response = self.response.as_mut()?;
            match response.chunk().await {
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
                    self.response = None;
                    return self.finish().map(Err);
                }
                Err(e) => {
                    self.response = None;
                    return Some(Err(RegistryError::Unavailable(format!("upstream: {e}"))));
                }
            }
        }
    }

    /// Checks length and digest once; `Some` is the error to end the stream with.
    fn finish(&mut self) -> Option<RegistryError> {
        let hasher = self.hasher.take()?;
        self.response = None;
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
        UpstreamConfig {
            namespace: namespace.into(),
            url: url.into(),
        }
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
        assert!(matches!(err, UpstreamError::Url { index: 0 }), "{err:?}");

        let upstreams = Upstreams::new(&[good]).unwrap();
        // Anchored, and the trailing slash dropped.
        assert_eq!(
            upstreams.route("library/alpine"),
            Some("https://registry-1.docker.io")
        );
        assert_eq!(upstreams.route("x/library/alpine"), None);
    }
}
