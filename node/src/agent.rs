//! The agent role: downloads blobs through the swarm for its host, and seeds them.
//!
//! A pull resolves the blob's metainfo through the digest's tracker (which asks the owning
//! origins; the origins themselves in dht mode or when no tracker answers), then runs the
//! blob's swarm in the [`PieceExchange`]: peers come from announces (to the trackers, the
//! DHT or both: [`crate::discovery`]), every piece is verified as it arrives (along the digest's sha256 chain, or
//! with BLAKE3 for metainfo without one), and the whole blob is the digest's when it is
//! committed to the CAS. Concurrent pulls of one digest share one pull and one download:
//! `Pull` RPCs and registry reads alike, which stream the blob as it arrives. The
//! completed blob keeps seeding until the swarm's seeding TTI, and stays in the CAS until
//! the quota/TTI eviction removes it. A seeding blob is held open by its swarm, so eviction
//! skips it: a download the store refuses for want of space, once it evicted every blob
//! nobody has open, stops idle seeders (least recently used first, enough for the
//! shortfall: [`PieceExchange::release_seeders`]) and asks again before the pull fails.
//! The policy lives in the exchange, the retry here; the store knows of neither.
//!
//! Every pull leaves a [`PullReport`] (bytes by peer kind and by peer, time, retries, bad
//! pieces) for `krakenctl pull-report`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kraken_client::metainfo::{MetainfoQuery, MetainfoQueryError};
use kraken_membership::Role;
use kraken_storage::cas::{Cas, CasError};
use kraken_storage::{Digest, Metainfo};
use kraken_transport::exchange::{
    BlobWatch, DownloadReport, ExchangeError, Handout, PieceExchange, Tracker,
};
use kraken_transport::swarm::{PeerInfo, SwarmStats};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::bounded::BoundedMap;
use crate::client::{CallError, Cluster};
use crate::discovery::{DiscoveringTracker, Discovery, Mode};
use crate::fetch::metainfo_error;
use crate::metrics::Metrics;
use crate::proto::{ErrorKind, PullReport, RemoteError, Request, Response};
use crate::verified::{FileStamp, VerifiedCopies};

/// Rounds of stopping idle seeders a pull refused for want of space gets before it fails.
const RELEASE_ROUNDS: u32 = 3;

/// Settings of the agent role (`[agent]` in a node's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Longest a pull may take before it fails, in seconds.
    pub pull_timeout_secs: u64,
    /// Pull reports kept for `krakenctl pull-report`.
    pub reports_kept: usize,
    /// How often the store's quota and TTI eviction runs, in seconds.
    pub evict_interval_secs: u64,
    /// Piece upload rate limit in bytes per second (0: none).
    pub egress_bytes_per_sec: u64,
    /// Piece download rate limit in bytes per second (0: none).
    pub ingress_bytes_per_sec: u64,
    /// How often the agent polls the build-index nodes for tombstones of deleted blobs and
    /// evicts its copies, in seconds (see [`crate::tombstones`]).
    pub tombstone_poll_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            pull_timeout_secs: 3600,
            reports_kept: 1000,
            evict_interval_secs: 60,
            egress_bytes_per_sec: 0,
            ingress_bytes_per_sec: 0,
            tombstone_poll_secs: 10,
        }
    }
}

impl AgentConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        if self.pull_timeout_secs == 0
            || self.evict_interval_secs == 0
            || self.tombstone_poll_secs == 0
        {
            return Err(AgentConfigError::ZeroInterval);
        }
        Ok(())
    }
}

/// Why an [`AgentConfig`] cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentConfigError {
    /// `pull_timeout_secs`, `evict_interval_secs` or `tombstone_poll_secs` is 0.
    #[error("agent timeouts and intervals must be above 0")]
    ZeroInterval,
}

/// Announces to the digest's tracker, failing over along the tracker ring.
#[derive(Clone)]
pub struct RingTracker {
    cluster: Cluster,
}

impl RingTracker {
    /// Announces through `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        RingTracker { cluster }
    }
}

/// Why an announce to the tracker ring failed.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// No tracker of the digest answered.
    #[error(transparent)]
    Call(#[from] CallError),
    /// A tracker answered with something other than a handout.
    #[error("unexpected tracker answer: {0:?}")]
    Unexpected(Box<Response>),
}

impl Tracker for RingTracker {
    type Error = AnnounceError;

    async fn announce(
        &self,
        digest: Digest,
        me: PeerInfo,
        have_bytes: u64,
    ) -> Result<Handout, AnnounceError> {
        let owners = self.cluster.owners_of_digest(Role::Tracker, &digest, 0);
        let request = Request::Announce {
            digest,
            peer: me,
            have_bytes,
        };
        let limit = self.cluster.call_timeout;
        match self
            .cluster
            .call_first(&owners, Role::Tracker, &request, limit)
            .await
        {
            Ok(Response::Announced { peers, interval_ms }) => Ok(Handout {
                peers,
                interval: Some(Duration::from_millis(interval_ms.max(100))),
            }),
            Ok(other) => Err(AnnounceError::Unexpected(Box::new(other))),
            Err(e) => Err(e.into()),
        }
    }
}

type PullOutcome = Option<Result<PullReport, RemoteError>>;

/// One pull of a digest, shared by every caller: the `Pull` RPCs that wait for it and the
/// registry reads that stream it.
#[derive(Clone)]
struct SharedPull {
    /// The download's watch once it runs, or why it could not start.
    started: watch::Receiver<Option<Result<BlobWatch, RemoteError>>>,
    /// The pull's report once it is over.
    outcome: watch::Receiver<PullOutcome>,
}

/// The bytes `range` of `watch`'s blob (which must lie inside it), in order, each piece
/// as soon as it is verified.
pub fn read_range(
    watch: BlobWatch,
    range: std::ops::Range<u64>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, RemoteError>> + Send + 'static {
    use futures::StreamExt;
    watch
        .read_range(range)
        .map(|r| r.map_err(|e| RemoteError::new(ErrorKind::Unavailable, e.to_string())))
}

/// The agent role. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Cluster,
    exchange: PieceExchange<DiscoveringTracker>,
    config: AgentConfig,
    metrics: Arc<Metrics>,
    /// The exchange's tracker (the policy's state) and the DHT: digests stop being
    /// provided here when they leave the store.
    tracker: DiscoveringTracker,
    pulls: Mutex<HashMap<Digest, SharedPull>>,
    reports: Mutex<BoundedMap<Digest, PullReport>>,
    /// Stored copies checked against their digests since their files last changed.
    verified: VerifiedCopies,
}

impl Agent {
    /// An agent over its exchange.
    pub fn new(
        cluster: Cluster,
        exchange: PieceExchange<DiscoveringTracker>,
        config: AgentConfig,
        metrics: Arc<Metrics>,
        tracker: DiscoveringTracker,
    ) -> Self {
        let reports_kept = config.reports_kept;
        Agent {
            inner: Arc::new(Inner {
                cluster,
                exchange,
                config,
                metrics,
                tracker,
                pulls: Mutex::new(HashMap::new()),
                reports: Mutex::new(BoundedMap::new(reports_kept)),
                verified: VerifiedCopies::default(),
            }),
        }
    }

    /// Starts periodic eviction and the tombstone poll; they stop when `stop` turns true.
    pub fn spawn_background(&self, mut stop: watch::Receiver<bool>) {
        crate::spawn(crate::tombstones::follow(self.clone(), stop.clone()));
        let agent = self.clone();
        crate::spawn(async move {
            let every = Duration::from_secs(agent.inner.config.evict_interval_secs);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                let cas = agent.cas().clone();
                match tokio::task::spawn_blocking(move || cas.evict()).await {
                    Ok(Ok(r)) if !r.evicted.is_empty() => {
                        tracing::info!(evicted = r.evicted.len(), "evicted blobs");
                        for digest in &r.evicted {
                            agent.forget(digest);
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "eviction failed"),
                    _ => {}
                }
            }
        });
    }

    /// The local store.
    pub fn cas(&self) -> &Cas {
        self.inner.exchange.cas()
    }

    /// Calls to other nodes.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// Settings.
    pub fn config(&self) -> &AgentConfig {
        &self.inner.config
    }

    /// The piece exchange (sessions and pieces from peers go here).
    pub fn exchange(&self) -> &PieceExchange<DiscoveringTracker> {
        &self.inner.exchange
    }

    /// The exchange's tracker: where announces go (trackers, DHT, both).
    pub fn tracker(&self) -> &DiscoveringTracker {
        &self.inner.tracker
    }

    /// The node's DHT.
    pub fn discovery(&self) -> &Discovery {
        self.inner.tracker.discovery()
    }

    /// `digest` left the store (evicted, deleted) or its download failed: stop providing it.
    pub fn forget(&self, digest: &Digest) {
        self.discovery().forget(digest);
    }

    /// Serves one agent request; `None` if the request is not an agent's.
    pub async fn handle(&self, request: &Request) -> Option<Response> {
        Some(match request {
            Request::Pull { namespace, digest } => match self.pull(namespace, digest).await {
                Ok(report) => Response::Pull(report),
                Err(e) => Response::Error(e),
            },
            Request::PullReport { digest } => match self.report(digest) {
                Some(r) => Response::Pull(r),
                None => Response::Error(RemoteError::new(
                    ErrorKind::NotFound,
                    format!("this agent has no pull of {digest} on record"),
                )),
            },
            _ => return None,
        })
    }

    /// The report of the last pull of `digest`.
    pub fn report(&self, digest: &Digest) -> Option<PullReport> {
        self.inner
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    fn keep_report(&self, report: &PullReport) {
        self.inner
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(report.digest, report.clone());
    }

    /// Downloads `digest` (if it is not local) and reports where its bytes came from.
    /// Concurrent calls for one digest, and registry reads of it, share one pull.
    pub async fn pull(&self, namespace: &str, digest: &Digest) -> Result<PullReport, RemoteError> {
        let mut outcome = self.join(namespace, digest).outcome;
        match outcome.wait_for(Option::is_some).await {
            Ok(outcome) => outcome
                .clone()
                .unwrap_or_else(|| Err(RemoteError::new(ErrorKind::Internal, "no outcome"))),
            Err(_) => Err(RemoteError::new(ErrorKind::Internal, "the pull task ended")),
        }
    }

    /// The running pull of `digest`, or a new one.
    fn join(&self, namespace: &str, digest: &Digest) -> SharedPull {
        let mut pulls = self
            .inner
            .pulls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(pull) = pulls.get(digest) {
            return pull.clone();
        }
        let (started_tx, started) = watch::channel(None);
        let (outcome_tx, outcome) = watch::channel(None);
        let pull = SharedPull { started, outcome };
        pulls.insert(*digest, pull.clone());
        let (agent, namespace, digest) = (self.clone(), namespace.to_string(), *digest);
        crate::spawn(async move {
            let limit = Duration::from_secs(agent.inner.config.pull_timeout_secs);
            let pull = agent.pull_once(&namespace, &digest, &started_tx);
            let result = match tokio::time::timeout(limit, pull).await {
                Ok(r) => r,
                Err(_) => Err(RemoteError::new(
                    ErrorKind::Unavailable,
                    format!("pull of {digest} did not finish within {limit:?}"),
                )),
            };
            agent
                .inner
                .pulls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&digest);
            if let Err(e) = &result {
                // Readers still waiting for the download to start learn why it did not.
                started_tx.send_if_modified(|s| s.is_none() && s.replace(Err(e.clone())).is_none());
            }
            outcome_tx.send_replace(Some(result));
        });
        pull
    }

    /// One pull: the download's metainfo (none asked for when the blob is local or its
    /// download already runs: the exchange has it), the download, then the metrics, the
    /// report and the log line. `started` gets the download's watch as soon as it runs.
    #[tracing::instrument(name = "pull", skip_all)]
    async fn pull_once(
        &self,
        namespace: &str,
        digest: &Digest,
        started: &watch::Sender<Option<Result<BlobWatch, RemoteError>>>,
    ) -> Result<PullReport, RemoteError> {
        let begun = Instant::now();
        let already_present = self.cas().contains(digest).unwrap_or(false);
        let mut watch = match self.inner.exchange.watch(digest) {
            Some(w) => w,
            None => {
                let metainfo = self.metainfo(namespace, digest).await?;
                self.start_download(metainfo).await?
            }
        };
        let length = watch.metainfo().length();
        started.send_replace(Some(Ok(watch.clone())));
        let stats = match watch.finished().await {
            // A blob that was here already: nothing moved for this pull.
            Ok(_) if already_present => SwarmStats::default(),
            Ok(stats) => {
                // Every piece was checked as it arrived: the file as it stands now is the
                // blob, so its first local read need not hash it again.
                if let Some(stamp) = FileStamp::of(&self.cas().blob_path(digest)) {
                    self.inner.verified.verified(*digest, stamp);
                }
                stats
            }
            Err(e) => {
                self.inner.metrics.pull_failed();
                // The failed download's pieces are dropped with it.
                if !self.cas().contains(digest).unwrap_or(false) {
                    self.forget(digest);
                }
                return Err(RemoteError::new(ErrorKind::Unavailable, e.to_string()));
            }
        };
        let elapsed = begun.elapsed();
        let report = DownloadReport {
            stats,
            elapsed,
            already_present,
        };
        self.inner.metrics.pull_done(&report, elapsed);
        let pull = PullReport::from_stats(*digest, length, elapsed, already_present, &report.stats);
        tracing::info!(
            length,
            elapsed_ms = pull.elapsed_ms,
            from_agents = pull.bytes_from_agents,
            from_origins = pull.bytes_from_origins,
            "pulled"
        );
        self.keep_report(&pull);
        Ok(pull)
    }

    /// Starts the download. A store too full for it, once it evicted every blob nobody has
    /// open, has its idle seeders stopped (least recently used first, enough to cover the
    /// shortfall: see [`PieceExchange::release_seeders`]) and is asked again, a few rounds
    /// at most, before the pull fails with the store's "no space" error: every blob pulled
    /// in the last `seed_tti_secs` is held open by its swarm, and would otherwise keep a
    /// small store refusing pulls although only idle seeding holds it.
    ///
    /// [`PieceExchange::release_seeders`]: kraken_transport::exchange::PieceExchange::release_seeders
    async fn start_download(&self, metainfo: Metainfo) -> Result<BlobWatch, RemoteError> {
        let mut rounds = 0;
        loop {
            let shortfall = match self.inner.exchange.start_download(metainfo.clone()) {
                Ok(w) => return Ok(w),
                Err(ExchangeError::Cas(CasError::NoSpace {
                    needed, available, ..
                })) if rounds < RELEASE_ROUNDS => needed.saturating_sub(available),
                Err(e) => return Err(RemoteError::new(ErrorKind::Internal, e.to_string())),
            };
            rounds += 1;
            let released = self.inner.exchange.release_seeders(shortfall).await;
            if released.blobs == 0 {
                // Nothing left to release: ask once more for the store's own error.
                rounds = RELEASE_ROUNDS;
            }
        }
    }

    /// Counts a blob sent to a registry client straight from the store (the blob server's
    /// warm path) as a pull that moved nothing, as a `Pull` of a local blob is; its report
    /// of the download that brought the blob stays.
    pub fn served_locally(&self, digest: &Digest) {
        let report = DownloadReport {
            stats: SwarmStats::default(),
            elapsed: Duration::ZERO,
            already_present: true,
        };
        self.inner.metrics.pull_done(&report, Duration::ZERO);
        tracing::debug!(%digest, "served from the store");
    }

    /// Whether the store's complete copy of `digest` still hashes to `digest`, checked
    /// before a registry client is sent it from the store (both the blob server's
    /// `sendfile` path and the registry API's streaming path). A copy is hashed only when
    /// its file changed since it was last found good (see [`crate::verified`]); a download
    /// that just completed counts as checked. A copy that does not match (a stray write,
    /// a corrupting disk: the pieces were checked when they arrived, not since) is evicted
    /// as a deleted blob is: its swarm stopped, its record dropped; the read that asked
    /// then downloads a fresh copy from the swarm. `true` when the store does not hold the
    /// blob complete: there is nothing to check.
    pub async fn verify_local(&self, digest: &Digest) -> bool {
        let path = self.cas().blob_path(digest);
        let Some(stamp) = FileStamp::of(&path) else {
            // Not held complete (or unreadable, which the read itself reports).
            return true;
        };
        if self.inner.verified.is_verified(digest, &stamp) {
            return true;
        }
        self.inner.verified.count_hash();
        let cas = self.cas().clone();
        let d = *digest;
        let check = tokio::task::spawn_blocking(move || -> Option<Digest> {
            let reader = cas.reader(&d).ok()?;
            let mut hasher = d.hasher();
            let mut buf = vec![0u8; 1 << 20];
            let mut offset = 0u64;
            while offset < reader.len() {
                let n = reader.read_at(offset, &mut buf).ok()?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Some(hasher.finish())
        })
        .await;
        let actual = match check {
            Ok(Some(actual)) => actual,
            // Not held complete (or unreadable, which the read itself reports).
            _ => return true,
        };
        if actual == *digest {
            // The stamp taken before hashing: a write during the hash moves it, and the
            // next read hashes again.
            self.inner.verified.verified(*digest, stamp);
            return true;
        }
        self.inner.verified.forget(digest);
        tracing::warn!(
            %digest,
            %actual,
            "the store's copy does not match its digest; evicting it and downloading it again"
        );
        self.exchange().stop(digest).await;
        let cas = self.cas().clone();
        let d = *digest;
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || cas.purge(&d, None)).await {
            tracing::warn!(%digest, error = %e, "cannot evict a corrupt blob");
        }
        self.forget(digest);
        false
    }

    /// How many stored copies [`Agent::verify_local`] hashed whole (copies not known good
    /// since their files last changed).
    pub fn copies_hashed(&self) -> u64 {
        self.inner.verified.hashes()
    }

    /// A watch over the pieces of `digest`, for streaming the blob before it completes: a
    /// complete local blob's at once, else that of the blob's pull, started or joined (see
    /// [`Agent::pull`]), once its download runs.
    pub async fn stream(&self, namespace: &str, digest: &Digest) -> Result<BlobWatch, RemoteError> {
        if self.cas().contains(digest).unwrap_or(false)
            && self.verify_local(digest).await
            && let Some(w) = self.inner.exchange.watch(digest)
        {
            return Ok(w);
        }
        let mut started = self.join(namespace, digest).started;
        match started.wait_for(Option::is_some).await {
            Ok(s) => s
                .clone()
                .unwrap_or_else(|| Err(RemoteError::new(ErrorKind::Internal, "no watch"))),
            Err(_) => Err(RemoteError::new(ErrorKind::Internal, "the pull task ended")),
        }
    }

    /// The bytes `range` of the blob (all of it if `None`), in order, as soon as each piece
    /// arrives: a registry client can start receiving before the download completes. Fails
    /// at once if the range is past the end; the stream ends with an error if the download
    /// fails.
    pub async fn read_stream(
        &self,
        namespace: &str,
        digest: &Digest,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<
        impl futures::Stream<Item = Result<bytes::Bytes, RemoteError>> + Send + 'static,
        RemoteError,
    > {
        let watch = self.stream(namespace, digest).await?;
        let len = watch.metainfo().length();
        let range = range.unwrap_or(0..len);
        if range.start > range.end || range.end > len {
            return Err(RemoteError::new(
                ErrorKind::BadRequest,
                format!("range {range:?} is outside {digest} ({len} bytes)"),
            ));
        }
        Ok(read_range(watch, range))
    }

    /// The blob's metainfo: local if the blob is, else from its tracker (waiting while an
    /// origin reads it through from a backend), or from the owning origins in dht mode and
    /// when no tracker answers.
    pub async fn metainfo(
        &self,
        namespace: &str,
        digest: &Digest,
    ) -> Result<Metainfo, RemoteError> {
        let cas = self.cas();
        if cas.contains(digest).unwrap_or(false)
            && let Ok(Some(m)) = cas.metainfo(digest)
        {
            return Ok(m);
        }
        let cluster = &self.inner.cluster;
        // Without trackers (dht mode), the owning origins answer themselves.
        if self.discovery().config().mode == Mode::Dht {
            return crate::fetch::origin_metainfo(cluster, namespace, digest).await;
        }
        let deadline = Instant::now() + Duration::from_secs(self.inner.config.pull_timeout_secs);
        match MetainfoQuery::trackers(namespace, digest)
            .run(cluster, deadline)
            .await
        {
            Ok(m) => Ok(m),
            // No tracker answered at all (an answer, even an error, is the tracker's word):
            // the owning origins stand in, as the DHT stands in for the announces.
            Err(MetainfoQueryError::Call(e)) if e.remote().is_none() => {
                tracing::debug!(%digest, error = %e, "no tracker answered; asking the origins");
                crate::fetch::origin_metainfo(cluster, namespace, digest).await
            }
            Err(e) => Err(metainfo_error(e)),
        }
    }
}
