//! `Endpoint`: one quinn endpoint per node that both accepts and dials, over a UDP socket
//! this module creates (so that it can size the socket buffers), with mutual TLS from
//! [`tls`](super::tls).
//!
//! Because one socket serves both directions, a peer's source address on an incoming
//! connection is also the address it listens on, and the pool can index accepted
//! connections by it.

mod config;
mod socket;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Runtime;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use socket2::{Domain, Protocol, Socket, Type};

pub use config::{CongestionControl, QuicConfig, QuicConfigError};

use self::socket::GsoSplitting;
use super::codes;
use super::tls::{ClusterCa, NodeIdentity, TlsError, peer_id_of_connection};
use crate::wire::PeerId;

/// The TLS server name sent when dialing. Servers' names are not checked (see
/// [`tls`](super::tls)); this only has to be a valid DNS name.
const SERVER_NAME: &str = "kraken-node";

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] QuicConfigError),
    /// The identity or CA is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// quinn rejected the TLS configuration: no TLS 1.3 cipher suite it can use.
    #[error("quic cannot use the tls configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// Creating, configuring or binding the UDP socket failed.
    #[error("failed to {op} udp socket {addr}: {source}")]
    Socket {
        /// What was being done.
        op: &'static str,
        /// The bind address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// `bind` was called outside a tokio runtime.
    #[error("an endpoint must be created inside a tokio runtime")]
    NoRuntime,
}

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// quinn refused to start the dial (endpoint closed, unusable address).
    #[error("cannot dial {addr}: {source}")]
    Start {
        /// The peer.
        addr: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectError,
    },
    /// The handshake failed (unreachable, refused, certificate rejected by either side).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer.
        addr: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectionError,
    },
    /// The handshake did not finish in time.
    #[error("handshake with {addr} timed out after {after:?}")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The peer's certificate chain verified but is not a usable identity.
    #[error("{addr} presented an unusable identity: {source}")]
    Identity {
        /// The peer.
        addr: SocketAddr,
        /// Why (boxed: TLS errors are large and this one is rare).
        source: Box<TlsError>,
    },
}

/// Which end opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This node dialed.
    Dialed,
    /// The peer dialed and this node accepted.
    Accepted,
}

/// An established, mutually authenticated connection and the peer's proven id.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    conn: quinn::Connection,
    peer_id: PeerId,
    side: Side,
    established: std::time::Instant,
}

impl PeerConnection {
    /// The remote node's id, from its certificate.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The quinn connection (open streams on it).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// The peer's current address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Which end opened the connection.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Whether `other` is this very connection (clones compare equal).
    pub fn same_as(&self, other: &PeerConnection) -> bool {
        self.conn.stable_id() == other.conn.stable_id()
    }

    /// When the handshake completed.
    pub fn established(&self) -> std::time::Instant {
        self.established
    }

    /// Whether the connection is still open (no close frame, timeout or error yet).
    pub fn is_alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// Closes the connection with an application error code (see [`codes`]).
    pub fn close(&self, code: quinn::VarInt, reason: &[u8]) {
        self.conn.close(code, reason);
    }
}

/// The UDP socket buffer sizes the kernel granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// `SO_SNDBUF` as reported by the kernel (Linux reports twice the usable size).
    pub send: usize,
    /// `SO_RCVBUF` as reported by the kernel.
    pub recv: usize,
}

/// A node's QUIC endpoint: server and client on one UDP socket.
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    peer_id: PeerId,
    config: Arc<QuicConfig>,
    buffers: SocketBuffers,
}

impl Endpoint {
    /// Binds a UDP socket per `config` and starts a quinn endpoint that accepts connections
    /// from, and dials, nodes holding certificates from `ca`, presenting `identity`.
    /// Must be called inside a tokio runtime.
    pub fn bind(
        config: &QuicConfig,
        identity: &NodeIdentity,
        ca: &ClusterCa,
    ) -> Result<Self, EndpointError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EndpointError::NoRuntime);
        }
        let transport = Arc::new(config.transport_config());

        let server_tls = QuicServerConfig::try_from(identity.server_config(ca)?)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(transport.clone());

        let client_tls = QuicClientConfig::try_from(identity.client_config(ca)?)?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
        client.transport_config(transport);

        let (socket, buffers) = bind_socket(config)?;
        let register = |source| EndpointError::Socket {
            op: "register",
            addr: config.bind,
            source,
        };
        let runtime = Arc::new(quinn::TokioRuntime);
        let socket = GsoSplitting::wrap(runtime.wrap_udp_socket(socket).map_err(register)?);
        let mut inner = quinn::Endpoint::new_with_abstract_socket(
            config.endpoint_config(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(register)?;
        inner.set_default_client_config(client);
        tracing::debug!(
            peer_id = %identity.peer_id,
            addr = ?inner.local_addr().ok(),
            ?buffers,
            "quic endpoint bound"
        );
        Ok(Endpoint {
            inner,
            peer_id: identity.peer_id,
            config: Arc::new(config.clone()),
            buffers,
        })
    }

    /// The local socket address (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// This node's id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The configuration the endpoint runs with.
    pub fn config(&self) -> &QuicConfig {
        &self.config
    }

    /// The socket buffer sizes the kernel granted.
    pub fn socket_buffers(&self) -> SocketBuffers {
        self.buffers
    }

    /// The underlying quinn endpoint.
    pub fn quinn(&self) -> &quinn::Endpoint {
        &self.inner
    }

    /// Dials `addr` and completes the mutual-TLS handshake within the connect timeout.
    /// This always makes a new connection; share connections through a
    /// [`ConnectionPool`](super::ConnectionPool).
    pub async fn connect(&self, addr: SocketAddr) -> Result<PeerConnection, ConnectError> {
        let connecting = self
            .inner
            .connect(addr, SERVER_NAME)
            .map_err(|source| ConnectError::Start { addr, source })?;
        let after = self.config.connect_timeout;
        let conn = match tokio::time::timeout(after, connecting).await {
            Err(_) => return Err(ConnectError::Timeout { addr, after }),
            Ok(Err(source)) => return Err(ConnectError::Handshake { addr, source }),
            Ok(Ok(conn)) => conn,
        };
        established(conn, addr, Side::Dialed)
    }

    /// The next incoming connection attempt; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Accepting> {
        let incoming = self.inner.accept().await?;
        Some(Accepting {
            incoming,
            timeout: self.config.connect_timeout,
        })
    }

    /// Closes every connection with [`codes::CONN_SHUTDOWN`] and stops accepting.
    pub fn close(&self) {
        self.inner.close(codes::CONN_SHUTDOWN, b"shutdown");
    }

    /// [`Endpoint::close`], then waits until peers have been told (or timed out).
    pub async fn shutdown(&self) {
        self.close();
        self.inner.wait_idle().await;
    }
}

/// An incoming connection attempt, before its handshake.
#[derive(Debug)]
pub struct Accepting {
    incoming: quinn::Incoming,
    timeout: Duration,
}

impl Accepting {
    /// The address the attempt comes from.
    pub fn remote_addr(&self) -> SocketAddr {
        self.incoming.remote_address()
    }

    /// Completes the handshake (verifying the client's certificate) within the connect
    /// timeout.
    pub async fn establish(self) -> Result<PeerConnection, ConnectError> {
        let addr = self.incoming.remote_address();
        let after = self.timeout;
        let connecting = self
            .incoming
            .accept()
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        let conn = match tokio::time::timeout(after, connecting).await {
            Err(_) => return Err(ConnectError::Timeout { addr, after }),
            Ok(Err(source)) => return Err(ConnectError::Handshake { addr, source }),
            Ok(Ok(conn)) => conn,
        };
        established(conn, addr, Side::Accepted)
    }

    /// Refuses the attempt (the peer sees `CONNECTION_REFUSED`).
    pub fn refuse(self) {
        self.incoming.refuse();
    }
}

fn established(
    conn: quinn::Connection,
    addr: SocketAddr,
    side: Side,
) -> Result<PeerConnection, ConnectError> {
    match peer_id_of_connection(&conn) {
        Ok(peer_id) => Ok(PeerConnection {
            conn,
            peer_id,
            side,
            established: std::time::Instant::now(),
        }),
        Err(source) => {
            conn.close(codes::CONN_BAD_IDENTITY, b"bad identity");
            Err(ConnectError::Identity {
                addr,
                source: Box::new(source),
            })
        }
    }
}

/// Creates the UDP socket with the configured buffers, non-blocking, bound.
fn bind_socket(config: &QuicConfig) -> Result<(std::net::UdpSocket, SocketBuffers), EndpointError> {
    let addr = config.bind;
    let err = |op| move |source| EndpointError::Socket { op, addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(err("create"))?;
    if addr.is_ipv6() {
        // Dual stack where the OS allows it; an IPv6-only socket still works for IPv6.
        let _ = socket.set_only_v6(false);
    }
    socket
        .set_send_buffer_size(config.socket_send_buffer)
        .map_err(err("set the send buffer of"))?;
    socket
        .set_recv_buffer_size(config.socket_recv_buffer)
        .map_err(err("set the receive buffer of"))?;
    socket.set_nonblocking(true).map_err(err("configure"))?;
    socket.bind(&addr.into()).map_err(err("bind"))?;
    let buffers = SocketBuffers {
        send: socket.send_buffer_size().map_err(err("query"))?,
        recv: socket.recv_buffer_size().map_err(err("query"))?,
    };
    if buffers.send < config.socket_send_buffer || buffers.recv < config.socket_recv_buffer {
        tracing::warn!(
            requested_send = config.socket_send_buffer,
            requested_recv = config.socket_recv_buffer,
            granted_send = buffers.send,
            granted_recv = buffers.recv,
            "the kernel granted smaller udp socket buffers than configured; raise \
             net.core.wmem_max and net.core.rmem_max for full quic throughput"
        );
    }
    Ok((socket.into(), buffers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::tls::dev::DevCa;

    #[test]
    fn binding_needs_a_runtime_and_a_valid_config() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        let node = ca.issue_node_cert("node").unwrap();
        let config = QuicConfig::bind_to(SocketAddr::from(([127, 0, 0, 1], 0)));
        assert!(matches!(
            Endpoint::bind(&config, &node, &ca.cluster_ca()),
            Err(EndpointError::NoRuntime)
        ));

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let bad = QuicConfig {
                initial_mtu: 9000,
                ..config.clone()
            };
            assert!(matches!(
                Endpoint::bind(&bad, &node, &ca.cluster_ca()),
                Err(EndpointError::Config(_))
            ));
            let ep = Endpoint::bind(&config, &node, &ca.cluster_ca()).unwrap();
            assert_ne!(ep.local_addr().unwrap().port(), 0);
            assert_eq!(ep.peer_id(), node.peer_id);
            let granted = ep.socket_buffers();
            assert!(granted.send > 0 && granted.recv > 0);
            ep.close();
        });
    }
}
