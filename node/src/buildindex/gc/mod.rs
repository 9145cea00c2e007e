//! Garbage collection: delete every blob no tag reaches and nobody used lately.
//!
//! One run, on the build-index ring owner of [`GC_KEY`] (so one at a time cluster-wide; a
//! second request joins the run in progress and gets its progress):
//! 1. **mark** ([`mark`]): the roots are every tag of every build-index node
//!    ([`inventory::roots`]); from each, the manifest graph is followed, reading manifests
//!    from the origins; then referrers of marked manifests, found in the inventory, to a
//!    fixpoint.
//! 2. **inventory** ([`inventory`]): what every origin's store and every writable backend
//!    holds, with each copy's last use.
//! 3. **plan** ([`plan`]): unmarked blobs not used since `cutoff = start - grace` go.
//! 4. **sweep** ([`sweep`]): the plan is stored in `gc.redb` ([`journal`]) before anything
//!    is deleted; each blob is purged with the guard `unused_since_ms = cutoff`, so a copy
//!    a push wrote or touched after the cutoff (the `PutTag` dependency check touches each
//!    blob on the origins) is kept. Each outcome is journaled; a run that stopped (crash,
//!    an origin down) is resumed by the next request or when the node starts again.
//!
//! A dry run marks and plans, and neither stores a plan nor deletes anything.

pub mod inventory;
pub mod journal;
pub mod mark;
pub mod plan;
pub mod purger;
pub mod sweep;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kraken_membership::Role;
use kraken_membership::ring::tag_key;
use kraken_registry_gateway::media;
use kraken_storage::Digest;
use kraken_storage::time::now_ms;
use tokio::sync::watch;

use super::BuildIndex;
use crate::fetch::{fetch_bytes, origin_metainfo};
use crate::proto::{
    DEFAULT_NAMESPACE, ErrorKind, GC_KEY, GcPhase, GcReport, RemoteError, Response,
};
use journal::{Journal, RunRecord};
use mark::ManifestSource;

/// A build-index's garbage collection state: the journal and the run in progress (or the
/// last one that ended).
pub struct Collector {
    journal: Journal,
    current: Mutex<Option<watch::Receiver<GcReport>>>,
}

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Mark and plan; store and delete nothing.
    DryRun,
    /// Mark, plan, store the plan, sweep (or resume a stored plan).
    Full,
    /// Mark, plan, store the plan (or find one stored), and stop.
    PlanOnly,
}

fn ended(r: &GcReport) -> bool {
    matches!(r.phase, GcPhase::Done | GcPhase::Interrupted)
}

impl Collector {
    /// Opens the journal.
    pub fn open(journal: Journal) -> Self {
        Collector {
            journal,
            current: Mutex::new(None),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<watch::Receiver<GcReport>>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a stored plan waits to be resumed.
    pub fn has_plan(&self) -> bool {
        matches!(self.journal.load(), Ok(Some(_)))
    }
}

/// The build-index node that runs garbage collection.
pub fn gc_owner(cluster: &crate::client::Cluster) -> Option<kraken_membership::Member> {
    cluster
        .owners_of_key(Role::BuildIndex, &tag_key(GC_KEY), 1)
        .into_iter()
        .next()
}

impl BuildIndex {
    /// Starts a run (or joins the one in progress) and waits up to `wait` for it to end.
    pub async fn gc(
        &self,
        dry_run: bool,
        grace_ms: Option<u64>,
        wait: Duration,
    ) -> Result<Response, RemoteError> {
        let owner = gc_owner(&self.inner.cluster);
        if owner.as_ref().is_some_and(|o| o.id != self.inner.me) {
            let o = owner.map(|o| o.id.to_string()).unwrap_or_default();
            return Err(RemoteError::new(
                ErrorKind::WrongNode,
                format!("garbage collection runs on {o}, not {}", self.inner.me),
            ));
        }
        let grace = grace_ms.unwrap_or(self.inner.config.gc_grace_secs.saturating_mul(1000));
        let mode = if dry_run { Mode::DryRun } else { Mode::Full };
        let rx = self.start_gc(mode, grace);
        Ok(Response::Gc(wait_for(rx, wait).await))
    }

    /// Marks, plans and stores the plan, and stops there: the next run sweeps it. What a
    /// run that crashed right after planning leaves; tests put a push in between.
    pub async fn gc_plan_only(&self, grace_ms: u64) -> GcReport {
        let rx = self.start_gc(Mode::PlanOnly, grace_ms);
        wait_for(rx, Duration::from_secs(86_400)).await
    }

    /// The report of run `run_id`, waiting up to `wait` for it to end.
    pub async fn gc_status(&self, run_id: u64, wait: Duration) -> Result<Response, RemoteError> {
        let rx = self.inner.gc.current().clone();
        match rx {
            Some(rx) if rx.borrow().run_id == run_id => Ok(Response::Gc(wait_for(rx, wait).await)),
            _ => Err(RemoteError::new(
                ErrorKind::NotFound,
                format!("garbage collection run {run_id} is unknown here"),
            )),
        }
    }

    /// The run in progress, or a new one (resuming a stored plan unless a dry run).
    fn start_gc(&self, mode: Mode, grace_ms: u64) -> watch::Receiver<GcReport> {
        let mut current = self.inner.gc.current();
        if let Some(rx) = current.as_ref()
            && !ended(&rx.borrow())
        {
            return rx.clone();
        }
        let start = now_ms();
        let mut report = GcReport::new(
            start,
            mode == Mode::DryRun,
            GcPhase::Marking,
            start.saturating_sub(grace_ms),
        );
        // Read before the first answer, so a resumed run answers with its own id at once.
        let stored = match mode {
            Mode::DryRun => Ok(None),
            Mode::Full | Mode::PlanOnly => self.inner.gc.journal.load(),
        };
        if let Ok(Some((run, entries))) = &stored {
            report.resumed = true;
            report.run_id = run.run_id;
            report.cutoff_ms = run.cutoff_ms;
            report.roots = run.roots;
            report.marked = run.marked;
            report.kept_recent = run.kept_recent;
            let all: Vec<_> = entries.iter().map(|(d, e)| (*d, e.length)).collect();
            report.set_planned(&all);
        }
        let (tx, rx) = watch::channel(report);
        *current = Some(rx.clone());
        let bi = self.clone();
        crate::spawn(async move { bi.run_gc(tx, mode, stored).await });
        rx
    }

    async fn run_gc(
        &self,
        tx: watch::Sender<GcReport>,
        mode: Mode,
        stored: Result<Option<journal::StoredPlan>, journal::JournalError>,
    ) {
        match stored {
            Ok(Some((_, entries))) => {
                if mode == Mode::PlanOnly {
                    tx.send_modify(|r| r.phase = GcPhase::Done);
                } else {
                    self.sweep_plan(&tx, &entries).await;
                }
            }
            Ok(None) => match self.mark_and_plan(&tx, mode).await {
                Ok(Some(entries)) => self.sweep_plan(&tx, &entries).await,
                Ok(None) => tx.send_modify(|r| r.phase = GcPhase::Done),
                Err(e) => tx.send_modify(|r| {
                    r.add_error(e.message);
                    r.phase = GcPhase::Interrupted;
                }),
            },
            Err(e) => tx.send_modify(|r| {
                r.add_error(e.to_string());
                r.phase = GcPhase::Interrupted;
            }),
        }
        let r = tx.borrow().clone();
        tracing::info!(
            run = r.run_id, dry_run = r.dry_run, resumed = r.resumed, phase = ?r.phase,
            roots = r.roots, marked = r.marked, planned = r.planned_count, purged = r.purged,
            freed_bytes = r.freed_bytes, kept_recent = r.kept_recent,
            kept_at_sweep = r.kept_at_sweep, errors = r.error_count,
            "garbage collection ended"
        );
    }

    /// Marks and plans; stores the plan and returns its entries for a run that sweeps.
    async fn mark_and_plan(
        &self,
        tx: &watch::Sender<GcReport>,
        mode: Mode,
    ) -> Result<Option<Vec<(Digest, journal::Entry)>>, RemoteError> {
        let source = OriginSource(&self.inner.cluster);
        let roots = inventory::roots(self).await?;
        tx.send_modify(|r| r.roots = roots.len() as u64);
        let mut marked = BTreeSet::new();
        for (repo, tag, digest) in &roots {
            match mark::mark_from(&source, repo, *digest, &mut marked).await {
                Ok(()) => {}
                // A mirror's blobs are a cache of its upstream (which may be down): what
                // goes is fetched again. Anything else unread could be a live image's.
                Err(e) if self.mirrors_upstream(repo) => tx.send_modify(|r| {
                    r.add_error(format!("{repo}:{tag} (a mirror) not walked: {}", e.message));
                }),
                Err(e) => return Err(e),
            }
        }
        tx.send_modify(|r| {
            r.marked = marked.len() as u64;
            r.phase = GcPhase::Inventory;
        });
        let mut subjects = BTreeMap::new();
        let (mut inv, mut errors) = inventory::origin_blobs(self, &mut subjects).await;
        errors.extend(inventory::backend_blobs(self, &mut inv, &mut subjects).await);
        mark::mark_referrers(&source, DEFAULT_NAMESPACE, &subjects, &mut marked).await?;
        let cutoff = tx.borrow().cutoff_ms;
        let planned = plan::plan(&inv, &marked, cutoff);
        tx.send_modify(|r| {
            r.marked = marked.len() as u64;
            r.kept_recent = planned.kept_recent;
            r.set_planned(&planned.sweep);
            for e in errors {
                r.add_error(e);
            }
        });
        if mode == Mode::DryRun {
            return Ok(None);
        }
        let r = tx.borrow().clone();
        let record = RunRecord {
            run_id: r.run_id,
            cutoff_ms: r.cutoff_ms,
            roots: r.roots,
            marked: r.marked,
            kept_recent: r.kept_recent,
        };
        self.inner
            .gc
            .journal
            .store(&record, &planned.sweep)
            .map_err(super::internal)?;
        if mode == Mode::PlanOnly {
            return Ok(None);
        }
        let entries = self.inner.gc.journal.load().map_err(super::internal)?;
        Ok(Some(entries.map(|(_, e)| e).unwrap_or_default()))
    }

    async fn sweep_plan(&self, tx: &watch::Sender<GcReport>, entries: &[(Digest, journal::Entry)]) {
        tx.send_modify(|r| r.phase = GcPhase::Sweeping);
        let mut report = tx.borrow().clone();
        let purger = purger::ClusterPurger(&self.inner.cluster);
        let pending = sweep::sweep(
            &purger,
            &self.inner.gc.journal,
            report.cutoff_ms,
            entries,
            &mut report,
            |r| {
                tx.send_replace(r.clone());
            },
        )
        .await;
        if pending == 0
            && let Err(e) = self.inner.gc.journal.clear()
        {
            report.add_error(e.to_string());
        }
        report.phase = if pending == 0 {
            GcPhase::Done
        } else {
            GcPhase::Interrupted
        };
        tx.send_replace(report);
    }

    fn mirrors_upstream(&self, repo: &str) -> bool {
        self.inner
            .router
            .route(repo)
            .is_ok_and(|b| b.registry().is_some())
    }

    /// Resumes a stored plan once the node starts, then runs a collection every
    /// `gc_interval_secs` while this node owns [`GC_KEY`] (until `stop`).
    pub(super) async fn gc_schedule(self, mut stop: watch::Receiver<bool>) {
        let interval = self.inner.config.gc_interval_secs;
        let grace = self.inner.config.gc_grace_secs.saturating_mul(1000);
        // Let the view fill before resuming (the purges need the origins).
        let settle = Duration::from_secs(5);
        tokio::select! {
            _ = tokio::time::sleep(settle) => {}
            _ = stop.changed() => return,
        }
        if self.inner.gc.has_plan() {
            tracing::info!("resuming the interrupted garbage collection");
            self.start_gc(Mode::Full, grace);
        }
        if interval == 0 {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(interval)) => {}
                _ = stop.changed() => return,
            }
            if gc_owner(&self.inner.cluster).is_some_and(|o| o.id == self.inner.me) {
                self.start_gc(Mode::Full, grace);
            }
        }
    }
}

/// Marks `digests` used now on every live origin that holds them (the `PutTag` dependency
/// check): a collection whose cutoff is earlier keeps them. Best effort: an origin that
/// does not answer is logged (the purge keeps a blob any other origin was touched on).
pub async fn touch(cluster: &crate::client::Cluster, digests: Vec<Digest>) {
    let origins = cluster.live_addrs(Role::Origin);
    let request = crate::proto::Request::TouchBlobs { digests };
    let calls = origins.iter().map(|addr| cluster.call(*addr, &request));
    for (addr, result) in origins.iter().zip(futures::future::join_all(calls).await) {
        if let Err(e) = result {
            tracing::warn!(origin = %addr, error = %e, "could not mark a tag's blobs used");
        }
    }
}

async fn wait_for(mut rx: watch::Receiver<GcReport>, wait: Duration) -> GcReport {
    let _ = tokio::time::timeout(wait, rx.wait_for(ended)).await;
    rx.borrow().clone()
}

/// Reads manifests from the origins (reading through from the backend routed by the
/// namespace when they lack one).
struct OriginSource<'a>(&'a crate::client::Cluster);

impl ManifestSource for OriginSource<'_> {
    async fn manifest(
        &self,
        namespace: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<u8>>, RemoteError> {
        match origin_metainfo(self.0, namespace, digest).await {
            Ok(m) if m.length() > media::MAX_MANIFEST_LEN => Ok(None),
            Ok(_) => fetch_bytes(self.0, digest, media::MAX_MANIFEST_LEN)
                .await
                .map(Some),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
