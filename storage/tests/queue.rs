//! The durable write-back queue: durability across reopen, leases, backoff with jitter.
#![cfg(feature = "local")]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use kraken_storage::Digest;
use kraken_storage::queue::{QueueConfig, QueueError, WriteBackQueue};

fn config() -> QueueConfig {
    QueueConfig {
        base_backoff_ms: 1_000,
        max_backoff_ms: 60_000,
        jitter: 0.5,
        lease_timeout_ms: 30_000,
        seed: Some(7),
    }
}

fn d(n: u8) -> Digest {
    Digest::sha256_of(&[n])
}

#[test]
fn enqueued_items_survive_reopen_and_are_taken_in_due_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let t0 = SystemTime::now();
    {
        let q = WriteBackQueue::open(&path, config()).unwrap();
        assert!(q.enqueue("library/redis", &d(1), t0).unwrap());
        assert!(
            q.enqueue("library/redis", &d(2), t0 + Duration::from_millis(1))
                .unwrap()
        );
        assert!(
            q.enqueue("other", &d(1), t0 + Duration::from_millis(2))
                .unwrap()
        );
        assert!(
            !q.enqueue("library/redis", &d(1), t0).unwrap(),
            "duplicates collapse"
        );
        // Leased but never reported before the "crash".
        assert_eq!(
            q.take_due(t0 + Duration::from_secs(1), 10).unwrap().len(),
            3
        );
    }
    let q = WriteBackQueue::open(&path, config()).unwrap();
    assert_eq!(q.len().unwrap(), 3);
    let items = q.take_due(t0 + Duration::from_secs(1), 2).unwrap();
    assert_eq!(
        items
            .iter()
            .map(|i| (i.namespace.as_str(), i.digest))
            .collect::<Vec<_>>(),
        vec![("library/redis", d(1)), ("library/redis", d(2))]
    );
    // Leased items are not handed out twice; the third one is.
    let rest = q.take_due(t0 + Duration::from_secs(1), 10).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].namespace, "other");

    for item in items.iter().chain(&rest) {
        q.complete(item).unwrap();
    }
    assert!(q.is_empty().unwrap());
    assert!(matches!(
        q.complete(&items[0]),
        Err(QueueError::NotQueued { .. })
    ));
}

#[test]
fn failures_back_off_exponentially_with_jitter_and_cap() {
    let dir = tempfile::tempdir().unwrap();
    let q = WriteBackQueue::open(&dir.path().join("q.redb"), config()).unwrap();
    let t0 = SystemTime::now();
    q.enqueue("ns", &d(1), t0).unwrap();
    let mut now = t0;
    for attempt in 1..=10u32 {
        let item = q.take_due(now, 1).unwrap().pop().expect("item is due");
        assert_eq!(item.attempts, attempt - 1);
        let next = q.fail(&item, now, "backend unavailable").unwrap();
        let delay = next.duration_since(now).unwrap();
        let nominal = config().backoff(attempt);
        assert_eq!(nominal.as_millis(), (1000u128 << (attempt - 1)).min(60_000));
        assert!(
            delay <= nominal && delay >= nominal / 2,
            "attempt {attempt}: {delay:?} vs {nominal:?}"
        );
        // Not due a millisecond early.
        assert!(
            q.take_due(next - Duration::from_millis(1), 1)
                .unwrap()
                .is_empty()
        );
        now = next;
    }
    let stats = q.stats(now).unwrap();
    assert_eq!(stats.depth, 1);
    let oldest = stats.oldest.unwrap();
    assert_eq!(oldest.attempts, 10);
    assert_eq!(oldest.last_error.as_deref(), Some("backend unavailable"));
}

#[test]
fn schedule_survives_reopen_and_leases_expire() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let t0 = SystemTime::now();
    let next = {
        let q = WriteBackQueue::open(&path, config()).unwrap();
        q.enqueue("ns", &d(1), t0).unwrap();
        let item = q.take_due(t0, 1).unwrap().pop().unwrap();
        q.fail(&item, t0, "boom").unwrap()
    };
    let q = WriteBackQueue::open(&path, config()).unwrap();
    assert!(q.take_due(t0, 1).unwrap().is_empty(), "backoff is durable");
    let item = q.take_due(next, 1).unwrap().pop().unwrap();
    assert_eq!(item.attempts, 1);
    // A worker that never reports loses its lease after lease_timeout.
    assert!(
        q.take_due(next + Duration::from_secs(29), 1)
            .unwrap()
            .is_empty()
    );
    let retaken = q
        .take_due(next + Duration::from_secs(31), 1)
        .unwrap()
        .pop()
        .unwrap();
    let again = q.take_due(next + Duration::from_secs(40), 1).unwrap();
    assert!(again.is_empty(), "still leased by the second take");
    // A stale lease releases nothing; the current one frees the item at once.
    q.release(&item);
    assert!(
        q.take_due(next + Duration::from_secs(40), 1)
            .unwrap()
            .is_empty()
    );
    q.release(&retaken);
    assert_eq!(
        q.take_due(next + Duration::from_secs(40), 1).unwrap().len(),
        1
    );
}

#[test]
fn bad_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, want) in [
        (
            QueueConfig {
                base_backoff_ms: 0,
                ..config()
            },
            "base_backoff_ms",
        ),
        (
            QueueConfig {
                max_backoff_ms: 10,
                ..config()
            },
            "max_backoff_ms",
        ),
        (
            QueueConfig {
                jitter: 2.0,
                ..config()
            },
            "jitter",
        ),
        (
            QueueConfig {
                lease_timeout_ms: 0,
                ..config()
            },
            "lease_timeout_ms",
        ),
    ] {
        let err = WriteBackQueue::open(&dir.path().join("q.redb"), bad)
            .err()
            .unwrap();
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[test]
fn an_expired_lease_cannot_release_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let q = WriteBackQueue::open(&dir.path().join("q.redb"), config()).unwrap();
    let t0 = SystemTime::now();
    q.enqueue("ns", &d(1), t0).unwrap();
    let slow = q.take_due(t0, 1).unwrap().pop().unwrap();
    // The slow worker's lease runs out; another worker takes the item.
    let later = t0 + Duration::from_secs(31);
    let _fast = q.take_due(later, 1).unwrap().pop().unwrap();
    q.release(&slow);
    assert!(
        q.take_due(later, 1).unwrap().is_empty(),
        "the second lease still holds"
    );
}

#[test]
fn a_deferred_item_waits_out_its_delay_even_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let t0 = SystemTime::now();
    let delay = Duration::from_secs(60);
    {
        let q = WriteBackQueue::open(&path, config()).unwrap();
        assert!(q.enqueue_after("ns", &d(1), t0, delay).unwrap());
        assert!(q.enqueue("ns", &d(2), t0).unwrap());
        assert_eq!(q.len().unwrap(), 2);
        assert_eq!(q.due_len(t0).unwrap(), 1);
        // What an operator sees: two queued, one due, the other due after the delay.
        let stats = q.stats(t0).unwrap();
        assert_eq!((stats.depth, stats.due), (2, 1));
        let ms = |t| kraken_storage::time::from_ms(kraken_storage::time::to_ms(t));
        assert_eq!(stats.next_due, Some(ms(t0 + delay)));
        let now = q.take_due(t0, 10).unwrap();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].digest, d(2));
        q.complete(&now[0]).unwrap();
        // Queuing it again leaves its schedule alone.
        assert!(!q.enqueue("ns", &d(1), t0).unwrap());
        assert!(q.take_due(t0, 10).unwrap().is_empty());
    }
    let q = WriteBackQueue::open(&path, config()).unwrap();
    let almost = t0 + delay - Duration::from_millis(1);
    assert!(q.take_due(almost, 10).unwrap().is_empty());
    assert_eq!(q.due_len(almost).unwrap(), 0);
    let later = q.take_due(t0 + delay, 10).unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].digest, d(1));
    assert_eq!(
        later[0].enqueued,
        kraken_storage::time::from_ms(kraken_storage::time::to_ms(t0))
    );
    assert_eq!(q.due_len(t0 + delay).unwrap(), 1);
    let stats = q.stats(t0 + delay).unwrap();
    assert_eq!((stats.depth, stats.due, stats.next_due), (1, 1, None));
}
