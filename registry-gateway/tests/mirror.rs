//! containerd's mirror requests over real HTTP: `?ns=<registry>` maps every `/v2/<name>/…`
//! request to the cluster repository `<registry>/<name>` (Docker Hub's rules included),
//! a bad `ns` is `NAME_INVALID`, and `Location`s keep the client's own path and `ns`.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use kraken_storage::Digest;
use reqwest::StatusCode;

#[tokio::test]
async fn pulls_with_ns_read_the_registrys_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = MemRegistry::new();
    let manifest = image_manifest(&reg, Some(OCI_MANIFEST), "hub");
    let d = reg.insert_blob(&manifest);
    reg.tag("docker.io/library/ubuntu", "latest", d);
    reg.tag("ghcr.io/org/app", "v1", d);
    let s = Server::start(reg.clone(), pull_config(&uploads_dir(&tmp))).await;
    let get = |path: String| {
        let url = s.url(&path);
        let client = s.client.clone();
        async move { client.get(url).send().await.unwrap() }
    };

    // Docker Hub, its aliases, and an official image named without `library/`.
    for path in [
        "/v2/library/ubuntu/manifests/latest?ns=docker.io",
        "/v2/ubuntu/manifests/latest?ns=docker.io",
        "/v2/library/ubuntu/manifests/latest?ns=registry-1.docker.io",
        "/v2/library/ubuntu/manifests/latest?ns=index.docker.io",
        "/v2/ghcr.io/org/app/manifests/v1",
        "/v2/org/app/manifests/v1?ns=ghcr.io",
    ] {
        let r = get(path.to_string()).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.bytes().await.unwrap(), manifest, "{path}");
    }
    // Without `ns` the name is used as is: `library/ubuntu` is another repository.
    let r = get("/v2/library/ubuntu/manifests/latest".into()).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    // Tags and blobs too.
    let r = get("/v2/ubuntu/tags/list?ns=docker.io".into()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["tags"][0], "latest");
    let layer = Digest::sha256_of(b"layer bytes hub");
    let r = get(format!("/v2/ubuntu/blobs/{layer}?ns=docker.io")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"layer bytes hub");
    s.stop().await;
}

#[tokio::test]
async fn a_bad_ns_is_name_invalid_on_every_repository_route() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let d = Digest::sha256_of(b"x");
    for (method, path) in [
        ("GET", "/v2/a/manifests/latest"),
        ("HEAD", "/v2/a/manifests/latest"),
        ("GET", &format!("/v2/a/blobs/{d}")),
        ("GET", "/v2/a/tags/list"),
        ("GET", &format!("/v2/a/referrers/{d}")),
        ("POST", "/v2/a/blobs/uploads/"),
        ("PATCH", "/v2/a/blobs/uploads/0123"),
    ] {
        for ns in ["a%2Fb", "host:port", "[::1]:5000", "a..b", "%20"] {
            let url = s.url(&format!("{path}?ns={ns}"));
            let r = s
                .client
                .request(method.parse().unwrap(), url)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{method} {path} {ns}");
            if method != "HEAD" {
                assert_eq!(error_code(r).await, "NAME_INVALID", "{method} {path} {ns}");
            }
        }
    }
    // The base and the catalog have no repository: `ns` is nothing to them.
    for path in ["/v2/?ns=a%2Fb", "/v2/_catalog?ns=a%2Fb"] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    // A name that is valid alone but not once mapped (too long) is refused too.
    let long = "a".repeat(250);
    let r = s
        .client
        .get(s.url(&format!("/v2/{long}/manifests/x?ns=ghcr.io")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_INVALID");
    s.stop().await;
}

#[tokio::test]
async fn pushes_with_ns_land_in_the_registrys_repository_and_locations_keep_the_clients_path() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = MemRegistry::new();
    let s = Server::start(reg.clone(), push_config(&uploads_dir(&tmp))).await;
    let data = b"a mirrored layer".to_vec();
    let digest = Digest::sha256_of(&data);

    let r = s
        .client
        .post(s.url("/v2/ubuntu/blobs/uploads/?ns=docker.io"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = header(&r, "location").unwrap();
    assert!(loc.starts_with("/v2/ubuntu/blobs/uploads/"), "{loc}");
    assert!(loc.ends_with("?ns=docker.io"), "{loc}");

    // The client follows the location as given (the session is the mapped repository's).
    let r = s
        .client
        .patch(s.url(&loc))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = header(&r, "location").unwrap();
    assert!(loc.starts_with("/v2/ubuntu/blobs/uploads/"), "{loc}");
    let r = s
        .client
        .put(s.url(&format!("{loc}&digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "location").unwrap(),
        format!("/v2/ubuntu/blobs/{digest}?ns=docker.io")
    );
    assert!(reg.has_blob(&digest));

    // The same session is the cluster repository's when asked by its full name.
    let r = s
        .client
        .post(s.url("/v2/docker.io/library/ubuntu/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = header(&r, "location").unwrap();
    assert!(
        loc.starts_with("/v2/docker.io/library/ubuntu/blobs/uploads/") && !loc.contains("ns="),
        "{loc}"
    );

    // A manifest pushed with ns tags the mapped repository.
    let manifest = image_manifest(&reg, Some(OCI_MANIFEST), "pushed");
    let r = s
        .client
        .put(s.url("/v2/ubuntu/manifests/v1?ns=docker.io"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let md = Digest::sha256_of(&manifest);
    assert_eq!(
        header(&r, "location").unwrap(),
        format!("/v2/ubuntu/manifests/{md}?ns=docker.io")
    );
    assert_eq!(reg.tag_of("docker.io/library/ubuntu", "v1"), Some(md));
    assert_eq!(reg.tag_of("ubuntu", "v1"), None);
    s.stop().await;
}
