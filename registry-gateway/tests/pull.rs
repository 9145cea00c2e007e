//! The read side over real HTTP: manifests, blobs, ranges, listings.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use kraken_storage::Digest;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn base_endpoint_answers_with_version_header() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), pull_config(&uploads_dir(&tmp))).await;
    for path in ["/v2/", "/v2", "/v2/?ns=docker.io"] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(
            header(&r, "docker-distribution-api-version").as_deref(),
            Some("registry/2.0")
        );
        assert_eq!(r.text().await.unwrap(), "{}");
    }
    // Errors carry it too.
    let r = s.client.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        header(&r, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
    s.stop().await;
}

#[tokio::test]
async fn manifests_by_tag_and_digest_for_all_media_types() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = MemRegistry::new();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            image_manifest(&reg, Some(DOCKER_MANIFEST), "d"),
            DOCKER_MANIFEST,
        ),
        (index_manifest(&reg, Some(DOCKER_LIST)), DOCKER_LIST),
        (image_manifest(&reg, Some(OCI_MANIFEST), "o"), OCI_MANIFEST),
        (index_manifest(&reg, Some(OCI_INDEX)), OCI_INDEX),
        // No mediaType: by shape.
        (image_manifest(&reg, None, "shape"), OCI_MANIFEST),
        (index_manifest(&reg, None), OCI_INDEX),
    ];
    for (i, (bytes, _)) in cases.iter().enumerate() {
        let d = reg.insert_blob(bytes);
        // containerd's `ns` names the registry: the repository is `docker.io/library/app`.
        reg.tag("docker.io/library/app", &format!("t{i}"), d);
    }
    let s = Server::start(reg.clone(), pull_config(&uploads_dir(&tmp))).await;
    for (i, (bytes, media)) in cases.iter().enumerate() {
        let digest = Digest::sha256_of(bytes);
        for reference in [format!("t{i}"), digest.to_string()] {
            let url = s.url(&format!(
                "/v2/library/app/manifests/{reference}?ns=docker.io"
            ));
            let r = s
                .client
                .get(&url)
                .header("accept", "*/*")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{reference}");
            assert_eq!(
                header(&r, "content-type").as_deref(),
                Some(*media),
                "{reference}"
            );
            assert_eq!(
                header(&r, "docker-content-digest"),
                Some(digest.to_string())
            );
            assert_eq!(header(&r, "content-length"), Some(bytes.len().to_string()));
            assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());

            let r = s.client.head(&url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(header(&r, "content-type").as_deref(), Some(*media));
            assert_eq!(header(&r, "content-length"), Some(bytes.len().to_string()));
            assert_eq!(
                header(&r, "docker-content-digest"),
                Some(digest.to_string())
            );
            assert!(r.bytes().await.unwrap().is_empty());
        }
    }
    // Unknown tag and digest.
    let r = s
        .client
        .get(s.url("/v2/library/app/manifests/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let missing = Digest::sha256_of(b"missing");
    let r = s
        .client
        .get(s.url(&format!("/v2/library/app/manifests/{missing}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    s.stop().await;
}

#[tokio::test]
async fn oversized_or_non_json_manifests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = MemRegistry::new();
    let big = reg.insert_blob(&vec![b' '; 2048]);
    reg.tag("a", "big", big);
    let layer = reg.insert_blob(b"\x00\x01 not json");
    let config = kraken_registry_gateway::GatewayConfig {
        max_manifest_len: 1024,
        ..pull_config(&uploads_dir(&tmp))
    };
    let s = Server::start(reg.clone(), config).await;
    let r = s
        .client
        .get(s.url("/v2/a/manifests/big"))
        .send()
        .await
        .unwrap();
    // A blob larger than any manifest is no manifest: 404, as distribution answers.
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = s
        .client
        .get(s.url(&format!("/v2/a/manifests/{big}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = s
        .client
        .get(s.url(&format!("/v2/a/manifests/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    s.stop().await;
}

/// A `GET` of `url` with `Range: range`.
async fn get_range(s: &Server, url: &str, range: &str) -> reqwest::Response {
    s.client
        .get(url)
        .header("range", range)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn blobs_get_head_and_ranges() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = MemRegistry::new();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let d = reg.insert_blob(&data);
    let s = Server::start(reg.clone(), pull_config(&uploads_dir(&tmp))).await;
    let url = s.url(&format!("/v2/library/app/blobs/{d}"));

    let r = s.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), Some("5000".into()));
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(header(&r, "accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(header(&r, "docker-content-digest"), Some(d.to_string()));
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());

    let r = s.client.head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), Some("5000".into()));
    assert_eq!(header(&r, "docker-content-digest"), Some(d.to_string()));
    assert!(r.bytes().await.unwrap().is_empty());

    let r = get_range(&s, &url, "bytes=10-1999").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "content-range").as_deref(),
        Some("bytes 10-1999/5000")
    );
    assert_eq!(header(&r, "content-length"), Some("1990".into()));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..2000]);

    let r = get_range(&s, &url, "bytes=4990-").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "content-range").as_deref(),
        Some("bytes 4990-4999/5000")
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[4990..]);

    let r = s
        .client
        .head(&url)
        .header("range", "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "content-range").as_deref(),
        Some("bytes 0-0/5000")
    );

    let r = get_range(&s, &url, "bytes=5000-").await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "content-range").as_deref(), Some("bytes */5000"));
    assert_eq!(error_code(r).await, "RANGE_INVALID");

    // A suffix: the last bytes.
    let r = get_range(&s, &url, "bytes=-7").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "content-range").as_deref(),
        Some("bytes 4993-4999/5000")
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[4993..]);

    // Every GET above was one read_blob and no stat_blob; each HEAD one stat_blob.
    assert_eq!(reg.blob_lookups(), (2, 5));

    // A malformed Range is ignored.
    let r = get_range(&s, &url, "bytes=1-2,5-6").await;
    assert_eq!(r.status(), StatusCode::OK);

    let missing = Digest::sha256_of(b"missing");
    let r = s
        .client
        .get(s.url(&format!("/v2/library/app/blobs/{missing}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = s
        .client
        .head(s.url(&format!("/v2/library/app/blobs/{missing}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn tags_and_catalog_paginate_with_link_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = MemRegistry::new();
    let d = reg.insert_blob(&image_manifest(&reg, None, "x"));
    for t in ["a", "b", "c", "d", "e"] {
        reg.tag("org/app", t, d);
    }
    for repo in ["r1", "r2", "r3"] {
        reg.tag(repo, "latest", d);
    }
    let s = Server::start(reg.clone(), push_config(&uploads_dir(&tmp))).await;

    let mut url = s.url("/v2/org/app/tags/list?n=2");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = s.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let link = header(&r, "link");
        let v = json_of(r).await;
        assert_eq!(v["name"], "org/app");
        seen.extend(
            v["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string()),
        );
        pages += 1;
        match link {
            Some(l) => {
                assert!(l.ends_with(">; rel=\"next\""), "{l}");
                let path = l.trim_start_matches('<').split('>').next().unwrap();
                assert!(
                    path.starts_with("/v2/org/app/tags/list?n=2&last="),
                    "{path}"
                );
                url = s.url(path);
            }
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    assert_eq!(pages, 3);

    // Without n: everything up to the page limit, no Link.
    let r = s
        .client
        .get(s.url("/v2/org/app/tags/list"))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "link").is_none());
    assert_eq!(json_of(r).await["tags"].as_array().unwrap().len(), 5);

    let r = s
        .client
        .get(s.url("/v2/_catalog?n=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "link").as_deref(),
        Some("</v2/_catalog?n=2&last=r1>; rel=\"next\"")
    );
    let v = json_of(r).await;
    assert_eq!(v["repositories"], serde_json::json!(["org/app", "r1"]));
    let r = s
        .client
        .get(s.url("/v2/_catalog?n=2&last=r1"))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "link").is_none());
    assert_eq!(
        json_of(r).await["repositories"],
        serde_json::json!(["r2", "r3"])
    );

    let r = s
        .client
        .get(s.url("/v2/org/app/tags/list?n=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "PAGINATION_NUMBER_INVALID");
    let r = s
        .client
        .get(s.url("/v2/unknown/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    let r = s
        .client
        .get(s.url("/v2/org/app/tags/list?n=0"))
        .send()
        .await
        .unwrap();
    let v: Value = json_of(r).await;
    assert_eq!(v["tags"].as_array().unwrap().len(), 0);
    s.stop().await;
}
