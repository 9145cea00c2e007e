//! Node counters and gauges, rendered in the Prometheus text format for `/metrics`.
//!
//! Plain atomics: every role bumps its counters on the hot path without locks, and the
//! HTTP handler renders a snapshot. Gauges that live elsewhere (queue depth, ring size,
//! active swarms) are read at render time through [`Gauges`].

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use kraken_transport::exchange::DownloadReport;

/// The node's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    bytes_from_agents: AtomicU64,
    bytes_from_origins: AtomicU64,
    pulls: AtomicU64,
    pulls_failed: AtomicU64,
    pieces_retried: AtomicU64,
    bad_pieces: AtomicU64,
    upload_bytes: AtomicU64,
    backend_read_bytes: AtomicU64,
    replicated_bytes: AtomicU64,
    writebacks: AtomicU64,
    writeback_failures: AtomicU64,
    announces: AtomicU64,
    rpcs: AtomicU64,
}

/// Values read when rendering.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Write-back queue depth (origins).
    pub writeback_depth: Option<u64>,
    /// Live members per ring: (role, count).
    pub ring_sizes: Vec<(&'static str, usize)>,
    /// Blobs with a running swarm.
    pub active_swarms: usize,
    /// Bytes in the local store.
    pub store_bytes: Option<u64>,
    /// Peers known to the tracker.
    pub tracked_blobs: Option<usize>,
    /// Piece traffic: (pieces in, bytes in, pieces out, bytes out, bad pieces).
    pub pieces: Option<(u64, u64, u64, u64, u64)>,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// Records a finished pull.
    pub fn pull_done(&self, report: &DownloadReport) {
        add(&self.pulls, 1);
        add(&self.bytes_from_agents, report.stats.bytes_from_agents);
        add(&self.bytes_from_origins, report.stats.bytes_from_origins);
        add(&self.pieces_retried, report.stats.requests_timed_out);
        add(&self.bad_pieces, report.stats.bad_pieces);
    }

    /// Records a failed pull.
    pub fn pull_failed(&self) {
        add(&self.pulls_failed, 1);
    }

    /// Bytes received by uploads.
    pub fn add_upload_bytes(&self, n: u64) {
        add(&self.upload_bytes, n);
    }

    /// Bytes read through from backends.
    pub fn add_backend_read_bytes(&self, n: u64) {
        add(&self.backend_read_bytes, n);
    }

    /// Bytes pushed to other origins.
    pub fn add_replicated_bytes(&self, n: u64) {
        add(&self.replicated_bytes, n);
    }

    /// A write-back succeeded.
    pub fn writeback_done(&self) {
        add(&self.writebacks, 1);
    }

    /// A write-back failed (and was rescheduled).
    pub fn writeback_failed(&self) {
        add(&self.writeback_failures, 1);
    }

    /// The tracker served an announce.
    pub fn announce(&self) {
        add(&self.announces, 1);
    }

    /// An RPC was served.
    pub fn rpc(&self) {
        add(&self.rpcs, 1);
    }

    /// The Prometheus text exposition of the counters and `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, labels: &[(&str, &str, u64)]| {
            let _ = writeln!(
                out,
                "# HELP kraken_{name} {help}\n# TYPE kraken_{name} counter"
            );
            for (k, v, n) in labels {
                if k.is_empty() {
                    let _ = writeln!(out, "kraken_{name} {n}");
                } else {
                    let _ = writeln!(out, "kraken_{name}{{{k}=\"{v}\"}} {n}");
                }
            }
        };
        counter(
            "bytes_received_total",
            "Verified piece bytes received, by peer kind.",
            &[
                ("kind", "agent", get(&self.bytes_from_agents)),
                ("kind", "origin", get(&self.bytes_from_origins)),
            ],
        );
        counter(
            "pulls_total",
            "Finished pulls.",
            &[("", "", get(&self.pulls))],
        );
        counter(
            "pulls_failed_total",
            "Failed pulls.",
            &[("", "", get(&self.pulls_failed))],
        );
        counter(
            "pieces_retried_total",
            "Piece requests that timed out and were retried.",
            &[("", "", get(&self.pieces_retried))],
        );
        counter(
            "bad_pieces_total",
            "Pieces that failed verification.",
            &[("", "", get(&self.bad_pieces))],
        );
        counter(
            "upload_bytes_total",
            "Bytes received by uploads.",
            &[("", "", get(&self.upload_bytes))],
        );
        counter(
            "backend_read_bytes_total",
            "Bytes read through from backends.",
            &[("", "", get(&self.backend_read_bytes))],
        );
        counter(
            "replicated_bytes_total",
            "Bytes pushed to other origins.",
            &[("", "", get(&self.replicated_bytes))],
        );
        counter(
            "writebacks_total",
            "Write-backs by outcome.",
            &[
                ("outcome", "ok", get(&self.writebacks)),
                ("outcome", "failed", get(&self.writeback_failures)),
            ],
        );
        counter(
            "announces_total",
            "Announces served.",
            &[("", "", get(&self.announces))],
        );
        counter("rpcs_total", "RPCs served.", &[("", "", get(&self.rpcs))]);
        let mut gauge = |name: &str, help: &str, value: u64, label: Option<(&str, &str)>| {
            let _ = writeln!(
                out,
                "# HELP kraken_{name} {help}\n# TYPE kraken_{name} gauge"
            );
            match label {
                Some((k, v)) => {
                    let _ = writeln!(out, "kraken_{name}{{{k}=\"{v}\"}} {value}");
                }
                None => {
                    let _ = writeln!(out, "kraken_{name} {value}");
                }
            }
        };
        gauge(
            "active_swarms",
            "Blobs with a running swarm.",
            gauges.active_swarms as u64,
            None,
        );
        if let Some(d) = gauges.writeback_depth {
            gauge(
                "writeback_queue_depth",
                "Items in the write-back queue.",
                d,
                None,
            );
        }
        if let Some(b) = gauges.store_bytes {
            gauge("store_bytes", "Bytes in the local store.", b, None);
        }
        if let Some(t) = gauges.tracked_blobs {
            gauge(
                "tracked_blobs",
                "Blobs the tracker knows peers of.",
                t as u64,
                None,
            );
        }
        for (role, n) in &gauges.ring_sizes {
            gauge(
                "ring_size",
                "Live members of a ring.",
                *n as u64,
                Some(("role", role)),
            );
        }
        if let Some((pin, bin, pout, bout, bad)) = gauges.pieces {
            let _ = writeln!(
                out,
                "# HELP kraken_pieces_total Pieces moved by this node's swarms, by direction.\n# TYPE kraken_pieces_total counter\nkraken_pieces_total{{direction=\"in\"}} {pin}\nkraken_pieces_total{{direction=\"out\"}} {pout}\nkraken_pieces_total{{direction=\"bad\"}} {bad}"
            );
            let _ = writeln!(
                out,
                "# HELP kraken_piece_bytes_total Piece bytes moved by this node's swarms, by direction.\n# TYPE kraken_piece_bytes_total counter\nkraken_piece_bytes_total{{direction=\"in\"}} {bin}\nkraken_piece_bytes_total{{direction=\"out\"}} {bout}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.add_upload_bytes(42);
        m.announce();
        let text = m.render(&Gauges {
            writeback_depth: Some(3),
            ring_sizes: vec![("origin", 3)],
            ..Gauges::default()
        });
        assert!(text.contains("kraken_upload_bytes_total 42"));
        assert!(text.contains("kraken_announces_total 1"));
        assert!(text.contains("kraken_writeback_queue_depth 3"));
        assert!(text.contains("kraken_ring_size{role=\"origin\"} 3"));
        assert!(text.contains("# TYPE kraken_bytes_received_total counter"));
    }
}
