//! `SwarmConfig`: the settings of the swarm scheduler, and their form in config files.
//!
//! This is the one definition of them: a node reads its agent role's from `[swarm]` and its
//! origin role's from `[origin.swarm]`, and simnet's scenarios read `[swarm]` (agents) and
//! `[origin_swarm]` (origins), all by deserializing this struct. Every key is optional and
//! takes the default documented on its field; unknown keys are refused. Durations are
//! `<name>_secs` keys, whole or fractional seconds (`seed_tti_secs = 300`,
//! `request_timeout_base_secs = 2.5`). `rng_seed` is not a key: its owner draws it (a node
//! at random per exchange, simnet from the run's seed per host).

use std::cell::Cell;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a [`SwarmConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid swarm config: {0}")]
pub struct SwarmConfigError(pub String);

/// Scheduler settings for one blob's swarm.
///
/// The defaults ([`Default`]) are an agent's and follow Kraken's production tuning for
/// data-centre links: ten connections per blob (a sparse random graph with a small
/// diameter), short request pipelines (3 to agents, 5 to origins, which have more upload
/// capacity) and timeouts generous enough for a 4 MiB piece at 1 MiB/s.
/// [`SwarmConfig::origin`] is what origins run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "SwarmConfig::serde_base", deny_unknown_fields)]
pub struct SwarmConfig {
    /// Most agent peers connected for this blob, inbound and outbound together.
    /// Default: 10 (an origin's: 256).
    pub max_connections: usize,
    /// Most origin peers connected for this blob, on top of `max_connections`. Origins
    /// are asked only for what no agent peer has (`spare_origins`), so a session with one
    /// must not take the place of an agent that would serve us all along: agents whose
    /// handouts filled their slots with origins downloaded at two thirds of the rate of
    /// the others in simnet's `kraken-benchmark`. Default: 2.
    pub max_origin_connections: usize,
    /// Requests in flight to one agent. Default: 3.
    pub pipeline_to_agents: usize,
    /// Requests in flight to one origin. Default: 5.
    pub pipeline_to_origins: usize,
    /// Ask origins only for pieces that no connected agent has (outside the endgame):
    /// origin egress stays near one copy of the blob while agents serve each other.
    /// Default: true.
    pub spare_origins: bool,
    /// Pieces this node uploads at once for this blob, across all peers. Default: 8 (also
    /// on origins: more run each piece slower and finish none sooner).
    pub upload_slots: usize,
    /// Serve requests for pieces never sent before others (for origins). A seeder whose
    /// uplink bounds the swarm then sends each piece about once, while agents carry the
    /// copies; on an agent it would delay the copies its peers are waiting for.
    /// Default: false (an origin's: true).
    pub new_pieces_first: bool,
    /// Requests a peer may queue with us beyond those being served; more are rejected.
    /// Default: 16.
    pub max_queued_requests_per_peer: usize,
    /// Fixed part of a request's timeout (`request_timeout_base_secs`). Default: 4 s.
    #[serde(rename = "request_timeout_base_secs", with = "secs")]
    pub request_timeout_base: Duration,
    /// Slowest acceptable transfer rate, in bytes/s: a piece of `n` bytes may take
    /// `request_timeout_base + n / min_transfer_rate`. Default: 1 MiB/s (1048576).
    pub min_transfer_rate: u64,
    /// Endgame starts when at most this many pieces are missing: outstanding pieces are
    /// requested from a second peer too, and the loser is cancelled. Default: 8.
    pub endgame_pieces: u32,
    /// Timeouts by one peer before it is blacklisted as stalled. Default: 3.
    pub stall_strikes: u32,
    /// How long a peer that sent a bad piece or broke the protocol is shunned
    /// (`blacklist_bad_peer_secs`). Default: 600 s.
    #[serde(rename = "blacklist_bad_peer_secs", with = "secs")]
    pub blacklist_bad_peer: Duration,
    /// How long a peer that could not be reached, or stalled, is shunned
    /// (`blacklist_unreachable_secs`). Default: 30 s.
    #[serde(rename = "blacklist_unreachable_secs", with = "secs")]
    pub blacklist_unreachable: Duration,
    /// How long a peer that refused our session (at its connection limit) is left alone:
    /// short, since its sessions end as its peers complete (`blacklist_busy_secs`).
    /// Default: 3 s.
    #[serde(rename = "blacklist_busy_secs", with = "secs")]
    pub blacklist_busy: Duration,
    /// Connections with no message either way for this long are closed
    /// (`idle_timeout_secs`). Default: 60 s.
    #[serde(rename = "idle_timeout_secs", with = "secs")]
    pub idle_timeout: Duration,
    /// After completing, keep seeding until nobody downloaded from us for this long
    /// (`seed_tti_secs`). Default: 300 s.
    #[serde(rename = "seed_tti_secs", with = "secs")]
    pub seed_tti: Duration,
    /// Announce interval until the tracker says otherwise (`announce_interval_secs`).
    /// Default: 3 s.
    #[serde(rename = "announce_interval_secs", with = "secs")]
    pub announce_interval: Duration,
    /// Seed of the scheduler's random choices (tie-breaks): same seed, same decisions.
    /// Not read from files: a node draws one at random per exchange, simnet derives one
    /// per host from the run's seed. Default: 0.
    #[serde(skip)]
    pub rng_seed: u64,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            max_connections: 10,
            max_origin_connections: 2,
            pipeline_to_agents: 3,
            pipeline_to_origins: 5,
            spare_origins: true,
            upload_slots: 8,
            new_pieces_first: false,
            max_queued_requests_per_peer: 16,
            request_timeout_base: Duration::from_secs(4),
            min_transfer_rate: 1 << 20,
            endgame_pieces: 8,
            stall_strikes: 3,
            blacklist_bad_peer: Duration::from_secs(600),
            blacklist_unreachable: Duration::from_secs(30),
            blacklist_busy: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(60),
            seed_tti: Duration::from_secs(300),
            announce_interval: Duration::from_secs(3),
            rng_seed: 0,
        }
    }
}

thread_local! {
    /// Whether a `SwarmConfig` being deserialized on this thread is an origin's (inside
    /// [`SwarmConfig::deserialize_origin`]): serde fills missing keys from a plain
    /// function, so the role reaches it through here.
    static DESERIALIZING_ORIGIN: Cell<bool> = const { Cell::new(false) };
}

impl SwarmConfig {
    /// What origins run: the agent's defaults, except that an origin accepts 256 agents
    /// per blob (`max_connections`: it seeds every agent that cannot find a piece
    /// elsewhere, so it takes many more sessions than an agent) and serves pieces it never
    /// sent first (`new_pieces_first`). Nodes and the simulator both start from it.
    pub fn origin() -> Self {
        SwarmConfig {
            max_connections: 256,
            new_pieces_first: true,
            ..SwarmConfig::default()
        }
    }

    /// Deserializes an origin's settings: keys left out take [`SwarmConfig::origin`]'s
    /// values, not an agent's (for `#[serde(deserialize_with = "…")]`).
    pub fn deserialize_origin<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Puts the flag back however deserialization ends.
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                DESERIALIZING_ORIGIN.set(self.0);
            }
        }
        let _restore = Restore(DESERIALIZING_ORIGIN.replace(true));
        SwarmConfig::deserialize(d)
    }

    /// Where keys missing from a file take their values.
    fn serde_base() -> Self {
        if DESERIALIZING_ORIGIN.get() {
            SwarmConfig::origin()
        } else {
            SwarmConfig::default()
        }
    }

    /// Rejects settings that would stall the swarm; the message names the file's key.
    pub fn validate(&self) -> Result<(), SwarmConfigError> {
        let nonzero = [
            ("max_connections", self.max_connections),
            ("max_origin_connections", self.max_origin_connections),
            ("pipeline_to_agents", self.pipeline_to_agents),
            ("pipeline_to_origins", self.pipeline_to_origins),
            ("upload_slots", self.upload_slots),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(SwarmConfigError(format!("{name} must be at least 1")));
            }
        }
        if self.min_transfer_rate == 0 {
            return Err(SwarmConfigError("min_transfer_rate must be above 0".into()));
        }
        if self.stall_strikes == 0 {
            return Err(SwarmConfigError("stall_strikes must be at least 1".into()));
        }
        if self.announce_interval.is_zero() {
            return Err(SwarmConfigError(
                "announce_interval_secs must be above 0".into(),
            ));
        }
        Ok(())
    }

    /// How long a request for a piece of `len` bytes may take.
    pub fn request_timeout(&self, len: u32) -> Duration {
        let transfer = Duration::from_secs_f64(f64::from(len) / self.min_transfer_rate as f64);
        self.request_timeout_base + transfer
    }
}

/// A [`Duration`] as a number of seconds in a config file (`#[serde(with = "secs")]`):
/// whole seconds are written as an integer and anything else as a fraction; both are read.
pub(crate) mod secs {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Unexpected, Visitor};
    use serde::{Deserializer, Serializer};

    /// Writes `d` in seconds.
    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 {
            s.serialize_u64(d.as_secs())
        } else {
            s.serialize_f64(d.as_secs_f64())
        }
    }

    /// Reads a whole or fractional number of seconds, at least 0.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Secs)
    }

    struct Secs;

    impl Visitor<'_> for Secs {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number of seconds, at least 0")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v)
                .map_err(|_| E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error, MapDeserializer};

    use super::*;

    /// A table of `(key, value)` as a deserializer (this crate parses no config format).
    fn table<V: IntoDeserializer<'static, Error>>(
        entries: Vec<(&'static str, V)>,
    ) -> MapDeserializer<'static, std::vec::IntoIter<(&'static str, V)>, Error> {
        MapDeserializer::new(entries.into_iter())
    }

    fn agent<V: IntoDeserializer<'static, Error>>(
        entries: Vec<(&'static str, V)>,
    ) -> Result<SwarmConfig, Error> {
        SwarmConfig::deserialize(table(entries))
    }

    #[test]
    fn an_empty_table_is_the_default_and_an_origins_is_the_origin_variant() {
        assert_eq!(agent::<u64>(vec![]).unwrap(), SwarmConfig::default());
        let origin = SwarmConfig::deserialize_origin(table::<u64>(vec![])).unwrap();
        assert_eq!(origin, SwarmConfig::origin());
        // An origin's keys left out are the origin's, and the role does not leak.
        let o = SwarmConfig::deserialize_origin(table(vec![("upload_slots", 4u64)])).unwrap();
        assert_eq!((o.max_connections, o.upload_slots), (256, 4));
        assert!(o.new_pieces_first);
        assert_eq!(agent::<u64>(vec![]).unwrap(), SwarmConfig::default());
        SwarmConfig::origin().validate().unwrap();
    }

    #[test]
    fn durations_are_seconds_whole_or_fractional() {
        let c = agent(vec![("seed_tti_secs", 30u64)]).unwrap();
        assert_eq!(c.seed_tti, Duration::from_secs(30));
        let c = agent(vec![("request_timeout_base_secs", 2.5f64)]).unwrap();
        assert_eq!(c.request_timeout_base, Duration::from_millis(2500));
        let e = agent(vec![("seed_tti_secs", -1i64)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 0"), "{e}");
        let e = agent(vec![("seed_tti", 1u64)]).unwrap_err().to_string();
        assert!(e.contains("unknown field `seed_tti`"), "{e}");
        let e = agent(vec![("rng_seed", 1u64)]).unwrap_err().to_string();
        assert!(e.contains("unknown field `rng_seed`"), "{e}");
    }

    #[test]
    fn nonsense_is_refused_by_key() {
        let e = SwarmConfig {
            upload_slots: 0,
            ..SwarmConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid swarm config: upload_slots must be at least 1"
        );
        let e = SwarmConfig {
            announce_interval: Duration::ZERO,
            ..SwarmConfig::origin()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("announce_interval_secs"), "{e}");
    }
}
