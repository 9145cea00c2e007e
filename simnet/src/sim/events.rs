//! The simulation's events and what each does to the hosts: timers, the tracker's answer,
//! session set-up and teardown, messages, the end of a piece's flow and its arrival, and
//! deaths (killed origins, churning agents).
//!
//! Each handler applies its event to the swarms it concerns and pumps them
//! (`Simulation::pump`), which turns what they want next into further events.

use kraken_storage::PieceIndex;
use kraken_transport::swarm::{PeerEvent, PeerKind, PieceOutcome};
use kraken_transport::wire::PeerMessage;

use std::time::Duration;

use kraken_transport::swarm::PeerInfo;
use rand::seq::SliceRandom;

use super::{Host, Simulation, millis, secs};
use crate::net::{Completion, Nanos};

/// Something that happens to hosts at a virtual time.
#[derive(Debug)]
pub(super) enum Ev {
    /// An agent starts pulling.
    Arrive(u32),
    /// A host's swarm deadline `at`, if still its current one.
    Timer { host: u32, at: Nanos },
    /// The tracker answers a host's announce.
    Handout(u32),
    /// A dial reaches its target (one round trip after it started).
    Connect { dialer: u32, target: u32 },
    /// A dial failed: the target is dead or unknown.
    ConnectFailed { dialer: u32, target: u32 },
    /// `at` learns that its session with `peer` ended.
    Disconnected { at: u32, peer: u32 },
    /// A message reaches `to`.
    Message {
        from: u32,
        to: u32,
        msg: PeerMessage,
    },
    /// A piece's flow may have finished (stale completions are ignored, see [`crate::net`]).
    FlowDone(Completion),
    /// A piece's last byte reaches `to`, one latency after its flow finished.
    PieceArrive {
        from: u32,
        to: u32,
        index: PieceIndex,
        size: u32,
        corrupt: bool,
    },
    /// A host dies.
    Kill(u32),
    /// A host's DHT provider lookup answers.
    DhtAnswer(u32),
    /// A host's provider record reaches the store.
    DhtStored(u32),
    /// A host republishes its provider record.
    DhtRepublish(u32),
}

impl Simulation {
    /// Applies one event.
    pub(super) fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Arrive(h) => self.start_swarm(h),
            Ev::Timer { host, at } => self.on_timer(host, at),
            Ev::Handout(h) => self.on_handout(h),
            Ev::Connect { dialer, target } => self.on_connect(dialer, target),
            Ev::ConnectFailed { dialer, target } => {
                let (now, id) = (self.instant(), Self::id(target));
                self.with_swarm(dialer, |s| {
                    s.handle_peer(now, PeerEvent::ConnectFailed { id })
                });
                self.pump(dialer);
            }
            Ev::Disconnected { at, peer } => {
                // A newer session between the two supersedes this news.
                if self.sessions.contains(at, peer) {
                    return;
                }
                let (now, id) = (self.instant(), Self::id(peer));
                self.with_swarm(at, |s| s.handle_peer(now, PeerEvent::Disconnected { id }));
                self.pump(at);
            }
            Ev::Message { from, to, msg } => {
                if !self.sessions.contains(to, from) {
                    return;
                }
                let (now, id) = (self.instant(), Self::id(from));
                self.with_swarm(to, |s| s.handle_message(now, id, msg));
                self.pump(to);
            }
            Ev::FlowDone(c) => self.on_flow_done(c),
            Ev::PieceArrive {
                from,
                to,
                index,
                size,
                corrupt,
            } => self.on_piece_arrive(from, to, index, size, corrupt),
            Ev::Kill(h) => self.kill(h),
            Ev::DhtAnswer(h) => self.on_dht_answer(h),
            Ev::DhtStored(h) => {
                let ttl = secs(self.scenario.dht.record_ttl_s);
                self.providers
                    .put(self.now, h, self.now + ttl, &mut self.rng);
                self.counters.dht_provides += 1;
            }
            Ev::DhtRepublish(h) => {
                if self.hosts[h as usize].alive {
                    self.provide(h);
                }
            }
        }
    }

    fn on_timer(&mut self, host: u32, at: Nanos) {
        let now = self.instant();
        let hs = &mut self.hosts[host as usize];
        if !hs.alive || hs.timer != Some(at) {
            return;
        }
        hs.timer = None;
        if let Some(s) = hs.swarm.as_mut() {
            s.handle_timeout(now);
        }
        self.pump(host);
    }

    /// The tracker records `h`'s announce and answers it.
    fn on_handout(&mut self, h: u32) {
        let now = self.instant();
        let digest = *self.metainfo.digest();
        let host = &mut self.hosts[h as usize];
        let Some(swarm) = host.swarm.as_mut().filter(|_| host.alive) else {
            return;
        };
        let mut info = host.info.clone();
        info.complete = swarm.is_complete();
        self.tracker.announce(now, digest, info);
        let list = self.tracker.handout(
            now,
            &digest,
            host.info.id,
            &self.live_origins,
            &mut self.rng,
        );
        swarm.handle_handout(now, list, None);
        self.counters.handouts += 1;
        self.pump(h);
    }

    /// A DHT lookup answers: the providers it found and the blob's origins (from the
    /// ring, as the tracker adds them), and the re-lookup interval as the next announce's.
    fn on_dht_answer(&mut self, h: u32) {
        let now = self.instant();
        let host = &self.hosts[h as usize];
        if !host.alive || host.swarm.is_none() {
            return;
        }
        let dht = &self.scenario.dht;
        let found = self
            .providers
            .lookup(self.now, dht.k, dht.answer, h, &mut self.rng);
        let mut origins: Vec<PeerInfo> = self
            .live_origins
            .iter()
            .filter(|o| o.id != host.info.id)
            .cloned()
            .collect();
        origins.shuffle(&mut self.rng);
        let thin = found.len() < dht.thin_below;
        let list: Vec<PeerInfo> = found
            .into_iter()
            .map(|p| self.hosts[p as usize].info.clone())
            .chain(origins)
            .collect();
        let interval = Duration::from_secs_f64(if thin {
            dht.thin_relookup_interval_s
        } else {
            dht.relookup_interval_s
        });
        if let Some(s) = self.hosts[h as usize].swarm.as_mut() {
            s.handle_handout(now, list, Some(interval));
        }
        self.pump(h);
    }

    /// Opens a session between `dialer` and `target`, if both still run a swarm.
    fn on_connect(&mut self, dialer: u32, target: u32) {
        let now = self.instant();
        let ok = |h: &Host| h.alive && h.swarm.is_some();
        if !ok(&self.hosts[dialer as usize]) {
            return;
        }
        if !ok(&self.hosts[target as usize]) {
            self.schedule(self.now, Ev::ConnectFailed { dialer, target });
            return;
        }
        if self.sessions.insert(dialer, target) {
            self.counters.connections += 1;
        }
        self.sessions.insert(target, dialer);
        self.hosts[target as usize].session_opened = Some((dialer, self.now));
        let (dk, tk) = (self.kind(dialer), self.kind(target));
        let (did, tid) = (Self::id(dialer), Self::id(target));
        self.with_swarm(dialer, |s| {
            s.handle_peer(
                now,
                PeerEvent::Connected {
                    id: tid,
                    kind: tk,
                    outbound: true,
                },
            )
        });
        self.with_swarm(target, |s| {
            s.handle_peer(
                now,
                PeerEvent::Connected {
                    id: did,
                    kind: dk,
                    outbound: false,
                },
            )
        });
        self.pump(dialer);
        self.pump(target);
    }

    /// A flow finished: the sender is told, and the piece arrives one latency later.
    fn on_flow_done(&mut self, c: Completion) {
        let now = self.instant();
        let done = self.net.complete(self.now, c);
        // Also carries a reschedule when the completion popped early.
        self.push_completions();
        let Some(f) = done else {
            return;
        };
        let size = u64::from(f.size);
        let rec = &mut self.hosts[f.from as usize].record;
        rec.bytes_up += size;
        rec.last_upload_end = Some(self.now);
        let to_id = Self::id(f.to);
        self.with_swarm(f.from, |s| s.handle_piece_sent(now, to_id, f.index, true));
        self.pump(f.from);
        let lat = self.latency(f.from, f.to);
        self.schedule(
            self.now + lat,
            Ev::PieceArrive {
                from: f.from,
                to: f.to,
                index: f.index,
                size: f.size,
                corrupt: f.corrupt,
            },
        );
    }

    /// A piece lands: counted by what it was to the receiver, then handed to its swarm.
    fn on_piece_arrive(&mut self, from: u32, to: u32, index: PieceIndex, size: u32, corrupt: bool) {
        let now = self.instant();
        let size = u64::from(size);
        // A dead host has no sessions (`kill` takes them), so this also drops
        // pieces arriving at the dead.
        if !self.sessions.contains(to, from) {
            self.counters.lost_bytes += size;
            return;
        }
        let host = &self.hosts[to as usize];
        let had = host.swarm.as_ref().is_some_and(|s| s.bitfield().get(index));
        let outcome = if corrupt {
            self.counters.corrupt_bytes += size;
            PieceOutcome::Corrupt
        } else if had {
            self.counters.duplicate_bytes += size;
            PieceOutcome::Stored
        } else {
            self.counters.useful_bytes += size;
            match self.kind(from) {
                PeerKind::Origin => self.counters.useful_from_origins += size,
                PeerKind::Agent => self.counters.useful_from_agents += size,
            }
            PieceOutcome::Stored
        };
        if self.piece_log.is_some() {
            let (t, i, dup) = (self.now, index.0, u8::from(had));
            self.log_piece(format_args!("arrive {t} {from} {to} {i} {dup}"));
        }
        let id = Self::id(from);
        self.with_swarm(to, |s| s.handle_piece_received(now, id, index, outcome));
        self.pump(to);
    }

    /// Host `h` dies: its swarm stops, its flows are cut, and each peer notices after
    /// `dead_peer_detect_ms`.
    fn kill(&mut self, h: u32) {
        let host = &mut self.hosts[h as usize];
        if !host.alive {
            return;
        }
        host.alive = false;
        host.swarm = None;
        host.timer = None;
        host.record.died = Some(self.now);
        let was_outstanding = host.info.kind == PeerKind::Agent
            && !host.record.corrupt
            && host.record.completed.is_none();
        if was_outstanding {
            self.outstanding -= 1;
        }
        let id = host.info.id;
        let peers = self.sessions.take(h);
        self.live_origins.retain(|o| o.id != id);
        for f in self.net.abort_host(self.now, h) {
            self.counters.lost_bytes += f.moved() as u64;
        }
        self.push_completions();
        let detect = millis(self.scenario.network.dead_peer_detect_ms);
        for p in peers {
            self.sessions.remove(p, h);
            self.schedule(self.now + detect, Ev::Disconnected { at: p, peer: h });
        }
    }
}
