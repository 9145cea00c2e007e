//! Mutual TLS: cluster members connect and prove their ids; outsiders do not get in.

#![cfg(feature = "quic")]
#![allow(clippy::unwrap_used)]

mod quic_support;

use std::sync::Arc;

use kraken_transport::quic::{
    ConnectError, Endpoint, PoolConfig, RpcConfig, Side, peer_id_of_connection,
};
use quic_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_ids_are_proven_by_certificates() {
    let cluster = cluster();
    let (a, a_id) = endpoint(&cluster, "node-a");
    let (b, b_id) = endpoint(&cluster, "node-b");
    assert_eq!(a.peer_id(), a_id.peer_id);
    let b_addr = b.local_addr().unwrap();

    let accept = tokio::spawn(async move { b.accept().await.unwrap().establish().await.unwrap() });
    let dialed = within("dial", a.connect(b_addr)).await.unwrap();
    let accepted = within("accept", accept).await.unwrap();

    assert_eq!(dialed.side(), Side::Dialed);
    assert_eq!(accepted.side(), Side::Accepted);
    assert_eq!(dialed.peer_id(), b_id.peer_id);
    assert_eq!(accepted.peer_id(), a_id.peer_id);
    assert_eq!(
        peer_id_of_connection(dialed.connection()).unwrap(),
        b_id.peer_id
    );
    assert_eq!(
        peer_id_of_connection(accepted.connection()).unwrap(),
        a_id.peer_id
    );
    // The endpoint dials from the socket it listens on.
    assert_eq!(accepted.remote_addr(), a.local_addr().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_keeps_the_peer_id() {
    let cluster = cluster();
    let (b, _) = endpoint(&cluster, "node-b");
    let b_addr = b.local_addr().unwrap();
    let (_pool_b, _) = serving_pool(
        b,
        PoolConfig::default(),
        Arc::new(TestService::new()),
        RpcConfig::default(),
    );

    let original = cluster.ca.issue_node_cert("node-a").unwrap();
    let renewed = cluster.ca.renew_node_cert("node-a", &original).unwrap();
    assert_ne!(original.cert_chain, renewed.cert_chain);
    let a = Endpoint::bind(&loopback_config(), &renewed, &cluster.ca.cluster_ca()).unwrap();
    let conn = within("dial", a.connect(b_addr)).await.unwrap();
    assert_eq!(within("ping", ping(conn.connection(), 1)).await.unwrap(), 1);
    assert_eq!(a.peer_id(), original.peer_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_another_ca_cannot_connect() {
    let cluster = cluster();
    let foreign = quic_support::cluster();
    let (b, _) = endpoint(&cluster, "node-b");
    let b_addr = b.local_addr().unwrap();
    let service = Arc::new(TestService::new());
    let (_pool_b, accepted) = serving_pool(
        b,
        PoolConfig::default(),
        service.clone(),
        RpcConfig::default(),
    );

    // The intruder trusts the cluster's CA (so it accepts the server) but its own
    // certificate comes from another CA.
    let intruder_id = foreign.ca.issue_node_cert("intruder").unwrap();
    let intruder =
        Endpoint::bind(&loopback_config(), &intruder_id, &cluster.ca.cluster_ca()).unwrap();

    // In TLS 1.3 the client may finish its side before the server has checked the client
    // certificate; either the dial fails or the connection dies before any RPC is served.
    match within("dial", intruder.connect(b_addr)).await {
        Err(e) => assert!(matches!(e, ConnectError::Handshake { .. }), "{e}"),
        Ok(conn) => {
            let err = within("ping", ping(conn.connection(), 1))
                .await
                .unwrap_err();
            let reason = conn.connection().close_reason().unwrap();
            assert!(
                matches!(
                    reason,
                    quinn::ConnectionError::TransportError(_)
                        | quinn::ConnectionError::ConnectionClosed(_)
                ),
                "{reason} / {err}"
            );
        }
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(service.rpcs.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_from_another_ca_is_refused() {
    let cluster = cluster();
    let foreign = quic_support::cluster();
    // The impostor accepts cluster clients but presents a certificate of another CA.
    let impostor_id = foreign.ca.issue_node_cert("impostor").unwrap();
    let impostor =
        Endpoint::bind(&loopback_config(), &impostor_id, &cluster.ca.cluster_ca()).unwrap();
    let impostor_addr = impostor.local_addr().unwrap();
    let service = Arc::new(TestService::new());
    let (_pool, accepted) = serving_pool(
        impostor,
        PoolConfig::default(),
        service.clone(),
        RpcConfig::default(),
    );

    let (a, _) = endpoint(&cluster, "node-a");
    let err = within("dial", a.connect(impostor_addr)).await.unwrap_err();
    assert!(matches!(err, ConnectError::Handshake { .. }), "{err}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(service.rpcs.load(std::sync::atomic::Ordering::SeqCst), 0);
}
