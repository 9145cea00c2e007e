//! The write-back path end to end: CAS → durable queue → S3 (moto), through a backend
//! outage and a restart of the node's stores, driven by the queue's executor running
//! `BlobWriteBack` as an origin does.
#![cfg(feature = "backends")]
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use kraken_storage::Digest;
use kraken_storage::backend::{
    Backend, BackendConfig, BlobWriteBack, NamespaceRouter, RouteConfig, RouterConfig,
    UploadOutcome, WriteBackError, WriteBackHooks, default_http_client, upload_blob,
};
use kraken_storage::cas::{Cas, CasConfig};
use kraken_storage::queue::executor::Executor;
use kraken_storage::queue::{QueueConfig, WriteBackItem, WriteBackQueue};
use support::{Moto, test_data};

fn router(moto: &Moto) -> NamespaceRouter {
    router_to(moto.backend_config())
}

fn router_to(backend: BackendConfig) -> NamespaceRouter {
    let config = RouterConfig {
        backends: vec![RouteConfig {
            namespace: "library/.*".into(),
            name: Some("moto".into()),
            backend,
        }],
    };
    NamespaceRouter::new(&config, default_http_client().unwrap()).unwrap()
}

fn queue_config() -> QueueConfig {
    QueueConfig {
        base_backoff_ms: 1_000,
        seed: Some(1),
        ..QueueConfig::default()
    }
}

/// The node's side of a write-back, as a test sees it: which uploads are still arriving,
/// and counts of what the executor reported.
#[derive(Default)]
struct Node {
    arriving: HashSet<Digest>,
    written_back: AtomicUsize,
    failed: AtomicUsize,
}

impl WriteBackHooks for &Node {
    fn arriving(&self, digest: &Digest) -> bool {
        self.arriving.contains(digest)
    }

    fn written_back(&self, _: &WriteBackItem, _: UploadOutcome) {
        self.written_back.fetch_add(1, Ordering::SeqCst);
    }

    fn failed(&self, _: &WriteBackItem, _: &WriteBackError) {
        self.failed.fetch_add(1, Ordering::SeqCst);
    }
}

/// An origin's executor over `queue`, on a clock the test sets.
fn executor<'a>(
    queue: &'a WriteBackQueue,
    router: &'a NamespaceRouter,
    cas: &'a Cas,
    node: &'a Node,
    clock: &Arc<Mutex<SystemTime>>,
) -> Executor<'a, BlobWriteBack<'a, &'a Node>> {
    let job = BlobWriteBack {
        router,
        cas,
        hooks: node,
    };
    let clock = clock.clone();
    Executor::new(queue, job, 10, 4).with_clock(move || *clock.lock().unwrap())
}

async fn backend_bytes(backend: &Backend, digest: &Digest) -> Vec<u8> {
    let chunks: Vec<Bytes> = backend
        .get(digest, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_uploads_survive_an_outage_and_a_restart() {
    let mut moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let queue_path = dir.path().join("writeback.redb");
    let blob = test_data(12 << 20, 5);
    let digest = Digest::sha256_of(&blob);
    let t0 = SystemTime::now();

    // Accept an upload: stored, pinned, queued — then the node "restarts".
    {
        let cas = Cas::open(CasConfig::at(dir.path().join("cas"))).unwrap();
        let queue = WriteBackQueue::open(&queue_path, queue_config()).unwrap();
        cas.ingest(&digest, Some(blob.len() as u64), &blob[..])
            .unwrap();
        cas.set_pinned(&digest, true).unwrap();
        queue.enqueue("library/redis", &digest, t0).unwrap();
    }
    let cas = Cas::open(CasConfig::at(dir.path().join("cas"))).unwrap();
    let queue = WriteBackQueue::open(&queue_path, queue_config()).unwrap();
    let router = router(&moto);
    let node = Node::default();
    let clock = Arc::new(Mutex::new(t0));
    let executor = executor(&queue, &router, &cas, &node, &clock);

    // The backend is down: the item is rescheduled, the blob stays pinned and readable.
    moto.kill();
    let report = executor.pass().await.unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(node.failed.load(Ordering::SeqCst), 1);
    assert_eq!(queue.len().unwrap(), 1);
    let info = cas.info(&digest).unwrap().unwrap();
    assert!(info.pinned && !info.persisted);
    // Not due again until the backoff passes.
    *clock.lock().unwrap() = t0 + Duration::from_millis(400);
    let report = executor.pass().await.unwrap();
    assert_eq!(report, Default::default());

    // The backend returns: the item drains, the blob is persisted and unpinned.
    moto.restart().await;
    *clock.lock().unwrap() = t0 + Duration::from_secs(2);
    let report = executor.pass().await.unwrap();
    assert_eq!(report.done, 1, "{report:?}");
    assert_eq!(node.written_back.load(Ordering::SeqCst), 1);
    assert!(queue.is_empty().unwrap());
    let info = cas.info(&digest).unwrap().unwrap();
    assert!(info.persisted && !info.pinned);
    let backend = router.route("library/redis").unwrap();
    assert_eq!(
        Digest::sha256_of(&backend_bytes(backend, &digest).await),
        digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_the_backend_has_are_not_uploaded_again() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(CasConfig::at(dir.path())).unwrap();
    let router = router(&moto);
    let backend = router.route("library/x").unwrap();
    let blob = test_data(100_000, 6);
    let digest = Digest::sha256_of(&blob);
    cas.ingest(&digest, Some(100_000), &blob[..]).unwrap();

    assert_eq!(
        upload_blob(backend, &cas, &digest).await.unwrap(),
        UploadOutcome::Uploaded { bytes: 100_000 }
    );
    assert_eq!(
        upload_blob(backend, &cas, &digest).await.unwrap(),
        UploadOutcome::AlreadyPresent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_blobs_fail_and_missing_ones_wait_or_are_dropped() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(CasConfig::at(dir.path().join("cas"))).unwrap();
    let queue = WriteBackQueue::open(&dir.path().join("q.redb"), queue_config()).unwrap();
    let router = router(&moto);
    let now = SystemTime::now();
    let present = test_data(1_000, 7);
    let stored = Digest::sha256_of(&present);
    cas.ingest(&stored, Some(1_000), &present[..]).unwrap();
    let arriving = Digest::sha256_of(b"still being received");
    let orphan = Digest::sha256_of(b"never acknowledged");
    queue.enqueue("unrouted/b", &stored, now).unwrap();
    queue.enqueue("library/a", &arriving, now).unwrap();
    queue.enqueue("library/c", &orphan, now).unwrap();
    let node = Node {
        arriving: HashSet::from([arriving]),
        ..Node::default()
    };
    let clock = Arc::new(Mutex::new(now));

    let report = executor(&queue, &router, &cas, &node, &clock)
        .pass()
        .await
        .unwrap();
    // No route: a failure that keeps the item.
    let errors: Vec<_> = report.failed.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(errors.len(), 1, "{report:?}");
    assert!(errors[0].contains("unrouted/b"), "{errors:?}");
    // Still arriving: waits, quietly. The orphan leaves the queue.
    assert_eq!((report.later, report.dropped), (1, 1), "{report:?}");
    assert_eq!(node.failed.load(Ordering::SeqCst), 1);
    let mut left: Vec<_> = queue.list().unwrap();
    left.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    let left: Vec<_> = left
        .iter()
        .map(|i| (i.namespace.as_str(), i.last_error.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0], ("library/a", "upload still arriving"));
    assert_eq!(left[1].0, "unrouted/b");
}

#[tokio::test]
async fn items_for_a_read_only_upstream_leave_the_queue_and_their_blob_stays_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(CasConfig::at(dir.path().join("cas"))).unwrap();
    let queue = WriteBackQueue::open(&dir.path().join("q.redb"), queue_config()).unwrap();
    let config = RouterConfig::from_toml_str(
        r#"
        [[backends]]
        namespace = "docker\\.io/.+"
        backend.registry = { url = "http://127.0.0.1:1", strip_prefix = "docker.io/" }
        "#,
    )
    .unwrap();
    let router = NamespaceRouter::new(&config, default_http_client().unwrap()).unwrap();
    let now = SystemTime::now();
    let bytes = test_data(1_000, 9);
    let digest = Digest::sha256_of(&bytes);
    cas.ingest_pinned(&digest, Some(1_000), &bytes[..]).unwrap();
    queue.enqueue("docker.io/library/x", &digest, now).unwrap();
    let node = Node::default();
    let clock = Arc::new(Mutex::new(now));

    let report = executor(&queue, &router, &cas, &node, &clock)
        .pass()
        .await
        .unwrap();
    // Not retried forever: it leaves the queue at once, and nothing failed.
    assert_eq!(report.dropped, 1, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(queue.list().unwrap().is_empty());
    assert_eq!(node.failed.load(Ordering::SeqCst), 0);
    // Written nowhere: the blob is kept from eviction.
    let info = cas.info(&digest).unwrap().unwrap();
    assert!(info.pinned && !info.persisted, "{info:?}");
}

/// A hung backend (moto stopped: connections accepted, nothing answered) fails a
/// write-back attempt within the backend's timeouts, not the HTTP client's read timeout;
/// the item stays queued and drains once the backend answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_fails_an_attempt_within_its_timeouts_and_drains_after() {
    const TIMEOUT_SECS: u64 = 2;
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(CasConfig::at(dir.path().join("cas"))).unwrap();
    let queue = WriteBackQueue::open(&dir.path().join("writeback.redb"), queue_config()).unwrap();
    let blob = test_data(1 << 20, 9);
    let digest = Digest::sha256_of(&blob);
    cas.ingest(&digest, Some(blob.len() as u64), &blob[..])
        .unwrap();
    cas.set_pinned(&digest, true).unwrap();
    let t0 = SystemTime::now();
    queue.enqueue("library/hung", &digest, t0).unwrap();
    let mut backend = moto.backend_config();
    backend.op_timeout_secs = TIMEOUT_SECS;
    backend.io_timeout_secs = TIMEOUT_SECS;
    let router = router_to(backend);
    let node = Node::default();
    let clock = Arc::new(Mutex::new(t0));
    let executor = executor(&queue, &router, &cas, &node, &clock);

    moto.pause();
    let started = Instant::now();
    let report = executor.pass().await.unwrap();
    let took = started.elapsed();
    moto.resume();
    eprintln!("a write-back attempt against the hung backend failed after {took:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    // A stat and an upload may each use their whole timeout; 15 s (the HTTP read
    // timeout) or 60 s (before this bound) would fail here.
    assert!(
        took < Duration::from_secs(2 * TIMEOUT_SECS + 3),
        "the attempt took {took:?}"
    );
    assert_eq!(queue.len().unwrap(), 1, "the item stays queued");
    assert!(cas.info(&digest).unwrap().unwrap().pinned);

    // Answering again: the item drains on its next attempt.
    *clock.lock().unwrap() = t0 + Duration::from_secs(5);
    let report = executor.pass().await.unwrap();
    assert_eq!(report.done, 1, "{report:?}");
    assert!(queue.is_empty().unwrap());
    let backend = router.route("library/hung").unwrap();
    assert_eq!(
        Digest::sha256_of(&backend_bytes(backend, &digest).await),
        digest
    );
}
