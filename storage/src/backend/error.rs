//! `BackendError`: everything that can go wrong configuring, routing to or talking to a
//! remote storage backend.
//!
//! OpenDAL's errors are mapped in one place (`BackendError::from_opendal`), so callers
//! branch on a small set of meanings (missing, retry later, misconfigured, broken) instead
//! of OpenDAL's error kinds.

use crate::{Digest, DigestError};

/// Errors from backend configuration, namespace routing and backend I/O.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The configuration is invalid: a field is missing, empty, out of range or in
    /// conflict with another (the message says which).
    #[error("invalid backend config: {0}")]
    Config(String),

    /// The config's TOML does not parse, or does not fit a config's shape (an unknown or
    /// mistyped field, a missing service section, …).
    #[error("invalid backend config: {}", toml_message(*.line, .source))]
    Toml {
        /// The 1-based line the error is on, when the parser knows it.
        line: Option<usize>,
        /// The parser's error (boxed: it is large).
        #[source]
        source: Box<toml::de::Error>,
    },

    /// The storage service rejected the settings when the backend's operator was built.
    #[error("invalid backend config: backend {backend:?}: {source}")]
    Rejected {
        /// Backend name.
        backend: String,
        /// OpenDAL's error (boxed: it is large).
        #[source]
        source: Box<opendal::Error>,
    },

    /// One entry of a `[[backends]]` list is invalid; names the entry so the operator can
    /// find it in the file.
    #[error("backends[{index}] (namespace {namespace:?}): {problem}")]
    InvalidRoute {
        /// Zero-based position of the entry in the list.
        index: usize,
        /// The entry's namespace pattern as written (empty if it had none).
        namespace: String,
        /// What is wrong with it.
        #[source]
        problem: RouteProblem,
    },

    /// The `[[backends]]` list is empty, so no namespace could ever be routed.
    #[error("no backends configured: the [[backends]] list is empty")]
    NoRoutes,

    /// The config names a storage service that this build does not include.
    #[error(
        "storage service `{service}` is not compiled in; rebuild kraken-storage with feature `{feature}`"
    )]
    ServiceNotCompiled {
        /// The service named in the config.
        service: &'static str,
        /// The cargo feature that adds it.
        feature: &'static str,
    },

    /// No route's namespace pattern matches this namespace.
    #[error("no backend is configured for namespace {0:?}")]
    NoRoute(String),

    /// The blob is not in the backend.
    #[error("blob {digest} not found in backend {backend:?}")]
    NotFound {
        /// Backend name.
        backend: String,
        /// The missing blob.
        digest: Digest,
    },

    /// A ranged read asked for bytes outside the blob (or an inverted range).
    #[error(
        "range {start}..{end} is not within blob {digest} of {len} bytes in backend {backend:?}"
    )]
    RangeNotSatisfiable {
        /// Backend name.
        backend: String,
        /// The blob read.
        digest: Digest,
        /// Requested start (inclusive).
        start: u64,
        /// Requested end (exclusive).
        end: u64,
        /// The blob's length.
        len: u64,
    },

    /// A blob had a different number of bytes than expected: an upload source that was
    /// shorter or longer than announced, or a download that ended early or ran long.
    #[error("blob {digest} in backend {backend:?}: expected {expected} bytes, got {actual}")]
    LengthMismatch {
        /// Backend name.
        backend: String,
        /// The blob.
        digest: Digest,
        /// Bytes expected.
        expected: u64,
        /// Bytes seen.
        actual: u64,
    },

    /// Uploaded bytes do not hash to the digest they were stored under; nothing was
    /// committed.
    #[error("upload to backend {backend:?} for {expected} has digest {actual}; not stored")]
    DigestMismatch {
        /// Backend name.
        backend: String,
        /// The digest the caller named.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },

    /// The data source of an upload (a local file or the caller's stream) failed; nothing
    /// was committed.
    #[error("reading the data to upload {digest} to backend {backend:?} failed")]
    Source {
        /// Backend name.
        backend: String,
        /// The blob being uploaded.
        digest: Digest,
        /// The source's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The backend is unreachable, timed out or throttled us; retrying later may succeed.
    #[error("backend {backend:?} is unavailable during {op}")]
    Unavailable {
        /// Backend name.
        backend: String,
        /// The operation (`stat`, `read`, `write`, `delete`, `list`).
        op: &'static str,
        /// OpenDAL's error, with the request's context (boxed: it is large).
        #[source]
        source: Box<opendal::Error>,
    },

    /// The backend is an upstream registry, read-only by design: it cannot `op`
    /// (writes, deletes, listing blobs).
    #[error("backend {backend:?} is an upstream registry and cannot {op}")]
    Unsupported {
        /// Backend name.
        backend: String,
        /// The operation refused.
        op: &'static str,
    },

    /// The upstream registry refused our credentials (HTTP 401 or 403).
    #[error("upstream registry {backend:?} refused access: {message}")]
    UpstreamUnauthorized {
        /// Backend name.
        backend: String,
        /// The upstream's own error message.
        message: String,
    },

    /// The upstream registry does not know the repository (HTTP 404 `NAME_UNKNOWN`).
    #[error("upstream registry {backend:?} has no repository {repository:?}: {message}")]
    UpstreamNameUnknown {
        /// Backend name.
        backend: String,
        /// The repository as asked upstream.
        repository: String,
        /// The upstream's own error message.
        message: String,
    },

    /// The upstream registry rate-limited us (HTTP 429); retrying later may succeed.
    #[error("upstream registry {backend:?} rate-limited us: {message}")]
    UpstreamTooManyRequests {
        /// Backend name.
        backend: String,
        /// The upstream's own error message.
        message: String,
    },

    /// The upstream registry could not be reached, or the connection failed mid-way.
    #[error("upstream registry {backend:?} is unreachable during {op}")]
    UpstreamHttp {
        /// Backend name.
        backend: String,
        /// The operation (`stat`, `read`, `resolve tag`, `token`).
        op: &'static str,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },

    /// The upstream registry answered with a status we do not expect for `op`.
    #[error("upstream registry {backend:?} answered {status} during {op}: {message}")]
    UpstreamStatus {
        /// Backend name.
        backend: String,
        /// The operation.
        op: &'static str,
        /// The HTTP status.
        status: u16,
        /// The upstream's own error message (or the start of its body).
        message: String,
    },

    /// The upstream registry answered with success, but not with something usable
    /// (no `Content-Length`, an oversized manifest, a malformed digest or token answer).
    #[error("upstream registry {backend:?} answered {op} badly: {problem}")]
    UpstreamBadResponse {
        /// Backend name.
        backend: String,
        /// The operation.
        op: &'static str,
        /// What is wrong with the answer.
        #[source]
        problem: super::registry::BadResponse,
    },

    /// A credential file named in the config (`password_file`, `token_file`) cannot be
    /// read. The message names the file, never its content.
    #[error("invalid backend config: backend {backend:?}: cannot read {field} {path:?}")]
    SecretFile {
        /// Backend name.
        backend: String,
        /// The config field naming the file.
        field: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },

    /// Any other backend failure (permission denied, unexpected response …); retrying
    /// the same request is unlikely to help.
    #[error("backend {backend:?} failed during {op}")]
    Io {
        /// Backend name.
        backend: String,
        /// The operation (`stat`, `read`, `write`, `delete`, `list`).
        op: &'static str,
        /// OpenDAL's error, with the request's context (boxed: it is large).
        #[source]
        source: Box<opendal::Error>,
    },

    /// The HTTP client for HTTP-based services could not be built.
    #[error("cannot build the http client for storage backends")]
    HttpClient(#[source] reqwest::Error),

    /// A tag's link file is too long to hold a digest.
    #[error("tag link {key} is {len} bytes: not a digest")]
    TagLinkTooLong {
        /// The link's key in the backend.
        key: String,
        /// Its length.
        len: u64,
    },

    /// A tag's link file does not hold a digest.
    #[error("tag link {key} holds no digest: {source}")]
    TagLinkNotDigest {
        /// The link's key in the backend.
        key: String,
        /// Why its text is not a digest.
        #[source]
        source: DigestError,
    },
}

/// What is wrong with one `[[backends]]` entry ([`BackendError::InvalidRoute`]).
#[derive(Debug, thiserror::Error)]
pub enum RouteProblem {
    /// The entry does not fit a route's shape (an unknown or mistyped field, a missing
    /// service section, …).
    #[error("{}", .0.message().trim())]
    Toml(#[source] Box<toml::de::Error>),
    /// The namespace pattern is not a regular expression.
    #[error("invalid namespace regex: {0}")]
    Regex(#[source] regex::Error),
    /// The entry's backend is invalid or could not be built.
    #[error(transparent)]
    Backend(Box<BackendError>),
}

/// A TOML error on one line: `line N: message`, or the message alone.
fn toml_message(line: Option<usize>, err: &toml::de::Error) -> String {
    match line {
        Some(line) => format!("line {line}: {}", err.message()),
        None => err.message().to_string(),
    }
}

impl BackendError {
    /// A TOML error in `text`, with the line it is on.
    pub(crate) fn toml(text: &str, err: toml::de::Error) -> Self {
        let line = err.span().map(|span| {
            text.get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1
        });
        BackendError::Toml {
            line,
            source: Box::new(err),
        }
    }

    /// Whether retrying the same operation later may succeed (the backend was unavailable).
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Unavailable { .. }
            | BackendError::UpstreamTooManyRequests { .. }
            | BackendError::UpstreamHttp { .. } => true,
            BackendError::UpstreamStatus { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Maps an OpenDAL error from operation `op` on `backend`. `digest` is the blob the
    /// operation addressed, if any; only then does "not found" become
    /// [`BackendError::NotFound`].
    pub(crate) fn from_opendal(
        backend: &str,
        op: &'static str,
        digest: Option<&Digest>,
        err: opendal::Error,
    ) -> Self {
        use opendal::ErrorKind;
        let backend = backend.to_string();
        match (err.kind(), digest) {
            (ErrorKind::NotFound, Some(digest)) => BackendError::NotFound {
                backend,
                digest: *digest,
            },
            (ErrorKind::ConfigInvalid, _) => BackendError::Rejected {
                backend,
                source: Box::new(err),
            },
            (ErrorKind::RateLimited, _) => BackendError::Unavailable {
                backend,
                op,
                source: Box::new(err),
            },
            _ if err.is_temporary() => BackendError::Unavailable {
                backend,
                op,
                source: Box::new(err),
            },
            _ => BackendError::Io {
                backend,
                op,
                source: Box::new(err),
            },
        }
    }

    /// Maps an `io::Error` coming out of an OpenDAL stream adapter, recovering the OpenDAL
    /// error inside it when there is one.
    pub(crate) fn from_opendal_io(
        backend: &str,
        op: &'static str,
        digest: Option<&Digest>,
        err: std::io::Error,
    ) -> Self {
        let kind = err.kind();
        let err = match err.into_inner() {
            Some(inner) => match inner.downcast::<opendal::Error>() {
                Ok(od) => *od,
                Err(other) => opendal::Error::new(opendal::ErrorKind::Unexpected, "i/o error")
                    .set_source(BoxedError(other))
                    .with_temporary(is_transient(kind)),
            },
            None => opendal::Error::new(opendal::ErrorKind::Unexpected, kind.to_string())
                .with_temporary(is_transient(kind)),
        };
        Self::from_opendal(backend, op, digest, err)
    }
}

/// A boxed error as a concrete type (OpenDAL's `set_source` wants `Into<anyhow::Error>`).
#[derive(Debug)]
struct BoxedError(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for BoxedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BoxedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

fn is_transient(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::TimedOut
            | K::Interrupted
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::ConnectionRefused
            | K::BrokenPipe
            | K::UnexpectedEof
    )
}
