//! Shared setup of the `quic_*` integration tests: a dev CA, loopback endpoints and pools,
//! and a test service.

#![allow(dead_code, unreachable_pub)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kraken_storage::{Digest, Metainfo};
use kraken_transport::quic::tls::dev::DevCa;
use kraken_transport::quic::{
    BiStream, ConnectionPool, Endpoint, NodeIdentity, PieceStreamError, PoolConfig, QuicConfig,
    RequestBody, RpcConfig, RpcStream, Service, StreamOutcome, call, recv_piece, serve,
};
use kraken_transport::wire::{PeerId, PeerMessage, PieceHeader};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;
use tokio::sync::mpsc;

/// A dev CA in a temporary directory.
pub struct Cluster {
    pub dir: TempDir,
    pub ca: DevCa,
}

pub fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::create(dir.path()).unwrap();
    Cluster { dir, ca }
}

/// Loopback, port 0, short connect timeout.
pub fn loopback_config() -> QuicConfig {
    QuicConfig {
        connect_timeout: Duration::from_secs(5),
        ..QuicConfig::bind_to(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
}

pub fn endpoint(cluster: &Cluster, name: &str) -> (Endpoint, NodeIdentity) {
    let identity = cluster.ca.issue_node_cert(name).unwrap();
    let ep = Endpoint::bind(&loopback_config(), &identity, &cluster.ca.cluster_ca()).unwrap();
    (ep, identity)
}

/// The test protocol's requests.
#[derive(Debug, Serialize, Deserialize)]
pub enum TestRequest {
    /// Answer with the same number.
    Ping(u32),
    /// A body of `body_len` bytes follows; answer with its hash, then `reply_len` bytes.
    Echo { body_len: u64, reply_len: u64 },
    /// Refuse with code 10 (REFUSED).
    Refuse,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestResponse {
    Pong(u32),
    Echoed { hash: [u8; 32], len: u64 },
}

/// Deterministic bytes: `len` bytes of a pattern seeded by `seed`.
pub fn pattern(len: usize, seed: u8) -> Bytes {
    let mut state = u64::from(seed) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        v.extend_from_slice(&state.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// What the test service received on piece streams.
pub type PieceResult = Result<(PieceHeader, Bytes), (String, bool)>;

/// The test service: ping, echo with bulk bodies, a session that answers `Complete`, and
/// piece streams checked against one metainfo.
pub struct TestService {
    pub metainfo: Option<Metainfo>,
    pub pieces: Option<mpsc::UnboundedSender<PieceResult>>,
    pub rpcs: AtomicUsize,
}

impl TestService {
    pub fn new() -> Self {
        TestService {
            metainfo: None,
            pieces: None,
            rpcs: AtomicUsize::new(0),
        }
    }
}

impl Service for TestService {
    type Request = TestRequest;

    async fn rpc(
        &self,
        _peer: PeerId,
        request: TestRequest,
        mut stream: RpcStream,
    ) -> StreamOutcome {
        self.rpcs.fetch_add(1, Ordering::Relaxed);
        match request {
            TestRequest::Ping(n) => {
                stream.respond(&TestResponse::Pong(n)).await.unwrap();
                stream.finish().unwrap();
            }
            TestRequest::Echo {
                body_len,
                reply_len,
            } => {
                let body = stream
                    .recv
                    .read_to_end(body_len as usize + 1)
                    .await
                    .unwrap();
                if body.len() as u64 != body_len {
                    stream.reject(kraken_transport::quic::codes::MALFORMED);
                    return StreamOutcome::Misbehaved;
                }
                let hash = *blake3::hash(&body).as_bytes();
                stream
                    .respond(&TestResponse::Echoed {
                        hash,
                        len: body_len,
                    })
                    .await
                    .unwrap();
                stream
                    .send
                    .write_chunk(pattern(reply_len as usize, 2))
                    .await
                    .unwrap();
                stream.finish().unwrap();
            }
            TestRequest::Refuse => stream.reject(kraken_transport::quic::codes::REFUSED),
        }
        StreamOutcome::Done
    }

    async fn session(&self, _peer: PeerId, _digest: Digest, mut stream: BiStream) -> StreamOutcome {
        stream.respond(&PeerMessage::Complete).await.unwrap();
        stream.finish().unwrap();
        StreamOutcome::Done
    }

    async fn uni_stream(&self, _peer: PeerId, recv: quinn::RecvStream) -> StreamOutcome {
        let (Some(metainfo), Some(out)) = (&self.metainfo, &self.pieces) else {
            return StreamOutcome::Done;
        };
        match recv_piece(recv, metainfo).await {
            Ok(piece) => {
                let _ = out.send(Ok(piece));
                StreamOutcome::Done
            }
            Err(e) => {
                let fault = e.is_peer_fault();
                let _ = out.send(Err((describe(&e), fault)));
                if fault {
                    StreamOutcome::Misbehaved
                } else {
                    StreamOutcome::Done
                }
            }
        }
    }
}

fn describe(e: &PieceStreamError) -> String {
    format!("{e:?}")
}

/// A pool that serves `service` on every connection, and counts connections.
pub fn serving_pool(
    endpoint: Endpoint,
    pool_config: PoolConfig,
    service: Arc<TestService>,
    rpc_config: RpcConfig,
) -> (ConnectionPool, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let pool = ConnectionPool::new(endpoint, pool_config, move |conn| {
        counter.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(serve(conn, service.clone(), rpc_config.clone()));
    })
    .unwrap();
    (pool, count)
}

pub async fn ping(
    conn: &quinn::Connection,
    n: u32,
) -> Result<u32, kraken_transport::quic::RpcError> {
    let (resp, _body) =
        call::<_, TestResponse>(conn, &TestRequest::Ping(n), RequestBody::None).await?;
    match resp {
        TestResponse::Pong(m) => Ok(m),
        other => panic!("unexpected response {other:?}"),
    }
}

/// Fails a test that would otherwise hang.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 30 s"))
}
