//! The origin role: a dedicated seeder that owns the blobs the ring assigns it.
//!
//! - [`ingest`]: the streaming ingest RPC (proxies and replication): a whole blob from the
//!   stream straight into the CAS ingest, verified in the one pass that stores it, its
//!   write-back queued in the durable queue **before** the body is even asked for.
//! - [`stage`]: a registry client's chunked upload passed on by a proxy as it arrives,
//!   held until the client names the digest, then committed as an ingest is.
//! - [`upload`]: the resumable upload RPC (`krakenctl push`). Bytes are staged in a file
//!   per digest (so an interrupted upload resumes where it stopped), verified by the CAS
//!   ingest, and queued for write-back in the durable queue **before** the upload is
//!   acknowledged.
//! - [`readthrough`]: a request for an owned blob the origin lacks reads it from the
//!   backend once, however many callers ask at once; callers wait on the fetch.
//! - [`writeback`]: the executor that drains the queue to the backends.
//! - [`warm`]: the warm RPC preheating walks images with: hold a blob (reading it through
//!   if missing) and list what it references if it is a manifest.
//! - [`inventory`]: garbage collection's questions: a page of the store, and a touch of
//!   the blobs a tag depends on.
//! - `purge`: one stage of a cluster-wide purge (`Request::PurgeBlob`): the blob leaves
//!   the store, guarded by its last use, then the writable backends.
//! - [`replicate`]: copying blobs to the other owners after an upload, and the push every
//!   copy between origins goes by.
//! - [`antientropy`]: origins compare what they hold with their co-owners (a summary per
//!   bucket of the digest space), periodically and after any ring change, and copy what
//!   an owner lacks, so that losing origins loses nothing acknowledged and every blob
//!   returns to its replica count; `krakenctl repair` runs a pass now.
//! - [`scrub`]: re-verifying stored blobs in the background at a bounded rate, promptly
//!   when a peer reports a bad piece, and on request; a corrupt copy is quarantined at
//!   once and restored from another origin or the backend.
//!
//! Origins serve pieces to any authenticated peer through their [`PieceExchange`]; they do
//! not announce (trackers add owning origins to every handout from the ring).

pub mod antientropy;
pub mod ingest;
pub mod inventory;
mod purge;
pub mod readthrough;
pub mod replicate;
pub mod scrub;
pub mod stage;
pub mod upload;
pub mod warm;
pub mod writeback;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use kraken_membership::{NodeId, Role};
use kraken_storage::Digest;
use kraken_storage::backend::NamespaceRouter;
use kraken_storage::cas::Cas;
use kraken_storage::queue::WriteBackQueue;
use kraken_transport::exchange::{Handout, PieceExchange, Tracker};
use kraken_transport::quic::{BiStream, StreamOutcome};
use kraken_transport::swarm::{PeerInfo, SwarmConfig};
use kraken_transport::wire::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::client::{Cluster, ORIGIN_REPLICAS};
use crate::flight::Flights;
use crate::metrics::Metrics;
use crate::proto::{
    BlobStat, ErrorKind, MAX_METAINFO_WAIT, QueuedItem, RemoteError, Request, Response,
    WriteBackQueueStatus, WriteBackStatus,
};

/// Settings of the origin role (`[origin]` in a node's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Origins holding each blob.
    pub replicas: usize,
    /// Write-backs run at once.
    pub writeback_concurrency: usize,
    /// How often the write-back executor looks for due items when not woken, in ms.
    pub writeback_poll_ms: u64,
    /// Seconds a replica's write-back waits before its first attempt. The owner that took
    /// the client's upload writes the blob back at once; a replica's attempt then finds it
    /// in the backend and only checks (one `stat`), so the backend gets one upload per
    /// blob rather than one per owner. A replica still uploads it if the backend lacks it
    /// then (its first owner died first). 0: every owner uploads at once.
    pub replica_writeback_delay_secs: u64,
    /// Co-owners compared, and blobs copied, at once by an anti-entropy pass.
    pub repair_concurrency: usize,
    /// Delay after a change of the origin ring before an anti-entropy pass starts (changes
    /// often come in bursts), ms.
    pub repair_delay_ms: u64,
    /// Seconds between anti-entropy passes (0: only at start, after ring changes and on
    /// `krakenctl repair`).
    pub anti_entropy_interval_secs: u64,
    /// Largest blob accepted by upload, in bytes.
    pub max_blob_size: u64,
    /// Piece upload (seeding) rate limit in bytes per second (0: none).
    pub egress_bytes_per_sec: u64,
    /// Piece download rate limit in bytes per second (0: none; origins rarely download).
    pub ingress_bytes_per_sec: u64,
    /// Background scrubbing's read rate, in bytes per second: complete blobs are re-read
    /// and checked against their digest and piece hashes at most this fast (0: no
    /// background walk; blobs peers report as bad and the `Scrub` RPC are still checked).
    /// Default 32 MiB/s: about 20% of one disk's sequential bandwidth, under 2% of an
    /// NVMe drive's, some 3% of a core for the hashing, and 2.7 TiB a day.
    pub scrub_bytes_per_sec: u64,
    /// Least time between the starts of two background passes over the store, in ms
    /// (default one day); a pass that takes longer is followed by the next at once.
    pub scrub_interval_ms: u64,
    /// `[origin.swarm]`: the swarm settings of the origin role; keys left out take
    /// [`SwarmConfig::origin`]'s values.
    #[serde(deserialize_with = "SwarmConfig::deserialize_origin")]
    pub swarm: SwarmConfig,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            replicas: ORIGIN_REPLICAS,
            writeback_concurrency: 4,
            writeback_poll_ms: 1000,
            replica_writeback_delay_secs: 60,
            repair_concurrency: 4,
            repair_delay_ms: 1000,
            anti_entropy_interval_secs: 60,
            max_blob_size: 1 << 40,
            egress_bytes_per_sec: 0,
            ingress_bytes_per_sec: 0,
            scrub_bytes_per_sec: scrub::DEFAULT_BYTES_PER_SEC,
            scrub_interval_ms: scrub::DEFAULT_INTERVAL_MS,
            swarm: SwarmConfig::origin(),
        }
    }
}

/// Why an `[origin]` section was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginConfigError {
    /// `replicas` is 0: nothing would hold a blob.
    #[error("origin.replicas must be at least 1")]
    NoReplicas,
    /// A concurrency setting is 0: that work would never run.
    #[error("origin concurrency settings must be at least 1")]
    NoConcurrency,
    /// `writeback_poll_ms` is 0: the executor would spin.
    #[error("origin.writeback_poll_ms must be above 0")]
    ZeroPoll,
    /// `anti_entropy_interval_secs` is above a day: blobs would stay short of copies for
    /// longer than any operator expects.
    #[error(
        "origin.anti_entropy_interval_secs must be at most {MAX_ANTI_ENTROPY_INTERVAL_SECS} (0 disables periodic passes)"
    )]
    AntiEntropyInterval,
    /// `repair_delay_ms` is above an hour: ring changes would go unrepaired that long.
    #[error("origin.repair_delay_ms must be at most {MAX_REPAIR_DELAY_MS}")]
    RepairDelay,
    /// `scrub_interval_ms` is 0: a scrubber of an empty store would spin.
    #[error("origin.scrub_interval_ms must be above 0")]
    ZeroScrubInterval,
    /// `replica_writeback_delay_secs` is above a day: a blob whose first owner died would
    /// wait that long for its backend copy.
    #[error(
        "origin.replica_writeback_delay_secs must be at most {MAX_REPLICA_WRITEBACK_DELAY_SECS}"
    )]
    ReplicaWriteBackDelay,
}

/// Largest `replica_writeback_delay_secs`: a day.
pub const MAX_REPLICA_WRITEBACK_DELAY_SECS: u64 = 86_400;

/// Largest `anti_entropy_interval_secs`: a day.
pub const MAX_ANTI_ENTROPY_INTERVAL_SECS: u64 = 86_400;

/// Largest `repair_delay_ms`: an hour.
pub const MAX_REPAIR_DELAY_MS: u64 = 3_600_000;

impl OriginConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), OriginConfigError> {
        if self.replicas == 0 {
            return Err(OriginConfigError::NoReplicas);
        }
        if self.writeback_concurrency == 0 || self.repair_concurrency == 0 {
            return Err(OriginConfigError::NoConcurrency);
        }
        if self.writeback_poll_ms == 0 {
            return Err(OriginConfigError::ZeroPoll);
        }
        if self.anti_entropy_interval_secs > MAX_ANTI_ENTROPY_INTERVAL_SECS {
            return Err(OriginConfigError::AntiEntropyInterval);
        }
        if self.repair_delay_ms > MAX_REPAIR_DELAY_MS {
            return Err(OriginConfigError::RepairDelay);
        }
        if self.scrub_interval_ms == 0 {
            return Err(OriginConfigError::ZeroScrubInterval);
        }
        if self.replica_writeback_delay_secs > MAX_REPLICA_WRITEBACK_DELAY_SECS {
            return Err(OriginConfigError::ReplicaWriteBackDelay);
        }
        Ok(())
    }
}

/// Origins do not announce: trackers list owning origins from the ring.
#[derive(Debug, Clone, Default)]
pub struct NoAnnounce;

impl Tracker for NoAnnounce {
    type Error = std::convert::Infallible;

    async fn announce(&self, _: Digest, _: PeerInfo, _: u64) -> Result<Handout, Self::Error> {
        Ok(Handout {
            peers: Vec::new(),
            interval: Some(Duration::from_secs(3600)),
        })
    }
}

/// The origin role. Cheap to clone.
#[derive(Clone)]
pub struct Origin {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    cluster: Cluster,
    cas: Cas,
    router: NamespaceRouter,
    queue: WriteBackQueue,
    exchange: PieceExchange<NoAnnounce>,
    uploads_dir: PathBuf,
    config: OriginConfig,
    metrics: Arc<Metrics>,
    /// One upload of a digest at a time.
    upload_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Read-throughs in flight: waiters watch for the outcome.
    fetches: Arc<Flights<Digest, Result<(), RemoteError>>>,
    /// When each blob was last read through from the backend (for pull attribution).
    read_throughs: Mutex<HashMap<Digest, SystemTime>>,
    /// Blobs purged here lately: replica copies of them are refused (see `purge`).
    purged: Mutex<HashMap<Digest, std::time::Instant>>,
    writeback_wake: Notify,
    /// Anti-entropy passes and what the last one left.
    antientropy: antientropy::AntiEntropy,
    /// The scrubber's queue, limits and quarantined blobs.
    scrub: scrub::ScrubState,
    /// Chunked uploads staged here before their digest is known.
    stages: stage::Stages,
}

/// What an origin is built from.
pub struct OriginParts {
    /// This node's ring id.
    pub me: NodeId,
    /// Calls to other nodes.
    pub cluster: Cluster,
    /// The blob store.
    pub cas: Cas,
    /// Backends by namespace.
    pub router: NamespaceRouter,
    /// The durable write-back queue.
    pub queue: WriteBackQueue,
    /// Serves pieces.
    pub exchange: PieceExchange<NoAnnounce>,
    /// Where interrupted uploads are staged.
    pub uploads_dir: PathBuf,
    /// Where the background scrub records how far its pass got (it resumes there).
    pub scrub_state: PathBuf,
    /// Settings.
    pub config: OriginConfig,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Origin {
    /// An origin over its parts. Call [`Origin::spawn_background`] to start write-back
    /// and repair.
    pub fn new(parts: OriginParts) -> std::io::Result<Self> {
        std::fs::create_dir_all(&parts.uploads_dir)?;
        let antientropy = antientropy::AntiEntropy::new(&parts.metrics);
        let scrub = scrub::ScrubState::new(&parts.config, parts.scrub_state);
        Ok(Origin {
            inner: Arc::new(Inner {
                me: parts.me,
                cluster: parts.cluster,
                cas: parts.cas,
                router: parts.router,
                queue: parts.queue,
                exchange: parts.exchange,
                uploads_dir: parts.uploads_dir,
                config: parts.config,
                metrics: parts.metrics,
                upload_locks: Mutex::new(HashMap::new()),
                fetches: Arc::default(),
                read_throughs: Mutex::new(HashMap::new()),
                purged: Mutex::new(HashMap::new()),
                writeback_wake: Notify::new(),
                antientropy,
                scrub,
                stages: stage::Stages::default(),
            }),
        })
    }

    /// Starts the write-back executor, anti-entropy and the scrubber; they stop when
    /// `stop` turns true.
    pub fn spawn_background(&self, stop: watch::Receiver<bool>) {
        crate::spawn(writeback::run(self.clone(), stop.clone()));
        crate::spawn(scrub::run(self.clone(), stop.clone()));
        crate::spawn(antientropy::run(self.clone(), stop));
    }

    /// The local store.
    pub fn cas(&self) -> &Cas {
        &self.inner.cas
    }

    /// The piece exchange (sessions and pieces from peers go here).
    pub fn exchange(&self) -> &PieceExchange<NoAnnounce> {
        &self.inner.exchange
    }

    /// The write-back queue.
    pub fn queue(&self) -> &WriteBackQueue {
        &self.inner.queue
    }

    /// This node's ring id.
    pub fn id(&self) -> &NodeId {
        &self.inner.me
    }

    /// Whether this origin owns `digest` on the current ring.
    pub fn is_owner(&self, digest: &Digest) -> bool {
        self.owners(digest).iter().any(|m| m.id == self.inner.me)
    }

    fn owners(&self, digest: &Digest) -> Vec<kraken_membership::Member> {
        self.inner
            .cluster
            .owners_of_digest(Role::Origin, digest, self.inner.config.replicas)
    }

    /// Serves one origin request; `None` if the request is not an origin's.
    pub async fn handle(
        &self,
        peer: PeerId,
        request: &Request,
        stream: &mut BiStream,
    ) -> Option<(Response, StreamOutcome)> {
        let done = |r| Some((r, StreamOutcome::Done));
        match request {
            Request::OriginMetainfo {
                namespace,
                digest,
                wait_ms,
            } => {
                let wait = Duration::from_millis(*wait_ms).min(MAX_METAINFO_WAIT);
                done(self.metainfo(namespace, digest, wait).await)
            }
            Request::BlobStat { digest } => done(self.stat(digest)),
            Request::UploadStatus { digest } => done(self.upload_status(digest)),
            Request::Upload {
                namespace,
                digest,
                offset,
                length,
                replica,
                persisted,
            } => {
                let _ = peer;
                let upload = upload::UploadRequest {
                    namespace: namespace.clone(),
                    digest: *digest,
                    offset: *offset,
                    length: *length,
                    replica: *replica,
                    persisted: *persisted,
                };
                Some(self.upload(upload, stream).await)
            }
            Request::Ingest {
                namespace,
                digest,
                length,
                replica,
                persisted,
            } => {
                let ingest = upload::UploadRequest {
                    namespace: namespace.clone(),
                    digest: *digest,
                    offset: 0,
                    length: *length,
                    replica: *replica,
                    persisted: *persisted,
                };
                Some(self.ingest(ingest, stream).await)
            }
            Request::Stage { namespace } => Some(self.stage(namespace, stream).await),
            Request::CommitStaged {
                namespace,
                token,
                digest,
            } => done(self.commit_stage(namespace, *token, digest).await),
            Request::WriteBackStatus => done(self.writeback_status()),
            Request::WriteBackQueue => done(self.writeback_queue()),
            Request::Warm {
                namespace,
                digest,
                wait_ms,
            } => done(
                self.warm(namespace, digest, Duration::from_millis(*wait_ms))
                    .await,
            ),
            Request::ListBlobs { after, limit } => done(self.list_blobs(after.as_ref(), *limit)),
            Request::TouchBlobs { digests } => done(self.touch_blobs(digests)),
            Request::PurgeBlob {
                digest,
                unused_since_ms,
                stage,
            } => done(self.purge(digest, *unused_since_ms, *stage).await),
            Request::ReplicaSummary { with } => done(self.replica_summary(with).await),
            Request::ReplicaDigests {
                with,
                buckets,
                after,
                limit,
            } => done(
                self.replica_digests(with, buckets, after.as_ref(), *limit)
                    .await,
            ),
            Request::Repair { digest, namespace } => {
                done(self.repair(digest.as_ref(), namespace).await)
            }
            Request::ReplicaStatus => done(self.replica_status()),
            Request::SuspectBlob { digest } => done(self.suspect(digest)),
            Request::Scrub { digest } => done(Response::Scrubbed(self.scrub_now(*digest).await)),
            _ => None,
        }
    }

    /// The metainfo of `digest`, reading it through from the backend if this origin owns
    /// it and lacks it (after waiting for an upload of it under way here).
    pub async fn metainfo(&self, namespace: &str, digest: &Digest, wait: Duration) -> Response {
        match self.local_metainfo(digest) {
            Ok(Some(bytes)) => return Response::Metainfo(bytes),
            Ok(None) => {}
            Err(e) => return Response::Error(e),
        }
        if !self.is_owner(digest) {
            return Response::Error(RemoteError::new(
                ErrorKind::WrongNode,
                format!(
                    "{} does not own {digest} and does not hold it",
                    self.inner.me
                ),
            ));
        }
        // Another owner may have stored the blob first (a passed-on chunked push lands on
        // any owner; this one may have been down): a copy on its way here is waited for,
        // and one a co-owner holds is answered from, before the backend is asked, which
        // may not have it yet.
        if self.wait_for_upload(digest, wait).await
            && let Ok(Some(bytes)) = self.local_metainfo(digest)
        {
            return Response::Metainfo(bytes);
        }
        if let Some(bytes) = self.co_owner_metainfo(namespace, digest).await {
            return Response::Metainfo(bytes);
        }
        if let Err(answer) = self.read_through_within(namespace, digest, wait).await {
            return answer;
        }
        match self.local_metainfo(digest) {
            Ok(Some(bytes)) => Response::Metainfo(bytes),
            Ok(None) => Response::Error(RemoteError::new(
                ErrorKind::Internal,
                format!("{digest} was fetched but is gone again"),
            )),
            Err(e) => Response::Error(e),
        }
    }

    fn local_metainfo(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RemoteError> {
        let cas = &self.inner.cas;
        let present = cas.contains(digest).map_err(internal)?;
        if !present {
            return Ok(None);
        }
        Ok(cas.metainfo(digest).map_err(internal)?.map(|m| m.encode()))
    }

    fn stat(&self, digest: &Digest) -> Response {
        let cas = &self.inner.cas;
        let result = (|| {
            let info = cas.info(digest)?;
            let complete = info
                .as_ref()
                .is_some_and(|i| i.state == kraken_storage::cas::BlobState::Complete);
            let metainfo = if complete {
                cas.metainfo(digest)?
            } else {
                None
            };
            Ok::<_, kraken_storage::cas::CasError>((info, complete, metainfo))
        })();
        let (info, complete, metainfo) = match result {
            Ok(r) => r,
            Err(e) => return Response::Error(internal(e)),
        };
        let queued = self.queued_namespace(digest).is_some();
        Response::BlobStat(BlobStat {
            present: complete,
            length: info.as_ref().filter(|_| complete).map(|i| i.size),
            piece_length: metainfo.as_ref().map(|m| u64::from(m.piece_length())),
            metainfo_id: metainfo.as_ref().map(|m| m.id().to_string()),
            persisted: info.as_ref().is_some_and(|i| i.persisted),
            queued,
            owner: self.is_owner(digest),
            read_through_secs_ago: self
                .inner
                .read_throughs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(digest)
                .and_then(|t| SystemTime::now().duration_since(*t).ok())
                .map(|d| d.as_secs()),
        })
    }

    fn writeback_status(&self) -> Response {
        match self.writeback_queue() {
            Response::WriteBackQueue(q) => Response::WriteBack(WriteBackStatus {
                depth: q.depth,
                oldest: q.oldest,
            }),
            other => other,
        }
    }

    fn writeback_queue(&self) -> Response {
        let now = SystemTime::now();
        let secs_between =
            |from: SystemTime, to: SystemTime| to.duration_since(from).map_or(0, |d| d.as_secs());
        match self.inner.queue.stats(now) {
            Ok(stats) => Response::WriteBackQueue(WriteBackQueueStatus {
                depth: stats.depth,
                due: stats.due,
                // Rounded up: "due in 0 s" would read as due now.
                next_due_in_secs: stats.next_due.map(|t| {
                    t.duration_since(now)
                        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
                }),
                oldest: stats.oldest.map(|item| QueuedItem {
                    namespace: item.namespace,
                    digest: item.digest,
                    age_secs: secs_between(item.enqueued, now),
                    attempts: item.attempts,
                    last_error: item.last_error,
                }),
            }),
            Err(e) => Response::Error(internal(e)),
        }
    }

    /// The namespace `digest`'s write-back is queued under, if it is queued (it routes a
    /// copy's write-back and read-through to the right backend).
    pub(crate) fn queued_namespace(&self, digest: &Digest) -> Option<String> {
        self.inner
            .queue
            .list()
            .unwrap_or_default()
            .into_iter()
            .find(|i| i.digest == *digest)
            .map(|i| i.namespace)
    }

    /// Whether an upload of `digest` is being received or committed right now.
    pub(crate) fn is_uploading(&self, digest: &Digest) -> bool {
        self.inner
            .upload_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .is_some_and(|l| Arc::strong_count(l) > 1)
    }

    /// The metainfo of `digest` from the first other owner that holds it (one `BlobStat`
    /// per owner asked, then its metainfo; owners the view suspects are not asked);
    /// `None` if none does.
    async fn co_owner_metainfo(&self, namespace: &str, digest: &Digest) -> Option<Vec<u8>> {
        let cluster = &self.inner.cluster;
        let stat = Request::BlobStat { digest: *digest };
        let ask = Request::OriginMetainfo {
            namespace: namespace.to_string(),
            digest: *digest,
            wait_ms: 0,
        };
        for owner in self.owners(digest) {
            let addr = owner.quic_addr;
            // A co-owner that is down would hold every miss up by the limit.
            if owner.id == self.inner.me || cluster.suspects(addr) || cluster.stalled_lately(addr) {
                continue;
            }
            let held = cluster.call_within(addr, &stat, CO_OWNER_LIMIT).await;
            if !matches!(held, Ok(Response::BlobStat(s)) if s.present) {
                continue;
            }
            if let Ok(Response::Metainfo(bytes)) =
                cluster.call_within(addr, &ask, CO_OWNER_LIMIT).await
            {
                return Some(bytes);
            }
        }
        None
    }

    /// Waits, at most `wait`, for an upload of `digest` under way here to end; false if
    /// there was none (or it did not end in time).
    async fn wait_for_upload(&self, digest: &Digest, wait: Duration) -> bool {
        // Asked first without taking a lock: most misses have no upload under way, and
        // taking one would add an entry to the lock table for each of them.
        if !self.is_uploading(digest) {
            return false;
        }
        let lock = self.upload_lock(digest);
        tokio::time::timeout(wait, lock.lock()).await.is_ok()
    }

    fn upload_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .upload_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(*digest).or_default().clone()
    }
}

/// Longest an owner lacking a blob waits for each question to a co-owner about it.
const CO_OWNER_LIMIT: Duration = Duration::from_secs(2);

/// An internal error as a remote error.
pub(crate) fn internal(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anti_entropy_settings_that_cannot_work_are_refused() {
        let ok = OriginConfig::default();
        assert_eq!(ok.anti_entropy_interval_secs, 60);
        assert_eq!(ok.validate(), Ok(()));
        let off = OriginConfig {
            anti_entropy_interval_secs: 0,
            ..OriginConfig::default()
        };
        assert_eq!(off.validate(), Ok(()));
        let forever = OriginConfig {
            anti_entropy_interval_secs: MAX_ANTI_ENTROPY_INTERVAL_SECS + 1,
            ..OriginConfig::default()
        };
        assert_eq!(
            forever.validate(),
            Err(OriginConfigError::AntiEntropyInterval)
        );
        let late = OriginConfig {
            repair_delay_ms: MAX_REPAIR_DELAY_MS + 1,
            ..OriginConfig::default()
        };
        assert_eq!(late.validate(), Err(OriginConfigError::RepairDelay));
    }

    #[test]
    fn a_replica_write_back_delay_beyond_a_day_is_refused() {
        assert_eq!(OriginConfig::default().replica_writeback_delay_secs, 60);
        let at_once = OriginConfig {
            replica_writeback_delay_secs: 0,
            ..OriginConfig::default()
        };
        assert_eq!(at_once.validate(), Ok(()));
        let too_late = OriginConfig {
            replica_writeback_delay_secs: MAX_REPLICA_WRITEBACK_DELAY_SECS + 1,
            ..OriginConfig::default()
        };
        assert_eq!(
            too_late.validate(),
            Err(OriginConfigError::ReplicaWriteBackDelay)
        );
    }
}
