//! The node's QUIC service: routes each incoming stream to the role that serves it.
//!
//! RPCs go to the first role that recognises the request (origin, tracker, agent), or are
//! answered here (`Ping`, `ClusterView`, `Download`). Piece-exchange sessions and piece
//! streams go to the node's one exchange (an origin's or an agent's).

use std::sync::Arc;

use kraken_membership::ClusterView;
use kraken_storage::Digest;
use kraken_transport::quic::{BiStream, RpcStream, Service, StreamOutcome, codes};
use kraken_transport::wire::PeerId;
use quinn::RecvStream;
use tokio::sync::watch;

use crate::agent::Agent;
use crate::buildindex::BuildIndex;
use crate::discovery::Discovery;
use crate::metrics::Metrics;
use crate::origin::Origin;
use crate::proto::{ErrorKind, NodeInfo, RemoteError, Request, Response};
use crate::tracker::TrackerRole;

/// The roles one node runs.
#[derive(Clone, Default)]
pub struct Roles {
    /// Origin, if this node is one.
    pub origin: Option<Origin>,
    /// Tracker, if this node is one.
    pub tracker: Option<TrackerRole>,
    /// Agent, if this node is one.
    pub agent: Option<Agent>,
    /// Build-index, if this node is one.
    pub build_index: Option<BuildIndex>,
    /// The DHT and the discovery settings (agents and origins).
    pub discovery: Option<Discovery>,
}

/// Serves every stream peers open to this node.
pub struct NodeService {
    roles: Roles,
    info: NodeInfo,
    /// The gossiped view (ring nodes only), served to agents and tools.
    view: Option<watch::Receiver<ClusterView>>,
    metrics: Arc<Metrics>,
}

impl NodeService {
    /// A service over `roles`.
    pub fn new(
        roles: Roles,
        info: NodeInfo,
        view: Option<watch::Receiver<ClusterView>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        NodeService {
            roles,
            info,
            view,
            metrics,
        }
    }

    async fn answer(
        &self,
        peer: PeerId,
        request: Request,
        stream: &mut BiStream,
    ) -> (Response, StreamOutcome) {
        let done = |r| (r, StreamOutcome::Done);
        match &request {
            Request::Ping => return done(Response::Pong(self.info.clone())),
            Request::DhtContact => {
                let (dht_peer, addr) = match &self.roles.discovery {
                    Some(d) => {
                        let (peer, addr) = d.contact();
                        (Some(peer), Some(addr))
                    }
                    None => (None, None),
                };
                return done(Response::DhtContact { dht_peer, addr });
            }
            Request::DhtProviders { digest } => {
                return done(match &self.roles.discovery {
                    Some(d) => match d.providers(*digest).await {
                        Ok(found) => Response::DhtProviders(found),
                        Err(e) => Response::Error(RemoteError::new(ErrorKind::Unavailable, e)),
                    },
                    None => wrong_node(format!("{} runs no DHT", self.info.name)),
                });
            }
            Request::ClusterView => {
                return done(match &self.view {
                    Some(v) if !v.borrow().is_empty() => Response::View(v.borrow().encode()),
                    _ => Response::Error(RemoteError::new(
                        ErrorKind::Unavailable,
                        "this node has no cluster view yet",
                    )),
                });
            }
            _ => {}
        }
        if let Some(origin) = &self.roles.origin
            && let Some(answer) = origin.handle(peer, &request, stream).await
        {
            return answer;
        }
        if let Some(tracker) = &self.roles.tracker
            && let Some(answer) = tracker.handle(&request).await
        {
            return done(answer);
        }
        if let Some(agent) = &self.roles.agent
            && let Some(answer) = agent.handle(&request).await
        {
            return done(answer);
        }
        if let Some(bi) = &self.roles.build_index
            && let Some(answer) = bi.handle(&request).await
        {
            return done(answer);
        }
        done(wrong_node(format!(
            "{} ({}) does not serve {}",
            self.info.name,
            self.info.roles.join(","),
            request.name()
        )))
    }

    fn cas(&self) -> Option<&kraken_storage::cas::Cas> {
        match (&self.roles.origin, &self.roles.agent) {
            (Some(o), _) => Some(o.cas()),
            (None, Some(a)) => Some(a.cas()),
            (None, None) => None,
        }
    }
}

/// Sends an encoded metainfo as [`Response::MetainfoFollows`] and a body: one frame could
/// not carry the metainfo of a blob past 64 GiB. Returns whether it all went out.
async fn send_metainfo(stream: &mut RpcStream, bytes: &[u8]) -> bool {
    let len = bytes.len() as u64;
    if len > crate::proto::MAX_METAINFO_LEN {
        // `Metainfo::encode` cannot produce this; answer with an error rather than a body
        // that every peer would refuse.
        let error = RemoteError::new(
            ErrorKind::Internal,
            format!("a metainfo of {len} bytes is larger than any peer accepts"),
        );
        return stream.respond(&Response::Error(error)).await.is_ok();
    }
    stream
        .respond(&Response::MetainfoFollows { len })
        .await
        .is_ok()
        && stream.send.write_all(bytes).await.is_ok()
}

fn wrong_node(message: impl Into<String>) -> Response {
    Response::Error(RemoteError::new(ErrorKind::WrongNode, message))
}

impl Service for NodeService {
    type Request = Request;

    async fn rpc(&self, peer: PeerId, request: Request, mut stream: RpcStream) -> StreamOutcome {
        self.metrics.rpc();
        if let Request::Download {
            digest,
            offset,
            len,
        } = request
        {
            match self.cas() {
                Some(cas) => crate::serve::download(cas, &digest, offset, len, &mut stream).await,
                None => {
                    let _ = stream
                        .respond(&wrong_node("this node stores no blobs"))
                        .await;
                    let _ = stream.finish();
                }
            }
            return StreamOutcome::Done;
        }
        let (response, outcome) = self.answer(peer, request, &mut stream).await;
        let sent = match response {
            Response::Metainfo(bytes) => send_metainfo(&mut stream, &bytes).await,
            response => stream.respond(&response).await.is_ok(),
        };
        if sent {
            let _ = stream.finish();
        }
        outcome
    }

    async fn session(&self, peer: PeerId, digest: Digest, stream: BiStream) -> StreamOutcome {
        match (&self.roles.origin, &self.roles.agent) {
            (Some(o), _) => o.exchange().accept_session(peer, digest, stream).await,
            (None, Some(a)) => a.exchange().accept_session(peer, digest, stream).await,
            (None, None) => {
                stream.reject(codes::UNSUPPORTED_STREAM);
                StreamOutcome::Done
            }
        }
    }

    async fn uni_stream(&self, peer: PeerId, mut recv: RecvStream) -> StreamOutcome {
        match (&self.roles.origin, &self.roles.agent) {
            (Some(o), _) => o.exchange().accept_piece(peer, recv).await,
            (None, Some(a)) => a.exchange().accept_piece(peer, recv).await,
            (None, None) => {
                let _ = recv.stop(codes::UNSUPPORTED_STREAM);
                StreamOutcome::Done
            }
        }
    }
}
