//! The process's metrics: one prometheus-client [`Registry`], rendered for `/metrics`.
//!
//! [`Metrics`] owns the registry and the handles of the node's own metrics. Every role
//! bumps them on the hot path (atomics, no lock); other parts of the process register
//! theirs into the same registry through [`Metrics::register`] (the registry API's request
//! metrics do). Gauges that live elsewhere (queue depth, ring sizes, active swarms, piece
//! traffic) are read at scrape time from a [`GaugeSource`] ([`Metrics::collect_gauges`]).
//! [`Metrics::render`] writes the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
//!
//! Counters are registered without their `_total` suffix: the encoder appends it, so
//! `kraken_pulls` is exposed as `kraken_pulls_total`. Durations are histograms in seconds.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use kraken_membership::GossipStats;
use kraken_transport::exchange::DownloadReport;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Whole-blob pulls: 10 ms to about 5.5 minutes, doubling.
fn pull_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 2.0, 16)
}

/// Piece requests, answered to verified: 1 ms to about 16 s (past the default request
/// timeout of a 4 MiB piece), doubling.
fn piece_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

/// The node's metrics and the process's registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    bytes_from_agents: Counter,
    bytes_from_origins: Counter,
    pulls: Counter,
    pulls_failed: Counter,
    pieces_retried: Counter,
    bad_pieces: Counter,
    upload_bytes: Counter,
    backend_read_bytes: Counter,
    replicated_bytes: Counter,
    writebacks_uploaded: Counter,
    writebacks_present: Counter,
    writeback_failures: Counter,
    announces: Counter,
    rpcs: Counter,
    scrub: ScrubCounters,
    dht: DhtCounters,
    bad_piece_reports: Counter,
    pull_duration: Histogram,
    upload_duration: Histogram,
    piece_latency: Histogram,
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    registry.register(name, help, c.clone());
    c
}

/// A counter family with one label, and the handle of each of its `values`.
fn labelled<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    key: &'static str,
    values: [&'static str; N],
) -> [Counter; N] {
    let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
    let handles = values.map(|v| family.get_or_create_owned(&[(key, v)]));
    registry.register(name, help, family);
    handles
}

fn seconds(
    registry: &mut Registry,
    name: &str,
    help: &str,
    buckets: impl Iterator<Item = f64>,
) -> Histogram {
    let h = Histogram::new(buckets);
    registry.register_with_unit(name, help, Unit::Seconds, h.clone());
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry holding the node's metrics, all zero.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let [bytes_from_agents, bytes_from_origins] = labelled(
            &mut r,
            "kraken_bytes_received",
            "Verified piece bytes received, by peer kind",
            "kind",
            ["agent", "origin"],
        );
        let [writebacks_uploaded, writebacks_present, writeback_failures] = labelled(
            &mut r,
            "kraken_writebacks",
            "Write-backs by outcome: uploaded, found in the backend already (nothing sent), failed",
            "outcome",
            ["uploaded", "present", "failed"],
        );
        let pulls = counter(&mut r, "kraken_pulls", "Finished pulls");
        let pulls_failed = counter(&mut r, "kraken_pulls_failed", "Failed pulls");
        let pieces_retried = counter(
            &mut r,
            "kraken_pieces_retried",
            "Piece requests that timed out and were retried",
        );
        let bad_pieces = counter(
            &mut r,
            "kraken_bad_pieces",
            "Pieces that failed verification",
        );
        let upload_bytes = counter(&mut r, "kraken_upload_bytes", "Bytes received by uploads");
        let backend_read_bytes = counter(
            &mut r,
            "kraken_backend_read_bytes",
            "Bytes read through from backends",
        );
        let replicated_bytes = counter(
            &mut r,
            "kraken_replicated_bytes",
            "Bytes pushed to other origins",
        );
        let announces = counter(&mut r, "kraken_announces", "Announces served");
        let rpcs = counter(&mut r, "kraken_rpcs", "RPCs served");
        let scrub = ScrubCounters::new(&mut r);
        let dht = DhtCounters::new(&mut r);
        let bad_piece_reports = counter(
            &mut r,
            "kraken_bad_piece_reports",
            "Bad pieces from an origin reported to that origin (agents; deduplicated)",
        );
        let pull_duration = seconds(
            &mut r,
            "kraken_pull_duration",
            "Time an agent took to pull a whole blob, metainfo lookup included (finished pulls)",
            pull_buckets(),
        );
        let upload_duration = seconds(
            &mut r,
            "kraken_upload_duration",
            "Time an origin took to receive and store an uploaded blob (the request that \
             completed it; a resumed upload counts its last request)",
            pull_buckets(),
        );
        let piece_latency = seconds(
            &mut r,
            "kraken_piece_latency",
            "Time from requesting a piece to holding it verified",
            piece_buckets(),
        );
        Metrics {
            registry: Mutex::new(r),
            bytes_from_agents,
            bytes_from_origins,
            pulls,
            pulls_failed,
            pieces_retried,
            bad_pieces,
            upload_bytes,
            backend_read_bytes,
            replicated_bytes,
            writebacks_uploaded,
            writebacks_present,
            writeback_failures,
            announces,
            rpcs,
            scrub,
            dht,
            bad_piece_reports,
            pull_duration,
            upload_duration,
            piece_latency,
        }
    }

    /// Records a finished pull that took `elapsed`, from asking for the blob to holding it.
    pub fn pull_done(&self, report: &DownloadReport, elapsed: Duration) {
        self.pulls.inc();
        self.bytes_from_agents
            .inc_by(report.stats.bytes_from_agents);
        self.bytes_from_origins
            .inc_by(report.stats.bytes_from_origins);
        self.pieces_retried.inc_by(report.stats.requests_timed_out);
        self.bad_pieces.inc_by(report.stats.bad_pieces);
        self.pull_duration.observe(elapsed.as_secs_f64());
    }

    /// Records a failed pull.
    pub fn pull_failed(&self) {
        self.pulls_failed.inc();
    }

    /// Records one piece's latency: from its request to its bytes verified. The piece
    /// exchange (kraken-transport) is where requests and verification meet; it calls this.
    pub fn observe_piece_latency(&self, latency: Duration) {
        self.piece_latency.observe(latency.as_secs_f64());
    }

    /// Bytes received by uploads.
    pub fn add_upload_bytes(&self, n: u64) {
        self.upload_bytes.inc_by(n);
    }

    /// An upload completed a blob in `elapsed`.
    pub fn upload_done(&self, elapsed: Duration) {
        self.upload_duration.observe(elapsed.as_secs_f64());
    }

    /// Bytes read through from backends.
    pub fn add_backend_read_bytes(&self, n: u64) {
        self.backend_read_bytes.inc_by(n);
    }

    /// Bytes pushed to other origins.
    pub fn add_replicated_bytes(&self, n: u64) {
        self.replicated_bytes.inc_by(n);
    }

    /// A write-back succeeded: `uploaded` the bytes, or found the blob in the backend.
    pub fn writeback_done(&self, uploaded: bool) {
        if uploaded {
            self.writebacks_uploaded.inc();
        } else {
            self.writebacks_present.inc();
        }
    }

    /// A write-back failed (and was rescheduled).
    pub fn writeback_failed(&self) {
        self.writeback_failures.inc();
    }

    /// The tracker served an announce.
    pub fn announce(&self) {
        self.announces.inc();
    }

    /// An RPC was served.
    pub fn rpc(&self) {
        self.rpcs.inc();
    }

    /// The origin's scrubbing counters.
    pub fn scrub(&self) -> &ScrubCounters {
        &self.scrub
    }

    /// The discovery counters (DHT lookups, fallbacks, liars).
    pub fn dht(&self) -> &DhtCounters {
        &self.dht
    }

    /// An agent told an origin about a bad piece it sent.
    pub fn bad_piece_reported(&self) {
        self.bad_piece_reports.inc();
    }

    /// Registers more metrics into the process's registry (at start, not per request).
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Reads gauges from `source` at each scrape, for as long as the caller keeps `source`:
    /// the registry holds it weakly, so it does not keep alive the roles it reads.
    pub fn collect_gauges(&self, source: &GaugeSource) {
        let live = LiveGauges(Arc::downgrade(source));
        self.register(|r| r.register_collector(Box::new(live)));
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing to a String does not fail, and no collector here returns an error.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        text
    }
}

/// What an origin's scrubbing did (`kraken_origin_scrub_*`).
#[derive(Debug)]
pub struct ScrubCounters {
    /// Bytes re-read and hashed.
    pub bytes: Counter,
    /// Blobs re-verified.
    pub blobs: Counter,
    /// Copies found corrupt and quarantined.
    pub corrupt: Counter,
    /// Corrupt copies replaced by a correct one.
    pub restored: Counter,
    /// Corrupt copies no correct copy could replace.
    pub restore_failures: Counter,
    /// Suspect reports (from peers and the write-back) queued for a prompt check.
    pub suspects: Counter,
}

impl ScrubCounters {
    fn new(r: &mut Registry) -> Self {
        let mut c = |name: &str, help: &str| counter(r, name, help);
        ScrubCounters {
            bytes: c("kraken_origin_scrub_bytes", "Bytes re-read by scrubbing"),
            blobs: c(
                "kraken_origin_scrub_blobs",
                "Blobs re-verified by scrubbing",
            ),
            corrupt: c(
                "kraken_origin_scrub_corrupt",
                "Stored copies found corrupt and quarantined",
            ),
            restored: c(
                "kraken_origin_scrub_restored",
                "Quarantined copies restored from another origin or the backend",
            ),
            restore_failures: c(
                "kraken_origin_scrub_restore_failures",
                "Quarantined copies that no correct copy could replace",
            ),
            suspects: c(
                "kraken_origin_scrub_suspects",
                "Suspect reports queued for a prompt check (bad pieces peers received, \
                 write-backs whose bytes did not match)",
            ),
        }
    }
}

/// What discovery did (`kraken_dht_*`, `kraken_discovery_*`); the DHT's own state is read
/// at scrape time ([`Gauges::dht`]).
#[derive(Debug)]
pub struct DhtCounters {
    lookups: Counter,
    lookup_failures: Counter,
    lookup_duration: Histogram,
    fallbacks: Counter,
    liars: Counter,
}

impl DhtCounters {
    fn new(r: &mut Registry) -> Self {
        DhtCounters {
            lookups: counter(r, "kraken_dht_lookups", "DHT provider lookups started"),
            lookup_failures: counter(
                r,
                "kraken_dht_lookup_failures",
                "DHT provider lookups that failed (timed out, rate-limited, no route)",
            ),
            lookup_duration: seconds(
                r,
                "kraken_dht_lookup_duration",
                "Time a DHT provider lookup took",
                piece_buckets(),
            ),
            fallbacks: counter(
                r,
                "kraken_discovery_fallbacks",
                "Times tracker mode fell back to the DHT because every tracker tried failed",
            ),
            liars: counter(
                r,
                "kraken_dht_liars",
                "DHT providers whose address answered as another peer, reported and blacklisted",
            ),
        }
    }

    /// A provider lookup took `elapsed` and succeeded or not.
    pub fn lookup(&self, elapsed: Duration, ok: bool) {
        self.lookups.inc();
        if !ok {
            self.lookup_failures.inc();
        }
        self.lookup_duration.observe(elapsed.as_secs_f64());
    }

    /// Tracker mode fell back to the DHT.
    pub fn fallback(&self) {
        self.fallbacks.inc();
    }

    /// A lying provider was reported.
    pub fn liar(&self) {
        self.liars.inc();
    }

    /// Lying providers reported since start.
    pub fn liars(&self) -> u64 {
        self.liars.get()
    }

    /// Fallbacks since start.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.get()
    }
}

/// Values read at scrape time from where they live.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Write-back queue depth (origins).
    pub writeback_depth: Option<u64>,
    /// Items of it due now (origins).
    pub writeback_due: Option<u64>,
    /// Live members per ring: (role, count).
    pub ring_sizes: Vec<(&'static str, usize)>,
    /// Blobs with a running swarm.
    pub active_swarms: usize,
    /// Bytes in the local store.
    pub store_bytes: Option<u64>,
    /// The local store's quota and its file system's space (origins and agents).
    pub store_space: Option<kraken_storage::cas::SpaceStatus>,
    /// Peers known to the tracker.
    pub tracked_blobs: Option<usize>,
    /// Piece traffic: (pieces in, bytes in, pieces out, bytes out, bad pieces).
    pub pieces: Option<(u64, u64, u64, u64, u64)>,
    /// Pieces registry clients streamed from a running download: (taken from memory as
    /// they landed, read back from the disk).
    pub streamed: Option<(u64, u64)>,
    /// Swarms of complete blobs stopped so that a pull could have their space (agents).
    pub seeders_released: Option<u64>,
    /// What gossip refused (ring nodes).
    pub gossip: Option<GossipStats>,
    /// The DHT's state (agents and origins).
    pub dht: Option<kraken_dht::DhtStats>,
}

/// Where the gauges come from at each scrape.
pub type GaugeSource = Arc<dyn Fn() -> Gauges + Send + Sync>;

/// The registry's weak hold on a [`GaugeSource`]: nothing once the source is gone.
struct LiveGauges(Weak<dyn Fn() -> Gauges + Send + Sync>);

impl std::fmt::Debug for LiveGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveGauges").finish_non_exhaustive()
    }
}

impl Collector for LiveGauges {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        match self.0.upgrade() {
            Some(source) => source().encode(encoder),
            None => Ok(()),
        }
    }
}

/// One metric of `kind` with a value per label `key`'s value.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, kind): (&str, &str, MetricType),
    key: &'static str,
    values: impl IntoIterator<Item = (&'static str, M)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (label, value) in values {
        value.encode(metric.encode_family(&[(key, label)])?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: Option<u64>,
) -> std::fmt::Result {
    match value {
        Some(v) => ConstGauge::new(v).encode(encoder.encode_descriptor(
            name,
            help,
            None,
            MetricType::Gauge,
        )?),
        None => Ok(()),
    }
}

impl Gauges {
    /// Writes the gauges that are set (the help texts end in a period, as registered ones
    /// get one from the registry).
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let e = &mut e;
        let active = Some(self.active_swarms as u64);
        gauge(
            e,
            "kraken_active_swarms",
            "Blobs with a running swarm.",
            active,
        )?;
        let depth = self.writeback_depth;
        gauge(
            e,
            "kraken_writeback_queue_depth",
            "Items in the write-back queue.",
            depth,
        )?;
        gauge(
            e,
            "kraken_writeback_queue_due",
            "Items in the write-back queue due now (being written back or waiting for a worker); the others wait out a retry's backoff or a replica's delay.",
            self.writeback_due,
        )?;
        gauge(
            e,
            "kraken_store_bytes",
            "Bytes in the local store.",
            self.store_bytes,
        )?;
        if let Some(space) = &self.store_space {
            gauge(
                e,
                "kraken_store_capacity_bytes",
                "The store's quota in force: the configured one clamped to its file system.",
                Some(space.effective_bytes),
            )?;
            gauge(
                e,
                "kraken_store_configured_capacity_bytes",
                "The store's configured quota.",
                Some(space.configured_bytes),
            )?;
            gauge(
                e,
                "kraken_store_fs_available_bytes",
                "Bytes free on the store's file system.",
                Some(space.fs_available_bytes),
            )?;
            gauge(
                e,
                "kraken_store_disk_full_errors",
                "Writes to the store that failed because the disk was full, since start.",
                Some(space.disk_full_errors),
            )?;
            gauge(
                e,
                "kraken_store_metadata_reopens",
                "Times the store's metadata database was reopened after a failed write poisoned it, since start.",
                Some(space.metadata_reopens),
            )?;
            gauge(
                e,
                "kraken_store_can_store",
                "1 if the store can take new blobs, 0 if its file system is (nearly) full.",
                Some(u64::from(space.cannot_store.is_none())),
            )?;
        }
        let tracked = self.tracked_blobs.map(|t| t as u64);
        gauge(
            e,
            "kraken_tracked_blobs",
            "Blobs the tracker knows peers of.",
            tracked,
        )?;
        if !self.ring_sizes.is_empty() {
            let sizes = self
                .ring_sizes
                .iter()
                .map(|(role, n)| (*role, ConstGauge::new(*n as u64)));
            let ring = (
                "kraken_ring_size",
                "Live members of a ring.",
                MetricType::Gauge,
            );
            family(e, ring, "role", sizes)?;
        }
        if let Some((pin, bin, pout, bout, bad)) = self.pieces {
            let pieces = (
                "kraken_pieces",
                "Pieces moved by this node's swarms, by direction.",
                MetricType::Counter,
            );
            let counts = [("in", pin), ("out", pout), ("bad", bad)];
            family(
                e,
                pieces,
                "direction",
                counts.map(|(d, n)| (d, ConstCounter::new(n))),
            )?;
            let bytes = (
                "kraken_piece_bytes",
                "Piece bytes moved by this node's swarms, by direction.",
                MetricType::Counter,
            );
            let counts = [("in", bin), ("out", bout)];
            family(
                e,
                bytes,
                "direction",
                counts.map(|(d, n)| (d, ConstCounter::new(n))),
            )?;
        }
        if let Some((memory, disk)) = self.streamed {
            let streamed = (
                "kraken_streamed_pieces",
                "Pieces clients streamed from a running download, by where they were read.",
                MetricType::Counter,
            );
            let counts = [("memory", memory), ("disk", disk)];
            family(
                e,
                streamed,
                "from",
                counts.map(|(d, n)| (d, ConstCounter::new(n))),
            )?;
        }
        if let Some(n) = self.seeders_released {
            ConstCounter::new(n).encode(e.encode_descriptor(
                "kraken_seeders_released",
                "Swarms of complete blobs stopped before their seeding TTI to free store space.",
                None,
                MetricType::Counter,
            )?)?;
        }
        if let Some(g) = &self.gossip {
            let rejected = (
                "kraken_gossip_rejected_members",
                "Gossiped member records refused (each distinct record once), by reason.",
                MetricType::Counter,
            );
            let counts = g
                .rejected
                .iter()
                .map(|(r, n)| (r.as_str(), ConstCounter::new(*n)));
            family(e, rejected, "reason", counts)?;
            let dropped = (
                "kraken_gossip_dropped_datagrams",
                "Datagrams on the gossip port dropped: not chitchat (garbage) or for another cluster.",
                MetricType::Counter,
            );
            let counts = [
                ("garbage", g.garbage_datagrams),
                ("wrong-cluster", g.wrong_cluster_datagrams),
            ];
            family(
                e,
                dropped,
                "kind",
                counts.map(|(k, n)| (k, ConstCounter::new(n))),
            )?;
            let clamped = (
                "kraken_gossip_clamped_weights",
                "Members whose claimed ring weight was lowered to gossip.max_member_weight.",
                MetricType::Counter,
            );
            ConstCounter::new(g.clamped_weights)
                .encode(e.encode_descriptor(clamped.0, clamped.1, None, clamped.2)?)?;
        }
        if let Some(d) = &self.dht {
            let held = (
                "kraken_dht_records_held",
                "Records this node's DHT store holds, by kind: signed cards, provider keys of other nodes.",
                MetricType::Gauge,
            );
            let counts = [("card", d.records_held), ("provider", d.provider_keys_held)];
            family(
                e,
                held,
                "kind",
                counts.map(|(k, n)| (k, ConstGauge::new(n))),
            )?;
            gauge(
                e,
                "kraken_dht_keys_provided",
                "Blob digests this node provides to the DHT.",
                Some(d.keys_provided),
            )?;
            gauge(
                e,
                "kraken_dht_blacklisted_peers",
                "DHT peers blacklisted for lying records.",
                Some(d.liars),
            )?;
            gauge(
                e,
                "kraken_dht_routing_peers",
                "Peers in the DHT's routing table.",
                Some(d.routing_peers),
            )?;
            let dropped = (
                "kraken_dht_dropped_messages",
                "Inbound DHT records dropped, by reason.",
                MetricType::Counter,
            );
            let counts = [
                ("malformed", d.dropped_malformed),
                ("rate-limited", d.dropped_rate_limited),
                ("blacklisted", d.dropped_blacklisted),
                ("store-full", d.refused_store_full),
                ("provide-queue-full", d.provides_dropped),
            ];
            family(
                e,
                dropped,
                "reason",
                counts.map(|(k, n)| (k, ConstCounter::new(n))),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use kraken_membership::RejectReason;

    use super::*;

    fn report(from_agents: u64, from_origins: u64) -> DownloadReport {
        let mut report = DownloadReport {
            stats: Default::default(),
            elapsed: Duration::from_secs(1),
            already_present: false,
        };
        report.stats.bytes_from_agents = from_agents;
        report.stats.bytes_from_origins = from_origins;
        report
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.add_upload_bytes(42);
        m.announce();
        m.pull_done(&report(5, 7), Duration::from_millis(30));
        let source: GaugeSource = Arc::new(|| Gauges {
            writeback_depth: Some(3),
            writeback_due: Some(2),
            ring_sizes: vec![("origin", 3), ("tracker", 1)],
            pieces: Some((1, 2, 3, 4, 5)),
            streamed: Some((6, 7)),
            seeders_released: Some(2),
            gossip: Some(GossipStats {
                rejected: vec![(RejectReason::Unsigned, 8), (RejectReason::BadSignature, 9)],
                garbage_datagrams: 10,
                wrong_cluster_datagrams: 11,
                clamped_weights: 12,
            }),
            ..Gauges::default()
        });
        m.collect_gauges(&source);
        let text = m.render();
        for line in [
            "kraken_gossip_rejected_members_total{reason=\"unsigned\"} 8",
            "kraken_gossip_rejected_members_total{reason=\"bad-signature\"} 9",
            "kraken_gossip_dropped_datagrams_total{kind=\"garbage\"} 10",
            "kraken_gossip_dropped_datagrams_total{kind=\"wrong-cluster\"} 11",
            "kraken_gossip_clamped_weights_total 12",
            "kraken_upload_bytes_total 42",
            "kraken_announces_total 1",
            "kraken_pulls_total 1",
            "kraken_pulls_failed_total 0",
            "kraken_bytes_received_total{kind=\"agent\"} 5",
            "kraken_bytes_received_total{kind=\"origin\"} 7",
            "kraken_writebacks_total{outcome=\"failed\"} 0",
            "# TYPE kraken_bytes_received_total counter",
            "# HELP kraken_pulls_total Finished pulls.",
            "kraken_writeback_queue_depth 3",
            "kraken_writeback_queue_due 2",
            "kraken_writebacks_total{outcome=\"present\"} 0",
            "# TYPE kraken_writeback_queue_depth gauge",
            "kraken_active_swarms 0",
            "kraken_ring_size{role=\"origin\"} 3",
            "kraken_ring_size{role=\"tracker\"} 1",
            "# TYPE kraken_pieces_total counter",
            "kraken_pieces_total{direction=\"in\"} 1",
            "kraken_pieces_total{direction=\"bad\"} 5",
            "kraken_piece_bytes_total{direction=\"out\"} 4",
            "kraken_streamed_pieces_total{from=\"memory\"} 6",
            "kraken_streamed_pieces_total{from=\"disk\"} 7",
            "kraken_seeders_released_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // Gauges not set are not shown.
        assert!(!text.contains("kraken_store_bytes"), "{text}");
        assert!(!text.contains("kraken_tracked_blobs"), "{text}");
    }

    #[test]
    fn durations_are_histograms_in_seconds() {
        let m = Metrics::default();
        m.pull_done(&report(0, 0), Duration::from_millis(30));
        m.pull_done(&report(0, 0), Duration::from_secs(1000));
        m.upload_done(Duration::from_secs(2));
        m.observe_piece_latency(Duration::from_micros(1500));
        let text = m.render();
        for line in [
            "# TYPE kraken_pull_duration_seconds histogram",
            // Cumulative buckets, doubling from 10 ms.
            "kraken_pull_duration_seconds_bucket{le=\"0.01\"} 0",
            "kraken_pull_duration_seconds_bucket{le=\"0.02\"} 0",
            "kraken_pull_duration_seconds_bucket{le=\"0.04\"} 1",
            "kraken_pull_duration_seconds_bucket{le=\"327.68\"} 1",
            "kraken_pull_duration_seconds_bucket{le=\"+Inf\"} 2",
            "kraken_pull_duration_seconds_count 2",
            "kraken_pull_duration_seconds_sum 1000.03",
            "# TYPE kraken_upload_duration_seconds histogram",
            "kraken_upload_duration_seconds_bucket{le=\"2.56\"} 1",
            "kraken_upload_duration_seconds_count 1",
            "# TYPE kraken_piece_latency_seconds histogram",
            "kraken_piece_latency_seconds_bucket{le=\"0.001\"} 0",
            "kraken_piece_latency_seconds_bucket{le=\"0.002\"} 1",
            "kraken_piece_latency_seconds_bucket{le=\"16.384\"} 1",
            "kraken_piece_latency_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn other_metrics_share_the_registry_and_gauges_end_with_their_source() {
        let m = Metrics::default();
        let gateway = kraken_registry_gateway::GatewayMetrics::new();
        m.register(|r| gateway.register(r));
        let source: GaugeSource = Arc::new(|| Gauges {
            store_bytes: Some(9),
            ..Gauges::default()
        });
        m.collect_gauges(&source);
        let text = m.render();
        assert!(
            text.contains("# TYPE kraken_gateway_requests_total counter"),
            "{text}"
        );
        assert!(text.contains("kraken_pulls_total 0"), "{text}");
        assert!(text.contains("kraken_store_bytes 9"), "{text}");
        drop(source);
        let text = m.render();
        assert!(!text.contains("kraken_store_bytes"), "{text}");
        assert!(
            text.contains("kraken_gateway_requests_in_flight 0"),
            "{text}"
        );
    }
}
