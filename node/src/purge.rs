//! PURGE: removing one blob from the whole cluster, the primitive under registry
//! `DELETE` and garbage collection.
//!
//! [`purge`] runs, in order:
//! 1. every live origin drops its copy from its store ([`PurgeStage::Store`]), unless the
//!    guard `unused_since_ms` keeps it: an origin whose copy was written or used at or
//!    after that time answers "kept" (the check and the removal are one step under the
//!    store's lock, so a push or read racing the purge is either seen or finds the blob
//!    gone). A copy being read goes when its readers finish.
//! 2. If no origin kept it, every live origin removes it from every writable backend of
//!    its routes ([`PurgeStage::Backends`]; read-only registry mirrors are skipped, a
//!    missing blob is fine). An origin that got a copy again in between keeps it (and the
//!    backends' copy), so the report says "kept".
//! 3. Every live tracker forgets the blob's peers and cached metainfo.
//! 4. The digest's build-index owners record a durable tombstone `(digest, deleted_ms)`;
//!    agents poll tombstones (`tombstone_poll_secs`) and evict their copies, so they stop
//!    serving the blob (see [`crate::tombstones`]).
//!
//! Every step is idempotent: a purge that failed part-way (an origin unreachable) is run
//! again whole. An origin the view suspects is skipped; if it still holds a copy when it
//! comes back, that copy is served until garbage collection or another purge removes it.

use std::net::SocketAddr;

use kraken_membership::Role;
use kraken_storage::Digest;
use kraken_storage::time::now_ms;

use crate::client::{CallError, Cluster};
use crate::proto::{PurgeStage, Purged, Request, Response};

/// What [`purge`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// The blob.
    pub digest: Digest,
    /// True when the blob left every origin, the backends, the trackers and a tombstone
    /// was recorded; false when an origin kept it (see `kept`).
    pub purged: bool,
    /// Origins that kept their copy, with its last write or use (ms since the epoch).
    pub kept: Vec<(SocketAddr, u64)>,
    /// Bytes removed from the origins' stores, all origins together.
    pub freed_bytes: u64,
    /// Backends the blob was removed from, by name.
    pub backends: Vec<String>,
    /// Live origins asked.
    pub origins: usize,
}

/// Why a purge did not finish. Nothing is left inconsistent: run it again.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// No live origin to purge from.
    #[error("no live origin to purge {0} from")]
    NoOrigins(Digest),
    /// An origin failed or did not answer.
    #[error("origin {addr} did not purge {digest}: {source}")]
    Origin {
        /// The origin.
        addr: SocketAddr,
        /// The blob.
        digest: Digest,
        /// Its answer.
        source: CallError,
    },
    /// A node answered with something other than what was asked.
    #[error("{addr} answered a purge call with {answer:?}")]
    Unexpected {
        /// The node.
        addr: SocketAddr,
        /// What it said.
        answer: Box<Response>,
    },
    /// No build-index owner recorded the tombstone.
    #[error("no build-index node recorded the tombstone of {digest}: {source}")]
    Tombstone {
        /// The blob.
        digest: Digest,
        /// The last owner's answer.
        source: CallError,
    },
}

/// Purges `digest` from the cluster (see the module docs). With `unused_since_ms`, an
/// origin whose copy was written or used at or after that time keeps it, and then nothing
/// else is removed: the report says `purged: false` and who kept it.
pub async fn purge(
    cluster: &Cluster,
    digest: &Digest,
    unused_since_ms: Option<u64>,
) -> Result<PurgeReport, PurgeError> {
    let origins = cluster.live_addrs(Role::Origin);
    if origins.is_empty() {
        return Err(PurgeError::NoOrigins(*digest));
    }
    let mut report = PurgeReport {
        digest: *digest,
        purged: false,
        kept: Vec::new(),
        freed_bytes: 0,
        backends: Vec::new(),
        origins: origins.len(),
    };
    for stage in [PurgeStage::Store, PurgeStage::Backends] {
        let request = Request::PurgeBlob {
            digest: *digest,
            unused_since_ms,
            stage,
        };
        for (addr, purged) in stage_on_all(cluster, &origins, digest, &request).await? {
            if let Some(ms) = purged.kept_ms {
                report.kept.push((addr, ms));
            }
            report.freed_bytes += purged.freed_bytes;
            report.backends.extend(purged.backends);
        }
        if !report.kept.is_empty() {
            tracing::info!(%digest, kept = ?report.kept, ?stage, "purge: an origin keeps the blob");
            return Ok(report);
        }
    }
    report.backends.sort();
    report.backends.dedup();
    forget_on_trackers(cluster, digest).await;
    let tombstone = Request::RecordTombstone {
        digest: *digest,
        deleted_ms: now_ms(),
        replica: false,
    };
    let owners = cluster.owners_of_digest(Role::BuildIndex, digest, 0);
    match cluster
        .call_first(&owners, Role::BuildIndex, &tombstone, cluster.call_timeout)
        .await
    {
        Ok(Response::TombstoneRecorded) => {}
        Ok(other) => {
            let addr = owners.first().map(|m| m.quic_addr);
            return Err(PurgeError::Unexpected {
                addr: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                answer: Box::new(other),
            });
        }
        Err(source) => {
            return Err(PurgeError::Tombstone {
                digest: *digest,
                source,
            });
        }
    }
    report.purged = true;
    tracing::info!(%digest, freed_bytes = report.freed_bytes, backends = ?report.backends, "purged");
    Ok(report)
}

/// One purge stage on every origin at once; every one must answer.
async fn stage_on_all(
    cluster: &Cluster,
    origins: &[SocketAddr],
    digest: &Digest,
    request: &Request,
) -> Result<Vec<(SocketAddr, Purged)>, PurgeError> {
    // Backend deletes can be slow: a long limit, as for uploads.
    let limit = cluster.call_timeout.saturating_mul(6);
    let calls = origins
        .iter()
        .map(|addr| async move { (*addr, cluster.call_within(*addr, request, limit).await) });
    let mut out = Vec::new();
    for (addr, answer) in futures::future::join_all(calls).await {
        match answer {
            Ok(Response::Purged(p)) => out.push((addr, p)),
            Ok(other) => {
                return Err(PurgeError::Unexpected {
                    addr,
                    answer: Box::new(other),
                });
            }
            Err(source) => {
                return Err(PurgeError::Origin {
                    addr,
                    digest: *digest,
                    source,
                });
            }
        }
    }
    Ok(out)
}

/// Tells every live tracker to forget the blob. Their state is soft: one that misses it
/// forgets the peers when their announces expire.
async fn forget_on_trackers(cluster: &Cluster, digest: &Digest) {
    let request = Request::ForgetBlob { digest: *digest };
    let trackers = cluster.live_addrs(Role::Tracker);
    let calls = trackers.iter().map(|addr| {
        let request = &request;
        async move { (*addr, cluster.call(*addr, request).await) }
    });
    for (addr, answer) in futures::future::join_all(calls).await {
        if let Err(e) = answer {
            tracing::warn!(%addr, %digest, error = %e, "a tracker did not forget a purged blob");
        }
    }
}
