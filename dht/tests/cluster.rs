//! In-process DHT clusters on loopback (port 0, temporary directories): provide and find,
//! expiry, identity persistence, liars with bad cards, store bounds and rate limits.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kraken_dht::card::{self, Card};
use kraken_dht::{Dht, DhtConfig, DhtError, DhtStats, LocalCard, PROTOCOL, Provider, provider_key};
use kraken_storage::Digest;
use kraken_transport::quic::tls::dev::DevCa;
use kraken_transport::quic::{MemberCertAuth, NodeIdentity};
use kraken_transport::swarm::PeerKind;
use libp2p::kad::{self, Quorum, Record, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, SwarmBuilder};

const LOOKUP: Duration = Duration::from_secs(3);

struct Node {
    dht: Dht,
    identity: NodeIdentity,
    card: LocalCard,
}

struct Cluster {
    _dir: tempfile::TempDir,
    ca: DevCa,
    nodes: Vec<Node>,
}

fn config(dir: &Path, name: &str) -> DhtConfig {
    DhtConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        identity_path: dir.join(format!("{name}.key")),
        provider_ttl: Duration::from_secs(60),
        republish_interval: Duration::from_secs(20),
        ..DhtConfig::default()
    }
}

async fn start_node(ca: &DevCa, config: DhtConfig, name: &str, kind: PeerKind) -> Node {
    let identity = ca.issue_node_cert(name).unwrap();
    let card = LocalCard {
        peer: identity.peer_id,
        // A made-up kraken address: the DHT only carries it.
        addr: SocketAddr::from(([127, 0, 0, 1], 40_000 + name.len() as u16)),
        kind,
    };
    let dht = Dht::start(config, card, &identity, &ca.cluster_ca())
        .await
        .unwrap();
    Node {
        dht,
        identity,
        card,
    }
}

fn seed(node: &Node) -> (String, SocketAddr) {
    (node.dht.dht_peer_id(), node.dht.listen_addr())
}

/// `n` nodes (node 0 an origin, the others agents), each bootstrapped from nodes 0 and 1;
/// `tune` adjusts node i's configuration.
async fn cluster(n: usize, tune: impl Fn(usize, &mut DhtConfig)) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(&dir.path().join("ca")).unwrap();
    let mut nodes = Vec::new();
    for i in 0..n {
        let name = format!("node-{i}");
        let mut c = config(dir.path(), &name);
        tune(i, &mut c);
        let kind = if i == 0 {
            PeerKind::Origin
        } else {
            PeerKind::Agent
        };
        nodes.push(start_node(&ca, c, &name, kind).await);
    }
    let seeds: Vec<_> = nodes.iter().take(2).map(seed).collect();
    for node in &nodes {
        node.dht.add_bootstrap(seeds.clone());
    }
    Cluster {
        _dir: dir,
        ca,
        nodes,
    }
}

/// Polls `f` until it gives `Some`, failing after `within`.
async fn eventually<T, F: Future<Output = Option<T>>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node of `c` routes to at least `peers` others.
async fn routed(c: &Cluster, peers: u64) {
    eventually(Duration::from_secs(10), "routing", || async {
        c.nodes
            .iter()
            .all(|n| n.dht.stats().routing_peers >= peers)
            .then_some(())
    })
    .await;
}

async fn find(node: &Node, digest: Digest) -> Vec<Provider> {
    find_some(node, digest, 10).await
}

/// Up to `limit` providers of `digest` (none when the lookup times out).
async fn find_some(node: &Node, digest: Digest, limit: usize) -> Vec<Provider> {
    match node.dht.find_providers(digest, limit, LOOKUP).await {
        Ok(found) => found,
        Err(DhtError::Timeout) => Vec::new(),
        Err(e) => panic!("lookup failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_is_found_with_its_kraken_identity_and_vanishes_after_stop_and_ttl() {
    let c = cluster(8, |_, c| {
        c.provider_ttl = Duration::from_secs(2);
        c.republish_interval = Duration::from_secs(1);
    })
    .await;
    let digest = Digest::sha256_of(b"layer");
    let provider = &c.nodes[5];
    provider.dht.provide(digest);
    provider.dht.provide(digest); // idempotent
    let finder = &c.nodes[7];
    let found = eventually(Duration::from_secs(10), "the provider", || async {
        let found = find(finder, digest).await;
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].peer, provider.identity.peer_id);
    assert_eq!(found[0].addr, provider.card.addr);
    assert_eq!(found[0].kind, PeerKind::Agent);
    assert_eq!(found[0].dht_peer, provider.dht.dht_peer_id());

    // The origin is found as an origin; both come back, the finder never itself.
    c.nodes[0].dht.provide(digest);
    let found = eventually(Duration::from_secs(10), "both providers", || async {
        let found = find(&c.nodes[5], digest).await;
        (found.len() == 1 && found[0].kind == PeerKind::Origin).then_some(found)
    })
    .await;
    assert_eq!(found[0].peer, c.nodes[0].identity.peer_id);

    let stats = finder.dht.stats();
    assert!(
        stats.lookups >= 1 && stats.lookup_latency_count >= 1,
        "{stats:?}"
    );
    assert!(stats.providers_found >= 1);
    assert_eq!(provider.dht.stats().keys_provided, 1);

    // Stopped: the records at the others expire within the TTL.
    provider.dht.stop_providing(digest);
    c.nodes[0].dht.stop_providing(digest);
    eventually(Duration::from_secs(5), "the provided gauge", || async {
        (provider.dht.stats().keys_provided == 0).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the records to expire", || async {
        find(finder, digest).await.is_empty().then_some(())
    })
    .await;
    for node in c.nodes {
        node.dht.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_is_persisted_and_reused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(&dir.path().join("ca")).unwrap();
    let c = config(dir.path(), "agent");
    let first = start_node(&ca, c.clone(), "agent", PeerKind::Agent).await;
    let id = first.dht.dht_peer_id();
    first.dht.shutdown().await;
    let again = Dht::start(c.clone(), first.card, &first.identity, &ca.cluster_ca())
        .await
        .unwrap();
    assert_eq!(again.dht_peer_id(), id);
    again.shutdown().await;

    // A card for another kraken peer than the identity's is refused at start.
    let mut wrong = first.card;
    wrong.peer = ca.issue_node_cert("other").unwrap().peer_id;
    assert!(matches!(
        Dht::start(c, wrong, &first.identity, &ca.cluster_ca()).await,
        Err(DhtError::WrongLocalPeer)
    ));
}

/// A libp2p node speaking the kraken Kademlia protocol without any of its checks: it
/// stores anything, publishes `card(its id)` as its card and provides `keys`.
async fn rogue(
    seeds: &[(String, SocketAddr)],
    card: impl FnOnce(libp2p::PeerId) -> Vec<u8>,
    keys: Vec<Vec<u8>>,
) -> (String, tokio::task::JoinHandle<()>) {
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let id = keypair.public().to_peer_id();
    let mut behaviour = kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), {
        let mut config = kad::Config::new(StreamProtocol::new(PROTOCOL));
        // Sends what honest nodes refuse to read (they take 16 KiB at most).
        config.set_max_packet_size(1 << 20);
        config
    });
    behaviour.set_mode(Some(kad::Mode::Server));
    for (peer, addr) in seeds {
        behaviour.add_address(&peer.parse().unwrap(), quic_addr(*addr));
    }
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm
        .listen_on(quic_addr("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            swarm.add_external_address(address);
            break;
        }
    }
    let kad = swarm.behaviour_mut();
    kad.put_record(Record::new(card::card_key(&id), card(id)), Quorum::One)
        .unwrap();
    for key in keys {
        kad.start_providing(RecordKey::new(&key)).unwrap();
    }
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (id.to_base58(), task)
}

fn quic_addr(addr: SocketAddr) -> Multiaddr {
    let SocketAddr::V4(v4) = addr else {
        panic!("loopback v4 only")
    };
    Multiaddr::empty()
        .with(Protocol::Ip4(*v4.ip()))
        .with(Protocol::Udp(v4.port()))
        .with(Protocol::QuicV1)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn found_only_honest(found: &[Provider], honest: &Node) -> bool {
    found.iter().all(|p| p.peer == honest.identity.peer_id)
}

fn sum(c: &Cluster, f: impl Fn(&DhtStats) -> u64) -> u64 {
    c.nodes.iter().map(|n| f(&n.dht.stats())).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_bad_cards_or_garbage_records_yield_nothing_and_are_blacklisted() {
    let c = cluster(6, |_, _| {}).await;
    let digest = Digest::sha256_of(b"contested");
    let honest = &c.nodes[3];
    honest.dht.provide(digest);
    let seeds: Vec<_> = c.nodes.iter().take(2).map(seed).collect();
    let blob = provider_key(&digest);

    // 1. Replays honest node 4's own (valid) card under its provider record.
    let victim = &c.nodes[4];
    let victim_auth = MemberCertAuth::new(&victim.identity, &c.ca.cluster_ca()).unwrap();
    let victim_card = card::encode(
        &Card {
            dht_peer: victim.dht.dht_peer_id().parse().unwrap(),
            kraken_peer: victim.identity.peer_id,
            addr: victim.card.addr,
            kind: PeerKind::Agent,
            issued_ms: now_ms(),
        },
        &victim_auth,
    )
    .unwrap();
    let replay = rogue(&seeds, |_| victim_card, vec![blob.clone()]).await;

    // 2. A cluster member's card with a broken signature.
    let member = c.ca.issue_node_cert("rogue-member").unwrap();
    let member_auth = MemberCertAuth::new(&member, &c.ca.cluster_ca()).unwrap();
    let bad_sig = rogue(
        &seeds,
        |id| {
            let mut bytes = card::encode(
                &Card {
                    dht_peer: id,
                    kraken_peer: member.peer_id,
                    addr: "127.0.0.1:1".parse().unwrap(),
                    kind: PeerKind::Agent,
                    issued_ms: now_ms(),
                },
                &member_auth,
            )
            .unwrap();
            *bytes.last_mut().unwrap() ^= 0x55;
            bytes
        },
        vec![blob.clone()],
    )
    .await;

    // 3. A well-signed card from another cluster's CA.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = DevCa::create(foreign_dir.path()).unwrap();
    let stranger = foreign.issue_node_cert("stranger").unwrap();
    let stranger_auth = MemberCertAuth::new(&stranger, &foreign.cluster_ca()).unwrap();
    let foreign_ca = rogue(
        &seeds,
        |id| {
            card::encode(
                &Card {
                    dht_peer: id,
                    kraken_peer: stranger.peer_id,
                    addr: "127.0.0.1:2".parse().unwrap(),
                    kind: PeerKind::Origin,
                    issued_ms: now_ms(),
                },
                &stranger_auth,
            )
            .unwrap()
        },
        vec![blob.clone()],
    )
    .await;

    // 4. Garbage: random bytes as its card, and a provider key that is no digest.
    let garbage = rogue(
        &seeds,
        |_| (0..300u32).map(|i| (i * 7919 % 251) as u8).collect(),
        vec![b"not-a-digest".to_vec(), blob.clone()],
    )
    .await;

    // 5. An oversized message: a 60 KB value, past the 16 KiB the honest nodes' Kademlia
    //    codec reads; the stream is dropped before any record exists.
    let huge = rogue(&seeds, |_| vec![7; 60_000], vec![blob.clone()]).await;

    let rogues = [&replay.0, &bad_sig.0, &foreign_ca.0, &garbage.0];
    let finder = &c.nodes[5];
    // Only the honest provider ever comes back.
    let found = eventually(Duration::from_secs(10), "the honest provider", || async {
        let found = find(finder, digest).await;
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert!(found_only_honest(&found, honest), "{found:?}");

    // Every rogue ends blacklisted by some honest node (the ones it tried to store its
    // card at), and the drops are counted.
    eventually(
        Duration::from_secs(10),
        "every rogue blacklisted",
        || async {
            let mut listed = Vec::new();
            for node in &c.nodes {
                listed.extend(node.dht.blacklisted().await);
            }
            rogues.iter().all(|r| listed.contains(r)).then_some(())
        },
    )
    .await;
    assert!(sum(&c, |s| s.liars) >= 4);
    assert!(sum(&c, |s| s.dropped_malformed) >= 4);

    // The finder still gets only the honest provider, and the cluster still works.
    assert!(found_only_honest(&find(finder, digest).await, honest));
    let other = Digest::sha256_of(b"after the attack");
    c.nodes[2].dht.provide(other);
    eventually(Duration::from_secs(10), "a fresh provider", || async {
        let found = find(&c.nodes[1], other).await;
        found
            .iter()
            .any(|p| p.peer == c.nodes[2].identity.peer_id)
            .then_some(())
    })
    .await;
    // No honest node holds more than the honest nodes' cards.
    for node in &c.nodes {
        assert!(node.dht.stats().records_held <= 6, "{:?}", node.dht.stats());
    }
    assert!(
        found_only_honest(&find(finder, digest).await, honest),
        "the oversized rogue yields nothing"
    );
    for (_, task) in [replay, bad_sig, foreign_ca, garbage, huge] {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_bounds_and_rate_limits_hold() {
    // Node 1 holds at most 3 provider keys; node 2 takes 1 store per second from a peer;
    // node 3 starts at most one lookup per second.
    let c = cluster(4, |i, c| match i {
        1 => c.max_provider_keys = 3,
        2 => c.inbound_per_sec = 1,
        3 => c.queries_per_sec = 1,
        _ => {}
    })
    .await;
    // Wait for the routing tables to fill before providing.
    routed(&c, 3).await;
    let digests: Vec<Digest> = (0..8u8).map(|i| Digest::sha256_of(&[i])).collect();
    for d in &digests {
        c.nodes[0].dht.provide(*d);
    }
    eventually(Duration::from_secs(10), "bounds to bite", || async {
        let bounded = c.nodes[1].dht.stats();
        let limited = c.nodes[2].dht.stats();
        (bounded.provider_keys_held == 3
            && bounded.refused_store_full >= 1
            && limited.dropped_rate_limited >= 1)
            .then_some(())
    })
    .await;
    assert!(c.nodes[1].dht.stats().provider_keys_held <= 3);

    // Lookups over the rate fail at once.
    let slow = &c.nodes[3].dht;
    let first = slow.find_providers(digests[0], 1, LOOKUP).await;
    assert!(!matches!(first, Err(DhtError::RateLimited)), "{first:?}");
    let t = Instant::now();
    let second = slow.find_providers(digests[1], 1, LOOKUP).await;
    assert!(matches!(second, Err(DhtError::RateLimited)), "{second:?}");
    assert!(t.elapsed() < Duration::from_millis(500));
    let stats = slow.stats();
    assert_eq!(stats.lookups, 2);
    assert!(stats.lookup_failures >= 1);

    // Provides over the rate wait in a bounded queue; beyond it they are dropped (and a
    // later `provide` of the same digest tries again).
    for i in 0..5_000u32 {
        slow.provide(Digest::sha256_of(&i.to_be_bytes()));
    }
    eventually(Duration::from_secs(5), "the queue to overflow", || async {
        let stats = slow.stats();
        (stats.provides_dropped >= 800).then_some(stats)
    })
    .await;
    assert!(slow.stats().keys_provided <= 4_200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unspecified_listen_address_reports_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(&dir.path().join("ca")).unwrap();
    let mut c = config(dir.path(), "any");
    c.listen = "0.0.0.0:0".parse().unwrap();
    let node = start_node(&ca, c, "any", PeerKind::Agent).await;
    let addr = node.dht.listen_addr();
    assert!(addr.ip().is_unspecified() && addr.port() != 0, "{addr}");
    node.dht.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_provided_before_bootstrap_is_announced_and_a_reported_liar_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(&dir.path().join("ca")).unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let name = format!("node-{i}");
        nodes.push(start_node(&ca, config(dir.path(), &name), &name, PeerKind::Agent).await);
    }
    // Provided while alone: stored locally only, not yet announced.
    let digest = Digest::sha256_of(b"early");
    nodes[2].dht.provide(digest);
    eventually(Duration::from_secs(5), "the provide to start", || async {
        (nodes[2].dht.stats().keys_provided == 1).then_some(())
    })
    .await;
    let seeds = vec![seed(&nodes[0])];
    for node in &nodes {
        node.dht.add_bootstrap(seeds.clone());
    }
    // Announced (stored at the others) well before the 20 s republish interval of this
    // configuration, and found.
    eventually(Duration::from_secs(8), "the announcement", || async {
        // Node 0 (the seed) holds it whatever order the others joined in.
        (nodes[0].dht.stats().provider_keys_held == 1).then_some(())
    })
    .await;
    let finder = &nodes[1];
    eventually(Duration::from_secs(8), "the early provider", || async {
        let found = find(finder, digest).await;
        found
            .iter()
            .any(|p| p.peer == nodes[2].identity.peer_id)
            .then_some(())
    })
    .await;

    // The node's handshake found the card's address lying: reported, it is gone.
    let liar = nodes[2].dht.dht_peer_id();
    finder.dht.report_liar(&liar);
    finder.dht.report_liar("not a peer id");
    eventually(
        Duration::from_secs(5),
        "the liar to be blacklisted",
        || async { (finder.dht.blacklisted().await == vec![liar.clone()]).then_some(()) },
    )
    .await;
    assert!(find(finder, digest).await.is_empty());
    assert_eq!(finder.dht.stats().liars, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_takes_newcomers_and_finders_get_different_samples() {
    use std::collections::HashSet;
    // 15 nodes (under k = 20: every node stores every provider record of the key), each
    // keeping at most 4 providers per key; 12 providers in two waves of 6; nodes 13 and
    // 14 look up. libp2p-kad's stock store would keep 4 of the first wave only and answer
    // every lookup with them.
    const CAP: usize = 4;
    let c = cluster(15, |_, c| c.max_providers_per_key = CAP).await;
    routed(&c, 4).await;
    let digest = Digest::sha256_of(b"hot layer");
    let peer_of = |i: usize| c.nodes[i].identity.peer_id;
    let finders = [&c.nodes[13], &c.nodes[14]];

    for i in 1..=6 {
        c.nodes[i].dht.provide(digest);
    }
    let first_wave: HashSet<_> = (1..=6).map(peer_of).collect();
    // The stores fill (4 of the 6 each) as the first wave is stored everywhere; wait
    // until lookups have seen 5 of them.
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < 5 {
        assert!(Instant::now() < deadline, "first wave: only {seen:?}");
        seen.extend(
            find_some(finders[0], digest, 12)
                .await
                .into_iter()
                .map(|p| p.peer),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.is_subset(&first_wave));

    for i in 7..=12 {
        c.nodes[i].dht.provide(digest);
    }
    let second_wave: HashSet<_> = (7..=12).map(peer_of).collect();
    // Newcomers replace random held providers, so both finders find some; lookups of 3
    // hand out more providers than any one store holds, and the two finders' answers
    // differ.
    let mut found_by = [HashSet::new(), HashSet::new()];
    let mut differed = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = tokio::join!(
            find_some(finders[0], digest, 3),
            find_some(finders[1], digest, 3)
        );
        let ids = |found: Vec<Provider>| found.into_iter().map(|p| p.peer).collect::<HashSet<_>>();
        let (a, b) = (ids(a), ids(b));
        differed |= !a.is_empty() && !b.is_empty() && a != b;
        found_by[0].extend(a);
        found_by[1].extend(b);
        let newcomers = found_by.iter().all(|f| !f.is_disjoint(&second_wave));
        let handed_out = found_by[0].union(&found_by[1]).count();
        if newcomers && handed_out > CAP && differed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "newcomers {newcomers}, {handed_out} handed out, differed {differed}"
        );
        // Polling, within the finders' 50 lookups a second.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all: HashSet<_> = first_wave.union(&second_wave).copied().collect();
    assert!(found_by[0].union(&found_by[1]).all(|p| all.contains(p)));
}
