//! Whole swarms in memory: N real `Swarm`s wired by a tiny deterministic network with a
//! virtual clock (like quinn-proto's `Pair`, for many nodes). Each node has an uplink
//! shared by its concurrent uploads; messages take one latency; the tracker is the real
//! `PeerStore`. Same seed, same run.
#![allow(clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kraken_storage::{Bitfield, Metainfo, PieceIndex, PieceLengthEntry, PieceLengthTable};
use kraken_transport::swarm::handout::{HandoutConfig, PeerStore};
use kraken_transport::swarm::{
    BlacklistReason, PeerEvent, PeerInfo, PeerKind, PieceOutcome, StorageOp, Swarm, SwarmConfig,
    SwarmEvent, Transmit,
};
use kraken_transport::wire::{PeerId, PeerMessage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
enum Ev {
    Message {
        from: PeerId,
        to: PeerId,
        msg: PeerMessage,
    },
    /// The first bytes of a piece reach its requester.
    PieceStarted {
        from: PeerId,
        to: PeerId,
        index: PieceIndex,
    },
    Piece {
        from: PeerId,
        to: PeerId,
        index: PieceIndex,
        corrupt: bool,
    },
    Connected {
        dialer: PeerId,
        target: PeerId,
    },
    ConnectFailed {
        dialer: PeerId,
        target: PeerId,
    },
    Disconnected {
        at: PeerId,
        peer: PeerId,
    },
    Timer {
        node: PeerId,
        at: Instant,
    },
    Kill {
        node: PeerId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    /// Every piece it sends is corrupt.
    Corrupt,
    /// Accepts sessions, then never sends a piece.
    BlackHole,
}

struct Node {
    info: PeerInfo,
    swarm: Swarm,
    behaviour: Behaviour,
    dead: bool,
    uplink: u64,
    uploads: usize,
    committed_at: Option<Instant>,
    timer: Option<Instant>,
}

struct Net {
    base: Instant,
    now: Instant,
    seq: u64,
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: BTreeMap<u64, Ev>,
    nodes: BTreeMap<PeerId, Node>,
    sessions: BTreeSet<(PeerId, PeerId)>,
    tracker: PeerStore,
    origins: Vec<PeerInfo>,
    rng: ChaCha8Rng,
    latency: Duration,
    trace: Vec<String>,
    metainfo: Arc<Metainfo>,
}

fn pair(a: PeerId, b: PeerId) -> (PeerId, PeerId) {
    if a < b { (a, b) } else { (b, a) }
}

impl Net {
    fn new(metainfo: Metainfo, seed: u64) -> Net {
        let base = Instant::now();
        Net {
            base,
            now: base,
            seq: 0,
            heap: BinaryHeap::new(),
            pending: BTreeMap::new(),
            nodes: BTreeMap::new(),
            sessions: BTreeSet::new(),
            tracker: PeerStore::new(HandoutConfig::default()),
            origins: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            latency: Duration::from_millis(1),
            trace: Vec::new(),
            metainfo: Arc::new(metainfo),
        }
    }

    fn add(
        &mut self,
        n: u64,
        kind: PeerKind,
        complete: bool,
        behaviour: Behaviour,
        uplink: u64,
    ) -> PeerId {
        let id = PeerId::from_u64(n);
        let count = self.metainfo.piece_count();
        let have = if complete {
            Bitfield::full(count)
        } else {
            Bitfield::new(count)
        };
        let config = SwarmConfig {
            rng_seed: n ^ self.rng.random::<u64>(),
            ..SwarmConfig::default()
        };
        let swarm = Swarm::new(config, id, self.metainfo.clone(), have, self.now).unwrap();
        let info = PeerInfo {
            id,
            addr: ([10, 0, 0, 1], n as u16).into(),
            kind,
            complete,
        };
        if kind == PeerKind::Origin {
            self.origins.push(info.clone());
        }
        self.nodes.insert(
            id,
            Node {
                info,
                swarm,
                behaviour,
                dead: false,
                uplink,
                uploads: 0,
                committed_at: None,
                timer: None,
            },
        );
        self.pump(id);
        id
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq)));
        self.pending.insert(self.seq, ev);
    }

    /// Drains a node's outputs into network events and re-arms its timer.
    fn pump(&mut self, id: PeerId) {
        let now = self.now;
        let latency = self.latency;
        loop {
            let node = self.nodes.get_mut(&id).unwrap();
            if node.dead {
                return;
            }
            if let Some(t) = node.swarm.poll_transmit() {
                self.transmit(id, t);
                continue;
            }
            if let Some(StorageOp::Commit) = node.swarm.poll_storage() {
                node.committed_at = Some(now);
                continue;
            }
            if let Some(ev) = node.swarm.poll_event() {
                self.trace
                    .push(format!("{:?} {} {:?}", now - self.base, id, ev));
                if let SwarmEvent::Announce { complete, .. } = ev {
                    let mut info = node.info.clone();
                    info.complete = complete;
                    let digest = *self.metainfo.digest();
                    self.tracker.announce(now, digest, info);
                    let handout =
                        self.tracker
                            .handout(now, &digest, id, &self.origins, &mut self.rng);
                    self.nodes
                        .get_mut(&id)
                        .unwrap()
                        .swarm
                        .handle_handout(now, handout, None);
                }
                continue;
            }
            break;
        }
        let node = self.nodes.get_mut(&id).unwrap();
        let next = node.swarm.poll_timeout();
        if next != node.timer
            && let Some(at) = next
        {
            node.timer = Some(at);
            self.schedule(at.max(now), Ev::Timer { node: id, at });
        }
        let _ = latency;
    }

    fn transmit(&mut self, from: PeerId, t: Transmit) {
        let at = self.now + self.latency;
        match t {
            Transmit::Connect { id, .. } => {
                let up = self.nodes.get(&id).is_some_and(|n| !n.dead);
                if up {
                    self.schedule(
                        at,
                        Ev::Connected {
                            dialer: from,
                            target: id,
                        },
                    );
                } else {
                    self.schedule(
                        at,
                        Ev::ConnectFailed {
                            dialer: from,
                            target: id,
                        },
                    );
                }
            }
            Transmit::Disconnect { id } => {
                if self.sessions.remove(&pair(from, id)) {
                    self.schedule(at, Ev::Disconnected { at: id, peer: from });
                }
            }
            Transmit::Message { to, msg } => {
                self.schedule(at, Ev::Message { from, to, msg });
            }
            Transmit::SendPiece { to, index, .. } => {
                let node = self.nodes.get_mut(&from).unwrap();
                if node.behaviour == Behaviour::BlackHole {
                    return; // Never sends; the requester must time out.
                }
                node.uploads += 1;
                let share = node.uplink / node.uploads as u64;
                let size = u64::from(self.metainfo.piece_size(index).unwrap());
                let took = Duration::from_secs_f64(size as f64 / share as f64);
                let corrupt = node.behaviour == Behaviour::Corrupt;
                self.schedule(at, Ev::PieceStarted { from, to, index });
                self.schedule(
                    at + took,
                    Ev::Piece {
                        from,
                        to,
                        index,
                        corrupt,
                    },
                );
            }
        }
    }

    fn connected(&self, a: PeerId, b: PeerId) -> bool {
        self.sessions.contains(&pair(a, b))
    }

    fn step(&mut self) -> bool {
        let Some(Reverse((at, seq))) = self.heap.pop() else {
            return false;
        };
        let ev = self.pending.remove(&seq).unwrap();
        self.now = at;
        let now = at;
        let mut touched = Vec::new();
        match ev {
            Ev::Timer { node, at } => {
                let n = self.nodes.get_mut(&node).unwrap();
                if n.dead || n.timer != Some(at) {
                    return true;
                }
                n.timer = None;
                n.swarm.handle_timeout(now);
                touched.push(node);
            }
            Ev::Connected { dialer, target } => {
                if self.nodes[&dialer].dead || self.nodes[&target].dead {
                    return true;
                }
                self.sessions.insert(pair(dialer, target));
                let tk = self.nodes[&target].info.kind;
                let dk = self.nodes[&dialer].info.kind;
                self.nodes.get_mut(&dialer).unwrap().swarm.handle_peer(
                    now,
                    PeerEvent::Connected {
                        id: target,
                        kind: tk,
                        outbound: true,
                    },
                );
                self.nodes.get_mut(&target).unwrap().swarm.handle_peer(
                    now,
                    PeerEvent::Connected {
                        id: dialer,
                        kind: dk,
                        outbound: false,
                    },
                );
                touched.extend([dialer, target]);
            }
            Ev::ConnectFailed { dialer, target } => {
                self.nodes
                    .get_mut(&dialer)
                    .unwrap()
                    .swarm
                    .handle_peer(now, PeerEvent::ConnectFailed { id: target });
                touched.push(dialer);
            }
            Ev::Disconnected { at, peer } => {
                self.nodes
                    .get_mut(&at)
                    .unwrap()
                    .swarm
                    .handle_peer(now, PeerEvent::Disconnected { id: peer });
                touched.push(at);
            }
            Ev::Message { from, to, msg } => {
                if !self.connected(from, to) || self.nodes[&to].dead {
                    return true;
                }
                self.nodes
                    .get_mut(&to)
                    .unwrap()
                    .swarm
                    .handle_message(now, from, msg);
                touched.push(to);
            }
            Ev::PieceStarted { from, to, index } => {
                if self.connected(from, to) && !self.nodes[&to].dead {
                    self.nodes
                        .get_mut(&to)
                        .unwrap()
                        .swarm
                        .handle_piece_started(now, from, index);
                    touched.push(to);
                }
            }
            Ev::Piece {
                from,
                to,
                index,
                corrupt,
            } => {
                let ok =
                    self.connected(from, to) && !self.nodes[&to].dead && !self.nodes[&from].dead;
                if !self.nodes[&from].dead {
                    let sender = self.nodes.get_mut(&from).unwrap();
                    sender.uploads = sender.uploads.saturating_sub(1);
                    sender.swarm.handle_piece_sent(now, to, index, ok);
                    touched.push(from);
                }
                if ok {
                    let outcome = if corrupt {
                        PieceOutcome::Corrupt
                    } else {
                        PieceOutcome::Stored
                    };
                    self.nodes
                        .get_mut(&to)
                        .unwrap()
                        .swarm
                        .handle_piece_received(now, from, index, outcome);
                    touched.push(to);
                }
            }
            Ev::Kill { node } => {
                self.nodes.get_mut(&node).unwrap().dead = true;
                let peers: Vec<_> = self
                    .sessions
                    .iter()
                    .filter(|(a, b)| *a == node || *b == node)
                    .copied()
                    .collect();
                for (a, b) in peers {
                    self.sessions.remove(&(a, b));
                    let other = if a == node { b } else { a };
                    self.schedule(
                        now + self.latency,
                        Ev::Disconnected {
                            at: other,
                            peer: node,
                        },
                    );
                }
            }
        }
        for id in touched {
            self.pump(id);
        }
        true
    }

    /// Runs until every honest live leecher has committed, or `limit` of virtual time.
    fn run(&mut self, limit: Duration) {
        let deadline = self.base + limit;
        while !self.all_done() {
            assert!(
                self.step(),
                "the network went quiet before everyone finished"
            );
            assert!(
                self.now < deadline,
                "not done after {limit:?}:\n{}",
                self.report()
            );
        }
    }

    fn all_done(&self) -> bool {
        self.nodes
            .values()
            .filter(|n| !n.dead && n.behaviour == Behaviour::Honest)
            .all(|n| n.swarm.is_complete())
    }

    fn report(&self) -> String {
        self.nodes
            .values()
            .map(|n| {
                format!(
                    "{} {:?} {:?} have {}/{} peers {}\n",
                    n.info.id,
                    n.info.kind,
                    n.behaviour,
                    n.swarm.bitfield().count_ones(),
                    n.swarm.bitfield().len(),
                    n.swarm.connected_peers().count()
                )
            })
            .collect()
    }
}

fn metainfo(len: usize) -> Metainfo {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let table = PieceLengthTable {
        entries: vec![PieceLengthEntry {
            min_blob_size: 0,
            piece_length: 64 * 1024,
        }],
    };
    Metainfo::from_bytes(&data, &table).unwrap()
}

const MB: u64 = 1_000_000;

/// One origin and `n` agents (100 MB/s uplinks), all arriving at once.
fn swarm_of(n: u64, seed: u64, len: usize) -> (Net, PeerId, Vec<PeerId>) {
    let mut net = Net::new(metainfo(len), seed);
    let origin = net.add(1000, PeerKind::Origin, true, Behaviour::Honest, 100 * MB);
    let agents = (1..=n)
        .map(|i| net.add(i, PeerKind::Agent, false, Behaviour::Honest, 100 * MB))
        .collect();
    (net, origin, agents)
}

#[test]
fn seeder_and_eight_leechers_all_complete_mostly_from_each_other() {
    let (mut net, _origin, agents) = swarm_of(8, 1, 8 << 20);
    net.run(Duration::from_secs(60));
    let mut from_agents = 0;
    let mut from_origins = 0;
    for id in &agents {
        let n = &net.nodes[id];
        assert!(n.swarm.is_complete());
        assert!(n.committed_at.is_some(), "commit was requested");
        from_agents += n.swarm.stats().bytes_from_agents;
        from_origins += n.swarm.stats().bytes_from_origins;
    }
    let blob = net.metainfo.length();
    assert_eq!(from_agents + from_origins, 8 * blob);
    assert!(
        from_agents > from_origins,
        "P2P should carry most bytes: {from_agents} from agents, {from_origins} from the origin"
    );
    assert!(
        from_origins < 3 * blob,
        "origin egress {from_origins} vs blob {blob}"
    );
}

#[test]
fn same_seed_same_run_different_seed_different_run() {
    let run = |seed| {
        let (mut net, _, _) = swarm_of(6, seed, 2 << 20);
        net.run(Duration::from_secs(60));
        (net.now - net.base, net.trace.join("\n"))
    };
    let a = run(7);
    let b = run(7);
    assert_eq!(a, b, "deterministic by seed");
    let c = run(8);
    assert_ne!(a.1, c.1, "the seed matters");
}

#[test]
fn corrupt_peer_is_blacklisted_and_everyone_else_completes() {
    let mut net = Net::new(metainfo(4 << 20), 3);
    net.add(1000, PeerKind::Origin, true, Behaviour::Honest, 100 * MB);
    // A fast liar that already "has" everything: everyone will try it.
    let liar = net.add(66, PeerKind::Agent, true, Behaviour::Corrupt, 1000 * MB);
    let agents: Vec<_> = (1..=6)
        .map(|i| net.add(i, PeerKind::Agent, false, Behaviour::Honest, 100 * MB))
        .collect();
    net.run(Duration::from_secs(60));
    let mut caught = 0;
    for id in &agents {
        let n = &net.nodes[id];
        assert!(n.swarm.is_complete());
        assert!(
            n.swarm
                .stats()
                .per_peer
                .get(&liar)
                .is_none_or(|s| s.downloaded == 0)
        );
        if n.swarm.stats().bad_pieces > 0 {
            caught += 1;
        }
    }
    assert!(caught > 0, "someone met the liar");
    assert!(
        net.trace
            .iter()
            .any(|l| l.contains("BadPiece") && l.contains(&liar.to_string()))
    );
    let banned = format!("{:?}", BlacklistReason::BadPiece);
    assert!(net.trace.iter().any(|l| l.contains(&banned)));
}

#[test]
fn a_peer_killed_midway_does_not_stop_the_others() {
    let (mut net, _, agents) = swarm_of(6, 4, 8 << 20);
    let victim = agents[0];
    net.schedule(
        net.base + Duration::from_millis(30),
        Ev::Kill { node: victim },
    );
    net.run(Duration::from_secs(60));
    assert!(
        !net.nodes[&victim].swarm.is_complete(),
        "killed before it finished"
    );
    for id in &agents[1..] {
        assert!(net.nodes[id].swarm.is_complete());
    }
}

#[test]
fn a_black_hole_peer_times_out_and_is_shunned() {
    // A slow origin makes the download outlast the request timeout.
    let mut net = Net::new(metainfo(8 << 20), 5);
    net.add(1000, PeerKind::Origin, true, Behaviour::Honest, MB);
    let hole = net.add(77, PeerKind::Agent, true, Behaviour::BlackHole, 100 * MB);
    let agents: Vec<_> = (1..=3)
        .map(|i| net.add(i, PeerKind::Agent, false, Behaviour::Honest, 100 * MB))
        .collect();
    net.run(Duration::from_secs(120));
    for id in &agents {
        assert!(net.nodes[id].swarm.is_complete());
    }
    let hole = hole.to_string();
    assert!(
        net.trace
            .iter()
            .any(|l| l.contains("RequestTimedOut") && l.contains(&hole))
    );
    assert!(
        net.trace
            .iter()
            .any(|l| l.contains("Stalled") && l.contains(&hole))
    );
}

#[test]
fn fifty_agents_complete() {
    let (mut net, origin, agents) = swarm_of(50, 6, 4 << 20);
    net.run(Duration::from_secs(120));
    assert!(agents.iter().all(|a| net.nodes[a].swarm.is_complete()));
    let uploaded = net.nodes[&origin].swarm.stats().bytes_uploaded;
    let blob = net.metainfo.length();
    assert!(
        uploaded < 10 * blob,
        "origin sent {uploaded} bytes for a {blob}-byte blob to 50 agents"
    );
}
