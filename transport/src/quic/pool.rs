//! `ConnectionPool`: one connection per peer, shared by every blob and RPC.
//!
//! - **Lookup.** Connections are indexed by the address they were dialed at (or, for
//!   accepted ones, came from — the same address, since an endpoint dials and listens on
//!   one socket) and by the peer's [`PeerId`] once the handshake proved it.
//! - **Single flight.** Concurrent [`ConnectionPool::connect`] calls for one address share
//!   one dial. The dial runs in its own task, so a caller that gives up does not abandon
//!   the others.
//! - **Replacement.** A connection that closed (idle timeout, peer gone, error) is dropped
//!   from the pool as soon as quinn reports it, and the next request dials again.
//! - **Backoff.** A failed dial is remembered: the address is not dialed again until
//!   `initial_backoff × 2^(failures−1)` (capped at `max_backoff`, plus jitter) has passed;
//!   calls in between fail at once with [`PoolError::Backoff`]. A success forgets the
//!   failures.
//! - **Accepting.** An accept loop completes incoming handshakes concurrently and registers
//!   each connection. Every new connection, dialed or accepted, is handed once to the
//!   pool's connection callback — typically to spawn [`serve`](super::serve) on it, since
//!   either end may open streams on a shared connection.
//!
//! Two nodes that dial each other at the same moment end up with two connections; both
//! work and both are served, and the pool keeps using the first one it registered for
//! that peer. Connections stay open (keep-alives) until the peer goes away or
//! [`ConnectionPool::disconnect`] / [`ConnectionPool::close`] closes them. The pool owns
//! its endpoint: closing the pool, or dropping its last handle, closes the endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::codes;
use super::endpoint::{ConnectError, Endpoint, PeerConnection, Side};
use crate::wire::PeerId;

/// A connection we dialed less than this before the peer's own dial to us reached us is
/// a simultaneous dial, not a connection the peer lost.
const DIAL_RACE: Duration = Duration::from_secs(3);

/// Dial backoff of a [`ConnectionPool`].
///
/// The defaults retry a failed peer after 250 ms, then 0.5 s, 1 s, … up to 30 s, each plus
/// up to 20% jitter so that many nodes that lost the same peer do not redial it in step.
/// A restarting node is back within a second or two; a dead one costs a dial every 30 s.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Wait after the first failed dial.
    pub initial_backoff: Duration,
    /// Longest wait between dials of a failing address (before jitter).
    pub max_backoff: Duration,
    /// Random extra wait, as a fraction of the backoff (0.0..=1.0).
    pub jitter: f64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl PoolConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), PoolError> {
        let bad = |m: String| Err(PoolError::Config(m));
        if self.initial_backoff.is_zero() {
            return bad("initial_backoff must be above 0".into());
        }
        if self.max_backoff < self.initial_backoff {
            return bad(format!(
                "max_backoff ({:?}) cannot be below initial_backoff ({:?})",
                self.max_backoff, self.initial_backoff
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad(format!(
                "jitter must be within 0.0..=1.0, not {}",
                self.jitter
            ));
        }
        Ok(())
    }

    /// The wait after `failures` consecutive failed dials, before jitter.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.initial_backoff
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max_backoff)
    }
}

/// Why the pool could not hand out a connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// The dial failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialed.
        addr: SocketAddr,
        /// Why.
        source: Arc<ConnectError>,
    },
    /// Recent dials failed and the backoff has not passed; nothing was dialed.
    #[error("not dialing {addr} for another {retry_in:?} after {failures} failed attempts")]
    Backoff {
        /// The address.
        addr: SocketAddr,
        /// Time until the next dial is allowed.
        retry_in: Duration,
        /// Consecutive failed dials.
        failures: u32,
        /// The last dial's error.
        #[source]
        last_error: Arc<ConnectError>,
    },
    /// The node at the address is not the peer the caller expected.
    #[error("{addr} is peer {actual}, expected {expected}")]
    PeerMismatch {
        /// The address.
        addr: SocketAddr,
        /// The id the caller expected.
        expected: PeerId,
        /// The id the certificate proved.
        actual: PeerId,
    },
    /// The task dialing the address ended without a result (it panicked).
    #[error("the dial to {addr} was abandoned")]
    DialAborted {
        /// The address.
        addr: SocketAddr,
    },
    /// The pool was closed.
    #[error("the connection pool is closed")]
    Closed,
    /// A [`PoolConfig`] is invalid.
    #[error("invalid pool config: {0}")]
    Config(String),
    /// The pool was created outside a tokio runtime.
    #[error("a connection pool must be created inside a tokio runtime")]
    NoRuntime,
}

type DialResult = Option<Result<PeerConnection, PoolError>>;

enum Slot {
    Live(PeerConnection),
    Dialing(watch::Receiver<DialResult>),
}

struct Failure {
    count: u32,
    retry_at: Instant,
    last_error: Arc<ConnectError>,
}

#[derive(Default)]
struct State {
    by_addr: HashMap<SocketAddr, Slot>,
    by_peer: HashMap<PeerId, PeerConnection>,
    failures: HashMap<SocketAddr, Failure>,
    closed: bool,
}

type Callback = Box<dyn Fn(PeerConnection) + Send + Sync>;

struct Inner {
    endpoint: Endpoint,
    config: PoolConfig,
    on_connection: Callback,
    /// The span current where the pool was made (the node's): its own tasks and the
    /// connection callback run in it, whichever caller's task dialed.
    span: tracing::Span,
    state: Mutex<State>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    /// The last handle is gone: nobody can use the connections any more, so close them
    /// (the watcher tasks would otherwise keep them open).
    fn drop(&mut self) {
        self.endpoint.close();
        if let Some(task) = self
            .accept_task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// The node's connections to its peers. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct ConnectionPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("ConnectionPool")
            .field("peer_id", &self.inner.endpoint.peer_id())
            .field("addresses", &st.by_addr.len())
            .field("peers", &st.by_peer.len())
            .field("failing", &st.failures.len())
            .finish()
    }
}

impl ConnectionPool {
    /// A pool over `endpoint` that starts accepting connections at once. `on_connection`
    /// is called once for every new connection, dialed or accepted, before any caller of
    /// [`ConnectionPool::connect`] receives it; it must not block (spawn instead). Must be
    /// called inside a tokio runtime.
    pub fn new(
        endpoint: Endpoint,
        config: PoolConfig,
        on_connection: impl Fn(PeerConnection) + Send + Sync + 'static,
    ) -> Result<Self, PoolError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(PoolError::NoRuntime);
        }
        let inner = Arc::new(Inner {
            endpoint: endpoint.clone(),
            config,
            on_connection: Box::new(on_connection),
            span: tracing::Span::current(),
            state: Mutex::new(State::default()),
            accept_task: Mutex::new(None),
        });
        let accept = accept_loop(endpoint, Arc::downgrade(&inner));
        let task = tokio::spawn(accept.instrument(inner.span.clone()));
        *inner
            .accept_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(ConnectionPool { inner })
    }

    /// The endpoint the pool dials and accepts on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The live connection to `addr`, dialing it if there is none.
    pub async fn get_or_connect(&self, addr: SocketAddr) -> Result<PeerConnection, PoolError> {
        self.connect(addr, None).await
    }

    /// The live connection to `addr` (or, when `expected` is given, to that peer wherever
    /// it connected from), dialing `addr` if there is none. With `expected`, a connection
    /// to any other peer is [`PoolError::PeerMismatch`] (the connection stays in the pool:
    /// it is a valid cluster member, just not the one asked for).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<PeerId>,
    ) -> Result<PeerConnection, PoolError> {
        let mut rx = {
            let mut st = self.inner.lock();
            if st.closed {
                return Err(PoolError::Closed);
            }
            if let Some(peer) = expected
                && let Some(conn) = st.by_peer.get(&peer)
                && conn.is_alive()
            {
                return Ok(conn.clone());
            }
            match st.by_addr.get(&addr) {
                Some(Slot::Live(conn)) if conn.is_alive() => {
                    return check_peer(conn.clone(), addr, expected);
                }
                Some(Slot::Dialing(rx)) => rx.clone(),
                _ => {
                    if let Some(f) = st.failures.get(&addr) {
                        let now = Instant::now();
                        if now < f.retry_at {
                            return Err(PoolError::Backoff {
                                addr,
                                retry_in: f.retry_at - now,
                                failures: f.count,
                                last_error: f.last_error.clone(),
                            });
                        }
                    }
                    let (tx, rx) = watch::channel(None);
                    st.by_addr.insert(addr, Slot::Dialing(rx.clone()));
                    let dialing = dial(self.inner.clone(), addr, tx);
                    tokio::spawn(dialing.instrument(self.inner.span.clone()));
                    rx
                }
            }
        };
        let result = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        match result {
            Some(Ok(conn)) => check_peer(conn, addr, expected),
            Some(Err(e)) => Err(e),
            None => Err(PoolError::DialAborted { addr }),
        }
    }

    /// The live connection to `peer`, if any (no dialing).
    pub fn get(&self, peer: &PeerId) -> Option<PeerConnection> {
        self.inner
            .lock()
            .by_peer
            .get(peer)
            .filter(|c| c.is_alive())
            .cloned()
    }

    /// Every live connection the pool holds, one per peer.
    pub fn connections(&self) -> Vec<PeerConnection> {
        self.inner
            .lock()
            .by_peer
            .values()
            .filter(|c| c.is_alive())
            .cloned()
            .collect()
    }

    /// How long until `addr` may be dialed again, if it is backing off.
    pub fn retry_in(&self, addr: SocketAddr) -> Option<Duration> {
        let st = self.inner.lock();
        let f = st.failures.get(&addr)?;
        f.retry_at.checked_duration_since(Instant::now())
    }

    /// Forgets the failures of `addr` so that the next request dials at once (e.g. when
    /// membership reports the node alive again).
    pub fn forget_failures(&self, addr: SocketAddr) {
        self.inner.lock().failures.remove(&addr);
    }

    /// Closes the connection to `peer` (with [`codes::CONN_SHUTDOWN`]) and forgets it.
    pub fn disconnect(&self, peer: &PeerId) {
        let conn = self.inner.lock().by_peer.remove(peer);
        if let Some(conn) = conn {
            conn.close(codes::CONN_SHUTDOWN, b"disconnect");
            self.inner.forget(&conn);
        }
    }

    /// Closes every connection and the endpoint; later requests fail with
    /// [`PoolError::Closed`].
    pub fn close(&self) {
        let mut st = self.inner.lock();
        st.closed = true;
        st.by_addr.clear();
        st.by_peer.clear();
        st.failures.clear();
        drop(st);
        self.inner.endpoint.close();
        if let Some(task) = self
            .inner
            .accept_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (every update is one map operation).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live connection to `new`'s peer that `new`, just accepted, replaces. A node
    /// dials a peer only when it holds no live connection to it, so the peer dialling
    /// again means it lost the one we hold: it restarted, or timed it out before we did.
    /// The one exception is both sides dialling at once, which leaves each with a fresh
    /// connection it dialed: those are kept (the exchange picks one session).
    fn superseded_by(st: &State, new: &PeerConnection) -> Option<PeerConnection> {
        let old = st.by_peer.get(&new.peer_id())?;
        let racing = old.side() == Side::Dialed
            && new
                .established()
                .saturating_duration_since(old.established())
                < DIAL_RACE;
        (old.is_alive() && !old.same_as(new) && !racing).then(|| old.clone())
    }

    /// Registers a new connection by peer id (keeping a live one already there).
    fn register_peer(st: &mut State, conn: &PeerConnection) {
        match st.by_peer.get(&conn.peer_id()) {
            Some(existing) if existing.is_alive() => {}
            _ => {
                st.by_peer.insert(conn.peer_id(), conn.clone());
            }
        }
    }

    fn register_accepted(self: &Arc<Self>, conn: PeerConnection) {
        let mut st = self.lock();
        if st.closed {
            conn.close(codes::CONN_SHUTDOWN, b"shutdown");
            return;
        }
        if let Some(old) = Inner::superseded_by(&st, &conn) {
            // Closed before anything can open a stream on the new one: sessions on the
            // old connection end, and their replacements find it closed.
            tracing::debug!(peer = %conn.peer_id(), "a new connection from the peer supersedes ours");
            old.close(codes::CONN_SUPERSEDED, b"superseded");
            st.by_peer.remove(&old.peer_id());
            st.by_addr
                .retain(|_, slot| !matches!(slot, Slot::Live(c) if c.same_as(&old)));
        }
        let addr = conn.remote_addr();
        let occupied = match st.by_addr.get(&addr) {
            Some(Slot::Live(c)) => c.is_alive(),
            Some(Slot::Dialing(_)) => true,
            None => false,
        };
        if !occupied {
            st.by_addr.insert(addr, Slot::Live(conn.clone()));
        }
        Inner::register_peer(&mut st, &conn);
        drop(st);
        tracing::debug!(peer = %conn.peer_id(), %addr, "accepted connection");
        self.watch(&conn);
        self.span.in_scope(|| (self.on_connection)(conn));
    }

    /// Drops `conn` from the pool once quinn reports it closed.
    fn watch(self: &Arc<Self>, conn: &PeerConnection) {
        let weak = Arc::downgrade(self);
        let quinn_conn = conn.connection().clone();
        let conn = conn.clone();
        let watching = async move {
            let reason = quinn_conn.closed().await;
            tracing::debug!(peer = %conn.peer_id(), %reason, "connection closed");
            if let Some(inner) = weak.upgrade() {
                inner.forget(&conn);
            }
        };
        tokio::spawn(watching.instrument(self.span.clone()));
    }

    fn forget(&self, conn: &PeerConnection) {
        let id = conn.connection().stable_id();
        let mut st = self.lock();
        st.by_addr
            .retain(|_, slot| !matches!(slot, Slot::Live(c) if c.connection().stable_id() == id));
        if st
            .by_peer
            .get(&conn.peer_id())
            .is_some_and(|c| c.connection().stable_id() == id)
        {
            st.by_peer.remove(&conn.peer_id());
        }
    }

    fn record_failure(&self, st: &mut State, addr: SocketAddr, error: Arc<ConnectError>) {
        let now = Instant::now();
        // Forget failures long past so the map does not grow with every address ever tried.
        let keep = self.config.max_backoff.saturating_mul(4);
        st.failures
            .retain(|_, f| f.retry_at.checked_add(keep).is_none_or(|t| t > now));
        let count = st
            .failures
            .get(&addr)
            .map_or(1, |f| f.count.saturating_add(1));
        let base = self.config.backoff(count);
        let wait = base + base.mul_f64(self.config.jitter * random_unit());
        st.failures.insert(
            addr,
            Failure {
                count,
                retry_at: now + wait,
                last_error: error,
            },
        );
    }
}

fn check_peer(
    conn: PeerConnection,
    addr: SocketAddr,
    expected: Option<PeerId>,
) -> Result<PeerConnection, PoolError> {
    match expected {
        Some(expected) if expected != conn.peer_id() => Err(PoolError::PeerMismatch {
            addr,
            expected,
            actual: conn.peer_id(),
        }),
        _ => Ok(conn),
    }
}

/// One dial, shared by every caller waiting on `tx`.
async fn dial(inner: Arc<Inner>, addr: SocketAddr, tx: watch::Sender<DialResult>) {
    let result = inner.endpoint.connect(addr).await;
    let outcome = {
        let mut st = inner.lock();
        let ours = matches!(st.by_addr.get(&addr), Some(Slot::Dialing(_)));
        match result {
            Ok(conn) if st.closed => {
                conn.close(codes::CONN_SHUTDOWN, b"shutdown");
                Err(PoolError::Closed)
            }
            Ok(conn) => {
                st.failures.remove(&addr);
                st.by_addr.insert(addr, Slot::Live(conn.clone()));
                Inner::register_peer(&mut st, &conn);
                Ok(conn)
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "dial failed");
                let e = Arc::new(e);
                if ours {
                    st.by_addr.remove(&addr);
                }
                if !st.closed {
                    inner.record_failure(&mut st, addr, e.clone());
                }
                Err(PoolError::Connect { addr, source: e })
            }
        }
    };
    if let Ok(conn) = &outcome {
        tracing::debug!(peer = %conn.peer_id(), %addr, "dialed connection");
        inner.watch(conn);
        inner.span.in_scope(|| (inner.on_connection)(conn.clone()));
    }
    // Nobody waiting is fine.
    let _ = tx.send(Some(outcome));
}

async fn accept_loop(endpoint: Endpoint, pool: Weak<Inner>) {
    while let Some(accepting) = endpoint.accept().await {
        let pool = pool.clone();
        let handshake = async move {
            let from = accepting.remote_addr();
            match accepting.establish().await {
                Ok(conn) => match pool.upgrade() {
                    Some(inner) => inner.register_accepted(conn),
                    None => conn.close(codes::CONN_SHUTDOWN, b"shutdown"),
                },
                Err(e) => tracing::debug!(%from, error = %e, "incoming handshake failed"),
            }
        };
        tokio::spawn(handshake.in_current_span());
    }
}

/// A uniform number in `[0, 1)`, for jitter: from the thread's OS-seeded generator, so
/// nodes that lost a peer together do not redial it in step.
fn random_unit() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = PoolConfig::default();
        let ms = |n| c.backoff(n).as_millis();
        assert_eq!(
            (1..=9).map(ms).collect::<Vec<_>>(),
            vec![250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
        );
        assert_eq!(c.backoff(u32::MAX), c.max_backoff);
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn config_validation() {
        PoolConfig::default().validate().unwrap();
        let bad = [
            PoolConfig {
                initial_backoff: Duration::ZERO,
                ..PoolConfig::default()
            },
            PoolConfig {
                max_backoff: Duration::from_millis(1),
                ..PoolConfig::default()
            },
            PoolConfig {
                jitter: 1.5,
                ..PoolConfig::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
