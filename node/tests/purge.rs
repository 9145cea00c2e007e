//! PURGE end to end on a real cluster: a blob leaves every origin's store, the backend,
//! the trackers and (through the tombstone poll) the agents that held it; a purge guarded
//! by `unused_since_ms` keeps a blob used since.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use kraken_node::config::NodeRole;
use kraken_node::proto::{Request, Response};
use kraken_node::purge::purge;
use kraken_storage::Digest;
use kraken_storage::backend::{Backend, default_http_client};
use kraken_storage::time::now_ms;
use support::{TestCluster, blob_file, fs_backend};

/// Two origins, a tracker, a build-index and an agent that polls tombstones every second.
async fn cluster() -> (TestCluster, usize) {
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("origin-2", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    c.add("bi-1", NodeRole::BuildIndex).await;
    let mut agent = c.config("agent-1", NodeRole::Agent);
    agent.agent.tombstone_poll_secs = 1;
    let a = c.start(agent).await;
    c.converge(2).await;
    until("the agent sees the build-index", || {
        !c.node(a)
            .cluster()
            .view()
            .ring(kraken_membership::Role::BuildIndex)
            .is_empty()
    })
    .await;
    (c, a)
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn backend(c: &TestCluster) -> Backend {
    Backend::new(
        "check",
        &fs_backend(&c.backend_root),
        default_http_client().unwrap(),
    )
    .unwrap()
}

/// Uploads a blob, waits for both origins and the backend to hold it, and has the agent
/// pull it.
async fn stored_everywhere(c: &TestCluster, agent: usize, seed: u64) -> Digest {
    let (path, digest) = blob_file(c.dir.path(), &format!("blob-{seed}"), 3 << 20, seed);
    c.upload(&path, &digest, 3 << 20).await;
    c.wait_replicated(&digest, 2).await;
    let b = backend(c);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.exists(&digest).await.unwrap() {
        assert!(Instant::now() < deadline, "never written back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.pull(agent, &digest).await.unwrap();
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_removes_a_blob_from_origins_backend_trackers_and_agents() {
    let (c, a) = cluster().await;
    let digest = stored_everywhere(&c, a, 1).await;
    let agent = c.node(a).roles().agent.clone().unwrap();
    assert!(agent.cas().contains(&digest).unwrap());

    let report = purge(c.client(), &digest, None).await.unwrap();
    assert!(report.purged, "{report:?}");
    assert_eq!(report.freed_bytes, 2 * (3 << 20), "{report:?}");
    assert_eq!(report.backends, ["test-fs"]);
    assert_eq!(c.origins_holding(&digest), 0);
    assert!(!backend(&c).exists(&digest).await.unwrap());

    // The tracker forgot the agent as a peer.
    let tracker = c
        .nodes
        .iter()
        .flatten()
        .find(|n| n.roles().tracker.is_some())
        .unwrap()
        .quic_addr();
    match c
        .client()
        .call(tracker, &Request::Peers { digest })
        .await
        .unwrap()
    {
        Response::Peers(p) => assert!(p.is_empty(), "{p:?}"),
        other => panic!("{other:?}"),
    }

    // The agent evicts it at its next tombstone poll, and a pull now fails: nobody has it.
    until("the agent evicts the purged blob", || {
        !agent.cas().contains(&digest).unwrap()
    })
    .await;
    assert!(c.pull(a, &digest).await.is_err());

    // Purging again is harmless.
    let again = purge(c.client(), &digest, None).await.unwrap();
    assert!(again.purged && again.freed_bytes == 0, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_purge_keeps_a_blob_used_since_the_guard() {
    let (c, a) = cluster().await;
    let before = now_ms();
    let digest = stored_everywhere(&c, a, 2).await;

    // Written after `before`: every origin keeps it, and so does the backend.
    let report = purge(c.client(), &digest, Some(before)).await.unwrap();
    assert!(!report.purged, "{report:?}");
    assert_eq!(report.kept.len(), 2, "{report:?}");
    assert_eq!(report.freed_bytes, 0);
    assert_eq!(c.origins_holding(&digest), 2);
    assert!(backend(&c).exists(&digest).await.unwrap());

    // Read from one origin after a later guard: that origin keeps its copy (the other's
    // goes), and so does the backend.
    let guard = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let reader = c.node(c.origins()[0]).quic_addr();
    let read = Request::Download {
        digest,
        offset: 0,
        len: 1,
    };
    assert!(matches!(
        c.client().call(reader, &read).await.unwrap(),
        Response::Content { .. }
    ));
    let report = purge(c.client(), &digest, Some(guard)).await.unwrap();
    assert!(!report.purged, "{report:?}");
    assert_eq!(report.kept.len(), 1, "{report:?}");
    assert_eq!(report.kept[0].0, reader);
    assert_eq!(c.origins_holding(&digest), 1);
    assert!(backend(&c).exists(&digest).await.unwrap());

    // Not used since a later guard: it goes, though an anti-entropy pass read it since to
    // copy it to the emptied owner (which refuses it so soon after a purge). The node's own
    // reads are not uses.
    let guard = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let repair = Request::Repair {
        digest: None,
        namespace: kraken_node::proto::DEFAULT_NAMESPACE.into(),
    };
    let answer = c
        .client()
        .call_within(reader, &repair, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(answer, Response::Repaired(_)), "{answer:?}");
    let report = purge(c.client(), &digest, Some(guard)).await.unwrap();
    assert!(report.purged, "{report:?}");
    assert_eq!(c.origins_holding(&digest), 0);
    assert!(!backend(&c).exists(&digest).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_right_after_a_push_leaves_nothing_for_the_write_back_to_restore() {
    let (c, _) = cluster().await;
    let (path, digest) = blob_file(c.dir.path(), "fresh", 8 << 20, 3);
    c.upload(&path, &digest, 8 << 20).await;
    // At once: the write-back may be under way, or queued.
    let report = purge(c.client(), &digest, None).await.unwrap();
    assert!(report.purged, "{report:?}");
    until("every write-back queue drains", || {
        c.origins().iter().all(|&i| {
            let origin = c.node(i).roles().origin.clone().unwrap();
            origin.queue().is_empty().unwrap()
        })
    })
    .await;
    assert!(!backend(&c).exists(&digest).await.unwrap());
    assert_eq!(c.origins_holding(&digest), 0);
}
