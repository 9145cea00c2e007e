//! The write-back path end to end: CAS → durable queue → S3 (moto), through a backend
//! outage and a restart of the node's stores.
#![cfg(feature = "backends")]
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use kraken_storage::Digest;
use kraken_storage::backend::{
    Backend, NamespaceRouter, RouteConfig, RouterConfig, UploadOutcome, default_http_client,
    drain_due, upload_blob,
};
use kraken_storage::cas::{Cas, CasConfig};
use kraken_storage::queue::{QueueConfig, WriteBackQueue};
use support::{Moto, test_data};

fn router(moto: &Moto) -> NamespaceRouter {
    let config = RouterConfig {
        backends: vec![RouteConfig {
            namespace: "library/.*".into(),
            name: Some("moto".into()),
            backend: moto.backend_config(),
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

    // The backend is down: the item is rescheduled, the blob stays pinned and readable.
    moto.kill();
    let report = drain_due(&queue, &router, &cas, t0, 10).await.unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(queue.len().unwrap(), 1);
    let info = cas.info(&digest).unwrap().unwrap();
    assert!(info.pinned && !info.persisted);
    // Not due again until the backoff passes.
    let report = drain_due(&queue, &router, &cas, t0 + Duration::from_millis(400), 10)
        .await
        .unwrap();
    assert_eq!(report, Default::default());

    // The backend returns: the item drains, the blob is persisted and unpinned.
    moto.restart().await;
    let later = t0 + Duration::from_secs(2);
    let report = drain_due(&queue, &router, &cas, later, 10).await.unwrap();
    assert_eq!(report.uploaded, 1, "{report:?}");
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
async fn unroutable_or_missing_blobs_fail_without_losing_the_item() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(CasConfig::at(dir.path().join("cas"))).unwrap();
    let queue = WriteBackQueue::open(&dir.path().join("q.redb"), queue_config()).unwrap();
    let router = router(&moto);
    let now = SystemTime::now();
    let absent = Digest::sha256_of(b"not in the cas");
    queue.enqueue("library/a", &absent, now).unwrap();
    queue.enqueue("unrouted/b", &absent, now).unwrap();

    let report = drain_due(&queue, &router, &cas, now, 10).await.unwrap();
    let errors: Vec<_> = report.failed.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().any(|e| e.contains("not found")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("unrouted/b")),
        "{errors:?}"
    );
    assert_eq!(queue.len().unwrap(), 2);
}
