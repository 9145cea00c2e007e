//! Deletion over real HTTP: `DELETE` of a manifest by digest and of a blob answer 202 and
//! remove the repository's link (the blob leaves when no repository links it), 404
//! `MANIFEST_UNKNOWN` / `BLOB_UNKNOWN` where the repository does not link the digest, and
//! the requests `crane delete` sends (crane is not installable here: no Go toolchain and
//! no Debian package; its `remote.Delete` sends `DELETE /v2/<repo>/manifests/<reference
//! as given>`, by tag or by digest).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use kraken_storage::Digest;
use reqwest::StatusCode;

async fn put_manifest(s: &Server, repo: &str, reference: &str, bytes: &[u8]) {
    let r = s
        .client
        .put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", OCI_MANIFEST)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

async fn delete(s: &Server, path: &str) -> reqwest::Response {
    s.client.delete(s.url(path)).send().await.unwrap()
}

async fn get(s: &Server, path: &str) -> reqwest::Response {
    s.client.get(s.url(path)).send().await.unwrap()
}

#[tokio::test]
async fn a_manifest_deleted_by_digest_is_gone_with_its_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let m = image_manifest(&s.registry, Some(OCI_MANIFEST), "a");
    let d = Digest::sha256_of(&m);
    put_manifest(&s, "app", "v1", &m).await;
    put_manifest(&s, "app", "v2", &m).await;

    let r = delete(&s, &format!("/v2/app/manifests/{d}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for path in [
        format!("/v2/app/manifests/{d}"),
        "/v2/app/manifests/v1".into(),
        "/v2/app/manifests/v2".into(),
    ] {
        let r = get(&s, &path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // Again, or from a repository that never held it: MANIFEST_UNKNOWN.
    for repo in ["app", "elsewhere"] {
        let r = delete(&s, &format!("/v2/{repo}/manifests/{d}")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_blob_deleted_from_one_repository_stays_for_another_that_links_it() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let data = b"a shared layer".to_vec();
    let d = Digest::sha256_of(&data);
    for repo in ["one", "two"] {
        let r = s
            .client
            .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = delete(&s, &format!("/v2/one/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = get(&s, &format!("/v2/two/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    // `one` no longer links it.
    let r = delete(&s, &format!("/v2/one/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    // The last link goes: so does the blob.
    let r = delete(&s, &format!("/v2/two/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(!s.registry.has_blob(&d));
    let r = delete(&s, "/v2/two/blobs/sha256:nothex").await;
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    s.stop().await;
}

#[tokio::test]
async fn crane_delete_by_tag_and_by_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let m = image_manifest(&s.registry, Some(OCI_MANIFEST), "c");
    let d = Digest::sha256_of(&m);
    put_manifest(&s, "app", "v1", &m).await;
    put_manifest(&s, "app", "v2", &m).await;

    // `crane delete <registry>/app:v1`: the tag goes, the manifest stays for v2.
    let r = delete(&s, "/v2/app/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        get(&s, "/v2/app/manifests/v1").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&s, "/v2/app/manifests/v2").await.status(),
        StatusCode::OK
    );

    // `crane delete <registry>/app@<digest>`: the manifest and v2 go.
    let r = delete(&s, &format!("/v2/app/manifests/{d}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        get(&s, "/v2/app/manifests/v2").await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(!s.registry.has_blob(&d));
    s.stop().await;
}

#[tokio::test]
async fn a_read_only_gateway_refuses_deletes() {
    // Agents serve the registry read-only: DELETE stays 405 UNSUPPORTED.
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), pull_config(&uploads_dir(&tmp))).await;
    let d = s.registry.insert_blob(b"x");
    s.registry.link("app", d);
    for path in [
        format!("/v2/app/manifests/{d}"),
        format!("/v2/app/blobs/{d}"),
    ] {
        let r = delete(&s, &path).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(error_code(r).await, "UNSUPPORTED");
    }
    assert!(s.registry.has_blob(&d));
    s.stop().await;
}
