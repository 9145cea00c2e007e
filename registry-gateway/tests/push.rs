//! The write side over real HTTP: upload sessions, manifests, referrers, tag deletion.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use kraken_storage::Digest;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn chunked_upload_with_patch_status_and_put() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    let digest = Digest::sha256_of(&data);
    let loc = start_upload(&s, "org/app").await;

    let r = s
        .client
        .patch(&loc)
        .header("content-range", "0-999")
        .body(data[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range").as_deref(), Some("0-999"));
    let loc = s.url(&header(&r, "location").unwrap());

    // Out of order: 416 with the current range, nothing written.
    let r = s
        .client
        .patch(&loc)
        .header("content-range", "500-1499")
        .body(data[500..1500].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range").as_deref(), Some("0-999"));

    // A chunk whose length disagrees with its range.
    let r = s
        .client
        .patch(&loc)
        .header("content-range", "1000-1999")
        .body(data[1000..1500].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = s.client.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range").as_deref(), Some("0-999"));

    // Streaming chunk without Content-Range.
    let r = s
        .client
        .patch(&loc)
        .body(data[1000..2000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range").as_deref(), Some("0-1999"));

    // Final chunk with the PUT.
    let r = s
        .client
        .put(format!("{loc}?digest={digest}"))
        .body(data[2000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "location"),
        Some(format!("/v2/org/app/blobs/{digest}"))
    );
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(digest.to_string())
    );
    assert_eq!(s.registry.blob(&digest).unwrap().as_ref(), data.as_slice());

    let r = s
        .client
        .get(s.url(&format!("/v2/org/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());

    // The session is gone.
    let r = s.client.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    s.stop().await;
}

#[tokio::test]
async fn monolithic_post_and_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let data = b"monolithic blob".to_vec();
    let digest = Digest::sha256_of(&data);
    let r = s
        .client
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={digest}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "location"),
        Some(format!("/v2/app/blobs/{digest}"))
    );
    assert!(s.registry.has_blob(&digest));

    // Wrong digest on a monolithic POST.
    let wrong = Digest::sha256_of(b"other");
    let r = s
        .client
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert!(!s.registry.has_blob(&wrong));

    // Mount of a blob the cluster has: 201 at once.
    let r = s
        .client
        .post(s.url(&format!("/v2/other/blobs/uploads/?mount={digest}&from=app")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "location"),
        Some(format!("/v2/other/blobs/{digest}"))
    );
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(digest.to_string())
    );

    // The cluster has the blob, but the source repository never linked it (or does not
    // exist), or no source is named: a normal session, as the specification says.
    for query in [
        format!("mount={digest}&from=never-held-it"),
        format!("mount={digest}"),
    ] {
        let r = s
            .client
            .post(s.url(&format!("/v2/third/blobs/uploads/?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{query}");
        assert!(!s.registry.links("third", &digest), "{query}");
    }
    assert!(s.registry.links("other", &digest));

    // Mount of an unknown blob: a normal session.
    let r = s
        .client
        .post(s.url(&format!("/v2/other/blobs/uploads/?mount={wrong}&from=app")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(
        header(&r, "location")
            .unwrap()
            .starts_with("/v2/other/blobs/uploads/")
    );

    // Bad mount parameters.
    let r = s
        .client
        .post(s.url("/v2/other/blobs/uploads/?mount=sha256:xyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = s
        .client
        .post(s.url(&format!(
            "/v2/other/blobs/uploads/?mount={digest}&from=Bad..Name"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_INVALID");
    s.stop().await;
}

#[tokio::test]
async fn digest_mismatch_discards_the_session_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let loc = start_upload(&s, "app").await;
    let r = s
        .client
        .patch(&loc)
        .body(b"some bytes".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let claimed = Digest::sha256_of(b"different bytes");
    let r = s
        .client
        .put(format!("{loc}?digest={claimed}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // The gateway does not hash: the cluster checked the bytes and stored nothing.
    assert_eq!(s.registry.put_blob_calls(), 1);
    assert_eq!(s.registry.blob_count(), 0);
    let r = s.client.get(&loc).send().await.unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");

    // PUT without a digest, or with a malformed one.
    let loc = start_upload(&s, "app").await;
    let r = s.client.put(&loc).send().await.unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = s
        .client
        .put(format!("{loc}?digest=sha256:1234"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    s.stop().await;
}

#[tokio::test]
async fn an_unavailable_cluster_keeps_the_session_for_a_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let data = b"retry me".to_vec();
    let digest = Digest::sha256_of(&data);
    let loc = start_upload(&s, "app").await;
    let r = s
        .client
        .patch(&loc)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    s.registry
        .put_blob_outages
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let r = s
        .client
        .put(format!("{loc}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(header(&r, "retry-after").is_some());
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    let r = s.client.get(&loc).send().await.unwrap();
    assert_eq!(header(&r, "range").as_deref(), Some("0-7"));
    let r = s
        .client
        .put(format!("{loc}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(s.registry.has_blob(&digest));

    // A monolithic upload that fails leaves nothing behind (its id was never shown).
    s.registry
        .put_blob_outages
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let other = b"monolithic".to_vec();
    let r = s
        .client
        .post(s.url(&format!(
            "/v2/app/blobs/uploads/?digest={}",
            Digest::sha256_of(&other)
        )))
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let sessions = std::fs::read_dir(uploads_dir(&tmp))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .starts_with('.')
        })
        .count();
    assert_eq!(sessions, 0);
    s.stop().await;
}

#[tokio::test]
async fn uploads_resume_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = uploads_dir(&tmp);
    let registry = MemRegistry::new();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 199) as u8).collect();
    let digest = Digest::sha256_of(&data);

    let s = Server::start(registry.clone(), push_config(&dir)).await;
    let loc = start_upload(&s, "org/app").await;
    let path = loc.trim_start_matches(&s.base).to_string();
    let r = s
        .client
        .patch(&loc)
        .header("content-range", "0-3999")
        .body(data[..4000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    s.stop().await;

    // A new gateway over the same directory (and a new port).
    let s = Server::start(registry.clone(), push_config(&dir)).await;
    let loc = s.url(&path);
    let r = s.client.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range").as_deref(), Some("0-3999"));
    let r = s
        .client
        .patch(&loc)
        .header("content-range", "4000-9999")
        .body(data[4000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s
        .client
        .put(format!("{loc}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(registry.blob(&digest).unwrap().as_ref(), data.as_slice());
    s.stop().await;
}

#[tokio::test]
async fn unknown_cancelled_and_foreign_upload_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    // (A bare ".." is resolved away by the client's URL parser before it is sent.)
    for id in [
        "0123456789abcdef0123456789abcdef",
        "..%2F..%2Fetc",
        "%2Fetc%2Fpasswd",
        "ZZZ",
        ".staging",
    ] {
        let url = s.url(&format!("/v2/app/blobs/uploads/{id}"));
        let r = s.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{id}");
        let r = s.client.patch(&url).body("x").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{id}");
        assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN", "{id}");
    }
    // A session belongs to its repository.
    let loc = start_upload(&s, "app").await;
    let foreign = loc.replace("/v2/app/", "/v2/other/");
    let r = s.client.get(&foreign).send().await.unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    // Cancel.
    let r = s.client.delete(&loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s.client.get(&loc).send().await.unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    s.stop().await;
}

#[tokio::test]
async fn manifest_put_by_tag_and_by_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let m = image_manifest(&s.registry, Some(OCI_MANIFEST), "a");
    let d = Digest::sha256_of(&m);

    let r = put_manifest(&s, "org/app", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "location"),
        Some(format!("/v2/org/app/manifests/{d}"))
    );
    assert_eq!(header(&r, "docker-content-digest"), Some(d.to_string()));
    assert_eq!(s.registry.tag_of("org/app", "v1"), Some(d));
    let r = s
        .client
        .get(s.url("/v2/org/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_MANIFEST));
    assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice());

    let m2 = image_manifest(&s.registry, Some(DOCKER_MANIFEST), "b");
    let d2 = Digest::sha256_of(&m2);
    let r = put_manifest(&s, "org/app", &d2.to_string(), DOCKER_MANIFEST, &m2).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(s.registry.has_blob(&d2));
    let r = s
        .client
        .head(s.url(&format!("/v2/org/app/manifests/{d2}")))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type").as_deref(), Some(DOCKER_MANIFEST));

    // Digest reference that does not match.
    let r = put_manifest(&s, "org/app", &d.to_string(), DOCKER_MANIFEST, &m2).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");

    // Malformed, inconsistent, too large.
    let r = put_manifest(&s, "org/app", "bad", OCI_MANIFEST, b"{not json").await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = put_manifest(
        &s,
        "org/app",
        "bad",
        OCI_MANIFEST,
        br#"{"schemaVersion":1}"#,
    )
    .await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = put_manifest(&s, "org/app", "bad", DOCKER_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let huge = vec![b' '; 5 << 20];
    let r = put_manifest(&s, "org/app", "bad", OCI_MANIFEST, &huge).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s.registry.tag_of("org/app", "bad"), None);
    s.stop().await;
}

#[tokio::test]
async fn manifest_blob_unknown_passes_through() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let missing = Digest::sha256_of(b"never pushed");
    let config = s.registry.insert_blob(b"{}");
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": missing.to_string(), "size": 12}],
    }))
    .unwrap();
    let r = put_manifest(&s, "app", "latest", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v = json_of(r).await;
    assert_eq!(v["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&missing.to_string()),
        "{v}"
    );
    assert_eq!(s.registry.tag_of("app", "latest"), None);
    s.stop().await;
}

fn referrer(subject: &[u8], artifact_type: &str, config: &kraken_storage::Digest) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": Digest::sha256_of(subject).to_string(), "size": subject.len()},
        "annotations": {"org.opencontainers.image.created": artifact_type},
    }))
    .unwrap()
}

#[tokio::test]
async fn referrers_are_listed_without_fallback_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let subject = image_manifest(&s.registry, Some(OCI_MANIFEST), "subject");
    let sd = Digest::sha256_of(&subject);
    assert_eq!(
        put_manifest(&s, "app", "v1", OCI_MANIFEST, &subject)
            .await
            .status(),
        StatusCode::CREATED
    );

    // No referrers yet: an empty index, not a 404.
    let r = s
        .client
        .get(s.url(&format!("/v2/app/referrers/{sd}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_INDEX));
    let v = json_of(r).await;
    assert_eq!(v["manifests"], json!([]));

    let empty = s.registry.insert_blob(b"{}");
    let sig = referrer(&subject, "application/vnd.example.signature", &empty);
    let sbom = referrer(&subject, "application/vnd.example.sbom", &empty);
    let (sig_d, sbom_d) = (Digest::sha256_of(&sig), Digest::sha256_of(&sbom));
    for (bytes, d) in [(&sig, sig_d), (&sbom, sbom_d), (&sig, sig_d)] {
        let r = put_manifest(&s, "app", &d.to_string(), OCI_MANIFEST, bytes).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(header(&r, "oci-subject"), Some(sd.to_string()));
    }
    // No "referrers tag schema" tag: the only tag is the one pushed.
    assert_eq!(
        s.registry.all_tags(),
        [("app".to_string(), "v1".to_string())]
    );

    let r = s
        .client
        .get(s.url(&format!("/v2/app/referrers/{sd}")))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "oci-filters-applied").is_none());
    let v = json_of(r).await;
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[0]["digest"], sig_d.to_string());
    assert_eq!(list[0]["artifactType"], "application/vnd.example.signature");
    assert_eq!(list[0]["mediaType"], OCI_MANIFEST);
    assert_eq!(list[0]["size"], sig.len());
    assert_eq!(
        list[0]["annotations"]["org.opencontainers.image.created"],
        "application/vnd.example.signature"
    );

    let r = s
        .client
        .get(s.url(&format!(
            "/v2/app/referrers/{sd}?artifactType=application/vnd.example.sbom"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "oci-filters-applied").as_deref(),
        Some("artifactType")
    );
    let v = json_of(r).await;
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], sbom_d.to_string());

    let r = s
        .client
        .get(s.url("/v2/app/referrers/sha256:nothex"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    s.stop().await;
}

#[tokio::test]
async fn tag_deletion() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let m = image_manifest(&s.registry, None, "x");
    let d = Digest::sha256_of(&m);
    assert_eq!(
        put_manifest(&s, "app", "v1", OCI_MANIFEST, &m)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = s
        .client
        .delete(s.url("/v2/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s
        .client
        .get(s.url("/v2/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    // The manifest itself stays until deleted by digest (tests/delete.rs).
    assert!(s.registry.has_blob(&d));
    s.stop().await;

    // A cluster that keeps tags forever.
    let reg = MemRegistry::with_immutable_tags();
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(reg, push_config(&uploads_dir(&tmp))).await;
    let r = s
        .client
        .delete(s.url("/v2/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blobs_stream_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let digest = Digest::sha256_of(&data);
    let loc = start_upload(&s, "big").await;
    let chunk = 4 << 20;
    let mut loc = loc;
    for (i, part) in data.chunks(chunk).enumerate() {
        let start = i * chunk;
        let r = s
            .client
            .patch(&loc)
            .header(
                "content-range",
                format!("{start}-{}", start + part.len() - 1),
            )
            .body(part.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        loc = s.url(&header(&r, "location").unwrap());
    }
    let r = s
        .client
        .put(format!("{loc}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .client
        .get(s.url(&format!("/v2/big/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-length"), Some(data.len().to_string()));
    let body = r.bytes().await.unwrap();
    assert_eq!(Digest::sha256_of(&body), digest);
    s.stop().await;
}

/// `PUT <loc>?digest=` with the whole blob as its body.
async fn put_whole(s: &Server, loc: &str, digest: &Digest, data: &[u8]) -> reqwest::Response {
    s.client
        .put(format!("{loc}?digest={digest}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

/// Sends `request` as is on a new connection (shutting down the writing side after it when
/// `shutdown`) and returns everything the server answers.
async fn raw_request(s: &Server, request: &[u8], shutdown: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(request).await.unwrap();
    if shutdown {
        tcp.shutdown().await.unwrap();
    }
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    answer
}

/// The sessions in the uploads directory (staging aside).
fn sessions(tmp: &tempfile::TempDir) -> usize {
    std::fs::read_dir(uploads_dir(tmp))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .starts_with('.')
        })
        .count()
}

#[tokio::test]
async fn monolithic_bodies_with_a_length_stream_through_and_the_cluster_checks_them() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let digest = Digest::sha256_of(&data);

    // POST, then the whole blob with the PUT: streamed, never staged.
    let loc = start_upload(&s, "app").await;
    let r = put_whole(&s, &loc, &digest, &data).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(digest.to_string())
    );
    assert_eq!(s.registry.blob(&digest).unwrap().as_ref(), data.as_slice());
    assert_eq!(s.registry.streamed_puts(), 1);
    assert_eq!(sessions(&tmp), 0);

    // A wrong digest: DIGEST_INVALID from the cluster's check, nothing stored, the session
    // gone.
    let loc = start_upload(&s, "app").await;
    let wrong = Digest::sha256_of(b"not these bytes");
    let r = put_whole(&s, &loc, &wrong, &data).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert!(!s.registry.has_blob(&wrong));
    assert_eq!(s.registry.blob_count(), 1);
    let r = s.client.get(&loc).send().await.unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");

    // A monolithic POST with a length streams too, without a session.
    let other = b"posted in one go".to_vec();
    let d = Digest::sha256_of(&other);
    let r = s
        .client
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={d}")))
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(s.registry.has_blob(&d));
    assert_eq!(s.registry.streamed_puts(), 3);
    assert_eq!(sessions(&tmp), 0);

    // Without a length (chunked transfer encoding) the body is staged first.
    let loc = start_upload(&s, "app").await;
    let staged = b"a body of unknown length";
    let d = Digest::sha256_of(staged);
    let path = loc.trim_start_matches(&s.base);
    let request = format!(
        "PUT {path}?digest={d} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\
         connection: close\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        std::str::from_utf8(&staged[..5]).unwrap(),
        staged.len() - 5,
        std::str::from_utf8(&staged[5..]).unwrap(),
    );
    let answer = raw_request(&s, request.as_bytes(), false).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(s.registry.has_blob(&d));
    assert_eq!(s.registry.streamed_puts(), 3);
    s.stop().await;
}

#[tokio::test]
async fn a_stream_that_fails_mid_body_keeps_the_session_for_a_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let data = vec![7u8; 50_000];
    let digest = Digest::sha256_of(&data);
    let loc = start_upload(&s, "app").await;

    // The owner fails once the body flows: 503 with Retry-After, nothing stored.
    s.registry
        .mid_body_failures
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let r = put_whole(&s, &loc, &digest, &data).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(header(&r, "retry-after").is_some());
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    assert!(!s.registry.has_blob(&digest));
    let r = s.client.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range").as_deref(), Some("0-0"));

    // No owner reachable before the body: 503 too, the session still empty.
    s.registry
        .put_blob_outages
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let r = put_whole(&s, &loc, &digest, &data).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Sending it again works.
    let r = put_whole(&s, &loc, &digest, &data).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(s.registry.blob(&digest).unwrap().as_ref(), data.as_slice());
    assert_eq!(sessions(&tmp), 0);
    s.stop().await;
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let data = vec![3u8; 10_000];
    let digest = Digest::sha256_of(&data);
    let loc = start_upload(&s, "app").await;
    let path = loc.trim_start_matches(&s.base).to_string();

    // Declares 10,000 bytes, sends 4,000, then stops sending.
    let mut request =
        format!("PUT {path}?digest={digest} HTTP/1.1\r\nhost: x\r\ncontent-length: 10000\r\n\r\n")
            .into_bytes();
    request.extend_from_slice(&data[..4000]);
    let answer = raw_request(&s, &request, true).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("BLOB_UPLOAD_INVALID"), "{answer}");
    assert!(!s.registry.has_blob(&digest));

    // The session is still there, empty, and takes the whole blob.
    let r = s.client.get(&loc).send().await.unwrap();
    assert_eq!(header(&r, "range").as_deref(), Some("0-0"));
    let r = put_whole(&s, &loc, &digest, &data).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    s.stop().await;
}

#[tokio::test]
async fn a_cluster_that_declines_streams_gets_the_body_staged() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    s.registry
        .streams_declined
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let data: Vec<u8> = (0..70_000u32).map(|i| (i % 239) as u8).collect();
    let digest = Digest::sha256_of(&data);

    // A session's PUT with the whole blob: declined unread, staged, stored by put_blob.
    let loc = start_upload(&s, "app").await;
    let r = put_whole(&s, &loc, &digest, &data).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(s.registry.blob(&digest).unwrap().as_ref(), data.as_slice());
    assert_eq!(
        (s.registry.streamed_puts(), s.registry.put_blob_calls()),
        (0, 1)
    );

    // A monolithic POST likewise.
    let other = b"posted to an older cluster".to_vec();
    let d = Digest::sha256_of(&other);
    let r = s
        .client
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={d}")))
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(s.registry.blob(&d).unwrap().as_ref(), other.as_slice());
    assert_eq!(
        (s.registry.streamed_puts(), s.registry.put_blob_calls()),
        (0, 2)
    );
    assert_eq!(sessions(&tmp), 0);
    s.stop().await;
}
