//! `BackendConfig`: one storage backend as written in TOML, a service section plus the key
//! layout and write tuning, and its validation.
//!
//! ```toml
//! layout = "docker"            # or "plain"; see `KeyLayout`
//! write_chunk_size = 8388608   # bytes per multipart part / buffered write
//! write_concurrency = 2        # parts in flight per upload
//! op_timeout_secs = 10         # bound on each stat, delete, ... (not s3/gcs bodies)
//! io_timeout_secs = 10         # bound on each read or write call of a body, a listing page
//!
//! [s3]                         # exactly one of [fs], [memory], [s3], [gcs], [webhdfs]
//! bucket = "registry"
//! region = "us-east-1"
//! endpoint = "http://127.0.0.1:9000"
//! ```
//!
//! Every service section parses in every build; a service whose cargo feature is off
//! (`gcs`, `webhdfs`) is rejected by [`BackendConfig::validate`] with
//! [`BackendError::ServiceNotCompiled`], so a config file means the same thing everywhere
//! and a missing feature is reported by name instead of as an unknown key.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{BackendError, KeyLayout};

/// Default size of one buffered write / multipart part: 8 MiB.
pub const DEFAULT_WRITE_CHUNK_SIZE: usize = 8 * 1024 * 1024;
/// Default number of parts one upload keeps in flight.
pub const DEFAULT_WRITE_CONCURRENCY: usize = 2;
/// S3's smallest allowed multipart part (all but the last part).
pub const S3_MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Upper bound on `write_chunk_size`: each upload holds up to
/// `write_chunk_size * write_concurrency` bytes in memory.
pub const MAX_WRITE_CHUNK_SIZE: usize = 512 * 1024 * 1024;
/// Upper bound on `write_concurrency`.
pub const MAX_WRITE_CONCURRENCY: usize = 64;
/// Default of `op_timeout_secs`: 10 s. A healthy object store answers a stat or a delete
/// in tens of milliseconds and its slow tail within a second or two; a backend silent for
/// 10 s is hung, and the write-back queue retries the item later.
pub const DEFAULT_OP_TIMEOUT_SECS: u64 = 10;
/// Default of `io_timeout_secs`: 10 s. Each call on a body (a read of the next bytes, a
/// write of a part, the final commit) must finish within it; with 8 MiB parts that asks
/// for at least ~1 MB/s to the backend. Raise it for slower links or larger parts.
pub const DEFAULT_IO_TIMEOUT_SECS: u64 = 10;
/// Upper bound on both timeouts (an hour): past it, a hung backend is never noticed.
pub const MAX_TIMEOUT_SECS: u64 = 3600;

/// One storage backend: which service, how keys are laid out, how uploads are chunked.
///
/// The default is an in-memory backend with the Docker layout, 8 MiB parts and two parts
/// in flight: tuned for tests and `kraken dev`, not for keeping data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawBackendConfig", into = "RawBackendConfig")]
pub struct BackendConfig {
    /// The storage service and its settings.
    pub service: ServiceConfig,
    /// Key layout inside the service's root. Default: [`KeyLayout::Docker`].
    pub layout: KeyLayout,
    /// Bytes buffered per write call to the service; for S3 and GCS the multipart part
    /// size. Default 8 MiB; at least 5 MiB for S3.
    pub write_chunk_size: usize,
    /// Parts one upload sends concurrently. Memory per upload is about
    /// `write_chunk_size * write_concurrency`. Default 2.
    pub write_concurrency: usize,
    /// Seconds any operation that moves no body (stat, delete, opening a reader, a
    /// multipart's creation) may take before it fails as timed out. Default
    /// [`DEFAULT_OP_TIMEOUT_SECS`]; 1..=[`MAX_TIMEOUT_SECS`].
    pub op_timeout_secs: u64,
    /// Seconds each call on a body (one read, one part written, the final commit, one
    /// listing page) may take. Default [`DEFAULT_IO_TIMEOUT_SECS`];
    /// 1..=[`MAX_TIMEOUT_SECS`].
    pub io_timeout_secs: u64,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::new(ServiceConfig::Memory(MemoryServiceConfig {}))
    }
}

impl BackendConfig {
    /// A config for `service` with the default layout and write tuning.
    pub fn new(service: ServiceConfig) -> Self {
        BackendConfig {
            service,
            layout: KeyLayout::default(),
            write_chunk_size: DEFAULT_WRITE_CHUNK_SIZE,
            write_concurrency: DEFAULT_WRITE_CONCURRENCY,
            op_timeout_secs: DEFAULT_OP_TIMEOUT_SECS,
            io_timeout_secs: DEFAULT_IO_TIMEOUT_SECS,
        }
    }

    /// Parses a config from TOML text (the fields of this struct at top level).
    pub fn from_toml_str(text: &str) -> Result<Self, BackendError> {
        let config: BackendConfig =
            toml::from_str(text).map_err(|e| BackendError::toml(text, e))?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects settings that cannot work: empty names, half a key pair, chunk sizes a
    /// service would refuse, a service not compiled into this build.
    pub fn validate(&self) -> Result<(), BackendError> {
        let config = |msg: String| Err(BackendError::Config(msg));
        if self.write_chunk_size == 0 || self.write_chunk_size > MAX_WRITE_CHUNK_SIZE {
            return config(format!(
                "write_chunk_size must be between 1 and {MAX_WRITE_CHUNK_SIZE} bytes, got {}",
                self.write_chunk_size
            ));
        }
        if self.write_concurrency == 0 || self.write_concurrency > MAX_WRITE_CONCURRENCY {
            return config(format!(
                "write_concurrency must be between 1 and {MAX_WRITE_CONCURRENCY}, got {}",
                self.write_concurrency
            ));
        }
        for (key, secs) in [
            ("op_timeout_secs", self.op_timeout_secs),
            ("io_timeout_secs", self.io_timeout_secs),
        ] {
            if secs == 0 || secs > MAX_TIMEOUT_SECS {
                return config(format!(
                    "{key} must be between 1 and {MAX_TIMEOUT_SECS} seconds, got {secs}"
                ));
            }
        }
        match &self.service {
            ServiceConfig::Fs(fs) => {
                if fs.root.trim().is_empty() {
                    return config("fs: root must not be empty".into());
                }
            }
            ServiceConfig::Memory(_) => {}
            ServiceConfig::S3(s3) => {
                require_name("s3", "bucket", &s3.bucket)?;
                if let Some(region) = &s3.region {
                    require_name("s3", "region", region)?;
                }
                if let Some(endpoint) = &s3.endpoint {
                    require_url("s3", endpoint)?;
                }
                match (&s3.access_key_id, &s3.secret_access_key) {
                    (Some(_), None) | (None, Some(_)) => {
                        return config(
                            "s3: access_key_id and secret_access_key must be given together".into(),
                        );
                    }
                    (Some(_), Some(_)) if s3.anonymous => {
                        return config(
                            "s3: anonymous = true conflicts with access_key_id/secret_access_key"
                                .into(),
                        );
                    }
                    _ => {}
                }
                if s3.session_token.is_some() && s3.access_key_id.is_none() {
                    return config("s3: session_token needs access_key_id".into());
                }
                if self.write_chunk_size < S3_MIN_PART_SIZE {
                    return config(format!(
                        "s3: write_chunk_size must be at least {S3_MIN_PART_SIZE} bytes (S3's \
                         smallest multipart part), got {}",
                        self.write_chunk_size
                    ));
                }
            }
            ServiceConfig::Gcs(gcs) => {
                if !cfg!(feature = "gcs") {
                    return Err(BackendError::ServiceNotCompiled {
                        service: "gcs",
                        feature: "gcs",
                    });
                }
                require_name("gcs", "bucket", &gcs.bucket)?;
                if gcs.credential.is_some() && gcs.credential_path.is_some() {
                    return config("gcs: give credential or credential_path, not both".into());
                }
                if let Some(endpoint) = &gcs.endpoint {
                    require_url("gcs", endpoint)?;
                }
            }
            ServiceConfig::Webhdfs(hdfs) => {
                if !cfg!(feature = "webhdfs") {
                    return Err(BackendError::ServiceNotCompiled {
                        service: "webhdfs",
                        feature: "webhdfs",
                    });
                }
                require_url("webhdfs", &hdfs.endpoint)?;
            }
            ServiceConfig::Registry(registry) => registry.validate()?,
        }
        Ok(())
    }
}

fn require_name(service: &str, field: &str, value: &str) -> Result<(), BackendError> {
    if value.trim().is_empty() {
        return Err(BackendError::Config(format!(
            "{service}: {field} must not be empty"
        )));
    }
    Ok(())
}

fn require_url(service: &str, endpoint: &str) -> Result<(), BackendError> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(BackendError::Config(format!(
            "{service}: endpoint {endpoint:?} must start with http:// or https://"
        )));
    }
    Ok(())
}

/// The storage service of a backend; in TOML, a section named after the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceConfig {
    /// A local directory (`[fs]`).
    Fs(FsServiceConfig),
    /// Process memory, lost on exit (`[memory]`); for tests and `kraken dev`.
    Memory(MemoryServiceConfig),
    /// Amazon S3 or an S3-compatible server (`[s3]`).
    S3(S3ServiceConfig),
    /// Google Cloud Storage (`[gcs]`); needs the `gcs` feature.
    Gcs(GcsServiceConfig),
    /// HDFS over the WebHDFS REST API (`[webhdfs]`); needs the `webhdfs` feature.
    Webhdfs(WebhdfsServiceConfig),
    /// An OCI distribution registry (`[registry]`), read-only: the upstream of a
    /// pull-through cache (Docker Hub, GHCR, a private registry).
    Registry(RegistryServiceConfig),
}

impl ServiceConfig {
    /// The service's name as written in config.
    pub fn name(&self) -> &'static str {
        match self {
            ServiceConfig::Fs(_) => "fs",
            ServiceConfig::Memory(_) => "memory",
            ServiceConfig::S3(_) => "s3",
            ServiceConfig::Gcs(_) => "gcs",
            ServiceConfig::Webhdfs(_) => "webhdfs",
            ServiceConfig::Registry(_) => "registry",
        }
    }
}

/// `[fs]`: blobs as files under a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsServiceConfig {
    /// The directory; created if missing. Uploads are staged in `<root>/.tmp` and renamed
    /// into place when complete, so a failed upload never leaves a partial blob.
    pub root: String,
}

/// `[memory]`: no settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryServiceConfig {}

/// `[s3]`: a bucket on Amazon S3 or an S3-compatible server.
///
/// Credentials, in order: `access_key_id` + `secret_access_key` (+ `session_token`) if
/// given; unsigned requests if `anonymous = true`; otherwise the AWS default chain
/// (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` env, `~/.aws` profile, web identity,
/// instance metadata).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3ServiceConfig {
    /// Bucket name. Required.
    pub bucket: String,
    /// Region; default `AWS_REGION`, then `AWS_DEFAULT_REGION`, then `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL, for S3-compatible servers; default: AWS's endpoint for the region.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Key prefix inside the bucket (the registry's `rootdirectory`); default `/`.
    #[serde(default)]
    pub root: Option<String>,
    /// Path-style requests (`https://endpoint/bucket/key`) instead of virtual-host style
    /// (`https://bucket.endpoint/key`). Default `true`, which every S3-compatible server
    /// accepts.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// Static access key id; needs `secret_access_key`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Static secret key; needs `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token for temporary static credentials.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Send unsigned requests (public buckets). Default `false`.
    #[serde(default)]
    pub anonymous: bool,
}

fn default_true() -> bool {
    true
}

impl S3ServiceConfig {
    /// A config for `bucket` with every other field at its default.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3ServiceConfig {
            bucket: bucket.into(),
            region: None,
            endpoint: None,
            root: None,
            path_style: true,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            anonymous: false,
        }
    }
}

impl fmt::Debug for S3ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3ServiceConfig")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("root", &self.root)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

/// `[gcs]`: a Google Cloud Storage bucket (feature `gcs`).
///
/// Credentials: `credential` (base64 of a service-account JSON) or `credential_path` (a
/// file); otherwise `GOOGLE_APPLICATION_CREDENTIALS` and the VM metadata server; no
/// signing at all with `anonymous = true`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcsServiceConfig {
    /// Bucket name. Required.
    pub bucket: String,
    /// Key prefix inside the bucket; default `/`.
    #[serde(default)]
    pub root: Option<String>,
    /// Base64-encoded service-account JSON.
    #[serde(default)]
    pub credential: Option<String>,
    /// Path of a service-account JSON file.
    #[serde(default)]
    pub credential_path: Option<String>,
    /// Endpoint URL; default `https://storage.googleapis.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Send unsigned requests (public buckets). Default `false`.
    #[serde(default)]
    pub anonymous: bool,
}

impl fmt::Debug for GcsServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsServiceConfig")
            .field("bucket", &self.bucket)
            .field("root", &self.root)
            .field("credential", &redacted(&self.credential))
            .field("credential_path", &self.credential_path)
            .field("endpoint", &self.endpoint)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

/// `[webhdfs]`: HDFS through the WebHDFS REST API of a namenode (feature `webhdfs`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhdfsServiceConfig {
    /// Namenode URL, e.g. `http://namenode:9870`. Required.
    pub endpoint: String,
    /// Directory under which keys live; default `/`.
    #[serde(default)]
    pub root: Option<String>,
    /// Hadoop user name (`user.name`), for clusters without Kerberos.
    #[serde(default)]
    pub user_name: Option<String>,
    /// Delegation token.
    #[serde(default)]
    pub delegation: Option<String>,
}

impl fmt::Debug for WebhdfsServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhdfsServiceConfig")
            .field("endpoint", &self.endpoint)
            .field("root", &self.root)
            .field("user_name", &self.user_name)
            .field("delegation", &redacted(&self.delegation))
            .finish()
    }
}

/// Default of [`RegistryServiceConfig::tag_cache_secs`]: five minutes.
pub const DEFAULT_TAG_CACHE_SECS: u64 = 300;
/// Default of [`RegistryServiceConfig::tag_stale_secs`]: one day.
pub const DEFAULT_TAG_STALE_SECS: u64 = 24 * 60 * 60;

/// `[registry]`: an OCI distribution registry read through as a pull-through cache.
///
/// ```toml
/// [[backends]]
/// namespace = "docker\\.io/.+"
/// backend.registry = { url = "https://registry-1.docker.io", strip_prefix = "docker.io/" }
/// ```
///
/// Read-only: blobs and manifests of matching repositories are read from the upstream
/// (verified against their digests) and tags resolved there; nothing is ever written to
/// it, and pushes into a repository routed here are refused. Credentials: none
/// (anonymous, with Docker Hub's anonymous bearer-token flow answered), `username` with
/// `password` or `password_file` (basic, or exchanged for a bearer token when the registry
/// asks for one), or a ready bearer `token` / `token_file`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryServiceConfig {
    /// Base URL, `http(s)://host[:port]`, without `/v2`.
    pub url: String,
    /// Removed from the front of a repository name before asking the upstream, so
    /// `docker.io/library/ubuntu` in the cluster is `library/ubuntu` upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// User for basic credentials (and for the token exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password of `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// File holding the password of `username` (read at start; trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// A bearer token sent as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding a bearer token (read at start; trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// How long a tag → digest answer from the upstream is used before asking again.
    #[serde(default = "default_tag_cache_secs")]
    pub tag_cache_secs: u64,
    /// How long after its last confirmation a tag still resolves to its last known digest
    /// while the upstream is unreachable.
    #[serde(default = "default_tag_stale_secs")]
    pub tag_stale_secs: u64,
}

fn default_tag_cache_secs() -> u64 {
    DEFAULT_TAG_CACHE_SECS
}

fn default_tag_stale_secs() -> u64 {
    DEFAULT_TAG_STALE_SECS
}

impl RegistryServiceConfig {
    /// An anonymous upstream at `url` with default tag caching.
    pub fn new(url: impl Into<String>) -> Self {
        RegistryServiceConfig {
            url: url.into(),
            strip_prefix: None,
            username: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            tag_cache_secs: DEFAULT_TAG_CACHE_SECS,
            tag_stale_secs: DEFAULT_TAG_STALE_SECS,
        }
    }

    /// Checks the URL, that credentials come in consistent sets, and the tag times.
    pub fn validate(&self) -> Result<(), BackendError> {
        let config = |msg: &str| Err(BackendError::Config(format!("registry: {msg}")));
        require_url("registry", &self.url)?;
        if self.password.is_some() && self.password_file.is_some() {
            return config("give password or password_file, not both");
        }
        if (self.password.is_some() || self.password_file.is_some()) != self.username.is_some() {
            return config("username and password (or password_file) must be given together");
        }
        if self.token.is_some() && self.token_file.is_some() {
            return config("give token or token_file, not both");
        }
        if self.username.is_some() && (self.token.is_some() || self.token_file.is_some()) {
            return config("give basic credentials or a token, not both");
        }
        if self.tag_stale_secs < self.tag_cache_secs {
            return config("tag_stale_secs must be at least tag_cache_secs");
        }
        Ok(())
    }
}

impl fmt::Debug for RegistryServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryServiceConfig")
            .field("url", &self.url)
            .field("strip_prefix", &self.strip_prefix)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("password_file", &self.password_file)
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("tag_cache_secs", &self.tag_cache_secs)
            .field("tag_stale_secs", &self.tag_stale_secs)
            .finish()
    }
}

fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

/// The TOML shape: one optional table per service, exactly one of which must be present.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendConfig {
    #[serde(default)]
    layout: KeyLayout,
    #[serde(default = "default_chunk")]
    write_chunk_size: usize,
    #[serde(default = "default_concurrency")]
    write_concurrency: usize,
    #[serde(default = "default_op_timeout")]
    op_timeout_secs: u64,
    #[serde(default = "default_io_timeout")]
    io_timeout_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fs: Option<FsServiceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memory: Option<MemoryServiceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s3: Option<S3ServiceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gcs: Option<GcsServiceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    webhdfs: Option<WebhdfsServiceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registry: Option<RegistryServiceConfig>,
}

fn default_chunk() -> usize {
    DEFAULT_WRITE_CHUNK_SIZE
}

fn default_concurrency() -> usize {
    DEFAULT_WRITE_CONCURRENCY
}

fn default_op_timeout() -> u64 {
    DEFAULT_OP_TIMEOUT_SECS
}

fn default_io_timeout() -> u64 {
    DEFAULT_IO_TIMEOUT_SECS
}

/// Why a backend's TOML does not name exactly one storage service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceSectionError {
    /// It names none.
    #[error("no service section: add one of [fs], [memory], [s3], [gcs], [webhdfs], [registry]")]
    Missing,
    /// It names several (these).
    #[error("a backend has exactly one service section, found {}", .0.join(", "))]
    Several(Vec<&'static str>),
}

impl TryFrom<RawBackendConfig> for BackendConfig {
    type Error = ServiceSectionError;

    fn try_from(raw: RawBackendConfig) -> Result<Self, ServiceSectionError> {
        let mut services = Vec::new();
        if let Some(c) = raw.fs {
            services.push(ServiceConfig::Fs(c));
        }
        if let Some(c) = raw.memory {
            services.push(ServiceConfig::Memory(c));
        }
        if let Some(c) = raw.s3 {
            services.push(ServiceConfig::S3(c));
        }
        if let Some(c) = raw.gcs {
            services.push(ServiceConfig::Gcs(c));
        }
        if let Some(c) = raw.webhdfs {
            services.push(ServiceConfig::Webhdfs(c));
        }
        if let Some(c) = raw.registry {
            services.push(ServiceConfig::Registry(c));
        }
        if services.len() > 1 {
            let names = services.iter().map(ServiceConfig::name).collect();
            return Err(ServiceSectionError::Several(names));
        }
        let service = services.pop().ok_or(ServiceSectionError::Missing)?;
        Ok(BackendConfig {
            service,
            layout: raw.layout,
            write_chunk_size: raw.write_chunk_size,
            write_concurrency: raw.write_concurrency,
            op_timeout_secs: raw.op_timeout_secs,
            io_timeout_secs: raw.io_timeout_secs,
        })
    }
}

impl From<BackendConfig> for RawBackendConfig {
    fn from(config: BackendConfig) -> Self {
        let mut raw = RawBackendConfig {
            layout: config.layout,
            write_chunk_size: config.write_chunk_size,
            write_concurrency: config.write_concurrency,
            op_timeout_secs: config.op_timeout_secs,
            io_timeout_secs: config.io_timeout_secs,
            fs: None,
            memory: None,
            s3: None,
            gcs: None,
            webhdfs: None,
            registry: None,
        };
        match config.service {
            ServiceConfig::Fs(c) => raw.fs = Some(c),
            ServiceConfig::Memory(c) => raw.memory = Some(c),
            ServiceConfig::S3(c) => raw.s3 = Some(c),
            ServiceConfig::Gcs(c) => raw.gcs = Some(c),
            ServiceConfig::Webhdfs(c) => raw.webhdfs = Some(c),
            ServiceConfig::Registry(c) => raw.registry = Some(c),
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BackendConfig, BackendError> {
        BackendConfig::from_toml_str(text)
    }

    #[test]
    fn s3_with_defaults() {
        let c = parse("[s3]\nbucket = \"b\"").expect("minimal s3 parses");
        assert_eq!(c.layout, KeyLayout::Docker);
        assert_eq!(c.write_chunk_size, DEFAULT_WRITE_CHUNK_SIZE);
        assert_eq!(c.write_concurrency, DEFAULT_WRITE_CONCURRENCY);
        assert_eq!(c.op_timeout_secs, DEFAULT_OP_TIMEOUT_SECS);
        assert_eq!(c.io_timeout_secs, DEFAULT_IO_TIMEOUT_SECS);
        assert_eq!(c.service, ServiceConfig::S3(S3ServiceConfig::new("b")));
    }

    #[test]
    fn full_s3_and_serialization_round_trip() {
        let text = r#"
            layout = "plain"
            write_chunk_size = 16777216
            write_concurrency = 4
            op_timeout_secs = 3
            io_timeout_secs = 30
            [s3]
            bucket = "b"
            region = "eu-west-1"
            endpoint = "http://127.0.0.1:9000"
            root = "/registry"
            path_style = false
            access_key_id = "AK"
            secret_access_key = "SK"
        "#;
        let c = parse(text).expect("full s3 parses");
        assert_eq!(c.layout, KeyLayout::Plain);
        assert_eq!(c.write_concurrency, 4);
        assert_eq!((c.op_timeout_secs, c.io_timeout_secs), (3, 30));
        let ServiceConfig::S3(s3) = &c.service else {
            panic!("not s3: {c:?}");
        };
        assert!(!s3.path_style);
        assert_eq!(s3.root.as_deref(), Some("/registry"));
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("\"SK\""),
            "secret leaked into Debug: {debug}"
        );
        let raw = RawBackendConfig::from(c.clone());
        assert_eq!(BackendConfig::try_from(raw).expect("round trips"), c);
    }

    #[test]
    fn fs_and_memory() {
        let c = parse("[fs]\nroot = \"/var/lib/kraken\"").expect("fs parses");
        assert_eq!(c.service.name(), "fs");
        let c = parse("[memory]").expect("memory parses");
        assert_eq!(c, BackendConfig::default());
    }

    #[test]
    fn rejects_bad_configs() {
        let cases = [
            ("", "no service section"),
            ("[azblob]\ncontainer = \"x\"", "unknown field `azblob`"),
            ("[s3]\nregion = \"x\"", "missing field `bucket`"),
            ("[s3]\nbucket = \" \"", "s3: bucket must not be empty"),
            (
                "op_timeout_secs = 0\n[s3]\nbucket = \"b\"",
                "op_timeout_secs must be between 1 and 3600 seconds, got 0",
            ),
            (
                "io_timeout_secs = 3601\n[s3]\nbucket = \"b\"",
                "io_timeout_secs must be between 1 and 3600 seconds, got 3601",
            ),
            (
                "[s3]\nbucket = \"b\"\nbukcet = \"c\"",
                "unknown field `bukcet`",
            ),
            (
                "[s3]\nbucket = \"b\"\naccess_key_id = \"a\"",
                "given together",
            ),
            (
                "[s3]\nbucket = \"b\"\nendpoint = \"localhost:9000\"",
                "must start with http",
            ),
            (
                "write_chunk_size = 1048576\n[s3]\nbucket = \"b\"",
                "at least 5242880",
            ),
            (
                "write_concurrency = 0\n[memory]",
                "write_concurrency must be between",
            ),
            ("[memory]\n[fs]\nroot = \"/x\"", "found fs, memory"),
            ("[fs]\nroot = \"\"", "fs: root must not be empty"),
            ("layout = \"flat\"\n[memory]", "unknown variant `flat`"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn toml_errors_keep_the_parsers_error_and_its_line() {
        let err = parse("[s3]\nbucket = \"b\"\nbukcet = \"c\"").expect_err("a typo");
        let BackendError::Toml { line, source } = &err else {
            panic!("not a toml error: {err:?}");
        };
        assert_eq!(*line, Some(3));
        assert!(
            source.message().contains("unknown field `bukcet`"),
            "{source}"
        );
        assert_eq!(
            err.to_string(),
            format!("invalid backend config: line 3: {}", source.message())
        );
        assert_eq!(
            ServiceSectionError::Several(vec!["fs", "memory"]).to_string(),
            "a backend has exactly one service section, found fs, memory"
        );
    }

    #[test]
    fn compiled_out_services_are_named() {
        let gcs = parse("[gcs]\nbucket = \"b\"");
        let hdfs = parse("[webhdfs]\nendpoint = \"http://nn:9870\"");
        if cfg!(feature = "gcs") {
            assert!(gcs.is_ok(), "{gcs:?}");
        } else {
            let err = gcs.expect_err("gcs is compiled out").to_string();
            assert!(err.contains("`gcs` is not compiled in"), "{err}");
        }
        if cfg!(feature = "webhdfs") {
            assert!(hdfs.is_ok(), "{hdfs:?}");
        } else {
            let err = hdfs.expect_err("webhdfs is compiled out").to_string();
            assert!(err.contains("feature `webhdfs`"), "{err}");
        }
    }
}
