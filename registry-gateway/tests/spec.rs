//! The distribution specification's finer points over real HTTP: what a pushed manifest
//! must reference, sizes, subjects, foreign layers, referrers without tags, `Accept`
//! negotiation and the answers of odd requests.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use kraken_storage::Digest;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn get(s: &Server, path: &str, accept: Option<&str>) -> reqwest::Response {
    let mut r = s.client.get(s.url(path));
    if let Some(a) = accept {
        r = r.header("accept", a);
    }
    r.send().await.unwrap()
}

/// An OCI image manifest over `config` and `layers` (each `(media type, digest, size)`,
/// with `urls` when the fourth field is set).
fn manifest_of(config: (Digest, usize), layers: &[(&str, Digest, usize, bool)]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|(t, d, n, urls)| {
            let mut l = json!({"mediaType": t, "digest": d.to_string(), "size": n});
            if *urls {
                l["urls"] = json!(["https://example.com/layer"]);
            }
            l
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.0.to_string(), "size": config.1},
        "layers": layers,
    }))
    .unwrap()
}

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[tokio::test]
async fn a_refused_manifest_stores_nothing_by_tag_or_by_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let config = s.registry.insert_blob(b"{}");
    let missing = Digest::sha256_of(b"never pushed");
    let m = manifest_of((config, 2), &[(LAYER, missing, 12, false)]);
    let d = Digest::sha256_of(&m);
    for reference in ["v1".to_string(), d.to_string()] {
        let r = put_manifest(&s, "app", &reference, OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{reference}");
        let v = json_of(r).await;
        assert_eq!(v["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN", "{v}");
        assert_eq!(
            v["errors"][0]["detail"]["blobs"],
            json!([missing.to_string()])
        );
        assert!(!s.registry.has_blob(&d), "a refused manifest was stored");
        let r = get(&s, &format!("/v2/other/manifests/{d}"), None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    // An index whose child manifest is missing: refused the same way.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": m.len()}],
    }))
    .unwrap();
    let r = put_manifest(&s, "app", "multi", OCI_INDEX, &index).await;
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    assert!(!s.registry.has_blob(&Digest::sha256_of(&index)));
    s.stop().await;
}

#[tokio::test]
async fn descriptor_sizes_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let config = s.registry.insert_blob(b"{}");
    let layer = s.registry.insert_blob(&vec![7u8; 1_084_254]);
    let lying = manifest_of((config, 2), &[(LAYER, layer, 1234, false)]);
    for reference in ["v1".to_string(), Digest::sha256_of(&lying).to_string()] {
        let r = put_manifest(&s, "app", &reference, OCI_MANIFEST, &lying).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let v = json_of(r).await;
        assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID", "{v}");
        let message = v["errors"][0]["message"].as_str().unwrap();
        for part in [&layer.to_string(), "1234", "1084254", "layers"] {
            assert!(message.contains(part), "{message} lacks {part}");
        }
        assert_eq!(v["errors"][0]["detail"]["actual"], 1_084_254);
        assert!(!s.registry.has_blob(&Digest::sha256_of(&lying)));
    }
    let honest = manifest_of((config, 2), &[(LAYER, layer, 1_084_254, false)]);
    let r = put_manifest(&s, "app", "v1", OCI_MANIFEST, &honest).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // The config's size is checked too.
    let lying = manifest_of((config, 3), &[(LAYER, layer, 1_084_254, false)]);
    let r = put_manifest(&s, "app", "v2", OCI_MANIFEST, &lying).await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    s.stop().await;
}

fn referrer_of(subject: Digest, config: Digest, artifact_type: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": 1234},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_subject_need_not_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let config = s.registry.insert_blob(b"{}");
    let subject = Digest::sha256_of(b"pushed later, if ever");
    let sig = referrer_of(subject, config, "application/vnd.example.sig");
    let sbom = referrer_of(subject, config, "application/vnd.example.sbom");
    let r = put_manifest(
        &s,
        "app",
        &Digest::sha256_of(&sig).to_string(),
        OCI_MANIFEST,
        &sig,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "oci-subject"), Some(subject.to_string()));
    // By tag too.
    let r = put_manifest(&s, "app", "sbom", OCI_MANIFEST, &sbom).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "oci-subject"), Some(subject.to_string()));
    let v = json_of(get(&s, &format!("/v2/app/referrers/{subject}"), None).await).await;
    let listed: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{v}");
    assert!(listed.contains(&Digest::sha256_of(&sig).to_string().as_str()));
    s.stop().await;
}

#[tokio::test]
async fn foreign_layers_with_urls_need_not_exist_by_tag_or_by_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let config = s.registry.insert_blob(b"{}");
    let layer = s.registry.insert_blob(b"a layer");
    let foreign = Digest::sha256_of(b"on example.com");
    for (i, t) in [
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
    ]
    .into_iter()
    .enumerate()
    {
        let m = manifest_of(
            (config, 2),
            &[(t, foreign, 14, true), (LAYER, layer, 7, false)],
        );
        let d = Digest::sha256_of(&m);
        let r = put_manifest(&s, "win", &format!("t{i}"), OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{t} by tag");
        let r = put_manifest(&s, "win2", &d.to_string(), OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{t} by digest");
    }
    // Without urls it has nowhere else to come from; a distributable layer with urls is
    // the cluster's to hold.
    for (t, urls) in [
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            false,
        ),
        (LAYER, true),
    ] {
        let m = manifest_of((config, 2), &[(t, foreign, 14, urls)]);
        let r = put_manifest(&s, "win", "bad", OCI_MANIFEST, &m).await;
        assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN", "{t}");
        let r = put_manifest(
            &s,
            "win",
            &Digest::sha256_of(&m).to_string(),
            OCI_MANIFEST,
            &m,
        )
        .await;
        assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN", "{t}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_fallback_tag_left_by_an_older_version_is_merged_into_the_referrers() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let config = s.registry.insert_blob(b"{}");
    let subject = Digest::sha256_of(b"subject");
    let old = referrer_of(subject, config, "application/vnd.example.old");
    let old_d = s.registry.insert_blob(&old);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": old_d.to_string(), "size": old.len(),
                       "artifactType": "application/vnd.example.old"}],
    }))
    .unwrap();
    let index_d = s.registry.insert_blob(&index);
    s.registry
        .tag("app", &format!("sha256-{}", subject.hex()), index_d);
    let new = referrer_of(subject, config, "application/vnd.example.new");
    let r = put_manifest(&s, "app", "new", OCI_MANIFEST, &new).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v = json_of(get(&s, &format!("/v2/app/referrers/{subject}"), None).await).await;
    let mut types: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["artifactType"].as_str().unwrap())
        .collect();
    types.sort_unstable();
    assert_eq!(
        types,
        ["application/vnd.example.new", "application/vnd.example.old"]
    );
    s.stop().await;
}

#[tokio::test]
async fn manifests_are_negotiated_by_accept_like_distribution() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    let oci = image_manifest(&s.registry, Some(OCI_MANIFEST), "oci");
    let docker = image_manifest(&s.registry, Some(DOCKER_MANIFEST), "docker");
    let arm = image_manifest(&s.registry, Some(DOCKER_MANIFEST), "arm");
    let (oci_d, docker_d, arm_d) = (
        s.registry.insert_blob(&oci),
        s.registry.insert_blob(&docker),
        s.registry.insert_blob(&arm),
    );
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_LIST,
        "manifests": [
            {"mediaType": DOCKER_MANIFEST, "digest": arm_d.to_string(), "size": arm.len(),
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": DOCKER_MANIFEST, "digest": docker_d.to_string(), "size": docker.len(),
             "platform": {"os": "linux", "architecture": "amd64"}}],
    }))
    .unwrap();
    let list_d = s.registry.insert_blob(&list);
    s.registry.tag("app", "oci", oci_d);
    s.registry.tag("app", "list", list_d);

    // No Accept, wildcards and generic types take anything (curl keeps working).
    for accept in [
        None,
        Some("*/*"),
        Some("application/*"),
        Some("application/json"),
    ] {
        let r = get(&s, "/v2/app/manifests/oci", accept).await;
        assert_eq!(r.status(), StatusCode::OK, "{accept:?}");
        assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_MANIFEST));
    }
    // An OCI manifest to a client that lists only Docker types: unknown, GET and HEAD.
    let r = get(&s, "/v2/app/manifests/oci", Some(DOCKER_MANIFEST)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = s
        .client
        .head(s.url(&format!("/v2/app/manifests/{oci_d}")))
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let accept_both = format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.5");
    let r = get(&s, "/v2/app/manifests/oci", Some(&accept_both)).await;
    assert_eq!(r.status(), StatusCode::OK);

    // A Docker list by tag to a client that takes no lists: its linux/amd64 entry.
    let r = get(&s, "/v2/app/manifests/list", Some(DOCKER_MANIFEST)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type").as_deref(), Some(DOCKER_MANIFEST));
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(docker_d.to_string())
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), docker.as_slice());
    // By digest the answer must match the digest: unknown.
    let r = get(
        &s,
        &format!("/v2/app/manifests/{list_d}"),
        Some(DOCKER_MANIFEST),
    )
    .await;
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    // A client of OCI types only gets neither the list nor its Docker entry.
    let r = get(&s, "/v2/app/manifests/list", Some(OCI_MANIFEST)).await;
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = get(&s, "/v2/app/manifests/list", Some(DOCKER_LIST)).await;
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(list_d.to_string())
    );
    s.stop().await;
}

#[tokio::test]
async fn odd_requests_get_the_answers_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), push_config(&uploads_dir(&tmp))).await;
    // No such endpoint: 404 (distribution answers a plain-text 404; ours has a JSON body).
    let r = get(&s, "/v2/app/nonsense", None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    // A repository whose last tag was deleted: an empty list, not NAME_UNKNOWN.
    let m = image_manifest(&s.registry, Some(OCI_MANIFEST), "last");
    assert_eq!(
        put_manifest(&s, "app", "only", OCI_MANIFEST, &m)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = s
        .client
        .delete(s.url("/v2/app/manifests/only"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = get(&s, "/v2/app/tags/list", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["tags"], json!([]));
    let r = get(&s, "/v2/never/tags/list", None).await;
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    s.stop().await;
}
