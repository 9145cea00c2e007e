//! [`DhtStats`]: the DHT's counters and gauges, kept in atomics the driver updates and any
//! handle reads.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one node's DHT counters (since start) and gauges (now).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Lookups (`find_providers`) started.
    pub lookups: u64,
    /// Lookups that failed: rate-limited, timed out with nothing found, or stopped.
    pub lookup_failures: u64,
    /// Sum of the latencies of answered lookups, in microseconds.
    pub lookup_latency_us_sum: u64,
    /// Number of answered lookups (the count of the sum above).
    pub lookup_latency_count: u64,
    /// Verified providers returned by lookups.
    pub providers_found: u64,
    /// Gauge: digests this node provides.
    pub keys_provided: u64,
    /// Provides dropped because the bounded queue of rate-limited provides was full.
    pub provides_dropped: u64,
    /// Gauge: card records held in the store (this node's own included).
    pub records_held: u64,
    /// Gauge: provider keys held for other nodes.
    pub provider_keys_held: u64,
    /// Inbound records dropped as malformed or failing verification.
    pub dropped_malformed: u64,
    /// Inbound records dropped by the per-peer rate limit.
    pub dropped_rate_limited: u64,
    /// Inbound records and connections dropped because their peer is blacklisted.
    pub dropped_blacklisted: u64,
    /// Inbound records refused because a store bound was reached.
    pub refused_store_full: u64,
    /// Gauge: DHT peers blacklisted.
    pub liars: u64,
    /// Gauge: peers in the routing table.
    pub routing_peers: u64,
}

macro_rules! cells {
    ($($field:ident),* $(,)?) => {
        /// The live cells behind [`DhtStats`].
        #[derive(Debug, Default)]
        pub(crate) struct StatsCells {
            $(pub(crate) $field: AtomicU64,)*
        }

        impl StatsCells {
            pub(crate) fn snapshot(&self) -> DhtStats {
                DhtStats { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

cells!(
    lookups,
    lookup_failures,
    lookup_latency_us_sum,
    lookup_latency_count,
    providers_found,
    keys_provided,
    provides_dropped,
    records_held,
    provider_keys_held,
    dropped_malformed,
    dropped_rate_limited,
    dropped_blacklisted,
    refused_store_full,
    liars,
    routing_peers,
);

/// Adds one to a counter.
pub(crate) fn bump(cell: &AtomicU64) {
    cell.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(cell: &AtomicU64, n: u64) {
    cell.fetch_add(n, Ordering::Relaxed);
}

/// Sets a gauge.
pub(crate) fn set(cell: &AtomicU64, n: usize) {
    cell.store(n as u64, Ordering::Relaxed);
}
