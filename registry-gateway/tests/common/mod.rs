//! Test support: an in-memory `Registry` and a gateway served on a loopback port.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use kraken_registry_gateway::registry::{
    BlobBody, ByteRange, LocalBlob, Page, Registry, RegistryError, UploadBody, resolve_range,
};
use kraken_registry_gateway::{GatewayConfig, serve};
use kraken_storage::Digest;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Default)]
struct State {
    blobs: HashMap<Digest, Bytes>,
    tags: BTreeMap<(String, String), Digest>,
    referrers: BTreeMap<(String, Digest, Digest), String>,
    /// Repositories a tag was deleted from: known, even with no tag left.
    emptied: BTreeSet<String>,
    /// (digest, repository) links, as the build-index keeps them.
    links: BTreeSet<(Digest, String)>,
    put_blob_calls: usize,
    streamed_puts: usize,
    stat_blob_calls: usize,
    read_blob_calls: usize,
}

/// Blobs and tags in a `HashMap`; tags check their manifest's references like the
/// build-index does.
#[derive(Default)]
pub struct MemRegistry {
    state: Mutex<State>,
    /// Whether `delete_tag` answers `Unsupported`.
    pub tags_immutable: bool,
    /// How many of the next `put_blob` and `put_blob_stream` calls answer `Unavailable`
    /// (the latter before taking a byte of the body).
    pub put_blob_outages: std::sync::atomic::AtomicUsize,
    /// This host's store: the blobs complete in it are `local_blob`s (none when unset).
    pub cas: std::sync::OnceLock<kraken_storage::cas::Cas>,
    /// How many of the next `put_blob_stream` calls fail with `Unavailable` after taking
    /// the first chunk of the body, as when an origin dies mid-stream.
    pub mid_body_failures: std::sync::atomic::AtomicUsize,
    /// Whether `put_blob_stream` declines every stream (`Unsupported`, as a cluster whose
    /// origins predate the streaming ingest).
    pub streams_declined: std::sync::atomic::AtomicBool,
}

/// Takes one from `counter` if it is above 0.
fn take_one(counter: &std::sync::atomic::AtomicUsize) -> bool {
    use std::sync::atomic::Ordering;
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl MemRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn with_immutable_tags() -> Arc<Self> {
        Arc::new(MemRegistry {
            tags_immutable: true,
            ..Self::default()
        })
    }

    pub fn insert_blob(&self, bytes: &[u8]) -> Digest {
        let d = Digest::sha256_of(bytes);
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(d, Bytes::copy_from_slice(bytes));
        d
    }

    pub fn tag(&self, repo: &str, tag: &str, digest: Digest) {
        self.state
            .lock()
            .unwrap()
            .tags
            .insert((repo.into(), tag.into()), digest);
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.state.lock().unwrap().blobs.contains_key(d)
    }

    pub fn blob(&self, d: &Digest) -> Option<Bytes> {
        self.state.lock().unwrap().blobs.get(d).cloned()
    }

    pub fn tag_of(&self, repo: &str, tag: &str) -> Option<Digest> {
        self.state
            .lock()
            .unwrap()
            .tags
            .get(&(repo.into(), tag.into()))
            .copied()
    }

    /// Every tag of every repository.
    pub fn all_tags(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().tags.keys().cloned().collect()
    }

    /// Whether `repo` links `d`.
    pub fn links(&self, repo: &str, d: &Digest) -> bool {
        self.state
            .lock()
            .unwrap()
            .links
            .contains(&(*d, repo.to_string()))
    }

    /// Links `d` to `repo`, as a push to it would.
    pub fn link(&self, repo: &str, d: Digest) {
        self.state.lock().unwrap().links.insert((d, repo.into()));
    }

    pub fn blob_count(&self) -> usize {
        self.state.lock().unwrap().blobs.len()
    }

    /// Blob writes that reached the cluster (staged or streamed).
    pub fn put_blob_calls(&self) -> usize {
        self.state.lock().unwrap().put_blob_calls
    }

    /// Calls of `put_blob_stream` (monolithic uploads streamed through).
    pub fn streamed_puts(&self) -> usize {
        self.state.lock().unwrap().streamed_puts
    }

    /// Stores `bytes` as `digest`, as an origin would: only if they are `len` bytes that
    /// hash to it.
    fn store(
        &self,
        repo: &str,
        digest: &Digest,
        len: u64,
        bytes: Vec<u8>,
    ) -> Result<(), RegistryError> {
        let mut s = self.state.lock().unwrap();
        s.put_blob_calls += 1;
        if bytes.len() as u64 != len || !digest.matches(&bytes) {
            return Err(RegistryError::DigestInvalid(digest.to_string()));
        }
        s.blobs.insert(*digest, Bytes::from(bytes));
        s.links.insert((*digest, repo.to_string()));
        Ok(())
    }

    /// Removes `repo`'s link to `digest` (`None` if it had none), and the blob when no
    /// repository links it any more.
    fn unlink(&self, repo: &str, digest: &Digest) -> Option<()> {
        let mut s = self.state.lock().unwrap();
        if !s.links.remove(&(*digest, repo.to_string())) {
            return None;
        }
        if !s.links.iter().any(|(d, _)| d == digest) {
            s.blobs.remove(digest);
        }
        Some(())
    }

    /// `stat_blob` and `read_blob` calls so far.
    pub fn blob_lookups(&self) -> (usize, usize) {
        let st = self.state.lock().unwrap();
        (st.stat_blob_calls, st.read_blob_calls)
    }
}

/// What a tag on `manifest` depends on, by the build index's rules (one level).
fn referenced(manifest: &[u8]) -> Vec<Digest> {
    match kraken_registry_gateway::media::references(manifest) {
        Ok(Some(r)) => r.blobs.into_iter().chain(r.manifests).collect(),
        _ => Vec::new(),
    }
}

impl Registry for MemRegistry {
    async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Digest, RegistryError> {
        self.tag_of(repo, tag)
            .ok_or_else(|| RegistryError::TagUnknown(format!("{repo}:{tag}")))
    }

    async fn stat_blob(&self, _repo: &str, digest: &Digest) -> Result<u64, RegistryError> {
        self.state.lock().unwrap().stat_blob_calls += 1;
        self.blob(digest)
            .map(|b| b.len() as u64)
            .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()))
    }

    async fn read_blob(
        &self,
        _repo: &str,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobBody, RegistryError> {
        self.state.lock().unwrap().read_blob_calls += 1;
        let bytes = self
            .blob(digest)
            .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()))?;
        let total = bytes.len() as u64;
        let range = resolve_range(range, total)?;
        let slice = bytes.slice(range.start as usize..range.end as usize);
        // Several chunks, as a real cluster stream would yield.
        let chunks: Vec<Result<Bytes, RegistryError>> = (0..slice.len())
            .step_by(1000)
            .map(|i| Ok(slice.slice(i..(i + 1000).min(slice.len()))))
            .collect();
        Ok(BlobBody {
            total,
            range,
            stream: Box::pin(futures::stream::iter(chunks)),
        })
    }

    async fn list_tags(
        &self,
        repo: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, RegistryError> {
        let s = self.state.lock().unwrap();
        let all: Vec<String> = s
            .tags
            .keys()
            .filter(|(r, _)| r == repo)
            .map(|(_, t)| t.clone())
            .collect();
        if all.is_empty() && !s.emptied.contains(repo) {
            return Err(RegistryError::NameUnknown(repo.into()));
        }
        let rest: Vec<String> = all
            .into_iter()
            .filter(|t| after.is_none_or(|a| t.as_str() > a))
            .collect();
        Ok(Page {
            more: rest.len() > limit,
            names: rest.into_iter().take(limit).collect(),
        })
    }

    async fn catalog(&self, after: Option<&str>, limit: usize) -> Result<Page, RegistryError> {
        let s = self.state.lock().unwrap();
        let repos: BTreeSet<String> = s.tags.keys().map(|(r, _)| r.clone()).collect();
        let rest: Vec<String> = repos
            .into_iter()
            .filter(|r| after.is_none_or(|a| r.as_str() > a))
            .collect();
        Ok(Page {
            more: rest.len() > limit,
            names: rest.into_iter().take(limit).collect(),
        })
    }

    async fn put_blob(
        &self,
        repo: &str,
        digest: &Digest,
        path: &Path,
        len: u64,
    ) -> Result<(), RegistryError> {
        if take_one(&self.put_blob_outages) {
            return Err(RegistryError::Unavailable("origins unreachable".into()));
        }
        let bytes = std::fs::read(path).map_err(|e| RegistryError::Internal(e.to_string()))?;
        self.store(repo, digest, len, bytes)
    }

    async fn put_blob_stream(
        &self,
        repo: &str,
        digest: &Digest,
        len: u64,
        body: &mut UploadBody,
    ) -> Result<(), RegistryError> {
        if take_one(&self.put_blob_outages) {
            return Err(RegistryError::Unavailable("origins unreachable".into()));
        }
        if self
            .streams_declined
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(RegistryError::Unsupported("no streaming ingest".into()));
        }
        self.state.lock().unwrap().streamed_puts += 1;
        let fail_mid_body = take_one(&self.mid_body_failures);
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| RegistryError::Unavailable(e.to_string()))?;
            bytes.extend_from_slice(&chunk);
            if fail_mid_body {
                return Err(RegistryError::Unavailable("the origin died".into()));
            }
        }
        self.store(repo, digest, len, bytes)
    }

    async fn put_tag(&self, repo: &str, tag: &str, digest: &Digest) -> Result<(), RegistryError> {
        let mut s = self.state.lock().unwrap();
        let manifest = s
            .blobs
            .get(digest)
            .ok_or_else(|| RegistryError::ManifestBlobUnknown(digest.to_string()))?;
        let reached = referenced(manifest);
        let missing: Vec<String> = reached
            .iter()
            .filter(|d| !s.blobs.contains_key(d))
            .map(|d| d.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(RegistryError::ManifestBlobUnknown(missing.join(", ")));
        }
        s.tags.insert((repo.into(), tag.into()), *digest);
        for d in reached.into_iter().chain([*digest]) {
            s.links.insert((d, repo.into()));
        }
        Ok(())
    }

    async fn link_manifest(&self, repo: &str, digest: &Digest) -> Result<(), RegistryError> {
        let mut s = self.state.lock().unwrap();
        let reached: Vec<Digest> = match s.blobs.get(digest) {
            Some(m) => referenced(m),
            None => return Err(RegistryError::ManifestBlobUnknown(digest.to_string())),
        };
        for d in reached.into_iter().chain([*digest]) {
            s.links.insert((d, repo.into()));
        }
        Ok(())
    }

    async fn mount_blob(
        &self,
        repo: &str,
        from: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let mut s = self.state.lock().unwrap();
        if !s.links.contains(&(*digest, from.to_string())) {
            return Ok(false);
        }
        s.links.insert((*digest, repo.into()));
        Ok(true)
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<(), RegistryError> {
        self.unlink(repo, digest)
            .ok_or_else(|| RegistryError::TagUnknown(format!("{repo}@{digest}")))?;
        self.state
            .lock()
            .unwrap()
            .tags
            .retain(|(r, _), d| r != repo || d != digest);
        Ok(())
    }

    async fn delete_blob(&self, repo: &str, digest: &Digest) -> Result<(), RegistryError> {
        self.unlink(repo, digest)
            .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()))
    }

    async fn holds_local_blob(&self, digest: &Digest) -> bool {
        self.cas
            .get()
            .is_some_and(|c| c.contains(digest).unwrap_or(false))
    }

    async fn local_blob(&self, digest: &Digest) -> Option<LocalBlob> {
        let reader = self.cas.get()?.reader(digest).ok()?;
        let file = reader.file().try_clone().ok()?;
        Some(LocalBlob::new(file, reader.len(), reader))
    }

    async fn delete_tag(&self, repo: &str, tag: &str) -> Result<(), RegistryError> {
        if self.tags_immutable {
            return Err(RegistryError::Unsupported("tags are immutable".into()));
        }
        let mut s = self.state.lock().unwrap();
        s.tags
            .remove(&(repo.to_string(), tag.to_string()))
            .ok_or_else(|| RegistryError::TagUnknown(format!("{repo}:{tag}")))?;
        s.emptied.insert(repo.to_string());
        Ok(())
    }

    async fn put_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &str,
    ) -> Result<(), RegistryError> {
        self.state
            .lock()
            .unwrap()
            .referrers
            .insert((repo.into(), *subject, *referrer), descriptor.into());
        Ok(())
    }

    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<String>, RegistryError> {
        let s = self.state.lock().unwrap();
        Ok(s.referrers
            .iter()
            .filter(|((r, sub, _), _)| r == repo && sub == subject)
            .map(|(_, d)| d.clone())
            .collect())
    }

    async fn delete_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<(), RegistryError> {
        self.state
            .lock()
            .unwrap()
            .referrers
            .remove(&(repo.to_string(), *subject, *referrer));
        Ok(())
    }
}

/// A gateway on a loopback port.
pub struct Server {
    pub base: String,
    pub registry: Arc<MemRegistry>,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(registry: Arc<MemRegistry>, config: GatewayConfig) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, registry.clone(), config, async move {
            let _ = rx.await;
        }));
        Server {
            base,
            registry,
            client: http_client(),
            stop: Some(tx),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

/// A push-enabled config over `dir`.
pub fn push_config(dir: &Path) -> GatewayConfig {
    GatewayConfig {
        push: true,
        uploads_dir: dir.to_path_buf(),
        page_limit: 100,
        ..GatewayConfig::default()
    }
}

/// A push-enabled config over `dir` whose writes need bearer token `tok3n` or Basic user
/// `ci` with password `hunter2`.
pub fn auth_config(dir: &Path) -> GatewayConfig {
    GatewayConfig {
        auth: Some(kraken_registry_gateway::PushAuth {
            bearer_tokens: vec!["tok3n".into()],
            basic: vec![kraken_registry_gateway::BasicCredential {
                username: "ci".into(),
                password: "hunter2".into(),
            }],
            realm: "kraken".into(),
        }),
        ..push_config(dir)
    }
}

/// A read-only config over `dir`.
pub fn pull_config(dir: &Path) -> GatewayConfig {
    GatewayConfig {
        push: false,
        uploads_dir: dir.to_path_buf(),
        ..GatewayConfig::default()
    }
}

pub fn uploads_dir(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("uploads")
}

/// The first error code of an error body.
pub async fn error_code(r: reqwest::Response) -> String {
    let v = json_of(r).await;
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The body as JSON (`Null` if it is not).
pub async fn json_of(r: reqwest::Response) -> Value {
    let bytes = r.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

pub fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// Starts an upload; returns its absolute location.
pub async fn start_upload(s: &Server, repo: &str) -> String {
    let r = s
        .client
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range").as_deref(), Some("0-0"));
    let loc = header(&r, "location").unwrap();
    let uuid = header(&r, "docker-upload-uuid").unwrap();
    assert!(loc.ends_with(&uuid), "{loc} {uuid}");
    assert!(loc.starts_with(&format!("/v2/{repo}/blobs/uploads/")));
    s.url(&loc)
}

/// Pushes `bytes` as a manifest; returns the response.
pub async fn put_manifest(
    s: &Server,
    repo: &str,
    reference: &str,
    ct: &str,
    bytes: &[u8],
) -> reqwest::Response {
    s.client
        .put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", ct)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

/// An image manifest of `media_type` over a config and one layer already in `registry`.
pub fn image_manifest(registry: &MemRegistry, media_type: Option<&str>, seed: &str) -> Vec<u8> {
    let config = format!("{{\"seed\":\"{seed}\"}}");
    let layer = format!("layer bytes {seed}");
    let cd = registry.insert_blob(config.as_bytes());
    let ld = registry.insert_blob(layer.as_bytes());
    let mut m = json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.to_string(), "size": layer.len()}],
    });
    if let Some(t) = media_type {
        m["mediaType"] = json!(t);
    }
    serde_json::to_vec_pretty(&m).unwrap()
}

/// An index of `media_type` over one manifest already in `registry`.
pub fn index_manifest(registry: &MemRegistry, media_type: Option<&str>) -> Vec<u8> {
    let inner = image_manifest(registry, Some(OCI_MANIFEST), "index-child");
    let d = registry.insert_blob(&inner);
    let mut m = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": inner.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    });
    if let Some(t) = media_type {
        m["mediaType"] = json!(t);
    }
    serde_json::to_vec(&m).unwrap()
}

/// A plain-HTTP client. In a workspace build reqwest's rustls comes without a default
/// crypto provider (other crates turn that feature on), so install ring's first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
