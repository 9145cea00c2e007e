//! sha512 digests on the gateway: uploads (monolithic and chunked) checked by the digest's
//! algorithm, manifests pushed and read by a sha512 digest, a wrong sha512 digest refused
//! with nothing stored, and referrers of a sha512 subject.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use kraken_storage::{Digest, DigestAlgorithm};
use reqwest::StatusCode;
use serde_json::json;

const SHA512: DigestAlgorithm = DigestAlgorithm::Sha512;

#[tokio::test]
async fn sha512_blobs_upload_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    // Monolithic.
    let data = b"a sha512 blob".to_vec();
    let digest = Digest::of(SHA512, &data);
    let r = s
        .client
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={digest}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(digest.to_string())
    );
    assert_eq!(s.registry.blob(&digest).unwrap().as_ref(), data.as_slice());
    // Chunked.
    let chunked = vec![7u8; 70_000];
    let chunked_digest = Digest::of(SHA512, &chunked);
    let loc = start_upload(&s, "app").await;
    let r = s
        .client
        .patch(&loc)
        .body(chunked.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s
        .client
        .put(format!("{loc}?digest={chunked_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "location"),
        Some(format!("/v2/app/blobs/{chunked_digest}"))
    );
    // Read back by digest, HEAD and GET.
    for (d, bytes) in [(digest, &data), (chunked_digest, &chunked)] {
        let r = s
            .client
            .head(s.url(&format!("/v2/app/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "docker-content-digest"), Some(d.to_string()));
        let r = s
            .client
            .get(s.url(&format!("/v2/app/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
    }
    s.stop().await;
}

#[tokio::test]
async fn a_wrong_sha512_digest_is_digest_invalid_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let data = b"these bytes".to_vec();
    let wrong = Digest::of(SHA512, b"other bytes");
    let r = s
        .client
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // The same bytes under their sha256 are not a sha512 upload either.
    let sha256 = Digest::sha256_of(&data);
    assert!(!s.registry.has_blob(&wrong) && !s.registry.has_blob(&sha256));
    // A manifest whose sha512 is not the reference's.
    let manifest = image_manifest(&s.registry, Some(OCI_MANIFEST), "wrong");
    let r = put_manifest(&s, "app", &wrong.to_string(), OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert!(!s.registry.has_blob(&Digest::of(SHA512, &manifest)));
    assert!(!s.registry.has_blob(&Digest::sha256_of(&manifest)));
    // A malformed sha512 digest.
    let r = s
        .client
        .head(s.url(&format!("/v2/app/blobs/sha512:{}", "a".repeat(127))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test]
async fn manifests_by_sha512_digest_and_referrers_of_a_sha512_subject() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let manifest = image_manifest(&s.registry, Some(OCI_MANIFEST), "by-sha512");
    let digest = Digest::of(SHA512, &manifest);
    let r = put_manifest(&s, "app", &digest.to_string(), OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(digest.to_string())
    );
    assert_eq!(
        header(&r, "location"),
        Some(format!("/v2/app/manifests/{digest}"))
    );
    assert!(s.registry.has_blob(&digest));
    for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
        let r = s
            .client
            .request(
                method.clone(),
                s.url(&format!("/v2/app/manifests/{digest}")),
            )
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{method}");
        assert_eq!(
            header(&r, "docker-content-digest"),
            Some(digest.to_string())
        );
        if method == reqwest::Method::GET {
            assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
        }
    }
    // By tag the same bytes are named by their sha256, the default.
    let r = put_manifest(&s, "app", "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let sha256 = Digest::sha256_of(&manifest);
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(sha256.to_string())
    );

    // A referrer of the sha512 manifest is listed by the referrers API.
    let mut referrer: serde_json::Value =
        serde_json::from_slice(&image_manifest(&s.registry, Some(OCI_MANIFEST), "sig")).unwrap();
    referrer["artifactType"] = json!("application/example.sig");
    referrer["subject"] =
        json!({"mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": manifest.len()});
    let referrer = serde_json::to_vec(&referrer).unwrap();
    let rd = Digest::of(SHA512, &referrer);
    let r = put_manifest(&s, "app", &rd.to_string(), OCI_MANIFEST, &referrer).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "oci-subject"), Some(digest.to_string()));
    let r = s
        .client
        .get(s.url(&format!("/v2/app/referrers/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let index = json_of(r).await;
    assert_eq!(index["manifests"][0]["digest"], json!(rd.to_string()));
    s.stop().await;
}
