//! End-to-end simulations small enough for debug builds: determinism, a result checked by
//! hand, the bound, and faults applied at the right times.
#![allow(clippy::unwrap_used)]

use kraken_simnet::scenario::{Arrival, KillOrigin, TrackerOutage};
use kraken_simnet::{Report, Scenario, Simulation};

fn run(s: &Scenario, seed: u64) -> Report {
    Simulation::new(s, seed).unwrap().run()
}

/// A few dozen agents, with something of everything.
fn busy() -> Scenario {
    let mut s = Scenario {
        name: "busy".into(),
        ..Scenario::default()
    };
    s.blob.size_bytes = 24 << 20;
    s.blob.piece_length = 1 << 20;
    s.agents.count = 40;
    s.agents.slow_fraction = 0.2;
    s.faults.corrupt_fraction = 0.05;
    s.arrival = Arrival::Poisson { rate_per_s: 40.0 };
    s
}

/// One origin, one agent, no latency.
fn pair(origin_mb_s: f64, agent_mb_s: f64) -> Scenario {
    let mut s = Scenario {
        name: "pair".into(),
        ..Scenario::default()
    };
    s.blob.size_bytes = 50_000_000;
    s.blob.piece_length = 1 << 20;
    s.agents.count = 1;
    s.agents.upload_mb_s = agent_mb_s;
    s.agents.download_mb_s = agent_mb_s;
    s.origins.count = 1;
    s.origins.upload_mb_s = origin_mb_s;
    s.origins.download_mb_s = origin_mb_s;
    s.network.latency_ms = 0.0;
    s.network.latency_jitter_ms = 0.0;
    s
}

#[test]
fn same_seed_same_json_and_other_seed_differs() {
    let s = busy();
    let r = run(&s, 42);
    let a = r.to_json();
    let b = run(&s, 42).to_json();
    assert_eq!(a, b);
    assert!(a.contains("\"seed\": 42"));
    let c = run(&s, 43).to_json();
    assert_ne!(a, c);
    assert_eq!(
        r.completed,
        38,
        "every honest agent finishes: {}",
        r.summary()
    );
    assert!(r.bytes.corrupt > 0 && r.counts.blacklistings > 0);
}

#[test]
fn one_origin_one_agent_takes_f_over_the_bottleneck() {
    for (u, d) in [(100.0, 50.0), (25.0, 300.0)] {
        let r = run(&pair(u, d), 1);
        let expect = 50e6 / (f64::min(u, d) * 1e6);
        let got = r.completion_s.max;
        assert_eq!(r.completed, 1);
        assert!(
            (got - expect).abs() / expect < 0.01,
            "u {u} d {d}: expected {expect} s, got {got} s"
        );
        assert!((r.bound.t_min_s - expect).abs() < 1e-9);
        assert!((r.origin_egress_blobs - 1.0).abs() < 1e-9);
    }
}

#[test]
fn bound_matches_the_formula() {
    let mut s = busy();
    s.faults.corrupt_fraction = 0.0;
    s.agents.slow_fraction = 0.0;
    let r = run(&s, 1);
    let f = s.blob.size_bytes as f64;
    let u_s = 2.0 * 1250e6;
    let n = 40.0;
    let expect = f64::max(f / u_s, f64::max(f / 300e6, n * f / (u_s + n * 300e6)));
    assert!((r.bound.t_min_s - expect).abs() < 1e-12);
    assert!(
        r.completion_s.min >= r.bound.t_min_s * 0.999,
        "{}",
        r.summary()
    );
}

#[test]
fn a_killed_origin_sends_nothing_after_its_death() {
    let mut s = pair(100.0, 300.0);
    s.origins.count = 2;
    s.agents.count = 4;
    s.faults.kill_origins = vec![KillOrigin {
        at_s: 0.3,
        origin: 0,
    }];
    let r = run(&s, 3);
    assert_eq!(r.completed, 4, "{}", r.summary());
    let dead = &r.per_origin[0];
    assert_eq!(dead.died_s, Some(0.3));
    assert!(dead.last_upload_end_s.unwrap() <= 0.3);
    // At most 0.3 s of its 100 MB/s uplink.
    assert!(dead.bytes_up as f64 <= 0.3 * 100e6 + 1.0, "{}", r.summary());
    assert!(r.per_origin[1].last_upload_end_s.unwrap() > 0.3);
}

#[test]
fn announces_fail_during_a_tracker_outage_and_the_swarm_recovers() {
    let mut s = pair(100.0, 300.0);
    s.agents.count = 6;
    s.arrival = Arrival::Waves {
        waves: 2,
        interval_s: 1.0,
    };
    s.faults.tracker_outages = vec![TrackerOutage {
        start_s: 0.5,
        duration_s: 2.0,
    }];
    let r = run(&s, 5);
    assert_eq!(r.completed, 6, "{}", r.summary());
    assert!(r.counts.failed_announces >= 3, "{}", r.summary());
    // The second wave (t = 1 s) cannot learn of any peer before the outage ends (2.5 s)
    // and its next announce comes 3 s after its first.
    assert!(r.completion_s.max >= 3.0, "{}", r.summary());
}

/// A `Write` the test can read back after the simulation consumed it.
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_piece_log_has_a_start_and_an_arrival_per_transfer() {
    let log = Shared::default();
    let r = Simulation::new(&pair(100.0, 100.0), 1)
        .unwrap()
        .with_piece_log(Box::new(log.clone()))
        .run();
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let pieces = 50_000_000u64.div_ceil(1 << 20) as usize;
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    let starts = lines.iter().filter(|l| l[0] == "start").count();
    let arrivals: Vec<&Vec<&str>> = lines.iter().filter(|l| l[0] == "arrive").collect();
    assert_eq!((starts, arrivals.len()), (pieces, pieces));
    // Host 0 is the origin, host 1 the agent; nothing arrived twice.
    assert!(
        arrivals
            .iter()
            .all(|l| l[2..4] == ["0", "1"] && l[5] == "0")
    );
    let last: u64 = arrivals.last().unwrap()[1].parse().unwrap();
    assert!((last as f64 / 1e9 - r.completion_s.max).abs() < 1e-6);
}

/// `busy()` without corrupt senders, finding peers through the DHT model.
fn dht(churn: f64) -> Scenario {
    let mut s = busy();
    s.name = "dht".into();
    s.faults.corrupt_fraction = 0.0;
    s.faults.churn_fraction = churn;
    s.faults.churn_window_s = 2.0;
    s.discovery = kraken_simnet::dht::Discovery::Dht;
    s
}

#[test]
fn dht_discovery_completes_without_any_tracker_and_is_deterministic() {
    let mut s = dht(0.1);
    // Every tracker down for the whole run: DHT discovery does not use them.
    s.faults.tracker_outages = vec![TrackerOutage {
        start_s: 0.0,
        duration_s: 3600.0,
    }];
    let r = run(&s, 5);
    assert_eq!(r.to_json(), run(&s, 5).to_json());
    assert_eq!(r.discovery, "dht");
    assert_eq!(r.completed + r.died, 40, "{}", r.summary());
    assert_eq!(r.unfinished, 0);
    let k = &r.counts;
    assert_eq!((k.handouts, k.failed_announces), (0, 0));
    assert!(k.dht_lookups >= 40, "{}", r.summary());
    // Agents provide once each (the 12 h republish is far off), those that lived long
    // enough to hold a piece.
    assert!(k.dht_provides <= 40 && k.dht_provides >= r.completed as u64);
    assert!(r.bytes.useful_from_agents > 0, "{}", r.summary());
}

#[test]
fn agents_that_never_provide_are_never_found() {
    // More pieces than the blob has: nobody provides, so agents know only the origins.
    let mut s = dht(0.0);
    s.dht.provide_after_pieces = 1_000;
    let r = run(&s, 1);
    assert_eq!(r.completed, 40, "{}", r.summary());
    assert_eq!(r.counts.dht_provides, 0);
    assert_eq!(r.bytes.useful_from_agents, 0, "{}", r.summary());
    assert!(r.origin_egress_blobs >= 40.0, "{}", r.summary());
    // Providing on arrival lets agents find each other from the first lookup.
    s.dht.provide_after_pieces = 0;
    let r = run(&s, 1);
    assert_eq!(r.counts.dht_provides, 40);
    assert!(r.bytes.useful_from_agents > 0);
}
