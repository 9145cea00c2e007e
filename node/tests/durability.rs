//! Durability of acknowledged uploads: a backend outage only delays write-back, an
//! origin killed with SIGKILL while write-backs are queued finishes them after a restart,
//! and replicas defer their write-back to the first owner's but still make it when that
//! owner is gone.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kraken_node::config::NodeRole;
use kraken_node::proto::{Request, Response};
use support::outage::{backend_at, backend_root, bring_back, take_down, wait_in_backend};
use support::process::KrakenProcess;
use support::{TestCluster, blob_file, fs_backend};

/// Three origins sharing one backend at `root`, each replica's write-back deferred by
/// `delay_secs`.
async fn three_origins(c: &mut TestCluster, root: &Path, delay_secs: u64) {
    for name in ["origin-1", "origin-2", "origin-3"] {
        let mut origin = c.config(name, NodeRole::Origin);
        origin.backends[0].backend = fs_backend(root);
        origin.origin.replica_writeback_delay_secs = delay_secs;
        c.start(origin).await;
    }
    c.add("tracker-1", NodeRole::Tracker).await;
    c.converge(3).await;
}

/// Write-backs by outcome (`uploaded`, `present`, `failed`) over every live origin.
fn writebacks(c: &TestCluster, outcome: &str) -> u64 {
    let name = format!("kraken_writebacks_total{{outcome=\"{outcome}\"}}");
    c.origins()
        .iter()
        .map(|&i| support::metric(&c.node(i).metrics().render(), &name).map_or(0, |v| v as u64))
        .sum()
}

/// Origin `i`'s role.
fn origin(c: &TestCluster, i: usize) -> kraken_node::origin::Origin {
    c.node(i).roles().origin.clone().unwrap()
}

/// The origin a client's upload of `digest` goes to ([`TestCluster::upload`]).
fn first_owner(c: &TestCluster, digest: &kraken_storage::Digest) -> usize {
    let addr = c
        .client()
        .owners_of_digest(kraken_membership::Role::Origin, digest, 1)[0]
        .quic_addr;
    c.origins()
        .into_iter()
        .find(|&i| c.node(i).quic_addr() == addr)
        .unwrap()
}

/// Waits until every live origin's write-back queue is empty.
async fn queues_drain(c: &TestCluster, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !c
        .origins()
        .into_iter()
        .all(|i| origin(c, i).queue().is_empty().unwrap())
    {
        assert!(Instant::now() < deadline, "write-back queues not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_is_uploaded_to_the_backend_once_and_its_replicas_only_check_it() {
    const LEN: u64 = 4 << 20;
    let mut c = TestCluster::new();
    let root = backend_root(c.dir.path());
    three_origins(&mut c, &root, 5).await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 11);
    c.upload(&path, &digest, LEN).await;
    c.wait_replicated(&digest, 3).await;
    let first = first_owner(&c, &digest);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !origin(&c, first).queue().is_empty().unwrap() {
        assert!(
            Instant::now() < deadline,
            "the first owner never wrote it back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(backend_at(&root).stat(&digest).await.unwrap() == Some(LEN));
    // The first owner's write-back is done; each replica's was queued durably to wait
    // out its delay, with its copy pinned meanwhile.
    for i in c.origins().into_iter().filter(|&i| i != first) {
        let pinned = origin(&c, i).cas().info(&digest).unwrap().unwrap().pinned;
        for item in origin(&c, i).queue().list().unwrap() {
            let deferred = item.next_attempt.duration_since(item.enqueued).unwrap();
            assert_eq!(deferred, Duration::from_secs(5), "{item:?}");
            assert!(pinned, "a replica awaiting its write-back is pinned");
        }
        // What `krakenctl writeback` shows of it: queued, and due only after the delay.
        let answer = c
            .client()
            .call(c.node(i).quic_addr(), &Request::WriteBackQueue);
        let Response::WriteBackQueue(q) = answer.await.unwrap() else {
            panic!("not a queue status");
        };
        match (q.depth, q.next_due_in_secs) {
            (1, Some(secs)) => assert!(q.due == 0 && (1..=5).contains(&secs), "{q:?}"),
            // A slow machine: the 5 s may be over already.
            (depth, None) => assert_eq!(q.due, depth, "{q:?}"),
            _ => panic!("{q:?}"),
        }
    }
    queues_drain(&c, Duration::from_secs(30)).await;
    assert_eq!(writebacks(&c, "uploaded"), 1);
    assert_eq!(writebacks(&c, "present"), 2);
    for i in c.origins() {
        let info = origin(&c, i).cas().info(&digest).unwrap().unwrap();
        assert!(info.persisted && !info.pinned, "{info:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_write_a_blob_back_when_its_first_owner_dies_before_it_could() {
    const LEN: u64 = 4 << 20;
    let mut c = TestCluster::new();
    let root = backend_root(c.dir.path());
    three_origins(&mut c, &root, 1).await;
    // The backend is down: the first owner's write-back fails, and the owner dies.
    take_down(&root);
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 12);
    c.upload(&path, &digest, LEN).await;
    c.wait_replicated(&digest, 3).await;
    let first = first_owner(&c, &digest);
    c.kill(first);
    bring_back(&root);
    // The replicas' deferred write-backs find the backend without the blob and upload it.
    wait_in_backend(&root, &digest, Duration::from_secs(20)).await;
    queues_drain(&c, Duration::from_secs(20)).await;
    assert!(writebacks(&c, "uploaded") >= 1);
    assert_eq!(backend_at(&root).stat(&digest).await.unwrap(), Some(LEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_succeed_while_the_backend_is_down_and_are_flushed_when_it_returns() {
    const LEN: u64 = 8 << 20;
    let mut c = TestCluster::new();
    let root = backend_root(c.dir.path());
    let mut origin = c.config("origin-1", NodeRole::Origin);
    origin.backends[0].backend = fs_backend(&root);
    let o = c.start(origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    let a = c.add("agent-1", NodeRole::Agent).await;
    c.converge(1).await;
    take_down(&root);

    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 7);
    c.upload(&path, &digest, LEN).await;
    // Acknowledged, queued, and still served while the backend is down.
    let queue = c.node(o).roles().origin.as_ref().unwrap().queue();
    assert_eq!(queue.len().unwrap(), 1);
    let report = c.pull(a, &digest).await.unwrap();
    assert_eq!(report.length, LEN);
    // Write-back keeps failing meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.list().unwrap()[0].attempts < 2 {
        assert!(Instant::now() < deadline, "write-back was not attempted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bring_back(&root);
    wait_in_backend(&root, &digest, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !queue.is_empty().unwrap() {
        assert!(Instant::now() < deadline, "queue not drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = c
        .node(o)
        .roles()
        .origin
        .as_ref()
        .unwrap()
        .cas()
        .info(&digest)
        .unwrap()
        .unwrap();
    assert!(info.persisted && !info.pinned, "{info:?}");
}

fn spawn_origin(config: &Path) -> KrakenProcess {
    KrakenProcess::spawn("origin", config, Stdio::inherit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_killed_with_queued_write_backs_flushes_them_after_restart() {
    const LEN: u64 = 6 << 20;
    let c = TestCluster::new();
    let root = backend_root(c.dir.path());
    let ca_dir = c.dir.path().join("ca");
    c.ca.write_node_cert("origin-1").unwrap();
    let data = c.dir.path().join("origin-data");
    let config = c.dir.path().join("origin.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[node]
name = "origin-1"
data_dir = "{data}"
cluster_id = "test"
[quic]
listen = "127.0.0.1:0"
[gossip]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[tls]
ca = "{ca}/ca.crt"
cert = "{ca}/origin-1.crt"
key = "{ca}/origin-1.key"
[origin]
writeback_poll_ms = 100
[writeback_queue]
base_backoff_ms = 100
max_backoff_ms = 300
[[backends]]
namespace = ".*"
backend = {{ fs = {{ root = "{root}" }} }}
"#,
            data = data.display(),
            ca = ca_dir.display(),
            root = root.display(),
        ),
    )
    .unwrap();

    // A plain client: its own endpoint and certificate, calling by address.
    let client = c.plain_client();

    let mut origin = spawn_origin(&config);
    take_down(&root);
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 8);
    kraken_node::origin::upload::push_file(
        &client,
        origin.quic,
        "default",
        &digest,
        &path,
        LEN,
        false,
        false,
    )
    .await
    .unwrap();
    match client
        .call(origin.quic, &Request::WriteBackStatus)
        .await
        .unwrap()
    {
        Response::WriteBack(s) => assert_eq!(s.depth, 1),
        other => panic!("{other:?}"),
    }
    // SIGKILL: no chance to flush anything that was not already durable.
    origin.kill9();
    drop(origin);
    bring_back(&root);

    let origin = spawn_origin(&config);
    wait_in_backend(&root, &digest, Duration::from_secs(30)).await;
    match client
        .call(origin.quic, &Request::BlobStat { digest })
        .await
        .unwrap()
    {
        Response::BlobStat(s) => assert!(s.present && s.persisted, "{s:?}"),
        other => panic!("{other:?}"),
    }
}
