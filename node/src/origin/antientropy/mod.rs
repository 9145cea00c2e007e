//! Anti-entropy: origins compare what they hold with their co-owners and copy what is
//! missing, until every blob is on each of its owners.
//!
//! **What a pass does** ([`Origin::anti_entropy_pass`]). It lists the complete local blobs
//! once and computes their owners on the current origin ring ([`ledger`]). For each
//! co-owner P (an origin owning at least one blob with this one) it asks P for the
//! summary of the blobs P holds whose owners include both P and this origin, per bucket
//! of the digest space ([`summary`]; `Request::ReplicaSummary`), and compares it with its
//! own summary of the same set. Equal buckets mean P holds all of ours there; a bucket P
//! holds nothing of is sent whole; only the buckets that differ on both sides are listed
//! (`Request::ReplicaDigests`, paged) to find what P lacks. What P lacks is pushed
//! (`Origin::push`, the streaming ingest, which answers at once for a blob the receiver
//! holds). P's own pass covers the other direction. Blobs held here that this origin
//! does not own are offered to their owners; once every owner holds such a blob it is
//! not offered again until the ring changes. At most `repair_concurrency` peers are
//! compared, and copies made, at once.
//!
//! **Cost.** In steady state, one small RPC per co-owner (about 9 KiB of summary), and
//! on each side a scan of the local store and, when the store or the ring changed since
//! the last one, an owner computation per blob (about 3.4 µs per blob with 10 origins,
//! 1.6 µs with 3; the ledger is cached by ring and listing). Lists and copies cost only
//! where something differs.
//!
//! **When** ([`schedule`]): at start, every `[origin] anti_entropy_interval_secs` (60 s;
//! 0: only on ring changes and `krakenctl repair`), and `repair_delay_ms` after any
//! change of the origin ring view — members, generations, addresses, weights, suspicion —
//! whether or not the last pass failed. `Request::Repair` runs one now.
//!
//! **What it guarantees.** Views of the ring may differ between two origins for a
//! moment; their summaries then differ and the pass falls back to lists, which is still
//! correct (a blob pushed to an origin that holds it costs one round trip). Once views
//! agree and origins are reachable, a pass on each holder brings every blob it holds to
//! all of its owners. A blob no origin holds is not found by anti-entropy (its backend
//! has it; the next read, or `krakenctl repair --digest`, reads it through).
//!
//! **Under-replication** is counted after the pass's copies: a local blob some owner is
//! not known to hold (an owner that did not answer counts as lacking it). It is the gauge
//! `kraken_origin_under_replicated_blobs` and `Request::ReplicaStatus`; a blob short on
//! several holders is counted by each.

pub mod ledger;
mod pass;
pub mod schedule;
pub mod summary;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kraken_membership::{ClusterView, NodeId, Role};
use kraken_storage::Digest;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use super::Origin;
use crate::metrics::Metrics;
use crate::proto::ReplicaStatus;
use schedule::PassSchedule;

/// What identifies the origin ring for anti-entropy: every member's id, generation,
/// address, weight and suspicion. Any change of it is a reason for a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingSignature(Vec<(NodeId, u64, SocketAddr, u32, bool)>);

impl RingSignature {
    /// The signature of `view`'s origin ring.
    pub fn of(view: &ClusterView) -> Self {
        RingSignature(
            view.ring(Role::Origin)
                .members()
                .iter()
                .map(|m| {
                    let suspected = view.is_suspected(&m.id);
                    (m.id.clone(), m.generation, m.quic_addr, m.weight, suspected)
                })
                .collect(),
        )
    }
}

/// What a cached ledger was built from: the ring, and a hash of the store's listing.
type LedgerKey = (RingSignature, [u8; 32]);

/// The anti-entropy counters and gauge in the node's registry.
#[derive(Debug, Clone, Default)]
struct AeMetrics {
    under_replicated: Gauge,
    passes: Counter,
    copies: Counter,
    failures: Counter,
}

/// Anti-entropy's state in an origin.
#[derive(Debug)]
pub(super) struct AntiEntropy {
    /// One pass at a time (periodic, on a ring change, or asked for by `Repair`).
    pass_lock: tokio::sync::Mutex<()>,
    /// Blobs not owned here that every owner held, on the ring of this signature.
    handed_off: Mutex<(RingSignature, HashSet<Digest>)>,
    /// The last pass: when it ended and what it left.
    last: Mutex<Option<(Instant, ReplicaStatus)>>,
    /// The last ledger built, by ring and by a hash of the store listing it came from.
    ledger: Mutex<Option<(LedgerKey, Arc<ledger::Ledger>)>>,
    metrics: AeMetrics,
}

impl AntiEntropy {
    /// The state, its metrics registered in `metrics`.
    pub(super) fn new(metrics: &Metrics) -> Self {
        let m = AeMetrics::default();
        metrics.register(|r| {
            r.register(
                "kraken_origin_under_replicated_blobs",
                "Blobs this origin holds that some owner lacked after the last anti-entropy pass",
                m.under_replicated.clone(),
            );
            for (name, help, counter) in [
                ("passes", "Anti-entropy passes run", &m.passes),
                (
                    "copies",
                    "Blobs copied to an owner that lacked them by anti-entropy and repair",
                    &m.copies,
                ),
                (
                    "failures",
                    "Copies, reads and peer comparisons of anti-entropy and repair that failed",
                    &m.failures,
                ),
            ] {
                let name = format!("kraken_origin_anti_entropy_{name}");
                r.register(name, help, counter.clone());
            }
        });
        AntiEntropy {
            pass_lock: tokio::sync::Mutex::new(()),
            handed_off: Mutex::new((RingSignature::default(), HashSet::new())),
            last: Mutex::new(None),
            ledger: Mutex::new(None),
            metrics: m,
        }
    }

    /// The status `Request::ReplicaStatus` answers.
    pub(super) fn status(&self) -> ReplicaStatus {
        let passes = self.metrics.passes.get();
        match &*self.last.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((at, s)) => ReplicaStatus {
                passes,
                last_pass_secs_ago: Some(at.elapsed().as_secs()),
                ..s.clone()
            },
            None => ReplicaStatus {
                passes,
                ..ReplicaStatus::default()
            },
        }
    }
}

/// Runs anti-entropy passes when [`PassSchedule`] says, until `stop`.
pub async fn run(origin: Origin, mut stop: watch::Receiver<bool>) {
    let config = &origin.inner.config;
    let interval = (config.anti_entropy_interval_secs > 0)
        .then(|| Duration::from_secs(config.anti_entropy_interval_secs));
    let debounce = Duration::from_millis(config.repair_delay_ms);
    let mut views = origin.inner.cluster.watch_view();
    let mut signature = RingSignature::of(&views.borrow_and_update());
    let mut schedule = PassSchedule::new(Instant::now(), interval, debounce);
    loop {
        let due = schedule.poll_timeout();
        let sleep = async {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            changed = views.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = RingSignature::of(&views.borrow_and_update());
                if now != signature {
                    signature = now;
                    schedule.ring_changed(Instant::now());
                }
            }
            () = sleep => {
                if !schedule.is_due(Instant::now()) {
                    continue;
                }
                schedule.started();
                tokio::select! {
                    _ = stop.changed() => return,
                    report = origin.anti_entropy_pass(false) => {
                        if report.copied > 0 || report.failed > 0 || report.remaining > 0 {
                            tracing::info!(
                                blobs = report.blobs,
                                found = report.under_replicated,
                                copied = report.copied,
                                failed = report.failed,
                                remaining = report.remaining,
                                unreachable = ?report.unreachable,
                                "anti-entropy pass"
                            );
                        }
                    }
                }
                schedule.finished(Instant::now());
            }
        }
    }
}
