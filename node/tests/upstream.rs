//! Upstream registries through the swarm, end to end with real parts: Debian's
//! `docker-registry` (distribution 2.8) as the upstream, an in-process cluster whose origins
//! and build-index route repositories to it (`[[backends]]` with `registry`), skopeo and
//! containerd's `ctr` as clients.
//!
//! What is checked: four agents pull one upstream image and the upstream serves each blob
//! once; containerd mirrors `docker.io` through an agent with `?ns=`; a tag moved upstream
//! is seen after the cache time and the last known digest survives the upstream going
//! down; a tampered blob is refused and stored nowhere; the upstream's 401/404/429 reach
//! the client as the spec's codes.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kraken_node::config::NodeRole;
use kraken_storage::Digest;
use kraken_storage::backend::{BackendConfig, RegistryServiceConfig, RouteConfig, ServiceConfig};
use support::TestCluster;
use support::tools::{
    blobs_of, build_image, build_image_with, docker_io_mirror, have, http, run, s, skopeo_pull,
    start_containerd,
};

/// `docker-registry serve` on a free loopback port, its access log in a file.
struct Upstream {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Upstream {
    /// Starts a registry storing under `dir`; `htpasswd` turns on basic auth.
    fn start(dir: &Path, htpasswd: Option<&Path>) -> Upstream {
        let addr = free_addr();
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let auth = htpasswd.map_or(String::new(), |p| {
            format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                p.display()
            )
        });
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n{auth}",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let log = dir.join("access.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Upstream { child, addr, log }
    }

    /// Stops it (kill -9): its sockets close, nothing answers any more.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many `GET`s of `digest` (as a blob or a manifest) it answered with 200.
    fn gets_of(&self, digest: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(digest) && l.contains("\" 200 "))
            .count()
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `docker.io/…` (containerd's `?ns=docker.io`) and every other repository, both read
/// through from `registry`.
fn upstream_routes(registry: &RegistryServiceConfig) -> Vec<RouteConfig> {
    let mut docker_io = registry.clone();
    docker_io.strip_prefix = Some("docker.io/".into());
    vec![
        RouteConfig {
            namespace: "docker\\.io/.+".into(),
            name: Some("docker-io".into()),
            backend: BackendConfig::new(ServiceConfig::Registry(docker_io)),
        },
        RouteConfig {
            namespace: ".*".into(),
            name: Some("upstream".into()),
            backend: BackendConfig::new(ServiceConfig::Registry(registry.clone())),
        },
    ]
}

/// Three origins, a tracker, a build-index and `agents` agents mirroring `registry`.
async fn mirror_cluster(
    registry: &RegistryServiceConfig,
    agents: usize,
) -> (TestCluster, Vec<usize>) {
    let mut c = TestCluster::new();
    for i in 1..=3 {
        let mut config = c.config(&format!("origin-{i}"), NodeRole::Origin);
        config.backends = upstream_routes(registry);
        c.start(config).await;
    }
    c.add("tracker-1", NodeRole::Tracker).await;
    let mut config = c.config("bi-1", NodeRole::BuildIndex);
    config.backends = upstream_routes(registry);
    c.start(config).await;
    let mut ids = Vec::new();
    for i in 1..=agents {
        ids.push(c.add(&format!("agent-{i}"), NodeRole::Agent).await);
    }
    c.converge(3).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids.iter().any(|&i| {
        c.node(i)
            .cluster()
            .view()
            .ring(kraken_membership::Role::BuildIndex)
            .is_empty()
    }) {
        assert!(Instant::now() < deadline, "build-index not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (c, ids)
}

/// Layers of the usual test image, in bytes before compression.
const SMALL: &[u32] = &[3_000_000, 1_500_000];

/// Builds a test image with layers of `sizes` in `dir` and pushes it to `upstream` as
/// `library/app:<tag>`.
async fn push_upstream(dir: &Path, upstream: &Upstream, tag: &str, sizes: &[u32]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    build_image_with(dir, sizes).await;
    run(
        "skopeo",
        vec![
            "copy".into(),
            "--dest-tls-verify=false".into(),
            format!("oci:{}:v1", dir.join("img").display()),
            format!("docker://{}/library/app:{tag}", upstream.addr),
        ],
    )
    .await;
    dir.join("img")
}

/// The status and the first error code of a registry answer.
async fn answer(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or_default();
    let code = body["errors"][0]["code"].as_str().unwrap_or("").to_string();
    let message = body["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (status, code, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_agents_pull_an_upstream_image_that_the_upstream_serves_once() {
    if !have("skopeo") || !have("umoci") || !have("docker-registry") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(&work.path().join("upstream"), None);
    // A 24 MiB layer: enough pieces for four concurrent pulls to trade among agents.
    let source = push_upstream(
        &work.path().join("image"),
        &upstream,
        "v1",
        &[24 << 20, 1 << 20],
    )
    .await;
    let blobs = blobs_of(&source);
    let (c, agents) = mirror_cluster(&RegistryServiceConfig::new(upstream.url()), 4).await;

    // All four at once: concurrent first pulls.
    let pulls = agents.iter().enumerate().map(|(n, &a)| {
        let out = work.path().join(format!("out-{n}"));
        let from = c.node(a).registry_addr().unwrap();
        async move {
            skopeo_pull(format!("docker://{from}/library/app:v1"), &out).await;
            out
        }
    });
    let outs = futures::future::join_all(pulls).await;
    for out in &outs {
        let pulled = blobs_of(out);
        assert!(pulled.is_subset(&blobs) && pulled.len() == 4, "{pulled:?}");
        for blob in &pulled {
            assert_eq!(
                std::fs::read(out.join("blobs/sha256").join(blob)).unwrap(),
                std::fs::read(source.join("blobs/sha256").join(blob)).unwrap(),
                "{blob} differs"
            );
        }
    }
    // Each blob (manifest included) left the upstream once, cluster-wide.
    for blob in blobs_of(&outs[0]) {
        assert_eq!(upstream.gets_of(&blob), 1, "GETs of {blob} upstream");
    }
    // The swarm carried the bytes: agents fed each other.
    let from_agents: u64 = agents
        .iter()
        .flat_map(|&a| {
            let agent = c.node(a).roles().agent.clone().unwrap();
            blobs_of(&outs[0])
                .into_iter()
                .filter_map(move |b| agent.report(&format!("sha256:{b}").parse().unwrap()))
        })
        .map(|r| r.bytes_from_agents)
        .sum();
    eprintln!("bytes from agents: {from_agents}");
    assert!(from_agents > 0, "pull reports show no swarm bytes");

    // containerd mirrors docker.io through each agent (`?ns=docker.io`, repository
    // docker.io/library/app): the same blobs, and no new upstream GET.
    if have("containerd") && have("ctr") {
        for (n, &a) in agents.iter().enumerate() {
            let mirror = c.node(a).registry_addr().unwrap();
            let hosts = docker_io_mirror(&work.path().join(format!("certs.d-{n}")), mirror);
            let ctrd_dir = work.path().join(format!("containerd-{n}"));
            std::fs::create_dir_all(&ctrd_dir).unwrap();
            let containerd = tokio::task::spawn_blocking(move || start_containerd(&ctrd_dir))
                .await
                .unwrap();
            let sock = containerd.socket.display().to_string();
            run(
                "ctr",
                s(&[
                    "--address",
                    &sock,
                    "images",
                    "pull",
                    "--hosts-dir",
                    &hosts.display().to_string(),
                    "docker.io/library/app:v1",
                ]),
            )
            .await;
            let listed = run("ctr", s(&["--address", &sock, "content", "ls"])).await;
            for blob in blobs_of(&outs[0]) {
                assert!(
                    listed.contains(&blob),
                    "{blob} not in containerd {n}:\n{listed}"
                );
                assert_eq!(upstream.gets_of(&blob), 1, "GETs of {blob} upstream");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_seen_after_the_cache_time_and_survives_the_upstream_going_down() {
    if !have("skopeo") || !have("umoci") || !have("docker-registry") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::start(&work.path().join("upstream"), None);
    let first = push_upstream(&work.path().join("one"), &upstream, "v1", SMALL).await;
    let mut registry = RegistryServiceConfig::new(upstream.url());
    registry.tag_cache_secs = 1;
    registry.tag_stale_secs = 3600;
    let (c, agents) = mirror_cluster(&registry, 1).await;
    let agent = c.node(agents[0]).registry_addr().unwrap();
    let head = |reference: &str| {
        let url = format!("http://{agent}/v2/library/app/manifests/{reference}");
        async move {
            let r = http()
                .head(url)
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["docker-content-digest"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    let index = |layout: &Path| -> String {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let one = head("v1").await;
    assert_eq!(one, index(&first));

    // A different image under the same tag upstream (`build_image` is deterministic, so
    // change the image's config with another layer order: a second tag pushed over v1).
    let second = work.path().join("two");
    std::fs::create_dir_all(&second).unwrap();
    build_image(&second).await;
    run(
        "umoci",
        s(&[
            "config",
            "--image",
            &format!("{}:v1", second.join("img").display()),
            "--config.label",
            "moved=yes",
        ]),
    )
    .await;
    run(
        "skopeo",
        vec![
            "copy".into(),
            "--dest-tls-verify=false".into(),
            format!("oci:{}:v1", second.join("img").display()),
            format!("docker://{}/library/app:v1", upstream.addr),
        ],
    )
    .await;
    let moved = index(&second.join("img"));
    assert_ne!(moved, one);
    let deadline = Instant::now() + Duration::from_secs(20);
    while head("v1").await != moved {
        assert!(Instant::now() < deadline, "the moved tag was never seen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Upstream gone: the tag still resolves to the last known digest, and the image
    // already in the cluster still pulls.
    skopeo_pull(
        format!("docker://{agent}/library/app:v1"),
        &work.path().join("before"),
    )
    .await;
    upstream.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(head("v1").await, moved);
    skopeo_pull(
        format!("docker://{agent}/library/app:v1"),
        &work.path().join("after"),
    )
    .await;
    // Something the cluster never held fails with the spec's answer, not a hang.
    let r = http()
        .get(format!("http://{agent}/v2/library/app/manifests/never"))
        .send()
        .await
        .unwrap();
    let (status, code, _) = answer(r).await;
    assert!(status == 503 || status == 404, "{status} {code}");
}

/// An HTTP proxy in front of `upstream` that flips the last byte of every blob body.
async fn tampering_proxy(upstream: SocketAddr) -> SocketAddr {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::response::Response;
    let client = http();
    let app = axum::Router::new().fallback(move |req: Request| {
        let client = client.clone();
        async move {
            let url = format!("http://{upstream}{}", req.uri());
            let mut fwd = client.request(req.method().clone(), url);
            for (k, v) in req.headers() {
                if k != "host" {
                    fwd = fwd.header(k, v);
                }
            }
            let r = fwd.send().await.unwrap();
            let mut out = Response::builder().status(r.status().as_u16());
            for (k, v) in r.headers() {
                out = out.header(k, v);
            }
            let tamper = req.uri().path().contains("/blobs/sha256:");
            let mut body = r.bytes().await.unwrap().to_vec();
            if tamper && let Some(last) = body.last_mut() {
                *last ^= 0xff;
            }
            out.body(Body::from(body)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_upstream_blob_is_refused_and_stored_nowhere() {
    if !have("skopeo") || !have("umoci") || !have("docker-registry") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(&work.path().join("upstream"), None);
    let source = push_upstream(&work.path().join("image"), &upstream, "v1", SMALL).await;
    let proxy = tampering_proxy(upstream.addr).await;
    let (c, agents) =
        mirror_cluster(&RegistryServiceConfig::new(format!("http://{proxy}")), 1).await;
    let agent = c.node(agents[0]).registry_addr().unwrap();
    // The biggest blob is a layer (the manifest and config are small JSON).
    let layer = blobs_of(&source)
        .into_iter()
        .max_by_key(|b| {
            std::fs::metadata(source.join("blobs/sha256").join(b))
                .unwrap()
                .len()
        })
        .unwrap();
    let r = http()
        .get(format!(
            "http://{agent}/v2/library/app/blobs/sha256:{layer}"
        ))
        .send()
        .await
        .unwrap();
    let ok = r.status().is_success();
    let body = r.bytes().await;
    assert!(!ok || body.is_err(), "a tampered blob was served in full");
    let digest: Digest = format!("sha256:{layer}").parse().unwrap();
    for n in c.origins() {
        let origin = c.node(n).roles().origin.clone().unwrap();
        assert!(
            !origin.cas().contains(&digest).unwrap(),
            "an origin kept it"
        );
    }
    let agent_role = c.node(agents[0]).roles().agent.clone().unwrap();
    assert!(
        !agent_role.cas().contains(&digest).unwrap(),
        "the agent kept it"
    );
}

/// A registry that answers everything with 429 and a registry error body.
async fn rate_limited_registry() -> SocketAddr {
    use axum::http::StatusCode;
    let app = axum::Router::new().fallback(|| async {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("content-type", "application/json")],
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"you have reached your pull rate limit"}]}"#,
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `test:secret` for docker-registry's htpasswd (bcrypt, cost 5).
const HTPASSWD: &str = "test:$2b$05$kG1g..hbZLCw1ifJ.RaE2eA8diKtBLHMTDAeZkkwu8GsInWlHBcW6\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_open_a_locked_upstream_and_refusals_reach_the_client_as_the_specs_codes() {
    if !have("skopeo") || !have("umoci") || !have("docker-registry") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(&htpasswd, HTPASSWD).unwrap();
    let locked = Upstream::start(&work.path().join("locked"), Some(&htpasswd));
    let image = work.path().join("image");
    std::fs::create_dir_all(&image).unwrap();
    build_image(&image).await;
    run(
        "skopeo",
        vec![
            "copy".into(),
            "--dest-tls-verify=false".into(),
            "--dest-creds=test:secret".into(),
            format!("oci:{}:v1", image.join("img").display()),
            format!("docker://{}/library/app:v1", locked.addr),
        ],
    )
    .await;
    let limited = rate_limited_registry().await;

    // `authed/…` reads the locked registry with its credentials, `locked/…` without; `limited/…` is rate-limited; the rest
    // is an open registry without the repository.
    let open = Upstream::start(&work.path().join("open"), None);
    let route = |ns: &str, url: String| RouteConfig {
        namespace: format!("{ns}/.+"),
        name: Some(ns.into()),
        backend: BackendConfig::new(ServiceConfig::Registry({
            let mut r = RegistryServiceConfig::new(url);
            r.strip_prefix = Some(format!("{ns}/"));
            r
        })),
    };
    let mut authed = route("authed", locked.url());
    if let ServiceConfig::Registry(r) = &mut authed.backend.service {
        r.username = Some("test".into());
        r.password = Some("secret".into());
    }
    let routes = vec![
        authed,
        route("locked", locked.url()),
        route("limited", format!("http://{limited}")),
        route("open", open.url()),
    ];
    let mut c = TestCluster::new();
    let mut config = c.config("origin-1", NodeRole::Origin);
    config.backends = routes.clone();
    c.start(config).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    let mut config = c.config("bi-1", NodeRole::BuildIndex);
    config.backends = routes;
    c.start(config).await;
    let a = c.add("agent-1", NodeRole::Agent).await;
    c.converge(1).await;
    let agent = c.node(a).registry_addr().unwrap();
    let get = |path: &str| {
        let url = format!("http://{agent}/v2/{path}");
        async move { answer(http().get(url).send().await.unwrap()).await }
    };
    let blob = Digest::sha256_of(b"absent");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, code, message) = get("locked/app/manifests/v1").await;
        if status == 401 {
            assert_eq!(code, "UNAUTHORIZED", "{message}");
            break;
        }
        // The build-index may not be in the agent's view yet.
        assert!(Instant::now() < deadline, "{status} {code} {message}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    skopeo_pull(
        format!("docker://{agent}/authed/library/app:v1"),
        &work.path().join("out"),
    )
    .await;
    let pulled = blobs_of(&work.path().join("out"));
    assert!(
        pulled.is_subset(&blobs_of(&image.join("img"))) && pulled.len() == 4,
        "{pulled:?}"
    );
    let (status, code, message) = get(&format!("locked/app/blobs/{blob}")).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"), "{message}");
    let (status, code, message) = get("limited/app/manifests/v1").await;
    assert_eq!(
        (status, code.as_str()),
        (429, "TOOMANYREQUESTS"),
        "{message}"
    );
    // Tags are asked with a HEAD, whose answer has no body: the blob's GET carries the
    // upstream's own words.
    let (status, code, message) = get(&format!("limited/app/blobs/{blob}")).await;
    assert_eq!(
        (status, code.as_str()),
        (429, "TOOMANYREQUESTS"),
        "{message}"
    );
    assert!(message.contains("pull rate limit"), "{message}");
    let (status, code, message) = get("open/nothing/manifests/v1").await;
    assert_eq!(status, 404, "{code} {message}");
    assert!(
        code == "NAME_UNKNOWN" || code == "MANIFEST_UNKNOWN",
        "{code}"
    );
    let (status, code, message) = get(&format!("open/nothing/blobs/{blob}")).await;
    assert_eq!(status, 404, "{code} {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preheated_image_pulls_with_the_upstream_stopped() {
    use kraken_client::preheat::{PreheatConfig, preheat};
    if !have("skopeo") || !have("umoci") || !have("docker-registry") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::start(&work.path().join("upstream"), None);
    let source = push_upstream(&work.path().join("image"), &upstream, "v1", SMALL).await;
    let (c, agents) = mirror_cluster(&RegistryServiceConfig::new(upstream.url()), 2).await;

    let image = "library/app:v1".parse().unwrap();
    let mut events = 0;
    let summary = preheat(c.client(), &image, &PreheatConfig::default(), |_| {
        events += 1
    })
    .await
    .unwrap();
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    // Manifest, config and two layers, each read from the upstream once.
    assert_eq!(
        (summary.blobs_fetched, summary.blobs_held),
        (4, 0),
        "{summary:?}"
    );
    assert!(events >= 8, "{events} progress events");
    let blobs: Vec<String> = blobs_of(&source)
        .into_iter()
        .filter(|b| upstream.gets_of(b) > 0)
        .collect();
    assert_eq!(blobs.len(), 4, "{blobs:?}");
    for blob in &blobs {
        assert_eq!(upstream.gets_of(blob), 1, "GETs of {blob} upstream");
    }
    // Preheating again finds everything held.
    let again = preheat(c.client(), &image, &PreheatConfig::default(), |_| {})
        .await
        .unwrap();
    assert_eq!((again.blobs_fetched, again.blobs_held), (0, 4), "{again:?}");

    upstream.stop();
    for (n, &a) in agents.iter().enumerate() {
        let out = work.path().join(format!("out-{n}"));
        skopeo_pull(
            format!(
                "docker://{}/library/app:v1",
                c.node(a).registry_addr().unwrap()
            ),
            &out,
        )
        .await;
        let pulled = blobs_of(&out);
        assert_eq!(pulled, blobs.iter().cloned().collect(), "agent {n}");
    }
}

/// Adds to the layout at `img` (which holds `v1`) a second platform's manifest (`v1` with
/// another config) and an OCI index over both, tagged `multi`.
async fn add_index(img: &Path) {
    run(
        "umoci",
        s(&[
            "config",
            "--image",
            &format!("{}:v1", img.display()),
            "--tag",
            "arm",
            "--config.label",
            "platform=arm64",
        ]),
    )
    .await;
    let layout_index = img.join("index.json");
    let mut layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&layout_index).unwrap()).unwrap();
    let tagged = |name: &str| {
        layout["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
            .unwrap()
            .clone()
    };
    let child = |m: serde_json::Value, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m["digest"],
            "size": m["size"],
            "platform": { "architecture": arch, "os": "linux" },
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [child(tagged("v1"), "amd64"), child(tagged("arm"), "arm64")],
    }))
    .unwrap();
    let digest = Digest::sha256_of(&index);
    std::fs::write(img.join("blobs/sha256").join(digest.hex()), &index).unwrap();
    layout["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest.to_string(),
            "size": index.len(),
            "annotations": { "org.opencontainers.image.ref.name": "multi" },
        }));
    std::fs::write(&layout_index, serde_json::to_vec(&layout).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_arch_index_and_its_children_travel_the_mirror() {
    if !have("skopeo") || !have("umoci") || !have("docker-registry") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(&work.path().join("upstream"), None);
    let dir = work.path().join("image");
    std::fs::create_dir_all(&dir).unwrap();
    build_image(&dir).await;
    let img = dir.join("img");
    add_index(&img).await;
    run(
        "skopeo",
        vec![
            "copy".into(),
            "--all".into(),
            "--dest-tls-verify=false".into(),
            format!("oci:{}:multi", img.display()),
            format!("docker://{}/library/multi:v1", upstream.addr),
        ],
    )
    .await;
    let (c, agents) = mirror_cluster(&RegistryServiceConfig::new(upstream.url()), 2).await;

    // One platform through agent 1, everything through agent 2.
    let arm = work.path().join("arm");
    run(
        "skopeo",
        vec![
            "--override-arch".into(),
            "arm64".into(),
            "copy".into(),
            "--src-tls-verify=false".into(),
            format!(
                "docker://{}/library/multi:v1",
                c.node(agents[0]).registry_addr().unwrap()
            ),
            format!("oci:{}:v1", arm.display()),
        ],
    )
    .await;
    let all = work.path().join("all");
    run(
        "skopeo",
        vec![
            "copy".into(),
            "--all".into(),
            "--src-tls-verify=false".into(),
            format!(
                "docker://{}/library/multi:v1",
                c.node(agents[1]).registry_addr().unwrap()
            ),
            format!("oci:{}:v1", all.display()),
        ],
    )
    .await;
    let source = blobs_of(&img);
    let pulled = blobs_of(&all);
    // The index, two manifests, two configs, two layers.
    assert!(pulled.is_subset(&source) && pulled.len() == 7, "{pulled:?}");
    for blob in &pulled {
        assert_eq!(
            std::fs::read(all.join("blobs/sha256").join(blob)).unwrap(),
            std::fs::read(img.join("blobs/sha256").join(blob)).unwrap(),
            "{blob} differs"
        );
        assert_eq!(upstream.gets_of(blob), 1, "GETs of {blob} upstream");
    }
    let arm_blobs = blobs_of(&arm);
    assert!(
        arm_blobs.is_subset(&pulled) && arm_blobs.len() == 4,
        "{arm_blobs:?}"
    );
}
