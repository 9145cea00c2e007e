//! The push path end to end: real origins, a tracker and a proxy in one process over real
//! QUIC, pushes sent to the proxy's registry API. A monolithic push is streamed through the
//! proxy into the owning origin's store (the streaming ingest); chunked pushes are staged
//! on the proxy and passed on to an origin as they arrive, and the closing `PUT` commits
//! them there. What a 201 promises (the blob verified
//! and fsynced on an owning origin, its write-back queued) and what a failed push leaves
//! behind (nothing: no blob, no temp file, no queue item) are checked on the origins.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kraken_client::ingest::{IngestCall, IngestRequest, Opened, ingest_file};
use kraken_client::stage::{StageCall, Staged, commit};
use kraken_membership::Role;
use kraken_node::config::NodeRole;
use kraken_node::proto::{ErrorKind, Request, Response};
use kraken_storage::Digest;
use support::{TestCluster, blob_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEN: u64 = 8 << 20;

/// Two origins (each blob is owned by both), a tracker and a proxy whose upload sessions
/// live in `<dir>/sessions`. Returns the cluster and the proxy's index.
async fn push_cluster() -> (TestCluster, usize) {
    let mut c = TestCluster::new();
    for name in ["origin-1", "origin-2"] {
        c.add(name, NodeRole::Origin).await;
    }
    c.add("tracker-1", NodeRole::Tracker).await;
    let mut proxy = c.config("proxy-1", NodeRole::Proxy);
    proxy.registry.uploads_dir = Some(c.dir.path().join("sessions"));
    let proxy = c.start(proxy).await;
    c.converge(2).await;
    (c, proxy)
}

fn url(c: &TestCluster, proxy: usize, path: &str) -> String {
    format!("http://{}{path}", c.node(proxy).registry_addr().unwrap())
}

fn origin(c: &TestCluster, i: usize) -> &kraken_node::origin::Origin {
    c.node(i).roles().origin.as_ref().unwrap()
}

/// The CAS's ingest temp directory (`<root>/tmp`; blobs are `<root>/blobs/<2 hex>/<hex>`).
fn cas_tmp(o: &kraken_node::origin::Origin, any: &Digest) -> PathBuf {
    let blob = o.cas().blob_path(any);
    blob.ancestors().nth(3).unwrap().join("tmp")
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

/// The upload sessions on the proxy (its staging directory aside).
fn sessions(c: &TestCluster) -> usize {
    std::fs::read_dir(c.dir.path().join("sessions")).map_or(0, |d| {
        d.filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count()
    })
}

/// Asserts that no origin holds, stages or queues anything for `digests` once in-flight
/// work has settled (a failed ingest's orphan queue item is dropped by the executor).
async fn nothing_left_behind(c: &TestCluster, digests: &[Digest]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut left = Vec::new();
        for i in c.origins() {
            let o = origin(c, i);
            for d in digests {
                if o.cas().contains(d).unwrap() {
                    left.push(format!("{d} stored on origin {i}"));
                }
            }
            let queued = o.queue().list().unwrap();
            if let Some(item) = queued.iter().find(|q| digests.contains(&q.digest)) {
                left.push(format!("{} queued on origin {i}", item.digest));
            }
            let tmp = entries(&cas_tmp(o, &digests[0]));
            if tmp > 0 {
                left.push(format!("{tmp} temp files on origin {i}"));
            }
        }
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the blob is on every origin, each copy hashing to its digest.
async fn on_every_origin_intact(c: &TestCluster, digest: &Digest) {
    c.wait_replicated(digest, 2).await;
    for i in c.origins() {
        let bytes = std::fs::read(origin(c, i).cas().blob_path(digest)).unwrap();
        assert_eq!(Digest::sha256_of(&bytes), *digest, "origin {i}");
        assert_eq!(bytes.len() as u64, LEN);
    }
}

/// What a 201 promises, checked right after it: an owner holds the blob complete and
/// pinned or persisted, and has it queued for write-back unless it is persisted.
fn acknowledged_durably(c: &TestCluster, digest: &Digest) {
    let durable = c.origins().into_iter().any(|i| {
        let o = origin(c, i);
        let Some(info) = o.cas().info(digest).unwrap() else {
            return false;
        };
        let queued = o
            .queue()
            .list()
            .unwrap()
            .iter()
            .any(|q| q.digest == *digest);
        info.state == kraken_storage::cas::BlobState::Complete
            && (info.persisted || (info.pinned && queued))
    });
    assert!(durable, "201 before an owner held {digest} durably");
}

/// A monolithic `POST ?digest=` of `body` to the proxy.
async fn post_whole(
    c: &TestCluster,
    proxy: usize,
    digest: &Digest,
    body: Vec<u8>,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(url(
            c,
            proxy,
            &format!("/v2/library/app/blobs/uploads/?digest={digest}"),
        ))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Opens an upload session on the proxy; returns its location.
async fn start_session(c: &TestCluster, proxy: usize) -> String {
    let r = reqwest::Client::new()
        .post(url(c, proxy, "/v2/library/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.headers()["location"].to_str().unwrap().to_string()
}

async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monolithic_push_streams_through_the_proxy_and_lands_intact_on_every_owner() {
    let (c, proxy) = push_cluster().await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 1);
    let r = post_whole(&c, proxy, &digest, std::fs::read(&path).unwrap()).await;
    assert_eq!(r.status(), 201);
    acknowledged_durably(&c, &digest);
    // Streamed: no session was opened on the proxy.
    assert_eq!(sessions(&c), 0);
    // The other owner received its copy by the streaming ingest, with its own write-back.
    on_every_origin_intact(&c, &digest).await;

    // The same blob again through a session's PUT: the owner answers before the body.
    let http = reqwest::Client::new();
    let loc = start_session(&c, proxy).await;
    let r = http
        .put(url(&c, proxy, &format!("{loc}?digest={digest}")))
        .body(std::fs::read(&path).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(sessions(&c), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_push_with_the_wrong_digest_stores_and_queues_nothing() {
    let (c, proxy) = push_cluster().await;
    let (path, actual) = blob_file(c.dir.path(), "blob", LEN, 2);
    let claimed = Digest::sha256_of(b"not these bytes");
    let r = post_whole(&c, proxy, &claimed, std::fs::read(&path).unwrap()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    nothing_left_behind(&c, &[claimed, actual]).await;
    assert_eq!(sessions(&c), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_body_leaves_nothing_behind() {
    let (c, proxy) = push_cluster().await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 3);
    let data = std::fs::read(&path).unwrap();
    let addr = c.node(proxy).registry_addr().unwrap();
    // Half closed (the client says it is done, short of its Content-Length), then gone
    // altogether (the connection dropped mid-body).
    for half_close in [true, false] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v2/library/app/blobs/uploads/?digest={digest} HTTP/1.1\r\n\
             host: x\r\ncontent-length: {LEN}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&data[..3 << 20]).await.unwrap();
        // Let the bytes reach the origin's ingest before the client goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if half_close {
            tcp.shutdown().await.unwrap();
            let mut answer = String::new();
            tcp.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
            assert!(answer.contains("BLOB_UPLOAD_INVALID"), "{answer}");
        } else {
            drop(tcp);
        }
        nothing_left_behind(&c, &[digest]).await;
        assert_eq!(sessions(&c), 0);
    }
    // Sent again in full, it lands.
    let r = post_whole(&c, proxy, &digest, data).await;
    assert_eq!(r.status(), 201);
    on_every_origin_intact(&c, &digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_push_is_staged_on_the_proxy_passed_on_and_its_put_lands_it() {
    let (c, proxy) = push_cluster().await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 4);
    let data = std::fs::read(&path).unwrap();
    let http = reqwest::Client::new();
    let mut loc = start_session(&c, proxy).await;
    const CHUNK: usize = 2 << 20;
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        let start = i * CHUNK;
        let r = http
            .patch(url(&c, proxy, &loc))
            .header(
                "content-range",
                format!("{start}-{}", start + chunk.len() - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        loc = r.headers()["location"].to_str().unwrap().to_string();
    }
    // The chunks are on the proxy's disk, nothing in the cluster yet.
    assert_eq!(sessions(&c), 1);
    assert!(
        c.origins()
            .into_iter()
            .all(|i| !origin(&c, i).cas().contains(&digest).unwrap())
    );
    let r = http
        .put(url(&c, proxy, &format!("{loc}?digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    acknowledged_durably(&c, &digest);
    assert_eq!(sessions(&c), 0);
    on_every_origin_intact(&c, &digest).await;
    // The PUT committed what the PATCHes had passed on to an origin: the blob was not
    // sent again.
    assert_eq!(passed_on(&c, proxy).await, 1);

    // Chunks that do not hash to the digest: the origin's check refuses them (the proxy
    // does not hash), the session goes, and nothing is stored or queued. A prefix of a
    // stored blob under that blob's digest is caught by its length alone.
    let claimed = Digest::sha256_of(b"not these bytes");
    for (claim, len) in [(claimed, data.len()), (digest, CHUNK)] {
        let loc = start_session(&c, proxy).await;
        let r = http
            .patch(url(&c, proxy, &loc))
            .body(data[..len].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let r = http
            .put(url(&c, proxy, &format!("{loc}?digest={claim}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(error_code(r).await, "DIGEST_INVALID");
        assert_eq!(sessions(&c), 0);
    }
    nothing_left_behind(&c, &[claimed]).await;
    assert_eq!(passed_on(&c, proxy).await, 1);
}

/// The proxy's count of chunked pushes stored from the bytes passed on as they arrived.
async fn passed_on(c: &TestCluster, proxy: usize) -> u64 {
    let http = c.node(proxy).http_addr().unwrap();
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    support::metric(&text, "kraken_gateway_passed_on_uploads_total")
        .unwrap_or_else(|| panic!("no passed-on count in\n{text}")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_arrive_by_the_streaming_ingest() {
    let (c, _) = push_cluster().await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 5);
    let owners = c.client().owners_of_digest(Role::Origin, &digest, 0);
    let target = c
        .origins()
        .into_iter()
        .find(|&i| c.node(i).quic_addr() == owners[1].quic_addr)
        .unwrap();
    let addr = c.node(target).quic_addr();
    let request = |persisted| IngestRequest {
        namespace: "library/app",
        digest: &digest,
        length: LEN,
        replica: true,
        persisted,
    };

    // A body shorter than declared stores nothing.
    let Opened::Proceed(mut call) = IngestCall::open(c.client(), addr, request(false))
        .await
        .unwrap()
    else {
        panic!("the origin does not hold the blob yet");
    };
    let data = std::fs::read(&path).unwrap();
    assert!(call.send(data[..1 << 20].to_vec().into()).await);
    let err = call.finish().await.unwrap_err();
    assert_eq!(err.remote().unwrap().kind, ErrorKind::BadRequest, "{err}");
    nothing_left_behind(&c, &[digest]).await;

    // A replica whose sender's copy is persisted: stored, marked persisted, not queued.
    let pushed = ingest_file(c.client(), addr, request(true), &path)
        .await
        .unwrap();
    assert_eq!((pushed.sent, pushed.length), (LEN, LEN));
    let o = origin(&c, target);
    let info = o.cas().info(&digest).unwrap().unwrap();
    assert!(info.persisted && !info.pinned);
    assert!(o.queue().list().unwrap().is_empty());
    let bytes = std::fs::read(o.cas().blob_path(&digest)).unwrap();
    assert_eq!(Digest::sha256_of(&bytes), digest);

    // Offered again, it costs one round trip: the origin answers before the body.
    let pushed = ingest_file(c.client(), addr, request(false), &path)
        .await
        .unwrap();
    assert_eq!((pushed.sent, pushed.length), (0, LEN));
}

/// Two origins that each own half the digests (one replica), and a tracker.
async fn one_replica_cluster() -> TestCluster {
    let mut c = TestCluster::new();
    for name in ["origin-1", "origin-2"] {
        let mut config = c.config(name, NodeRole::Origin);
        config.origin.replicas = 1;
        c.start(config).await;
    }
    c.add("tracker-1", NodeRole::Tracker).await;
    c.converge(2).await;
    c
}

/// Stages `data` on the origin at `addr`, in 1 MiB chunks.
async fn stage(c: &TestCluster, addr: std::net::SocketAddr, data: &[u8]) -> Staged {
    let call = StageCall::open(c.client(), addr, "library/app")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = data
        .chunks(1 << 20)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    call.send_all(&mut futures::stream::iter(chunks))
        .await
        .unwrap()
}

fn remote_kind(e: &kraken_client::cluster::CallError) -> ErrorKind {
    e.remote()
        .unwrap_or_else(|| panic!("not a refusal: {e}"))
        .kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_bytes_are_stored_only_under_their_digest_and_on_an_owner() {
    let c = one_replica_cluster().await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 6);
    let data = std::fs::read(&path).unwrap();
    let owners = c.client().owners_of_digest(Role::Origin, &digest, 1);
    let index = |addr| {
        c.origins()
            .into_iter()
            .find(|&i| c.node(i).quic_addr() == addr)
            .unwrap()
    };
    let owner = index(owners[0].quic_addr);
    let other = c.origins().into_iter().find(|&i| i != owner).unwrap();
    let tmp = |i| entries(&cas_tmp(origin(&c, i), &digest));

    // The origin hashed what it holds: it says so, and a wrong digest deletes it.
    let staged = stage(&c, c.node(owner).quic_addr(), &data).await;
    assert_eq!((staged.length, staged.digest), (LEN, digest));
    assert_eq!(tmp(owner), 1);
    let wrong = Digest::sha256_of(b"other bytes");
    let e = commit(c.client(), &staged, "library/app", &wrong)
        .await
        .unwrap_err();
    assert_eq!(remote_kind(&e), ErrorKind::DigestMismatch, "{e}");
    assert_eq!(tmp(owner), 0);
    let e = commit(c.client(), &staged, "library/app", &digest)
        .await
        .unwrap_err();
    assert_eq!(remote_kind(&e), ErrorKind::NotFound, "{e}");

    // An origin that does not own the digest sends it on to the owner, and keeps nothing.
    let staged = stage(&c, c.node(other).quic_addr(), &data).await;
    let length = commit(c.client(), &staged, "library/app", &digest)
        .await
        .unwrap();
    assert_eq!(length, LEN);
    acknowledged_durably(&c, &digest);
    assert!(origin(&c, owner).cas().contains(&digest).unwrap());
    assert!(!origin(&c, other).cas().contains(&digest).unwrap());
    assert_eq!(tmp(other), 0);
    origin(&c, owner).cas().purge(&digest, None).unwrap();
    assert!(!origin(&c, owner).cas().contains(&digest).unwrap());

    // The owner stores it as an ingest would: verified, pinned, queued for write-back.
    let staged = stage(&c, c.node(owner).quic_addr(), &data).await;
    let length = commit(c.client(), &staged, "library/app", &digest)
        .await
        .unwrap();
    assert_eq!(length, LEN);
    acknowledged_durably(&c, &digest);
    assert_eq!(tmp(owner), 0);
    let bytes = std::fs::read(origin(&c, owner).cas().blob_path(&digest)).unwrap();
    assert_eq!(Digest::sha256_of(&bytes), digest);
    let fresh = origin(&c, owner)
        .cas()
        .ingest(&digest, Some(LEN), &data[..])
        .unwrap();
    assert!(fresh.already_present);

    // A stage whose body breaks off leaves nothing.
    let call = StageCall::open(c.client(), c.node(owner).quic_addr(), "library/app")
        .await
        .unwrap();
    let mut partial = futures::stream::iter(vec![bytes::Bytes::from(data[..3 << 20].to_vec())])
        .chain(futures::stream::pending());
    // Given up mid-body: the call is dropped, which resets its stream.
    let sending = tokio::time::timeout(Duration::from_secs(1), call.send_all(&mut partial));
    assert!(sending.await.is_err(), "the body never ends");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tmp(owner) > 0 {
        assert!(Instant::now() < deadline, "a broken stage left a temp file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_stored_on_its_second_owner_is_found_through_the_first_at_once() {
    let (c, _) = push_cluster().await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 7);
    let data = std::fs::read(&path).unwrap();
    let owners = c.client().owners_of_digest(Role::Origin, &digest, 0);
    // A passed-on chunked push lands on whichever owner its chunks went to.
    let staged = stage(&c, owners[1].quic_addr, &data).await;
    commit(c.client(), &staged, "library/app", &digest)
        .await
        .unwrap();
    // A read in ring order asks the first owner, which does not wait for its copy: it
    // answers from the owner that holds the blob.
    let ask = Request::OriginMetainfo {
        namespace: "library/app".into(),
        digest,
        wait_ms: 0,
    };
    match c.client().call(owners[0].quic_addr, &ask).await.unwrap() {
        Response::Metainfo(bytes) => {
            let metainfo = kraken_storage::Metainfo::decode(&bytes).unwrap();
            assert_eq!((metainfo.digest(), metainfo.length()), (&digest, LEN));
        }
        other => panic!("{other:?}"),
    }
    on_every_origin_intact(&c, &digest).await;
}
