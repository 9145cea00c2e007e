//! The agent role: downloads blobs through the swarm for its host, and seeds them.
//!
//! A pull resolves the blob's metainfo through the digest's tracker (which asks the owning
//! origins), then runs the blob's swarm in the [`PieceExchange`]: peers come from
//! announces, every piece is verified with BLAKE3 as it arrives, and the final sha256 is
//! checked when the blob is committed to the CAS. Concurrent pulls of one digest share one
//! download. The completed blob keeps seeding until the swarm's seeding TTI, and stays in
//! the CAS until the quota/TTI eviction removes it.
//!
//! Every pull leaves a [`PullReport`] (bytes by peer kind and by peer, time, retries, bad
//! pieces) for `krakenctl pull-report`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kraken_client::metainfo::MetainfoQuery;
use kraken_membership::Role;
use kraken_storage::cas::Cas;
use kraken_storage::{Digest, Metainfo};
use kraken_transport::exchange::{BlobWatch, Handout, PieceExchange, Tracker};
use kraken_transport::swarm::PeerInfo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::bounded::BoundedMap;
use crate::client::{CallError, Cluster};
use crate::fetch::metainfo_error;
use crate::metrics::Metrics;
use crate::proto::{ErrorKind, PullReport, RemoteError, Request, Response};

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
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            pull_timeout_secs: 3600,
            reports_kept: 1000,
            evict_interval_secs: 60,
            egress_bytes_per_sec: 0,
            ingress_bytes_per_sec: 0,
        }
    }
}

impl AgentConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        if self.pull_timeout_secs == 0 || self.evict_interval_secs == 0 {
            return Err(AgentConfigError::ZeroInterval);
        }
        Ok(())
    }
}

/// Why an [`AgentConfig`] cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentConfigError {
    /// `pull_timeout_secs` or `evict_interval_secs` is 0.
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

/// The agent role. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Cluster,
    exchange: PieceExchange<RingTracker>,
    config: AgentConfig,
    metrics: Arc<Metrics>,
    pulls: Mutex<HashMap<Digest, watch::Receiver<PullOutcome>>>,
    reports: Mutex<BoundedMap<Digest, PullReport>>,
}

impl Agent {
    /// An agent over its exchange.
    pub fn new(
        cluster: Cluster,
        exchange: PieceExchange<RingTracker>,
        config: AgentConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reports_kept = config.reports_kept;
        Agent {
            inner: Arc::new(Inner {
                cluster,
                exchange,
                config,
                metrics,
                pulls: Mutex::new(HashMap::new()),
                reports: Mutex::new(BoundedMap::new(reports_kept)),
            }),
        }
    }

    /// Starts periodic eviction; stops when `stop` turns true.
    pub fn spawn_background(&self, mut stop: watch::Receiver<bool>) {
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

    /// The piece exchange (sessions and pieces from peers go here).
    pub fn exchange(&self) -> &PieceExchange<RingTracker> {
        &self.inner.exchange
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
    /// Concurrent calls for one digest share one pull.
    pub async fn pull(&self, namespace: &str, digest: &Digest) -> Result<PullReport, RemoteError> {
        let mut rx = {
            let mut pulls = self
                .inner
                .pulls
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match pulls.get(digest) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    pulls.insert(*digest, rx.clone());
                    let (agent, namespace, digest) = (self.clone(), namespace.to_string(), *digest);
                    crate::spawn(async move {
                        let limit = Duration::from_secs(agent.inner.config.pull_timeout_secs);
                        let result =
                            match tokio::time::timeout(limit, agent.pull_once(&namespace, &digest))
                                .await
                            {
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
                        tx.send_replace(Some(result));
                    });
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome
                .clone()
                .unwrap_or_else(|| Err(RemoteError::new(ErrorKind::Internal, "no outcome"))),
            Err(_) => Err(RemoteError::new(ErrorKind::Internal, "the pull task ended")),
        }
    }

    #[tracing::instrument(name = "pull", skip_all)]
    async fn pull_once(&self, namespace: &str, digest: &Digest) -> Result<PullReport, RemoteError> {
        let started = Instant::now();
        let metainfo = self.metainfo(namespace, digest).await?;
        let length = metainfo.length();
        let report = self.inner.exchange.download(metainfo).await;
        match report {
            Ok(report) => {
                self.inner.metrics.pull_done(&report, started.elapsed());
                let pull = PullReport::from_stats(
                    *digest,
                    length,
                    started.elapsed(),
                    report.already_present,
                    &report.stats,
                );
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
            Err(e) => {
                self.inner.metrics.pull_failed();
                Err(RemoteError::new(ErrorKind::Unavailable, e.to_string()))
            }
        }
    }

    /// Starts (or joins) the download of `digest` and returns a watch over its pieces, for
    /// streaming the blob before it completes.
    pub async fn stream(&self, namespace: &str, digest: &Digest) -> Result<BlobWatch, RemoteError> {
        if let Some(w) = self.inner.exchange.watch(digest) {
            return Ok(w);
        }
        let metainfo = self.metainfo(namespace, digest).await?;
        self.inner
            .exchange
            .start_download(metainfo)
            .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))
    }

    /// The bytes `range` of the blob (all of it if `None`), in order, as soon as each piece
    /// arrives: a registry client can start receiving before the download completes. The
    /// stream ends with an error if the download fails or the range is past the end.
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
        let meta = watch.metainfo().clone();
        let len = meta.length();
        let range = range.unwrap_or(0..len);
        if range.start > range.end || range.end > len {
            return Err(RemoteError::new(
                ErrorKind::BadRequest,
                format!("range {range:?} is outside {digest} ({len} bytes)"),
            ));
        }
        let piece_len = u64::from(meta.piece_length());
        let first = range.start / piece_len;
        let state = (watch, first, range);
        Ok(futures::stream::try_unfold(
            state,
            move |(mut watch, index, range)| async move {
                let start = index * piece_len;
                if start >= range.end || range.is_empty() {
                    return Ok(None);
                }
                let piece =
                    kraken_storage::PieceIndex(u32::try_from(index).map_err(|_| {
                        RemoteError::new(ErrorKind::Internal, "piece index overflow")
                    })?);
                let failed = |e: kraken_transport::exchange::ExchangeError| {
                    RemoteError::new(ErrorKind::Unavailable, e.to_string())
                };
                watch.wait_piece(piece).await.map_err(failed)?;
                let bytes = watch.read_piece(piece).await.map_err(failed)?;
                let from = range.start.saturating_sub(start) as usize;
                let to = (range.end - start).min(bytes.len() as u64) as usize;
                Ok(Some((bytes.slice(from..to), (watch, index + 1, range))))
            },
        ))
    }

    /// The blob's metainfo: local if the blob is, else from its tracker (waiting while an
    /// origin reads it through from a backend).
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
        let deadline = Instant::now() + Duration::from_secs(self.inner.config.pull_timeout_secs);
        MetainfoQuery::trackers(namespace, digest)
            .run(&self.inner.cluster, deadline)
            .await
            .map_err(metainfo_error)
    }
}
