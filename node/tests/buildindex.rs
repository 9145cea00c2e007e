//! The build-index end to end: tags checked against the origins (Docker and OCI manifests,
//! indexes, subjects), listed, written through to the backend and recovered from it, and
//! replicated to a remote cluster that may be down for a while.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kraken_membership::Role;
use kraken_node::config::NodeRole;
use kraken_node::proto::{ErrorKind, Request, Response};
use kraken_storage::Digest;
use support::{TestCluster, fs_backend};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Uploads `bytes` as a blob; returns its digest.
async fn blob(c: &TestCluster, name: &str, bytes: &[u8]) -> Digest {
    let path = c.dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let digest = Digest::sha256_of(bytes);
    c.upload(&path, &digest, bytes.len() as u64).await;
    digest
}

fn image_manifest(config: &Digest, layers: &[Digest], subject: Option<&Digest>) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l}","size":1}}"#))
        .collect();
    let subject = subject.map_or(String::new(), |s| {
        format!(r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{s}","size":1}}"#)
    });
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{}]{subject}}}"#,
        layers.join(",")
    )
    .into_bytes()
}

fn index(media_type: &str, children: &[Digest]) -> Vec<u8> {
    let m: Vec<String> = children
        .iter()
        .map(|d| format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{media_type}","manifests":[{}]}}"#,
        m.join(",")
    )
    .into_bytes()
}

async fn put_tag(
    c: &TestCluster,
    repo: &str,
    tag: &str,
    digest: &Digest,
) -> Result<bool, kraken_node::proto::RemoteError> {
    put_tag_through(c.client(), repo, tag, digest).await
}

/// Sets a tag on its owners as `client`'s view of the ring names them.
async fn put_tag_through(
    client: &kraken_node::client::Cluster,
    repo: &str,
    tag: &str,
    digest: &Digest,
) -> Result<bool, kraken_node::proto::RemoteError> {
    let owners = kraken_node::buildindex::owners_of_tag(client, repo, tag, 0);
    let request = Request::PutTag {
        repo: repo.into(),
        tag: tag.into(),
        digest: *digest,
        replica: false,
        set_ms: 0,
    };
    match client
        .call_first(&owners, Role::BuildIndex, &request, Duration::from_secs(60))
        .await
    {
        Ok(Response::TagPut { changed }) => Ok(changed),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.remote().cloned().unwrap_or_else(|| panic!("{e}"))),
    }
}

async fn get_tag_at(c: &TestCluster, node: usize, repo: &str, tag: &str) -> Option<Digest> {
    let request = Request::GetTag {
        repo: repo.into(),
        tag: tag.into(),
    };
    match c.client().call(c.node(node).quic_addr(), &request).await {
        Ok(Response::Tag { digest, .. }) => Some(digest),
        Ok(other) => panic!("{other:?}"),
        Err(e) if e.remote().is_some_and(|r| r.kind == ErrorKind::NotFound) => None,
        Err(e) => panic!("{e}"),
    }
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn list(c: &TestCluster, node: usize, request: Request) -> (Vec<String>, Option<String>) {
    match c
        .client()
        .call(c.node(node).quic_addr(), &request)
        .await
        .unwrap()
    {
        Response::Names { names, next } => (names, next),
        other => panic!("{other:?}"),
    }
}

/// An origin, a tracker and two build-index nodes (`bi-1`, `bi-2`: their indexes), both
/// on the ring.
async fn two_build_indexes() -> (TestCluster, usize, usize) {
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    let b1 = c.add("bi-1", NodeRole::BuildIndex).await;
    let b2 = c.add("bi-2", NodeRole::BuildIndex).await;
    c.converge(1).await;
    eventually("two build-index nodes", Duration::from_secs(20), || async {
        c.client().view().ring(Role::BuildIndex).len() == 2
    })
    .await;
    (c, b1, b2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_checked_replicated_listed_and_recovered_from_the_backend() {
    let (mut c, b1, b2) = two_build_indexes().await;

    let config = blob(&c, "config", br#"{"architecture":"amd64"}"#).await;
    let l1 = blob(&c, "l1", &[1u8; 5000]).await;
    let l2 = blob(&c, "l2", &[2u8; 7000]).await;
    let manifest = blob(&c, "m", &image_manifest(&config, &[l1, l2], None)).await;

    // A manifest whose layers all exist: stored on both owners.
    assert!(put_tag(&c, "library/app", "v1", &manifest).await.unwrap());
    assert!(!put_tag(&c, "library/app", "v1", &manifest).await.unwrap());
    for n in [b1, b2] {
        eventually(
            "the tag on both owners",
            Duration::from_secs(10),
            || async { get_tag_at(&c, n, "library/app", "v1").await == Some(manifest) },
        )
        .await;
    }

    // A missing layer is named in the error, and nothing is stored.
    let ghost = Digest::sha256_of(b"a layer nobody uploaded");
    let broken = blob(&c, "broken", &image_manifest(&config, &[l1, ghost], None)).await;
    let e = put_tag(&c, "library/app", "broken", &broken)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains(&ghost.to_string()), "{}", e.message);
    assert_eq!(get_tag_at(&c, b1, "library/app", "broken").await, None);

    // Indexes (OCI and Docker manifest lists) are checked recursively.
    let signature = blob(&c, "sig", &image_manifest(&config, &[l2], Some(&manifest))).await;
    let idx = blob(&c, "idx", &index(OCI_INDEX, &[manifest, signature])).await;
    assert!(put_tag(&c, "library/app", "multi", &idx).await.unwrap());
    let list_bad = blob(&c, "list-bad", &index(DOCKER_LIST, &[manifest, broken])).await;
    let e = put_tag(&c, "library/app", "list", &list_bad)
        .await
        .unwrap_err();
    assert!(e.message.contains(&ghost.to_string()), "{}", e.message);
    // A subject is no dependency: a referrer may be tagged before its subject exists
    // (the spec's "Pushing Manifests with Subject").
    let orphan_subject = blob(&c, "orphan", &image_manifest(&config, &[l1], Some(&ghost))).await;
    assert!(
        put_tag(&c, "other/repo", "sig", &orphan_subject)
            .await
            .unwrap()
    );

    // Bad names are refused with the grammar's message.
    let e = put_tag(&c, "Library/App", "v1", &manifest)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);

    // Listing: sorted, paginated.
    for t in ["b", "a", "c"] {
        put_tag(&c, "library/app", t, &manifest).await.unwrap();
    }
    put_tag(&c, "other/repo", "x", &l1).await.unwrap();
    // A put lands on one owner and reaches the other by (asynchronous) replication: wait
    // until b1 has every tag before reading its listings.
    eventually("b1 to hold every tag", Duration::from_secs(20), || async {
        let all = Request::ListTags {
            repo: "library/app".into(),
            after: None,
            limit: 100,
        };
        let repos = Request::ListRepos {
            after: None,
            limit: 10,
        };
        list(&c, b1, all).await.0.len() == 5 && list(&c, b1, repos).await.0.len() == 2
    })
    .await;
    let page = |after: Option<&str>| Request::ListTags {
        repo: "library/app".into(),
        after: after.map(Into::into),
        limit: 2,
    };
    let (p1, next) = list(&c, b1, page(None)).await;
    assert_eq!(p1, ["a", "b"]);
    let (p2, next) = list(&c, b1, page(next.as_deref())).await;
    assert_eq!(p2, ["c", "multi"]);
    let (p3, next) = list(&c, b1, page(next.as_deref())).await;
    assert_eq!((p3, next), (vec!["v1".to_string()], None));
    let (repos, _) = list(
        &c,
        b1,
        Request::ListRepos {
            after: None,
            limit: 10,
        },
    )
    .await;
    assert_eq!(repos, ["library/app", "other/repo"]);

    // History of a moved tag.
    put_tag(&c, "library/app", "v1", &idx).await.unwrap();
    match c
        .client()
        .call(
            c.node(b1).quic_addr(),
            &Request::TagHistory {
                repo: "library/app".into(),
                tag: "v1".into(),
            },
        )
        .await
        .unwrap()
    {
        Response::History(h) => assert_eq!(
            h.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
            [manifest, idx]
        ),
        other => panic!("{other:?}"),
    }

    // Deleting a tag removes it on both owners and from the backend; setting it again
    // brings it back.
    put_tag(&c, "library/app", "gone", &manifest).await.unwrap();
    let owners = kraken_node::buildindex::owners_of_tag(c.client(), "library/app", "gone", 0);
    let delete = Request::DeleteTag {
        repo: "library/app".into(),
        tag: "gone".into(),
        replica: false,
    };
    match c
        .client()
        .call_first(&owners, Role::BuildIndex, &delete, Duration::from_secs(10))
        .await
        .unwrap()
    {
        Response::TagDeleted => {}
        other => panic!("{other:?}"),
    }
    for n in [b1, b2] {
        eventually(
            "the deletion on both owners",
            Duration::from_secs(10),
            || async { get_tag_at(&c, n, "library/app", "gone").await.is_none() },
        )
        .await;
    }
    let err = c
        .client()
        .call_first(&owners, Role::BuildIndex, &delete, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.remote().unwrap().kind, ErrorKind::NotFound);

    // Written through to the backend in the registry's layout.
    let backend = kraken_storage::backend::Backend::new(
        "check",
        &fs_backend(&c.backend_root),
        kraken_storage::backend::default_http_client().unwrap(),
    )
    .unwrap();
    eventually(
        "the moved tag in the backend",
        Duration::from_secs(10),
        || async { backend.get_tag("library/app", "v1").await.unwrap() == Some(idx) },
    )
    .await;
    eventually(
        "every tag in the backend",
        Duration::from_secs(10),
        || async { backend.list_tags().await.unwrap().len() == 7 },
    )
    .await;

    // Both build-index nodes die; a new one with an empty disk recovers every tag.
    c.kill(b1);
    c.kill(b2);
    let b3 = c.add("bi-3", NodeRole::BuildIndex).await;
    eventually(
        "the new node alone on the ring",
        Duration::from_secs(30),
        || async {
            let ring = c.client().view().ring(Role::BuildIndex);
            ring.len() == 1 && ring.members()[0].id.as_str() == "bi-3"
        },
    )
    .await;
    assert_eq!(get_tag_at(&c, b3, "library/app", "v1").await, Some(idx));
    eventually("the imported catalog", Duration::from_secs(10), || async {
        list(
            &c,
            b3,
            Request::ListRepos {
                after: None,
                limit: 10,
            },
        )
        .await
        .0
        .len()
            == 2
    })
    .await;
}

/// A free UDP port on loopback (bound and released).
fn free_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// Origin, tracker and build-index of a cluster; the origin listens on `origin_addr` if
/// given, and the build-index replicates to `remote` if given.
async fn small_cluster(
    c: &mut TestCluster,
    id: &str,
    origin_addr: Option<SocketAddr>,
    remote: Option<SocketAddr>,
) {
    let mut o = c.config(&format!("{id}-origin"), NodeRole::Origin);
    o.node.cluster_id = id.into();
    if let Some(a) = origin_addr {
        o.quic.listen = a;
    }
    c.start(o).await;
    let mut t = c.config(&format!("{id}-tracker"), NodeRole::Tracker);
    t.node.cluster_id = id.into();
    c.start(t).await;
    let mut b = c.config(&format!("{id}-bi"), NodeRole::BuildIndex);
    b.node.cluster_id = id.into();
    if let Some(r) = remote {
        b.build_index.remotes = vec![kraken_node::buildindex::RemoteRule {
            name: "dc2".into(),
            tags: "library/.*:.*".into(),
            seed: r.to_string(),
        }];
    }
    c.start(b).await;
    c.converge(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_reaches_a_remote_cluster_with_its_blobs_even_after_an_outage() {
    let remote_addr = free_port();
    let mut a = TestCluster::new();
    small_cluster(&mut a, "dc1", None, Some(remote_addr)).await;
    let config = blob(&a, "config", b"{}").await;
    let layer = blob(&a, "layer", &[7u8; 300_000]).await;
    let manifest = blob(&a, "m", &image_manifest(&config, &[layer], None)).await;
    let local_only = blob(&a, "x", b"not replicated").await;

    // The remote is down: the put still succeeds, the replication waits and retries.
    put_tag(&a, "library/app", "v1", &manifest).await.unwrap();
    put_tag(&a, "private/app", "v1", &local_only).await.unwrap();
    let bi = a.nodes.len() - 1;
    eventually(
        "failed attempts at the remote",
        Duration::from_secs(20),
        || async {
            match a
                .client()
                .call(a.node(bi).quic_addr(), &Request::ReplicationStatus)
                .await
                .unwrap()
            {
                Response::Replication(d) => d
                    .iter()
                    .any(|d| d.destination == "remote:dc2" && d.attempts >= 1 && d.pending == 1),
                _ => false,
            }
        },
    )
    .await;

    // The remote comes up at the address the rule names: it catches up.
    let mut b = TestCluster::sharing_ca(&a);
    small_cluster(&mut b, "dc2", Some(remote_addr), None).await;
    let b_bi = b.nodes.len() - 1;
    eventually("the tag in the remote", Duration::from_secs(30), || async {
        get_tag_at(&b, b_bi, "library/app", "v1").await == Some(manifest)
    })
    .await;
    let b_origin = b.origins()[0];
    let cas = b
        .node(b_origin)
        .roles()
        .origin
        .as_ref()
        .unwrap()
        .cas()
        .clone();
    for d in [manifest, config, layer] {
        assert!(cas.contains(&d).unwrap(), "{d} missing in the remote");
    }
    // Only matching tags travel.
    assert_eq!(get_tag_at(&b, b_bi, "private/app", "v1").await, None);
    assert!(!cas.contains(&local_only).unwrap());
    eventually(
        "an empty replication queue",
        Duration::from_secs(10),
        || async {
            matches!(
                a.client().call(a.node(bi).quic_addr(), &Request::ReplicationStatus).await.unwrap(),
                Response::Replication(d) if d.iter().all(|d| d.destination != "remote:dc2")
            )
        },
    )
    .await;
}

/// A `kraken build-index` child process of cluster `dc1`.
struct BuildIndexProcess(std::process::Child);

impl Drop for BuildIndexProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_build_index(config: &std::path::Path) -> BuildIndexProcess {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kraken"))
        .args(["build-index", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in std::io::BufReader::new(stdout).lines() {
        if line.unwrap() == "ready" {
            break;
        }
    }
    BuildIndexProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_index_killed_mid_queue_finishes_the_replication_after_restart() {
    let remote_addr = free_port();
    let mut a = TestCluster::new();
    let mut o = a.config("dc1-origin", NodeRole::Origin);
    o.node.cluster_id = "dc1".into();
    a.start(o).await;
    let mut t = a.config("dc1-tracker", NodeRole::Tracker);
    t.node.cluster_id = "dc1".into();
    a.start(t).await;
    a.converge(1).await;
    let gossip_seed = a.node(0).gossip_addr().unwrap();

    a.ca.write_node_cert("dc1-bi").unwrap();
    let ca = a.ca.dir().display().to_string();
    let config = a.dir.path().join("bi.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[node]
name = "dc1-bi"
data_dir = "{data}"
cluster_id = "dc1"
[quic]
listen = "127.0.0.1:0"
[gossip]
listen = "127.0.0.1:0"
seeds = ["{gossip_seed}"]
interval_ms = 100
[http]
enabled = false
[tls]
ca = "{ca}/ca.crt"
cert = "{ca}/dc1-bi.crt"
key = "{ca}/dc1-bi.key"
[writeback_queue]
base_backoff_ms = 100
max_backoff_ms = 300
[build_index]
replication_poll_ms = 100
[[build_index.remotes]]
name = "dc2"
tags = ".*"
seed = "{remote_addr}"
[[backends]]
namespace = ".*"
backend = {{ fs = {{ root = "{root}" }} }}
"#,
            data = a.dir.path().join("bi-data").display(),
            root = a.backend_root.display(),
        ),
    )
    .unwrap();
    let mut bi = spawn_build_index(&config);
    eventually(
        "the build-index process on the ring",
        Duration::from_secs(20),
        || async { a.client().view().ring(Role::BuildIndex).len() == 1 },
    )
    .await;
    let layer = blob(&a, "layer", &[9u8; 100_000]).await;
    let manifest = blob(&a, "m", &image_manifest(&layer, &[layer], None)).await;
    put_tag(&a, "team/app", "v1", &manifest).await.unwrap();

    // SIGKILL with the replication still queued (the remote is not up yet).
    bi.0.kill().unwrap();
    bi.0.wait().unwrap();
    drop(bi);
    let mut b = TestCluster::sharing_ca(&a);
    small_cluster(&mut b, "dc2", Some(remote_addr), None).await;
    let _bi = spawn_build_index(&config);
    let b_bi = b.nodes.len() - 1;
    eventually(
        "the tag in the remote after the restart",
        Duration::from_secs(40),
        || async { get_tag_at(&b, b_bi, "team/app", "v1").await == Some(manifest) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_owner_finishes_the_replication_when_the_source_node_is_lost() {
    let remote_addr = free_port();
    let mut a = TestCluster::new();
    small_cluster(&mut a, "dc1", None, Some(remote_addr)).await;
    let mut second = a.config("dc1-bi-2", NodeRole::BuildIndex);
    second.node.cluster_id = "dc1".into();
    second.build_index.remotes = vec![kraken_node::buildindex::RemoteRule {
        name: "dc2".into(),
        tags: "library/.*:.*".into(),
        seed: remote_addr.to_string(),
    }];
    a.start(second).await;
    eventually(
        "two build-index owners",
        Duration::from_secs(20),
        || async { a.client().view().ring(Role::BuildIndex).len() == 2 },
    )
    .await;
    let layer = blob(&a, "layer", &[3u8; 50_000]).await;
    let manifest = blob(&a, "m", &image_manifest(&layer, &[layer], None)).await;
    put_tag(&a, "library/app", "v2", &manifest).await.unwrap();
    // The node that took the put (the tag's first owner) dies before the remote is up.
    let first = kraken_node::buildindex::owners_of_tag(a.client(), "library/app", "v2", 1)[0]
        .id
        .clone();
    let victim = (0..a.nodes.len())
        .find(|&i| {
            a.nodes[i]
                .as_ref()
                .is_some_and(|n| n.name() == first.as_str())
        })
        .unwrap();
    // Wait until the other owner has the tag (and so its own queued replication).
    let other = (0..a.nodes.len())
        .find(|&i| {
            a.nodes[i]
                .as_ref()
                .is_some_and(|n| n.roles().build_index.is_some() && n.name() != first.as_str())
        })
        .unwrap();
    eventually(
        "the tag on the second owner",
        Duration::from_secs(10),
        || async { get_tag_at(&a, other, "library/app", "v2").await == Some(manifest) },
    )
    .await;
    a.kill(victim);
    let mut b = TestCluster::sharing_ca(&a);
    small_cluster(&mut b, "dc2", Some(remote_addr), None).await;
    let b_bi = b.nodes.len() - 1;
    eventually("the tag in the remote", Duration::from_secs(40), || async {
        get_tag_at(&b, b_bi, "library/app", "v2").await == Some(manifest)
    })
    .await;
}

/// Starts build-index `name` again after a kill, on a copy of `data` as the kill left it
/// (an in-process node's tasks may keep its databases open); its index and data dir.
async fn restart_build_index(
    c: &mut TestCluster,
    name: &str,
    data: &std::path::Path,
    round: u32,
) -> (usize, std::path::PathBuf) {
    let mut config = c.config(name, NodeRole::BuildIndex);
    let copy = c.dir.path().join(format!("{name}-restart-{round}"));
    support::copy_dir(data, &copy);
    config.node.data_dir = copy.clone();
    (c.start(config).await, copy)
}

/// The build-index ring as node `n` sees it.
fn ring_names(c: &TestCluster, n: usize) -> Vec<String> {
    c.node(n)
        .cluster()
        .view()
        .ring(Role::BuildIndex)
        .members()
        .iter()
        .map(|m| m.id.as_str().to_string())
        .collect()
}

/// A node that comes back with a replication queued from before it went down (the other
/// owner was down when the tag was set) must not set the tag back on the other owner,
/// which took a later setting meanwhile: the later setting wins, and the node that was
/// away adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_queued_before_a_crash_never_sets_a_tag_back() {
    let (mut c, b1, b2) = two_build_indexes().await;
    let data1 = c.config("bi-1", NodeRole::BuildIndex).node.data_dir;
    let data2 = c.config("bi-2", NodeRole::BuildIndex).node.data_dir;
    let layer = blob(&c, "layer", &[4u8; 3000]).await;
    let old = blob(&c, "old", &image_manifest(&layer, &[layer], None)).await;
    let new = blob(&c, "new", &image_manifest(&layer, &[layer, layer], None)).await;

    // bi-2 is down (still on the ring) when the tag is set on bi-1: bi-1 queues the
    // replication to bi-2, and dies before it is carried.
    c.kill(b2);
    put_tag(&c, "team/app", "latest", &old).await.unwrap();
    assert_eq!(get_tag_at(&c, b1, "team/app", "latest").await, Some(old));
    c.kill(b1);

    // bi-2 comes back; once bi-1 has left the ring, the tag is set again, on bi-2.
    let (b2, _) = restart_build_index(&mut c, "bi-2", &data2, 1).await;
    // bi-2 must know the cluster (a fresh view holds nobody else, bi-1 included) and have
    // seen bi-1 leave; so must the tracker, which saw bi-1 die. On a loaded machine the
    // failure detectors take a while: the limits are generous.
    eventually(
        "bi-2 knows the cluster",
        Duration::from_secs(60),
        || async { c.node(b2).cluster().view().ring(Role::Origin).len() == 1 },
    )
    .await;
    eventually(
        "bi-1 off the tracker's ring",
        Duration::from_secs(60),
        || async {
            let view = c.client().view();
            let ring = view.ring(Role::BuildIndex);
            ring.len() == 1 && ring.members()[0].id.as_str() == "bi-2"
        },
    )
    .await;
    eventually("bi-1 off bi-2's ring", Duration::from_secs(60), || async {
        ring_names(&c, b2) == ["bi-2"]
    })
    .await;
    // Set through bi-2's own view, the one that decides whom bi-2 replicates to.
    put_tag_through(c.node(b2).cluster(), "team/app", "latest", &new)
        .await
        .unwrap();
    assert_eq!(get_tag_at(&c, b2, "team/app", "latest").await, Some(new));

    // bi-1 comes back with its stale replication queued: bi-2 keeps the later setting,
    // and bi-1 adopts it.
    let (b1, _) = restart_build_index(&mut c, "bi-1", &data1, 1).await;
    eventually(
        "both owners at the later setting",
        Duration::from_secs(30),
        || async {
            get_tag_at(&c, b1, "team/app", "latest").await == Some(new)
                && get_tag_at(&c, b2, "team/app", "latest").await == Some(new)
        },
    )
    .await;
    // And they stay there once bi-1's queue has drained.
    eventually("bi-1's queue drained", Duration::from_secs(30), || async {
        let bi = c.node(b1).roles().build_index.as_ref().unwrap();
        bi.queue().list().unwrap().is_empty()
    })
    .await;
    for n in [b1, b2] {
        assert_eq!(get_tag_at(&c, n, "team/app", "latest").await, Some(new));
    }
}
