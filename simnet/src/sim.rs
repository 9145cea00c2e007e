//! The discrete-event core: a virtual clock, an event heap ordered by `(time, seq)`, and
//! the real [`Swarm`]s of every host wired through the [`Network`] model.
//!
//! One thread, no async runtime. Each event is handled, then every host it touched is
//! *pumped*: its swarm's transmits become future events (messages after the link latency,
//! pieces as flows in the bandwidth model), its announces go to the tracker, and its timer
//! is re-armed from `poll_timeout`. A host keeps at most one live timer, re-armed only when
//! its deadline moves earlier (a timer that fires early just calls `handle_timeout`, which
//! is harmless, and re-arms); a timer event that pops with a deadline other than the
//! host's current one is ignored (lazy invalidation), as are stale flow completions (see
//! [`crate::net`]). The events and their handlers are in `sim/events.rs`, the sessions
//! every message checks in `sim/sessions.rs`; setting up hosts, pumping swarms and turning
//! their transmits into events are here.
//!
//! Same scenario and seed → the same sequence of events → byte-identical reports: every
//! random choice comes from ChaCha8 RNGs seeded from the scenario seed, every map whose
//! iteration order reaches an output is ordered, and ties in time break by insertion order.
//!
//! Modelled: connection set-up (one round trip), one-way latency per message and per
//! delivered piece, fair bandwidth sharing per host, the tracker's handout (the real
//! `PeerStore`) or, with `discovery = "dht"`, provider lookups and provides in the DHT
//! model ([`crate::dht`]; announces then go to no tracker), announces failing during
//! tracker outages, hosts dying (peers notice after
//! `dead_peer_detect_ms`; dials to a dead host fail after the same delay), corrupt
//! senders. Not modelled: control messages use no bandwidth, no congestion control or slow
//! start (a flow gets its fair share at once), no packet loss, no disk, no CPU; origins
//! hold the blob from the start (no backend read-through, no ring repair), and the agents'
//! commit is instantaneous.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kraken_storage::{Bitfield, Digest, Metainfo, PieceHash};
use kraken_transport::swarm::handout::PeerStore;
use kraken_transport::swarm::{PeerInfo, PeerKind, Swarm, SwarmConfig, SwarmEvent, Transmit};
use kraken_transport::wire::PeerId;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::SimError;
use crate::dht::{self, Discovery, ProviderStore};
use crate::net::{Completion, NANOS_PER_SEC, Nanos, Network};
use crate::queue::{Key, RadixQueue};
use crate::report::{self, Report};
use crate::scenario::{Arrival, Scenario};

mod events;
mod sessions;

use events::Ev;
use sessions::Sessions;

fn secs(s: f64) -> Nanos {
    (s * NANOS_PER_SEC).round() as Nanos
}

pub(crate) fn millis(ms: f64) -> Nanos {
    (ms * 1e6).round() as Nanos
}

/// SplitMix64: a cheap, well-mixed hash for per-link latencies and per-host seeds.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What one host did, for the report.
#[derive(Debug, Clone)]
pub struct HostRecord {
    /// Agent or origin.
    pub kind: PeerKind,
    /// Sends corrupt pieces.
    pub corrupt: bool,
    /// Downlink capacity, bytes/s.
    pub download_capacity: f64,
    /// Uplink capacity, bytes/s.
    pub upload_capacity: f64,
    /// When it started pulling.
    pub arrived: Option<Nanos>,
    /// When it had every piece.
    pub completed: Option<Nanos>,
    /// When it died.
    pub died: Option<Nanos>,
    /// Bytes it finished sending (whatever the receiver made of them).
    pub bytes_up: u64,
    /// When its last upload finished.
    pub last_upload_end: Option<Nanos>,
}

/// Bytes and happenings over the whole run.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Events handled.
    pub events: u64,
    /// Pieces delivered that the receiver stored (new to it).
    pub useful_bytes: u64,
    /// Pieces delivered that the receiver already had (endgame duplicates).
    pub duplicate_bytes: u64,
    /// Pieces delivered corrupt.
    pub corrupt_bytes: u64,
    /// Bytes of transfers cut off by a disconnect or a death, or delivered to nobody.
    pub lost_bytes: u64,
    /// Useful bytes by sender kind: from origins.
    pub useful_from_origins: u64,
    /// Useful bytes by sender kind: from agents.
    pub useful_from_agents: u64,
    /// Announces that found every tracker down.
    pub failed_announces: u64,
    /// DHT provider lookups started (`discovery = "dht"`).
    pub dht_lookups: u64,
    /// DHT provider records stored (first provides and republishes).
    pub dht_provides: u64,
    /// Handouts served.
    pub handouts: u64,
    /// Requests that timed out.
    pub request_timeouts: u64,
    /// Blacklistings.
    pub blacklistings: u64,
    /// Sessions opened.
    pub connections: u64,
    /// Sessions a swarm closed (idle, both complete, refused inbound, blacklisted).
    pub disconnects: u64,
    /// Sessions refused at once by the target (its connection limit was reached).
    pub refused: u64,
}

struct Host {
    info: PeerInfo,
    swarm: Option<Swarm>,
    alive: bool,
    timer: Option<Nanos>,
    /// The last inbound session and when it opened (to count refusals).
    session_opened: Option<(u32, Nanos)>,
    /// It has started providing the blob in the DHT.
    providing: bool,
    record: HostRecord,
}

/// Where a long run stands (see [`Simulation::run_with_progress`]).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Events handled so far.
    pub events: u64,
    /// The virtual clock, seconds.
    pub virtual_s: f64,
    /// Agents in the scenario.
    pub agents: usize,
    /// Honest agents alive and not yet complete.
    pub unfinished: usize,
}

/// One simulation run. Build with [`Simulation::new`], then [`Simulation::run`].
pub struct Simulation {
    scenario: Scenario,
    seed: u64,
    base: Instant,
    now: Nanos,
    seq: u64,
    heap: RadixQueue<Ev>,
    hosts: Vec<Host>,
    sessions: Sessions,
    /// Hosts `0..origins` are origins, the rest agents.
    origins: u32,
    net: Network,
    tracker: PeerStore,
    /// The blob's provider records (`discovery = "dht"`).
    providers: ProviderStore,
    live_origins: Vec<PeerInfo>,
    metainfo: Arc<Metainfo>,
    rng: ChaCha8Rng,
    /// Honest agents neither complete nor dead.
    outstanding: usize,
    counters: Counters,
    /// Where every piece transfer's start and arrival is written, if anywhere.
    piece_log: Option<Box<dyn std::io::Write>>,
    outages: Vec<(Nanos, Nanos)>,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("scenario", &self.scenario.name)
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("hosts", &self.hosts.len())
            .finish_non_exhaustive()
    }
}

impl Simulation {
    /// Writes a line per piece transfer event to `out`, for studying a schedule:
    /// `start <ns> <from> <to> <piece>` when a transfer starts and
    /// `arrive <ns> <from> <to> <piece> <duplicate 0|1>` when it lands (hosts by index:
    /// origins first, then agents). Write errors stop the log, not the run.
    pub fn with_piece_log(mut self, out: Box<dyn std::io::Write>) -> Self {
        self.piece_log = Some(out);
        self
    }

    fn log_piece(&mut self, what: std::fmt::Arguments<'_>) {
        if let Some(out) = self.piece_log.as_mut()
            && writeln!(out, "{what}").is_err()
        {
            self.piece_log = None;
        }
    }

    /// Sets up `scenario` with `seed` (which replaces the scenario's own).
    pub fn new(scenario: &Scenario, seed: u64) -> Result<Self, SimError> {
        scenario.validate()?;
        let sc = scenario.clone();
        let digest = Digest::sha256_of(sc.name.as_bytes());
        let pieces = sc.blob.size_bytes.div_ceil(u64::from(sc.blob.piece_length)) as usize;
        let metainfo = Metainfo::new(
            digest,
            sc.blob.size_bytes,
            sc.blob.piece_length,
            vec![PieceHash([0; 32]); pieces],
        )
        .map_err(SimError::Blob)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let tracker = PeerStore::new(sc.trackers.handout.clone());
        let outages = sc
            .faults
            .tracker_outages
            .iter()
            .map(|o| (secs(o.start_s), secs(o.start_s + o.duration_s)))
            .collect();
        let mut sim = Simulation {
            base: Instant::now(),
            now: 0,
            seq: 0,
            heap: RadixQueue::new(),
            hosts: Vec::new(),
            sessions: Sessions::default(),
            origins: scenario.origins.count as u32,
            net: Network::new(),
            tracker,
            providers: ProviderStore::new(sc.dht.store_max_providers, sc.dht.when_full),
            live_origins: Vec::new(),
            metainfo: Arc::new(metainfo),
            outstanding: 0,
            counters: Counters::default(),
            piece_log: None,
            outages,
            seed,
            rng: ChaCha8Rng::seed_from_u64(0),
            scenario: sc,
        };

        // Hosts 0..origins are origins, the rest agents.
        let n_origins = sim.scenario.origins.count;
        let n_agents = sim.scenario.agents.count;
        let slow_origins = pick(&mut rng, n_origins, sim.scenario.origins.slow_fraction);
        let slow_agents = pick(&mut rng, n_agents, sim.scenario.agents.slow_fraction);
        let corrupt = pick(&mut rng, n_agents, sim.scenario.faults.corrupt_fraction);
        let churn = pick(&mut rng, n_agents, sim.scenario.faults.churn_fraction);
        for slow in slow_origins {
            sim.add_host(PeerKind::Origin, slow, false);
        }
        for i in 0..n_agents {
            sim.add_host(PeerKind::Agent, slow_agents[i], corrupt[i]);
            if !corrupt[i] {
                sim.outstanding += 1;
            }
        }
        // Origins hold the blob and start at once.
        for h in 0..n_origins as u32 {
            sim.live_origins.push(sim.hosts[h as usize].info.clone());
        }
        for h in 0..n_origins as u32 {
            sim.start_swarm(h);
        }
        // Agents arrive.
        let mut t = 0.0f64;
        let arrival = sim.scenario.arrival;
        let window = sim.scenario.faults.churn_window_s;
        for (i, leaves) in churn.into_iter().enumerate() {
            let at = match arrival {
                Arrival::AllAtOnce => 0.0,
                Arrival::Waves { waves, interval_s } => {
                    let per = n_agents.div_ceil(waves);
                    (i / per) as f64 * interval_s
                }
                Arrival::Poisson { rate_per_s } => {
                    let u: f64 = rng.random::<f64>();
                    t += -(1.0 - u).ln() / rate_per_s;
                    t
                }
            };
            let h = (n_origins + i) as u32;
            sim.schedule(secs(at), Ev::Arrive(h));
            if leaves {
                let leave = at + rng.random::<f64>() * window;
                sim.schedule(secs(leave), Ev::Kill(h));
            }
        }
        for k in &sim.scenario.faults.kill_origins.clone() {
            sim.schedule(secs(k.at_s), Ev::Kill(k.origin as u32));
        }
        sim.rng = rng;
        Ok(sim)
    }

    fn add_host(&mut self, kind: PeerKind, slow: bool, corrupt: bool) {
        let n = self.hosts.len() as u32;
        let cfg = match kind {
            PeerKind::Agent => &self.scenario.agents,
            PeerKind::Origin => &self.scenario.origins,
        };
        let factor = if slow { cfg.slow_factor } else { 1.0 };
        let up = cfg.upload_mb_s * 1e6 * factor;
        let down = cfg.download_mb_s * 1e6 * factor;
        self.net.add_host(up, down);
        self.sessions.add_host();
        let info = PeerInfo {
            id: Self::id(n),
            addr: ([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 7001).into(),
            kind,
            complete: kind == PeerKind::Origin,
        };
        self.hosts.push(Host {
            info,
            swarm: None,
            alive: true,
            timer: None,
            session_opened: None,
            providing: false,
            record: HostRecord {
                kind,
                corrupt,
                download_capacity: down,
                upload_capacity: up,
                arrived: None,
                completed: None,
                died: None,
                bytes_up: 0,
                last_upload_end: None,
            },
        });
    }

    /// Host `h`'s swarm settings: its role's, with a seed of its own.
    fn swarm_config(&self, h: u32) -> SwarmConfig {
        let role = match self.kind(h) {
            PeerKind::Origin => &self.scenario.origin_swarm,
            PeerKind::Agent => &self.scenario.swarm,
        };
        SwarmConfig {
            rng_seed: mix(self.seed ^ mix(u64::from(h))),
            ..role.clone()
        }
    }

    fn start_swarm(&mut self, h: u32) {
        let config = self.swarm_config(h);
        let count = self.metainfo.piece_count();
        let host = &mut self.hosts[h as usize];
        if !host.alive {
            return;
        }
        let have = if host.info.kind == PeerKind::Origin {
            Bitfield::full(count)
        } else {
            Bitfield::new(count)
        };
        host.record.arrived = Some(self.now);
        let now = self.base + Duration::from_nanos(self.now);
        // The config was validated with the scenario; a failure here is a bug.
        match Swarm::new(config, host.info.id, self.metainfo.clone(), have, now) {
            Ok(s) => host.swarm = Some(s),
            Err(e) => panic!("swarm config rejected after validation: {e}"),
        }
        // With `provide_after_pieces = 0`, on arrival.
        self.maybe_provide(h);
        self.pump(h);
    }

    fn schedule(&mut self, at: Nanos, ev: Ev) {
        self.seq += 1;
        self.heap.push(Key { at, seq: self.seq }, ev);
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    /// One-way latency of the link between `a` and `b` (symmetric, fixed per run).
    fn latency(&self, a: u32, b: u32) -> Nanos {
        let net = &self.scenario.network;
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let h = mix(self.seed ^ mix((u64::from(lo) << 32) | u64::from(hi)));
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        millis(net.latency_ms + u * net.latency_jitter_ms)
    }

    /// One DHT lookup's delay, drawn from the run's RNG.
    fn dht_delay(&mut self) -> Nanos {
        let net = &self.scenario.network;
        dht::lookup_delay(
            &self.scenario.dht,
            self.hosts.len(),
            net.latency_ms,
            net.latency_jitter_ms,
            &mut self.rng,
        )
    }

    /// Starts agent `h`'s provides once it holds `provide_after_pieces` pieces (with
    /// `discovery = "dht"`; origins are added from the ring instead).
    fn maybe_provide(&mut self, h: u32) {
        let host = &self.hosts[h as usize];
        let held = host.swarm.as_ref().map_or(0, |s| s.bitfield().count_ones());
        if self.scenario.discovery == Discovery::Dht
            && host.alive
            && !host.providing
            && host.info.kind == PeerKind::Agent
            && held >= self.scenario.dht.provide_after_pieces
        {
            self.hosts[h as usize].providing = true;
            self.provide(h);
        }
    }

    /// Host `h` provides the blob: its record is stored one lookup delay from now, and it
    /// republishes every `republish_interval_s` while it lives.
    fn provide(&mut self, h: u32) {
        let at = self.now + self.dht_delay();
        self.schedule(at, Ev::DhtStored(h));
        let next = self.now + secs(self.scenario.dht.republish_interval_s);
        self.schedule(next, Ev::DhtRepublish(h));
    }

    fn tracker_down(&self) -> bool {
        self.outages
            .iter()
            .any(|(s, e)| *s <= self.now && self.now < *e)
    }

    /// Host `h`'s peer id (the inverse of [`Self::idx`]), computed rather than looked up:
    /// reading it from the host record was a cache miss per message.
    fn id(h: u32) -> PeerId {
        PeerId::from_u64(u64::from(h))
    }

    fn kind(&self, h: u32) -> PeerKind {
        if h < self.origins {
            PeerKind::Origin
        } else {
            PeerKind::Agent
        }
    }

    fn idx(id: &PeerId) -> u32 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&id.0[..8]);
        u64::from_be_bytes(b) as u32
    }

    fn push_completions(&mut self) {
        let cs: Vec<Completion> = self.net.take_completions().collect();
        for c in cs {
            self.schedule(c.at, Ev::FlowDone(c));
        }
    }

    /// Runs to the end: every honest agent complete or dead, or `limits.max_time_s`.
    pub fn run(self) -> Report {
        self.run_with_progress(u64::MAX, |_| {})
    }

    /// [`Simulation::run`], calling `progress` every `every` events (long runs).
    pub fn run_with_progress(mut self, every: u64, mut progress: impl FnMut(Progress)) -> Report {
        let limit = secs(self.scenario.limits.max_time_s);
        let agents = self.scenario.agents.count;
        let mut next_report = every;
        while self.outstanding > 0 {
            if self.counters.events >= next_report {
                next_report = next_report.saturating_add(every);
                progress(Progress {
                    events: self.counters.events,
                    virtual_s: self.now as f64 / 1e9,
                    agents,
                    unfinished: self.outstanding,
                });
            }
            let Some((e, ev)) = self.heap.pop() else {
                break;
            };
            if e.at > limit {
                self.now = limit;
                break;
            }
            self.now = e.at;
            self.counters.events += 1;
            self.dispatch(ev);
        }
        let records: Vec<HostRecord> = self.hosts.iter().map(|h| h.record.clone()).collect();
        report::build(
            &self.scenario,
            self.seed,
            self.now,
            &records,
            &self.counters,
        )
    }

    fn with_swarm(&mut self, h: u32, f: impl FnOnce(&mut Swarm)) {
        let host = &mut self.hosts[h as usize];
        if host.alive
            && let Some(s) = host.swarm.as_mut()
        {
            f(s);
        }
    }

    /// Drains `h`'s swarm outputs into events, then re-arms its timer.
    fn pump(&mut self, h: u32) {
        loop {
            let host = &mut self.hosts[h as usize];
            if !host.alive {
                return;
            }
            let Some(swarm) = host.swarm.as_mut() else {
                return;
            };
            if let Some(t) = swarm.poll_transmit() {
                self.transmit(h, t);
                continue;
            }
            // Commit is instantaneous in simulation.
            if swarm.poll_storage().is_some() {
                continue;
            }
            if let Some(ev) = swarm.poll_event() {
                self.swarm_event(h, ev);
                continue;
            }
            break;
        }
        self.arm_timer(h);
    }

    /// Arms `h`'s timer for its swarm's next deadline.
    fn arm_timer(&mut self, h: u32) {
        let base = self.base;
        let now = self.now;
        let host = &mut self.hosts[h as usize];
        let next = host
            .swarm
            .as_ref()
            .and_then(Swarm::poll_timeout)
            .map(|t| t.saturating_duration_since(base).as_nanos() as Nanos);
        // Arm only an earlier deadline: a later one is picked up when the armed timer fires
        // (an early `handle_timeout` is harmless), so the heap is not flooded with stale
        // timers every time a deadline moves out.
        if let Some(at) = next
            && host.timer.is_none_or(|armed| at < armed)
        {
            host.timer = Some(at);
            // A deadline already past would fire forever at the same instant; step on.
            let when = if at <= now { now + 1_000_000 } else { at };
            self.schedule(when, Ev::Timer { host: h, at });
        }
    }

    fn swarm_event(&mut self, h: u32, ev: SwarmEvent) {
        match ev {
            // A complete host needs no peers (it provides already): no lookup.
            SwarmEvent::Announce { complete: true, .. }
                if self.scenario.discovery == Discovery::Dht => {}
            SwarmEvent::Announce { .. } if self.scenario.discovery == Discovery::Dht => {
                self.counters.dht_lookups += 1;
                let at = self.now + self.dht_delay();
                self.schedule(at, Ev::DhtAnswer(h));
            }
            SwarmEvent::PieceStored { .. } => self.maybe_provide(h),
            SwarmEvent::Announce { .. } => {
                if self.tracker_down() {
                    self.counters.failed_announces += 1;
                } else {
                    // Announce and answer: one round trip to a tracker.
                    let rtt = 2 * millis(self.scenario.network.latency_ms);
                    self.schedule(self.now + rtt, Ev::Handout(h));
                }
            }
            SwarmEvent::Completed => {
                let rec = &mut self.hosts[h as usize].record;
                if rec.completed.is_none() {
                    rec.completed = Some(self.now);
                    if rec.kind == PeerKind::Agent && !rec.corrupt {
                        self.outstanding -= 1;
                    }
                }
            }
            SwarmEvent::RequestTimedOut { .. } => self.counters.request_timeouts += 1,
            SwarmEvent::Blacklisted { .. } => self.counters.blacklistings += 1,
            _ => {}
        }
    }

    fn transmit(&mut self, h: u32, t: Transmit) {
        match t {
            Transmit::Connect { id, .. } => {
                let target = Self::idx(&id);
                let Some(th) = self.hosts.get(target as usize) else {
                    self.schedule(
                        self.now,
                        Ev::ConnectFailed {
                            dialer: h,
                            target: h,
                        },
                    );
                    return;
                };
                if th.alive {
                    // Arrived or not: the answer (session or refusal) takes one round trip.
                    let rtt = 2 * self.latency(h, target);
                    self.schedule(self.now + rtt, Ev::Connect { dialer: h, target });
                } else {
                    let detect = millis(self.scenario.network.dead_peer_detect_ms);
                    self.schedule(self.now + detect, Ev::ConnectFailed { dialer: h, target });
                }
            }
            Transmit::Disconnect { id } => {
                let o = Self::idx(&id);
                if self.sessions.remove(h, o) {
                    self.counters.disconnects += 1;
                    if self.hosts[h as usize].session_opened == Some((o, self.now)) {
                        self.counters.refused += 1;
                    }
                    self.sessions.remove(o, h);
                    for f in self.net.abort_between(self.now, h, o) {
                        self.counters.lost_bytes += f.moved() as u64;
                    }
                    self.push_completions();
                    let lat = self.latency(h, o);
                    self.schedule(self.now + lat, Ev::Disconnected { at: o, peer: h });
                }
            }
            Transmit::Message { to, msg } => {
                let o = Self::idx(&to);
                if self.sessions.contains(h, o) {
                    let lat = self.latency(h, o);
                    self.schedule(
                        self.now + lat,
                        Ev::Message {
                            from: h,
                            to: o,
                            msg,
                        },
                    );
                }
            }
            Transmit::SendPiece { to, index, .. } => {
                let o = Self::idx(&to);
                let up = self.sessions.contains(h, o) && self.hosts[o as usize].alive;
                let size = self.metainfo.piece_size(index);
                match size {
                    Some(size) if up => {
                        let corrupt = self.hosts[h as usize].record.corrupt;
                        if self.piece_log.is_some() {
                            let (t, i) = (self.now, index.0);
                            self.log_piece(format_args!("start {t} {h} {o} {i}"));
                        }
                        self.net.start(self.now, h, o, index, size, corrupt);
                        self.push_completions();
                        // The receiver sees the piece start at once: its header's latency
                        // is small next to a piece's timeout (an approximation).
                        let (now, from) = (self.instant(), Self::id(h));
                        self.with_swarm(o, |s| s.handle_piece_started(now, from, index));
                        self.arm_timer(o);
                    }
                    _ => {
                        let now = self.instant();
                        self.with_swarm(h, |s| s.handle_piece_sent(now, to, index, false));
                    }
                }
            }
        }
    }
}

/// `count` flags, a `fraction` of them set, chosen at random.
fn pick(rng: &mut ChaCha8Rng, count: usize, fraction: f64) -> Vec<bool> {
    let k = ((count as f64) * fraction).round() as usize;
    let mut flags: Vec<bool> = (0..count).map(|i| i < k).collect();
    flags.shuffle(rng);
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_run_their_roles_settings_with_seeds_of_their_own() {
        let mut scenario = Scenario::default();
        scenario.swarm.upload_slots = 4;
        scenario.origin_swarm.upload_slots = 16;
        let sim = Simulation::new(&scenario, 7).unwrap();
        // Hosts 0 and 1 are the default scenario's origins.
        for h in [0, 1, 2, 101] {
            let c = sim.swarm_config(h);
            assert_eq!(c.rng_seed, mix(7 ^ mix(u64::from(h))));
            let role = if h < 2 {
                &scenario.origin_swarm
            } else {
                &scenario.swarm
            };
            assert_eq!(&SwarmConfig { rng_seed: 0, ..c }, role, "host {h}");
        }
        // Without the tables, origins run what origins run and agents what agents do.
        let d = Scenario::default();
        assert_eq!(d.origin_swarm, SwarmConfig::origin());
        assert_eq!(d.swarm, SwarmConfig::default());
    }
}
