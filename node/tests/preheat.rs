//! Preheating end to end: an image that lives only in the backend (as another cluster's
//! write-back or an upstream registry would hold it) is walked by `kraken_client::preheat`
//! over real QUIC, and its owning origins read every blob through, once.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use kraken_client::preheat::{
    BlobRole, ImageRef, PreheatConfig, PreheatError, PreheatEvent, PreheatSummary, preheat,
};
use kraken_membership::Role;
use kraken_node::config::NodeRole;
use kraken_node::proto::{ErrorKind, RefKind};
use kraken_storage::Digest;
use kraken_storage::backend::{Backend, default_http_client};
use support::{TestCluster, fs_backend};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REPO: &str = "library/app";

/// Three origins (each blob owned by all three), a tracker and a build-index.
async fn cluster() -> TestCluster {
    let mut c = TestCluster::new();
    for name in ["origin-1", "origin-2", "origin-3"] {
        c.add(name, NodeRole::Origin).await;
    }
    c.add("tracker-1", NodeRole::Tracker).await;
    c.add("bi-1", NodeRole::BuildIndex).await;
    c.converge(3).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.client().view().ring(Role::BuildIndex).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no build-index in the view"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c
}

/// The test backend, as a writer outside the cluster.
fn backend(c: &TestCluster) -> Backend {
    Backend::new(
        "seed",
        &fs_backend(&c.backend_root),
        default_http_client().unwrap(),
    )
    .unwrap()
}

/// Writes `bytes` straight into the backend; returns its digest.
async fn put(c: &TestCluster, b: &Backend, name: &str, bytes: &[u8]) -> Digest {
    let path = c.dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let digest = Digest::sha256_of(bytes);
    b.put_file(
        &digest,
        std::fs::File::open(&path).unwrap(),
        bytes.len() as u64,
    )
    .await
    .unwrap();
    digest
}

fn manifest(config: &Digest, layers: &[Digest]) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l}","size":1}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{}]}}"#,
        layers.join(",")
    )
    .into_bytes()
}

fn index(children: &[(Digest, &str)]) -> Vec<u8> {
    let m: Vec<String> = children
        .iter()
        .map(|(d, arch)| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"{arch}"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        m.join(",")
    )
    .into_bytes()
}

/// A two-platform image in the backend, tagged `REPO:multi`.
struct Image {
    index: Digest,
    amd64: Vec<Digest>,
    arm64: Vec<Digest>,
    shared: Digest,
}

async fn two_platform_image(c: &TestCluster) -> Image {
    let b = backend(c);
    let shared = put(c, &b, "shared", &vec![7u8; 300_000]).await;
    let mut sides = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let config = put(c, &b, &format!("config-{arch}"), arch.as_bytes()).await;
        let layer = put(c, &b, &format!("layer-{arch}"), &vec![i as u8; 100_000]).await;
        let m = manifest(&config, &[layer, shared]);
        let m = put(c, &b, &format!("manifest-{arch}"), &m).await;
        sides.push(vec![m, config, layer]);
    }
    let idx = index(&[(sides[0][0], "amd64"), (sides[1][0], "arm64")]);
    let idx = put(c, &b, "index", &idx).await;
    b.put_tag(REPO, "multi", &idx).await.unwrap();
    let arm64 = sides.pop().unwrap();
    let amd64 = sides.pop().unwrap();
    Image {
        index: idx,
        amd64,
        arm64,
        shared,
    }
}

async fn run(
    c: &TestCluster,
    image: &str,
    platform: Option<&str>,
) -> (Result<PreheatSummary, PreheatError>, Vec<String>) {
    let config = PreheatConfig {
        platform: platform.map(|p| p.parse().unwrap()),
        ..PreheatConfig::default()
    };
    let mut events = Vec::new();
    let image: ImageRef = image.parse().unwrap();
    let summary = preheat(c.client(), &image, &config, |e| {
        events.push(match e {
            PreheatEvent::Started { digest, role } => format!("start {} {digest}", role.as_str()),
            PreheatEvent::Done {
                digest, fetched, ..
            } => format!("done {digest} {fetched}"),
            PreheatEvent::Failed(f) => format!("failed {} {}", f.digest, f.error),
        });
    })
    .await;
    (summary, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preheat_reads_an_image_through_once_and_respects_the_platform_filter() {
    let c = cluster().await;
    let image = two_platform_image(&c).await;

    // arm64 only: the index, its arm64 manifest, config, layer and the shared layer.
    let (summary, events) = run(&c, &format!("{REPO}:multi"), Some("linux/arm64")).await;
    let s = summary.unwrap();
    assert_eq!(s.root, image.index);
    assert_eq!(
        (s.blobs_fetched, s.blobs_held, s.skipped),
        (5, 0, 1),
        "{events:?}"
    );
    assert!(s.failures.is_empty(), "{:?}", s.failures);
    let b = backend(&c);
    let mut expected = 0;
    for d in image.arm64.iter().chain([&image.shared, &image.index]) {
        expected += b.stat(d).await.unwrap().unwrap();
    }
    assert_eq!(s.bytes_fetched, expected);
    // Held (by the owner that read it through, and by co-owners a repair pass copied it
    // to: the backend read above counts each blob once).
    for d in image.arm64.iter().chain([&image.shared, &image.index]) {
        assert!(c.origins_holding(d) >= 1, "{d} is held");
    }
    for d in &image.amd64 {
        assert_eq!(c.origins_holding(d), 0, "{d} (amd64) was not asked for");
    }
    assert_eq!(events.len(), 10, "a start and an end per blob: {events:?}");
    let read: u64 = c
        .origins()
        .iter()
        .map(|&i| backend_read_bytes(c.node(i)))
        .sum();
    assert_eq!(
        read, s.bytes_fetched,
        "each blob was read from the backend once"
    );

    // Everything: the amd64 side is fetched now, the rest is already held.
    let (summary, _) = run(&c, &format!("{REPO}@{}", image.index), None).await;
    let s = summary.unwrap();
    assert_eq!((s.blobs_fetched, s.blobs_held, s.skipped), (3, 5, 0));
    for d in &image.amd64 {
        assert!(c.origins_holding(d) >= 1);
    }

    // Owners hold each blob (the first in ring order reads it through unless it was slow
    // to answer and the walk moved on: on a loaded machine that happens).
    for d in image.amd64.iter().chain(&image.arm64) {
        let owners: Vec<_> = c
            .client()
            .owners_of_digest(Role::Origin, d, 3)
            .iter()
            .map(|m| m.quic_addr)
            .collect();
        let holder = c
            .origins()
            .into_iter()
            .find(|&i| {
                let o = c.node(i).roles().origin.as_ref().unwrap();
                o.cas().contains(d).unwrap()
            })
            .unwrap();
        assert!(owners.contains(&c.node(holder).quic_addr()), "{owners:?}");
    }
}

fn backend_read_bytes(node: &kraken_node::Node) -> u64 {
    let text = node.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix("kraken_backend_read_bytes_total "))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_blob_fails_alone_and_an_unknown_tag_fails_clearly() {
    let c = cluster().await;
    let b = backend(&c);
    let config = put(&c, &b, "config", b"{}").await;
    let present = put(&c, &b, "present", &[1u8; 5000]).await;
    let missing = Digest::sha256_of(b"not in the backend");
    let m = put(&c, &b, "manifest", &manifest(&config, &[missing, present])).await;
    b.put_tag(REPO, "broken", &m).await.unwrap();

    let (summary, events) = run(&c, &format!("{REPO}:broken"), None).await;
    let s = summary.unwrap();
    assert_eq!(s.blobs(), 3, "{events:?}");
    assert_eq!(s.failures.len(), 1);
    let f = &s.failures[0];
    assert_eq!((f.digest, f.role), (missing, BlobRole::Ref(RefKind::Layer)));
    let remote = match &f.error {
        kraken_client::preheat::WarmError::Call(e) => e.remote().unwrap().kind,
        other => panic!("{other}"),
    };
    assert_eq!(remote, ErrorKind::NotFound);
    assert!(c.origins_holding(&present) >= 1);

    let (summary, _) = run(&c, &format!("{REPO}:nope"), None).await;
    match summary {
        Err(e @ PreheatError::UnknownTag { .. }) => {
            assert_eq!(e.to_string(), format!("unknown tag {REPO}:nope"));
        }
        other => panic!("{other:?}"),
    }
    // Concurrency 1 walks the same blobs (breadth first, each once).
    let config = PreheatConfig {
        concurrency: 1,
        wait: Duration::from_secs(5),
        ..PreheatConfig::default()
    };
    let mut seen = HashSet::new();
    let image: ImageRef = format!("{REPO}@{m}").parse().unwrap();
    let s = preheat(c.client(), &image, &config, |e| {
        if let PreheatEvent::Started { digest, .. } = e {
            assert!(seen.insert(*digest), "{digest} warmed twice");
        }
    })
    .await
    .unwrap();
    assert_eq!((s.blobs_held, s.failures.len()), (3, 1));
}

const TOKEN: &str = "s3cret-notify";

/// Adds two proxies: one accepting notifications with [`TOKEN`] (under `prefix`), one
/// without a token. Returns their registry URLs.
async fn proxies(c: &mut TestCluster, prefix: &str) -> (String, String) {
    let mut with = c.config("proxy-1", NodeRole::Proxy);
    with.registry.notifications.token = Some(TOKEN.into());
    with.registry.notifications.prefix = prefix.into();
    let with = c.start(with).await;
    let without = c.add("proxy-2", NodeRole::Proxy).await;
    c.converge(3).await;
    let url = |i: usize| format!("http://{}", c.node(i).registry_addr().unwrap());
    (url(with), url(without))
}

async fn post(url: &str, token: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, String) {
    let mut r = reqwest::Client::new()
        .post(url)
        .header(
            "content-type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .body(body);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Waits until every blob of `digests` is held by an origin.
async fn wait_held(c: &TestCluster, digests: &[Digest]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while digests.iter().any(|d| c.origins_holding(d) == 0) {
        assert!(std::time::Instant::now() < deadline, "not preheated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (8 s at most) until the proxy's metrics show `line`: counters move after the work
/// they count is visible elsewhere.
async fn wait_metric(c: &TestCluster, line: &str, why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let metrics = c.node(c.nodes.len() - 2).metrics().render();
        if metrics.contains(line) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{why}: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn envelope(action: &str, media_type: &str, repo: &str, digest: &Digest, tag: &str) -> String {
    format!(
        r#"{{"events":[{{"id":"e1","timestamp":"2024-01-01T00:00:00Z","action":"{action}","target":{{"mediaType":"{media_type}","size":1,"digest":"{digest}","length":1,"repository":"{repo}","url":"http://r/v2/{repo}/manifests/{digest}","tag":"{tag}"}},"request":{{"id":"r","addr":"1.2.3.4","host":"registry:5000","method":"PUT","useragent":"docker"}},"actor":{{}},"source":{{"addr":"r:5000","instanceID":"i"}}}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_notifications_preheat_what_they_name_and_refuse_everything_else() {
    let mut c = cluster().await;
    let image = two_platform_image(&c).await;
    let (proxy, untokened) = proxies(&mut c, "").await;
    let hook = format!("{proxy}/kraken/v1/notifications");
    let harbor = format!("{proxy}/kraken/v1/webhooks/harbor");
    let push = envelope("push", OCI_INDEX, REPO, &image.index, "multi");

    // Not served without a token; refused without the right one; bounded; parsed.
    let (status, _) = post(
        &format!("{untokened}/kraken/v1/notifications"),
        Some(TOKEN),
        push.clone(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(post(&hook, None, push.clone()).await.0, 401);
    assert_eq!(
        post(&hook, Some("s3cret-notifz"), push.clone()).await.0,
        401
    );
    assert_eq!(
        post(&hook, Some(TOKEN), vec![b' '; (1 << 20) + 1]).await.0,
        413
    );
    let malformed = ["", "{", "[]", "\u{0}\u{ff}"];
    let distribution_only = [
        r#"{"events":7}"#,
        r#"{"events":[{"action":"push","target":{"digest":5}}]}"#,
    ];
    let harbor_only = [
        r#"{"type":5}"#,
        r#"{"type":"PUSH_ARTIFACT","event_data":{"resources":7}}"#,
    ];
    for (url, extra) in [(&hook, distribution_only), (&harbor, harbor_only)] {
        for bad in malformed.iter().chain(&extra) {
            let (status, body) = post(url, Some(TOKEN), *bad).await;
            assert_eq!(status, 400, "{url} {bad:?}: {body}");
        }
    }

    // Pulls, deletes and layer pushes are ignored: nothing is fetched.
    let pull = envelope("pull", OCI_INDEX, REPO, &image.index, "multi");
    let (status, body) = post(&hook, Some(TOKEN), pull).await;
    assert_eq!(
        (status, body.trim()),
        (202, r#"{"dropped":0,"ignored":0,"queued":0}"#)
    );
    let layer = envelope(
        "push",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        REPO,
        &image.shared,
        "",
    );
    assert_eq!(post(&hook, Some(TOKEN), layer).await.0, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.origins_holding(&image.index), 0);
    assert_eq!(c.origins_holding(&image.shared), 0);

    // A push of the index preheats all of it, in the background.
    let (status, body) = post(&hook, Some(TOKEN), push).await;
    assert_eq!(
        (status, body.trim()),
        (202, r#"{"dropped":0,"ignored":0,"queued":1}"#)
    );
    let mut all = vec![image.index, image.shared];
    all.extend(image.amd64.iter().chain(&image.arm64));
    wait_held(&c, &all).await;
    wait_metric(
        &c,
        "kraken_preheats_started_total 1",
        "the index's preheat did not start",
    )
    .await;

    // Harbor's push webhook names a tag of another image.
    let b = backend(&c);
    let config = put(&c, &b, "h-config", b"{\"harbor\":1}").await;
    let layer = put(&c, &b, "h-layer", &[9u8; 4000]).await;
    let m = put(&c, &b, "h-manifest", &manifest(&config, &[layer])).await;
    b.put_tag("proj/app", "v1", &m).await.unwrap();
    let webhook = r#"{"type":"PUSH_ARTIFACT","occur_at":1700000000,"operator":"ci","event_data":{"resources":[{"digest":"","tag":"v1","resource_url":"harbor/proj/app:v1"}],"repository":{"date_created":1,"name":"app","namespace":"proj","repo_full_name":"proj/app","repo_type":"private"}}}"#;
    let (status, body) = post(&harbor, Some(TOKEN), webhook).await;
    assert_eq!(
        (status, body.trim()),
        (202, r#"{"dropped":0,"ignored":0,"queued":1}"#)
    );
    wait_held(&c, &[m, config, layer]).await;
    // The blobs are held a moment before the preheat task counts itself done.
    wait_metric(
        &c,
        "kraken_preheats_done_total 2",
        "the preheats did not finish",
    )
    .await;

    // A tag nobody has is final at once: counted failed, not retried for half a minute.
    let unknown = envelope("push", OCI_INDEX, REPO, &image.index, "never-pushed").replace(
        &format!("\"digest\":\"{}\"", image.index),
        "\"digest\":\"\"",
    );
    let (status, body) = post(&hook, Some(TOKEN), unknown).await;
    assert_eq!(
        (status, body.trim()),
        (202, r#"{"dropped":0,"ignored":0,"queued":1}"#)
    );
    wait_metric(
        &c,
        "kraken_preheats_failed_total 1",
        "the unknown tag was retried",
    )
    .await;
}
