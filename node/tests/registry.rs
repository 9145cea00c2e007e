//! The registry API end to end with real clients: `skopeo` pushes an image (built by
//! `umoci`) through the proxy and pulls it through agents (P2P behind the gateway), also by
//! digest while the build-index is down; containerd's `ctr` pulls through an agent
//! configured as a registry mirror (`hosts.toml`).
//!
//! The tools are installed by `.ci/run`; elsewhere a missing tool makes these tests print
//! SKIPPED and pass (under `CI` they fail instead).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use kraken_node::config::NodeRole;
use support::TestCluster;
use support::tools::{
    blobs_of, build_image, docker_io_mirror, have, http, run, skopeo_pull, start_containerd,
};

/// Origin, tracker, build-index, two agents and a proxy, all seeing the build-index.
async fn registry_cluster() -> (TestCluster, [usize; 4]) {
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    let bi = c.add("bi-1", NodeRole::BuildIndex).await;
    let a1 = c.add("agent-1", NodeRole::Agent).await;
    let a2 = c.add("agent-2", NodeRole::Agent).await;
    // A small manifest limit, so an oversized manifest fits in the socket buffers and the
    // client reads the 413 instead of a reset.
    let mut proxy_config = c.config("proxy-1", NodeRole::Proxy);
    proxy_config.registry.max_manifest_len = 64 << 10;
    let proxy = c.start(proxy_config).await;
    c.converge(1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while [a1, a2, proxy].iter().any(|&i| {
        c.node(i)
            .cluster()
            .view()
            .ring(kraken_membership::Role::BuildIndex)
            .is_empty()
    }) {
        assert!(std::time::Instant::now() < deadline, "build-index not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (c, [bi, a1, a2, proxy])
}

/// Builds the image and pushes it as `library/app:v1` through the proxy with skopeo.
/// Pushes the test image to the proxy as `<repo>:v1`.
async fn push_image(c: &TestCluster, proxy: usize, repo: &str) -> std::path::PathBuf {
    let dir = c.dir.path().join("images");
    std::fs::create_dir_all(&dir).unwrap();
    build_image(&dir).await;
    let push = c.node(proxy).registry_addr().unwrap();
    let src = format!("oci:{}:v1", dir.join("img").display());
    run(
        "skopeo",
        vec![
            "copy".into(),
            "--dest-tls-verify=false".into(),
            src,
            format!("docker://{push}/{repo}:v1"),
        ],
    )
    .await;
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_through_the_proxy_and_pulls_through_agents() {
    if !have("skopeo") || !have("umoci") {
        return;
    }
    let (mut c, [bi, a1, a2, proxy]) = registry_cluster().await;
    let dir = push_image(&c, proxy, "library/app").await;
    let pull1 = c.node(a1).registry_addr().unwrap();
    let pull2 = c.node(a2).registry_addr().unwrap();

    // Pull through agent 1: every blob arrives intact.
    let inspect = run(
        "skopeo",
        vec![
            "inspect".into(),
            "--tls-verify=false".into(),
            format!("docker://{pull1}/library/app:v1"),
        ],
    )
    .await;
    let digest = serde_json::from_str::<serde_json::Value>(&inspect).unwrap()["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    let out1 = dir.join("out1");
    skopeo_pull(format!("docker://{pull1}/library/app:v1"), &out1).await;
    // umoci keeps the superseded manifests and configs of each step; the pull holds
    // exactly the blobs of v1, all of them from the source.
    let source = blobs_of(&dir.join("img"));
    let pulled = blobs_of(&out1);
    assert!(pulled.is_subset(&source), "{pulled:?} vs {source:?}");
    assert!(pulled.contains(digest.trim_start_matches("sha256:")));
    assert_eq!(
        pulled.len(),
        4,
        "manifest, config and two layers: {pulled:?}"
    );

    // Again through agent 1, which now holds every blob: the blob GETs are redirected to
    // its zero-copy blob server, and the same bytes arrive.
    let redirected = blob_redirects(&c, a1);
    let out1b = dir.join("out1b");
    skopeo_pull(format!("docker://{pull1}/library/app:v1"), &out1b).await;
    assert_eq!(blobs_of(&out1b), pulled);
    for blob in &pulled {
        let path = |out: &Path| out.join("blobs/sha256").join(blob);
        assert!(std::fs::read(path(&out1b)).unwrap() == std::fs::read(path(&out1)).unwrap());
    }
    let now = blob_redirects(&c, a1);
    assert!(
        now >= redirected + 3,
        "config and layers redirected: {redirected} -> {now}"
    );

    // The tag is listed through the agent.
    let tags = run(
        "skopeo",
        vec![
            "list-tags".into(),
            "--tls-verify=false".into(),
            format!("docker://{pull1}/library/app"),
        ],
    )
    .await;
    assert!(tags.contains("\"v1\""), "{tags}");

    // The build-index goes away: a pull by digest through agent 2 still works.
    c.kill(bi);
    let out2 = dir.join("out2");
    run(
        "skopeo",
        vec![
            "copy".into(),
            "--src-tls-verify=false".into(),
            format!("docker://{pull2}/library/app@{digest}"),
            format!("oci:{}:v1", out2.display()),
        ],
    )
    .await;
    assert_eq!(blobs_of(&out2), pulled);
}

/// Blob GETs the agent's registry API redirected to its blob server (3xx GETs).
fn blob_redirects(c: &TestCluster, agent: usize) -> u64 {
    let text = c.node(agent).metrics().render();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("kraken_gateway_requests_total{method=\"GET\",status=\"3xx\"} ")
        })
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_an_agent_as_its_registry_mirror() {
    if !have("skopeo") || !have("umoci") || !have("containerd") || !have("ctr") {
        return;
    }
    let (c, [_, a1, _, proxy]) = registry_cluster().await;
    // containerd asks the mirror with `?ns=docker.io`: the cluster repository is
    // `docker.io/library/app`.
    push_image(&c, proxy, "docker.io/library/app").await;
    let mirror = c.node(a1).registry_addr().unwrap();

    // The documented hosts.toml: docker.io is mirrored by the local agent.
    let hosts = docker_io_mirror(&c.dir.path().join("certs.d"), mirror);
    let ctrd_dir = c.dir.path().join("containerd");
    std::fs::create_dir_all(&ctrd_dir).unwrap();
    let containerd = tokio::task::spawn_blocking(move || start_containerd(&ctrd_dir))
        .await
        .unwrap();
    let sock = containerd.socket.display().to_string();
    run(
        "ctr",
        vec![
            "--address".into(),
            sock.clone(),
            "images".into(),
            "pull".into(),
            "--hosts-dir".into(),
            hosts.display().to_string(),
            "docker.io/library/app:v1".into(),
        ],
    )
    .await;
    let ctr = |args: &[&str]| {
        let mut all = vec!["--address".to_string(), sock.clone()];
        all.extend(args.iter().map(ToString::to_string));
        run("ctr", all)
    };
    let listed = ctr(&["content", "ls"]).await;
    // Manifest, config and both layers are now in containerd's content store.
    let agent = c.node(a1).roles().agent.clone().unwrap();
    let held: Vec<_> = agent.cas().list().unwrap();
    assert!(held.len() >= 4, "the agent downloaded {} blobs", held.len());
    let in_containerd = |listed: &str| {
        for blob in &held {
            assert!(
                listed.contains(&blob.digest.to_string()),
                "{} not in containerd:\n{listed}",
                blob.digest
            );
        }
    };
    in_containerd(&listed);

    // Forgotten by containerd and pulled again: the agent holds every blob now, so the
    // blob GETs are redirected to its blob server, and containerd (which checks each
    // digest) stores them again.
    let redirected = blob_redirects(&c, a1);
    ctr(&["images", "rm", "--sync", "docker.io/library/app:v1"]).await;
    ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        &hosts.display().to_string(),
        "docker.io/library/app:v1",
    ])
    .await;
    in_containerd(&ctr(&["content", "ls"]).await);
    let now = blob_redirects(&c, a1);
    assert!(
        now >= redirected + 3,
        "config and layers redirected: {redirected} -> {now}"
    );
}

/// The spec's error code of a response, checked with its status.
async fn code(r: reqwest::Response, status: u16) -> String {
    assert_eq!(r.status().as_u16(), status, "{:?}", r.headers());
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    body["errors"][0]["code"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_answers_bad_requests_with_the_specs_codes() {
    let (c, [_, a1, _, proxy]) = registry_cluster().await;
    let push = format!("http://{}", c.node(proxy).registry_addr().unwrap());
    let pull = format!("http://{}", c.node(a1).registry_addr().unwrap());
    let h = http();
    let missing = kraken_storage::Digest::sha256_of(b"nobody pushed this");

    // Bad names and digests never reach the cluster.
    let r = h
        .get(format!("{pull}/v2/Bad_Name/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r, 400).await, "NAME_INVALID");
    let r = h
        .get(format!("{pull}/v2/library/app/blobs/sha256:xyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r, 400).await, "DIGEST_INVALID");
    // Unknown blob and manifest, as the cluster reports them.
    let r = h
        .get(format!("{pull}/v2/library/app/blobs/{missing}"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r, 404).await, "BLOB_UNKNOWN");
    let r = h
        .get(format!("{pull}/v2/library/app/manifests/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r, 404).await, "MANIFEST_UNKNOWN");

    // A wrong digest on upload stores nothing.
    let body = b"some layer bytes".to_vec();
    let r = h
        .post(format!(
            "{push}/v2/library/app/blobs/uploads/?digest={missing}"
        ))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(code(r, 400).await, "DIGEST_INVALID");
    let r = h
        .head(format!("{push}/v2/library/app/blobs/{missing}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // An interrupted chunked upload: the status says where it stopped; it resumes there.
    let layer: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = kraken_storage::Digest::sha256_of(&layer);
    let r = h
        .post(format!("{push}/v2/library/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let url = if location.starts_with("http") {
        location.clone()
    } else {
        format!("{push}{location}")
    };
    let r = h
        .patch(&url)
        .header("content-range", "0-99999")
        .body(layer[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let r = h.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(r.headers()["range"], "0-99999");
    // Out of order: 416.
    let r = h
        .patch(&url)
        .header("content-range", "200000-299999")
        .body(layer[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 416);
    let r = h
        .patch(&url)
        .header("content-range", "100000-299999")
        .body(layer[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let r = h
        .put(format!(
            "{url}{}digest={digest}",
            if url.contains('?') { "&" } else { "?" }
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    let r = h
        .head(format!("{pull}/v2/library/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-length"], "300000");

    // A manifest whose layer the cluster lacks: the build-index refuses it by name.
    let config = b"{}".to_vec();
    let config_digest = kraken_storage::Digest::sha256_of(&config);
    let r = h
        .post(format!(
            "{push}/v2/library/app/blobs/uploads/?digest={config_digest}"
        ))
        .body(config)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{missing}","size":1}}]}}"#
    );
    let r = h
        .put(format!("{push}/v2/library/app/manifests/broken"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("MANIFEST_BLOB_UNKNOWN") && text.contains(&missing.to_string()),
        "{text}"
    );

    // An oversized manifest.
    let huge = format!(r#"{{"schemaVersion":2,"pad":"{}"}}"#, "x".repeat(100 << 10));
    let r = h
        .put(format!("{push}/v2/library/app/manifests/huge"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(huge)
        .send()
        .await
        .unwrap();
    // The body was not read to its end: the connection is not reused.
    assert_eq!(r.headers()["connection"], "close");
    assert_eq!(code(r, 413).await, "MANIFEST_INVALID");

    // Deleting a tag where the spec allows it: by tag on the proxy.
    let r = h
        .delete(format!("{push}/v2/library/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "nothing tagged v1 in this test yet"
    );
    // Tag the config blob (any blob can be tagged), then delete the tag.
    let small = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[]}}"#
    );
    let r = h
        .put(format!("{push}/v2/library/app/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = h
        .delete(format!("{push}/v2/library/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let r = h
        .get(format!("{pull}/v2/library/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r, 404).await, "MANIFEST_UNKNOWN");

    // Agents take no pushes.
    let r = h
        .post(format!("{pull}/v2/library/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r, 405).await, "UNSUPPORTED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_passes_through_to_an_upstream_registry_for_what_its_cluster_lacks() {
    if !have("skopeo") || !have("umoci") {
        return;
    }
    // Cluster A has the image and serves it on its proxy: the "upstream" registry.
    let (a, [_, _, _, proxy]) = registry_cluster().await;
    push_image(&a, proxy, "library/app").await;
    let upstream = a.node(proxy).registry_addr().unwrap();

    // Cluster B is empty; its agent passes `library/*` through to A.
    let mut b = TestCluster::new();
    b.add("b-origin", NodeRole::Origin).await;
    b.add("b-tracker", NodeRole::Tracker).await;
    b.add("b-bi", NodeRole::BuildIndex).await;
    let mut config = b.config("b-agent", NodeRole::Agent);
    config.registry.upstreams = vec![kraken_node::upstream::UpstreamConfig::pass_through(
        "library/.*",
        format!("http://{upstream}"),
    )];
    let agent = b.start(config).await;
    b.converge(1).await;
    let pull = b.node(agent).registry_addr().unwrap();

    let out = b.dir.path().join("out");
    run(
        "skopeo",
        vec![
            "copy".into(),
            "--src-tls-verify=false".into(),
            format!("docker://{pull}/library/app:v1"),
            format!("oci:{}:v1", out.display()),
        ],
    )
    .await;
    let source = blobs_of(&a.dir.path().join("images/img"));
    let pulled = blobs_of(&out);
    assert!(pulled.is_subset(&source) && pulled.len() == 4, "{pulled:?}");
    // Nothing of it entered cluster B.
    assert!(
        b.node(agent)
            .roles()
            .agent
            .as_ref()
            .unwrap()
            .cas()
            .list()
            .unwrap()
            .is_empty()
    );

    // Repositories without an upstream are simply unknown.
    let r = http()
        .get(format!("http://{pull}/v2/private/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r, 404).await, "MANIFEST_UNKNOWN");
}
