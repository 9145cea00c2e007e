//! The executor of a [`WriteBackQueue`]: the one loop that drains such a queue, whatever
//! its items stand for (an origin's blob write-backs, a build-index's tag replications).
//!
//! What an item means is a [`Job`]'s business; the executor owns the queue discipline
//! around it. A pass ([`Executor::pass`]) leases up to `batch` due items, groups them into
//! lanes ([`Job::lane`]) and runs up to `concurrency` lanes at once; the items of a lane run
//! one after another in due order. Each item is reported to the queue as soon as its attempt
//! ends: [`Step::Done`] and [`Step::Drop`] complete it, [`Step::Later`] and an error
//! reschedule it with the queue's backoff. An error also defers the rest of its lane for
//! this pass (rescheduled with backoff, not attempted), so a destination that is down costs
//! one attempt per pass, not one per item. [`Executor::run`] repeats passes until stopped:
//! at once while a pass found work, otherwise when woken (a new item was queued) or after
//! `poll`.
//!
//! A task that dies mid-pass leaves its items leased; the queue's lease timeout hands them
//! out again, so delivery stays at least once.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::sync::{Notify, watch};

use super::{QueueError, WriteBackItem, WriteBackQueue};

/// What one attempt at an item came to, short of an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    /// The work is done: the item leaves the queue and [`Job::done`] gets `T`.
    Done(T),
    /// There is nothing left to do (the work became obsolete or impossible; the job logs
    /// why): the item leaves the queue.
    Drop,
    /// Not yet (something the item waits for is still under way): the item is rescheduled
    /// with backoff, quietly, with this note as its last error. It does not defer the rest
    /// of its lane.
    Later(&'static str),
}

/// The work behind a queue's items.
pub trait Job: Sync {
    /// What the queue holds, for the executor's own log lines (`"write-back"`).
    const NAME: &'static str;
    /// What a successful attempt hands to [`Job::done`].
    type Done: Send;
    /// Why an attempt failed; its text is recorded as the item's last error.
    type Error: std::fmt::Display + Send;

    /// The lane of `item`: items of one lane run one at a time, in due order, and a failure
    /// defers the rest of the lane for the pass. `None` (the default): a lane of its own.
    fn lane(&self, item: &WriteBackItem) -> Option<String> {
        let _ = item;
        None
    }

    /// Attempts the work of one leased item.
    fn attempt(
        &self,
        item: &WriteBackItem,
    ) -> impl Future<Output = Result<Step<Self::Done>, Self::Error>> + Send;

    /// Called once a [`Step::Done`] item has left the queue (logs, metrics).
    fn done(&self, item: &WriteBackItem, outcome: Self::Done) {
        let _ = (item, outcome);
    }

    /// Called once a failed item is rescheduled, due again in `retry_in` (logs, metrics).
    /// Items deferred behind it in its lane are rescheduled without a call.
    fn failed(&self, item: &WriteBackItem, error: &Self::Error, retry_in: Duration) {
        let _ = (item, error, retry_in);
    }
}

/// What one [`Executor::pass`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Items leased (attempted or deferred).
    pub taken: usize,
    /// Items done ([`Step::Done`]).
    pub done: usize,
    /// Items dropped ([`Step::Drop`]).
    pub dropped: usize,
    /// Items rescheduled by [`Step::Later`].
    pub later: usize,
    /// Items whose attempt failed, with the error recorded in the queue.
    pub failed: Vec<(WriteBackItem, String)>,
    /// Items rescheduled unattempted because an earlier item of their lane failed.
    pub deferred: usize,
}

impl PassReport {
    fn add(&mut self, lane: PassReport) {
        self.done += lane.done;
        self.dropped += lane.dropped;
        self.later += lane.later;
        self.failed.extend(lane.failed);
        self.deferred += lane.deferred;
    }
}

/// Drains a [`WriteBackQueue`] by running a [`Job`] on its due items; see the module docs.
pub struct Executor<'a, J> {
    queue: &'a WriteBackQueue,
    job: J,
    batch: usize,
    concurrency: usize,
    clock: Box<dyn Fn() -> SystemTime + Send + Sync + 'a>,
}

impl<'a, J: Job> Executor<'a, J> {
    /// An executor that leases up to `batch` items per pass and runs up to `concurrency`
    /// lanes at once (both at least 1), on the system clock.
    pub fn new(queue: &'a WriteBackQueue, job: J, batch: usize, concurrency: usize) -> Self {
        Executor {
            queue,
            job,
            batch: batch.max(1),
            concurrency: concurrency.max(1),
            clock: Box::new(SystemTime::now),
        }
    }

    /// Reads the time (which items are due, when a failed one is due again) from `clock`
    /// instead of the system clock, so tests can step past a backoff without sleeping.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'a) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// The job.
    pub fn job(&self) -> &J {
        &self.job
    }

    /// One pass over the due items. Every per-item failure is in the report (and in the
    /// queue); only a failure of the queue itself is an error, and it abandons the rest of
    /// its lane to the lease timeout.
    pub async fn pass(&self) -> Result<PassReport, QueueError> {
        let items = self.queue.take_due((self.clock)(), self.batch)?;
        let mut report = PassReport {
            taken: items.len(),
            ..PassReport::default()
        };
        let results: Vec<_> = futures::stream::iter(self.lanes(items))
            .map(|(lane, items)| self.drain_lane(lane, items))
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for lane in results {
            report.add(lane?);
        }
        Ok(report)
    }

    /// Runs passes until `stop` turns true: the next one at once after a pass that found
    /// work, otherwise when `wake` is notified or after `poll`.
    pub async fn run(&self, wake: &Notify, poll: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let worked = match self.pass().await {
                Ok(report) => report.taken > 0,
                Err(e) => {
                    tracing::error!(error = %e, "{} queue failed", J::NAME);
                    false
                }
            };
            if worked {
                continue; // More may be due.
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// `items` grouped by lane, lanes in the order of their first item (due order).
    fn lanes(&self, items: Vec<WriteBackItem>) -> Vec<(Option<String>, Vec<WriteBackItem>)> {
        let mut lanes: Vec<(Option<String>, Vec<WriteBackItem>)> = Vec::new();
        let mut named: HashMap<String, usize> = HashMap::new();
        for item in items {
            let Some(lane) = self.job.lane(&item) else {
                lanes.push((None, vec![item]));
                continue;
            };
            match named.get(&lane) {
                Some(&i) => lanes[i].1.push(item),
                None => {
                    named.insert(lane.clone(), lanes.len());
                    lanes.push((Some(lane), vec![item]));
                }
            }
        }
        lanes
    }

    /// Runs one lane's items in order, reporting each to the queue as it ends.
    async fn drain_lane(
        &self,
        lane: Option<String>,
        items: Vec<WriteBackItem>,
    ) -> Result<PassReport, QueueError> {
        let mut report = PassReport::default();
        let mut lane_failed: Option<String> = None;
        for item in items {
            if let Some(why) = &lane_failed {
                self.queue.fail(&item, (self.clock)(), why)?;
                report.deferred += 1;
                continue;
            }
            match self.job.attempt(&item).await {
                Ok(Step::Done(outcome)) => {
                    self.queue.complete(&item)?;
                    self.job.done(&item, outcome);
                    report.done += 1;
                }
                Ok(Step::Drop) => {
                    self.queue.complete(&item)?;
                    report.dropped += 1;
                }
                Ok(Step::Later(note)) => {
                    self.queue.fail(&item, (self.clock)(), note)?;
                    report.later += 1;
                }
                Err(e) => {
                    let message = e.to_string();
                    let now = (self.clock)();
                    let next = self.queue.fail(&item, now, &message)?;
                    self.job
                        .failed(&item, &e, next.duration_since(now).unwrap_or_default());
                    if let Some(lane) = &lane {
                        lane_failed = Some(format!("{lane} failed: {message}"));
                    }
                    report.failed.push((item, message));
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::Digest;
    use crate::queue::QueueConfig;

    /// What the scripted job does with an item, by namespace.
    #[derive(Clone, Copy)]
    enum Script {
        Done,
        Drop,
        Later,
        Fail,
    }

    /// A job that follows a script, records what it attempted and what it was told, and
    /// keeps count of how many attempts ran at once.
    #[derive(Default)]
    struct Scripted {
        script: HashMap<String, Script>,
        /// Lane of an item: the namespace up to its first `/`, if `laned`.
        laned: bool,
        /// How long each attempt takes.
        work: Duration,
        attempted: Mutex<Vec<String>>,
        done: Mutex<Vec<String>>,
        failed: Mutex<Vec<(String, Duration)>>,
        running: AtomicUsize,
        most_running: AtomicUsize,
    }

    impl Scripted {
        fn new(script: &[(&str, Script)]) -> Self {
            Scripted {
                script: script.iter().map(|(n, s)| ((*n).to_string(), *s)).collect(),
                ..Scripted::default()
            }
        }
    }

    #[derive(Debug)]
    struct Boom;

    impl std::fmt::Display for Boom {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("boom")
        }
    }

    impl Job for Scripted {
        const NAME: &'static str = "test";
        type Done = usize;
        type Error = Boom;

        fn lane(&self, item: &WriteBackItem) -> Option<String> {
            self.laned
                .then(|| item.namespace.split('/').next().unwrap().to_string())
        }

        async fn attempt(&self, item: &WriteBackItem) -> Result<Step<usize>, Boom> {
            self.attempted.lock().unwrap().push(item.namespace.clone());
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_running.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.work).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            match self
                .script
                .get(&item.namespace)
                .copied()
                .unwrap_or(Script::Done)
            {
                Script::Done => Ok(Step::Done(item.namespace.len())),
                Script::Drop => Ok(Step::Drop),
                Script::Later => Ok(Step::Later("not yet")),
                Script::Fail => Err(Boom),
            }
        }

        fn done(&self, item: &WriteBackItem, outcome: usize) {
            assert_eq!(outcome, item.namespace.len());
            self.done.lock().unwrap().push(item.namespace.clone());
        }

        fn failed(&self, item: &WriteBackItem, error: &Boom, retry_in: Duration) {
            assert_eq!(error.to_string(), "boom");
            self.failed
                .lock()
                .unwrap()
                .push((item.namespace.clone(), retry_in));
        }
    }

    fn queue(dir: &tempfile::TempDir) -> WriteBackQueue {
        let config = QueueConfig {
            base_backoff_ms: 1_000,
            jitter: 0.0,
            seed: Some(7),
            ..QueueConfig::default()
        };
        WriteBackQueue::open(&dir.path().join("q.redb"), config).unwrap()
    }

    /// Queues one item per namespace, `ms` apart from `t0` so due order is their order.
    fn enqueue(queue: &WriteBackQueue, t0: SystemTime, namespaces: &[&str]) {
        for (i, ns) in namespaces.iter().enumerate() {
            let at = t0 + Duration::from_millis(i as u64);
            queue
                .enqueue(ns, &Digest::sha256_of(ns.as_bytes()), at)
                .unwrap();
        }
    }

    fn queued(queue: &WriteBackQueue) -> HashMap<String, (u32, Option<String>)> {
        queue
            .list()
            .unwrap()
            .into_iter()
            .map(|i| (i.namespace, (i.attempts, i.last_error)))
            .collect()
    }

    #[tokio::test]
    async fn each_outcome_reaches_the_queue_and_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let queue = queue(&dir);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        enqueue(&queue, t0, &["done", "drop", "later", "fail"]);
        let job = Scripted::new(&[
            ("drop", Script::Drop),
            ("later", Script::Later),
            ("fail", Script::Fail),
        ]);
        let clock = Arc::new(Mutex::new(t0 + Duration::from_secs(1)));
        let now = clock.clone();
        let executor = Executor::new(&queue, job, 10, 4).with_clock(move || *now.lock().unwrap());

        let report = executor.pass().await.unwrap();
        assert_eq!((report.taken, report.done, report.dropped), (4, 1, 1));
        assert_eq!((report.later, report.deferred), (1, 0));
        let failed: Vec<_> = report
            .failed
            .iter()
            .map(|(i, e)| (&*i.namespace, &**e))
            .collect();
        assert_eq!(failed, [("fail", "boom")]);
        assert_eq!(*executor.job().done.lock().unwrap(), ["done"]);
        assert_eq!(
            *executor.job().failed.lock().unwrap(),
            [("fail".to_string(), Duration::from_secs(1))]
        );
        let left = queued(&queue);
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(left["later"], (1, Some("not yet".into())));
        assert_eq!(left["fail"], (1, Some("boom".into())));

        // Nothing is due again until the backoff has passed, on the executor's clock.
        *clock.lock().unwrap() += Duration::from_millis(900);
        assert_eq!(executor.pass().await.unwrap(), PassReport::default());
        *clock.lock().unwrap() += Duration::from_millis(200);
        assert_eq!(executor.pass().await.unwrap().taken, 2);
    }

    #[tokio::test]
    async fn a_failure_defers_the_rest_of_its_lane_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let queue = queue(&dir);
        let t0 = SystemTime::now() - Duration::from_secs(10);
        enqueue(
            &queue,
            t0,
            &["a/1", "b/1", "a/2", "a/3", "b/2", "a/4", "c/1"],
        );
        let mut job = Scripted::new(&[("a/2", Script::Fail), ("c/1", Script::Later)]);
        job.laned = true;
        let executor = Executor::new(&queue, job, 10, 4);

        let report = executor.pass().await.unwrap();
        assert_eq!((report.taken, report.done, report.later), (7, 3, 1));
        assert_eq!((report.failed.len(), report.deferred), (1, 2));
        let mut attempted = executor.job().attempted.lock().unwrap().clone();
        attempted.sort();
        assert_eq!(attempted, ["a/1", "a/2", "b/1", "b/2", "c/1"]);
        let left = queued(&queue);
        assert_eq!(left["a/2"], (1, Some("boom".into())));
        for deferred in ["a/3", "a/4"] {
            assert_eq!(left[deferred], (1, Some("a failed: boom".into())));
        }
        assert_eq!(left["c/1"], (1, Some("not yet".into())));
        assert_eq!(left.len(), 4, "{left:?}");
        // The deferred items were not the job's failures.
        assert_eq!(executor.job().failed.lock().unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lanes_run_at_once_up_to_the_limit_and_a_lane_one_item_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let queue = queue(&dir);
        let t0 = SystemTime::now() - Duration::from_secs(10);
        enqueue(&queue, t0, &["x/1", "x/2", "x/3", "y/1", "y/2", "y/3"]);
        let job = Scripted {
            work: Duration::from_millis(30),
            ..Scripted::default()
        };
        // Six lanes of one item, three at once; the batch leaves one item for the next pass.
        let executor = Executor::new(&queue, job, 5, 3);
        assert_eq!(executor.pass().await.unwrap().done, 5);
        assert_eq!(executor.job().most_running.load(Ordering::SeqCst), 3);
        assert_eq!(executor.pass().await.unwrap().done, 1);
        assert!(queue.is_empty().unwrap());

        // Two lanes of three items: two at once, never two of one lane.
        enqueue(&queue, t0, &["x/1", "x/2", "x/3", "y/1", "y/2", "y/3"]);
        let mut job = Scripted {
            work: Duration::from_millis(30),
            ..Scripted::default()
        };
        job.laned = true;
        let executor = Executor::new(&queue, job, 10, 4);
        assert_eq!(executor.pass().await.unwrap().done, 6);
        assert_eq!(executor.job().most_running.load(Ordering::SeqCst), 2);
        let attempted = executor.job().attempted.lock().unwrap().clone();
        let x: Vec<_> = attempted.iter().filter(|n| n.starts_with('x')).collect();
        assert_eq!(x, ["x/1", "x/2", "x/3"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_drains_when_woken_and_ends_when_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(queue(&dir));
        let wake = Arc::new(Notify::new());
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn({
            let (queue, wake) = (queue.clone(), wake.clone());
            async move {
                let executor = Executor::new(&queue, Scripted::default(), 4, 2);
                // Polling would take an hour: only the wake-up can start the pass.
                executor.run(&wake, Duration::from_secs(3600), stop).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        enqueue(&queue, SystemTime::now(), &["a", "b", "c", "d", "e"]);
        wake.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !queue.is_empty().unwrap() {
            assert!(tokio::time::Instant::now() < deadline, "not drained");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
}
