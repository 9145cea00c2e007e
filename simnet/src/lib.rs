//! simnet: a deterministic discrete-event simulator that drives the **real** swarm state
//! machine of `kraken-transport` (no default features: pure, no I/O) over a modelled
//! network, for thousands of hosts on one thread.
//!
//! Modules:
//! - [`scenario`]: what to simulate, as TOML (hosts, bandwidths, latency, arrivals, faults),
//!   with documented defaults and `validate()`.
//! - [`dht`]: the DHT discovery model (lookup delay, the provider store a lookup reads,
//!   provides and their republishing), next to the tracker's handout.
//! - [`net`]: the bandwidth model: piece transfers as fluid flows sharing each host's
//!   uplink and downlink fairly, recomputed as flows start and end.
//! - [`queue`]: the event queue, a radix heap over `(time, seq)` keys.
//! - [`sim`]: the event core: virtual clock, `(time, seq)` queue, one `Swarm` per host, the
//!   tracker's real `PeerStore`, fault injection.
//! - [`report`]: completion-time distribution, link use, origin egress and bytes by kind,
//!   compared with the Kumar & Ross lower bound; JSON, text and an SVG CDF.
//!
//! ```no_run
//! let scenario = kraken_simnet::Scenario::from_toml("[agents]\ncount = 50").unwrap();
//! let report = kraken_simnet::Simulation::new(&scenario, 7).unwrap().run();
//! println!("{}", report.summary());
//! ```
//!
//! **Approximations** (a simnet figure is a model, not a measurement): a flow gets its
//! fair share at once (no TCP/QUIC slow start or congestion window), nothing is lost or
//! reordered, control messages are free of bandwidth, one round of progressive filling
//! instead of exact max-min fairness (see [`net`]), disks and CPUs are infinitely fast,
//! origins hold the blob from the start (no backend read-through, no ring repair after an
//! origin dies), all trackers are one logical peer store (an outage fails every announce),
//! and a scenario is one blob (a multi-layer image is modelled as one blob of the total
//! size). Every run is reproducible from its seed, which every report carries.

pub mod dht;
pub mod net;
pub mod queue;
pub mod report;
pub mod scenario;
pub mod sim;

pub use report::{Bound, Dist, Report};
pub use scenario::Scenario;
pub use sim::{Progress, Simulation};

/// Why a scenario cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The TOML did not parse or has unknown keys.
    #[error("scenario does not parse: {0}")]
    Parse(#[from] toml::de::Error),
    /// The scenario parsed but makes no sense.
    #[error("invalid scenario: {0}")]
    Invalid(String),
    /// The blob's length and piece length make no metainfo.
    #[error("invalid scenario: blob: {0}")]
    Blob(#[source] kraken_storage::MetainfoError),
    /// A swarm table (`swarm` or `origin_swarm`) is unusable.
    #[error("invalid scenario: {table}: {source}")]
    Swarm {
        /// The table.
        table: &'static str,
        /// What is wrong.
        source: kraken_transport::swarm::SwarmConfigError,
    },
    /// The trackers' handout settings are unusable.
    #[error("invalid scenario: trackers.{0}")]
    Handout(#[source] kraken_transport::swarm::handout::HandoutConfigError),
}
