//! Who may do what: read-only gateways, push credentials, validation of every path
//! parameter, metrics, and random input thrown at the router.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use common::*;
use kraken_registry_gateway::{GatewayConfig, GatewayMetrics, PushAuth, router};
use kraken_storage::Digest;
use proptest::prelude::*;
use reqwest::StatusCode;
use tower::ServiceExt;

#[tokio::test]
async fn push_routes_are_405_on_a_read_only_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), pull_config(&uploads_dir(&tmp))).await;
    let d = Digest::sha256_of(b"x");
    let requests = [
        s.client.post(s.url("/v2/app/blobs/uploads/")),
        s.client
            .post(s.url(&format!("/v2/app/blobs/uploads/?digest={d}")))
            .body("x"),
        s.client
            .patch(s.url("/v2/app/blobs/uploads/0123456789abcdef0123456789abcdef")),
        s.client
            .put(s.url("/v2/app/blobs/uploads/0123456789abcdef0123456789abcdef")),
        s.client
            .get(s.url("/v2/app/blobs/uploads/0123456789abcdef0123456789abcdef")),
        s.client.put(s.url("/v2/app/manifests/latest")).body("{}"),
        s.client.delete(s.url("/v2/app/manifests/latest")),
        s.client.delete(s.url(&format!("/v2/app/blobs/{d}"))),
    ];
    for req in requests {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{}", r.url());
        assert_eq!(error_code(r).await, "UNSUPPORTED");
    }
    // Other methods on read endpoints are 405 too.
    let r = s
        .client
        .post(s.url("/v2/app/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(header(&r, "allow").is_some());
    s.stop().await;
    // A read-only gateway never touches its uploads directory.
    assert!(!uploads_dir(&tmp).exists());
}

#[tokio::test]
async fn writes_need_credentials_reads_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), auth_config(&uploads_dir(&tmp))).await;
    let data = b"authenticated blob".to_vec();
    let digest = Digest::sha256_of(&data);
    let url = s.url(&format!("/v2/app/blobs/uploads/?digest={digest}"));

    let r = s.client.post(&url).body(data.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<String> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        challenges.contains(&"Basic realm=\"kraken\"".to_string()),
        "{challenges:?}"
    );
    assert!(
        challenges.contains(&"Bearer realm=\"kraken\"".to_string()),
        "{challenges:?}"
    );
    assert_eq!(error_code(r).await, "UNAUTHORIZED");

    let r = s
        .client
        .post(&url)
        .basic_auth("ci", Some("wrong"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s
        .client
        .post(&url)
        .bearer_auth("nope")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!s.registry.has_blob(&digest));

    let r = s
        .client
        .post(&url)
        .basic_auth("ci", Some("hunter2"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .client
        .post(&url)
        .bearer_auth("tok3n")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // Manifest PUT needs them too; reads stay open.
    let m = image_manifest(&s.registry, None, "a");
    let put = s
        .client
        .put(s.url("/v2/app/manifests/v1"))
        .header("content-type", OCI_MANIFEST);
    let r = put
        .try_clone()
        .unwrap()
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = put
        .bearer_auth("tok3n")
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .client
        .get(s.url("/v2/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .client
        .get(s.url(&format!("/v2/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The version check is how clients discover (and `docker login` verifies) credentials.
    let r = s.client.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&r, "www-authenticate").is_some());
    let r = s
        .client
        .get(s.url("/v2/"))
        .basic_auth("ci", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s
        .client
        .get(s.url("/v2/"))
        .basic_auth("ci", Some("hunter2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn bad_names_tags_and_digests_are_refused_before_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let d = Digest::sha256_of(b"x");
    let cases = [
        (format!("/v2/Upper/blobs/{d}"), "NAME_INVALID"),
        (format!("/v2/a..b/manifests/{d}"), "NAME_INVALID"),
        ("/v2/-a/tags/list".to_string(), "NAME_INVALID"),
        (
            format!("/v2/{}/manifests/latest", "a".repeat(300)),
            "NAME_INVALID",
        ),
        ("/v2/app/blobs/sha256:abc".to_string(), "DIGEST_INVALID"),
        (
            "/v2/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".to_string(),
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/app/blobs/{}", d.to_string().to_uppercase()),
            "DIGEST_INVALID",
        ),
        ("/v2/app/manifests/sha256:zz".to_string(), "DIGEST_INVALID"),
        ("/v2/app/manifests/.hidden".to_string(), "TAG_INVALID"),
        ("/v2/app/referrers/latest".to_string(), "DIGEST_INVALID"),
        ("/v2/app/tags/list?last=..".to_string(), "TAG_INVALID"),
        ("/v2/_catalog?last=UP".to_string(), "NAME_INVALID"),
    ];
    for (path, code) in cases {
        let r = s.client.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(error_code(r).await, code, "{path}");
    }
    let r = s
        .client
        .post(s.url("/v2/UP/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_INVALID");
    let r = s
        .client
        .put(s.url("/v2/app/manifests/bad:tag"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    s.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_method_and_class() {
    let tmp = tempfile::tempdir().unwrap();
    let metrics = GatewayMetrics::new();
    let config = GatewayConfig {
        metrics: metrics.clone(),
        ..pull_config(&uploads_dir(&tmp))
    };
    let reg = MemRegistry::new();
    let d = reg.insert_blob(&[7u8; 3000]);
    let s = Server::start(reg, config).await;
    s.client
        .get(s.url("/v2/"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    s.client
        .get(s.url(&format!("/v2/a/blobs/{d}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    s.client
        .head(s.url(&format!("/v2/a/blobs/{d}")))
        .send()
        .await
        .unwrap();
    s.client
        .get(s.url("/v2/a/blobs/sha256:0"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    s.stop().await;
    assert_eq!(metrics.requests("GET", 2), 2);
    assert_eq!(metrics.requests("HEAD", 2), 1);
    assert_eq!(metrics.requests("GET", 4), 1);
    assert!(metrics.response_bytes() >= 3002);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("kraken_gateway_requests_total{method=\"GET\",status=\"2xx\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("kraken_gateway_requests_in_flight 0"),
        "{text}"
    );
}

#[test]
fn invalid_configs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = GatewayConfig {
        max_manifest_len: 0,
        ..push_config(&uploads_dir(&tmp))
    };
    assert!(router(MemRegistry::new(), bad).is_err());
    let no_creds = GatewayConfig {
        auth: Some(PushAuth::default()),
        ..push_config(&uploads_dir(&tmp))
    };
    assert!(router(MemRegistry::new(), no_creds).is_err());
}

/// One router (and its registry) for every random case.
fn shared_router() -> &'static (tempfile::TempDir, axum::Router) {
    static R: OnceLock<(tempfile::TempDir, axum::Router)> = OnceLock::new();
    R.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let reg = MemRegistry::new();
        let m = image_manifest(&reg, None, "fuzz");
        let d = reg.insert_blob(&m);
        assert_eq!(d, fuzz_manifest_digest());
        reg.insert_blob(b"fuzz blob");
        reg.tag("app", "latest", d);
        let config = GatewayConfig {
            max_manifest_len: 4096,
            ..push_config(&uploads_dir(&tmp))
        };
        let r = router(Arc::clone(&reg), config).unwrap();
        (tmp, r)
    })
}

/// The digest of the manifest tagged `app:latest` in [`shared_router`].
fn fuzz_manifest_digest() -> Digest {
    Digest::sha256_of(&image_manifest(&MemRegistry::default(), None, "fuzz"))
}

/// Mostly well-formed endpoint paths over good and bad names, sometimes random segments.
fn path_strategy() -> impl Strategy<Value = String> {
    let m = fuzz_manifest_digest().to_string();
    let b = Digest::sha256_of(b"fuzz blob").to_string();
    let name = prop_oneof![
        Just("app".to_string()),
        Just("a/b".to_string()),
        Just("UP".to_string()),
        Just("a%2Fb".to_string()),
        "[a-z0-9._/-]{1,12}",
    ];
    let endpoint = prop_oneof![
        Just("manifests/latest".to_string()),
        Just(format!("manifests/{m}")),
        "manifests/[a-zA-Z0-9:._%-]{0,12}",
        Just(format!("blobs/{b}")),
        Just(format!("blobs/{m}")),
        "blobs/[a-z0-9:]{0,70}",
        Just("blobs/uploads/".to_string()),
        Just("blobs/uploads".to_string()),
        "blobs/uploads/[0-9a-f]{30,33}",
        "blobs/uploads/[a-zA-Z0-9%./]{0,12}",
        Just("tags/list".to_string()),
        Just(format!("referrers/{m}")),
        "referrers/[a-z0-9:]{0,70}",
    ];
    let structured = (name, endpoint).prop_map(|(n, e)| format!("/v2/{n}/{e}"));
    let seg = prop_oneof![
        Just("v2".to_string()),
        Just("blobs".to_string()),
        Just("uploads".to_string()),
        Just("manifests".to_string()),
        Just("tags".to_string()),
        Just("list".to_string()),
        Just("_catalog".to_string()),
        Just("..".to_string()),
        Just("%2e%2e".to_string()),
        Just("%ff".to_string()),
        "[a-zA-Z0-9:._%-]{0,12}",
    ];
    let random =
        prop::collection::vec(seg, 0..8).prop_map(|segs| format!("/v2/{}", segs.join("/")));
    prop_oneof![4 => structured, 1 => random, 1 => Just("/v2/_catalog".to_string())]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_requests_never_panic_or_fail_internally(
        method in prop_oneof![
            3 => Just("GET"), 2 => Just("HEAD"), 3 => Just("PUT"), 2 => Just("POST"),
            2 => Just("PATCH"), 1 => Just("DELETE"), 1 => Just("OPTIONS"), 1 => Just("BREW")
        ],
        path in path_strategy(),
        query in "(\\?(digest|mount|from|n|last|artifactType|ns)=[a-z0-9:%-]{0,10}(&(digest|n|last)=[a-z0-9:]{0,70})?)?",
        range in proptest::option::of("[ -~]{0,20}"),
        content_range in proptest::option::of("[0-9 -]{0,12}"),
        content_type in proptest::option::of("[ -~]{0,40}"),
        auth in proptest::option::of("[ -~]{0,30}"),
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let (_, app) = shared_router();
        let mut req = axum::http::Request::builder().method(method).uri(format!("{path}{query}"));
        for (name, value) in [("range", &range), ("content-range", &content_range), ("content-type", &content_type), ("authorization", &auth)] {
            if let Some(v) = value {
                req = req.header(name, v.as_str());
            }
        }
        let Ok(req) = req.body(Body::from(body)) else {
            return Ok(());
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let response = rt.block_on(async {
            let r = app.clone().oneshot(req).await.unwrap();
            let status = r.status();
            let version = r.headers().get("docker-distribution-api-version").cloned();
            let _ = axum::body::to_bytes(r.into_body(), 1 << 20).await;
            (status, version)
        });
        prop_assert!(response.1.is_some());
        prop_assert!(!response.0.is_server_error(), "{} {}{} -> {}", method, path, query, response.0);
    }
}
