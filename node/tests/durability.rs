//! Durability of acknowledged uploads: a backend outage only delays write-back, and an
//! origin killed with SIGKILL while write-backs are queued finishes them after a restart.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kraken_node::config::NodeRole;
use kraken_node::proto::{Request, Response};
use support::outage::{backend_root, bring_back, take_down, wait_in_backend};
use support::process::KrakenProcess;
use support::{TestCluster, blob_file, fs_backend};

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
