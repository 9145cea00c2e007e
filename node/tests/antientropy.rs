//! Anti-entropy between origins, end to end on loopback: blobs that fell short of their
//! replica count while the ring churned come back to every owner without a new upload
//! and without an unrelated ring change — after a member that joined unreachable left
//! again, and after an origin came back under the same id with an empty disk. The
//! anti-entropy interval is 2 s here (60 s by default).
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use kraken_membership::{NodeId, Role};
use kraken_node::config::{NodeConfig, NodeRole};
use kraken_node::proto::{DEFAULT_NAMESPACE, RepairReport, Request, Response};
use kraken_storage::Digest;
use support::{TestCluster, blob_file};

const LEN: u64 = 64 << 10;

fn origin_config(c: &TestCluster, name: &str) -> NodeConfig {
    let mut config = c.config(name, NodeRole::Origin);
    config.origin.anti_entropy_interval_secs = 2;
    config
}

async fn cluster(origins: usize) -> TestCluster {
    let mut c = TestCluster::new();
    for i in 1..=origins {
        let config = origin_config(&c, &format!("origin-{i}"));
        c.start(config).await;
    }
    c.add("tracker-1", NodeRole::Tracker).await;
    c.converge(origins).await;
    c
}

/// Uploads `path` to the first owner of `digest` that is not `avoid`.
async fn upload_avoiding(c: &TestCluster, path: &std::path::Path, digest: &Digest, avoid: &str) {
    let owners = c.client().owners_of_digest(Role::Origin, digest, 3);
    let to = owners.iter().find(|m| m.id.as_str() != avoid).unwrap();
    kraken_node::origin::upload::push_file(
        c.client(),
        to.quic_addr,
        DEFAULT_NAMESPACE,
        digest,
        path,
        LEN,
        false,
        false,
    )
    .await
    .unwrap();
}

/// Waits until every one of `digests` is held by `n` origins, or panics after `limit`.
async fn wait_all_held(c: &TestCluster, digests: &[Digest], n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let short: Vec<_> = digests
            .iter()
            .filter(|d| c.origins_holding(d) < n)
            .collect();
        if short.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} blobs are still held by fewer than {n} origins",
            short.len(),
            digests.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the tracker's view holds `name` at `quic`.
async fn wait_member_at(c: &TestCluster, name: &str, quic: SocketAddr) {
    let id = NodeId::new(name).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = c.client().view();
        let ring = view.ring(Role::Origin);
        if ring
            .members()
            .iter()
            .any(|m| m.id == id && m.quic_addr == quic)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never joined at {quic}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_return_to_three_copies_after_an_unreachable_member_joins_and_leaves() {
    let mut c = cluster(3).await;
    // origin-4 gossips and owns a quarter of the key space, but its advertised QUIC
    // address is a socket that never answers: every copy sent to it fails.
    let dead_end = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = origin_config(&c, "origin-4");
    config.quic.advertise = Some(dead_end.local_addr().unwrap());
    let o4 = c.start(config).await;
    c.converge(4).await;

    let mut digests = Vec::new();
    let mut owned_by_4 = 0;
    for seed in 0..12 {
        let (path, digest) = blob_file(c.dir.path(), &format!("b{seed}"), LEN, 500 + seed);
        let owners = c.client().owners_of_digest(Role::Origin, &digest, 3);
        if owners.iter().any(|m| m.id.as_str() == "origin-4") {
            owned_by_4 += 1;
        }
        upload_avoiding(&c, &path, &digest, "origin-4").await;
        digests.push(digest);
    }
    assert!(owned_by_4 > 0, "origin-4 owns none of the blobs");
    // Every blob reaches its reachable owners: those origin-4 owns are at 2 copies.
    wait_all_held(&c, &digests, 2, Duration::from_secs(20)).await;

    // origin-4 goes away and leaves the ring (failure detection, then its grace period).
    c.kill(o4);
    let left = Instant::now();
    c.converge(3).await;
    eprintln!("origin-4 left the ring after {:?}", left.elapsed());
    // Within an anti-entropy interval (and some slack for the copies), every blob is
    // back at 3 of 3.
    let started = Instant::now();
    wait_all_held(&c, &digests, 3, Duration::from_secs(8)).await;
    eprintln!(
        "3 of 3 again {:?} after the ring settled",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_replaced_under_the_same_id_with_an_empty_disk_gets_its_blobs_back() {
    let mut c = cluster(3).await;
    let mut digests = Vec::new();
    for seed in 0..6 {
        let (path, digest) = blob_file(c.dir.path(), &format!("b{seed}"), LEN, 700 + seed);
        c.upload(&path, &digest, LEN).await;
        digests.push(digest);
    }
    wait_all_held(&c, &digests, 3, Duration::from_secs(20)).await;

    // origin-2 dies and comes back at once under its id, on an empty data directory.
    let o2 = c.origins()[1];
    assert_eq!(c.node(o2).name(), "origin-2");
    c.kill(o2);
    let mut config = origin_config(&c, "origin-2");
    config.node.data_dir = c.dir.path().join("nodes").join("origin-2-replaced");
    let fresh = c.start(config).await;
    wait_member_at(&c, "origin-2", c.node(fresh).quic_addr()).await;
    let cas = c.node(fresh).roles().origin.as_ref().unwrap().cas().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    for d in &digests {
        while !cas.contains(d).unwrap() {
            assert!(
                Instant::now() < deadline,
                "{d} never came back to the replaced origin-2"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends `Repair` to every origin at once; returns the reports.
async fn repair_all(c: &TestCluster, digest: Option<Digest>) -> Vec<RepairReport> {
    let request = Request::Repair {
        digest,
        namespace: DEFAULT_NAMESPACE.into(),
    };
    let calls = c.origins().into_iter().map(|i| {
        let addr = c.node(i).quic_addr();
        let request = request.clone();
        async move {
            c.client()
                .call_within(addr, &request, Duration::from_secs(30))
                .await
        }
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|answer| match answer {
            Ok(Response::Repaired(r)) => r,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn origin_cas(c: &TestCluster, i: usize) -> kraken_storage::cas::Cas {
    c.node(i).roles().origin.as_ref().unwrap().cas().clone()
}

/// Deletes origin `i`'s copy of `digest` (as a lost disk would).
async fn lose_copy(c: &TestCluster, i: usize, digest: &Digest) {
    let cas = origin_cas(c, i);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        cas.set_pinned(digest, false).unwrap();
        match cas.delete(digest) {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "cannot delete: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies made by anti-entropy and repair on every origin, from their metrics.
fn copies(c: &TestCluster) -> u64 {
    c.origins()
        .into_iter()
        .map(|i| {
            let text = c.node(i).metrics().render();
            text.lines()
                .find_map(|l| l.strip_prefix("kraken_origin_anti_entropy_copies_total "))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap())
        })
        .sum()
}

fn total(reports: &[RepairReport], f: impl Fn(&RepairReport) -> u64) -> u64 {
    reports.iter().map(f).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repair_rpc_finds_and_fixes_under_replicated_blobs_and_reads_lost_ones_through() {
    // Periodic passes off: only the Repair RPC may fix what is deleted below.
    let mut c = TestCluster::new();
    for i in 1..=3 {
        let mut config = c.config(&format!("origin-{i}"), NodeRole::Origin);
        config.origin.anti_entropy_interval_secs = 0;
        c.start(config).await;
    }
    c.add("tracker-1", NodeRole::Tracker).await;
    c.converge(3).await;
    let (path, digest) = blob_file(c.dir.path(), "b", LEN, 900);
    c.upload(&path, &digest, LEN).await;
    c.wait_replicated(&digest, 3).await;
    let origins = c.origins();

    // A healthy cluster: nothing to do.
    let healthy = repair_all(&c, None).await;
    assert_eq!(total(&healthy, |r| r.under_replicated), 0, "{healthy:?}");
    assert_eq!(total(&healthy, |r| r.copied + r.failed + r.remaining), 0);
    assert_eq!(total(&healthy, |r| r.blobs), 3);

    // One copy lost: the pass finds it short and copies it back.
    lose_copy(&c, origins[1], &digest).await;
    assert_eq!(c.origins_holding(&digest), 2);
    let fixed = repair_all(&c, None).await;
    assert!(total(&fixed, |r| r.under_replicated) >= 1, "{fixed:?}");
    // The copy is this pass's, or (under load) that of a pass a late ring change started.
    assert!(copies(&c) >= 1, "{fixed:?}");
    assert_eq!(total(&fixed, |r| r.failed + r.remaining), 0, "{fixed:?}");
    assert_eq!(c.origins_holding(&digest), 3);
    let metrics = c.node(origins[0]).metrics().render();
    assert!(
        metrics.contains("kraken_origin_under_replicated_blobs 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kraken_origin_anti_entropy_passes_total"),
        "{metrics}"
    );
    let status = c
        .client()
        .call(c.node(origins[0]).quic_addr(), &Request::ReplicaStatus)
        .await
        .unwrap();
    match status {
        Response::ReplicaStatus(s) => {
            assert!(s.passes >= 2, "{s:?}");
            assert_eq!(s.under_replicated, 0);
            assert!(s.last_pass_secs_ago.is_some());
        }
        other => panic!("{other:?}"),
    }

    // One digest: the same, asked for by name.
    lose_copy(&c, origins[2], &digest).await;
    let before = copies(&c);
    let one = repair_all(&c, Some(digest)).await;
    assert!(copies(&c) > before, "{one:?}");
    assert_eq!(total(&one, |r| r.failed + r.remaining), 0, "{one:?}");
    assert_eq!(c.origins_holding(&digest), 3);

    // Every origin lost it, the backend has it: one owner reads it through, then copies.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !origins.iter().all(|&i| {
        origin_cas(&c, i)
            .info(&digest)
            .unwrap()
            .is_some_and(|b| b.persisted)
    }) {
        assert!(Instant::now() < deadline, "never written back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &i in &origins {
        lose_copy(&c, i, &digest).await;
    }
    assert_eq!(c.origins_holding(&digest), 0);
    let back = repair_all(&c, Some(digest)).await;
    assert_eq!(total(&back, |r| r.fetched), 1, "{back:?}");
    assert_eq!(total(&back, |r| r.failed + r.remaining), 0, "{back:?}");
    assert_eq!(c.origins_holding(&digest), 3);
    let _ = &mut c;
}
