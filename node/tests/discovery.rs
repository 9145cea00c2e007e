//! Trackerless discovery end to end: real origins and agents in one process over real QUIC,
//! each running the Kademlia DHT (`kraken_dht`). Tracker mode keeps working with every
//! tracker killed (the DHT stands in, the origins resolve metainfo); a `dht`-mode cluster
//! runs with no tracker at all; a provider record whose address answers as another peer
//! is reported and the download completes anyway; agents killed and restarted during a
//! DHT-only distribution all finish.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kraken_dht::{Dht, DhtConfig, LocalCard};
use kraken_node::config::{NodeConfig, NodeRole};
use kraken_node::discovery::Mode;
use kraken_node::proto::{PullReport, Request, Response};
use kraken_storage::Digest;
use kraken_storage::PieceLengthTable;
use kraken_storage::cas::CasConfig;
use kraken_transport::swarm::PeerKind;
use support::{TestCluster, blob_file};

/// Small pieces: an 8 MiB blob is 128 of them, enough for agents to trade.
const PIECE: u32 = 64 * 1024;
const LEN: u64 = 8 << 20;

/// A node config of `mode` with small pieces and quick DHT announces.
fn config(c: &TestCluster, name: &str, role: NodeRole, mode: Mode) -> NodeConfig {
    let mut config = c.config(name, role);
    config.store = Some(CasConfig {
        piece_lengths: PieceLengthTable::uniform(PIECE),
        ..CasConfig::at(config.node.data_dir.join("cas"))
    });
    config.discovery.mode = mode;
    config.discovery.dht_interval_ms = 300;
    config.discovery.tracker_retry_secs = 2;
    // Origins send as a loaded origin does, slower than loopback: otherwise the agents take
    // the whole blob from them before the first DHT lookup could name another agent.
    config.origin.egress_bytes_per_sec = ORIGIN_EGRESS;
    config
}

/// Each origin's upload rate: 3 origins send 12 MiB/s together.
const ORIGIN_EGRESS: u64 = 4 << 20;

async fn start(c: &mut TestCluster, name: &str, role: NodeRole, mode: Mode) -> usize {
    let config = config(c, name, role, mode);
    c.start(config).await
}

/// Waits until every live node sees `origins` origins (no tracker needed).
async fn see_origins(c: &TestCluster, origins: usize) {
    poll("every node to see the origins", 30, || {
        c.nodes.iter().flatten().all(|n| {
            n.cluster()
                .view()
                .ring(kraken_membership::Role::Origin)
                .len()
                == origins
        })
    })
    .await;
}

/// Polls `ready` every 50 ms until it holds; fails after `secs`.
async fn poll(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pulls on every agent of `agents` at once; every pull must succeed with the right bytes.
async fn pull_all(c: &TestCluster, agents: &[usize], digest: &Digest) -> Vec<PullReport> {
    let pulls = agents.iter().map(|&a| c.pull(a, digest));
    let reports: Vec<PullReport> = futures::future::join_all(pulls)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("agent {} failed: {e}", agents[i])))
        .collect();
    for &a in agents {
        assert_eq!(c.stored_digest(a, digest), *digest, "agent {a}'s copy");
    }
    reports
}

/// Bytes the agents' pulls got from origins and from agents.
fn sources(reports: &[PullReport]) -> (u64, u64) {
    let origins = reports.iter().map(|r| r.bytes_from_origins).sum();
    let agents = reports.iter().map(|r| r.bytes_from_agents).sum();
    (origins, agents)
}

/// Pushes a blob to its owning origin and waits until every origin holds it.
async fn push(c: &TestCluster, origins: usize, seed: u64) -> Digest {
    let (path, digest) = blob_file(c.dir.path(), &format!("blob-{seed}"), LEN, seed);
    c.upload(&path, &digest, LEN).await;
    c.wait_replicated(&digest, origins).await;
    digest
}

/// 3 origins + 8 agents in tracker mode, every tracker killed before the pull: each agent
/// falls back to the DHT (announces) and to the origins (metainfo), all complete, most
/// bytes come from agents, and the origins send at most twice the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_tracker_dead_the_dht_carries_the_swarm() {
    let mut c = TestCluster::new();
    for i in 1..=3 {
        start(
            &mut c,
            &format!("origin-{i}"),
            NodeRole::Origin,
            Mode::Tracker,
        )
        .await;
    }
    let tracker = start(&mut c, "tracker-1", NodeRole::Tracker, Mode::Tracker).await;
    for i in 1..=8 {
        start(
            &mut c,
            &format!("agent-{i}"),
            NodeRole::Agent,
            Mode::Tracker,
        )
        .await;
    }
    c.converge(3).await;
    let digest = push(&c, 3, 1).await;
    c.kill(tracker);

    let agents = c.agents();
    let reports = pull_all(&c, &agents, &digest).await;
    let (from_origins, from_agents) = sources(&reports);
    println!("trackers dead: {from_agents} bytes from agents, {from_origins} from origins");
    assert!(
        from_agents > from_origins,
        "most bytes from agents: {from_agents} from agents, {from_origins} from origins"
    );
    assert!(
        from_origins <= 2 * LEN,
        "origin egress {from_origins} is over twice the blob ({LEN})"
    );
    let fallbacks: u64 = agents
        .iter()
        .map(|&a| c.node(a).metrics().dht().fallbacks())
        .sum();
    assert!(fallbacks >= 1, "the agents fell back to the DHT");
    assert!(
        agents.iter().all(|&a| agent(&c, a).tracker().fallen_back()),
        "no tracker answers: every agent is still fallen back"
    );
}

fn agent(c: &TestCluster, i: usize) -> &kraken_node::agent::Agent {
    c.node(i).roles().agent.as_ref().unwrap()
}

/// A `dht`-mode cluster with no tracker at all: a push through the proxy's registry API
/// lands on the origins, and agents pull it through the DHT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dht_cluster_without_trackers_pushes_and_pulls() {
    let mut c = TestCluster::new();
    for i in 1..=2 {
        start(&mut c, &format!("origin-{i}"), NodeRole::Origin, Mode::Dht).await;
    }
    let proxy = c.config("proxy-1", NodeRole::Proxy);
    let proxy = c.start(proxy).await;
    for i in 1..=4 {
        start(&mut c, &format!("agent-{i}"), NodeRole::Agent, Mode::Dht).await;
    }
    see_origins(&c, 2).await;

    let (path, digest) = blob_file(c.dir.path(), "pushed", LEN, 2);
    let body = std::fs::read(path).unwrap();
    let registry = c.node(proxy).registry_addr().unwrap();
    let url = format!("http://{registry}/v2/library/app/blobs/uploads/?digest={digest}");
    let response = reqwest::Client::new()
        .post(url)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);

    let agents = c.agents();
    let reports = pull_all(&c, &agents, &digest).await;
    assert!(reports.iter().all(|r| r.length == LEN));
    // Every agent provides what it holds: a lookup from any node finds them.
    let found = dht_providers(&c, agents[0], &digest).await;
    assert!(!found.is_empty(), "the agents provide the blob");
    // The DHT's state is in the agent's metrics.
    let http = c.node(agents[0]).http_addr().unwrap();
    let metrics = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "kraken_dht_keys_provided 1",
        "kraken_dht_lookups_total ",
        "kraken_dht_lookup_duration_seconds_count ",
        "kraken_discovery_fallbacks_total 0",
        "kraken_dht_dropped_messages_total{reason=\"malformed\"} 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
}

/// What node `i`'s DHT finds for `digest` (`Request::DhtProviders`), polled until the
/// lookup finds someone (records spread as agents publish).
async fn dht_providers(c: &TestCluster, i: usize, digest: &Digest) -> Vec<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = c
            .client()
            .call(
                c.node(i).quic_addr(),
                &Request::DhtProviders { digest: *digest },
            )
            .await
            .unwrap();
        let Response::DhtProviders(found) = answer else {
            panic!("unexpected answer {answer:?}");
        };
        if !found.is_empty() || Instant::now() > deadline {
            return found.into_iter().map(|p| p.peer.addr).collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A DHT node with a genuine cluster certificate (of a node named `liar` that runs no
/// kraken endpoint) provides the blob under a card whose address is another live agent's:
/// the agents dial it, the handshake shows another peer, the record's owner is reported,
/// and the downloads complete from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_record_with_a_wrong_address_is_reported_and_the_pull_completes() {
    let mut c = TestCluster::new();
    start(&mut c, "origin-1", NodeRole::Origin, Mode::Dht).await;
    for i in 1..=3 {
        start(&mut c, &format!("agent-{i}"), NodeRole::Agent, Mode::Dht).await;
    }
    see_origins(&c, 1).await;
    let digest = push(&c, 1, 3).await;
    let agents = c.agents();
    let victim = c.node(agents[2]).quic_addr();

    // The liar joins the DHT through the origin, as any node does.
    let identity = c.ca.issue_node_cert("liar").unwrap();
    let card = LocalCard {
        peer: identity.peer_id,
        addr: victim,
        kind: PeerKind::Agent,
    };
    let dht_config = DhtConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        identity_path: c.dir.path().join("liar.key"),
        ..DhtConfig::default()
    };
    let liar = Dht::start(dht_config, card, &identity, &c.ca.cluster_ca())
        .await
        .unwrap();
    let origin = c.origins()[0];
    let Response::DhtContact {
        dht_peer: Some(peer),
        addr: Some(addr),
    } = c
        .client()
        .call(c.node(origin).quic_addr(), &Request::DhtContact)
        .await
        .unwrap()
    else {
        panic!("the origin names no DHT contact");
    };
    liar.add_bootstrap(vec![(peer, addr)]);
    liar.provide(digest);
    // The record is out there before anyone looks.
    let liar_addr_seen = dht_providers(&c, agents[0], &digest).await;
    assert!(liar_addr_seen.contains(&victim), "{liar_addr_seen:?}");

    pull_all(&c, &agents[..2], &digest).await;
    let reported: u64 = agents
        .iter()
        .map(|&a| c.node(a).metrics().dht().liars())
        .sum();
    assert!(reported >= 1, "the lying record's owner was reported");
    let blacklisted = agents
        .iter()
        .any(|&a| c.node(a).roles().discovery.as_ref().unwrap().gauges().liars >= 1);
    assert!(blacklisted, "the DHT blacklisted it");
    liar.shutdown().await;
}

/// A DHT-only distribution with agents killed and restarted while it runs: the survivors
/// and the restarted agents all finish with the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_killed_and_restarted_during_a_dht_distribution_all_finish() {
    let mut c = TestCluster::new();
    for i in 1..=2 {
        start(&mut c, &format!("origin-{i}"), NodeRole::Origin, Mode::Dht).await;
    }
    for i in 1..=6 {
        start(&mut c, &format!("agent-{i}"), NodeRole::Agent, Mode::Dht).await;
    }
    see_origins(&c, 2).await;
    let digest = push(&c, 2, 4).await;
    let agents = c.agents();

    // Every agent pulls; two are killed once the distribution is under way.
    let pulls: Vec<_> = agents
        .iter()
        .map(|&a| {
            let addr = c.node(a).quic_addr();
            let client = c.client().clone();
            tokio::spawn(async move {
                let request = Request::Pull {
                    namespace: kraken_node::proto::DEFAULT_NAMESPACE.into(),
                    digest,
                };
                client
                    .call_within(addr, &request, Duration::from_secs(120))
                    .await
            })
        })
        .collect();
    let doomed = [agents[0], agents[1]];
    poll("the distribution to be under way", 30, || {
        doomed.iter().any(|&a| {
            agent(&c, a)
                .exchange()
                .watch(&digest)
                .is_some_and(|w| w.have().count_ones() > 0)
        })
    })
    .await;
    // They come back as new hosts with empty disks (a killed in-process node's store stays
    // open until its last task ends).
    let configs: Vec<NodeConfig> = doomed
        .iter()
        .map(|&a| {
            let name = format!("{}-again", c.node(a).name());
            config(&c, &name, NodeRole::Agent, Mode::Dht)
        })
        .collect();
    for &a in &doomed {
        c.kill(a);
    }
    let mut restarted = Vec::new();
    for config in configs {
        restarted.push(c.start(config).await);
    }
    // The survivors finish.
    for (i, pull) in pulls.into_iter().enumerate() {
        let answer = pull.await.unwrap();
        if doomed.contains(&agents[i]) {
            continue;
        }
        assert!(
            matches!(answer, Ok(Response::Pull(_))),
            "agent {} failed: {answer:?}",
            agents[i]
        );
    }
    // The restarted agents pull again and finish too.
    pull_all(&c, &restarted, &digest).await;
    for &a in agents.iter().filter(|a| !doomed.contains(a)) {
        assert_eq!(c.stored_digest(a, &digest), digest);
    }
}

/// `both` mode: announces go to the tracker and the DHT at once and the handouts merge;
/// pulls complete and the agents provide what they hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_mode_pulls_through_merged_handouts() {
    let mut c = TestCluster::new();
    start(&mut c, "origin-1", NodeRole::Origin, Mode::Both).await;
    start(&mut c, "tracker-1", NodeRole::Tracker, Mode::Both).await;
    for i in 1..=3 {
        start(&mut c, &format!("agent-{i}"), NodeRole::Agent, Mode::Both).await;
    }
    c.converge(1).await;
    let digest = push(&c, 1, 5).await;
    let agents = c.agents();
    pull_all(&c, &agents, &digest).await;
    let found = dht_providers(&c, c.origins()[0], &digest).await;
    assert!(
        !found.is_empty(),
        "the agents provide the blob in both mode"
    );
    assert!(
        agents
            .iter()
            .all(|&a| !agent(&c, a).tracker().fallen_back()),
        "both mode never falls back"
    );
}
