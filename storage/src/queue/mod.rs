//! The durable write-back queue: blobs an origin accepted and still owes its backend.
//!
//! Items are `(namespace, digest)` pairs in redb. [`WriteBackQueue::enqueue`] commits with
//! immediate durability before it returns, so an upload can be acknowledged right after it.
//! An executor loop takes due items ([`WriteBackQueue::take_due`]), uploads them, and
//! reports [`WriteBackQueue::complete`] or [`WriteBackQueue::fail`]; a failure reschedules
//! the item with exponential backoff and jitter. That loop is `executor` (feature
//! `executor`), the one every such queue is drained by; the queue itself knows nothing of
//! what its items stand for. Taken items are leased in memory so two
//! workers never get the same item; a lease that is never reported (a crashed task) expires
//! after `lease_timeout`, and after a restart every item is due again at its stored time.
//! Delivery is therefore at least once; uploads of content-addressed blobs are idempotent.
//!
//! Tables: `writeback_items` maps `(namespace, digest)` to the item's record;
//! `writeback_due` indexes `(next_attempt_ms, namespace, digest)` so taking due items reads
//! only the front of the index.
//!
//! The database reopens itself after a failed write poisoned it (a commit on a full disk):
//! see [`crate::redb_handle`]. An enqueue whose commit failed reports its error; the next
//! operation reopens and works.

#[cfg(feature = "executor")]
pub mod executor;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::redb_handle::ReopeningDb;

use crate::digest::Digest;
use crate::time::{from_ms, to_ms};

const ITEMS: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("writeback_items");
const DUE: TableDefinition<'_, (u64, &str, &str), ()> = TableDefinition::new("writeback_due");

/// Settings of a [`WriteBackQueue`]. The defaults retry quickly at first (1 s) and settle
/// at one attempt every 10 minutes during a long backend outage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Delay after the first failure, in milliseconds.
    pub base_backoff_ms: u64,
    /// Longest delay between attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// Fraction of each delay that is randomized away (0 = none, 1 = full jitter).
    pub jitter: f64,
    /// How long a taken item stays invisible to other workers without a report, in ms.
    pub lease_timeout_ms: u64,
    /// Seed of the jitter RNG; `None` seeds from the clock.
    pub seed: Option<u64>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            base_backoff_ms: 1_000,
            max_backoff_ms: 600_000,
            jitter: 0.5,
            lease_timeout_ms: 600_000,
            seed: None,
        }
    }
}

impl QueueConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), QueueError> {
        if self.base_backoff_ms == 0 || self.max_backoff_ms < self.base_backoff_ms {
            return Err(QueueError::Config(format!(
                "need 0 < base_backoff_ms ({}) <= max_backoff_ms ({})",
                self.base_backoff_ms, self.max_backoff_ms
            )));
        }
        if self.lease_timeout_ms == 0 {
            return Err(QueueError::Config(
                "lease_timeout_ms must be above 0".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(QueueError::Config(format!(
                "jitter {} is outside 0..=1",
                self.jitter
            )));
        }
        Ok(())
    }

    /// The delay before attempt `attempts + 1`, before jitter.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(40);
        let ms = self
            .base_backoff_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_backoff_ms);
        Duration::from_millis(ms)
    }
}

/// An error of the write-back queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database failed.
    #[error("write-back queue database: {0}")]
    Metadata(#[from] redb::Error),
    /// A stored record could not be decoded.
    #[error("corrupt write-back queue record for {0}")]
    CorruptRecord(String),
    /// The item is not in the queue (already completed?).
    #[error("{namespace} {digest} is not in the write-back queue")]
    NotQueued {
        /// Namespace.
        namespace: String,
        /// Blob.
        digest: Digest,
    },
    /// Bad settings.
    #[error("invalid write-back queue config: {0}")]
    Config(String),
}

from_redb_errors!(QueueError::Metadata);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ItemRecord {
    attempts: u32,
    enqueued_ms: u64,
    next_attempt_ms: u64,
    last_error: Option<String>,
}

/// A queued upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBackItem {
    /// Namespace that routes the blob to its backend.
    pub namespace: String,
    /// The blob.
    pub digest: Digest,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it was queued.
    pub enqueued: SystemTime,
    /// When it is due.
    pub next_attempt: SystemTime,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Which lease this copy of the item holds (0: none), so a worker whose lease expired
    /// cannot release the lease of the worker that took the item after it.
    lease: u64,
}

/// Depth and age of the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Items queued.
    pub depth: u64,
    /// Items due at the time asked about (being written back or waiting for a worker);
    /// the others wait for a retry's backoff or a deferred first attempt.
    pub due: u64,
    /// When the first item not yet due becomes due.
    pub next_due: Option<SystemTime>,
    /// The item queued longest ago.
    pub oldest: Option<WriteBackItem>,
}

/// The durable write-back queue.
pub struct WriteBackQueue {
    db: ReopeningDb,
    config: QueueConfig,
    rng: Mutex<SmallRng>,
    /// `(namespace, digest)` → (lease expiry in ms, lease token).
    leases: Mutex<HashMap<(String, Digest), (u64, u64)>>,
    next_lease: AtomicU64,
}

impl WriteBackQueue {
    /// Opens or creates the queue database at `path`.
    pub fn open(path: &Path, config: QueueConfig) -> Result<Self, QueueError> {
        config.validate()?;
        let db = ReopeningDb::create(path, "write-back queue")?;
        let txn = db.begin_write()?;
        txn.open_table(ITEMS)?;
        txn.open_table(DUE)?;
        txn.commit()?;
        let seed = config
            .seed
            .unwrap_or_else(|| to_ms(SystemTime::now()) ^ u64::from(std::process::id()) << 32);
        Ok(WriteBackQueue {
            db,
            config,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            leases: Mutex::new(HashMap::new()),
            next_lease: AtomicU64::new(1),
        })
    }

    /// Queues `digest` for upload; durable when this returns. Returns false if it was
    /// already queued (its schedule is left alone).
    pub fn enqueue(
        &self,
        namespace: &str,
        digest: &Digest,
        now: SystemTime,
    ) -> Result<bool, QueueError> {
        self.enqueue_after(namespace, digest, now, Duration::ZERO)
    }

    /// Like [`WriteBackQueue::enqueue`], with the first attempt due `delay` after `now`.
    pub fn enqueue_after(
        &self,
        namespace: &str,
        digest: &Digest,
        now: SystemTime,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let key = digest.to_string();
        let txn = self.db.begin_write()?;
        let fresh = {
            let mut items = txn.open_table(ITEMS)?;
            if items.get((namespace, key.as_str()))?.is_some() {
                false
            } else {
                let ms = to_ms(now);
                let due_ms =
                    ms.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                let record = ItemRecord {
                    attempts: 0,
                    enqueued_ms: ms,
                    next_attempt_ms: due_ms,
                    last_error: None,
                };
                items.insert((namespace, key.as_str()), encode(&record).as_slice())?;
                txn.open_table(DUE)?
                    .insert((due_ms, namespace, key.as_str()), ())?;
                true
            }
        };
        txn.commit()?;
        Ok(fresh)
    }

    /// Leases up to `limit` items due at `now`, earliest first.
    pub fn take_due(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<WriteBackItem>, QueueError> {
        let now_ms = to_ms(now);
        let mut leases = lock(&self.leases);
        leases.retain(|_, (expiry, _)| *expiry > now_ms);
        let txn = self.db.begin_read()?;
        let due = txn.open_table(DUE)?;
        let items = txn.open_table(ITEMS)?;
        let mut out = Vec::new();
        for entry in due.range((0u64, "", "")..=(now_ms, "\u{10ffff}", "\u{10ffff}"))? {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry?;
            let (_, namespace, digest) = k.value();
            let mut item = match load(&items, namespace, digest) {
                Ok(item) => item,
                // One bad row must not stall every upload behind it.
                Err(e) => {
                    tracing::error!(error = %e, "write-back queue: skipping an unreadable item");
                    continue;
                }
            };
            let lease_key = (item.namespace.clone(), item.digest);
            if leases.contains_key(&lease_key) {
                continue;
            }
            item.lease = self.next_lease.fetch_add(1, Ordering::Relaxed);
            let expiry = now_ms.saturating_add(self.config.lease_timeout_ms);
            leases.insert(lease_key, (expiry, item.lease));
            out.push(item);
        }
        Ok(out)
    }

    /// Removes an uploaded item.
    pub fn complete(&self, item: &WriteBackItem) -> Result<(), QueueError> {
        let key = item.digest.to_string();
        let txn = self.db.begin_write()?;
        {
            let mut items = txn.open_table(ITEMS)?;
            let record = match items.remove((item.namespace.as_str(), key.as_str()))? {
                Some(v) => decode(v.value(), &item.namespace, &key)?,
                None => return Err(not_queued(item)),
            };
            txn.open_table(DUE)?.remove((
                record.next_attempt_ms,
                item.namespace.as_str(),
                key.as_str(),
            ))?;
        }
        txn.commit()?;
        self.release(item);
        Ok(())
    }

    /// Records a failed attempt and reschedules the item; returns when it is due again.
    pub fn fail(
        &self,
        item: &WriteBackItem,
        now: SystemTime,
        error: &str,
    ) -> Result<SystemTime, QueueError> {
        let key = item.digest.to_string();
        let ns = item.namespace.as_str();
        let txn = self.db.begin_write()?;
        let next = {
            let mut items = txn.open_table(ITEMS)?;
            let mut record = match items.get((ns, key.as_str()))? {
                Some(v) => decode(v.value(), ns, &key)?,
                None => return Err(not_queued(item)),
            };
            let mut due = txn.open_table(DUE)?;
            due.remove((record.next_attempt_ms, ns, key.as_str()))?;
            record.attempts = record.attempts.saturating_add(1);
            record.next_attempt_ms = to_ms(now).saturating_add(self.jittered(record.attempts));
            record.last_error = Some(error.chars().take(500).collect());
            items.insert((ns, key.as_str()), encode(&record).as_slice())?;
            due.insert((record.next_attempt_ms, ns, key.as_str()), ())?;
            record.next_attempt_ms
        };
        txn.commit()?;
        self.release(item);
        Ok(from_ms(next))
    }

    /// Returns a leased item without counting an attempt (e.g. on shutdown). Does nothing
    /// if the lease has since expired and passed to another worker.
    pub fn release(&self, item: &WriteBackItem) {
        let mut leases = lock(&self.leases);
        let key = (item.namespace.clone(), item.digest);
        if leases
            .get(&key)
            .is_some_and(|(_, token)| *token == item.lease)
        {
            leases.remove(&key);
        }
    }

    /// Number of queued items.
    pub fn len(&self) -> Result<u64, QueueError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ITEMS)?.len()?)
    }

    /// Number of items due at `now`: being written back or waiting for a worker. The
    /// others wait for a retry's backoff or a deferred first attempt.
    pub fn due_len(&self, now: SystemTime) -> Result<u64, QueueError> {
        let txn = self.db.begin_read()?;
        let due = txn.open_table(DUE)?;
        let mut n = 0;
        for entry in due.range((0u64, "", "")..=(to_ms(now), "\u{10ffff}", "\u{10ffff}"))? {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len()? == 0)
    }

    /// Whether a worker holds an unexpired lease on the item `(namespace, digest)` now: its
    /// write-back may be under way.
    pub fn is_leased(&self, namespace: &str, digest: &Digest) -> bool {
        let now_ms = to_ms(SystemTime::now());
        lock(&self.leases)
            .get(&(namespace.to_string(), *digest))
            .is_some_and(|(expiry, _)| *expiry > now_ms)
    }

    /// Every queued item, by namespace and digest.
    pub fn list(&self) -> Result<Vec<WriteBackItem>, QueueError> {
        let txn = self.db.begin_read()?;
        let items = txn.open_table(ITEMS)?;
        let mut out = Vec::new();
        for entry in items.iter()? {
            let (k, v) = entry?;
            let (ns, digest) = k.value();
            out.push(to_item(ns, digest, &decode(v.value(), ns, digest)?)?);
        }
        Ok(out)
    }

    /// Depth, what is due at `now` and the oldest item, for operators.
    pub fn stats(&self, now: SystemTime) -> Result<QueueStats, QueueError> {
        let all = self.list()?;
        let now_ms = to_ms(now);
        let due = |i: &&WriteBackItem| to_ms(i.next_attempt) <= now_ms;
        Ok(QueueStats {
            depth: all.len() as u64,
            due: all.iter().filter(due).count() as u64,
            next_due: all.iter().filter(|i| !due(i)).map(|i| i.next_attempt).min(),
            oldest: all.into_iter().min_by_key(|i| i.enqueued),
        })
    }

    /// The backoff after `attempts` failures, with jitter, in ms.
    fn jittered(&self, attempts: u32) -> u64 {
        let base = self.config.backoff(attempts).as_millis() as u64;
        let spread = (base as f64 * self.config.jitter) as u64;
        if spread == 0 {
            return base;
        }
        base - lock(&self.rng).random_range(0..=spread)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn encode(r: &ItemRecord) -> Vec<u8> {
    postcard::to_allocvec(r).unwrap_or_default()
}

fn decode(bytes: &[u8], ns: &str, digest: &str) -> Result<ItemRecord, QueueError> {
    postcard::from_bytes(bytes).map_err(|_| QueueError::CorruptRecord(format!("{ns} {digest}")))
}

fn to_item(ns: &str, digest: &str, r: &ItemRecord) -> Result<WriteBackItem, QueueError> {
    Ok(WriteBackItem {
        namespace: ns.to_string(),
        digest: digest
            .parse()
            .map_err(|_| QueueError::CorruptRecord(format!("{ns} {digest}")))?,
        attempts: r.attempts,
        enqueued: from_ms(r.enqueued_ms),
        next_attempt: from_ms(r.next_attempt_ms),
        last_error: r.last_error.clone(),
        lease: 0,
    })
}

fn load(
    items: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    ns: &str,
    digest: &str,
) -> Result<WriteBackItem, QueueError> {
    let v = items
        .get((ns, digest))?
        .ok_or_else(|| QueueError::CorruptRecord(format!("{ns} {digest} (indexed but missing)")))?;
    to_item(ns, digest, &decode(v.value(), ns, digest)?)
}

fn not_queued(item: &WriteBackItem) -> QueueError {
    QueueError::NotQueued {
        namespace: item.namespace.clone(),
        digest: item.digest,
    }
}
