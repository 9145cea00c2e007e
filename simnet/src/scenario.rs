//! Scenarios: what to simulate, as a TOML file.
//!
//! Every table and key is optional; a missing one takes the documented default. Units are
//! in the key names: `_bytes`, `_mb_s` (megabytes per second, 10^6 bytes/s), `_ms`, `_s`;
//! the tables shared with the nodes' config files (`[swarm]`, `[origin_swarm]` and the
//! handout keys of `[trackers]`) write seconds as `_secs`, as the nodes do.
//!
//! ```toml
//! name = "example"
//! seed = 7                       # overridden by `simnet --seed`
//! discovery = "tracker"          # or "dht": provider lookups instead of announces
//!
//! [blob]
//! size_bytes = 1_000_000_000
//! piece_length = 4_194_304
//!
//! [agents]
//! count = 1000
//! upload_mb_s = 300.0
//! download_mb_s = 300.0
//! slow_fraction = 0.1            # 10% of agents have slow_factor × the bandwidth
//! slow_factor = 0.1
//!
//! [origins]
//! count = 3
//! upload_mb_s = 1250.0
//!
//! [trackers]
//! count = 3                      # one logical peer store; the count is informational
//! max_peers = 50                 # the handout's settings, as a node's [tracker] has them
//! peer_ttl_secs = 60
//!
//! [swarm]                        # the agents' SwarmConfig, as a node's [swarm]
//! upload_slots = 8
//! announce_interval_secs = 3
//!
//! [origin_swarm]                 # the origins', as a node's [origin.swarm]; keys left
//! upload_slots = 8               # out take SwarmConfig::origin()'s values
//!
//! [network]
//! latency_ms = 0.5               # one-way, per link: latency_ms + U(0, jitter_ms)
//! latency_jitter_ms = 0.5
//!
//! [arrival]
//! pattern = "poisson"            # "all-at-once" | "waves" | "poisson"
//! rate_per_s = 500.0
//!
//! [dht]                          # used when discovery = "dht"; see `crate::dht`
//! k = 20
//! alpha = 3
//! store_max_providers = 20
//! when_full = "ignore"           # or "replace-random"
//! answer = "first"               # or "random"
//! lookup = { model = "kademlia" }   # or { model = "uniform", min_ms = 5.0, max_ms = 50.0 }
//! record_ttl_s = 172_800.0
//! republish_interval_s = 43_200.0
//! relookup_interval_s = 2.0
//! provide_after_pieces = 1       # 0: provide on arrival
//!
//! [faults]
//! corrupt_fraction = 0.01        # agents whose every upload fails verification
//! kill_origins = [{ at_s = 5.0, origin = 0 }]
//! tracker_outages = [{ start_s = 2.0, duration_s = 10.0 }]
//! ```
//!
//! A scenario simulates **one blob**. An image of several layers pulled at once is
//! approximated by one blob of their total size (the layers' swarms share every host's
//! links, so their sum behaves like one swarm of the total size; per-layer piece rarity
//! differences are lost).

use kraken_transport::swarm::SwarmConfig;
use kraken_transport::swarm::handout::HandoutConfig;
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::dht::{DhtConfig, Discovery};

/// A whole scenario. See the module docs for the file format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports. Default: `"unnamed"`.
    pub name: String,
    /// Seed of every random choice in the run. Default: 1.
    pub seed: u64,
    /// The blob being distributed.
    pub blob: BlobConfig,
    /// The agents (one per host), all downloading the blob.
    pub agents: HostConfig,
    /// The origins, all holding the blob from the start.
    pub origins: HostConfig,
    /// The trackers.
    pub trackers: TrackersConfig,
    /// How agents find peers: `"tracker"` (the default) or `"dht"`.
    pub discovery: Discovery,
    /// The DHT's settings, used when `discovery = "dht"`.
    pub dht: DhtConfig,
    /// Link latency and failure detection.
    pub network: NetworkConfig,
    /// When agents start pulling.
    pub arrival: Arrival,
    /// The agents' swarm settings (a node's `[swarm]`). Default: `SwarmConfig`'s, the
    /// nodes'; every agent's `rng_seed` is drawn from the run's seed.
    pub swarm: SwarmConfig,
    /// The origins' swarm settings (a node's `[origin.swarm]`); keys left out take
    /// [`SwarmConfig::origin`]'s values, the origins'.
    #[serde(deserialize_with = "SwarmConfig::deserialize_origin")]
    pub origin_swarm: SwarmConfig,
    /// Faults injected during the run.
    pub faults: FaultConfig,
    /// When to give up.
    pub limits: LimitsConfig,
}

impl Default for Scenario {
    /// A small sanity scenario: 100 agents fetch a 256 MiB blob from 2 origins at
    /// data-centre speeds, all at once.
    fn default() -> Self {
        Scenario {
            name: "unnamed".into(),
            seed: 1,
            blob: BlobConfig::default(),
            agents: HostConfig::default_agents(),
            origins: HostConfig::default_origins(),
            trackers: TrackersConfig::default(),
            discovery: Discovery::Tracker,
            dht: DhtConfig::default(),
            network: NetworkConfig::default(),
            arrival: Arrival::default(),
            swarm: SwarmConfig::default(),
            origin_swarm: SwarmConfig::origin(),
            faults: FaultConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Scenario {
    /// Parses and validates a scenario.
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// Rejects scenarios that cannot run.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Invalid(m));
        if self.blob.size_bytes == 0 {
            return bad("blob.size_bytes must be above 0".into());
        }
        if self.agents.count == 0 {
            return bad("agents.count must be at least 1".into());
        }
        if self.origins.count == 0 {
            return bad("origins.count must be at least 1".into());
        }
        for (what, h) in [("agents", &self.agents), ("origins", &self.origins)] {
            if !(positive(h.upload_mb_s) && positive(h.download_mb_s)) {
                return bad(format!("{what}: bandwidths must be above 0"));
            }
            if !(0.0..=1.0).contains(&h.slow_fraction) {
                return bad(format!("{what}.slow_fraction must be in [0, 1]"));
            }
            if !(positive(h.slow_factor) && h.slow_factor <= 1.0) {
                return bad(format!("{what}.slow_factor must be in (0, 1]"));
            }
        }
        if !(non_negative(self.network.latency_ms) && non_negative(self.network.latency_jitter_ms))
        {
            return bad("network latencies must be at least 0".into());
        }
        if !non_negative(self.network.dead_peer_detect_ms) {
            return bad("network.dead_peer_detect_ms must be at least 0".into());
        }
        self.trackers
            .handout
            .validate()
            .map_err(SimError::Handout)?;
        self.dht.validate().map_err(SimError::Invalid)?;
        match self.arrival {
            Arrival::AllAtOnce => {}
            Arrival::Waves { waves, interval_s } => {
                if waves == 0 || interval_s < 0.0 {
                    return bad("arrival: waves must be ≥ 1 and interval_s ≥ 0".into());
                }
            }
            Arrival::Poisson { rate_per_s } => {
                if !positive(rate_per_s) {
                    return bad("arrival.rate_per_s must be above 0".into());
                }
            }
        }
        let f = &self.faults;
        if !(0.0..=1.0).contains(&f.corrupt_fraction) || !(0.0..=1.0).contains(&f.churn_fraction) {
            return bad("faults: fractions must be in [0, 1]".into());
        }
        if f.churn_fraction > 0.0 && !positive(f.churn_window_s) {
            return bad("faults.churn_window_s must be above 0 when churn_fraction is".into());
        }
        for k in &f.kill_origins {
            if k.origin >= self.origins.count {
                return bad(format!(
                    "faults.kill_origins: origin {} does not exist (count {})",
                    k.origin, self.origins.count
                ));
            }
            if !non_negative(k.at_s) {
                return bad("faults.kill_origins: at_s must be at least 0".into());
            }
        }
        for o in &f.tracker_outages {
            if !(non_negative(o.start_s) && non_negative(o.duration_s)) {
                return bad("faults.tracker_outages: times must be at least 0".into());
            }
        }
        if !positive(self.limits.max_time_s) {
            return bad("limits.max_time_s must be above 0".into());
        }
        for (table, swarm) in [("swarm", &self.swarm), ("origin_swarm", &self.origin_swarm)] {
            swarm
                .validate()
                .map_err(|source| SimError::Swarm { table, source })?;
        }
        kraken_storage::Metainfo::new(
            kraken_storage::Digest::sha256_of(b"validate"),
            self.blob.size_bytes,
            self.blob.piece_length,
            vec![
                kraken_storage::PieceHash([0; 32]);
                self.blob
                    .size_bytes
                    .div_ceil(u64::from(self.blob.piece_length.max(1))) as usize
            ],
        )
        .map_err(SimError::Blob)?;
        Ok(())
    }
}

/// True for a number above 0 (false for NaN).
fn positive(x: f64) -> bool {
    x > 0.0
}

/// True for a number at least 0 (false for NaN).
fn non_negative(x: f64) -> bool {
    x >= 0.0
}

/// The blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobConfig {
    /// Length in bytes. Default: 256 MiB.
    pub size_bytes: u64,
    /// Piece length in bytes (within the storage crate's limits). Default: 4 MiB.
    pub piece_length: u32,
}

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig {
            size_bytes: 256 << 20,
            piece_length: 4 << 20,
        }
    }
}

/// A class of hosts and their links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// How many. Default: 100 agents, 2 origins.
    pub count: usize,
    /// Uplink capacity, MB/s (10^6 bytes/s). Default: 300 for agents, 1250 for origins.
    pub upload_mb_s: f64,
    /// Downlink capacity, MB/s. Default: same as the uplink.
    pub download_mb_s: f64,
    /// Fraction of these hosts that are slow. Default: 0.
    pub slow_fraction: f64,
    /// A slow host's bandwidths are this multiple of the normal ones. Default: 0.1.
    pub slow_factor: f64,
}

impl HostConfig {
    fn default_agents() -> Self {
        HostConfig {
            count: 100,
            upload_mb_s: 300.0,
            download_mb_s: 300.0,
            slow_fraction: 0.0,
            slow_factor: 0.1,
        }
    }

    fn default_origins() -> Self {
        HostConfig {
            count: 2,
            upload_mb_s: 1250.0,
            download_mb_s: 1250.0,
            ..HostConfig::default_agents()
        }
    }
}

impl Default for HostConfig {
    /// The agents' defaults.
    fn default() -> Self {
        HostConfig::default_agents()
    }
}

/// The trackers: one logical [`PeerStore`](kraken_transport::swarm::handout::PeerStore).
/// (Not a node's `[tracker]`, the settings of one tracker process; this table describes
/// the simulated trackers, and shares with it the handout's keys.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackersConfig {
    /// Number of trackers (informational: they share one peer store). Default: 1.
    pub count: usize,
    /// The peer store's settings: `max_peers` (default 50) and `peer_ttl_secs` (default
    /// 60), keys of this table, as in a node's `[tracker]`.
    #[serde(flatten)]
    pub handout: HandoutConfig,
}

impl Default for TrackersConfig {
    fn default() -> Self {
        TrackersConfig {
            count: 1,
            handout: HandoutConfig::default(),
        }
    }
}

/// Latency and failure detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Base one-way latency of every link, ms. Default: 0.25 (one data centre).
    pub latency_ms: f64,
    /// Each link adds a fixed U(0, jitter) to the base, drawn from the seed. Default: 0.25.
    pub latency_jitter_ms: f64,
    /// How long after a host dies its peers notice (QUIC idle timeout), ms. Default: 1000.
    pub dead_peer_detect_ms: f64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            latency_ms: 0.25,
            latency_jitter_ms: 0.25,
            dead_peer_detect_ms: 1000.0,
        }
    }
}

/// When agents start pulling the blob.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "pattern", rename_all = "kebab-case")]
pub enum Arrival {
    /// Every agent at time 0 (a deploy to the whole fleet). The default.
    #[default]
    AllAtOnce,
    /// Agents split into `waves` equal groups, `interval_s` apart (a rolling deploy).
    Waves {
        /// Number of groups.
        waves: usize,
        /// Seconds between groups.
        interval_s: f64,
    },
    /// Exponential inter-arrival times at `rate_per_s` agents per second.
    Poisson {
        /// Mean arrivals per second.
        rate_per_s: f64,
    },
}

/// Faults. Default: none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Fraction of agents whose every upload fails verification at the receiver.
    pub corrupt_fraction: f64,
    /// Origins that die (and never return).
    pub kill_origins: Vec<KillOrigin>,
    /// Periods in which every announce fails (all trackers down).
    pub tracker_outages: Vec<TrackerOutage>,
    /// Fraction of agents that leave (die) at a uniform time within `churn_window_s`
    /// after they arrive, finished or not.
    pub churn_fraction: f64,
    /// See `churn_fraction`, seconds.
    pub churn_window_s: f64,
}

/// An origin that dies at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillOrigin {
    /// When, seconds from the start.
    pub at_s: f64,
    /// Which origin (0-based).
    pub origin: usize,
}

/// Every tracker is down for a while: announces get no answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerOutage {
    /// Start, seconds.
    pub start_s: f64,
    /// Length, seconds.
    pub duration_s: f64,
}

/// When to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Virtual seconds after which the run stops even if agents are unfinished. Default: 3600.
    pub max_time_s: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_time_s: 3600.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_and_valid() {
        let s = Scenario::from_toml("").unwrap();
        assert_eq!(s, Scenario::default());
    }

    #[test]
    fn unknown_keys_and_nonsense_are_rejected() {
        assert!(matches!(
            Scenario::from_toml("[agents]\ncont = 3"),
            Err(SimError::Parse(_))
        ));
        assert!(matches!(
            Scenario::from_toml("[agents]\ncount = 0"),
            Err(SimError::Invalid(_))
        ));
        assert!(matches!(
            Scenario::from_toml("[[faults.kill_origins]]\nat_s = 1.0\norigin = 9"),
            Err(SimError::Invalid(_))
        ));
    }

    #[test]
    fn swarm_tables_are_the_nodes_settings_and_old_keys_are_named() {
        let s = Scenario::from_toml(
            "[swarm]\nupload_slots = 4\nannounce_interval_secs = 1.5\n\
             [origin_swarm]\nupload_slots = 16\n\
             [trackers]\ncount = 2\nmax_peers = 20\npeer_ttl_secs = 30\n",
        )
        .unwrap();
        let secs = std::time::Duration::from_secs_f64;
        assert_eq!(
            s.swarm,
            SwarmConfig {
                upload_slots: 4,
                announce_interval: secs(1.5),
                ..SwarmConfig::default()
            }
        );
        // Keys the origins' table leaves out are an origin's.
        assert_eq!(
            s.origin_swarm,
            SwarmConfig {
                upload_slots: 16,
                ..SwarmConfig::origin()
            }
        );
        assert_eq!(
            s.trackers,
            TrackersConfig {
                count: 2,
                handout: HandoutConfig {
                    max_peers: 20,
                    peer_ttl: secs(30.0),
                },
            }
        );
        for (table, key) in [
            ("swarm", "origin_upload_slots"),
            ("swarm", "origin_max_connections"),
            ("trackers", "announce_interval_s"),
            ("trackers", "peer_ttl_s"),
        ] {
            let e = Scenario::from_toml(&format!("[{table}]\n{key} = 1"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("unknown field `{key}`")), "{e}");
        }
        assert!(matches!(
            Scenario::from_toml("[origin_swarm]\nupload_slots = 0"),
            Err(SimError::Swarm {
                table: "origin_swarm",
                ..
            })
        ));
        assert!(matches!(
            Scenario::from_toml("[trackers]\nmax_peers = 0"),
            Err(SimError::Handout(_))
        ));
    }

    #[test]
    fn discovery_and_dht_table_parse_and_are_checked() {
        let s = Scenario::from_toml(
            "discovery = \"dht\"\n[dht]\nk = 8\nrelookup_interval_s = 1.0\n\
             lookup = { model = \"uniform\", min_ms = 5.0, max_ms = 50.0 }\n",
        )
        .unwrap();
        assert_eq!(s.discovery, Discovery::Dht);
        assert_eq!(s.dht.k, 8);
        assert_eq!(s.dht.relookup_interval_s, 1.0);
        assert_eq!(
            s.dht.lookup,
            crate::dht::LookupDelay::Uniform {
                min_ms: 5.0,
                max_ms: 50.0
            }
        );
        assert_eq!(s.dht.alpha, DhtConfig::default().alpha);
        assert_eq!(Scenario::default().discovery, Discovery::Tracker);
        assert!(matches!(
            Scenario::from_toml("discovery = \"gossip\""),
            Err(SimError::Parse(_))
        ));
        assert!(matches!(
            Scenario::from_toml("[dht]\nalpha = 0"),
            Err(SimError::Invalid(_))
        ));
        assert!(matches!(
            Scenario::from_toml("[dht]\nlookup_ms = 3"),
            Err(SimError::Parse(_))
        ));
    }

    #[test]
    fn arrival_patterns_parse() {
        let s = Scenario::from_toml("[arrival]\npattern = \"waves\"\nwaves = 3\ninterval_s = 2.0")
            .unwrap();
        assert_eq!(
            s.arrival,
            Arrival::Waves {
                waves: 3,
                interval_s: 2.0
            }
        );
    }
}
