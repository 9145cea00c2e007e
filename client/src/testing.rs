//! A real node for this crate's tests: a QUIC endpoint (mutual TLS from a dev CA) that
//! answers every request as a closure says, and a [`Cluster`] whose view holds it alone.
//! The roles that serve these calls live in the node crate, above this one.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kraken_membership::{ClusterId, ClusterView, Member, NodeId, Role, RoleSet};
use kraken_transport::quic::tls::dev::DevCa;
use kraken_transport::quic::{
    ConnectionPool, Endpoint, PoolConfig, QuicConfig, RpcConfig, RpcStream, Service, StreamOutcome,
    serve,
};
use kraken_transport::wire::PeerId;
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::proto::{Request, Response};

type Answer = dyn Fn(&Request) -> (Response, Bytes) + Send + Sync;

/// Answers with the closure's response frame, then its body.
struct Scripted(Arc<Answer>);

impl Service for Scripted {
    type Request = Request;

    async fn rpc(&self, _peer: PeerId, request: Request, mut stream: RpcStream) -> StreamOutcome {
        let (response, body) = (self.0)(&request);
        if stream.respond(&response).await.is_ok() && !body.is_empty() {
            let _ = stream.send.write_chunk(body).await;
        }
        let _ = stream.finish();
        StreamOutcome::Done
    }
}

/// The node and a client of it.
pub(crate) struct TestNode {
    /// Calls go through this; its view holds the node alone.
    pub(crate) cluster: Cluster,
    /// The node's address.
    pub(crate) addr: SocketAddr,
    _server: ConnectionPool,
    _view: watch::Sender<ClusterView>,
    _dir: tempfile::TempDir,
}

/// A node of `roles` answering with `answer`. Call inside a tokio runtime.
pub(crate) fn node(
    roles: &[Role],
    answer: impl Fn(&Request) -> (Response, Bytes) + Send + Sync + 'static,
) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(dir.path()).unwrap();
    let config = QuicConfig {
        connect_timeout: Duration::from_secs(5),
        ..QuicConfig::bind_to(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    };
    let bind = |name: &str| {
        let identity = ca.issue_node_cert(name).unwrap();
        Endpoint::bind(&config, &identity, &ca.cluster_ca()).unwrap()
    };
    let server_endpoint = bind("node");
    let addr = server_endpoint.local_addr().unwrap();
    let service = Arc::new(Scripted(Arc::new(answer)));
    let server = ConnectionPool::new(server_endpoint, PoolConfig::default(), move |conn| {
        tokio::spawn(serve(conn, service.clone(), RpcConfig::default()));
    })
    .unwrap();
    let pool = ConnectionPool::new(bind("client"), PoolConfig::default(), |_| {}).unwrap();
    let member = Member::new(NodeId::new("node").unwrap(), RoleSet::of(roles), addr);
    let view = ClusterView::new(ClusterId::new("test").unwrap(), [member]).unwrap();
    let (tx, rx) = watch::channel(view);
    TestNode {
        cluster: Cluster::new(pool, rx),
        addr,
        _server: server,
        _view: tx,
        _dir: dir,
    }
}
