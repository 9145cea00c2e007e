//! Remote blob storage over OpenDAL: the origin's read-through source and write-back
//! target.
//!
//! Modules:
//! - [`config`]: [`BackendConfig`], one backend as written in TOML (a service section, a
//!   key layout, write tuning) and its validation.
//! - [`layout`]: [`KeyLayout`], where a digest's bytes live inside a backend (the Docker
//!   registry's layout by default) and how listed keys map back to digests.
//! - [`router`]: [`NamespaceRouter`], the ordered `[[backends]]` list that picks a backend
//!   for a namespace (`library/ubuntu`, …) by regex, first match wins.
//! - [`error`]: [`BackendError`], the one error type of all of the above.
//! - [`registry`]: [`RegistryStore`], an upstream OCI distribution registry read through
//!   (read-only: blobs, manifests by digest, tags), with its authentication and token cache.
//! - [`tags`]: repository tags as Docker-registry link files (build-index write-through).
//! - [`writeback`]: the upload path from the local CAS to a backend, and
//!   [`BlobWriteBack`], the job the queue's executor runs to drain the durable write-back
//!   queue.
//!
//! This module owns [`Backend`]: one configured OpenDAL operator plus its layout and name,
//! with blob-level operations (`stat`, ranged `get`, streaming `put_file`/`put_stream`,
//! `delete`, `list`). Uploads are streamed in `write_chunk_size` parts (S3 multipart),
//! hashed on the way and committed only if the bytes match the digest, so a backend never
//! holds a wrong or partial blob under a digest's key.
//!
//! HTTP-based services (s3, gcs, webhdfs) send their requests through the
//! `reqwest::Client` given to [`Backend::new`]; [`default_http_client`] builds a suitable
//! one and installs the process's rustls crypto provider (ring) if none is.

pub mod config;
pub mod error;
pub mod layout;
pub mod registry;
pub mod router;
pub mod tags;
pub mod writeback;

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, Stream, StreamExt};
use opendal::{HttpTransporter, OperationContext, Operator};
use opendal_http_transport_reqwest::ReqwestTransport;
use tokio::io::AsyncReadExt;

use crate::Digest;

pub use config::{
    BackendConfig, FsServiceConfig, GcsServiceConfig, MemoryServiceConfig, RegistryServiceConfig,
    S3ServiceConfig, ServiceConfig, ServiceSectionError, WebhdfsServiceConfig,
};
pub use error::{BackendError, RouteProblem};
pub use layout::KeyLayout;
pub use registry::RegistryStore;
pub use router::{NamespaceRouter, RouteConfig, RouterConfig};
pub use writeback::{BlobWriteBack, UploadOutcome, WriteBackError, WriteBackHooks, upload_blob};

/// Connect timeout of [`default_http_client`].
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-read timeout of [`default_http_client`]: the longest a request may go without
/// receiving a byte. There is no total timeout, since blobs can be gigabytes. Blob stores
/// are bounded more tightly by each backend's `op_timeout_secs` and `io_timeout_secs`
/// (OpenDAL's timeout layer); this is the bound of upstream registries, and a backstop.
pub const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Size of each read from a local file in [`Backend::put_file`].
const FILE_READ_SIZE: usize = 1024 * 1024;

/// Builds the HTTP client for storage backends: rustls with the platform's trust store,
/// HTTP/1.1 and HTTP/2, [`HTTP_CONNECT_TIMEOUT`] and [`HTTP_READ_TIMEOUT`].
///
/// Installs `rustls::crypto::ring::default_provider()` as the process's default crypto
/// provider first, unless one is already installed (then that one is used).
pub fn default_http_client() -> Result<reqwest::Client, BackendError> {
    // Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(HTTP_CONNECT_TIMEOUT)
        .read_timeout(HTTP_READ_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(BackendError::HttpClient)
}

/// One remote store of blobs: an OpenDAL operator, a key layout and a name for messages.
///
/// Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Backend {
    name: Arc<str>,
    service: &'static str,
    store: Store,
    layout: KeyLayout,
    write_chunk_size: usize,
    write_concurrency: usize,
}

/// What a backend talks to: a blob store through OpenDAL, or an upstream registry.
#[derive(Clone)]
enum Store {
    Dal(Operator),
    Registry(RegistryStore),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("service", &self.service)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Builds the backend `config` describes. `name` appears in errors and logs; `http`
    /// carries the requests of HTTP-based services (see [`default_http_client`]).
    ///
    /// Validates the config first; nothing is sent over the network here (a wrong bucket
    /// or bad credentials show up on the first operation). The fs service creates its
    /// root directory.
    pub fn new(
        name: impl Into<String>,
        config: &BackendConfig,
        http: reqwest::Client,
    ) -> Result<Backend, BackendError> {
        let name: Arc<str> = name.into().into();
        config.validate()?;
        let store = if let ServiceConfig::Registry(registry) = &config.service {
            Store::Registry(RegistryStore::new(name.clone(), registry, http)?)
        } else {
            let op = build_operator(&config.service)
                .map_err(|e| BackendError::from_opendal(&name, "init", None, e))?
                // Every operation is bounded, so a hung backend (connections accepted,
                // nothing answered) costs seconds per attempt, not the HTTP client's read
                // timeout per request.
                .layer(
                    opendal::layers::TimeoutLayer::new()
                        .with_timeout(Duration::from_secs(config.op_timeout_secs))
                        .with_io_timeout(Duration::from_secs(config.io_timeout_secs)),
                );
            let transport = HttpTransporter::new(ReqwestTransport::new(http));
            Store::Dal(op.with_context(OperationContext::new().with_http_transport(transport)))
        };
        Ok(Backend {
            name,
            service: config.service.name(),
            store,
            layout: config.layout,
            write_chunk_size: config.write_chunk_size,
            write_concurrency: config.write_concurrency,
        })
    }

    /// The name given to [`Backend::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's name (`s3`, `fs`, …).
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Whether this backend is an upstream registry: read-only, addressed by repository,
    /// the source of its repositories' tags.
    pub fn is_read_only(&self) -> bool {
        matches!(self.store, Store::Registry(_))
    }

    /// The upstream registry behind this backend, if it is one.
    pub fn registry(&self) -> Option<&RegistryStore> {
        match &self.store {
            Store::Registry(r) => Some(r),
            Store::Dal(_) => None,
        }
    }

    /// The OpenDAL operator, or [`BackendError::Unsupported`] for an upstream registry.
    fn op(&self, op: &'static str) -> Result<&Operator, BackendError> {
        match &self.store {
            Store::Dal(o) => Ok(o),
            Store::Registry(_) => Err(BackendError::Unsupported {
                backend: self.name.to_string(),
                op,
            }),
        }
    }

    /// Streams the whole blob `digest` of repository `namespace`. Blob stores ignore the
    /// namespace (they are content-addressed); an upstream registry is asked for the blob
    /// in that repository. The read-through path of origins.
    pub async fn read(&self, namespace: &str, digest: &Digest) -> Result<BlobStream, BackendError> {
        match &self.store {
            Store::Dal(_) => self.get(digest, None).await,
            Store::Registry(r) => r.get(namespace, digest).await,
        }
    }

    /// The key layout.
    pub fn layout(&self) -> KeyLayout {
        self.layout
    }

    /// The key of `digest` in this backend, relative to the service's root.
    pub fn key(&self, digest: &Digest) -> String {
        self.layout.key(digest)
    }

    /// The blob's length, or `None` if the backend does not have it.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BackendError> {
        match self.op("stat")?.stat(&self.key(digest)).await {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error("stat", Some(digest), e)),
        }
    }

    /// Whether the backend has the blob.
    pub async fn exists(&self, digest: &Digest) -> Result<bool, BackendError> {
        Ok(self.stat(digest).await?.is_some())
    }

    /// Streams the blob's bytes, or the bytes in `range` (start inclusive, end exclusive).
    ///
    /// Errors: [`BackendError::NotFound`] if the blob is missing;
    /// [`BackendError::RangeNotSatisfiable`] if `range` is inverted or ends past the blob.
    /// The stream itself yields an error if the backend fails mid-way or delivers a
    /// different number of bytes than the range holds.
    ///
    /// Costs a `stat` (to learn the length and check the range) plus one streamed read.
    pub async fn get(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobStream, BackendError> {
        let key = self.key(digest);
        let op = self.op("read")?;
        let len = op
            .stat(&key)
            .await
            .map_err(|e| self.error("stat", Some(digest), e))?
            .content_length();
        let range = range.unwrap_or(0..len);
        if range.start > range.end || range.end > len {
            return Err(BackendError::RangeNotSatisfiable {
                backend: self.name.to_string(),
                digest: *digest,
                start: range.start,
                end: range.end,
                len,
            });
        }
        let expected = range.end - range.start;
        let inner = if expected == 0 {
            None
        } else {
            let reader = op
                .reader(&key)
                .await
                .map_err(|e| self.error("read", Some(digest), e))?;
            let stream = reader
                .into_bytes_stream(range)
                .await
                .map_err(|e| self.error("read", Some(digest), e))?;
            Some(stream.boxed())
        };
        Ok(BlobStream {
            inner,
            backend: self.name.clone(),
            digest: *digest,
            expected,
            seen: 0,
        })
    }

    /// Uploads a blob of `len` bytes read from `file` (from its current position to its
    /// end), streaming in `write_chunk_size` parts. Returns the number of bytes stored.
    ///
    /// Nothing is committed unless the file holds exactly `len` bytes hashing to `digest`
    /// ([`BackendError::LengthMismatch`], [`BackendError::DigestMismatch`]).
    pub async fn put_file(
        &self,
        digest: &Digest,
        file: std::fs::File,
        len: u64,
    ) -> Result<u64, BackendError> {
        let file = tokio::fs::File::from_std(file);
        let chunks = futures::stream::try_unfold(file, |mut file| async move {
            let mut buf = BytesMut::with_capacity(FILE_READ_SIZE);
            let n = file.read_buf(&mut buf).await?;
            Ok::<_, std::io::Error>((n > 0).then(|| (buf.freeze(), file)))
        });
        self.upload(digest, Some(len), chunks.map(|r| r.map_err(Into::into)))
            .await
    }

    /// Uploads a blob from a stream of byte chunks, streaming in `write_chunk_size` parts.
    /// Returns the number of bytes stored.
    ///
    /// Nothing is committed if the stream fails ([`BackendError::Source`]), the backend
    /// fails, or the bytes do not hash to `digest` ([`BackendError::DigestMismatch`]);
    /// a started multipart upload is aborted.
    pub async fn put_stream<S, E>(&self, digest: &Digest, stream: S) -> Result<u64, BackendError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.upload(digest, None, stream.map(|r| r.map_err(Into::into)))
            .await
    }

    /// Removes the blob. Removing a missing blob succeeds, also when another deleter
    /// removes it at the same moment (some services see it vanish mid-delete).
    pub async fn delete(&self, digest: &Digest) -> Result<(), BackendError> {
        match self.op("delete")?.delete(&self.key(digest)).await {
            Err(e) if e.kind() != opendal::ErrorKind::NotFound => {
                Err(self.error("delete", None, e))
            }
            _ => Ok(()),
        }
    }

    /// Every blob in the backend under this layout, in the service's listing order.
    /// Keys that are not blob keys of the layout are skipped.
    pub async fn list(
        &self,
    ) -> Result<BoxStream<'static, Result<Digest, BackendError>>, BackendError> {
        let lister = match self
            .op("list")?
            .lister_with(self.layout.prefix())
            .recursive(true)
            .await
        {
            Ok(lister) => lister,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                return Ok(futures::stream::empty().boxed());
            }
            Err(e) => return Err(self.error("list", None, e)),
        };
        let layout = self.layout;
        let name = self.name.clone();
        Ok(lister
            .filter_map(move |entry| {
                let item = match entry {
                    Ok(entry) => layout.parse_key(entry.path()).map(Ok),
                    // The prefix does not exist (yet), or a key vanished while listing.
                    Err(e) if e.kind() == opendal::ErrorKind::NotFound => None,
                    Err(e) => Some(Err(BackendError::from_opendal(&name, "list", None, e))),
                };
                futures::future::ready(item)
            })
            .boxed())
    }

    async fn upload<S>(
        &self,
        digest: &Digest,
        expected_len: Option<u64>,
        chunks: S,
    ) -> Result<u64, BackendError>
    where
        S: Stream<Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> + Send,
    {
        let mut writer = self
            .op("write")?
            .writer_with(&self.key(digest))
            .chunk(self.write_chunk_size)
            .concurrent(self.write_concurrency)
            .await
            .map_err(|e| self.error("write", None, e))?;
        match self
            .write_verified(&mut writer, digest, expected_len, chunks)
            .await
        {
            Ok(written) => Ok(written),
            Err(err) => {
                if let Err(abort) = writer.abort().await {
                    tracing::debug!(
                        backend = %self.name, %digest, error = %abort,
                        "aborting a failed upload failed too"
                    );
                }
                Err(err)
            }
        }
    }

    async fn write_verified<S>(
        &self,
        writer: &mut opendal::Writer,
        digest: &Digest,
        expected_len: Option<u64>,
        chunks: S,
    ) -> Result<u64, BackendError>
    where
        S: Stream<Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> + Send,
    {
        let mut chunks = std::pin::pin!(chunks);
        let mut hasher = digest.hasher();
        let mut written = 0u64;
        let length_mismatch = |actual| BackendError::LengthMismatch {
            backend: self.name.to_string(),
            digest: *digest,
            expected: expected_len.unwrap_or_default(),
            actual,
        };
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|source| BackendError::Source {
                backend: self.name.to_string(),
                digest: *digest,
                source,
            })?;
            written += chunk.len() as u64;
            if expected_len.is_some_and(|len| written > len) {
                return Err(length_mismatch(written));
            }
            hasher.update(&chunk);
            writer
                .write(chunk)
                .await
                .map_err(|e| self.error("write", None, e))?;
        }
        if expected_len.is_some_and(|len| written != len) {
            return Err(length_mismatch(written));
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(BackendError::DigestMismatch {
                backend: self.name.to_string(),
                expected: *digest,
                actual,
            });
        }
        writer
            .close()
            .await
            .map_err(|e| self.error("write", None, e))?;
        Ok(written)
    }

    fn error(
        &self,
        op: &'static str,
        digest: Option<&Digest>,
        err: opendal::Error,
    ) -> BackendError {
        BackendError::from_opendal(&self.name, op, digest, err)
    }
}

/// Builds the bare operator for a (validated) service config.
fn build_operator(service: &ServiceConfig) -> opendal::Result<Operator> {
    use opendal::services;
    match service {
        ServiceConfig::Fs(fs) => {
            // Stage uploads beside the blobs so the final rename stays on one filesystem.
            let staging = Path::new(&fs.root).join(".tmp");
            Operator::new(
                services::Fs::default()
                    .root(&fs.root)
                    .atomic_write_dir(&staging.to_string_lossy()),
            )
        }
        ServiceConfig::Memory(_) => Operator::new(services::Memory::default()),
        ServiceConfig::S3(s3) => {
            let region = s3
                .region
                .clone()
                .or_else(|| std::env::var("AWS_REGION").ok())
                .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                .unwrap_or_else(|| "us-east-1".to_string());
            let mut builder = services::S3::default().bucket(&s3.bucket).region(&region);
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.endpoint(endpoint);
            }
            if let Some(root) = &s3.root {
                builder = builder.root(root);
            }
            if !s3.path_style {
                builder = builder.enable_virtual_host_style();
            }
            if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
                builder = builder.access_key_id(id).secret_access_key(secret);
            }
            if let Some(token) = &s3.session_token {
                builder = builder.session_token(token);
            }
            if s3.anonymous {
                builder = builder.skip_signature();
            }
            Operator::new(builder)
        }
        #[cfg(feature = "gcs")]
        ServiceConfig::Gcs(gcs) => {
            let mut builder = services::Gcs::default().bucket(&gcs.bucket);
            if let Some(root) = &gcs.root {
                builder = builder.root(root);
            }
            if let Some(credential) = &gcs.credential {
                builder = builder.credential(credential);
            }
            if let Some(path) = &gcs.credential_path {
                builder = builder.credential_path(path);
            }
            if let Some(endpoint) = &gcs.endpoint {
                builder = builder.endpoint(endpoint);
            }
            if gcs.anonymous {
                builder = builder.skip_signature();
            }
            Operator::new(builder)
        }
        #[cfg(feature = "webhdfs")]
        ServiceConfig::Webhdfs(hdfs) => {
            // Multi-part writes need a staging directory (relative to root); without one
            // a whole upload would be buffered in memory.
            let mut builder = services::Webhdfs::default()
                .endpoint(&hdfs.endpoint)
                .atomic_write_dir(".kraken_tmp/");
            if let Some(root) = &hdfs.root {
                builder = builder.root(root);
            }
            if let Some(user) = &hdfs.user_name {
                builder = builder.user_name(user);
            }
            if let Some(token) = &hdfs.delegation {
                builder = builder.delegation(token);
            }
            Operator::new(builder)
        }
        // Unreachable after `validate`, which rejects services that are compiled out.
        #[allow(unreachable_patterns)]
        other => Err(opendal::Error::new(
            opendal::ErrorKind::ConfigInvalid,
            format!("storage service `{}` is not compiled in", other.name()),
        )),
    }
}

/// The bytes of a blob (or of a range of it), as returned by [`Backend::get`].
///
/// A `Stream` of `Result<Bytes, BackendError>`. Ends with an error instead of `None` if
/// the backend delivers fewer or more bytes than [`BlobStream::len`].
pub struct BlobStream {
    inner: Option<BoxStream<'static, std::io::Result<Bytes>>>,
    backend: Arc<str>,
    digest: Digest,
    expected: u64,
    seen: u64,
}

impl BlobStream {
    /// A stream of `expected` bytes of `digest` from `backend`, checked for length.
    pub(crate) fn new(
        backend: Arc<str>,
        digest: Digest,
        expected: u64,
        inner: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Self {
        BlobStream {
            inner: (expected > 0).then_some(inner),
            backend,
            digest,
            expected,
            seen: 0,
        }
    }

    /// Number of bytes the stream yields (the range's length).
    pub fn len(&self) -> u64 {
        self.expected
    }

    /// Whether the stream yields no bytes.
    pub fn is_empty(&self) -> bool {
        self.expected == 0
    }

    fn short_or_long(&self) -> BackendError {
        BackendError::LengthMismatch {
            backend: self.backend.to_string(),
            digest: self.digest,
            expected: self.expected,
            actual: self.seen,
        }
    }
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStream")
            .field("backend", &self.backend)
            .field("digest", &self.digest)
            .field("len", &self.expected)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, BackendError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let item = match inner.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        let out = match item {
            Some(Ok(bytes)) => {
                this.seen += bytes.len() as u64;
                if this.seen > this.expected {
                    Err(this.short_or_long())
                } else {
                    return Poll::Ready(Some(Ok(bytes)));
                }
            }
            Some(Err(e)) => Err(BackendError::from_opendal_io(
                &this.backend,
                "read",
                Some(&this.digest),
                e,
            )),
            None if this.seen == this.expected => {
                this.inner = None;
                return Poll::Ready(None);
            }
            None => Err(this.short_or_long()),
        };
        // After an error the stream is over.
        this.inner = None;
        Poll::Ready(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    fn backend(service: ServiceConfig) -> Backend {
        let config = BackendConfig::new(service);
        Backend::new("test", &config, default_http_client().expect("http client"))
            .expect("backend builds")
    }

    fn fs_backend(root: &Path) -> Backend {
        backend(ServiceConfig::Fs(FsServiceConfig {
            root: root.to_string_lossy().into_owned(),
        }))
    }

    async fn read(backend: &Backend, digest: &Digest, range: Option<Range<u64>>) -> Vec<u8> {
        let stream = backend.get(digest, range).await.expect("get");
        let len = stream.len();
        let chunks: Vec<Bytes> = stream.try_collect().await.expect("read");
        let out = chunks.concat();
        assert_eq!(out.len() as u64, len);
        out
    }

    async fn put(backend: &Backend, data: &[u8]) -> Digest {
        let digest = Digest::sha256_of(data);
        let chunks: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(100_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let n = backend
            .put_stream(&digest, futures::stream::iter(chunks))
            .await
            .expect("put");
        assert_eq!(n, data.len() as u64);
        digest
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// What every service must do the same way.
    async fn exercise(backend: &Backend) {
        let blob = data(1_000_003);
        let missing = Digest::sha256_of(b"missing");
        assert!(matches!(
            backend.get(&missing, None).await,
            Err(BackendError::NotFound { .. })
        ));
        assert_eq!(backend.stat(&missing).await.expect("stat"), None);
        let empty: Vec<Digest> = backend
            .list()
            .await
            .expect("list")
            .try_collect()
            .await
            .expect("list");
        assert!(empty.is_empty());

        let digest = put(backend, &blob).await;
        assert_eq!(
            backend.stat(&digest).await.expect("stat"),
            Some(blob.len() as u64)
        );
        assert!(backend.exists(&digest).await.expect("exists"));
        assert_eq!(read(backend, &digest, None).await, blob);
        let len = blob.len() as u64;
        for range in [0..10, 500_000..500_100, len - 3..len, len..len] {
            let want = &blob[range.start as usize..range.end as usize];
            assert_eq!(
                read(backend, &digest, Some(range.clone())).await,
                want,
                "{range:?}"
            );
        }
        assert!(matches!(
            backend.get(&digest, Some(len - 1..len + 1)).await,
            Err(BackendError::RangeNotSatisfiable { len: l, .. }) if l == len
        ));

        // Bytes that do not match the digest are not stored.
        let wrong = Digest::sha256_of(b"not these bytes");
        let err = backend
            .put_stream(
                &wrong,
                futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"abc"))]),
            )
            .await
            .expect_err("digest mismatch");
        assert!(matches!(err, BackendError::DigestMismatch { .. }), "{err}");
        assert_eq!(backend.stat(&wrong).await.expect("stat"), None);

        let other = put(backend, b"").await;
        let mut listed: Vec<Digest> = backend
            .list()
            .await
            .expect("list")
            .try_collect()
            .await
            .expect("list");
        listed.sort();
        let mut want = vec![digest, other];
        want.sort();
        assert_eq!(listed, want);

        backend.delete(&digest).await.expect("delete");
        backend.delete(&digest).await.expect("delete twice");
        assert!(!backend.exists(&digest).await.expect("exists"));
    }

    #[tokio::test]
    async fn memory_backend() {
        let backend = backend(ServiceConfig::Memory(MemoryServiceConfig {}));
        assert_eq!(backend.service(), "memory");
        exercise(&backend).await;
    }

    #[tokio::test]
    async fn fs_backend_with_docker_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = fs_backend(dir.path());
        exercise(&backend).await;

        // Blobs sit where a registry's filesystem driver puts them.
        let digest = put(&backend, b"on disk").await;
        let hex = digest.hex();
        let path = dir.path().join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ));
        assert_eq!(std::fs::read(&path).expect("blob file"), b"on disk");

        // Foreign files in the tree are not listed.
        let foreign = dir
            .path()
            .join("docker/registry/v2/blobs/sha256/zz/junk/data");
        std::fs::create_dir_all(foreign.parent().expect("parent")).expect("mkdir");
        std::fs::write(&foreign, b"junk").expect("write");
        let listed: Vec<Digest> = backend
            .list()
            .await
            .expect("list")
            .try_collect()
            .await
            .expect("list");
        assert!(listed.contains(&digest));
        assert_eq!(listed.len(), 2);
    }

    #[tokio::test]
    async fn fs_put_file_checks_length_and_leaves_nothing_on_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = fs_backend(dir.path());
        let blob = data(3 * FILE_READ_SIZE + 7);
        let digest = Digest::sha256_of(&blob);
        let path = dir.path().join("source");
        std::fs::write(&path, &blob).expect("write source");
        let open = || std::fs::File::open(&path).expect("open source");

        for wrong_len in [blob.len() as u64 - 1, blob.len() as u64 + 1] {
            let err = backend
                .put_file(&digest, open(), wrong_len)
                .await
                .expect_err("length mismatch");
            assert!(
                matches!(err, BackendError::LengthMismatch { expected, actual, .. }
                    if expected == wrong_len && actual != wrong_len),
                "{err}"
            );
            assert_eq!(backend.stat(&digest).await.expect("stat"), None);
        }
        // Failed uploads leave no staging files behind.
        let staged = std::fs::read_dir(dir.path().join(".tmp")).map_or(0, |d| d.count());
        assert_eq!(staged, 0);

        let n = backend
            .put_file(&digest, open(), blob.len() as u64)
            .await
            .expect("put_file");
        assert_eq!(n, blob.len() as u64);
        assert_eq!(read(&backend, &digest, None).await, blob);
    }

    #[tokio::test]
    async fn fs_plain_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = BackendConfig::new(ServiceConfig::Fs(FsServiceConfig {
            root: dir.path().to_string_lossy().into_owned(),
        }));
        config.layout = KeyLayout::Plain;
        let backend =
            Backend::new("plain", &config, default_http_client().expect("http")).expect("backend");
        let digest = put(&backend, b"plain").await;
        let path = dir.path().join(format!("blobs/sha256/{}", digest.hex()));
        assert_eq!(std::fs::read(path).expect("blob file"), b"plain");
        let listed: Vec<Digest> = backend
            .list()
            .await
            .expect("list")
            .try_collect()
            .await
            .expect("list");
        assert_eq!(listed, [digest]);
    }

    #[test]
    fn debug_does_not_print_the_operator() {
        let backend = backend(ServiceConfig::Memory(MemoryServiceConfig {}));
        assert_eq!(
            format!("{backend:?}"),
            "Backend { name: \"test\", service: \"memory\", layout: Docker, .. }"
        );
    }
}
