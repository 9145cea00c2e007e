//! Links and blob tombstones on the build-index: a write through any build-index node
//! lands on every owner of each digest, and reads take the union.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use kraken_membership::Role;
use kraken_node::config::NodeRole;
use kraken_node::proto::{Request, Response};
use kraken_storage::Digest;
use support::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_tombstones_reach_every_owner() {
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    let b1 = c.add("bi-1", NodeRole::BuildIndex).await;
    let b2 = c.add("bi-2", NodeRole::BuildIndex).await;
    c.converge(1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while [b1, b2]
        .iter()
        .any(|&n| c.node(n).cluster().view().ring(Role::BuildIndex).len() < 2)
    {
        assert!(Instant::now() < deadline, "two build-index nodes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = |n: usize| c.node(n).quic_addr();
    let store = |n: usize| c.node(n).roles().build_index.clone().unwrap();
    let digests: Vec<Digest> = (0..50u8).map(|i| Digest::sha256_of(&[i])).collect();

    // Through bi-1: both nodes own every digest (3 replicas, 2 nodes), so both hold them.
    let link = Request::LinkBlobs {
        repo: "library/app".into(),
        digests: digests.clone(),
        replica: false,
    };
    match c.client().call(at(b1), &link).await.unwrap() {
        Response::Linked { count } => assert_eq!(count, 50),
        other => panic!("{other:?}"),
    }
    for n in [b1, b2] {
        for d in &digests {
            assert_eq!(store(n).digests().linkers(d).unwrap(), ["library/app"]);
        }
    }
    // A link held by one owner only still counts in a gathered read.
    store(b2)
        .digests()
        .link("library/other", &digests[..1], 1)
        .unwrap();
    let linkers = Request::Linkers {
        digest: digests[0],
        gather: true,
    };
    match c.client().call(at(b1), &linkers).await.unwrap() {
        Response::Linkers(r) => assert_eq!(r, ["library/app", "library/other"]),
        other => panic!("{other:?}"),
    }
    // Unlinked through bi-2: gone from both, and the answer names who still links it.
    let unlink = Request::UnlinkBlob {
        repo: "library/app".into(),
        digest: digests[0],
        replica: false,
    };
    match c.client().call(at(b2), &unlink).await.unwrap() {
        Response::Unlinked {
            was_linked,
            remaining,
        } => assert!(was_linked && remaining == ["library/other"]),
        other => panic!("{other:?}"),
    }
    assert!(store(b1).digests().linkers(&digests[0]).unwrap().is_empty());

    // A tombstone recorded through bi-1 is polled from bi-2 as well.
    let now = kraken_storage::time::now_ms();
    let tombstone = Request::RecordTombstone {
        digest: digests[1],
        deleted_ms: now,
        replica: false,
    };
    c.client().call(at(b1), &tombstone).await.unwrap();
    let poll = Request::Tombstones {
        since_ms: now,
        limit: 10,
    };
    for n in [b1, b2] {
        match c.client().call(at(n), &poll).await.unwrap() {
            Response::Tombstones { entries, more } => {
                assert_eq!((entries, more), (vec![(digests[1], now)], false));
            }
            other => panic!("{other:?}"),
        }
    }
    // Tombstones past the retention (7 days) are pruned at the next record.
    let old = Request::RecordTombstone {
        digest: digests[2],
        deleted_ms: 1,
        replica: true,
    };
    c.client().call(at(b1), &old).await.unwrap();
    let all = Request::Tombstones {
        since_ms: 0,
        limit: 10,
    };
    match c.client().call(at(b1), &all).await.unwrap() {
        Response::Tombstones { entries, .. } => assert_eq!(entries, vec![(digests[1], now)]),
        other => panic!("{other:?}"),
    }
}
