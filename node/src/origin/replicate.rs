//! Copies of a blob on every owner: replication right after an upload, and the push that
//! anti-entropy and repair copy with.
//!
//! After an upload is acknowledged, the receiving origin pushes the blob to the digest's
//! other owners (as a replica, which queues its own write-back, so the blob reaches the
//! backend even if the first origin dies). Failed pushes are retried a few times; whatever
//! still fails is found by the next anti-entropy pass ([`super::antientropy`]: every
//! `anti_entropy_interval_secs` and after any change of the origin ring), which copies
//! what an owner lacks with [`Origin::push`].
//!
//! Copies travel by the streaming ingest (`Request::Ingest`, see [`super::ingest`]): the
//! receiver stores the blob in the one pass that verifies it, and answers a blob it already
//! holds before a byte of it is sent, so two holders offering the same blob cost one extra
//! round trip.

use std::time::Duration;

use futures::StreamExt;
use kraken_membership::Member;
use kraken_storage::Digest;
use kraken_storage::cas::CasError;
use tracing::Instrument as _;

use super::Origin;
use crate::client::CallError;
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
                                Ok(_) => return,
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

    /// Sends the local blob `digest` to `owner` (which skips it if it has it); returns the
    /// bytes sent (0: the owner had it).
    #[tracing::instrument(name = "push", level = "debug", skip_all, fields(%digest))]
    pub(super) async fn push(
        &self,
        owner: &Member,
        namespace: &str,
        digest: &Digest,
        persisted: bool,
    ) -> Result<u64, PushError> {
        let cas = &self.inner.cas;
        // Held for the whole push: the blob cannot be evicted under it.
        let reader = cas.housekeeping_reader(digest)?;
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
        Ok(pushed.sent)
    }
}
