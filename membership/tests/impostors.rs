//! Impostors on the gossip network, on loopback with real chitchat: a raw chitchat instance
//! without a certificate, one with a certificate of another CA, replays of a real member's
//! records (an old generation, and its current record under a new generation), and members
//! claiming a real member's id (with their own cluster certificate; with the real record's
//! certificate and signature but other addresses, rewriting the real member's own gossip
//! state). None enters any view or ring, the real members stay, and each refusal is counted
//! by reason on every node.
#![cfg(feature = "gossip")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chitchat::transport::UdpTransport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use kraken_membership::auth::signed_record;
use kraken_membership::{
    ClusterId, ClusterView, Member, MemberAuth, Membership, MembershipConfig, NodeId, RejectReason,
    Role, RoleSet,
};
use kraken_transport::quic::tls::MemberCertAuth;
use kraken_transport::quic::tls::dev::DevCa;
use support::auth_for;
use tokio::time::{Instant, sleep, timeout_at};

const ROUND: Duration = Duration::from_millis(100);
const DEADLINE: Duration = Duration::from_secs(20);
const CLUSTER: &str = "test";

fn config(seeds: Vec<String>) -> MembershipConfig {
    MembershipConfig {
        cluster_id: ClusterId::new(CLUSTER).unwrap(),
        gossip_listen_addr: "127.0.0.1:0".parse().unwrap(),
        seeds,
        gossip_interval: ROUND,
        initial_heartbeat_interval: ROUND * 2,
        max_heartbeat_interval: Duration::from_secs(2),
        dead_node_grace_period: Duration::from_millis(500),
        forget_dead_node_after: Duration::from_secs(30),
        ..MembershipConfig::default()
    }
}

fn member(name: &str, generation: u64, quic_port: u16) -> Member {
    let mut m = Member::new(
        NodeId::new(name).unwrap(),
        RoleSet::of(&[Role::Origin, Role::Tracker]),
        SocketAddr::from(([127, 0, 0, 1], quic_port)),
    );
    m.generation = generation;
    m
}

/// A real ring node and the identity it signs with.
struct Real {
    node: Membership,
    auth: Arc<MemberCertAuth>,
}

impl Real {
    fn id(&self) -> NodeId {
        self.node.self_member().id
    }
}

async fn real(m: Member, seeds: Vec<String>, auth: Arc<MemberCertAuth>) -> Real {
    let node = Membership::start(config(seeds), m, auth.clone())
        .await
        .unwrap();
    Real { node, auth }
}

/// Three real nodes that see each other.
async fn cluster() -> Vec<Real> {
    let n0 = real(member("n0", 1, 41_000), vec![], auth_for("n0")).await;
    let seed = vec![n0.node.gossip_addr().to_string()];
    let n1 = real(member("n1", 5, 41_001), seed.clone(), auth_for("n1")).await;
    let n2 = real(member("n2", 1, 41_002), seed, auth_for("n2")).await;
    let nodes = vec![n0, n1, n2];
    wait_views(&nodes, "join", |v| {
        v.len() == 3 && v.suspected().is_empty() && v.members().values().all(|m| m.ready)
    })
    .await;
    nodes
}

async fn wait_views(nodes: &[Real], what: &str, pred: impl Fn(&ClusterView) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    for n in nodes {
        let mut rx = n.node.watch();
        if timeout_at(deadline, rx.wait_for(|v| pred(v)))
            .await
            .is_err()
        {
            panic!("{what}: timed out; {:?}", n.node.view());
        }
    }
}

/// The key-values a node publishes for `m` at `gossip_addr`, signed by `signer`.
fn published(
    m: &Member,
    gossip_addr: SocketAddr,
    signer: &dyn MemberAuth,
) -> Vec<(String, String)> {
    let bytes = signed_record(&ClusterId::new(CLUSTER).unwrap(), gossip_addr, m);
    let signature = signer.sign(&bytes).unwrap();
    let chain: Vec<String> = signer
        .certificate_chain()
        .iter()
        .map(|c| BASE64.encode(c))
        .collect();
    let mut kvs = vec![
        ("kraken.cert".to_owned(), chain.join(",")),
        ("kraken.sig".to_owned(), BASE64.encode(signature)),
    ];
    kvs.extend(unsigned(m));
    kvs
}

/// The record keys alone, well formed.
fn unsigned(m: &Member) -> Vec<(String, String)> {
    vec![
        ("kraken.roles".into(), m.roles.to_string()),
        ("kraken.quic".into(), m.quic_addr.to_string()),
        (
            "kraken.http".into(),
            m.http_addr.map(|a| a.to_string()).unwrap_or_default(),
        ),
        ("kraken.version".into(), m.version.clone()),
        ("kraken.ready".into(), m.ready.to_string()),
        ("kraken.weight".into(), m.weight.to_string()),
    ]
}

/// A raw chitchat instance (no kraken code) gossiping `kvs` as `id` to `seed`.
async fn impostor(seed: SocketAddr, id: ChitchatId, kvs: Vec<(String, String)>) -> ChitchatHandle {
    let listen = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = ChitchatConfig {
        chitchat_id: id,
        cluster_id: CLUSTER.into(),
        gossip_interval: ROUND,
        listen_addr: listen,
        seed_nodes: vec![seed.to_string()],
        failure_detector_config: FailureDetectorConfig {
            initial_interval: ROUND * 2,
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V1,
    };
    spawn_chitchat(config, kvs, &UdpTransport).await.unwrap()
}

/// Watches every node's view for `forbidden` until dropped.
struct Sentinel {
    seen: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Sentinel {
    fn new(
        nodes: &[Real],
        forbidden: impl Fn(&ClusterView) -> bool + Send + Sync + Clone + 'static,
    ) -> Self {
        let seen = Arc::new(AtomicBool::new(false));
        let tasks = nodes
            .iter()
            .map(|n| {
                let mut rx = n.node.watch();
                let (seen, forbidden) = (seen.clone(), forbidden.clone());
                tokio::spawn(async move {
                    loop {
                        if forbidden(&rx.borrow_and_update()) {
                            seen.store(true, Ordering::SeqCst);
                        }
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Sentinel { seen, tasks }
    }

    fn check(self, nodes: &[Real]) {
        for t in &self.tasks {
            t.abort();
        }
        assert!(
            !self.seen.load(Ordering::SeqCst),
            "an impostor entered a view: {:#?}",
            nodes.iter().map(|n| n.node.view()).collect::<Vec<_>>()
        );
    }
}

/// Waits until every node in `nodes` counted a refusal for `reason`, then ten more rounds
/// (time for a wrongly admitted record to show in the views).
async fn wait_refused(nodes: &[&Real], reason: RejectReason) {
    let deadline = Instant::now() + DEADLINE;
    for n in nodes {
        while n.node.counters().snapshot().rejected(reason) == 0 {
            assert!(
                Instant::now() < deadline,
                "{} never refused a record as {reason}: {:?}",
                n.id(),
                n.node.counters().snapshot()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
    sleep(ROUND * 10).await;
}

/// The real members are all there, as they published themselves, and own the rings.
fn assert_intact(nodes: &[Real]) {
    for n in nodes {
        let view = n.node.view();
        for other in nodes {
            let expected = other.node.self_member();
            assert_eq!(
                view.member(&expected.id),
                Some(&expected),
                "{} sees {} altered",
                n.id(),
                expected.id
            );
        }
        assert_eq!(view.len(), nodes.len(), "{:?}", view);
        assert_eq!(view.ring(Role::Origin).len(), nodes.len());
    }
}

fn all(nodes: &[Real]) -> Vec<&Real> {
    nodes.iter().collect()
}

fn has(v: &ClusterView, id: &str) -> bool {
    v.member(&NodeId::new(id).unwrap()).is_some()
}

fn free_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_without_a_certificate_never_enters_a_view() {
    let nodes = cluster().await;
    let sentinel = Sentinel::new(&nodes, |v| has(v, "evil"));
    let mut evil = member("evil", 1, 9);
    evil.weight = 1000;
    let addr = free_addr();
    let _impostor = impostor(
        nodes[0].node.gossip_addr(),
        ChitchatId::new("evil", 1, addr),
        unsigned(&evil),
    )
    .await;
    wait_refused(&all(&nodes), RejectReason::Unsigned).await;
    sentinel.check(&nodes);
    assert_intact(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_with_a_certificate_of_another_ca_never_enters_a_view() {
    let nodes = cluster().await;
    let n1 = nodes[1].node.self_member();
    let sentinel = {
        let n1 = n1.clone();
        Sentinel::new(&nodes, move |v| {
            has(v, "evil") || v.member(&n1.id).is_some_and(|m| *m != n1)
        })
    };
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = DevCa::create(foreign_dir.path()).unwrap();
    let mut handles = Vec::new();
    // A stranger, and a stranger claiming n1 (a newer generation, its own addresses), both
    // correctly signed with certificates of another CA.
    for (name, generation) in [("evil", 1), ("n1", 6)] {
        let identity = foreign.issue_node_cert(name).unwrap();
        let signer = MemberCertAuth::new(&identity, &foreign.cluster_ca()).unwrap();
        let addr = free_addr();
        let m = member(name, generation, 9);
        handles.push(
            impostor(
                nodes[0].node.gossip_addr(),
                ChitchatId::new(name, generation, addr),
                published(&m, addr, &signer),
            )
            .await,
        );
    }
    wait_refused(&all(&nodes), RejectReason::UntrustedCertificate).await;
    let refused = nodes[0].node.counters().snapshot();
    sentinel.check(&nodes);
    assert_intact(&nodes);
    assert!(
        refused.rejected(RejectReason::UntrustedCertificate) >= 2,
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_of_a_real_members_records_never_enter_a_view() {
    let mut nodes = cluster().await;
    let n1 = nodes[1].node.self_member();
    let n1_gossip = nodes[1].node.gossip_addr();
    let n1_auth = nodes[1].auth.clone();
    let seed = nodes[0].node.gossip_addr();

    // n1's current record, copied under a newer generation: the signature covers the
    // generation, so it does not verify.
    let sentinel = {
        let n1 = n1.clone();
        Sentinel::new(&nodes, move |v| {
            v.member(&n1.id).is_some_and(|m| m.generation != 5)
        })
    };
    let current = published(&n1, n1_gossip, &*n1_auth);
    let _newer = impostor(seed, ChitchatId::new("n1", 9, free_addr()), current).await;
    wait_refused(&[&nodes[0], &nodes[2]], RejectReason::BadSignature).await;
    sentinel.check(&nodes);
    assert_intact(&nodes);
    let n1_node = nodes.remove(1);
    let rest = nodes;

    // n1 dies. A genuine record of an older incarnation (generation 3, signed with n1's
    // key at the time) is replayed: it verifies, but never replaces the generation 5
    // already admitted.
    drop(n1_node);
    let sentinel = Sentinel::new(&rest, |v| {
        v.member(&NodeId::new("n1").unwrap())
            .is_some_and(|m| m.generation < 5)
    });
    let old_addr = free_addr();
    let mut old = n1.clone();
    old.generation = 3;
    let _old = impostor(
        seed,
        ChitchatId::new("n1", 3, old_addr),
        published(&old, old_addr, &*n1_auth),
    )
    .await;
    wait_refused(&all(&rest), RejectReason::StaleGeneration).await;
    wait_views(&rest, "dead n1 leaves", |v| !has(v, "n1")).await;
    sentinel.check(&rest);
    assert_intact(&rest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostors_claiming_a_real_members_id_never_move_it() {
    let nodes = cluster().await;
    let n1 = nodes[1].node.self_member();
    let n1_gossip = nodes[1].node.gossip_addr();
    let sentinel = {
        let n1 = n1.clone();
        Sentinel::new(&nodes, move |v| v.member(&n1.id) != Some(&n1))
    };
    let seed = nodes[0].node.gossip_addr();

    // A holder of a valid certificate of this cluster (for "evil") claims to be n1, newer,
    // elsewhere: its certificate does not name n1.
    let evil = auth_for("evil");
    let addr = free_addr();
    let claimed = member("n1", 7, 9);
    let _claimer = impostor(
        seed,
        ChitchatId::new("n1", 7, addr),
        published(&claimed, addr, &*evil),
    )
    .await;
    // (n1 itself ignores any state claiming its id.)
    wait_refused(&[&nodes[0], &nodes[2]], RejectReason::NameMismatch).await;

    // n1's real certificate and signature with another QUIC address, published as n1's own
    // chitchat id with higher versions, so peers take it as n1's newest state: the
    // signature no longer matches, and n1 keeps its last verified record.
    let mut kvs: Vec<(String, String)> = (0..40)
        .map(|i| (format!("pad.{i}"), "x".to_owned()))
        .collect();
    let mut genuine = published(&n1, n1_gossip, &*nodes[1].auth);
    for (k, v) in &mut genuine {
        if k == "kraken.quic" {
            *v = "127.0.0.1:9".into();
        }
    }
    kvs.extend(genuine);
    let _rewriter = impostor(seed, ChitchatId::new("n1", 5, n1_gossip), kvs).await;
    wait_refused(&[&nodes[0]], RejectReason::BadSignature).await;
    sentinel.check(&nodes);
    assert_intact(&nodes);
}
