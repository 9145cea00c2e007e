//! Metainfo answers on the wire: callers get the metainfo whether it follows the answer
//! frame as a body or (from nodes before the body) sits inside it. A body must be exactly
//! as long as its frame says and never longer than a metainfo can be: a peer that lies
//! about it gets a clear error, never an allocation sized by its word.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use kraken_membership::{ClusterId, ClusterView};
use kraken_node::client::{CallError, Cluster};
use kraken_node::proto::{MAX_METAINFO_LEN, Request, Response};
use kraken_transport::quic::tls::dev::DevCa;
use kraken_transport::quic::{
    ConnectionPool, Endpoint, PoolConfig, QuicConfig, RpcConfig, RpcStream, Service, StreamOutcome,
    serve,
};
use kraken_transport::wire::PeerId;
use tokio::sync::watch;

/// Answers every call with `MetainfoFollows { len: declared }` and a body of `sent` bytes,
/// or (`old`) as nodes before the body did: `Metainfo` with the bytes inside the frame.
struct Answerer {
    declared: u64,
    sent: usize,
    old: bool,
}

impl Service for Answerer {
    type Request = Request;

    async fn rpc(&self, _: PeerId, _: Request, mut stream: RpcStream) -> StreamOutcome {
        let body = vec![7; self.sent];
        let sent = match self.old {
            true => stream.respond(&Response::Metainfo(body)).await.is_ok(),
            false => {
                let answer = Response::MetainfoFollows { len: self.declared };
                stream.respond(&answer).await.is_ok() && stream.send.write_all(&body).await.is_ok()
            }
        };
        if sent {
            let _ = stream.finish();
        }
        StreamOutcome::Done
    }
}

/// An endpoint serving `answerer`; keep the pool alive while calling.
fn serving(ca: &DevCa, name: &str, answerer: Answerer) -> (SocketAddr, ConnectionPool) {
    let config = QuicConfig::bind_to(SocketAddr::from(([127, 0, 0, 1], 0)));
    let endpoint = Endpoint::bind(
        &config,
        &ca.issue_node_cert(name).unwrap(),
        &ca.cluster_ca(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let answerer = Arc::new(answerer);
    let pool = ConnectionPool::new(endpoint, PoolConfig::default(), move |conn| {
        tokio::spawn(serve(conn, answerer.clone(), RpcConfig::default()));
    })
    .unwrap();
    (addr, pool)
}

/// A `Cluster` to call through, with no view.
fn caller(ca: &DevCa) -> Cluster {
    let config = QuicConfig::bind_to(SocketAddr::from(([127, 0, 0, 1], 0)));
    let endpoint = Endpoint::bind(
        &config,
        &ca.issue_node_cert("caller").unwrap(),
        &ca.cluster_ca(),
    )
    .unwrap();
    let pool = ConnectionPool::new(endpoint, PoolConfig::default(), |_| {}).unwrap();
    let view = ClusterView::new(ClusterId::new("test").unwrap(), []).unwrap();
    Cluster::new(pool, watch::channel(view).1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_get_the_metainfo_whether_it_follows_the_frame_or_is_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(dir.path()).unwrap();
    let cluster = caller(&ca);
    // A body larger than a frame could carry; an old-style answer small enough for one.
    for (old, len) in [(false, 300_000), (true, 1_000)] {
        let answerer = Answerer {
            declared: len as u64,
            sent: len,
            old,
        };
        let (addr, _pool) = serving(&ca, &format!("answerer-{old}"), answerer);
        match cluster.call(addr, &Request::Ping).await.unwrap() {
            Response::Metainfo(bytes) => assert_eq!(bytes, vec![7; len], "old: {old}"),
            other => panic!("old: {old}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metainfo_body_that_disagrees_with_its_length_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(dir.path()).unwrap();
    let cluster = caller(&ca);
    for (declared, sent, expect) in [
        (100, 10, "ended after 10 bytes"),
        (100, 200, "too long"),
        (MAX_METAINFO_LEN + 1, 0, "more than"),
    ] {
        let answerer = Answerer {
            declared,
            sent,
            old: false,
        };
        let (addr, _pool) = serving(&ca, &format!("liar-{declared}-{sent}"), answerer);
        let err = cluster.call(addr, &Request::Ping).await.unwrap_err();
        assert!(
            matches!(err, CallError::MetainfoBody { .. }),
            "{declared}/{sent}: {err}"
        );
        let message = err.to_string();
        assert!(message.contains("metainfo body"), "{message}");
        assert!(message.contains(expect), "{declared}/{sent}: {message}");
    }
}
