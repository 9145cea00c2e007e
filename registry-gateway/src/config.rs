//! [`GatewayConfig`]: what one gateway serves and how, and [`GatewayError`] for a gateway
//! that cannot start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{AuthConfigError, PushAuth};
use crate::listen::HttpLimits;
use crate::metrics::GatewayMetrics;

/// Default manifest size limit (4 MiB, what common registries accept).
pub const DEFAULT_MAX_MANIFEST_LEN: u64 = crate::media::MAX_MANIFEST_LEN;
/// Default (and largest) page of tags or repositories.
pub const DEFAULT_PAGE_LIMIT: usize = 1000;
/// Default lifetime of an idle upload session.
pub const DEFAULT_UPLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of an upload session that never received a byte.
pub const DEFAULT_EMPTY_UPLOAD_TTL: Duration = Duration::from_secs(600);

/// Caps on upload sessions (proxies), per client address and in total. Past them a new
/// session, or a chunk that would stage more bytes, is answered `429 TOOMANYREQUESTS`.
/// Staged bytes are the bytes held in sessions on the gateway's disk; monolithic
/// uploads streamed through to an origin stage none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadLimits {
    /// Open sessions, all clients together.
    pub max_sessions: u64,
    /// Open sessions of one client address (sessions are charged to the address that
    /// started them).
    pub max_sessions_per_client: u64,
    /// Staged bytes, all sessions together.
    pub max_staged_bytes: u64,
    /// Staged bytes of one client address's sessions.
    pub max_staged_bytes_per_client: u64,
    /// A session that has not received a byte this long after it started is removed
    /// (an abandoned or unauthenticated `POST` does not hold a slot for the whole
    /// `upload_ttl`).
    pub empty_ttl: Duration,
}

impl Default for UploadLimits {
    /// 4096 sessions (256 per client), 64 GiB staged (16 GiB per client), empty sessions
    /// kept 10 minutes.
    fn default() -> Self {
        UploadLimits {
            max_sessions: 4096,
            max_sessions_per_client: 256,
            max_staged_bytes: 64 << 30,
            max_staged_bytes_per_client: 16 << 30,
            empty_ttl: DEFAULT_EMPTY_UPLOAD_TTL,
        }
    }
}

/// How a gateway serves the registry API.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Whether writes are served (proxy: `true`; agent: `false`, writes answer 405
    /// `UNSUPPORTED`).
    pub push: bool,
    /// Where upload sessions live (one directory each); must be durable for uploads to
    /// survive a restart. Created and used only when `push` is on.
    pub uploads_dir: PathBuf,
    /// Largest manifest accepted on PUT or served on GET.
    pub max_manifest_len: u64,
    /// Credentials required for writes (deletes included); `None` lets anyone push, which
    /// [`crate::serve`] allows beyond loopback only with [`Self::allow_anonymous_push`].
    pub auth: Option<PushAuth>,
    /// Default and largest `n` of tag listings and the catalog.
    pub page_limit: usize,
    /// An upload session untouched for this long is forgotten and its bytes deleted.
    pub upload_ttl: Duration,
    /// Counters of the requests served (keep a clone to render them).
    pub metrics: GatewayMetrics,
    /// The zero-copy blob server ([`crate::serve_blobs`]) of this host, if it runs one: a
    /// blob `GET` answers `307` there when [`crate::registry::Registry::local_blob`] holds
    /// the blob. Plain HTTP only (the redirect names `http://`): [`crate::serve_tls`]
    /// ignores it and streams every blob.
    pub blob_server: Option<SocketAddr>,
    /// More routes served beside the registry API (the node's push notification
    /// endpoints), with their own state; they pass through the same access log and
    /// metrics. The registry API answers every path they do not name.
    pub routes: Option<axum::Router>,
    /// The limits of the listener ([`crate::serve`], [`crate::serve_tls`]): connections,
    /// timeouts, body rate.
    pub http: HttpLimits,
    /// Caps on upload sessions and the bytes they stage.
    pub upload_limits: UploadLimits,
    /// Whether a push-enabled gateway may serve beyond loopback without [`Self::auth`]:
    /// without it, [`crate::serve`] refuses to start there ([`GatewayError::AnonymousPush`]).
    pub allow_anonymous_push: bool,
    /// Whether a chunked upload's bytes also go on to the cluster as they arrive, so that
    /// its closing `PUT` need not send them again (see `pass_on`). Default on.
    pub pass_on_chunks: bool,
}

impl Default for GatewayConfig {
    /// A read-only gateway (an agent's): no push, no auth, 4 MiB manifests, pages of 1000,
    /// sessions kept a day under the system temporary directory (set `uploads_dir` to a
    /// durable place on a proxy).
    fn default() -> Self {
        GatewayConfig {
            push: false,
            uploads_dir: std::env::temp_dir().join("kraken-registry-uploads"),
            max_manifest_len: DEFAULT_MAX_MANIFEST_LEN,
            auth: None,
            page_limit: DEFAULT_PAGE_LIMIT,
            upload_ttl: DEFAULT_UPLOAD_TTL,
            metrics: GatewayMetrics::default(),
            blob_server: None,
            routes: None,
            http: HttpLimits::default(),
            upload_limits: UploadLimits::default(),
            allow_anonymous_push: false,
            pass_on_chunks: true,
        }
    }
}

impl GatewayConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |m: &str| Err(GatewayError::Config(m.to_string()));
        if self.max_manifest_len == 0 {
            return bad("max_manifest_len must be at least 1 byte");
        }
        if self.max_manifest_len > 1 << 30 {
            return bad("max_manifest_len above 1 GiB: manifests are held in memory");
        }
        if self.page_limit == 0 {
            return bad("page_limit must be at least 1");
        }
        if self.upload_ttl.is_zero() {
            return bad("upload_ttl must be positive");
        }
        if self.uploads_dir.as_os_str().is_empty() {
            return bad("uploads_dir is empty");
        }
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        self.http
            .validate()
            .map_err(|e| GatewayError::Config(format!("http: {e}")))?;
        let u = &self.upload_limits;
        if u.max_sessions == 0 || u.max_sessions_per_client == 0 {
            return bad(
                "max_upload_sessions and max_upload_sessions_per_client must be at least 1",
            );
        }
        if u.max_sessions_per_client > u.max_sessions {
            return bad("max_upload_sessions_per_client above max_upload_sessions");
        }
        if u.max_staged_bytes == 0 || u.max_staged_bytes_per_client == 0 {
            return bad("max_staged_bytes and max_staged_bytes_per_client must be at least 1");
        }
        if u.max_staged_bytes_per_client > u.max_staged_bytes {
            return bad("max_staged_bytes_per_client above max_staged_bytes");
        }
        if u.empty_ttl.is_zero() || u.empty_ttl > self.upload_ttl {
            return bad("empty_upload_ttl must be positive and at most the upload ttl");
        }
        Ok(())
    }

    /// Refuses to serve pushes without credentials beyond loopback on `addr`, unless
    /// [`Self::allow_anonymous_push`] says so.
    pub fn check_exposure(&self, addr: SocketAddr) -> Result<(), GatewayError> {
        if self.push
            && self.auth.is_none()
            && !self.allow_anonymous_push
            && !addr.ip().is_loopback()
        {
            return Err(GatewayError::AnonymousPush(addr));
        }
        Ok(())
    }
}

/// Why a gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A setting is invalid.
    #[error("invalid gateway config: {0}")]
    Config(String),
    /// Push without credentials on an address beyond loopback.
    #[error(
        "refusing to serve push without authentication on {0}, which is not loopback: \
         configure push credentials or set allow_anonymous_push = true"
    )]
    AnonymousPush(SocketAddr),
    /// The push credentials are invalid.
    #[error("invalid gateway config: {0}")]
    Auth(#[from] AuthConfigError),
    /// The uploads directory cannot be created or read.
    #[error("uploads directory {path}: {source}")]
    UploadsDir {
        /// The directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A TLS certificate or key file cannot be read or parsed.
    #[error("tls: {what} {path}: {source}")]
    TlsFile {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("tls: no certificate in {0}")]
    NoCertificate(PathBuf),
    /// rustls refused the certificate and key.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_nonsense_is_not() {
        assert!(GatewayConfig::default().validate().is_ok());
        let c = GatewayConfig {
            page_limit: 0,
            ..GatewayConfig::default()
        };
        assert!(c.validate().is_err());
        let c = GatewayConfig {
            auth: Some(PushAuth::default()),
            ..GatewayConfig::default()
        };
        assert!(c.validate().is_err());
        let c = GatewayConfig {
            upload_limits: UploadLimits {
                max_sessions_per_client: 10,
                max_sessions: 5,
                ..UploadLimits::default()
            },
            ..GatewayConfig::default()
        };
        assert!(c.validate().is_err());
        let c = GatewayConfig {
            http: HttpLimits {
                max_connections: 0,
                ..HttpLimits::default()
            },
            ..GatewayConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_connections")
        );
    }

    #[test]
    fn anonymous_push_beyond_loopback_needs_saying_so() {
        let open: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let proxy = GatewayConfig {
            push: true,
            ..GatewayConfig::default()
        };
        let e = proxy.check_exposure(open).unwrap_err();
        assert!(e.to_string().contains("allow_anonymous_push"), "{e}");
        assert!(proxy.check_exposure(local).is_ok());
        assert!(proxy.check_exposure("[::1]:5000".parse().unwrap()).is_ok());
        let allowed = GatewayConfig {
            allow_anonymous_push: true,
            ..proxy.clone()
        };
        assert!(allowed.check_exposure(open).is_ok());
        let agent = GatewayConfig::default();
        assert!(agent.check_exposure(open).is_ok());
    }
}
