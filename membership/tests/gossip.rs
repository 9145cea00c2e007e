//! Gossip on loopback: nodes join through one seed, agree on the rings, heal after a kill,
//! readmit a restarted node, refuse another cluster, and shrug off garbage datagrams.
//!
//! Short intervals (100 ms rounds) keep each test to a few seconds. Waits are on the watch
//! channels with deadlines, never fixed sleeps.
#![cfg(feature = "gossip")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kraken_membership::{
    ClusterId, ClusterView, Member, Membership, MembershipConfig, MembershipError, NodeId, Role,
    RoleSet,
};
use kraken_storage::Digest;
use kraken_transport::quic::tls::MemberCertAuth;
use support::{auth_for, ca};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout, timeout_at};

const ROUND: Duration = Duration::from_millis(100);
/// Generous bound for anything gossip must achieve; typical times are printed.
const DEADLINE: Duration = Duration::from_secs(20);

/// Starts `m` with a fresh certificate for its node id.
async fn start(cfg: MembershipConfig, m: Member) -> Result<Membership, MembershipError> {
    let auth = auth_for(m.id.as_str());
    Membership::start(cfg, m, auth).await
}

fn config(cluster: &str, seeds: Vec<String>) -> MembershipConfig {
    MembershipConfig {
        cluster_id: ClusterId::new(cluster).unwrap(),
        gossip_listen_addr: "127.0.0.1:0".parse().unwrap(),
        seeds,
        gossip_interval: ROUND,
        phi_threshold: 8.0,
        initial_heartbeat_interval: ROUND * 2,
        max_heartbeat_interval: Duration::from_secs(2),
        dead_node_grace_period: Duration::from_millis(500),
        forget_dead_node_after: Duration::from_secs(30),
        ..MembershipConfig::default()
    }
}

fn member(name: &str, generation: u64, roles: &[Role]) -> Member {
    let mut m = Member::new(
        NodeId::new(name).unwrap(),
        RoleSet::of(roles),
        // Not dialled in these tests; distinct per node for realism.
        SocketAddr::from((
            [127, 0, 0, 1],
            40_000 + name.len() as u16 * 7 + generation as u16,
        )),
    );
    m.generation = generation;
    m.http_addr = Some("127.0.0.1:8080".parse().unwrap());
    m
}

/// Roles of node `i` of the five-node cluster: all origins, even ones trackers, two
/// build-index nodes.
fn roles_of(i: usize) -> Vec<Role> {
    let mut roles = vec![Role::Origin];
    if i.is_multiple_of(2) {
        roles.push(Role::Tracker);
    }
    if i == 1 || i == 3 {
        roles.push(Role::BuildIndex);
    }
    roles
}

/// The view holds exactly these members (id → generation), all ready, none suspected.
fn exactly(expected: &BTreeMap<String, u64>) -> impl Fn(&ClusterView) -> bool + '_ {
    move |v| {
        v.suspected().is_empty()
            && v.len() == expected.len()
            && expected.iter().all(|(id, generation)| {
                v.member(&NodeId::new(id.clone()).unwrap())
                    .is_some_and(|m| m.generation == *generation && m.ready)
            })
    }
}

/// Waits until every node's view satisfies `pred` at the same time.
async fn wait_all(
    nodes: &[&Membership],
    what: &str,
    deadline: Instant,
    pred: impl Fn(&ClusterView) -> bool,
) {
    loop {
        for node in nodes {
            let mut rx = node.watch();
            if timeout_at(deadline, rx.wait_for(|v| pred(v)))
                .await
                .is_err()
            {
                panic!(
                    "{what}: timed out; {:?} sees {:#?}",
                    node.gossip_addr(),
                    node.view()
                );
            }
        }
        if nodes.iter().all(|n| pred(&n.view())) {
            return;
        }
    }
}

fn digests(n: u32) -> Vec<Digest> {
    (0..n)
        .map(|i| Digest::sha256_of(&i.to_le_bytes()))
        .collect()
}

fn owners(view: &ClusterView, role: Role, keys: &[Digest]) -> Vec<Vec<String>> {
    let ring = view.ring(role);
    keys.iter()
        .map(|d| {
            ring.owners_of_digest(d, 3)
                .iter()
                .map(|m| m.id.to_string())
                .collect()
        })
        .collect()
}

/// All nodes compute the same owners on every ring.
fn assert_rings_agree(nodes: &[&Membership], keys: &[Digest]) {
    let first = nodes[0].view();
    for role in Role::ALL {
        let expected = owners(&first, role, keys);
        for n in &nodes[1..] {
            assert_eq!(
                owners(&n.view(), role, keys),
                expected,
                "{role} ring differs"
            );
        }
    }
    for n in &nodes[1..] {
        assert!(n.view().same_membership(&first));
        assert_eq!(n.view().fingerprint(), first.fingerprint());
    }
}

/// Starts a node on `port`, retrying while the port is still held by a killed process'
/// socket; falls back to a fresh port if it stays taken.
async fn start_on_port(mut cfg: MembershipConfig, m: Member, port: u16) -> Membership {
    cfg.gossip_listen_addr.set_port(port);
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        match start(cfg.clone(), m.clone()).await {
            Ok(node) => return node,
            Err(MembershipError::Start(_)) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => {
                cfg.gossip_listen_addr.set_port(0);
                return start(cfg, m).await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_join_through_one_seed_heal_after_a_kill_and_readmit_a_restart() {
    let t0 = Instant::now();
    let seed = start(config("test", vec![]), member("node-0", 1, &roles_of(0)))
        .await
        .unwrap();
    let seed_port = seed.gossip_addr().port();
    let mut nodes = vec![seed];
    for i in 1..5 {
        // Two join by IP, two by DNS name: one seed address is all a node knows.
        let seed_addr = if i <= 2 {
            format!("127.0.0.1:{seed_port}")
        } else {
            format!("localhost:{seed_port}")
        };
        let node = start(
            config("test", vec![seed_addr]),
            member(&format!("node-{i}"), 1, &roles_of(i)),
        )
        .await
        .unwrap();
        nodes.push(node);
    }
    let mut expected: BTreeMap<String, u64> = (0..5).map(|i| (format!("node-{i}"), 1)).collect();
    let all: Vec<&Membership> = nodes.iter().collect();
    wait_all(&all, "join", Instant::now() + DEADLINE, exactly(&expected)).await;
    let joined = t0.elapsed();

    let keys = digests(300);
    assert_rings_agree(&all, &keys);
    let view = nodes[0].view();
    assert_eq!(view.members_of(Role::Origin).count(), 5);
    assert_eq!(view.members_of(Role::Tracker).count(), 3);
    assert_eq!(view.members_of(Role::BuildIndex).count(), 2);
    let node2 = view
        .member(&NodeId::new("node-2").unwrap())
        .unwrap()
        .clone();
    assert_eq!(
        node2,
        member("node-2", 1, &roles_of(2)),
        "published record arrives intact"
    );
    let before = owners(&view, Role::Origin, &keys);
    assert!(before.iter().any(|o| o.contains(&"node-2".to_owned())));

    // Kill node-2 (no goodbye): within a bounded time all agree again without it.
    let killed = nodes.remove(2);
    let killed_port = killed.gossip_addr().port();
    drop(killed);
    let t_kill = Instant::now();
    expected.remove("node-2");
    let alive: Vec<&Membership> = nodes.iter().collect();
    wait_all(
        &alive,
        "heal after kill",
        t_kill + DEADLINE,
        exactly(&expected),
    )
    .await;
    let healed = t_kill.elapsed();
    assert_rings_agree(&alive, &keys);
    let after = owners(&nodes[0].view(), Role::Origin, &keys);
    for (old, new) in before.iter().zip(&after) {
        assert!(!new.contains(&"node-2".to_owned()));
        assert_eq!(new.len(), 3);
        if old.contains(&"node-2".to_owned()) {
            // Its keys have new owners; the surviving owners keep their order.
            let survivors: Vec<_> = old.iter().filter(|id| *id != "node-2").collect();
            assert_eq!(new.iter().take(2).collect::<Vec<_>>(), survivors);
        } else {
            assert_eq!(old, new, "keys node-2 did not own do not move");
        }
    }

    // Restart node-2 with a new generation on its old address: it is back, and replaces
    // its old self.
    let t_restart = Instant::now();
    let restarted = start_on_port(
        config("test", vec![format!("127.0.0.1:{seed_port}")]),
        member("node-2", 2, &roles_of(2)),
        killed_port,
    )
    .await;
    nodes.insert(2, restarted);
    expected.insert("node-2".into(), 2);
    let all: Vec<&Membership> = nodes.iter().collect();
    wait_all(&all, "restart", t_restart + DEADLINE, exactly(&expected)).await;
    let readmitted = t_restart.elapsed();
    assert_rings_agree(&all, &keys);
    assert_eq!(owners(&nodes[0].view(), Role::Origin, &keys), before);
    println!(
        "5 nodes joined in {joined:?}; healed {healed:?} after a kill; restart readmitted in {readmitted:?}"
    );
    assert!(healed < Duration::from_secs(10), "healing took {healed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_not_admitted() {
    let a0 = start(config("alpha", vec![]), member("a0", 1, &[Role::Origin]))
        .await
        .unwrap();
    let seed = vec![a0.gossip_addr().to_string()];
    let a1 = start(
        config("alpha", seed.clone()),
        member("a1", 1, &[Role::Origin]),
    )
    .await
    .unwrap();
    let foreign = start(
        config("beta", seed.clone()),
        member("foreign", 1, &[Role::Origin, Role::Tracker]),
    )
    .await
    .unwrap();
    // A legitimate node joins after the foreign one has been knocking on the same seed.
    let late = start(config("alpha", seed), member("late", 1, &[Role::Origin]))
        .await
        .unwrap();
    let expected: BTreeMap<String, u64> = [("a0", 1), ("a1", 1), ("late", 1)]
        .map(|(n, g)| (n.to_owned(), g))
        .into();
    let alpha = [&a0, &a1, &late];
    wait_all(
        &alpha,
        "alpha joins",
        Instant::now() + DEADLINE,
        exactly(&expected),
    )
    .await;
    // Ten more rounds: the foreign node never appears, and learns nothing.
    let foreign_id = NodeId::new("foreign").unwrap();
    for node in alpha {
        let mut rx = node.watch();
        let seen = timeout(ROUND * 10, rx.wait_for(|v| v.member(&foreign_id).is_some())).await;
        assert!(seen.is_err(), "foreign node admitted: {:?}", node.view());
    }
    let fv = foreign.view();
    assert_eq!(fv.len(), 1, "foreign node learned the cluster: {fv:?}");
    // Counted on both sides: the seed refused its Syns, it got "bad cluster" answers.
    assert!(a0.counters().snapshot().wrong_cluster_datagrams > 0);
    assert!(foreign.counters().snapshot().wrong_cluster_datagrams > 0);
    assert_eq!(fv.cluster_id().as_str(), "beta");
}

/// A deterministic garbage generator (xorshift64*); the seed is printed on failure.
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The WARN lines of the process that matter to the garbage test: chitchat's own line per
/// bad datagram (which must never reach the process's subscriber) and gossip's summary.
#[derive(Default)]
struct WarnCounter {
    chitchat_per_datagram: std::sync::atomic::AtomicU64,
    summaries: std::sync::atomic::AtomicU64,
}

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for &'static WarnCounter {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.is_event() && *meta.level() <= tracing::Level::WARN
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        if m.0 == "invalid-chitchat-payload" {
            self.chitchat_per_datagram.fetch_add(1, Ordering::SeqCst);
        } else if m.0.starts_with("dropped gossip datagrams") {
            self.summaries.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_disturb_the_cluster() {
    // Every WARN of the process, from every thread, is seen here.
    let warns: &'static WarnCounter = Box::leak(Box::default());
    tracing::subscriber::set_global_default(warns).expect("the only test that sets one");
    let n0 = start(config("test", vec![]), member("n0", 1, &[Role::Origin]))
        .await
        .unwrap();
    let target = n0.gossip_addr();
    let seed = vec![target.to_string()];
    let n1 = start(
        config("test", seed.clone()),
        member("n1", 1, &[Role::Origin]),
    )
    .await
    .unwrap();
    let n2 = start(
        config("test", seed.clone()),
        member("n2", 1, &[Role::Origin]),
    )
    .await
    .unwrap();
    let expected: BTreeMap<String, u64> = [("n0", 1), ("n1", 1), ("n2", 1)]
        .map(|(n, g)| (n.to_owned(), g))
        .into();
    wait_all(
        &[&n0, &n1, &n2],
        "join",
        Instant::now() + DEADLINE,
        exactly(&expected),
    )
    .await;

    // Real chitchat datagrams to truncate: a probe node whose only seed is our socket sends
    // us a Syn; replaying it to n0 makes n0 answer with a SynAck. The probe is killed before
    // it can join.
    let sniffer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let probe = start(
        config("test", vec![sniffer.local_addr().unwrap().to_string()]),
        member("probe", 1, &[Role::Origin]),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 65_536];
    let (len, _) = timeout(DEADLINE, sniffer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let syn = buf[..len].to_vec();
    drop(probe);
    sniffer.send_to(&syn, target).await.unwrap();
    let (len, _) = timeout(DEADLINE, sniffer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let syn_ack = buf[..len].to_vec();
    assert!(syn_ack.len() > 4);

    // Watch for any member loss while the garbage flies.
    let lost = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    for node in [&n0, &n1, &n2] {
        let mut rx = node.watch();
        let lost = lost.clone();
        watchers.push(tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if rx.borrow_and_update().len() < 3 {
                    lost.store(true, Ordering::SeqCst);
                }
            }
        }));
    }

    let seed_value = 0x5eed_0000_0000_0001u64 ^ u64::from(target.port());
    println!("garbage seed {seed_value:#x}");
    let mut g = Garbage(seed_value);
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    datagrams.push(Vec::new());
    for len in 1..8 {
        datagrams.push(g.bytes(len));
    }
    for _ in 0..400 {
        let len = (g.next() % 1500) as usize;
        datagrams.push(g.bytes(len));
    }
    for _ in 0..8 {
        // Oversized: the largest datagram UDP over IPv4 carries.
        datagrams.push(g.bytes(65_507));
    }
    for real in [&syn, &syn_ack] {
        // Every truncation of a real message.
        for cut in 0..real.len() {
            datagrams.push(real[..cut].to_vec());
        }
        // A valid header (magic, version, message type) with garbage behind it.
        for _ in 0..200 {
            let mut d = real[..4].to_vec();
            let len = (g.next() % 600) as usize;
            d.extend(g.bytes(len));
            datagrams.push(d);
        }
    }
    // A header claiming an unknown protocol version and message type.
    let mut bad_version = syn.clone();
    bad_version[2] = 0xff;
    datagrams.push(bad_version);
    let mut bad_type = syn.clone();
    bad_type[3] = 0xee;
    datagrams.push(bad_type);
    let sent = datagrams.len();
    for (i, d) in datagrams.iter().enumerate() {
        // Spread the garbage over all three nodes, most at the seed.
        let to = match i % 4 {
            1 => n1.gossip_addr(),
            2 => n2.gossip_addr(),
            _ => target,
        };
        attacker.send_to(d, to).await.unwrap();
        // Pace the sends so the receive buffers (about 200 KiB) do not overflow: the nodes
        // should decode every datagram, not have the kernel drop them.
        if i.is_multiple_of(32) || d.len() > 60_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // The cluster still works: a newcomer joins through the node that took most garbage,
    // and everyone agrees on the four members.
    let n3 = start(config("test", seed), member("n3", 1, &[Role::Origin]))
        .await
        .unwrap();
    let mut expected4 = expected.clone();
    expected4.insert("n3".into(), 1);
    let all = [&n0, &n1, &n2, &n3];
    wait_all(
        &all,
        "join after garbage",
        Instant::now() + DEADLINE,
        exactly(&expected4),
    )
    .await;
    assert_rings_agree(&all, &digests(100));
    // Long enough for failure detection and the grace period to act on any disturbance.
    let quiet_until = Instant::now() + Duration::from_secs(2);
    for node in all {
        let mut rx = node.watch();
        let shrank = timeout_at(quiet_until, rx.wait_for(|v| v.len() < 4)).await;
        assert!(shrank.is_err(), "a member was lost: {:?}", node.view());
    }
    assert!(
        !lost.load(Ordering::SeqCst),
        "a member was lost while garbage arrived"
    );
    for w in watchers {
        w.abort();
    }
    // Every garbage datagram is counted (the truncated real messages and the bad headers
    // do not decode either); a little loss in the kernel's buffers is tolerated.
    let counted = || {
        [&n0, &n1, &n2]
            .iter()
            .map(|n| n.counters().snapshot().garbage_datagrams)
            .sum::<u64>()
    };
    let until = Instant::now() + DEADLINE;
    while counted() < sent as u64 * 9 / 10 {
        assert!(
            Instant::now() < until,
            "{} of {sent} garbage datagrams counted",
            counted()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and logged once per node (at most once a minute), never once per datagram.
    let per_datagram = warns.chitchat_per_datagram.load(Ordering::SeqCst);
    let summaries = warns.summaries.load(Ordering::SeqCst);
    assert_eq!(per_datagram, 0, "chitchat's per-datagram WARN got through");
    assert!(
        (1..=3).contains(&summaries),
        "{summaries} summary lines for three nodes"
    );
    println!(
        "{sent} garbage datagrams sent, {} counted, {summaries} WARN lines; cluster undisturbed",
        counted()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_weight_and_graceful_leave_propagate() {
    let n0 = start(config("test", vec![]), member("n0", 1, &[Role::Origin]))
        .await
        .unwrap();
    let seed = vec![n0.gossip_addr().to_string()];
    let n1 = start(
        config("test", seed.clone()),
        member("n1", 1, &[Role::Origin]),
    )
    .await
    .unwrap();
    let n2 = start(config("test", seed), member("n2", 1, &[Role::Origin]))
        .await
        .unwrap();
    let expected: BTreeMap<String, u64> = [("n0", 1), ("n1", 1), ("n2", 1)]
        .map(|(n, g)| (n.to_owned(), g))
        .into();
    wait_all(
        &[&n0, &n1, &n2],
        "join",
        Instant::now() + DEADLINE,
        exactly(&expected),
    )
    .await;
    let id1 = NodeId::new("n1").unwrap();
    let origin_ring_has = |v: &ClusterView, id: &NodeId| v.ring(Role::Origin).contains(id);

    // Not ready: still a member, off the ring.
    n1.set_ready(false).await;
    assert!(!n1.self_member().ready);
    let off = |v: &ClusterView| v.len() == 3 && !origin_ring_has(v, &id1);
    wait_all(
        &[&n0, &n1, &n2],
        "not ready",
        Instant::now() + DEADLINE,
        off,
    )
    .await;
    assert_eq!(n0.view().members_of(Role::Origin).count(), 3);
    n1.set_ready(true).await;
    wait_all(
        &[&n0, &n1, &n2],
        "ready again",
        Instant::now() + DEADLINE,
        exactly(&expected),
    )
    .await;
    assert!(origin_ring_has(&n0.view(), &id1));

    // Weight 0: off the ring too.
    n1.set_weight(0).await;
    wait_all(
        &[&n0, &n2],
        "weight 0",
        Instant::now() + DEADLINE,
        |v: &ClusterView| !origin_ring_has(v, &id1),
    )
    .await;
    n1.set_weight(1).await;
    wait_all(
        &[&n0, &n2],
        "weight 1",
        Instant::now() + DEADLINE,
        |v: &ClusterView| origin_ring_has(v, &id1),
    )
    .await;

    // Graceful leave: peers take n2 off the ring before failure detection could, then drop it.
    let id2 = NodeId::new("n2").unwrap();
    let t = Instant::now();
    let n2_addr = n2.gossip_addr();
    n2.shutdown().await.unwrap();
    wait_all(&[&n0, &n1], "leave", t + DEADLINE, |v: &ClusterView| {
        !origin_ring_has(v, &id2)
    })
    .await;
    let off_ring = t.elapsed();
    wait_all(&[&n0, &n1], "gone", t + DEADLINE, |v: &ClusterView| {
        v.member(&id2).is_none()
    })
    .await;
    println!(
        "graceful leave: off the ring in {off_ring:?}, gone in {:?}",
        t.elapsed()
    );
    // The gossip port is free again after a graceful shutdown.
    std::net::UdpSocket::bind(n2_addr).expect("port released");
}

#[tokio::test]
async fn start_rejects_bad_input() {
    let ok = member("n0", 1, &[Role::Origin]);
    let mut cfg = config("test", vec![]);
    cfg.seeds = vec!["no-port".into()];
    assert!(matches!(
        start(cfg, ok.clone()).await,
        Err(MembershipError::Config(_))
    ));
    let mut no_roles = ok.clone();
    no_roles.roles = RoleSet::EMPTY;
    assert!(matches!(
        start(config("test", vec![]), no_roles).await,
        Err(MembershipError::Member(_))
    ));
    // A fixed port that is taken.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = config("test", vec![]);
    cfg.gossip_listen_addr = taken.local_addr().unwrap();
    let err = start(cfg, ok.clone()).await.unwrap_err();
    assert!(matches!(err, MembershipError::Start(_)), "{err}");
    assert!(err.to_string().contains("bind"), "{err}");
    // A certificate that does not name the node id: refused, naming both.
    let identity = ca().issue_node_cert("someone-else").unwrap();
    let auth = Arc::new(MemberCertAuth::new(&identity, &ca().cluster_ca()).unwrap());
    let err = Membership::start(config("test", vec![]), ok, auth)
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::SelfRecord(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("someone-else") && text.contains("n0"),
        "{text}"
    );
}
