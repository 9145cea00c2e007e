//! The network driver of `kraken/1`: quinn endpoints, mutual TLS, a connection pool, RPC
//! and piece streams (feature `quic`).
//!
//! Modules:
//! - [`tls`]: cluster identities. Every node holds a certificate signed by the cluster CA;
//!   both ends of every connection present one and verify the other against the CA
//!   (mutual TLS, TLS 1.3, ALPN `kraken/1`, the ring provider passed explicitly). A node's
//!   [`PeerId`](crate::wire::PeerId) is the BLAKE3 hash of its certificate's public key.
//!   [`tls::dev`] makes a CA and node certificates for tests and `kraken dev`.
//! - [`endpoint`]: [`QuicConfig`] (socket buffers, flow-control windows, stream limits,
//!   timeouts, congestion controller) and [`Endpoint`], one quinn endpoint per node that
//!   both accepts and dials, so a peer's source address is also its listening address.
//! - [`pool`]: [`ConnectionPool`], one connection per peer shared by every blob and RPC:
//!   single-flight dialing, replacement of dead connections, exponential backoff after
//!   failed dials, an accept loop that registers incoming connections.
//! - [`stream`]: frame I/O on quinn streams ([`write_frame`], [`read_frame`],
//!   [`read_message`]) and
//!   [`StreamError`].
//! - [`rpc`]: the client call ([`call`]) and the server dispatcher ([`serve`] over a
//!   [`Service`]) that routes each incoming stream by its
//!   [`StreamHeader`](crate::wire::StreamHeader).
//! - [`piece`]: one piece per unidirectional stream: [`send_piece`] (and
//!   [`send_piece_limited`], chunked under a [`RateLimiter`](crate::limit::RateLimiter)),
//!   and [`recv_piece`] which checks the header against the metainfo before reading and
//!   hashes while reading.
//! - [`codes`]: the QUIC application error codes this protocol uses.
//!
//! # Misbehaving peers
//!
//! Bytes from a peer are untrusted. A malformed, oversized, truncated, wrong-version or
//! unknown-kind stream is closed on its own with a stream error code from [`codes`] (a
//! QUIC `RESET_STREAM` / `STOP_SENDING`, which is this protocol's "error frame"); the
//! connection and its other streams carry on. A connection that sends
//! [`RpcConfig::max_bad_streams`] bad streams is closed with [`codes::CONN_ABUSE`].
//! Nothing a peer sends can panic the node or make it allocate more than a checked cap.

pub mod codes;
pub mod endpoint;
pub mod piece;
pub mod pool;
pub mod rpc;
pub mod stream;
pub mod tls;

pub use endpoint::{
    Accepting, CongestionControl, ConnectError, Endpoint, EndpointError, PeerConnection,
    QuicConfig, QuicConfigError, Side, SocketBuffers,
};
pub use piece::{PieceStreamError, recv_piece, send_piece, send_piece_limited};
pub use pool::{ConnectionPool, PoolConfig, PoolError};
pub use rpc::{
    BiStream, OpenCall, RequestBody, RpcConfig, RpcError, RpcStream, Service, StreamOutcome, call,
    call_with_limit, open_call, serve,
};
pub use stream::{StreamError, read_frame, read_message, write_frame};
pub use tls::{
    ClusterCa, MemberCertAuth, NodeIdentity, TlsError, peer_id_of_cert, peer_id_of_connection,
};
