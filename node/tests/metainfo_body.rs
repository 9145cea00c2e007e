//! A metainfo answer's body must be exactly as long as its frame says, and never longer than
//! a metainfo can be: a peer that lies about it gets a clear error, never an allocation
//! sized by its word.
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

/// Answers every call with `MetainfoFollows { len: declared }` and a body of `sent` bytes.
struct Liar {
    declared: u64,
    sent: usize,
}

impl Service for Liar {
    type Request = Request;

    async fn rpc(&self, _: PeerId, _: Request, mut stream: RpcStream) -> StreamOutcome {
        let answer = Response::MetainfoFollows { len: self.declared };
        if stream.respond(&answer).await.is_ok()
            && stream.send.write_all(&vec![7; self.sent]).await.is_ok()
        {
            let _ = stream.finish();
        }
        StreamOutcome::Done
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metainfo_body_that_disagrees_with_its_length_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(dir.path()).unwrap();
    let config = QuicConfig::bind_to(SocketAddr::from(([127, 0, 0, 1], 0)));
    let caller = Endpoint::bind(
        &config,
        &ca.issue_node_cert("caller").unwrap(),
        &ca.cluster_ca(),
    )
    .unwrap();
    let caller = ConnectionPool::new(caller, PoolConfig::default(), |_| {}).unwrap();
    let view = ClusterView::new(ClusterId::new("test").unwrap(), []).unwrap();
    let cluster = Cluster::new(caller, watch::channel(view).1);

    for (declared, sent, expect) in [
        (100, 10, "ended after 10 bytes"),
        (100, 200, "too long"),
        (MAX_METAINFO_LEN + 1, 0, "more than"),
    ] {
        let name = format!("liar-{declared}-{sent}");
        let endpoint = Endpoint::bind(
            &config,
            &ca.issue_node_cert(&name).unwrap(),
            &ca.cluster_ca(),
        )
        .unwrap();
        let addr = endpoint.local_addr().unwrap();
        let liar = Arc::new(Liar { declared, sent });
        let _pool = ConnectionPool::new(endpoint, PoolConfig::default(), move |conn| {
            tokio::spawn(serve(conn, liar.clone(), RpcConfig::default()));
        })
        .unwrap();
        let err = cluster.call(addr, &Request::Ping).await.unwrap_err();
        let CallError::Unexpected { answer, .. } = &err else {
            panic!("{declared}/{sent}: {err}");
        };
        assert!(answer.contains("metainfo body"), "{answer}");
        assert!(answer.contains(expect), "{declared}/{sent}: {answer}");
    }
}
