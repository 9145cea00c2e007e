//! Sweep: purge each pending entry of the stored plan, guarded by the run's cutoff, and
//! record each outcome in the journal as it happens, so a sweep stopped anywhere resumes
//! at the first entry still pending.

use kraken_storage::Digest;

use super::journal::{Entry, EntryState, Journal};
use crate::proto::GcReport;

/// What one guarded purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purged {
    /// The blob left the cluster.
    Gone,
    /// An origin kept it: used at or after the guard's time.
    Kept,
}

/// The purge the sweep calls; the cluster's is `crate::purge`.
pub trait Purger {
    /// Why a purge did not finish (it is run again by the next sweep).
    type Error: std::fmt::Display;

    /// Removes `digest` from the cluster unless some copy was used at or after
    /// `unused_since_ms`.
    fn purge(
        &self,
        digest: &Digest,
        unused_since_ms: u64,
    ) -> impl Future<Output = Result<Purged, Self::Error>> + Send;
}

/// Purges every pending entry of `entries` (the journal's plan), updating `report` (and
/// calling `progress` with it) after each; failures are recorded in the report's errors and
/// leave their entry pending. Returns the entries still pending.
pub async fn sweep(
    purger: &impl Purger,
    journal: &Journal,
    cutoff_ms: u64,
    entries: &[(Digest, Entry)],
    report: &mut GcReport,
    mut progress: impl FnMut(&GcReport),
) -> usize {
    let mut pending = 0;
    for (digest, entry) in entries {
        match entry.state {
            EntryState::Purged => {
                report.purged += 1;
                report.freed_bytes += entry.length;
                continue;
            }
            EntryState::Kept => {
                report.kept_at_sweep += 1;
                continue;
            }
            EntryState::Pending => {}
        }
        let state = match purger.purge(digest, cutoff_ms).await {
            Ok(Purged::Gone) => {
                report.purged += 1;
                report.freed_bytes += entry.length;
                EntryState::Purged
            }
            Ok(Purged::Kept) => {
                report.kept_at_sweep += 1;
                EntryState::Kept
            }
            Err(e) => {
                report.add_error(format!("purging {digest}: {e}"));
                pending += 1;
                continue;
            }
        };
        let next = Entry {
            length: entry.length,
            state,
        };
        if let Err(e) = journal.set(digest, next) {
            // The purge is idempotent: a resumed sweep purges it again.
            report.add_error(format!("recording {digest}: {e}"));
        }
        progress(report);
    }
    pending
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;
    use crate::buildindex::gc::journal::RunRecord;
    use crate::proto::GcPhase;

    /// Purges in memory: `down` fail, `used` are kept.
    #[derive(Default)]
    struct Fake {
        down: HashSet<Digest>,
        used: HashSet<Digest>,
        calls: Mutex<Vec<(Digest, u64)>>,
    }

    impl Purger for Fake {
        type Error = String;
        async fn purge(&self, d: &Digest, since: u64) -> Result<Purged, String> {
            self.calls.lock().unwrap().push((*d, since));
            if self.down.contains(d) {
                return Err("origin down".into());
            }
            Ok(if self.used.contains(d) {
                Purged::Kept
            } else {
                Purged::Gone
            })
        }
    }

    fn report() -> GcReport {
        GcReport::new(1, false, GcPhase::Sweeping, 50)
    }

    #[tokio::test]
    async fn a_failed_purge_stays_pending_and_the_next_sweep_does_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("gc.redb")).unwrap();
        let d = |s: &str| Digest::sha256_of(s.as_bytes());
        let (a, b, c) = (d("a"), d("b"), d("c"));
        let run = RunRecord {
            run_id: 1,
            cutoff_ms: 50,
            roots: 0,
            marked: 0,
            kept_recent: 0,
        };
        journal.store(&run, &[(a, 10), (b, 20), (c, 30)]).unwrap();

        let fake = Fake {
            down: [b].into(),
            used: [c].into(),
            ..Fake::default()
        };
        let (_, entries) = journal.load().unwrap().unwrap();
        let mut r = report();
        let left = sweep(&fake, &journal, 50, &entries, &mut r, |_| {}).await;
        assert_eq!(left, 1);
        assert_eq!((r.purged, r.freed_bytes, r.kept_at_sweep), (1, 10, 1));
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(
            fake.calls
                .lock()
                .unwrap()
                .iter()
                .all(|(_, since)| *since == 50)
        );

        // The origin is back: only b is purged again; the totals cover the whole run.
        let fake = Fake::default();
        let (_, entries) = journal.load().unwrap().unwrap();
        let mut r = report();
        let left = sweep(&fake, &journal, 50, &entries, &mut r, |_| {}).await;
        assert_eq!(left, 0);
        assert_eq!(*fake.calls.lock().unwrap(), vec![(b, 50)]);
        assert_eq!((r.purged, r.freed_bytes, r.kept_at_sweep), (2, 30, 1));
        assert!(r.errors.is_empty());
    }
}
