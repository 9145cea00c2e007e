//! Unit tests of the swarm's decisions, driven by hand with a virtual clock.

use std::time::{Duration, Instant};

use kraken_storage::PieceLengthTable;

use super::*;

const PIECE: u32 = 16 * 1024;

fn metainfo(pieces: u32) -> Arc<Metainfo> {
    let data = vec![9u8; (pieces * PIECE) as usize];
    let table = PieceLengthTable::uniform(PIECE);
    Arc::new(Metainfo::from_bytes(&data, &table).unwrap())
}

fn me() -> PeerId {
    PeerId::from_u64(0)
}

fn p(n: u64) -> PeerId {
    PeerId::from_u64(n)
}

fn info(n: u64, kind: PeerKind) -> PeerInfo {
    PeerInfo {
        id: p(n),
        addr: ([127, 0, 0, 1], n as u16).into(),
        kind,
        complete: false,
    }
}

fn new_swarm(pieces: u32, complete: bool, config: SwarmConfig, now: Instant) -> Swarm {
    let m = metainfo(pieces);
    let have = if complete {
        Bitfield::full(pieces)
    } else {
        Bitfield::new(pieces)
    };
    Swarm::new(config, me(), m, have, now).unwrap()
}

fn drain(s: &mut Swarm) -> Vec<Transmit> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

fn events(s: &mut Swarm) -> Vec<SwarmEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn requests_to(t: &[Transmit], peer: PeerId) -> Vec<PieceIndex> {
    t.iter()
        .filter_map(|t| match t {
            Transmit::Message {
                to,
                msg: PeerMessage::Request(i),
            } if *to == peer => Some(*i),
            _ => None,
        })
        .collect()
}

fn dials(t: &[Transmit]) -> Vec<PeerId> {
    t.iter()
        .filter_map(|t| match t {
            Transmit::Connect { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

/// A session with `peer` opens (`outbound`: we dialled it).
fn connected(s: &mut Swarm, now: Instant, peer: u64, kind: PeerKind, outbound: bool) {
    s.handle_peer(
        now,
        PeerEvent::Connected {
            id: p(peer),
            kind,
            outbound,
        },
    );
}

/// Connects `peer` and delivers its handshake with `bits`.
fn join(s: &mut Swarm, now: Instant, peer: u64, kind: PeerKind, bits: &[u32]) -> Vec<Transmit> {
    connected(s, now, peer, kind, true);
    let mut bf = Bitfield::new(s.metainfo().piece_count());
    for b in bits {
        bf.set(PieceIndex(*b));
    }
    let id = s.metainfo().id();
    s.handle_message(
        now,
        p(peer),
        PeerMessage::Handshake {
            metainfo_id: id,
            bitfield: bf,
        },
    );
    drain(s)
}

#[test]
fn new_swarm_announces_and_handout_dials_up_to_the_limit_skipping_self_and_duplicates() {
    let now = Instant::now();
    let config = SwarmConfig {
        max_connections: 3,
        ..SwarmConfig::default()
    };
    let mut s = new_swarm(8, false, config, now);
    assert!(matches!(
        events(&mut s)[..],
        [SwarmEvent::Announce {
            complete: false,
            have_bytes: 0
        }]
    ));
    let handout = vec![
        info(0, PeerKind::Agent), // ourselves
        info(1, PeerKind::Origin),
        info(1, PeerKind::Origin), // duplicate
        info(2, PeerKind::Agent),
        info(3, PeerKind::Agent),
        info(4, PeerKind::Agent),
        info(5, PeerKind::Agent),
    ];
    s.handle_handout(now, handout, Some(Duration::from_secs(5)));
    let dialled = dials(&drain(&mut s));
    // Three agents, and the origin on top of them.
    assert_eq!(dialled, vec![p(1), p(2), p(3), p(4)]);
    // A failed dial is blacklisted and replaced by the next candidate.
    s.handle_peer(now, PeerEvent::ConnectFailed { id: p(2) });
    assert!(s.is_blacklisted(&p(2), now));
    assert!(drain(&mut s).contains(&Transmit::Connect {
        id: p(5),
        addr: info(5, PeerKind::Agent).addr
    }));
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(5)));
}

#[test]
fn rarest_piece_first_and_pipelines_by_kind() {
    let now = Instant::now();
    let config = SwarmConfig {
        spare_origins: false,
        ..SwarmConfig::default()
    };
    let mut s = new_swarm(20, false, config, now);
    let all: Vec<u32> = (0..20).collect();
    let all_but_7: Vec<u32> = (0..20).filter(|i| *i != 7).collect();
    // Piece 7 is held by one peer, everything else by two.
    join(&mut s, now, 1, PeerKind::Agent, &all_but_7);
    let t = join(&mut s, now, 2, PeerKind::Agent, &all);
    let to2 = requests_to(&t, p(2));
    assert_eq!(to2.len(), 3, "pipeline of 3 to agents");
    assert_eq!(to2[0], PieceIndex(7), "the rarest piece first");
    let t = join(&mut s, now, 3, PeerKind::Origin, &all);
    let to3 = requests_to(&t, p(3));
    assert_eq!(to3.len(), 5, "pipeline of 5 to origins");
    // Nobody is asked for a piece another peer is already fetching.
    let mut all: Vec<_> = requests_to(&t, p(3));
    all.extend(to2);
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(all.len(), dedup.len());
}

#[test]
fn origins_are_spared_pieces_that_agents_have() {
    let now = Instant::now();
    let mut s = new_swarm(20, false, SwarmConfig::default(), now);
    let all: Vec<u32> = (0..20).collect();
    let all_but_7: Vec<u32> = (0..20).filter(|i| *i != 7).collect();
    join(&mut s, now, 1, PeerKind::Agent, &all_but_7);
    let t = join(&mut s, now, 3, PeerKind::Origin, &all);
    assert_eq!(
        requests_to(&t, p(3)),
        vec![PieceIndex(7)],
        "only what no agent has"
    );
}

#[test]
fn timeouts_move_requests_elsewhere_and_stalled_peers_are_blacklisted() {
    let now = Instant::now();
    let config = SwarmConfig {
        stall_strikes: 2,
        endgame_pieces: 0,
        announce_interval: Duration::from_secs(3600),
        ..SwarmConfig::default()
    };
    let timeout = config.request_timeout(PIECE);
    let mut s = new_swarm(8, false, config, now);
    let t = join(&mut s, now, 1, PeerKind::Agent, &[0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(requests_to(&t, p(1)).len(), 3);
    assert_eq!(s.poll_timeout(), Some(now + timeout));
    events(&mut s);

    // Peer 1 starts nothing for a whole timeout: its three requests give up together,
    // are cancelled, and cost it one strike, not three.
    let later = now + timeout;
    s.handle_timeout(later);
    let ev = events(&mut s);
    let timed_out = ev
        .iter()
        .filter(|e| matches!(e, SwarmEvent::RequestTimedOut { .. }))
        .count();
    assert_eq!(timed_out, 3);
    let t = drain(&mut s);
    let cancels = t
        .iter()
        .filter(|t| {
            matches!(
                t,
                Transmit::Message {
                    msg: PeerMessage::Cancel(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(cancels, 3);
    assert!(!s.is_blacklisted(&p(1), later), "one strike of two");
    // The pieces went back to the pool and were asked again (peer 1 is the only source).
    assert_eq!(requests_to(&t, p(1)).len(), 3);

    // A second stall is the second strike.
    let later = later + timeout;
    s.handle_timeout(later);
    let ev = events(&mut s);
    assert!(ev.iter().any(|e| matches!(
        e,
        SwarmEvent::Blacklisted {
            reason: BlacklistReason::Stalled,
            ..
        }
    )));
    assert!(s.is_blacklisted(&p(1), later));
    assert_eq!(s.stats().requests_timed_out, 6);
}

#[test]
fn a_busy_uploader_that_keeps_serving_is_not_timed_out() {
    let now = Instant::now();
    let config = SwarmConfig {
        stall_strikes: 1,
        endgame_pieces: 0,
        announce_interval: Duration::from_secs(3600),
        ..SwarmConfig::default()
    };
    let timeout = config.request_timeout(PIECE);
    let mut s = new_swarm(8, false, config, now);
    let t = join(&mut s, now, 1, PeerKind::Origin, &[0, 1, 2, 3, 4, 5, 6, 7]);
    let mut asked = requests_to(&t, p(1));
    assert_eq!(asked.len(), 5);
    events(&mut s);
    // The origin serves others first: each of our pieces starts just before the patience
    // runs out and takes most of its own timeout. Nothing is timed out, ever.
    let step = timeout - Duration::from_millis(1);
    let mut clock = now;
    while let Some(index) = asked.pop() {
        clock += step;
        s.handle_timeout(clock);
        s.handle_piece_started(clock, p(1), index);
        clock += step;
        s.handle_timeout(clock);
        s.handle_piece_received(clock, p(1), index, PieceOutcome::Stored);
        asked.extend(requests_to(&drain(&mut s), p(1)));
    }
    assert!(s.is_complete());
    assert_eq!(s.stats().requests_timed_out, 0);
    assert!(!s.is_blacklisted(&p(1), clock));

    // A transfer that starts and then stops is timed out from its start.
    let mut s = new_swarm(8, false, SwarmConfig::default(), now);
    let t = join(&mut s, now, 1, PeerKind::Agent, &[0, 1, 2, 3, 4, 5, 6, 7]);
    let first = requests_to(&t, p(1))[0];
    let start = now + Duration::from_secs(1);
    s.handle_piece_started(start, p(1), first);
    s.handle_timeout(start + timeout - Duration::from_millis(1));
    assert!(s.is_requested(&p(1), first));
    s.handle_timeout(start + timeout);
    assert!(!s.is_requested(&p(1), first));
}

#[test]
fn endgame_duplicates_requests_and_cancels_the_loser() {
    let now = Instant::now();
    let mut s = new_swarm(2, false, SwarmConfig::default(), now);
    let t1 = join(&mut s, now, 1, PeerKind::Agent, &[0, 1]);
    assert_eq!(requests_to(&t1, p(1)).len(), 2);
    // Two pieces missing <= endgame_pieces: the second peer is asked for the same pieces.
    let t2 = join(&mut s, now, 2, PeerKind::Agent, &[0, 1]);
    assert_eq!(requests_to(&t2, p(2)).len(), 2);
    s.handle_piece_received(now, p(2), PieceIndex(0), PieceOutcome::Stored);
    let t = drain(&mut s);
    assert!(t.contains(&Transmit::Message {
        to: p(1),
        msg: PeerMessage::Cancel(PieceIndex(0))
    }));
    s.handle_piece_received(now, p(1), PieceIndex(1), PieceOutcome::Stored);
    assert!(s.is_complete());
    assert_eq!(s.poll_storage(), Some(StorageOp::Commit));
    assert_eq!(s.poll_storage(), None);
    let t = drain(&mut s);
    assert!(t.contains(&Transmit::Message {
        to: p(2),
        msg: PeerMessage::Cancel(PieceIndex(1))
    }));
    let ev = events(&mut s);
    assert!(ev.contains(&SwarmEvent::Completed));
    assert!(ev.contains(&SwarmEvent::Announce {
        complete: true,
        have_bytes: 2 * u64::from(PIECE)
    }));
}

#[test]
fn corrupt_piece_blacklists_and_disconnects_the_sender() {
    let now = Instant::now();
    let mut s = new_swarm(4, false, SwarmConfig::default(), now);
    join(&mut s, now, 1, PeerKind::Agent, &[0, 1, 2, 3]);
    s.handle_piece_received(now, p(1), PieceIndex(0), PieceOutcome::Corrupt);
    assert!(!s.bitfield().get(PieceIndex(0)));
    assert!(drain(&mut s).contains(&Transmit::Disconnect { id: p(1) }));
    assert!(s.is_blacklisted(&p(1), now + Duration::from_secs(599)));
    assert!(events(&mut s).contains(&SwarmEvent::BadPiece {
        from: p(1),
        index: PieceIndex(0)
    }));
    // A blacklisted peer that connects again is turned away.
    connected(&mut s, now, 1, PeerKind::Agent, false);
    assert_eq!(drain(&mut s), vec![Transmit::Disconnect { id: p(1) }]);
}

#[test]
fn protocol_violations_are_punished() {
    let now = Instant::now();
    let mut s = new_swarm(4, false, SwarmConfig::default(), now);
    // Wrong metainfo.
    connected(&mut s, now, 1, PeerKind::Agent, true);
    s.handle_message(
        now,
        p(1),
        PeerMessage::Handshake {
            metainfo_id: kraken_storage::MetainfoId([0; 32]),
            bitfield: Bitfield::new(4),
        },
    );
    assert!(drain(&mut s).contains(&Transmit::Disconnect { id: p(1) }));
    // A request before the handshake.
    connected(&mut s, now, 2, PeerKind::Agent, true);
    s.handle_message(now, p(2), PeerMessage::Request(PieceIndex(0)));
    assert!(drain(&mut s).contains(&Transmit::Disconnect { id: p(2) }));
    // A `Have` out of range.
    join(&mut s, now, 3, PeerKind::Agent, &[]);
    s.handle_message(now, p(3), PeerMessage::Have(PieceIndex(99)));
    assert!(drain(&mut s).contains(&Transmit::Disconnect { id: p(3) }));
    let violations = events(&mut s)
        .into_iter()
        .filter(|e| matches!(e, SwarmEvent::Violation { .. }))
        .count();
    assert_eq!(violations, 3);
}

#[test]
fn seeder_serves_fairly_through_upload_slots_and_rejects_the_rest() {
    let now = Instant::now();
    let config = SwarmConfig {
        upload_slots: 2,
        max_queued_requests_per_peer: 2,
        ..SwarmConfig::default()
    };
    let mut s = new_swarm(8, true, config, now);
    join(&mut s, now, 1, PeerKind::Agent, &[]);
    join(&mut s, now, 2, PeerKind::Agent, &[]);
    for i in 0..3 {
        s.handle_message(now, p(1), PeerMessage::Request(PieceIndex(i)));
    }
    s.handle_message(now, p(2), PeerMessage::Request(PieceIndex(5)));
    let t = drain(&mut s);
    let sends: Vec<_> = t
        .iter()
        .filter(|t| matches!(t, Transmit::SendPiece { .. }))
        .collect();
    assert_eq!(sends.len(), 2, "two upload slots");
    // Peer 1's first request starts at once; its third is over the queue limit.
    assert!(
        t.contains(&Transmit::Message {
            to: p(1),
            msg: PeerMessage::Reject(PieceIndex(2))
        }) || sends.len() == 2
    );
    // When a slot frees, the other peer gets its turn before peer 1's second piece.
    s.handle_piece_sent(now, p(1), PieceIndex(0), true);
    let next: Vec<_> = drain(&mut s)
        .into_iter()
        .filter(|t| matches!(t, Transmit::SendPiece { .. }))
        .collect();
    assert_eq!(next.len(), 1);
    assert_eq!(s.stats().bytes_uploaded, u64::from(PIECE));
}

#[test]
fn complete_peers_part_and_seeding_expires() {
    let now = Instant::now();
    let config = SwarmConfig {
        seed_tti: Duration::from_secs(10),
        ..SwarmConfig::default()
    };
    let mut s = new_swarm(4, true, config, now);
    // A seeder does not dial.
    s.handle_handout(now, vec![info(1, PeerKind::Agent)], None);
    assert!(drain(&mut s).is_empty());
    // Two complete peers have nothing to say to each other.
    let t = join(&mut s, now, 2, PeerKind::Agent, &[0, 1, 2, 3]);
    assert!(t.contains(&Transmit::Disconnect { id: p(2) }));
    events(&mut s);
    s.handle_timeout(now + Duration::from_secs(9));
    assert!(!events(&mut s).contains(&SwarmEvent::SeedingExpired));
    s.handle_timeout(now + Duration::from_secs(10));
    assert!(events(&mut s).contains(&SwarmEvent::SeedingExpired));
}

#[test]
fn idle_sessions_are_closed() {
    let now = Instant::now();
    let mut s = new_swarm(4, false, SwarmConfig::default(), now);
    join(&mut s, now, 1, PeerKind::Agent, &[]);
    s.handle_timeout(now + Duration::from_secs(60));
    assert!(drain(&mut s).contains(&Transmit::Disconnect { id: p(1) }));
    assert_eq!(s.connected_peers().count(), 0);
}

#[test]
fn bad_config_is_rejected() {
    let now = Instant::now();
    let m = metainfo(2);
    for bad in [
        SwarmConfig {
            max_connections: 0,
            ..SwarmConfig::default()
        },
        SwarmConfig {
            min_transfer_rate: 0,
            ..SwarmConfig::default()
        },
    ] {
        assert!(Swarm::new(bad, me(), m.clone(), Bitfield::new(2), now).is_err());
    }
    assert!(Swarm::new(SwarmConfig::default(), me(), m, Bitfield::new(3), now).is_err());
}

#[test]
fn a_late_report_for_a_dropped_peer_does_not_free_a_slot_twice() {
    let now = Instant::now();
    let config = SwarmConfig {
        upload_slots: 1,
        ..SwarmConfig::default()
    };
    let mut s = new_swarm(4, true, config, now);
    join(&mut s, now, 1, PeerKind::Agent, &[]);
    join(&mut s, now, 2, PeerKind::Agent, &[]);
    s.handle_message(now, p(1), PeerMessage::Request(PieceIndex(0)));
    assert!(drain(&mut s).iter().any(|t| matches!(
        t,
        Transmit::SendPiece { to, index: PieceIndex(0), .. } if *to == p(1)
    )));
    s.handle_peer(now, PeerEvent::Disconnected { id: p(1) });
    s.handle_message(now, p(2), PeerMessage::Request(PieceIndex(1)));
    s.handle_message(now, p(2), PeerMessage::Request(PieceIndex(2)));
    let sends = |t: &[Transmit]| {
        t.iter()
            .filter(|t| matches!(t, Transmit::SendPiece { .. }))
            .count()
    };
    assert_eq!(sends(&drain(&mut s)), 1, "peer 2 got the one slot");
    // The upload to the departed peer reports late: peer 2's second piece must still wait.
    s.handle_piece_sent(now, p(1), PieceIndex(0), false);
    assert_eq!(sends(&drain(&mut s)), 0);
    s.handle_piece_sent(now, p(2), PieceIndex(1), true);
    assert_eq!(sends(&drain(&mut s)), 1);
}

#[test]
fn a_swarm_that_starts_complete_asks_once_for_a_commit() {
    let now = Instant::now();
    let mut s = new_swarm(4, true, SwarmConfig::default(), now);
    assert_eq!(s.poll_storage(), Some(StorageOp::Commit));
    assert_eq!(s.poll_storage(), None);
}

#[test]
fn deadlines_offered_are_deadlines_acted_on() {
    let now = Instant::now();
    let config = SwarmConfig {
        seed_tti: Duration::from_secs(10),
        announce_interval: Duration::from_secs(3600),
        ..SwarmConfig::default()
    };
    let mut s = new_swarm(4, true, config, now);
    join(&mut s, now, 1, PeerKind::Agent, &[]);
    s.handle_message(now, p(1), PeerMessage::Request(PieceIndex(0)));
    drain(&mut s);
    // Uploading: neither the idle nor the seeding deadline applies, so neither is offered
    // (offering them would make a driver spin on a deadline nothing acts on).
    let later = now + Duration::from_secs(120);
    s.handle_timeout(later);
    assert!(s.poll_timeout().is_none_or(|t| t > later));
}

#[test]
fn a_rejected_piece_is_asked_of_someone_else() {
    let now = Instant::now();
    let config = SwarmConfig {
        endgame_pieces: 0,
        pipeline_to_agents: 1,
        ..SwarmConfig::default()
    };
    let mut s = new_swarm(2, false, config, now);
    let t = join(&mut s, now, 1, PeerKind::Agent, &[0]);
    assert_eq!(requests_to(&t, p(1)), vec![PieceIndex(0)]);
    join(&mut s, now, 2, PeerKind::Agent, &[0]);
    s.handle_message(now, p(1), PeerMessage::Reject(PieceIndex(0)));
    let t = drain(&mut s);
    assert!(
        requests_to(&t, p(1)).is_empty(),
        "not the peer that refused"
    );
    assert_eq!(requests_to(&t, p(2)), vec![PieceIndex(0)]);
}

#[test]
fn a_peer_shunned_as_unreachable_that_dials_us_is_taken_back_but_a_corrupt_one_is_not() {
    let now = Instant::now();
    let mut s = new_swarm(4, true, SwarmConfig::default(), now);
    let inbound = |s: &mut Swarm, n: u64| {
        connected(s, now, n, PeerKind::Agent, false);
        drain(s)
    };
    // Peer 1 could not be reached (it was restarting); then it dials us.
    s.handle_peer(now, PeerEvent::ConnectFailed { id: p(1) });
    assert!(s.is_blacklisted(&p(1), now));
    let t = inbound(&mut s, 1);
    assert!(!t.contains(&Transmit::Disconnect { id: p(1) }));
    assert!(!s.is_blacklisted(&p(1), now));
    assert!(s.connected_peers().any(|id| id == p(1)));

    // Peer 2 sent a corrupt piece: its dialling us changes nothing.
    join(&mut s, now, 2, PeerKind::Agent, &[]);
    s.handle_piece_received(now, p(2), PieceIndex(0), PieceOutcome::Corrupt);
    assert!(s.is_blacklisted(&p(2), now));
    let t = inbound(&mut s, 2);
    assert!(t.contains(&Transmit::Disconnect { id: p(2) }));
    assert!(s.is_blacklisted(&p(2), now));
    // Nor does a later stall shorten its ban.
    s.handle_peer(now, PeerEvent::ConnectFailed { id: p(2) });
    let later = now + SwarmConfig::default().blacklist_unreachable + Duration::from_secs(1);
    assert!(s.is_blacklisted(&p(2), later));
}

#[test]
fn a_peer_that_refused_our_session_is_redialled_soon_an_unreachable_one_later() {
    let now = Instant::now();
    let config = SwarmConfig::default();
    let mut s = new_swarm(4, false, config.clone(), now);
    let handout = vec![info(1, PeerKind::Agent), info(2, PeerKind::Agent)];
    s.handle_handout(now, handout.clone(), None);
    assert_eq!(dials(&drain(&mut s)), vec![p(1), p(2)]);
    // Peer 1 takes the session and closes it before its handshake: at its limit.
    connected(&mut s, now, 1, PeerKind::Agent, true);
    s.handle_peer(now, PeerEvent::Disconnected { id: p(1) });
    assert!(dials(&drain(&mut s)).is_empty(), "no redial storm");
    // Peer 2 cannot be reached at all.
    s.handle_peer(now, PeerEvent::ConnectFailed { id: p(2) });
    let reasons: Vec<BlacklistReason> = events(&mut s)
        .into_iter()
        .filter_map(|e| match e {
            SwarmEvent::Blacklisted { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![BlacklistReason::Busy, BlacklistReason::Unreachable]
    );
    drain(&mut s);

    let soon = now + config.blacklist_busy + Duration::from_millis(1);
    assert!(soon < now + config.blacklist_unreachable);
    s.handle_handout(soon, handout, None);
    assert_eq!(dials(&drain(&mut s)), vec![p(1)]);
    assert!(s.is_blacklisted(&p(2), soon));
}

#[test]
fn origins_are_dialled_on_top_of_the_agent_connections_and_capped_apart() {
    let now = Instant::now();
    let config = SwarmConfig::default();
    let mut s = new_swarm(4, false, config.clone(), now);
    // Early handouts list the blob's origins before incomplete agents.
    let handout: Vec<PeerInfo> = (100..105)
        .map(|n| info(n, PeerKind::Origin))
        .chain((1..=12).map(|n| info(n, PeerKind::Agent)))
        .collect();
    s.handle_handout(now, handout, None);
    let dialled = dials(&drain(&mut s));
    let origins = dialled.iter().filter(|id| **id >= p(100)).count();
    assert_eq!(origins, config.max_origin_connections);
    assert_eq!(dialled.len() - origins, config.max_connections);

    // With every agent slot taken, another agent dialling us is refused.
    for n in 1..=10 {
        join(&mut s, now, n, PeerKind::Agent, &[]);
    }
    drain(&mut s);
    let inbound = |s: &mut Swarm, n: u64, kind| {
        connected(s, now, n, kind, false);
        drain(s).contains(&Transmit::Disconnect { id: p(n) })
    };
    assert!(inbound(&mut s, 50, PeerKind::Agent), "an 11th agent");
    assert!(
        !inbound(&mut s, 100, PeerKind::Origin),
        "an origin still fits"
    );
}

/// A swarm for peer `me` (the other tests' swarms are peer 0).
fn swarm_of(me: u64, pieces: u32, now: Instant) -> Swarm {
    let have = Bitfield::new(pieces);
    Swarm::new(SwarmConfig::default(), p(me), metainfo(pieces), have, now).unwrap()
}

#[test]
fn crossing_sessions_leave_both_ends_with_the_one_the_lower_id_opened() {
    let now = Instant::now();
    let (mut a, mut b) = (swarm_of(1, 4, now), swarm_of(2, 4, now));
    let open = |outbound| OpenSession {
        outbound,
        alive: true,
    };
    // A's dial (opened by 1) and B's (opened by 2) cross. Each end holds its own session
    // when the other's arrives: A keeps its own, B takes A's.
    assert_eq!(
        a.handle_second_session(p(2), open(true), false),
        SessionChoice::KeepOpen
    );
    assert_eq!(
        b.handle_second_session(p(1), open(true), false),
        SessionChoice::TakeNew
    );
    // The other order of arrival: each end holds the other's session when its own opens.
    assert_eq!(
        a.handle_second_session(p(2), open(false), true),
        SessionChoice::TakeNew
    );
    assert_eq!(
        b.handle_second_session(p(1), open(false), true),
        SessionChoice::KeepOpen
    );
}

#[test]
fn a_second_session_of_one_opener_or_over_a_dead_connection_replaces_the_first() {
    let now = Instant::now();
    let mut s = new_swarm(4, false, SwarmConfig::default(), now);
    join(&mut s, now, 5, PeerKind::Agent, &[0, 1, 2, 3]);
    events(&mut s);
    // Ours (opened by 0) beats the peer's (opened by 5) while its connection lives.
    let ours = OpenSession {
        outbound: true,
        alive: true,
    };
    assert_eq!(
        s.handle_second_session(p(5), ours, false),
        SessionChoice::KeepOpen
    );
    assert_eq!(s.connected_peers().collect::<Vec<_>>(), vec![p(5)]);
    assert!(s.is_requested(&p(5), PieceIndex(0)) || s.is_requested(&p(5), PieceIndex(1)));
    // The peer reconnected: its new session replaces ours on the dead connection.
    let dead = OpenSession {
        alive: false,
        ..ours
    };
    assert_eq!(
        s.handle_second_session(p(5), dead, false),
        SessionChoice::TakeNew
    );
    // Forgotten, not punished; the new session starts afresh with a handshake.
    assert_eq!(s.connected_peers().count(), 0);
    assert!(!s.is_blacklisted(&p(5), now));
    assert!(events(&mut s).is_empty());
    drain(&mut s);
    connected(&mut s, now, 5, PeerKind::Agent, false);
    assert!(matches!(
        drain(&mut s).as_slice(),
        [Transmit::Message {
            msg: PeerMessage::Handshake { .. },
            ..
        }]
    ));
    // Two sessions the peer opened: the newer wins.
    let theirs = OpenSession {
        outbound: false,
        alive: true,
    };
    assert_eq!(
        s.handle_second_session(p(5), theirs, false),
        SessionChoice::TakeNew
    );
}

#[test]
fn a_peer_that_does_not_read_its_messages_is_dropped_before_anything_else_is_sent() {
    let now = Instant::now();
    let mut s = new_swarm(4, false, SwarmConfig::default(), now);
    join(&mut s, now, 1, PeerKind::Agent, &[0, 1, 2, 3]);
    join(&mut s, now, 2, PeerKind::Agent, &[]);
    // Messages to peer 1 still queued when its session's queue turns out full.
    s.handle_message(now, p(2), PeerMessage::Have(PieceIndex(0)));
    s.handle_peer(now, PeerEvent::Congested { id: p(1) });
    let t = drain(&mut s);
    assert_eq!(t.first(), Some(&Transmit::Disconnect { id: p(1) }));
    assert_eq!(s.connected_peers().collect::<Vec<_>>(), vec![p(2)]);
    // Its requests went back to the pool: peer 2 has piece 0 and is asked for it.
    assert_eq!(requests_to(&t, p(2)), vec![PieceIndex(0)]);
}

#[test]
fn an_upload_is_given_up_at_twice_the_pieces_request_timeout() {
    let now = Instant::now();
    let later = now + Duration::from_secs(7);
    let mut s = new_swarm(4, true, SwarmConfig::default(), now);
    join(&mut s, now, 1, PeerKind::Agent, &[]);
    s.handle_message(later, p(1), PeerMessage::Request(PieceIndex(3)));
    let deadline = drain(&mut s).into_iter().find_map(|t| match t {
        Transmit::SendPiece { deadline, .. } => Some(deadline),
        _ => None,
    });
    assert_eq!(deadline, Some(later + 2 * s.piece_timeout(PieceIndex(3))));
}

/// A peer that serves our requests one at a time, in the order asked.
struct InOrderServer {
    id: PeerId,
    queue: std::collections::VecDeque<PieceIndex>,
}

impl InOrderServer {
    /// Takes the requests to it among `sent`.
    fn new(id: PeerId, sent: &[Transmit]) -> Self {
        InOrderServer {
            id,
            queue: requests_to(sent, id).into(),
        }
    }

    /// Delivers `n` pieces; returns them in the order they arrived.
    fn deliver(&mut self, s: &mut Swarm, now: Instant, n: usize) -> Vec<PieceIndex> {
        let mut order = Vec::new();
        while order.len() < n {
            let Some(i) = self.queue.pop_front() else {
                break;
            };
            s.handle_piece_received(now, self.id, i, PieceOutcome::Stored);
            order.push(i);
            let t = drain(s);
            for c in t.iter().filter_map(|t| match t {
                Transmit::Message {
                    to,
                    msg: PeerMessage::Cancel(i),
                } if *to == self.id => Some(*i),
                _ => None,
            }) {
                self.queue.retain(|q| *q != c);
            }
            self.queue.extend(requests_to(&t, self.id));
        }
        order
    }
}

#[test]
fn a_streaming_reader_gets_the_pieces_ahead_of_it_first_and_nobody_else_notices() {
    let now = Instant::now();
    let all: Vec<u32> = (0..64).collect();
    // Without a reader, a lone agent pulling from an origin gets pieces in random order.
    let plain = |streaming: bool| {
        let mut s = new_swarm(64, false, SwarmConfig::default(), now);
        if streaming {
            s.set_streaming(now, []);
        }
        let t = join(&mut s, now, 9, PeerKind::Origin, &all);
        InOrderServer::new(p(9), &t).deliver(&mut s, now, 16)
    };
    let order = plain(false);
    assert_eq!(order.len(), 16);
    assert!(
        order.windows(2).any(|w| w[1].0 != w[0].0 + 1),
        "rarest first is not in order: {order:?}"
    );
    // No window: the same inputs draw the same random pieces as before, so the policy
    // touches nothing when nobody streams (simnet's scenarios stay byte-identical).
    assert_eq!(plain(true), order);

    // A reader at piece 0 with a window of 8: the pieces come in order.
    let mut s = new_swarm(64, false, SwarmConfig::default(), now);
    s.set_streaming(now, [PieceIndex(0)..PieceIndex(8)]);
    let t = join(&mut s, now, 9, PeerKind::Origin, &all);
    assert_eq!(
        requests_to(&t, p(9)),
        (0..5).map(PieceIndex).collect::<Vec<_>>(),
        "the pipeline fills from the reader's position"
    );
    let mut origin = InOrderServer::new(p(9), &t);
    let mut order = origin.deliver(&mut s, now, 3);
    // The reader moves on: its window follows it.
    s.set_streaming(now, [PieceIndex(3)..PieceIndex(11)]);
    order.extend(origin.deliver(&mut s, now, 8));
    assert_eq!(order, (0..11).map(PieceIndex).collect::<Vec<_>>());
    // Past the window (a reader that does not keep up), rarest first again.
    let rest = origin.deliver(&mut s, now, 16);
    assert!(rest.windows(2).any(|w| w[1].0 != w[0].0 + 1), "{rest:?}");
}

#[test]
fn a_reader_that_arrives_late_takes_the_place_of_requests_still_waiting() {
    let now = Instant::now();
    let all: Vec<u32> = (0..64).collect();
    let mut s = new_swarm(64, false, SwarmConfig::default(), now);
    let t = join(&mut s, now, 9, PeerKind::Origin, &all);
    let first = requests_to(&t, p(9));
    assert_eq!(first.len(), 5);
    // The origin has started the first one; the other four wait in its queue.
    s.handle_piece_started(now, p(9), first[0]);
    s.set_streaming(now, [PieceIndex(40)..PieceIndex(44)]);
    let t = drain(&mut s);
    let cancelled: Vec<PieceIndex> = t
        .iter()
        .filter_map(|t| match t {
            Transmit::Message {
                msg: PeerMessage::Cancel(i),
                ..
            } => Some(*i),
            _ => None,
        })
        .collect();
    let window: Vec<PieceIndex> = (40..44).map(PieceIndex).collect();
    // Window pieces asked already stay; the others each displace a waiting request.
    let displaced = window.iter().filter(|i| !first.contains(i)).count();
    assert_eq!(cancelled.len(), displaced);
    assert!(!cancelled.contains(&first[0]), "a transfer under way stays");
    assert!(cancelled.iter().all(|i| !window.contains(i)));
    let asked = requests_to(&t, p(9));
    assert_eq!(asked.len(), displaced);
    assert!(asked.iter().all(|i| window.contains(i)));
    for i in &window {
        assert!(s.is_requested(&p(9), *i), "{i} asked for");
    }
}

#[test]
fn streaming_windows_respect_what_a_peer_has_and_origins_spared() {
    let now = Instant::now();
    let mut s = new_swarm(32, false, SwarmConfig::default(), now);
    s.set_streaming(
        now,
        [PieceIndex(30)..PieceIndex(40), PieceIndex(4)..PieceIndex(4)],
    );
    // An agent without the window's pieces gets other pieces; the origin is asked only
    // for window pieces no agent has (piece 31 the agent has: it goes to the agent).
    let agent_has: Vec<u32> = (0..30).chain([31]).collect();
    let t = join(&mut s, now, 1, PeerKind::Agent, &agent_has);
    let to_agent = requests_to(&t, p(1));
    assert_eq!(to_agent[0], PieceIndex(31), "the window first where it can");
    let all: Vec<u32> = (0..32).collect();
    let t = join(&mut s, now, 9, PeerKind::Origin, &all);
    let to_origin = requests_to(&t, p(9));
    assert_eq!(to_origin, vec![PieceIndex(30)], "spared the rest");
}
