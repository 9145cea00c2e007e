//! [`GatewayConfig`]: what one gateway serves and how, and [`GatewayError`] for a gateway
//! that cannot start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{AuthConfigError, PushAuth};
use crate::metrics::GatewayMetrics;

/// Default manifest size limit (4 MiB, what common registries accept).
pub const DEFAULT_MAX_MANIFEST_LEN: u64 = crate::media::MAX_MANIFEST_LEN;
/// Default (and largest) page of tags or repositories.
pub const DEFAULT_PAGE_LIMIT: usize = 1000;
/// Default lifetime of an idle upload session.
pub const DEFAULT_UPLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

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
    /// Credentials required for writes; `None` lets anyone push.
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
        Ok(())
    }
}

/// Why a gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A setting is invalid.
    #[error("invalid gateway config: {0}")]
    Config(String),
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
    }
}
