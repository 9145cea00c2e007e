//! `RegistryStore` against real upstreams: Debian's `docker-registry` (distribution 2.8)
//! open, with htpasswd basic auth, and with token auth from an issuer the test runs; and
//! a tiny local server for answers distribution does not give (429, `NAME_UNKNOWN`, no
//! `Content-Length`, no `Docker-Content-Digest`, a cross-host redirect).

#![allow(clippy::unwrap_used)]

mod registry_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use futures::TryStreamExt;
use kraken_storage::Digest;
use kraken_storage::backend::{
    BackendConfig, BackendError, BlobStream, RegistryServiceConfig, RegistryStore, ServiceConfig,
    default_http_client,
};
use registry_support::{
    Auth, Issuer, PASSWORD, Pusher, Registry, Reply, TinyServer, USER, file_in,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn new_store(config: &RegistryServiceConfig) -> RegistryStore {
    RegistryStore::new("up".into(), config, default_http_client().unwrap()).unwrap()
}

async fn bytes_of(stream: BlobStream) -> Vec<u8> {
    stream.map_ok(|b| b.to_vec()).try_concat().await.unwrap()
}

/// What [`push_image`] pushed.
struct Image {
    layer: (Digest, Vec<u8>),
    manifest: (Digest, Vec<u8>),
    index: (Digest, Vec<u8>),
}

/// A config, a layer, an OCI manifest tagged `v1` and an index of it tagged `multi`.
async fn push_image(pusher: &Pusher<'_>, repo: &str) -> Image {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let config_digest = pusher.blob(repo, config).await;
    let layer_digest = pusher.blob(repo, &layer).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest.to_string(), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let manifest_digest = pusher.manifest(repo, "v1", OCI_MANIFEST, &manifest).await;
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest.to_string(),
                       "size": manifest.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    })
    .to_string()
    .into_bytes();
    let index_digest = pusher.manifest(repo, "multi", OCI_INDEX, &index).await;
    Image {
        layer: (layer_digest, layer),
        manifest: (manifest_digest, manifest),
        index: (index_digest, index),
    }
}

/// stat, get and resolve_tag of everything in `image`, through `store`.
async fn assert_reads(store: &RegistryStore, repo: &str, image: &Image) {
    for (digest, bytes) in [&image.layer, &image.manifest, &image.index] {
        assert_eq!(
            store.stat(repo, digest).await.unwrap(),
            Some(bytes.len() as u64)
        );
        let stream = store.get(repo, digest).await.unwrap();
        assert_eq!(stream.len(), bytes.len() as u64);
        assert_eq!(&bytes_of(stream).await, bytes);
    }
    assert_eq!(
        store.resolve_tag(repo, "v1").await.unwrap(),
        Some(image.manifest.0)
    );
    assert_eq!(
        store.resolve_tag(repo, "multi").await.unwrap(),
        Some(image.index.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registry_serves_blobs_manifests_and_tags() {
    let registry = Registry::start(Auth::Open);
    let http = default_http_client().unwrap();
    let pusher = Pusher {
        url: &registry.url,
        authorization: None,
        http,
    };
    let image = push_image(&pusher, "library/app").await;

    // strip_prefix: the cluster's `docker.io/library/app` is `library/app` upstream.
    let mut config = RegistryServiceConfig::new(format!("{}/", registry.url));
    config.strip_prefix = Some("docker.io/".into());
    let store = new_store(&config);
    assert_reads(&store, "docker.io/library/app", &image).await;

    let missing = Digest::sha256_of(b"not pushed");
    assert_eq!(
        store.stat("docker.io/library/app", &missing).await.unwrap(),
        None
    );
    let err = store
        .get("docker.io/library/app", &missing)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::NotFound { digest, .. } if *digest == missing),
        "{err:?}"
    );
    assert_eq!(
        store
            .resolve_tag("docker.io/library/app", "nope")
            .await
            .unwrap(),
        None
    );
    // distribution 2.8 answers BLOB_UNKNOWN / MANIFEST_UNKNOWN for a repository it does
    // not have (NAME_UNKNOWN only from a tag list; see `upstream_answers_are_mapped`).
    assert_eq!(
        store
            .stat("docker.io/library/none", &image.layer.0)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .resolve_tag("docker.io/library/none", "v1")
            .await
            .unwrap(),
        None
    );

    // Through Backend, as origins use it.
    let backend_config = BackendConfig::new(ServiceConfig::Registry(config));
    let backend = kraken_storage::backend::Backend::new(
        "up",
        &backend_config,
        default_http_client().unwrap(),
    )
    .unwrap();
    let read = backend
        .read("docker.io/library/app", &image.index.0)
        .await
        .unwrap();
    assert_eq!(bytes_of(read).await, image.index.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_takes_basic_credentials_and_refuses_a_wrong_password() {
    let registry = Registry::start(Auth::Htpasswd);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let pusher = Pusher {
        url: &registry.url,
        authorization: Some(format!("Basic {basic}")),
        http: default_http_client().unwrap(),
    };
    let image = push_image(&pusher, "team/app").await;

    let mut config = RegistryServiceConfig::new(registry.url.clone());
    config.username = Some(USER.into());
    config.password_file = Some(
        file_in(registry.dir(), "password", &format!("{PASSWORD}\n"))
            .display()
            .to_string(),
    );
    assert_reads(&new_store(&config), "team/app", &image).await;

    config.password_file = None;
    config.password = Some("wrong-horse-battery".into());
    let wrong = new_store(&config);
    let err = wrong.stat("team/app", &image.layer.0).await.unwrap_err();
    assert!(
        matches!(err, BackendError::UpstreamUnauthorized { .. }),
        "{err:?}"
    );
    let err = wrong.resolve_tag("team/app", "v1").await.unwrap_err();
    assert!(
        matches!(err, BackendError::UpstreamUnauthorized { .. }),
        "{err:?}"
    );
    for text in [format!("{err}"), format!("{err:?}"), format!("{wrong:?}")] {
        assert!(!text.contains("wrong-horse-battery"), "{text}");
    }
    let anonymous = new_store(&RegistryServiceConfig::new(registry.url.clone()));
    let err = anonymous.get("team/app", &image.layer.0).await.unwrap_err();
    assert!(
        matches!(err, BackendError::UpstreamUnauthorized { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_registry_fetches_one_token_per_scope_until_it_expires() {
    let issuer = Issuer::start();
    let registry = Registry::start(Auth::Token(&issuer));
    let pusher = Pusher {
        url: &registry.url,
        authorization: Some(format!("Bearer {}", issuer.push_token("team/app"))),
        http: default_http_client().unwrap(),
    };
    let image = push_image(&pusher, "team/app").await;
    assert_eq!(issuer.requests(), 0);

    let store = Arc::new(new_store(&RegistryServiceConfig::new(registry.url.clone())));
    // Concurrent first requests share one token request.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, digest) = (store.clone(), image.layer.0);
            tokio::spawn(async move { store.stat("team/app", &digest).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.unwrap().unwrap(),
            Some(image.layer.1.len() as u64)
        );
    }
    assert_reads(&store, "team/app", &image).await;
    assert_eq!(issuer.requests(), 1, "{:?}", issuer.server.seen());
    let asked = &issuer.server.seen()[0];
    assert!(
        asked
            .target
            .contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{asked:?}"
    );
    assert!(asked.target.contains("service=test-registry"), "{asked:?}");
    assert!(
        asked.header("authorization").is_none(),
        "anonymous: {asked:?}"
    );

    // A 2 s token is used for 1 s, then fetched again.
    let short = new_store(&RegistryServiceConfig::new(registry.url.clone()));
    issuer.expires_in.store(2, Ordering::SeqCst);
    short.stat("team/app", &image.layer.0).await.unwrap();
    short.stat("team/app", &image.layer.0).await.unwrap();
    assert_eq!(issuer.requests(), 2);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    short.stat("team/app", &image.layer.0).await.unwrap();
    assert_eq!(issuer.requests(), 3);

    // Basic credentials go with the token request.
    let mut config = RegistryServiceConfig::new(registry.url.clone());
    config.username = Some("ci".into());
    config.password = Some("ci-secret".into());
    new_store(&config)
        .resolve_tag("team/app", "v1")
        .await
        .unwrap();
    let last = issuer.server.seen().pop().unwrap();
    assert!(
        last.header("authorization")
            .is_some_and(|a| a.starts_with("Basic ")),
        "{last:?}"
    );
}

const RATE_LIMITED: &str = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit. slow down"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_are_mapped() {
    let layer = b"0123456789".to_vec();
    let digest = Digest::sha256_of(&layer);
    let body = layer.clone();
    let server = TinyServer::start(move |req| match req.target.as_str() {
        t if t.starts_with("/v2/limited/") => Reply::new(429, RATE_LIMITED),
        t if t.starts_with("/v2/gone/") => Reply::new(
            404,
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
        ),
        t if t.starts_with("/v2/nolength/") => Reply {
            content_length: false,
            ..Reply::new(200, body.clone())
        },
        // No Docker-Content-Digest: the client hashes the manifest itself.
        "/v2/plain/manifests/v1" => Reply::new(200, "{}"),
        _ => Reply::new(500, "<html>oops</html>"),
    });
    let store = new_store(&RegistryServiceConfig::new(server.url.clone()));

    // A HEAD answer has no body: the status's reason is the message.
    let err = store.stat("limited", &digest).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::UpstreamTooManyRequests { message, .. } if message == "too many requests"),
        "{err:?}"
    );
    let err = store.get("limited", &digest).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::UpstreamTooManyRequests { message, .. }
            if message == "You have reached your pull rate limit. slow down"),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let err = store.resolve_tag("limited", "v1").await.unwrap_err();
    assert!(
        matches!(err, BackendError::UpstreamTooManyRequests { .. }),
        "{err:?}"
    );

    // HEAD has no body to say NAME_UNKNOWN; GET does.
    let err = store.get("gone", &digest).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::UpstreamNameUnknown { repository, .. } if repository == "gone"),
        "{err:?}"
    );
    let err = store.get("nolength", &digest).await.unwrap_err();
    assert!(
        matches!(err, BackendError::UpstreamBadResponse { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Content-Length"), "{err}");
    assert_eq!(
        store.resolve_tag("plain", "v1").await.unwrap(),
        Some(Digest::sha256_of(b"{}"))
    );
    let err = store.stat("other", &digest).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::UpstreamStatus { status: 500, message, .. } if message == "internal server error"),
        "HEAD has no body: {err:?}"
    );
    let err = store.get("other", &digest).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::UpstreamStatus { status: 500, message, .. } if message == "<html>oops</html>"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_do_not_follow_a_redirect_to_another_host() {
    let layer = b"from the cdn".to_vec();
    let digest = Digest::sha256_of(&layer);
    let cdn = Arc::new(TinyServer::start(move |_| Reply::new(200, layer.clone())));
    let cdn_url = cdn.url.replace("127.0.0.1", "localhost");
    let registry = TinyServer::start(move |req| {
        Reply::new(307, "").header("location", &format!("{cdn_url}{}", req.target))
    });
    let mut config = RegistryServiceConfig::new(registry.url.clone());
    config.token = Some("static-token-xyz".into());
    let store = new_store(&config);
    let stream = store.get("app", &digest).await.unwrap();
    assert_eq!(bytes_of(stream).await, b"from the cdn");
    let at_registry = &registry.seen()[0];
    assert_eq!(
        at_registry.header("authorization"),
        Some("Bearer static-token-xyz")
    );
    let at_cdn = &cdn.seen()[0];
    assert_eq!(at_cdn.header("authorization"), None, "{at_cdn:?}");
}
