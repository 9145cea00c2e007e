//! The connection pool: single-flight dials, reuse, replacement, backoff, accepting.

#![cfg(feature = "quic")]
#![allow(clippy::unwrap_used)]

mod quic_support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kraken_transport::quic::{
    ConnectError, ConnectionPool, Endpoint, PoolConfig, PoolError, QuicConfig, RpcConfig,
};
use kraken_transport::wire::PeerId;
use quic_support::*;

fn node(cluster: &Cluster, name: &str) -> (ConnectionPool, Arc<std::sync::atomic::AtomicUsize>) {
    let (ep, _) = endpoint(cluster, name);
    serving_pool(
        ep,
        PoolConfig::default(),
        Arc::new(TestService::new()),
        RpcConfig::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_dial_and_one_connection() {
    let cluster = cluster();
    let (a, a_new) = node(&cluster, "node-a");
    let (b, b_new) = node(&cluster, "node-b");
    let b_addr = b.endpoint().local_addr().unwrap();
    let b_id = b.endpoint().peer_id();

    let mut tasks = Vec::new();
    for _ in 0..16 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            a.get_or_connect(b_addr).await.unwrap()
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(within("connect", t).await.unwrap());
    }
    let id = conns[0].connection().stable_id();
    assert!(conns.iter().all(|c| c.connection().stable_id() == id));
    assert!(conns.iter().all(|c| c.peer_id() == b_id));

    // Later requests, by address or by expected id, reuse it.
    assert_eq!(
        a.get_or_connect(b_addr)
            .await
            .unwrap()
            .connection()
            .stable_id(),
        id
    );
    assert_eq!(
        a.connect(b_addr, Some(b_id))
            .await
            .unwrap()
            .connection()
            .stable_id(),
        id
    );
    assert_eq!(a.get(&b_id).unwrap().connection().stable_id(), id);
    assert_eq!(
        within("ping", ping(conns[0].connection(), 5))
            .await
            .unwrap(),
        5
    );

    // One connection on each side; B registered the incoming one by A's id.
    assert_eq!(a_new.load(Ordering::SeqCst), 1);
    assert_eq!(b_new.load(Ordering::SeqCst), 1);
    assert_eq!(
        b.get(&a.endpoint().peer_id()).unwrap().peer_id(),
        a.endpoint().peer_id()
    );
    assert_eq!(a.connections().len(), 1);

    // The wrong expected id is refused; the connection stays.
    let wrong = PeerId::from_u64(42);
    match a.connect(b_addr, Some(wrong)).await {
        Err(PoolError::PeerMismatch {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (wrong, b_id));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert!(a.get(&b_id).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_connections_are_replaced() {
    let cluster = cluster();
    let (a, a_new) = node(&cluster, "node-a");
    let (b, _) = node(&cluster, "node-b");
    let b_addr = b.endpoint().local_addr().unwrap();
    let first = a.get_or_connect(b_addr).await.unwrap();
    assert_eq!(
        within("ping", ping(first.connection(), 1)).await.unwrap(),
        1
    );

    // B hangs up.
    b.disconnect(&a.endpoint().peer_id());
    within("close", first.connection().closed()).await;
    assert!(!first.is_alive());

    let second = within("redial", a.get_or_connect(b_addr)).await.unwrap();
    assert_ne!(
        second.connection().stable_id(),
        first.connection().stable_id()
    );
    assert_eq!(
        within("ping", ping(second.connection(), 2)).await.unwrap(),
        2
    );
    assert_eq!(a_new.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dials_back_off_and_are_shared() {
    let cluster = cluster();
    // A UDP socket that never answers.
    let black_hole = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let dead: SocketAddr = black_hole.local_addr().unwrap();

    let identity = cluster.ca.issue_node_cert("node-a").unwrap();
    let config = QuicConfig {
        connect_timeout: Duration::from_millis(300),
        ..loopback_config()
    };
    let ep = Endpoint::bind(&config, &identity, &cluster.ca.cluster_ca()).unwrap();
    let pool_config = PoolConfig {
        initial_backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(120),
        ..PoolConfig::default()
    };
    let (a, a_new) = serving_pool(
        ep,
        pool_config,
        Arc::new(TestService::new()),
        RpcConfig::default(),
    );

    // Concurrent callers share the one failing dial.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move { a.get_or_connect(dead).await }));
    }
    for t in tasks {
        match within("dial", t).await.unwrap() {
            Err(PoolError::Connect { source, .. }) => {
                assert!(matches!(*source, ConnectError::Timeout { .. }), "{source}")
            }
            other => panic!("expected a dial failure, got {other:?}"),
        }
    }
    // The next request does not dial: it fails at once, naming one failure.
    match a.get_or_connect(dead).await {
        Err(PoolError::Backoff {
            failures, retry_in, ..
        }) => {
            assert_eq!(failures, 1);
            assert!(retry_in > Duration::from_secs(50) && retry_in <= Duration::from_secs(72));
        }
        other => panic!("expected a backoff, got {other:?}"),
    }
    assert!(a.retry_in(dead).is_some());

    // Forgetting the failures allows a new dial at once; its failure starts a new count.
    a.forget_failures(dead);
    assert!(matches!(
        within("dial", a.get_or_connect(dead)).await,
        Err(PoolError::Connect { .. })
    ));
    assert!(matches!(
        a.get_or_connect(dead).await,
        Err(PoolError::Backoff { failures: 1, .. })
    ));
    assert_eq!(a_new.load(Ordering::SeqCst), 0);
    drop(black_hole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pool_refuses_requests() {
    let cluster = cluster();
    let (a, _) = node(&cluster, "node-a");
    let (b, _) = node(&cluster, "node-b");
    let b_addr = b.endpoint().local_addr().unwrap();
    let conn = a.get_or_connect(b_addr).await.unwrap();
    a.close();
    within("close", conn.connection().closed()).await;
    assert!(matches!(
        a.get_or_connect(b_addr).await,
        Err(PoolError::Closed)
    ));
    assert!(a.connections().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pool_closes_its_connections() {
    let cluster = cluster();
    let (a, _) = node(&cluster, "node-a");
    let (b, _) = node(&cluster, "node-b");
    let conn = a
        .get_or_connect(b.endpoint().local_addr().unwrap())
        .await
        .unwrap();
    assert_eq!(within("ping", ping(conn.connection(), 1)).await.unwrap(), 1);
    drop(a);
    let reason = within("close", conn.connection().closed()).await;
    assert!(
        matches!(reason, quinn::ConnectionError::LocallyClosed),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_dials_again_supersedes_the_connection_it_lost() {
    let cluster = cluster();
    let (a, _) = node(&cluster, "node-a");
    let a_addr = a.endpoint().local_addr().unwrap();
    let (b_ep, b_identity) = endpoint(&cluster, "node-b");
    let b_id = b_ep.peer_id();
    let (b, _) = serving_pool(
        b_ep,
        PoolConfig::default(),
        Arc::new(TestService::new()),
        RpcConfig::default(),
    );
    let old = b.get_or_connect(a_addr).await.unwrap();
    within("ping", ping(old.connection(), 1)).await.unwrap();
    let at_a = within("registered", async {
        loop {
            if let Some(c) = a.get(&b_id) {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // B restarts: same identity, new endpoint; the old connection still looks alive to A
    // (a killed process sends no close). B dials A again.
    let b2_ep = Endpoint::bind(&loopback_config(), &b_identity, &cluster.ca.cluster_ca()).unwrap();
    let (b2, _) = serving_pool(
        b2_ep,
        PoolConfig::default(),
        Arc::new(TestService::new()),
        RpcConfig::default(),
    );
    let new = b2.get_or_connect(a_addr).await.unwrap();
    within("ping", ping(new.connection(), 2)).await.unwrap();
    // A closed its end; B's old end hears why.
    let reason = within("superseded", at_a.connection().closed()).await;
    assert!(
        matches!(reason, quinn::ConnectionError::LocallyClosed),
        "{reason}"
    );
    match within("told", old.connection().closed()).await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, kraken_transport::quic::codes::CONN_SUPERSEDED)
        }
        other => panic!("{other}"),
    }
    let current = a.get(&b_id).expect("the new connection is registered");
    assert!(!current.same_as(&at_a));
    assert!(current.is_alive());
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_dialling_each_other_at_once_keep_their_connections() {
    let cluster = cluster();
    let (a, _) = node(&cluster, "node-a");
    let (b, _) = node(&cluster, "node-b");
    let a_addr = a.endpoint().local_addr().unwrap();
    let b_addr = b.endpoint().local_addr().unwrap();
    let (ab, ba) = tokio::join!(a.get_or_connect(b_addr), b.get_or_connect(a_addr));
    let (ab, ba) = (ab.unwrap(), ba.unwrap());
    within("ping", ping(ab.connection(), 1)).await.unwrap();
    within("ping", ping(ba.connection(), 2)).await.unwrap();
    assert!(ab.is_alive() && ba.is_alive());
}
