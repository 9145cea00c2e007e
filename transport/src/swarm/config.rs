//! `SwarmConfig`: the knobs of the swarm scheduler.

use std::time::Duration;

/// Why a [`SwarmConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid swarm config: {0}")]
pub struct SwarmConfigError(pub String);

/// Scheduler settings for one blob's swarm.
///
/// The defaults follow Kraken's production tuning for data-centre links: ten connections
/// per blob (a sparse random graph with a small diameter), short request pipelines (3 to
/// agents, 5 to origins, which have more upload capacity) and timeouts generous enough for
/// a 4 MiB piece at 1 MiB/s.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Most agent peers connected for this blob, inbound and outbound together.
    pub max_connections: usize,
    /// Most origin peers connected for this blob, on top of `max_connections`. Origins
    /// are asked only for what no agent peer has (`spare_origins`), so a session with one
    /// must not take the place of an agent that would serve us all along: agents whose
    /// handouts filled their slots with origins downloaded at two thirds of the rate of
    /// the others in simnet's `kraken-benchmark`.
    pub max_origin_connections: usize,
    /// Requests in flight to one agent.
    pub pipeline_to_agents: usize,
    /// Requests in flight to one origin.
    pub pipeline_to_origins: usize,
    /// Ask origins only for pieces that no connected agent has (outside the endgame):
    /// origin egress stays near one copy of the blob while agents serve each other.
    pub spare_origins: bool,
    /// Pieces this node uploads at once for this blob, across all peers.
    pub upload_slots: usize,
    /// Serve requests for pieces never sent before others (for origins). A seeder whose
    /// uplink bounds the swarm then sends each piece about once, while agents carry the
    /// copies; on an agent it would delay the copies its peers are waiting for.
    pub new_pieces_first: bool,
    /// Requests a peer may queue with us beyond those being served; more are rejected.
    pub max_queued_requests_per_peer: usize,
    /// Fixed part of a request's timeout.
    pub request_timeout_base: Duration,
    /// Slowest acceptable transfer rate, in bytes/s: a piece of `n` bytes may take
    /// `request_timeout_base + n / min_transfer_rate`.
    pub min_transfer_rate: u64,
    /// Endgame starts when at most this many pieces are missing: outstanding pieces are
    /// requested from a second peer too, and the loser is cancelled.
    pub endgame_pieces: u32,
    /// Timeouts by one peer before it is blacklisted as stalled.
    pub stall_strikes: u32,
    /// How long a peer that sent a bad piece or broke the protocol is shunned.
    pub blacklist_bad_peer: Duration,
    /// How long a peer that could not be reached, or stalled, is shunned.
    pub blacklist_unreachable: Duration,
    /// How long a peer that refused our session (at its connection limit) is left alone:
    /// short, since its sessions end as its peers complete.
    pub blacklist_busy: Duration,
    /// Connections with no message either way for this long are closed.
    pub idle_timeout: Duration,
    /// After completing, keep seeding until nobody downloaded from us for this long.
    pub seed_tti: Duration,
    /// Announce interval until the tracker says otherwise.
    pub announce_interval: Duration,
    /// Seed of the scheduler's random choices (tie-breaks): same seed, same decisions.
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

impl SwarmConfig {
    /// Agents an origin accepts per blob by default (its `max_connections`): an origin
    /// seeds every agent that cannot find a piece elsewhere, so it takes many more sessions
    /// than an agent. The nodes and the simulator both start from it.
    pub const ORIGIN_MAX_CONNECTIONS: usize = 256;

    /// Rejects settings that would stall the swarm.
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
            return Err(SwarmConfigError("announce_interval must be above 0".into()));
        }
        Ok(())
    }

    /// How long a request for a piece of `len` bytes may take.
    pub fn request_timeout(&self, len: u32) -> Duration {
        let transfer = Duration::from_secs_f64(f64::from(len) / self.min_transfer_rate as f64);
        self.request_timeout_base + transfer
    }
}
