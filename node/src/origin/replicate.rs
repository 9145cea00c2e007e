//! Copies of a blob on every owner: replication after an upload, and repair after a ring
//! change.
//!
//! After an upload is acknowledged, the receiving origin pushes the blob to the digest's
//! other owners (as a replica, which queues its own write-back, so the blob reaches the
//! backend even if the first origin dies). Failed pushes are retried a few times; whatever
//! still fails is caught by repair.
//!
//! Repair runs at start and whenever the set of live origins changes (after a short delay,
//! since changes come in bursts): every complete local blob is offered to each of its
//! current owners that lacks it, `repair_concurrency` at a time.
//!
//! Copies travel by the streaming ingest (`Request::Ingest`, see [`super::ingest`]): the
//! receiver stores the blob in the one pass that verifies it, and answers a blob it already
//! holds before a byte of it is sent, so two holders offering the same blob cost one extra
//! round trip.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use kraken_membership::{Member, NodeId, Role};
use kraken_storage::Digest;
use kraken_storage::cas::{BlobState, CasError};
use tokio::sync::watch;
use tracing::Instrument as _;

use super::Origin;
use crate::client::CallError;
use crate::proto::DEFAULT_NAMESPACE;
use kraken_client::ingest::{IngestRequest, ingest_file};

/// Push attempts per owner after an upload.
const PUSH_ATTEMPTS: u32 = 4;

/// Why a copy to another owner failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The local copy cannot be read.
    #[error(transparent)]
    Local(#[from] CasError),
    /// The owner did not take it.
    #[error(transparent)]
    Call(#[from] CallError),
}

impl Origin {
    /// Pushes `digest` to its other owners in the background.
    pub(super) fn spawn_replication(&self, namespace: String, digest: Digest) {
        let origin = self.clone();
        let span = tracing::info_span!("replicate", %digest);
        let replicating = async move {
            let targets: Vec<Member> = origin
                .owners(&digest)
                .into_iter()
                .filter(|m| m.id != origin.inner.me)
                .collect();
            futures::stream::iter(targets)
                .for_each_concurrent(None, |owner| {
                    let (origin, namespace) = (&origin, &namespace);
                    async move {
                        let mut delay = Duration::from_millis(500);
                        for attempt in 1..=PUSH_ATTEMPTS {
                            match origin.push(&owner, namespace, &digest, false).await {
                                Ok(()) => return,
                                Err(e) => {
                                    tracing::warn!(owner = %owner.id, attempt, error = %e,
                                        "replication failed");
                                }
                            }
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                        }
                    }
                })
                .await;
        };
        crate::spawn(replicating.instrument(span));
    }

    /// Sends the local blob `digest` to `owner` (which skips it if it has it).
    #[tracing::instrument(name = "push", level = "debug", skip_all, fields(%digest))]
    async fn push(
        &self,
        owner: &Member,
        namespace: &str,
        digest: &Digest,
        persisted: bool,
    ) -> Result<(), PushError> {
        let cas = &self.inner.cas;
        // Held for the whole push: the blob cannot be evicted under it.
        let reader = cas.reader(digest)?;
        let ingest = IngestRequest {
            namespace,
            digest,
            length: reader.len(),
            replica: true,
            persisted,
        };
        let pushed = ingest_file(
            &self.inner.cluster,
            owner.quic_addr,
            ingest,
            &cas.blob_path(digest),
        )
        .await?;
        drop(reader);
        if pushed.sent > 0 {
            self.inner.metrics.add_replicated_bytes(pushed.sent);
            tracing::info!(owner = %owner.id, bytes = pushed.sent, "replicated");
        }
        Ok(())
    }

    /// Offers every complete local blob to those of its owners that lack it.
    pub async fn repair(&self) -> RepairReport {
        let cas = self.inner.cas.clone();
        let blobs = match tokio::task::spawn_blocking(move || cas.list()).await {
            Ok(Ok(blobs)) => blobs,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "repair: cannot list the store");
                return RepairReport::default();
            }
            Err(_) => return RepairReport::default(),
        };
        let queued: std::collections::HashMap<Digest, String> = self
            .inner
            .queue
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.digest, i.namespace))
            .collect();
        let mut jobs = Vec::new();
        for info in blobs.iter().filter(|b| b.state == BlobState::Complete) {
            let namespace = queued
                .get(&info.digest)
                .cloned()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
            for owner in self.owners(&info.digest) {
                if owner.id != self.inner.me {
                    jobs.push((owner, namespace.clone(), info.digest, info.persisted));
                }
            }
        }
        let offered = jobs.len();
        let failed: usize = futures::stream::iter(jobs)
            .map(|(owner, namespace, digest, persisted)| async move {
                match self.push(&owner, &namespace, &digest, persisted).await {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::warn!(%digest, owner = %owner.id, error = %e, "repair push failed");
                        1
                    }
                }
            })
            .buffer_unordered(self.inner.config.repair_concurrency)
            .fold(0, |a, b| async move { a + b })
            .await;
        RepairReport { offered, failed }
    }
}

/// What one repair pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// (blob, owner) pairs offered.
    pub offered: usize,
    /// Offers that failed.
    pub failed: usize,
}

fn live_origins(origin: &Origin) -> BTreeSet<NodeId> {
    origin
        .inner
        .cluster
        .view()
        .ring(Role::Origin)
        .members()
        .iter()
        .map(|m| m.id.clone())
        .collect()
}

/// Repairs at start and after every change of the live origins, until `stop`.
pub async fn watch_ring(origin: Origin, mut stop: watch::Receiver<bool>) {
    let delay = Duration::from_millis(origin.inner.config.repair_delay_ms);
    let mut views = origin.inner.cluster.watch_view();
    let mut repaired: Option<BTreeSet<NodeId>> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        let now = live_origins(&origin);
        if repaired.as_ref() != Some(&now) {
            let report = origin.repair().await;
            if report.offered > 0 {
                tracing::info!(
                    offered = report.offered,
                    failed = report.failed,
                    "repair pass"
                );
            }
            // A pass with failures is retried after the next delay.
            if report.failed == 0 {
                repaired = Some(now);
            }
            continue;
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}
