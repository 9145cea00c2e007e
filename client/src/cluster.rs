//! Calling nodes: the connection pool, the current cluster view, and owner failover.
//!
//! [`Cluster`] is what every role uses to reach the others. It resolves a key to its owners
//! on a ring of the current view and tries them in ring order until one answers, so a dead
//! owner costs one failed dial (which the pool then backs off from) and nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kraken_membership::{ClusterView, Member, Role};
use kraken_storage::Digest;
use kraken_transport::quic::{
    ConnectionPool, OpenCall, PoolError, RequestBody, RpcError, call, open_call,
};
use kraken_transport::wire::MAX_FRAME_LEN;
use quinn::RecvStream;
use tokio::sync::watch;

use crate::proto::{ErrorKind, MAX_METAINFO_LEN, RemoteError, Request, Response};

/// How many origins hold each blob.
pub const ORIGIN_REPLICAS: usize = 3;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection to the node.
    #[error("cannot reach {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: PoolError,
    },
    /// The stream failed.
    #[error("call to {addr} failed: {source}")]
    Rpc {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: RpcError,
    },
    /// The node answered with an error.
    #[error("{addr} answered: {source}")]
    Remote {
        /// Where.
        addr: SocketAddr,
        /// Its answer.
        source: RemoteError,
    },
    /// The node answered with something that does not fit the request.
    #[error("{addr} gave an unexpected answer: {answer}")]
    Unexpected {
        /// Where.
        addr: SocketAddr,
        /// The answer, for logs.
        answer: String,
    },
    /// The call took too long.
    #[error("call to {addr} timed out after {after:?}")]
    Timeout {
        /// Where.
        addr: SocketAddr,
        /// The limit.
        after: Duration,
    },
    /// A body's send (or the wait for its verdict) made no progress and the node did not
    /// answer a ping: it is taken for dead (see [`crate::stall`]).
    #[error("{addr} stalled for {after:?} and does not answer a ping")]
    Stalled {
        /// Where.
        addr: SocketAddr,
        /// How long nothing moved before it was given up.
        after: Duration,
    },
    /// The ring has no live member of the role.
    #[error("no live {0} in the cluster view")]
    NoOwners(&'static str),
    /// A metainfo answer's body was not the metainfo it announced.
    #[error("{addr} sent a bad metainfo body of {len} bytes: {source}")]
    MetainfoBody {
        /// Where.
        addr: SocketAddr,
        /// The length its answer announced.
        len: u64,
        /// What was wrong.
        source: MetainfoBodyError,
    },
    /// A local file the call sends could not be read (nothing another node can fix).
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why the body of a [`Response::MetainfoFollows`] was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoBodyError {
    /// It announced more than any metainfo can take.
    #[error("more than the {MAX_METAINFO_LEN} bytes a metainfo can take")]
    TooLong,
    /// The stream failed (or went on past the announced length).
    #[error(transparent)]
    Read(#[from] quinn::ReadToEndError),
    /// The stream ended early.
    #[error("the stream ended after {0} bytes")]
    Short(usize),
}

impl CallError {
    /// The remote error, if the node answered with one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            CallError::Remote { source, .. } => Some(source),
            _ => None,
        }
    }

    /// True if asking the next owner may help (the node is down, busy, or not the owner).
    pub fn try_next(&self) -> bool {
        match self {
            CallError::Remote { source, .. } => matches!(
                source.kind,
                ErrorKind::WrongNode | ErrorKind::Unavailable | ErrorKind::Internal
            ),
            CallError::Unexpected { .. }
            | CallError::MetainfoBody { .. }
            | CallError::File { .. } => false,
            _ => true,
        }
    }

    /// True if the node refused the request as a kind it does not know: it predates the
    /// request, and an older one may do.
    pub fn predates_request(&self) -> bool {
        matches!(self, CallError::Rpc { source, .. }
            if source.rejected_with() == Some(kraken_transport::quic::codes::UNKNOWN_KIND))
    }

    /// An unexpected answer, unless it is an error answer.
    pub fn unexpected(addr: SocketAddr, answer: Response) -> Self {
        match answer {
            Response::Error(source) => CallError::Remote { addr, source },
            other => CallError::Unexpected {
                addr,
                answer: format!("{other:?}").chars().take(200).collect(),
            },
        }
    }
}

/// Reads the `len`-byte body of a [`Response::MetainfoFollows`]: exactly that many bytes,
/// then the end of the stream, and never more than [`MAX_METAINFO_LEN`].
async fn read_metainfo_body(recv: &mut RecvStream, len: u64) -> Result<Vec<u8>, MetainfoBodyError> {
    if len > MAX_METAINFO_LEN {
        return Err(MetainfoBodyError::TooLong);
    }
    // Checked above: `len` is at most MAX_METAINFO_LEN (about 24 MiB): it fits in memory.
    let bytes = recv.read_to_end(len as usize).await?;
    if bytes.len() as u64 != len {
        return Err(MetainfoBodyError::Short(bytes.len()));
    }
    Ok(bytes)
}

/// The owners of `repo:tag` on `cluster`'s build-index ring, best first (`replicas` 0: all
/// members, in failover order).
pub fn owners_of_tag(cluster: &Cluster, repo: &str, tag: &str, replicas: usize) -> Vec<Member> {
    let key = kraken_membership::ring::tag_key(&format!("{repo}:{tag}"));
    cluster.owners_of_key(Role::BuildIndex, &key, replicas)
}

/// The pool and the view every role calls through. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    pool: ConnectionPool,
    view: watch::Receiver<ClusterView>,
    /// Limit for calls that move no bulk bytes.
    pub call_timeout: Duration,
    /// How long a send of a blob to a node may make no progress before the node is asked
    /// whether it is alive ([`crate::stall`]); default
    /// [`crate::stall::DEFAULT_STALL_TIMEOUT`].
    pub stall_timeout: Duration,
    /// Nodes the stall watchdog gave up on, and when ([`crate::stall`]); shared by clones.
    stalled: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, Instant>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Calls through `pool`, resolving owners on the views `view` delivers.
    pub fn new(pool: ConnectionPool, view: watch::Receiver<ClusterView>) -> Self {
        Cluster {
            pool,
            view,
            call_timeout: Duration::from_secs(10),
            stall_timeout: crate::stall::DEFAULT_STALL_TIMEOUT,
            stalled: Default::default(),
        }
    }

    /// Records that the stall watchdog gave the node at `addr` up: for
    /// [`crate::stall::STALLED_FOR`], sends to it fail at once ([`Cluster::stalled_lately`]),
    /// so that a caller moving on from one dead node (a stage, then the push it falls back
    /// to) does not wait for it twice.
    pub fn mark_stalled(&self, addr: SocketAddr) {
        let mut stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        stalled.retain(|_, at| at.elapsed() < crate::stall::STALLED_FOR);
        stalled.insert(addr, Instant::now());
    }

    /// Whether the stall watchdog gave the node at `addr` up within the last
    /// [`crate::stall::STALLED_FOR`].
    pub fn stalled_lately(&self, addr: SocketAddr) -> bool {
        let stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        stalled
            .get(&addr)
            .is_some_and(|at| at.elapsed() < crate::stall::STALLED_FOR)
    }

    /// The connection pool.
    pub fn pool(&self) -> &ConnectionPool {
        &self.pool
    }

    /// The current view.
    pub fn view(&self) -> ClusterView {
        self.view.borrow().clone()
    }

    /// A receiver of view changes.
    pub fn watch_view(&self) -> watch::Receiver<ClusterView> {
        self.view.clone()
    }

    /// The owners of `digest` on the `role` ring, best first; `replicas` 0 means all
    /// members, in the ring's order for the digest (failover order). Suspected members go
    /// last.
    pub fn owners_of_digest(&self, role: Role, digest: &Digest, replicas: usize) -> Vec<Member> {
        let view = self.view.borrow();
        let ring = view.ring(role);
        let n = if replicas == 0 { ring.len() } else { replicas };
        let mut owners: Vec<Member> = ring
            .owners_of_digest(digest, n)
            .into_iter()
            .cloned()
            .collect();
        owners.sort_by_key(|m| view.is_suspected(&m.id));
        owners
    }

    /// Whether the view suspects the member at QUIC address `addr` of being dead.
    pub fn suspects(&self, addr: SocketAddr) -> bool {
        let view = self.view.borrow();
        view.members()
            .values()
            .any(|m| m.quic_addr == addr && view.is_suspected(&m.id))
    }

    /// The QUIC addresses of the `role` ring's members the view does not suspect: whom a
    /// call that must reach every live member of a role (a purge, a listing) asks.
    pub fn live_addrs(&self, role: Role) -> Vec<SocketAddr> {
        let view = self.view.borrow();
        view.ring(role)
            .members()
            .iter()
            .filter(|m| !view.is_suspected(&m.id))
            .map(|m| m.quic_addr)
            .collect()
    }

    /// The owners of `key` (raw bytes) on the `role` ring; see [`Self::owners_of_digest`].
    pub fn owners_of_key(&self, role: Role, key: &[u8], replicas: usize) -> Vec<Member> {
        let view = self.view.borrow();
        let ring = view.ring(role);
        let n = if replicas == 0 { ring.len() } else { replicas };
        let mut owners: Vec<Member> = ring.owners(key, n).into_iter().cloned().collect();
        owners.sort_by_key(|m| view.is_suspected(&m.id));
        owners
    }

    /// Sends `request` with `body` to `addr`; returns the answer and the stream that carries
    /// any response body. An error answer is returned as [`CallError::Remote`].
    pub async fn call_stream(
        &self,
        addr: SocketAddr,
        request: &Request,
        body: RequestBody<'_>,
    ) -> Result<(Response, RecvStream), CallError> {
        let conn = self
            .pool
            .get_or_connect(addr)
            .await
            .map_err(|source| CallError::Connect { addr, source })?;
        let (response, mut recv) = call::<Request, Response>(conn.connection(), request, body)
            .await
            .map_err(|source| CallError::Rpc { addr, source })?;
        match response {
            Response::Error(source) => Err(CallError::Remote { addr, source }),
            Response::MetainfoFollows { len } => {
                let bytes = read_metainfo_body(&mut recv, len)
                    .await
                    .map_err(|source| CallError::MetainfoBody { addr, len, source })?;
                Ok((Response::Metainfo(bytes), recv))
            }
            other => Ok((other, recv)),
        }
    }

    /// Opens a call to `addr` whose body the caller sends as it comes
    /// ([`kraken_transport::quic::open_call`]), with response frames of up to
    /// [`MAX_FRAME_LEN`] bytes.
    pub async fn open_call(
        &self,
        addr: SocketAddr,
        request: &Request,
    ) -> Result<OpenCall, CallError> {
        let conn = self
            .pool
            .get_or_connect(addr)
            .await
            .map_err(|source| CallError::Connect { addr, source })?;
        open_call(conn.connection(), request, MAX_FRAME_LEN)
            .await
            .map_err(|source| CallError::Rpc { addr, source })
    }

    /// A call without bodies, limited to [`Self::call_timeout`].
    pub async fn call(&self, addr: SocketAddr, request: &Request) -> Result<Response, CallError> {
        self.call_within(addr, request, self.call_timeout).await
    }

    /// A call without bodies, limited to `limit`.
    pub async fn call_within(
        &self,
        addr: SocketAddr,
        request: &Request,
        limit: Duration,
    ) -> Result<Response, CallError> {
        match tokio::time::timeout(limit, self.call_stream(addr, request, RequestBody::None)).await
        {
            Ok(r) => r.map(|(response, _)| response),
            Err(_) => Err(CallError::Timeout { addr, after: limit }),
        }
    }

    /// Calls the owners in order until one answers; returns the first answer, or the last
    /// error. Errors that another owner cannot fix (a bad request, a digest mismatch, not
    /// found) end the search at once.
    pub async fn call_first(
        &self,
        owners: &[Member],
        role: Role,
        request: &Request,
        limit: Duration,
    ) -> Result<Response, CallError> {
        let mut last = CallError::NoOwners(role.as_str());
        for owner in owners {
            match self.call_within(owner.quic_addr, request, limit).await {
                Ok(r) => return Ok(r),
                Err(e) if e.try_next() => {
                    tracing::debug!(owner = %owner.id, error = %e, "owner failed; trying the next");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}
