//! The QUIC side of a node: its endpoint, its connection pool, and the service that
//! answers every stream once the roles exist.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use kraken_storage::Digest;
use kraken_transport::quic::{
    BiStream, ClusterCa, ConnectionPool, Endpoint, NodeIdentity, PoolConfig, QuicConfig, RpcConfig,
    RpcStream, Service, StreamOutcome, codes, serve,
};
use kraken_transport::wire::PeerId;
use quinn::RecvStream;
use tracing::Instrument as _;

use super::StartError;
use crate::config::NodeConfig;
use crate::proto::Request;
use crate::service::NodeService;

/// Binds the QUIC endpoint and returns it with the address peers dial. Port 0 in the
/// config advertises the port the socket got, written back into `config.quic.advertise`
/// so that later steps see the address peers will use.
pub(super) fn bind(
    config: &mut NodeConfig,
    identity: &NodeIdentity,
    ca: &ClusterCa,
) -> Result<(Endpoint, SocketAddr), StartError> {
    let quic = QuicConfig::bind_to(config.quic.listen);
    let endpoint = Endpoint::bind(&quic, identity, ca).map_err(StartError::BindQuic)?;
    let bound = endpoint.local_addr().map_err(StartError::QuicAddr)?;
    let mut advertise = config.quic_advertise();
    if advertise.port() == 0 {
        advertise.set_port(bound.port());
    }
    config.quic.advertise = Some(advertise);
    Ok((endpoint, advertise))
}

/// The connection pool over `endpoint`: every connection, dialed or accepted, is served
/// by `service`.
pub(super) fn pool(
    endpoint: &Endpoint,
    service: Arc<LateService>,
) -> Result<ConnectionPool, StartError> {
    ConnectionPool::new(endpoint.clone(), PoolConfig::default(), move |conn| {
        let serving = serve(conn, service.clone(), RpcConfig::default());
        crate::spawn(serving);
    })
    .map_err(StartError::Pool)
}

/// The service, set once the roles exist (the pool must exist before the roles, and the
/// pool's accept loop needs a service). Streams that arrive before are refused.
#[derive(Default)]
pub(super) struct LateService(OnceLock<NodeService>);

impl LateService {
    /// Starts answering with `service` (the first call wins).
    pub(super) fn set(&self, service: NodeService) {
        let _ = self.0.set(service);
    }
}

impl Service for LateService {
    type Request = Request;

    async fn rpc(&self, peer: PeerId, request: Request, stream: RpcStream) -> StreamOutcome {
        match self.0.get() {
            Some(s) => {
                let span = tracing::info_span!(
                    "rpc",
                    request = request.name(),
                    digest = tracing::field::Empty
                );
                if let Some(d) = request.digest() {
                    span.record("digest", tracing::field::display(d));
                }
                s.rpc(peer, request, stream).instrument(span).await
            }
            None => {
                stream.reject(codes::REFUSED);
                StreamOutcome::Done
            }
        }
    }

    async fn session(&self, peer: PeerId, digest: Digest, stream: BiStream) -> StreamOutcome {
        match self.0.get() {
            Some(s) => s.session(peer, digest, stream).await,
            None => {
                stream.reject(codes::REFUSED);
                StreamOutcome::Done
            }
        }
    }

    async fn uni_stream(&self, peer: PeerId, mut recv: RecvStream) -> StreamOutcome {
        match self.0.get() {
            Some(s) => s.uni_stream(peer, recv).await,
            None => {
                let _ = recv.stop(codes::REFUSED);
                StreamOutcome::Done
            }
        }
    }
}
