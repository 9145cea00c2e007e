//! What the cluster does with repositories routed to an upstream registry (a
//! `[[backends]]` route whose backend is `registry`, read-only): writes into them are
//! refused before anything is stored, and the upstream's refusals keep their meaning on
//! the way to the client (see [`backend_error`]; the agent's and proxy's registry turns the
//! kinds into the gateway's errors).

use kraken_storage::backend::{BackendError, NamespaceRouter};

use crate::proto::{ErrorKind, RemoteError};

/// Refuses a write (a blob upload, a tag put or delete) into `repo` when its route is an
/// upstream registry: [`ErrorKind::Denied`], naming the upstream. A repository no route
/// matches is not this function's to refuse.
pub fn refuse_writes(router: &NamespaceRouter, repo: &str) -> Result<(), RemoteError> {
    match router.route(repo).ok().and_then(|b| b.registry()) {
        Some(upstream) => Err(RemoteError::new(
            ErrorKind::Denied,
            format!(
                "repository {repo} mirrors {} and is read-only",
                upstream.url()
            ),
        )),
        None => Ok(()),
    }
}

/// A failed backend call as the answer callers get. An upstream registry's refusals keep
/// their meaning and the upstream's own message (the gateway turns them into
/// `UNAUTHORIZED`, `NAME_UNKNOWN` and `TOOMANYREQUESTS`); anything else that is not a
/// missing blob is the backend being unavailable.
pub fn backend_error(e: &BackendError) -> RemoteError {
    let kind = match e {
        BackendError::NotFound { .. } => ErrorKind::NotFound,
        BackendError::UpstreamUnauthorized { message, .. } => {
            return RemoteError::new(ErrorKind::Unauthorized, message.clone());
        }
        BackendError::UpstreamNameUnknown { message, .. } => {
            return RemoteError::new(ErrorKind::NameUnknown, message.clone());
        }
        BackendError::UpstreamTooManyRequests { message, .. } => {
            return RemoteError::new(ErrorKind::TooManyRequests, message.clone());
        }
        _ => ErrorKind::Unavailable,
    };
    RemoteError::new(kind, e.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kraken_storage::backend::RouterConfig;

    /// `docker.io/…` mirrors Docker Hub; everything else is a plain blob store.
    pub(crate) fn mirror_router() -> NamespaceRouter {
        let toml = r#"
            [[backends]]
            namespace = "docker\\.io/.+"
            backend.registry = { url = "https://registry-1.docker.io", strip_prefix = "docker.io/" }
            [[backends]]
            namespace = ".*"
            backend.memory = {}
        "#;
        let config = RouterConfig::from_toml_str(toml).unwrap();
        NamespaceRouter::new(
            &config,
            kraken_storage::backend::default_http_client().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn writes_into_a_mirror_are_denied_naming_the_upstream() {
        let router = mirror_router();
        let e = refuse_writes(&router, "docker.io/library/ubuntu").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Denied);
        assert_eq!(
            e.message,
            "repository docker.io/library/ubuntu mirrors https://registry-1.docker.io and is read-only"
        );
        refuse_writes(&router, "library/ubuntu").unwrap();
    }

    #[test]
    fn upstream_refusals_keep_their_kind_and_the_upstreams_message() {
        let backend = || "hub".to_string();
        let cases = [
            (
                BackendError::UpstreamUnauthorized {
                    backend: backend(),
                    message: "authentication required".into(),
                },
                ErrorKind::Unauthorized,
            ),
            (
                BackendError::UpstreamNameUnknown {
                    backend: backend(),
                    repository: "library/nope".into(),
                    message: "repository name not known to registry".into(),
                },
                ErrorKind::NameUnknown,
            ),
            (
                BackendError::UpstreamTooManyRequests {
                    backend: backend(),
                    message: "you have reached your pull rate limit".into(),
                },
                ErrorKind::TooManyRequests,
            ),
        ];
        for (e, kind) in cases {
            let message = match &e {
                BackendError::UpstreamUnauthorized { message, .. }
                | BackendError::UpstreamNameUnknown { message, .. }
                | BackendError::UpstreamTooManyRequests { message, .. } => message.clone(),
                _ => unreachable!(),
            };
            assert_eq!(backend_error(&e), RemoteError::new(kind, message));
        }
        let missing = BackendError::NotFound {
            backend: backend(),
            digest: kraken_storage::Digest::sha256_of(b"x"),
        };
        assert_eq!(backend_error(&missing).kind, ErrorKind::NotFound);
        let status = BackendError::UpstreamStatus {
            backend: backend(),
            op: "read",
            status: 502,
            message: "bad gateway".into(),
        };
        assert_eq!(backend_error(&status).kind, ErrorKind::Unavailable);
    }
}
