//! Request counters of the gateway, rendered in the Prometheus text format.
//!
//! [`GatewayMetrics`] is a cheap handle (an `Arc`): put a clone in the
//! [`crate::GatewayConfig`], keep one, and call [`GatewayMetrics::render`] from the node's
//! `/metrics` endpoint. Counters are plain atomics, by method and status class.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::http::{Method, StatusCode};

const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OTHER"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Default)]
struct Counters {
    requests: [[AtomicU64; 5]; 7],
    response_bytes: AtomicU64,
    upload_bytes: AtomicU64,
    in_flight: AtomicI64,
}

/// Request metrics of one gateway (clones share the counters).
#[derive(Clone, Default)]
pub struct GatewayMetrics {
    inner: Arc<Counters>,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

fn method_index(method: &Method) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1)
}

fn class_index(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100)
        .saturating_sub(1)
        .min(CLASSES.len() - 1)
}

impl GatewayMetrics {
    /// Fresh counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a finished request and the body bytes sent for it.
    pub(crate) fn record(&self, method: &Method, status: StatusCode, bytes: u64) {
        self.inner.requests[method_index(method)][class_index(status)]
            .fetch_add(1, Ordering::Relaxed);
        self.inner
            .response_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts upload bytes written to a session.
    pub(crate) fn add_upload_bytes(&self, n: u64) {
        self.inner.upload_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Adjusts the in-flight gauge.
    pub(crate) fn in_flight(&self, delta: i64) {
        self.inner.in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    /// Requests finished with `method` (`"GET"` …, anything else is `"OTHER"`) and a status
    /// in `class` (1 to 5).
    pub fn requests(&self, method: &str, class: u16) -> u64 {
        let m = METHODS
            .iter()
            .position(|x| *x == method)
            .unwrap_or(METHODS.len() - 1);
        let c = usize::from(class).saturating_sub(1).min(CLASSES.len() - 1);
        self.inner.requests[m][c].load(Ordering::Relaxed)
    }

    /// Body bytes sent to clients.
    pub fn response_bytes(&self) -> u64 {
        self.inner.response_bytes.load(Ordering::Relaxed)
    }

    /// Bytes received into upload sessions.
    pub fn upload_bytes(&self) -> u64 {
        self.inner.upload_bytes.load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP kraken_gateway_requests_total Registry API requests finished, by method and status class.\n");
        out.push_str("# TYPE kraken_gateway_requests_total counter\n");
        for (m, method) in METHODS.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = self.inner.requests[m][c].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "kraken_gateway_requests_total{{method=\"{method}\",status=\"{class}\"}} {n}"
                );
            }
        }
        let scalar = |out: &mut String, name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        scalar(
            &mut out,
            "kraken_gateway_response_bytes_total",
            "counter",
            "Response body bytes sent.",
            self.response_bytes().to_string(),
        );
        scalar(
            &mut out,
            "kraken_gateway_upload_bytes_total",
            "counter",
            "Bytes received into upload sessions.",
            self.upload_bytes().to_string(),
        );
        scalar(
            &mut out,
            "kraken_gateway_requests_in_flight",
            "gauge",
            "Requests being served (until their body is sent).",
            self.inner.in_flight.load(Ordering::Relaxed).to_string(),
        );
        out
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
        assert_eq!(m.requests("GET", 2), 1);
        assert_eq!(m.requests("GET", 4), 1);
        assert_eq!(m.requests("OTHER", 2), 1);
        assert_eq!(m.response_bytes(), 15);
        let text = m.render();
        assert!(text.contains("kraken_gateway_requests_total{method=\"GET\",status=\"2xx\"} 1"));
        assert!(text.contains("kraken_gateway_response_bytes_total 15"));
    }
}
