//! Request metrics of the gateway, in prometheus-client types.
//!
//! [`GatewayMetrics`] is a cheap handle (clones share the values): put a clone in the
//! [`crate::GatewayConfig`], and register it once into the process's registry with
//! [`GatewayMetrics::register`] (the node does, and serves that registry on `/metrics`).
//! Requests are counted by method and status class; every pair is created up front so a
//! scrape shows the zeros too.

use std::time::Duration;

use crate::listen::ListenerMetrics;
use axum::http::{Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OTHER"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The labels of a request count: method and status class.
type RequestLabels = [(&'static str, &'static str); 2];

/// Request metrics of one gateway (clones share the values).
#[derive(Clone)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    /// `requests`' counters, by method then class, so counting needs no lookup.
    by_method: [[Counter; CLASSES.len()]; METHODS.len()],
    response_bytes: Counter,
    upload_bytes: Counter,
    passed_on: Counter,
    in_flight: Gauge,
    upload_duration: Histogram,
    connections: ListenerMetrics,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let by_method = METHODS.map(|method| {
            CLASSES
                .map(|class| requests.get_or_create_owned(&[("method", method), ("status", class)]))
        });
        GatewayMetrics {
            requests,
            by_method,
            response_bytes: Counter::default(),
            upload_bytes: Counter::default(),
            passed_on: Counter::default(),
            in_flight: Gauge::default(),
            // 10 ms to about 5.5 minutes, doubling.
            upload_duration: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            connections: ListenerMetrics::default(),
        }
    }
}

fn method_index(method: &str) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

fn class_index(class: u16) -> usize {
    usize::from(class).saturating_sub(1).min(CLASSES.len() - 1)
}

impl GatewayMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the metrics into `registry` (once per process: names must be unique).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kraken_gateway_requests",
            "Registry API requests finished, by method and status class",
            self.requests.clone(),
        );
        registry.register(
            "kraken_gateway_response_bytes",
            "Response body bytes sent",
            self.response_bytes.clone(),
        );
        registry.register(
            "kraken_gateway_upload_bytes",
            "Bytes received into upload sessions",
            self.upload_bytes.clone(),
        );
        registry.register(
            "kraken_gateway_passed_on_uploads",
            "Chunked uploads whose bytes went on to an origin as they arrived and were \
             stored there without being sent again",
            self.passed_on.clone(),
        );
        registry.register(
            "kraken_gateway_requests_in_flight",
            "Requests being served (until their body is sent)",
            self.in_flight.clone(),
        );
        registry.register_with_unit(
            "kraken_gateway_upload_duration",
            "Time from starting an upload session to its blob stored in the cluster \
             (completed uploads)",
            Unit::Seconds,
            self.upload_duration.clone(),
        );
        self.connections.register(registry, "kraken_gateway");
    }

    /// The registry listener's connection counts (`kraken_gateway_connections_*`).
    pub fn connections(&self) -> &ListenerMetrics {
        &self.connections
    }

    /// Counts a finished request and the body bytes sent for it.
    pub(crate) fn record(&self, method: &Method, status: StatusCode, bytes: u64) {
        self.by_method[method_index(method.as_str())][class_index(status.as_u16() / 100)].inc();
        self.response_bytes.inc_by(bytes);
    }

    /// Counts upload bytes written to a session.
    pub(crate) fn add_upload_bytes(&self, n: u64) {
        self.upload_bytes.inc_by(n);
    }

    /// A chunked upload was stored from the bytes passed on as they arrived.
    pub(crate) fn passed_on(&self) {
        self.passed_on.inc();
    }

    /// An upload session completed, `elapsed` after it started.
    pub(crate) fn upload_done(&self, elapsed: Duration) {
        self.upload_duration.observe(elapsed.as_secs_f64());
    }

    /// Adjusts the in-flight gauge.
    pub(crate) fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// Requests finished with `method` (`"GET"` …, anything else is `"OTHER"`) and a status
    /// in `class` (1 to 5).
    pub fn requests(&self, method: &str, class: u16) -> u64 {
        self.by_method[method_index(method)][class_index(class)].get()
    }

    /// Body bytes sent to clients.
    pub fn response_bytes(&self) -> u64 {
        self.response_bytes.get()
    }

    /// Bytes received into upload sessions.
    pub fn upload_bytes(&self) -> u64 {
        self.upload_bytes.get()
    }

    /// Chunked uploads stored from the bytes passed on to an origin as they arrived.
    pub fn passed_on_uploads(&self) -> u64 {
        self.passed_on.get()
    }

    /// The metrics alone in the Prometheus text format (tests; a process renders its one
    /// registry).
    #[cfg(test)]
    pub(crate) fn render(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            .expect("writing to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method_and_class() {
        let m = GatewayMetrics::new();
        m.record(&Method::GET, StatusCode::OK, 10);
        m.record(&Method::GET, StatusCode::NOT_FOUND, 5);
        m.record(&Method::from_bytes(b"BREW").unwrap(), StatusCode::OK, 0);
        m.in_flight(1);
        m.upload_done(Duration::from_millis(15));
        assert_eq!(m.requests("GET", 2), 1);
        assert_eq!(m.requests("GET", 4), 1);
        assert_eq!(m.requests("OTHER", 2), 1);
        assert_eq!(m.response_bytes(), 15);
        let text = m.render();
        for line in [
            "# TYPE kraken_gateway_requests_total counter",
            "kraken_gateway_requests_total{method=\"GET\",status=\"2xx\"} 1",
            // Every pair is there, zeros included.
            "kraken_gateway_requests_total{method=\"PATCH\",status=\"5xx\"} 0",
            "kraken_gateway_response_bytes_total 15",
            "kraken_gateway_upload_bytes_total 0",
            "# TYPE kraken_gateway_requests_in_flight gauge",
            "kraken_gateway_requests_in_flight 1",
            "# TYPE kraken_gateway_upload_duration_seconds histogram",
            "kraken_gateway_upload_duration_seconds_bucket{le=\"0.01\"} 0",
            "kraken_gateway_upload_duration_seconds_bucket{le=\"0.02\"} 1",
            "kraken_gateway_upload_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let series = text
            .lines()
            .filter(|l| l.starts_with("kraken_gateway_requests_total{"))
            .count();
        assert_eq!(series, METHODS.len() * CLASSES.len());
    }
}
