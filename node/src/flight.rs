//! Single flight: concurrent callers of one key share one run of the work (an origin's
//! read-through of a digest, a build-index owner's upstream lookup of a tag).
//!
//! The first caller starts the work as its own task (so a caller that gives up does not
//! cancel it for the others); every caller waits on a watch channel for the outcome. The
//! key is forgotten before the outcome is sent, so the next call after it runs the work
//! again (a failure is retried, an answer is re-asked).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

/// Work in flight by key.
pub(crate) struct Flights<K, T> {
    running: Mutex<HashMap<K, watch::Receiver<Option<T>>>>,
}

impl<K, T> Default for Flights<K, T> {
    fn default() -> Self {
        Flights {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, T> Flights<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// The outcome of `key`'s work: joins the run in flight, or starts `work` (as a task)
    /// if none is. `None` only if the task died without an outcome (it panicked).
    pub(crate) async fn run<F>(
        self: &std::sync::Arc<Self>,
        key: K,
        work: impl FnOnce() -> F,
    ) -> Option<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut rx = self.join(key, work);
        rx.wait_for(Option::is_some).await.ok()?.clone()
    }

    /// Like [`Flights::run`], but hands back the channel the outcome arrives on, for a
    /// caller that waits with a deadline of its own.
    pub(crate) fn join<F>(
        self: &std::sync::Arc<Self>,
        key: K,
        work: impl FnOnce() -> F,
    ) -> watch::Receiver<Option<T>>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = running.get(&key) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        running.insert(key.clone(), rx.clone());
        let (flights, work) = (self.clone(), work());
        crate::spawn(async move {
            let outcome = work.await;
            flights
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            tx.send_replace(Some(outcome));
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_the_next_call_runs_again() {
        let flights: Arc<Flights<&str, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let call = |key| {
            let (flights, runs) = (flights.clone(), runs.clone());
            async move {
                flights
                    .run(key, || async move {
                        let n = runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        u32::try_from(n).unwrap_or(u32::MAX)
                    })
                    .await
            }
        };
        let outcomes = futures::future::join_all((0..20).map(|_| call("a"))).await;
        assert!(outcomes.iter().all(|o| *o == Some(0)), "{outcomes:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Done: the next call runs the work again; another key is its own.
        assert_eq!(call("a").await, Some(1));
        assert_eq!(call("b").await, Some(2));
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_cancel_the_others() {
        let flights: Arc<Flights<u8, &str>> = Arc::default();
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            "done"
        };
        let first = tokio::time::timeout(Duration::from_millis(10), flights.run(1, slow)).await;
        assert!(first.is_err());
        assert_eq!(
            flights.run(1, || async { "second run" }).await,
            Some("done")
        );
    }
}
