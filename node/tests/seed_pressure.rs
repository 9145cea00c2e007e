//! A small agent store under quota pressure while it seeds: every blob it pulled stays
//! open for `seed_tti_secs` (its swarm seeds it), yet new pulls that need the space stop
//! the least recently used idle seeders, whose blobs are then evicted, instead of failing
//! with "no space" until the seeding ends.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;

use kraken_node::config::NodeRole;
use support::{TestCluster, blob_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_agent_store_stops_idle_seeders_to_make_room_for_new_pulls() {
    const QUOTA: u64 = 24 << 20;
    const LEN: u64 = 8 << 20;
    const BLOBS: u64 = 5;
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    let mut config = c.config("agent-1", NodeRole::Agent);
    let mut store = config.store_config();
    store.capacity_bytes = QUOTA;
    config.store = Some(store);
    let agent = c.start(config).await;
    c.converge(1).await;

    let mut digests = Vec::new();
    for n in 0..BLOBS {
        let (path, digest) = blob_file(c.dir.path(), &format!("blob-{n}"), LEN, 100 + n);
        c.upload(&path, &digest, LEN).await;
        c.wait_replicated(&digest, 1).await;
        digests.push(digest);
    }

    // One after another, well within the seeding TTI (300 s): together they are 40 MiB.
    for digest in &digests {
        let report = c.pull(agent, digest).await.unwrap();
        assert_eq!(report.length, LEN);
        assert_eq!(c.stored_digest(agent, digest), *digest, "the blob's bytes");
    }

    let roles = c.node(agent).roles().agent.as_ref().unwrap();
    let cas = roles.cas();
    assert!(
        cas.used_bytes() <= QUOTA,
        "{} bytes stored",
        cas.used_bytes()
    );
    assert!(
        !cas.contains(&digests[0]).unwrap(),
        "the least recently used blob was evicted"
    );
    assert!(
        cas.contains(&digests[BLOBS as usize - 1]).unwrap(),
        "the last blob is held"
    );
    let released = roles
        .exchange()
        .counters()
        .seeders_released
        .load(Ordering::Relaxed);
    assert!(released >= 2, "{released} seeders released");
}
