//! Repositories that mirror an upstream registry, through a real cluster: writes into them
//! are refused (`DENIED`, naming the upstream) at the origins, the build-index and the
//! proxy's HTTP edge (reached with containerd's `?ns=`); their tags come from the upstream
//! (here: unreachable), the tag table answering while a tag is fresh.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use kraken_client::ingest::{IngestCall, IngestRequest};
use kraken_membership::Role;
use kraken_node::config::NodeRole;
use kraken_node::proto::{ErrorKind, RemoteError, Request, Response};
use kraken_storage::Digest;
use kraken_storage::backend::{BackendConfig, RegistryServiceConfig, RouteConfig, ServiceConfig};
use support::TestCluster;

const REPO: &str = "docker.io/library/x";

/// A loopback address nothing listens on: the upstream is down.
fn dead_upstream() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = l.local_addr().unwrap();
    format!("http://{addr}")
}

/// `docker.io/…` mirrors `upstream`, ahead of the test's filesystem route.
fn mirror_route(upstream: &str) -> RouteConfig {
    let mut registry = RegistryServiceConfig::new(upstream);
    registry.strip_prefix = Some("docker.io/".into());
    RouteConfig {
        namespace: "docker\\.io/.+".into(),
        name: Some("hub".into()),
        backend: BackendConfig::new(ServiceConfig::Registry(registry)),
    }
}

async fn mirror_cluster(upstream: &str) -> (TestCluster, usize, usize) {
    let mut c = TestCluster::new();
    let mut o = c.config("origin-1", NodeRole::Origin);
    o.backends.insert(0, mirror_route(upstream));
    c.start(o).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    let mut b = c.config("bi-1", NodeRole::BuildIndex);
    b.backends.insert(0, mirror_route(upstream));
    let bi = c.start(b).await;
    let mut proxy = c.config("proxy-1", NodeRole::Proxy);
    proxy.registry.uploads_dir = Some(c.dir.path().join("sessions"));
    let proxy = c.start(proxy).await;
    c.converge(1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.client().view().ring(Role::BuildIndex).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no build-index in view"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (c, bi, proxy)
}

async fn ask(c: &TestCluster, node: usize, request: &Request) -> Result<Response, RemoteError> {
    match c.client().call(c.node(node).quic_addr(), request).await {
        Ok(r) => Ok(r),
        Err(e) => Err(e.remote().cloned().unwrap_or_else(|| panic!("{e}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_into_a_mirror_are_denied_everywhere_and_tags_come_from_the_upstream() {
    let upstream = dead_upstream();
    let (c, bi, proxy) = mirror_cluster(&upstream).await;
    let denied = format!("repository {REPO} mirrors {upstream} and is read-only");
    let digest = Digest::sha256_of(b"pushed into a mirror");

    // The build-index: no tag put or delete, replicas included.
    for replica in [false, true] {
        let put = Request::PutTag {
            repo: REPO.into(),
            tag: "v1".into(),
            digest,
            replica,
            set_ms: 0,
        };
        let e = ask(&c, bi, &put).await.unwrap_err();
        assert_eq!(e, RemoteError::new(ErrorKind::Denied, denied.clone()));
        let delete = Request::DeleteTag {
            repo: REPO.into(),
            tag: "v1".into(),
            replica,
        };
        assert_eq!(
            ask(&c, bi, &delete).await.unwrap_err().kind,
            ErrorKind::Denied
        );
    }

    // The origin: a new blob is refused before its body.
    let origin = c.node(c.origins()[0]).quic_addr();
    let ingest = IngestRequest {
        namespace: REPO,
        digest: &digest,
        length: 20,
        replica: false,
        persisted: false,
    };
    let e = IngestCall::open(c.client(), origin, ingest)
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.remote().unwrap(),
        &RemoteError::new(ErrorKind::Denied, denied.clone())
    );
    let o = c.node(c.origins()[0]).roles().origin.as_ref().unwrap();
    assert!(o.queue().list().unwrap().is_empty(), "nothing queued");
    // Another namespace is a plain blob store, as before.
    let plain = IngestRequest {
        namespace: "library/x",
        ..ingest
    };
    assert!(IngestCall::open(c.client(), origin, plain).await.is_ok());

    // The proxy, asked as containerd asks a mirror: 403 DENIED with the reason.
    let data = b"pushed into a mirror".to_vec();
    let registry = c.node(proxy).registry_addr().unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "http://{registry}/v2/x/blobs/uploads/?ns=docker.io&digest={digest}"
        ))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eq!(body["errors"][0]["message"], denied.as_str());
    // Deletes too, of a manifest or a blob.
    for path in ["manifests", "blobs"] {
        let r = reqwest::Client::new()
            .delete(format!(
                "http://{registry}/v2/x/{path}/{digest}?ns=docker.io"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN, "{path}");
    }

    // Tags: the upstream is down and nothing is known: unavailable, not "unknown".
    let get = Request::GetTag {
        repo: REPO.into(),
        tag: "latest".into(),
    };
    assert_eq!(
        ask(&c, bi, &get).await.unwrap_err().kind,
        ErrorKind::Unavailable
    );
    let r = reqwest::Client::new()
        .get(format!(
            "http://{registry}/v2/library/x/manifests/latest?ns=docker.io"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);

    // A tag the table holds, set just now, is fresh: answered without the upstream.
    let b = c.node(bi).roles().build_index.as_ref().unwrap();
    b.store().put(REPO, "latest", &digest).unwrap();
    match ask(&c, bi, &get).await.unwrap() {
        Response::Tag { digest: d, .. } => assert_eq!(d, digest),
        other => panic!("{other:?}"),
    }
}
