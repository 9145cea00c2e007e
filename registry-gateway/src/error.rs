//! The distribution specification's error codes and the JSON error responses built from them.
//!
//! Every failure the gateway reports is an `ApiError`: a code from [`ErrorCode`], the HTTP
//! status (the code's own unless a route says otherwise, e.g. 413 for an oversized
//! manifest), a message, an optional `detail`, and any extra headers the client needs
//! (`Range` after an out-of-order chunk, `WWW-Authenticate` after a missing credential).
//! The body is always `{"errors":[{"code":…,"message":…,"detail":…}]}`.

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, IntoHeaderName};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::registry::RegistryError;

/// An error code of the distribution specification (plus the few Docker ones clients know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The blob is unknown to the registry.
    BlobUnknown,
    /// The upload is invalid (bad chunk, wrong length …).
    BlobUploadInvalid,
    /// The upload session is unknown, finished or expired.
    BlobUploadUnknown,
    /// The digest is malformed, or did not match the content.
    DigestInvalid,
    /// A manifest references a blob the registry lacks.
    ManifestBlobUnknown,
    /// The manifest is malformed or too large.
    ManifestInvalid,
    /// No manifest with this tag or digest.
    ManifestUnknown,
    /// The repository name breaks the grammar.
    NameInvalid,
    /// The repository is not known.
    NameUnknown,
    /// A length did not match the content.
    SizeInvalid,
    /// Credentials are required.
    Unauthorized,
    /// Credentials were given but do not allow this.
    Denied,
    /// The operation is not supported here.
    Unsupported,
    /// The client sent too many requests.
    TooManyRequests,
    /// The tag breaks the grammar (Docker's code).
    TagInvalid,
    /// The `n` query parameter is not a number (Docker's code).
    PaginationNumberInvalid,
    /// A `Range` or `Content-Range` cannot be honoured (Docker's code).
    RangeInvalid,
    /// The cluster is (partly) unreachable; retry later (Docker's code).
    Unavailable,
    /// Anything else (Docker's code).
    Unknown,
}

impl ErrorCode {
    /// The code as it appears in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The status the specification gives this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid
            | ErrorCode::TagInvalid
            | ErrorCode::PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One failed request, ready to become a response (boxed: results stay small).
#[derive(Debug)]
pub(crate) struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    code: ErrorCode,
    status: StatusCode,
    message: String,
    detail: Option<Value>,
    headers: HeaderMap,
}

/// Bounds what an error message echoes back from untrusted input.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        s.to_string()
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

impl ApiError {
    /// An error with the code's own status.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(Box::new(Inner {
            code,
            status: code.status(),
            message: message.into(),
            detail: None,
            headers: HeaderMap::new(),
        }))
    }

    /// Overrides the status.
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.0.status = status;
        self
    }

    /// Adds a `detail` object.
    pub(crate) fn with_detail(mut self, detail: Value) -> Self {
        self.0.detail = Some(detail);
        self
    }

    /// Adds a header to the response (ignored if the value is not a valid header value).
    pub(crate) fn with_header(mut self, name: impl IntoHeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.0.headers.append(name, v);
        }
        self
    }

    /// The code.
    pub(crate) fn code(&self) -> ErrorCode {
        self.0.code
    }

    /// A 404 for a path that is no endpoint of the API.
    pub(crate) fn not_found(path: &str) -> Self {
        ApiError::new(
            ErrorCode::Unsupported,
            format!("no such endpoint: {}", clip(path)),
        )
        .with_status(StatusCode::NOT_FOUND)
    }

    /// A 405 for a method the endpoint does not serve.
    pub(crate) fn method_not_allowed(allow: &str) -> Self {
        ApiError::new(
            ErrorCode::Unsupported,
            "method not allowed on this endpoint",
        )
        .with_header(axum::http::header::ALLOW, allow)
    }

    /// A 405 for a write when the gateway is read-only.
    pub(crate) fn push_disabled() -> Self {
        ApiError::new(
            ErrorCode::Unsupported,
            "this registry is read-only: push through a proxy",
        )
    }

    /// Maps a cluster error in a blob context.
    pub(crate) fn from_blob(e: RegistryError) -> Self {
        match e {
            RegistryError::TagUnknown(m) => ApiError::new(ErrorCode::ManifestUnknown, m),
            other => other.into(),
        }
    }

    /// Maps a cluster error in a manifest context (a missing blob is a missing manifest).
    pub(crate) fn from_manifest(e: RegistryError) -> Self {
        match e {
            RegistryError::BlobUnknown(m) => ApiError::new(ErrorCode::ManifestUnknown, m),
            other => other.into(),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::BlobUnknown(m) => ApiError::new(ErrorCode::BlobUnknown, m),
            RegistryError::TagUnknown(m) => ApiError::new(ErrorCode::ManifestUnknown, m),
            RegistryError::NameUnknown(m) => ApiError::new(ErrorCode::NameUnknown, m),
            RegistryError::ManifestBlobUnknown(m) => {
                ApiError::new(ErrorCode::ManifestBlobUnknown, format!("blob unknown: {m}"))
                    .with_detail(json!({ "blobs": m }))
            }
            RegistryError::DigestInvalid(m) => ApiError::new(ErrorCode::DigestInvalid, m),
            e @ RegistryError::RangeNotSatisfiable { total } => {
                ApiError::new(ErrorCode::RangeInvalid, e.to_string())
                    .with_header(CONTENT_RANGE, &format!("bytes */{total}"))
            }
            RegistryError::Unsupported(m) => ApiError::new(ErrorCode::Unsupported, m),
            RegistryError::Unavailable(m) => ApiError::new(ErrorCode::Unavailable, m)
                .with_header(axum::http::header::RETRY_AFTER, "5"),
            RegistryError::Internal(m) => ApiError::new(ErrorCode::Unknown, m),
            RegistryError::Unauthorized(m) => ApiError::new(ErrorCode::Unauthorized, m),
            RegistryError::Denied(m) => ApiError::new(ErrorCode::Denied, m),
            RegistryError::TooManyRequests(m) => ApiError::new(ErrorCode::TooManyRequests, m)
                .with_header(axum::http::header::RETRY_AFTER, "5"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = *self.0;
        let mut entry = json!({ "code": e.code.as_str(), "message": e.message });
        if let (Some(detail), Some(obj)) = (e.detail, entry.as_object_mut()) {
            obj.insert("detail".into(), detail);
        }
        let body = json!({ "errors": [entry] }).to_string();
        let mut response = Response::new(Body::from(body.clone()));
        *response.status_mut() = e.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        for (name, value) in e.headers.iter() {
            headers.append(name.clone(), value.clone());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_spec_statuses() {
        assert_eq!(ErrorCode::BlobUnknown.status(), StatusCode::NOT_FOUND);
        assert_eq!(ErrorCode::DigestInvalid.status(), StatusCode::BAD_REQUEST);
        assert_eq!(ErrorCode::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            ErrorCode::Unsupported.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        // The specification spells it without underscores.
        assert_eq!(ErrorCode::TooManyRequests.as_str(), "TOOMANYREQUESTS");
    }

    #[test]
    fn unavailable_is_503_with_retry_after() {
        let r = ApiError::from(RegistryError::Unavailable("x".into())).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key(axum::http::header::RETRY_AFTER));
    }

    #[test]
    fn upstream_refusals_keep_their_code_status_and_message() {
        for (e, status, code) in [
            (
                RegistryError::Unauthorized("upstream: bad credentials".into()),
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
            ),
            (
                RegistryError::Denied("upstream: bad credentials".into()),
                StatusCode::FORBIDDEN,
                "DENIED",
            ),
            (
                RegistryError::TooManyRequests("upstream: bad credentials".into()),
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
            ),
            (
                RegistryError::NameUnknown("upstream: bad credentials".into()),
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
            ),
        ] {
            let e = ApiError::from(e);
            assert_eq!(e.0.status, status);
            assert_eq!(e.code().as_str(), code);
            assert_eq!(e.0.message, "upstream: bad credentials");
        }
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(400);
        assert!(clip(&s).len() < 320);
    }
}
