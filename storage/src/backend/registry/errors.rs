//! Upstream answers that are not a success, mapped to [`BackendError`] in one place
//! ([`map_status`]), and [`BadResponse`], the answers that are malformed.
//!
//! The message an error carries is the upstream's own (`errors[0].message` of the
//! distribution spec's JSON error body, or the start of a text body): never anything of
//! ours, so no credential can leak into an error through it.

use crate::{Digest, DigestError};

use super::super::BackendError;

/// The most bytes of an error body read (the rest is dropped with the connection).
pub(super) const MAX_ERROR_BODY: usize = 16 * 1024;

/// The most characters of a text error body kept as its message.
const MAX_MESSAGE_CHARS: usize = 200;

/// A successful answer the client cannot use ([`BackendError::UpstreamBadResponse`]).
#[derive(Debug, thiserror::Error)]
pub enum BadResponse {
    /// The answer has no (or an unreadable) `Content-Length`, so its bytes cannot be
    /// checked for length; registries always send one for blobs and manifests.
    #[error("the answer has no Content-Length")]
    NoContentLength,
    /// The manifest is larger than a manifest may be.
    #[error("the manifest is larger than {limit} bytes")]
    ManifestTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// `Docker-Content-Digest` does not hold a digest.
    #[error("its Docker-Content-Digest is not a digest")]
    DigestHeader(#[source] DigestError),
    /// The token endpoint's answer is not the token JSON.
    #[error("the token answer is not token JSON")]
    TokenJson(#[source] serde_json::Error),
    /// The token endpoint's answer holds no token.
    #[error("the token answer holds no token")]
    NoToken,
}

/// What an error answer's body says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct ErrorBody {
    /// The spec's error code (`BLOB_UNKNOWN`, `NAME_UNKNOWN`, …), if the body is JSON.
    pub(super) code: Option<String>,
    /// `errors[0].message`, or the start of a text body; empty if there is no body.
    pub(super) message: String,
}

impl ErrorBody {
    /// Parses a body: the distribution spec's `{"errors":[{"code","message"}]}`, else
    /// the start of its text.
    pub(super) fn parse(body: &[u8]) -> ErrorBody {
        #[derive(serde::Deserialize)]
        struct Errors {
            errors: Vec<Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            code: Option<String>,
            message: Option<String>,
        }
        if let Ok(Errors { errors }) = serde_json::from_slice::<Errors>(body)
            && let Some(first) = errors.into_iter().next()
        {
            return ErrorBody {
                message: first
                    .message
                    .or_else(|| first.code.clone())
                    .unwrap_or_default(),
                code: first.code,
            };
        }
        let text = String::from_utf8_lossy(body);
        ErrorBody {
            code: None,
            message: text.trim().chars().take(MAX_MESSAGE_CHARS).collect(),
        }
    }

    /// Reads (at most [`MAX_ERROR_BODY`] bytes of) the body of `response` and parses
    /// it. A body that fails mid-way counts as what arrived.
    pub(super) async fn read(mut response: reqwest::Response) -> ErrorBody {
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(MAX_ERROR_BODY);
        ErrorBody::parse(&body)
    }

    /// Whether the upstream says the repository does not exist.
    pub(super) fn is_name_unknown(&self) -> bool {
        self.code.as_deref() == Some("NAME_UNKNOWN")
    }

    /// The message, or the status's reason phrase when the body said nothing.
    fn message_or(&self, status: u16) -> String {
        if !self.message.is_empty() {
            return self.message.clone();
        }
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message")
            .to_lowercase()
    }
}

/// What an upstream request was about, for the error it may become.
#[derive(Debug, Clone, Copy)]
pub(super) struct Context<'a> {
    /// Backend name.
    pub(super) backend: &'a str,
    /// The operation (`stat`, `read`, `resolve tag`, `token`).
    pub(super) op: &'static str,
    /// The repository as asked upstream.
    pub(super) repository: &'a str,
    /// The blob or manifest asked for, if the request named one by digest.
    pub(super) digest: Option<&'a Digest>,
}

/// The error for a non-success `status` with `body`: 401/403 → unauthorized, 404 →
/// repository unknown (`NAME_UNKNOWN`) or the digest not found, 429 → rate-limited,
/// anything else → an unexpected status. Carries the upstream's message.
pub(super) fn map_status(cx: Context<'_>, status: u16, body: &ErrorBody) -> BackendError {
    let backend = cx.backend.to_string();
    let message = body.message_or(status);
    match status {
        401 | 403 => BackendError::UpstreamUnauthorized { backend, message },
        404 if body.is_name_unknown() => BackendError::UpstreamNameUnknown {
            backend,
            repository: cx.repository.to_string(),
            message,
        },
        404 if let Some(digest) = cx.digest => BackendError::NotFound {
            backend,
            digest: *digest,
        },
        429 => BackendError::UpstreamTooManyRequests { backend, message },
        _ => BackendError::UpstreamStatus {
            backend,
            op: cx.op,
            status,
            message,
        },
    }
}

/// A transport failure of `cx`'s request.
pub(super) fn transport(cx: Context<'_>, source: reqwest::Error) -> BackendError {
    BackendError::UpstreamHttp {
        backend: cx.backend.to_string(),
        op: cx.op,
        source,
    }
}

/// A malformed successful answer to `cx`'s request.
pub(super) fn bad_response(cx: Context<'_>, problem: BadResponse) -> BackendError {
    BackendError::UpstreamBadResponse {
        backend: cx.backend.to_string(),
        op: cx.op,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(digest: Option<&Digest>) -> Context<'_> {
        Context {
            backend: "hub",
            op: "read",
            repository: "library/ubuntu",
            digest,
        }
    }

    fn body(json: &str) -> ErrorBody {
        ErrorBody::parse(json.as_bytes())
    }

    #[test]
    fn statuses_map_to_their_meanings_with_the_upstream_message() {
        let d = Digest::sha256_of(b"x");
        let denied = body(r#"{"errors":[{"code":"DENIED","message":"requested access denied"}]}"#);
        for status in [401, 403] {
            let e = map_status(cx(Some(&d)), status, &denied);
            assert!(
                matches!(&e, BackendError::UpstreamUnauthorized { message, .. } if message == "requested access denied"),
                "{e:?}"
            );
        }
        let name = body(
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
        );
        let e = map_status(cx(Some(&d)), 404, &name);
        assert!(
            matches!(&e, BackendError::UpstreamNameUnknown { repository, message, .. }
                if repository == "library/ubuntu" && message == "repository name not known to registry"),
            "{e:?}"
        );
        let blob =
            body(r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#);
        let e = map_status(cx(Some(&d)), 404, &blob);
        assert!(
            matches!(&e, BackendError::NotFound { digest, .. } if *digest == d),
            "{e:?}"
        );
        // A 404 about no digest (a tag) is an unexpected status to whoever maps it.
        let e = map_status(cx(None), 404, &ErrorBody::default());
        assert!(
            matches!(&e, BackendError::UpstreamStatus { status: 404, .. }),
            "{e:?}"
        );

        let limit = body(
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#,
        );
        let e = map_status(cx(Some(&d)), 429, &limit);
        assert!(
            matches!(&e, BackendError::UpstreamTooManyRequests { message, .. } if message.contains("pull rate limit")),
            "{e:?}"
        );
        assert!(e.is_retryable());

        let e = map_status(
            cx(Some(&d)),
            502,
            &ErrorBody::parse(b"<html>bad gateway</html>\n"),
        );
        assert!(
            matches!(&e, BackendError::UpstreamStatus { status: 502, op: "read", message, .. } if message == "<html>bad gateway</html>"),
            "{e:?}"
        );
        assert!(e.is_retryable());
        let e = map_status(cx(Some(&d)), 500, &ErrorBody::default());
        assert!(e.to_string().ends_with("internal server error"), "{e}");
    }

    #[test]
    fn bodies_give_code_and_message_and_text_is_cut() {
        assert_eq!(
            body(r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
            ErrorBody {
                code: Some("MANIFEST_UNKNOWN".into()),
                message: "MANIFEST_UNKNOWN".into(),
            }
        );
        let long = "x".repeat(1000);
        let b = ErrorBody::parse(long.as_bytes());
        assert_eq!((b.code, b.message.len()), (None, MAX_MESSAGE_CHARS));
        assert_eq!(ErrorBody::parse(b""), ErrorBody::default());
        assert_eq!(body(r#"{"errors":[]}"#).message, r#"{"errors":[]}"#);
    }
}
