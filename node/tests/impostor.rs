//! An impostor on the gossip network of a real cluster (origins, a tracker, agents): a raw
//! chitchat process (no kraken code) gossips a new "origin" that claims a heavy weight and
//! an address that leads nowhere, and another that claims to be a real origin at a newer
//! generation, signed with a valid certificate of the cluster issued for another name.
//! Neither enters any node's view, the views agents read over QUIC, or a ring; pushes and
//! pulls keep working; the refusals show in `/metrics`.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chitchat::transport::UdpTransport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use kraken_membership::auth::signed_record;
use kraken_membership::{ClusterId, ClusterView, Member, MemberAuth, NodeId, Role, RoleSet};
use kraken_node::config::NodeRole;
use kraken_node::proto::{Request, Response};
use kraken_transport::quic::MemberCertAuth;
use support::{TestCluster, blob_file};

/// The record keys of `m`, well formed, plus `signed` (certificate and signature) if any.
fn keys(m: &Member, signed: Option<(String, String)>) -> Vec<(String, String)> {
    let mut kvs = Vec::new();
    if let Some((cert, sig)) = signed {
        kvs.push(("kraken.cert".to_owned(), cert));
        kvs.push(("kraken.sig".to_owned(), sig));
    }
    kvs.extend([
        ("kraken.roles".to_owned(), m.roles.to_string()),
        ("kraken.quic".to_owned(), m.quic_addr.to_string()),
        ("kraken.http".to_owned(), String::new()),
        ("kraken.version".to_owned(), m.version.clone()),
        ("kraken.ready".to_owned(), "true".to_owned()),
        ("kraken.weight".to_owned(), m.weight.to_string()),
    ]);
    kvs
}

async fn impostor(seed: SocketAddr, id: ChitchatId, kvs: Vec<(String, String)>) -> ChitchatHandle {
    let listen = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = ChitchatConfig {
        chitchat_id: id,
        cluster_id: "test".into(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: listen,
        seed_nodes: vec![seed.to_string()],
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V1,
    };
    spawn_chitchat(config, kvs, &UdpTransport).await.unwrap()
}

fn is_impostor(v: &ClusterView, real_origin_2: &Member) -> bool {
    v.member(&NodeId::new("origin-9").unwrap()).is_some()
        || v.member(&real_origin_2.id)
            .is_some_and(|m| m.quic_addr != real_origin_2.quic_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_on_the_gossip_network_never_joins_and_the_cluster_keeps_serving() {
    let mut c = TestCluster::new();
    for i in 1..=3 {
        c.add(&format!("origin-{i}"), NodeRole::Origin).await;
    }
    c.add("tracker-1", NodeRole::Tracker).await;
    for i in 1..=2 {
        c.add(&format!("agent-{i}"), NodeRole::Agent).await;
    }
    c.converge(3).await;
    let origin_2 = c
        .client()
        .view()
        .member(&NodeId::new("origin-2").unwrap())
        .unwrap()
        .clone();

    // Watch every node's view, agents included, from now on.
    let seen = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    for node in c.nodes.iter().flatten() {
        let cluster = node.cluster().clone();
        let (seen, origin_2) = (seen.clone(), origin_2.clone());
        watchers.push(tokio::spawn(async move {
            loop {
                if is_impostor(&cluster.view(), &origin_2) {
                    seen.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    let seed = c.node(0).gossip_addr().unwrap();
    // A new "origin", unsigned, weight 1000, at an address that leads nowhere.
    let mut ghost = Member::new(
        NodeId::new("origin-9").unwrap(),
        RoleSet::of(&[Role::Origin, Role::Tracker, Role::BuildIndex]),
        "127.0.0.1:9".parse().unwrap(),
    );
    ghost.weight = 1000;
    let ghost_addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let _ghost = impostor(
        seed,
        ChitchatId::new("origin-9", 1, ghost_addr),
        keys(&ghost, None),
    )
    .await;
    // "origin-2" at a newer generation elsewhere, signed with a valid certificate of this
    // cluster issued to "evil".
    let evil_identity = c.ca.issue_node_cert("evil").unwrap();
    let evil = MemberCertAuth::new(&evil_identity, &c.ca.cluster_ca()).unwrap();
    let mut claim = origin_2.clone();
    claim.generation += 1_000;
    claim.quic_addr = "127.0.0.1:9".parse().unwrap();
    claim.http_addr = None;
    claim.ready = true;
    let claim_gossip: SocketAddr = "127.0.0.1:10".parse().unwrap();
    let bytes = signed_record(&ClusterId::new("test").unwrap(), claim_gossip, &claim);
    let signed = (
        BASE64.encode(&evil.certificate_chain()[0]),
        BASE64.encode(evil.sign(&bytes).unwrap()),
    );
    let _claimer = impostor(
        seed,
        ChitchatId::new("origin-2", claim.generation, claim_gossip),
        keys(&claim, Some(signed)),
    )
    .await;

    // Every origin and the tracker refuse both, and say so in /metrics.
    let ring_nodes: Vec<usize> = (0..4).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for &i in &ring_nodes {
        loop {
            let text = c.node(i).metrics().render();
            let refused = |reason: &str| {
                let line = format!("kraken_gossip_rejected_members_total{{reason=\"{reason}\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(&line))
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if refused("unsigned") > 0 && (refused("name-mismatch") > 0 || i == 1) {
                break;
            }
            assert!(Instant::now() < deadline, "node {i} metrics:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The cluster keeps serving: blobs pushed now land on the real owners and reach every
    // agent byte for byte.
    const LEN: u64 = 4 << 20;
    for seed in 0..3u64 {
        let (path, digest) = blob_file(c.dir.path(), &format!("blob-{seed}"), LEN, seed);
        let t = Instant::now();
        c.upload(&path, &digest, LEN).await;
        c.wait_replicated(&digest, 3).await;
        let pushed = t.elapsed();
        for i in c.agents() {
            let report = c.pull(i, &digest).await.unwrap();
            assert_eq!(report.length, LEN);
            assert_eq!(c.stored_digest(i, &digest), digest);
        }
        eprintln!("blob {seed}: pushed and replicated in {pushed:?}, pulled by every agent");
    }

    // The views agents (and krakenctl) read over QUIC carry only the real members.
    for &i in &ring_nodes {
        let answer = c
            .client()
            .call_within(
                c.node(i).quic_addr(),
                &Request::ClusterView,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let Response::View(bytes) = answer else {
            panic!("{answer:?}")
        };
        let view = ClusterView::decode(&bytes).unwrap();
        let ids: Vec<String> = view.members().keys().map(ToString::to_string).collect();
        assert_eq!(ids, ["origin-1", "origin-2", "origin-3", "tracker-1"]);
        assert_eq!(view.member(&origin_2.id), Some(&origin_2));
    }
    for w in watchers {
        w.abort();
    }
    assert!(!seen.load(Ordering::SeqCst), "an impostor entered a view");
}
