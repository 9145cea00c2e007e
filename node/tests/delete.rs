//! Deletion end to end on a real cluster, with skopeo and the exact HTTP requests `crane
//! delete` sends (crane is not installable here: no Go toolchain and no Debian package;
//! its `remote.Delete` sends `DELETE /v2/<repo>/manifests/<reference as given>`):
//! the manifest leaves the proxy, the agents that pulled it (at their next tombstone
//! poll), the origins' stores and the backend; a layer two repositories link survives
//! deleting it from one; mounts need a source repository that links the blob.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use kraken_membership::Role;
use kraken_node::config::NodeRole;
use kraken_storage::Digest;
use kraken_storage::backend::{Backend, default_http_client};
use support::tools::{build_image, have, http, run, s, skopeo_pull};
use support::{TestCluster, fs_backend};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Origin, tracker, build-index, an agent polling tombstones every second, and a proxy.
async fn cluster() -> (TestCluster, usize, usize) {
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    c.add("bi-1", NodeRole::BuildIndex).await;
    let mut agent = c.config("agent-1", NodeRole::Agent);
    agent.agent.tombstone_poll_secs = 1;
    let a = c.start(agent).await;
    let proxy = c.add("proxy-1", NodeRole::Proxy).await;
    c.converge(1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while [a, proxy]
        .iter()
        .any(|&i| c.node(i).cluster().view().ring(Role::BuildIndex).is_empty())
    {
        assert!(Instant::now() < deadline, "build-index not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (c, a, proxy)
}

/// Builds the test image once and copies it to `repo:v1` on the proxy with skopeo.
async fn push(c: &TestCluster, proxy: usize, repo: &str) {
    let dir = c.dir.path().join("images");
    if !dir.join("img").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        build_image(&dir).await;
    }
    let to = c.node(proxy).registry_addr().unwrap();
    let src = format!("oci:{}:v1", dir.join("img").display());
    let dest = format!("docker://{to}/{repo}:v1");
    run(
        "skopeo",
        s(&["copy", "--dest-tls-verify=false", &src, &dest]),
    )
    .await;
}

/// The manifest `repo:v1` on `host`: its digest and its layers.
async fn manifest(host: &str, repo: &str) -> (Digest, Vec<Digest>) {
    let r = http()
        .get(format!("{host}/v2/{repo}/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let layers = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().parse().unwrap())
        .collect();
    (Digest::sha256_of(&bytes), layers)
}

async fn status(method: reqwest::Method, url: String) -> u16 {
    http()
        .request(method, url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn backend_holds(c: &TestCluster, digest: &Digest) -> bool {
    let b = Backend::new(
        "check",
        &fs_backend(&c.backend_root),
        default_http_client().unwrap(),
    )
    .unwrap();
    b.exists(digest).await.unwrap()
}

/// Waits until the origins wrote `digest` back to the backend.
async fn written_back(c: &TestCluster, digest: &Digest) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !backend_holds(c, digest).await {
        assert!(Instant::now() < deadline, "{digest} never written back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_delete_removes_the_manifest_from_proxy_agent_origins_and_backend() {
    if !have("skopeo") || !have("umoci") {
        return;
    }
    let (c, a, proxy) = cluster().await;
    push(&c, proxy, "library/app").await;
    let p = format!("http://{}", c.node(proxy).registry_addr().unwrap());
    let g = format!("http://{}", c.node(a).registry_addr().unwrap());
    let (digest, layers) = manifest(&p, "library/app").await;
    written_back(&c, &digest).await;
    // The agent pulls the image: it holds the manifest now.
    skopeo_pull(
        format!("docker://{}/library/app:v1", &g[7..]),
        &c.dir.path().join("out"),
    )
    .await;
    let agent = c.node(a).roles().agent.clone().unwrap();
    assert!(agent.cas().contains(&digest).unwrap());
    // Agents are read-only: DELETE is 405 there, as before.
    let on_agent = format!("{g}/v2/library/app/manifests/{digest}");
    assert_eq!(status(reqwest::Method::DELETE, on_agent.clone()).await, 405);

    // skopeo resolves the tag and deletes by digest.
    let image = format!("docker://{}/library/app:v1", &p[7..]);
    run("skopeo", s(&["delete", "--tls-verify=false", &image])).await;

    let by_digest = format!("{p}/v2/library/app/manifests/{digest}");
    assert_eq!(status(reqwest::Method::GET, by_digest.clone()).await, 404);
    let by_tag = format!("{p}/v2/library/app/manifests/v1");
    assert_eq!(status(reqwest::Method::GET, by_tag).await, 404);
    assert_eq!(c.origins_holding(&digest), 0);
    assert!(!backend_holds(&c, &digest).await);
    // The agent evicts its copy at its next tombstone poll and answers 404.
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(reqwest::Method::GET, on_agent.clone()).await != 404 {
        assert!(Instant::now() < deadline, "the agent still serves {digest}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!agent.cas().contains(&digest).unwrap());
    // The layers stay: the repository still links them (garbage collection's to remove).
    let layer = format!("{p}/v2/library/app/blobs/{}", layers[0]);
    assert_eq!(status(reqwest::Method::GET, layer).await, 200);
    // Deleting again: the repository no longer links it.
    assert_eq!(status(reqwest::Method::DELETE, by_digest).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_two_repositories_link_survives_deleting_it_from_one() {
    if !have("skopeo") || !have("umoci") {
        return;
    }
    let (c, _, proxy) = cluster().await;
    // The second push finds every blob present (HEAD) and uploads none: its links come
    // from the manifest PUT's closure.
    push(&c, proxy, "library/app").await;
    push(&c, proxy, "library/other").await;
    let p = format!("http://{}", c.node(proxy).registry_addr().unwrap());
    let (digest, layers) = manifest(&p, "library/other").await;
    let layer = layers[0];
    written_back(&c, &layer).await;

    // Mounts: only from a repository that links the blob.
    let mount =
        |from: &str| format!("{p}/v2/library/third/blobs/uploads/?mount={layer}&from={from}");
    assert_eq!(
        status(reqwest::Method::POST, mount("library/nothing")).await,
        202
    );
    assert_eq!(
        status(reqwest::Method::POST, mount("library/app")).await,
        201
    );

    let blob = |repo: &str| format!("{p}/v2/{repo}/blobs/{layer}");
    assert_eq!(
        status(reqwest::Method::DELETE, blob("library/app")).await,
        202
    );
    assert_eq!(
        status(reqwest::Method::DELETE, blob("library/app")).await,
        404
    );
    assert_eq!(
        status(reqwest::Method::GET, blob("library/other")).await,
        200
    );
    assert!(c.origins_holding(&layer) > 0);
    assert_eq!(
        status(reqwest::Method::DELETE, blob("library/other")).await,
        202
    );
    assert!(c.origins_holding(&layer) > 0, "library/third mounted it");
    assert_eq!(
        status(reqwest::Method::DELETE, blob("library/third")).await,
        202
    );
    assert_eq!(c.origins_holding(&layer), 0);
    assert!(!backend_holds(&c, &layer).await);
    assert_eq!(
        status(reqwest::Method::GET, blob("library/other")).await,
        404
    );

    // `crane delete <proxy>/library/other:v1`, then `crane delete ...@<digest>` of
    // library/app's copy: the tag goes, then the manifest, which library/app linked too.
    let tag = format!("{p}/v2/library/other/manifests/v1");
    assert_eq!(status(reqwest::Method::DELETE, tag.clone()).await, 202);
    assert_eq!(status(reqwest::Method::GET, tag).await, 404);
    let other = format!("{p}/v2/library/other/manifests/{digest}");
    assert_eq!(status(reqwest::Method::DELETE, other.clone()).await, 202);
    assert!(c.origins_holding(&digest) > 0, "library/app links it still");
    let app = format!("{p}/v2/library/app/manifests/{digest}");
    assert_eq!(status(reqwest::Method::DELETE, app).await, 202);
    assert_eq!(c.origins_holding(&digest), 0);
    assert_eq!(status(reqwest::Method::GET, other).await, 404);
}
