//! sha512 end to end through a real cluster: blobs pushed through the proxy (monolithic
//! and chunked uploads) and a manifest pushed by its sha512 digest are pulled back by
//! digest through an agent (P2P from the origin, each piece checked against the sha512
//! chain), with `Docker-Content-Digest` in sha512; a tag in the build-index points at the
//! sha512 manifest; a wrong sha512 digest stores nothing.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use kraken_membership::Role;
use kraken_node::config::NodeRole;
use kraken_node::proto::{Request, Response};
use kraken_storage::{Digest, DigestAlgorithm};
use support::TestCluster;
use support::tools::http;

const SHA512: DigestAlgorithm = DigestAlgorithm::Sha512;

/// Origin, tracker, build-index, an agent and a proxy, all seeing the build-index.
async fn cluster() -> (TestCluster, usize, usize) {
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    c.add("bi-1", NodeRole::BuildIndex).await;
    let agent = c.add("agent-1", NodeRole::Agent).await;
    let proxy = c.add("proxy-1", NodeRole::Proxy).await;
    c.converge(1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while [agent, proxy]
        .iter()
        .any(|&i| c.node(i).cluster().view().ring(Role::BuildIndex).is_empty())
    {
        assert!(std::time::Instant::now() < deadline, "build-index not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (c, agent, proxy)
}

fn bytes(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8)
        .collect()
}

/// An upload session's absolute URL from a `Location`.
fn session_url(base: &str, r: &reqwest::Response) -> String {
    let location = r.headers()["location"].to_str().unwrap();
    if location.starts_with("http") {
        location.to_string()
    } else {
        format!("{base}{location}")
    }
}

/// Pushes `blob` in one `POST ?digest=`.
async fn push_monolithic(push: &str, repo: &str, blob: &[u8], digest: &Digest) {
    let r = http()
        .post(format!("{push}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .body(blob.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    assert_eq!(r.headers()["docker-content-digest"], digest.to_string());
}

/// Pushes `blob` as `POST`, two `PATCH`es and `PUT ?digest=`.
async fn push_chunked(push: &str, repo: &str, blob: &[u8], digest: &Digest) {
    let h = http();
    let r = h
        .post(format!("{push}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let mut url = session_url(push, &r);
    let half = blob.len() / 2;
    for (start, chunk) in [(0, &blob[..half]), (half, &blob[half..])] {
        let r = h
            .patch(&url)
            .header(
                "content-range",
                format!("{start}-{}", start + chunk.len() - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        url = session_url(push, &r);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = h
        .put(format!("{url}{sep}digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    assert_eq!(r.headers()["docker-content-digest"], digest.to_string());
}

/// `GET` of `what` (`blobs` or `manifests`) by `reference` through `base`: its bytes, after
/// checking the status and `Docker-Content-Digest`.
async fn get(base: &str, repo: &str, what: &str, reference: &str, digest: &Digest) -> Vec<u8> {
    let url = format!("{base}/v2/{repo}/{what}/{reference}");
    let r = http()
        .head(&url)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "HEAD {url}");
    assert_eq!(r.headers()["docker-content-digest"], digest.to_string());
    let r = http()
        .get(&url)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET {url}");
    assert_eq!(r.headers()["docker-content-digest"], digest.to_string());
    r.bytes().await.unwrap().to_vec()
}

async fn put_tag(c: &TestCluster, repo: &str, tag: &str, digest: &Digest) {
    let client = c.client();
    let owners = kraken_node::buildindex::owners_of_tag(client, repo, tag, 0);
    let request = Request::PutTag {
        repo: repo.into(),
        tag: tag.into(),
        digest: *digest,
        replica: false,
        set_ms: 0,
    };
    let answer = client
        .call_first(&owners, Role::BuildIndex, &request, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(answer, Response::TagPut { .. }), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha512_blobs_and_manifests_push_through_the_proxy_and_pull_through_an_agent() {
    let (c, agent, proxy) = cluster().await;
    let push = format!("http://{}", c.node(proxy).registry_addr().unwrap());
    let pull = format!("http://{}", c.node(agent).registry_addr().unwrap());
    let repo = "library/sha512";

    // A layer of several pieces (256 KiB each), pushed monolithic; a config, chunked.
    let layer = bytes(900_000, 1);
    let layer_digest = Digest::of(SHA512, &layer);
    push_monolithic(&push, repo, &layer, &layer_digest).await;
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = Digest::of(SHA512, config);
    push_chunked(&push, repo, config, &config_digest).await;
    let chunked = bytes(700_000, 2);
    let chunked_digest = Digest::of(SHA512, &chunked);
    push_chunked(&push, repo, &chunked, &chunked_digest).await;

    // The manifest, by its sha512 digest.
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{chunked_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len(),
        chunked.len()
    );
    let manifest_digest = Digest::of(SHA512, manifest.as_bytes());
    let r = http()
        .put(format!("{push}/v2/{repo}/manifests/{manifest_digest}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    assert_eq!(
        r.headers()["docker-content-digest"],
        manifest_digest.to_string()
    );
    assert_eq!(
        r.headers()["location"],
        format!("/v2/{repo}/manifests/{manifest_digest}")
    );

    // Everything comes back by digest through the agent, byte for byte.
    let m = manifest_digest.to_string();
    assert_eq!(
        get(&pull, repo, "manifests", &m, &manifest_digest).await,
        manifest.as_bytes()
    );
    for (blob, digest) in [
        (&layer[..], &layer_digest),
        (&config[..], &config_digest),
        (&chunked[..], &chunked_digest),
    ] {
        assert_eq!(
            get(&pull, repo, "blobs", &digest.to_string(), digest).await,
            blob
        );
    }

    // A tag in the build-index may point at the sha512 manifest.
    put_tag(&c, repo, "v512", &manifest_digest).await;
    assert_eq!(
        get(&pull, repo, "manifests", "v512", &manifest_digest).await,
        manifest.as_bytes()
    );
    let r = http()
        .get(format!("{pull}/v2/{repo}/tags/list"))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("v512"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sha512_digest_is_refused_and_stores_nothing() {
    let (c, _, proxy) = cluster().await;
    let push = format!("http://{}", c.node(proxy).registry_addr().unwrap());
    let repo = "library/sha512";
    let blob = bytes(100_000, 3);
    let wrong = Digest::of(SHA512, b"other bytes");
    let r = http()
        .post(format!("{push}/v2/{repo}/blobs/uploads/?digest={wrong}"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("DIGEST_INVALID"));
    for d in [wrong, Digest::of(SHA512, &blob)] {
        let r = http()
            .head(format!("{push}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{d}");
    }
    // A manifest whose sha512 is not the reference's.
    let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let r = http()
        .put(format!("{push}/v2/{repo}/manifests/{wrong}"))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("DIGEST_INVALID"));
    let r = http()
        .head(format!(
            "{push}/v2/{repo}/manifests/{}",
            Digest::of(SHA512, manifest.as_bytes())
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}
