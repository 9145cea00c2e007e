//! Scrubbing on origins: bytes flipped on an origin's disk are found (by the background
//! walk, by an agent that got a bad piece, by the `Scrub` RPC, by the write-back), the
//! corrupt copy stops being served, and a correct copy takes its place, from another
//! origin or from the backend; a corrupt copy never reaches the backend.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use kraken_node::config::NodeRole;
use kraken_node::origin::Origin;
use kraken_node::proto::{BlobStat, DEFAULT_NAMESPACE, Request, Response, ScrubReport};
use kraken_storage::Digest;
use support::outage::{backend_at, backend_root, bring_back, take_down, wait_in_backend};
use support::{TestCluster, blob_file, fs_backend};

const LEN: u64 = 4 << 20;

/// A cluster of `origins` origins scrubbing at `rate` bytes/s (0: no background walk)
/// with passes 200 ms apart, and a tracker.
async fn cluster(origins: usize, rate: u64) -> TestCluster {
    let mut c = TestCluster::new();
    for i in 1..=origins {
        let mut config = c.config(&format!("origin-{i}"), NodeRole::Origin);
        config.origin.scrub_bytes_per_sec = rate;
        config.origin.scrub_interval_ms = 200;
        c.start(config).await;
    }
    c.add("tracker-1", NodeRole::Tracker).await;
    c.converge(origins).await;
    c
}

/// Uploads a fresh blob (seeded by `seed`) and waits until every origin holds it.
async fn upload(c: &TestCluster, name: &str, seed: u64) -> (Vec<u8>, Digest) {
    let (path, digest) = blob_file(c.dir.path(), name, LEN, seed);
    c.upload(&path, &digest, LEN).await;
    c.wait_replicated(&digest, c.origins().len()).await;
    (std::fs::read(path).unwrap(), digest)
}

fn origin(c: &TestCluster, i: usize) -> &Origin {
    c.node(i).roles().origin.as_ref().unwrap()
}

/// Flips one byte in every `every` bytes of origin `i`'s stored copy.
fn rot(c: &TestCluster, i: usize, digest: &Digest, every: u64) {
    let path = origin(c, i).cas().blob_path(digest);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut at = 12_345 % every;
    while at < LEN {
        let mut b = [0u8];
        file.read_exact_at(&mut b, at).unwrap();
        file.write_all_at(&[b[0] ^ 0x40], at).unwrap();
        at += every;
    }
    file.sync_all().unwrap();
}

/// The sha256 of origin `i`'s stored file (none if it holds none).
fn stored(c: &TestCluster, i: usize, digest: &Digest) -> Option<Digest> {
    let path = origin(c, i).cas().blob_path(digest);
    std::fs::read(path).ok().map(|b| Digest::sha256_of(&b))
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn scrub_counts(c: &TestCluster, i: usize) -> (u64, u64, u64) {
    let s = c.node(i).metrics().scrub();
    (s.corrupt.get(), s.restored.get(), s.restore_failures.get())
}

/// Every origin's copy is the blob, again.
fn all_correct(c: &TestCluster, digest: &Digest) -> bool {
    c.origins()
        .iter()
        .all(|&i| stored(c, i, digest) == Some(*digest))
}

/// What origin `i` holds of `digest`.
async fn stat(c: &TestCluster, i: usize, digest: &Digest) -> BlobStat {
    let request = Request::BlobStat { digest: *digest };
    match c.client().call(c.node(i).quic_addr(), &request).await {
        Ok(Response::BlobStat(s)) => s,
        other => panic!("{other:?}"),
    }
}

async fn scrub(c: &TestCluster, i: usize, digest: Option<Digest>) -> ScrubReport {
    let request = Request::Scrub { digest };
    let answer = c
        .client()
        .call_within(c.node(i).quic_addr(), &request, Duration::from_secs(30))
        .await;
    match answer {
        Ok(Response::Scrubbed(r)) => r,
        other => panic!("{other:?}"),
    }
}

fn quarantined(c: &TestCluster, i: usize) -> Vec<Vec<u8>> {
    let dir = origin(c, i).cas().config().root.join("quarantine");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read(e.path()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_found_by_the_background_walk_and_restored_from_a_co_owner() {
    let c = cluster(3, 256 << 20).await;
    let (blob, digest) = upload(&c, "blob", 1).await;
    let o = c.origins()[0];
    rot(&c, o, &digest, LEN);
    wait_until(
        "the walk restored the copy",
        Duration::from_secs(20),
        || scrub_counts(&c, o) == (1, 1, 0),
    )
    .await;
    assert!(all_correct(&c, &digest));
    // The bad copy was set aside, not served: it differs from the blob in one byte.
    let aside = quarantined(&c, o);
    assert_eq!(aside.len(), 1);
    let diff = aside[0].iter().zip(&blob).filter(|(a, b)| a != b).count();
    assert_eq!(diff, 1);
    assert!(stat(&c, o, &digest).await.present);
    // The other origins found nothing.
    for &i in &c.origins()[1..] {
        assert_eq!(scrub_counts(&c, i), (0, 0, 0));
    }
    assert!(c.node(o).metrics().scrub().bytes.get() >= LEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_never_reads_faster_than_its_rate() {
    const RATE: u64 = 8 << 20;
    let started = Instant::now();
    let c = cluster(1, RATE).await;
    upload(&c, "blob", 9).await;
    let o = c.origins()[0];
    let bytes = || c.node(o).metrics().scrub().bytes.get();
    wait_until("three passes read", Duration::from_secs(20), || {
        bytes() >= 3 * LEN
    })
    .await;
    // The bucket starts full (1 MiB at this rate) and each step takes at most 1 MiB on
    // credit: anything beyond that took its time at the rate.
    let read = bytes();
    let least = Duration::from_secs_f64((read - (2 << 20)) as f64 / RATE as f64);
    assert!(
        started.elapsed() >= least,
        "{read} bytes in {:?}",
        started.elapsed()
    );
    assert_eq!(scrub_counts(&c, o), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_corrupt_copies_are_both_restored_from_the_third() {
    let c = cluster(3, 256 << 20).await;
    let (_, digest) = upload(&c, "blob", 2).await;
    let (a, b) = (c.origins()[0], c.origins()[1]);
    rot(&c, a, &digest, 1 << 20);
    rot(&c, b, &digest, 3 << 20);
    wait_until("both copies restored", Duration::from_secs(20), || {
        scrub_counts(&c, a).1 == 1 && scrub_counts(&c, b).1 == 1
    })
    .await;
    assert!(all_correct(&c, &digest));
    assert_eq!(scrub_counts(&c, c.origins()[2]), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_copy_is_corrupt_the_backend_copy_restores_them() {
    let c = cluster(3, 256 << 20).await;
    let (_, digest) = upload(&c, "blob", 3).await;
    wait_in_backend(&c.backend_root, &digest, Duration::from_secs(20)).await;
    for i in c.origins() {
        rot(&c, i, &digest, 2 << 20);
    }
    wait_until("every copy restored", Duration::from_secs(25), || {
        c.origins().iter().all(|&i| scrub_counts(&c, i).1 == 1)
    })
    .await;
    assert!(all_correct(&c, &digest));
    // Whoever restored first read the backend; the others may have copied from it.
    let from_backend = c.origins().iter().any(|&i| {
        let text = c.node(i).metrics().render();
        metric(&text, "kraken_backend_read_bytes_total") >= LEN
    });
    assert!(from_backend, "no origin read the blob from the backend");
}

/// The value of an unlabelled metric in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> u64 {
    support::metric(text, name).map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reports_bad_pieces_and_the_origins_restore_their_copies_without_the_walk() {
    let mut c = cluster(3, 0).await;
    let mut config = c.config("agent-1", NodeRole::Agent);
    // Bad peers come back soon: the origins it bans are restored within a second or two.
    config.swarm.blacklist_bad_peer = Duration::from_secs(1);
    let agent = c.start(config).await;
    let (_, digest) = upload(&c, "blob", 4).await;
    wait_in_backend(&c.backend_root, &digest, Duration::from_secs(20)).await;
    // Every piece of every origin's copy is bad, so whichever origin the agent asks sends
    // it a bad piece, and the pull completes only once the origins restored their copies
    // (from the backend, as no origin has a correct one).
    for i in c.origins() {
        rot(&c, i, &digest, 256 << 10);
    }
    let report = c.pull(agent, &digest).await.unwrap();
    assert_eq!(report.length, LEN);
    assert_eq!(c.stored_digest(agent, &digest), digest);
    assert!(report.bad_pieces >= 1, "{report:?}");
    let sent = metric(
        &c.node(agent).metrics().render(),
        "kraken_bad_piece_reports_total",
    );
    assert!(sent >= 1);
    wait_until(
        "the reported copies restored",
        Duration::from_secs(20),
        || {
            c.origins()
                .iter()
                .all(|&i| scrub_counts(&c, i) == (1, 1, 0))
        },
    )
    .await;
    assert!(all_correct(&c, &digest));
    for &o in &c.origins() {
        // Only the reported blob was read, once: there is no walk, and a report about a
        // blob checked lately is not queued again.
        assert_eq!(c.node(o).metrics().scrub().blobs.get(), 1);
        assert!(c.node(o).metrics().scrub().suspects.get() >= 1);
    }
    // One report per origin and blob, however many of its pieces were bad.
    assert!(sent <= 3, "{sent} reports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_rpc_checks_one_blob_or_the_whole_store() {
    let c = cluster(3, 0).await;
    let (_, one) = upload(&c, "one", 5).await;
    let (_, two) = upload(&c, "two", 6).await;
    let o = c.origins()[1];
    rot(&c, o, &one, LEN);
    let intact = scrub(&c, o, Some(two)).await;
    assert_eq!(
        intact,
        ScrubReport {
            checked: 1,
            bytes: LEN,
            ..ScrubReport::default()
        }
    );
    let fixed = scrub(&c, o, Some(one)).await;
    assert_eq!(
        fixed,
        ScrubReport {
            checked: 1,
            bytes: LEN,
            corrupt: 1,
            restored: 1,
            failed: 0
        }
    );
    assert!(all_correct(&c, &one));
    // A blob it does not hold: nothing to check.
    let absent = scrub(&c, o, Some(Digest::sha256_of(b"none"))).await;
    assert_eq!(absent, ScrubReport::default());
    // The whole store: both blobs read, the one rotted since restored.
    rot(&c, o, &two, 1 << 20);
    let all = scrub(&c, o, None).await;
    assert_eq!(
        all,
        ScrubReport {
            checked: 2,
            bytes: 2 * LEN,
            corrupt: 1,
            restored: 1,
            failed: 0
        }
    );
    assert!(all_correct(&c, &two));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_copy_with_no_correct_one_left_is_no_longer_served() {
    let c = cluster(1, 0).await;
    let (_, digest) = upload(&c, "blob", 7).await;
    let o = c.origins()[0];
    wait_in_backend(&c.backend_root, &digest, Duration::from_secs(20)).await;
    // The backend loses it too.
    backend_at(&c.backend_root).delete(&digest).await.unwrap();
    rot(&c, o, &digest, LEN);
    let report = scrub(&c, o, Some(digest)).await;
    assert_eq!((report.corrupt, report.restored, report.failed), (1, 0, 1));
    let s = stat(&c, o, &digest).await;
    assert!(
        !s.present && s.length.is_none() && s.metainfo_id.is_none(),
        "{s:?}"
    );
    let request = Request::OriginMetainfo {
        namespace: DEFAULT_NAMESPACE.into(),
        digest,
        wait_ms: 2000,
    };
    let answer = c.client().call(c.node(o).quic_addr(), &request).await;
    assert!(
        answer.is_err(),
        "metainfo of a quarantined blob: {answer:?}"
    );
    assert_eq!(quarantined(&c, o).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_blob_that_rots_before_its_write_back_is_never_uploaded() {
    let mut c = TestCluster::new();
    let root = backend_root(c.dir.path());
    let mut config = c.config("origin-1", NodeRole::Origin);
    config.backends[0].backend = fs_backend(&root);
    config.origin.scrub_bytes_per_sec = 0;
    let o = c.start(config).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    c.converge(1).await;
    take_down(&root);
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 8);
    c.upload(&path, &digest, LEN).await;
    assert_eq!(origin(&c, o).queue().len().unwrap(), 1);
    rot(&c, o, &digest, LEN);
    bring_back(&root);
    // The write-back reads the rotted bytes, the backend refuses them (they do not hash
    // to the digest), and the origin checks its copy at once: corrupt, and with no other
    // copy anywhere, lost; its write-back item goes with it.
    wait_until("the rotted copy found", Duration::from_secs(20), || {
        scrub_counts(&c, o) == (1, 0, 1) && origin(&c, o).queue().len().unwrap() == 0
    })
    .await;
    assert_eq!(backend_at(&root).stat(&digest).await.unwrap(), None);
    // The one suspect report came from the write-back (there is no walk, and no agent).
    assert_eq!(c.node(o).metrics().scrub().suspects.get(), 1);
}
