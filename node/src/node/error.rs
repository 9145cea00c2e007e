//! [`StartError`]: which step of starting a node failed, with its cause.

use std::net::SocketAddr;

use kraken_membership::{MemberError, MembershipError, ViewError};
use kraken_registry_gateway::GatewayError;
use kraken_storage::backend::BackendError;
use kraken_storage::cas::CasError;
use kraken_storage::dirlock::DirLockError;
use kraken_storage::queue::QueueError;
use kraken_transport::exchange::ExchangeError;
use kraken_transport::limit::LimitError;
use kraken_transport::quic::{EndpointError, PoolError, TlsError};

use crate::buildindex;
use crate::config::ConfigError;
use crate::upstream::UpstreamError;

/// Why a node did not start: the step that failed, and why. Each message names the step
/// and carries its cause's text (the daemon prints one line).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory (or the store's, when it lies elsewhere) is in use by another
    /// process, or cannot be locked.
    #[error("locking the data directory: {0}")]
    LockDataDir(#[source] DirLockError),
    /// The node's certificate, key or CA could not be loaded.
    #[error("loading the node's certificates: {0}")]
    Tls(#[from] TlsError),
    /// The QUIC endpoint could not be bound (the port is taken, the identity is unusable).
    #[error("binding the QUIC endpoint: {0}")]
    BindQuic(#[source] EndpointError),
    /// The bound QUIC socket does not know its address.
    #[error("reading the QUIC endpoint's address: {0}")]
    QuicAddr(#[source] std::io::Error),
    /// The connection pool could not start.
    #[error("starting the connection pool: {0}")]
    Pool(#[source] PoolError),
    /// `node.cluster_id` is not a cluster id.
    #[error("node.cluster_id: {0}")]
    ClusterId(#[source] ViewError),
    /// `node.name` is not a node id.
    #[error("node.name: {0}")]
    NodeName(#[source] MemberError),
    /// The HTTP endpoint (health, readiness, metrics) could not be bound.
    #[error("binding the HTTP endpoint on {addr}: {source}")]
    BindHttp {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Gossip did not start (ring nodes).
    #[error("joining gossip: {0}")]
    JoinGossip(#[source] MembershipError),
    /// The empty view that agents and proxies start from could not be made.
    #[error("creating the cluster view: {0}")]
    View(#[source] ViewError),
    /// The blob store did not open (origins and agents).
    #[error("opening the store: {0}")]
    OpenStore(#[source] CasError),
    /// The task opening the blob store did not finish.
    #[error("opening the store: {0}")]
    OpenStoreTask(#[source] tokio::task::JoinError),
    /// The DHT did not start (agents and origins): its identity file, its listener.
    #[error("starting the DHT: {0}")]
    Dht(#[source] kraken_dht::DhtError),
    /// A bandwidth limit could not be made.
    #[error("rate limit: {0}")]
    RateLimit(#[source] LimitError),
    /// The piece exchange refused its settings.
    #[error("starting the piece exchange: {0}")]
    Exchange(#[source] ExchangeError),
    /// The `[[backends]]` could not be set up (origins and build-index).
    #[error("setting up the backends: {0}")]
    Backends(#[source] BackendError),
    /// The durable write-back queue did not open (origins).
    #[error("opening the write-back queue: {0}")]
    OpenWriteBackQueue(#[source] QueueError),
    /// The origin's upload staging directory could not be created.
    #[error("creating the origin's uploads directory: {0}")]
    OriginUploads(#[source] std::io::Error),
    /// The build-index's tag table or replication queue did not open.
    #[error("opening the build-index: {0}")]
    OpenBuildIndex(#[source] buildindex::OpenError),
    /// The registry API's upstreams could not be set up.
    #[error("registry upstreams: {0}")]
    Upstreams(#[source] UpstreamError),
    /// The registry API's TLS certificate or key could not be loaded.
    #[error("loading the registry API's certificate: {0}")]
    RegistryTls(#[source] GatewayError),
    /// The registry API refused its settings.
    #[error("registry: {0}")]
    Registry(#[source] GatewayError),
    /// The push notification endpoints could not be set up (their token file).
    #[error("registry notifications: {0}")]
    Notifications(#[source] crate::notify::NotificationsError),
    /// The registry API could not be bound.
    #[error("binding the registry API on {addr}: {source}")]
    BindRegistry {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}
