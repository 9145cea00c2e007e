//! [`Client`]: a QUIC endpoint with the admin certificate, a connection pool, and a
//! [`Cluster`] over the view fetched once from a seed.
//!
//! `krakenctl` is a one-shot tool, so the view is not refreshed: it is read from the first
//! seed that answers [`Request::ClusterView`] (ring nodes serve it; agents do not).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use kraken_client::cluster::{CallError, Cluster};
use kraken_client::proto::{ErrorKind, NodeInfo, Request, Response};
use kraken_membership::{ClusterId, ClusterView, Member};
use kraken_transport::quic::{
    ClusterCa, ConnectionPool, Endpoint, NodeIdentity, PoolConfig, QuicConfig,
};
use kraken_transport::wire::PeerId;
use tokio::sync::watch;

use crate::error::CtlError;
use crate::settings::{KnownNode, Settings};

/// Longest a health ping waits for its answer.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A connected client.
pub struct Client {
    cluster: Cluster,
    _view_tx: watch::Sender<ClusterView>,
    seed: SocketAddr,
    known: Vec<KnownNode>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seed", &self.seed)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why `host:port` does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup failed (no such host, no port, no resolver).
    #[error("cannot resolve {host:?}: {source}")]
    Lookup {
        /// What was looked up.
        host: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The name exists but has no address.
    #[error("{0} resolves to no address")]
    NoAddress(String),
}

/// Resolves `host:port` (a name or an address).
pub async fn resolve_addr(s: &str) -> Result<SocketAddr, ResolveError> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    match tokio::net::lookup_host(s).await {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| ResolveError::NoAddress(s.to_string())),
        Err(source) => Err(ResolveError::Lookup {
            host: s.to_string(),
            source,
        }),
    }
}

impl Client {
    /// Loads the certificates, binds an endpoint and fetches the cluster view from the
    /// first seed that answers within `timeout`.
    pub async fn connect(settings: &Settings, timeout: Duration) -> Result<Client, CtlError> {
        let ca = ClusterCa::from_pem_file(&settings.ca)
            .map_err(|e| CtlError::BadArgument(format!("bad CA {}: {e}", settings.ca.display())))?;
        let identity =
            NodeIdentity::from_pem_files(&settings.cert, &settings.key).map_err(|e| {
                CtlError::BadArgument(format!(
                    "bad client certificate {} / {}: {e}",
                    settings.cert.display(),
                    settings.key.display()
                ))
            })?;
        let mut seeds = Vec::new();
        let mut last_error = None;
        for s in &settings.seeds {
            match resolve_addr(s).await {
                Ok(addr) => seeds.push(addr),
                Err(e) => last_error = Some(e),
            }
        }
        if seeds.is_empty() {
            return Err(CtlError::Unreachable(format!(
                "cannot reach the cluster: {}",
                last_error.map_or_else(|| "no seed".into(), |e| e.to_string())
            )));
        }
        let bind = if seeds.iter().all(SocketAddr::is_ipv4) {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let mut quic = QuicConfig::bind_to(bind);
        // A client moves at most one blob at a time: modest buffers, quick dials.
        quic.socket_send_buffer = 1 << 20;
        quic.socket_recv_buffer = 1 << 20;
        quic.connect_timeout = timeout;
        // A node that died without closing (SIGKILL, power loss) is noticed in seconds,
        // not after the nodes' 30 s: a command waiting on it fails (or retries) sooner.
        // Keep-alives hold a long call's quiet connection open meanwhile.
        quic.idle_timeout = Duration::from_secs(8);
        quic.keep_alive_interval = Some(Duration::from_secs(2));
        let endpoint = Endpoint::bind(&quic, &identity, &ca)
            .map_err(|e| CtlError::Failed(format!("cannot open a QUIC endpoint: {e}")))?;
        let pool = ConnectionPool::new(endpoint, PoolConfig::default(), |_| {})
            .map_err(|e| CtlError::Failed(format!("cannot start a connection pool: {e}")))?;
        let id = ClusterId::new(settings.cluster_id.as_deref().unwrap_or("krakenctl"))
            .map_err(|e| CtlError::BadArgument(format!("bad cluster id: {e}")))?;
        let empty = ClusterView::new(id.clone(), [])
            .map_err(|e| CtlError::Failed(format!("cannot make an empty view: {e}")))?;
        let (tx, rx) = watch::channel(empty);
        let mut cluster = Cluster::new(pool, rx);
        cluster.call_timeout = timeout;
        let mut failures = Vec::new();
        for seed in seeds {
            match cluster
                .call_within(seed, &Request::ClusterView, timeout)
                .await
            {
                Ok(Response::View(bytes)) => {
                    let view = match &settings.cluster_id {
                        Some(_) => ClusterView::decode_for(&bytes, &id),
                        None => ClusterView::decode(&bytes),
                    }
                    .map_err(|e| {
                        CtlError::Failed(format!("{seed} sent a bad cluster view: {e}"))
                    })?;
                    tx.send_replace(view);
                    return Ok(Client {
                        cluster,
                        _view_tx: tx,
                        seed,
                        known: settings.known_nodes.clone(),
                        timeout,
                    });
                }
                Ok(other) => failures.push(CallError::unexpected(seed, other).to_string()),
                Err(CallError::Remote { addr, source }) if source.kind == ErrorKind::WrongNode => {
                    failures.push(format!(
                        "{addr} serves no cluster view (an agent?); give an origin or tracker"
                    ));
                }
                Err(CallError::Timeout { addr, after }) => {
                    failures.push(format!("seed {addr} did not answer within {after:?}"));
                }
                Err(CallError::Connect { addr, source }) => {
                    failures.push(format!("seed {addr}: {source}"));
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        let why = match failures.as_slice() {
            [one] => one.clone(),
            many => format!(
                "{} seeds failed, the last: {}",
                many.len(),
                many.last().map_or("", String::as_str)
            ),
        };
        Err(CtlError::Unreachable(format!(
            "cannot reach the cluster: {why}"
        )))
    }

    /// The node calls go through.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The cluster view fetched at connect.
    pub fn view(&self) -> ClusterView {
        self.cluster.view()
    }

    /// The seed that answered.
    pub fn seed(&self) -> SocketAddr {
        self.seed
    }

    /// Limit of calls that move no bulk bytes.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The nodes `cluster.json` named (empty without one).
    pub fn known_nodes(&self) -> &[KnownNode] {
        &self.known
    }

    /// A call without bodies, limited to [`Self::timeout`].
    pub async fn call(&self, addr: SocketAddr, request: &Request) -> Result<Response, CallError> {
        self.cluster.call_within(addr, request, self.timeout).await
    }

    /// Asks `addrs` in turn until one answers: its address and answer. A failure that
    /// another node may not share moves on to the next; any other stops. `none` is the
    /// error when `addrs` is empty or no failure was kept.
    pub async fn call_in_turn(
        &self,
        addrs: &[SocketAddr],
        request: &Request,
        none: &str,
    ) -> Result<(SocketAddr, Response), CtlError> {
        let mut last = None;
        for &addr in addrs {
            match self.call(addr, request).await {
                Ok(answer) => return Ok((addr, answer)),
                Err(e) if e.try_next() => last = Some(e),
                Err(e) => return Err(CtlError::from_call(&e)),
            }
        }
        Err(last.map_or_else(
            || CtlError::Failed(none.into()),
            |e| CtlError::from_call(&e),
        ))
    }

    /// Pings `addr`: its name, roles and version, or why not.
    pub async fn ping(&self, addr: SocketAddr) -> Result<NodeInfo, CallError> {
        match self
            .cluster
            .call_within(addr, &Request::Ping, PING_TIMEOUT.min(self.timeout))
            .await?
        {
            Response::Pong(info) => Ok(info),
            other => Err(CallError::unexpected(addr, other)),
        }
    }

    /// An address from the command line: a node name from `cluster.json` or the view
    /// (`agent-1`), or `host:port`.
    pub async fn node_addr(&self, s: &str) -> Result<SocketAddr, CtlError> {
        if let Some(n) = self.known.iter().find(|n| n.name == s) {
            return Ok(n.quic);
        }
        if let Some(m) = self.view().members().values().find(|m| m.id.as_str() == s) {
            return Ok(m.quic_addr);
        }
        resolve_addr(s).await.map_err(|e| {
            CtlError::BadArgument(format!(
                "bad node address {s:?}: {e} (HOST:PORT or a node name)"
            ))
        })
    }

    /// Names of the nodes at known addresses: view members and `cluster.json` nodes.
    pub fn names_by_addr(&self) -> BTreeMap<SocketAddr, String> {
        let mut names: BTreeMap<SocketAddr, String> = self
            .known
            .iter()
            .map(|n| (n.quic, n.name.clone()))
            .collect();
        for m in self.view().members().values() {
            names.insert(m.quic_addr, m.id.as_str().to_string());
        }
        names
    }

    /// The peer id (hash of the certificate key) and name of every known node, learnt by
    /// connecting to each (concurrently, unreachable ones left out). Pull reports and
    /// trackers name peers by id only.
    pub async fn names_by_peer_id(&self) -> BTreeMap<PeerId, String> {
        let pool = self.cluster.pool();
        let lookups = self
            .names_by_addr()
            .into_iter()
            .map(|(addr, name)| async move {
                let conn =
                    tokio::time::timeout(PING_TIMEOUT.min(self.timeout), pool.get_or_connect(addr))
                        .await;
                match conn {
                    Ok(Ok(c)) => Some((c.peer_id(), name)),
                    _ => None,
                }
            });
        futures::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Closes every connection, telling the nodes (waits at most 250 ms).
    pub async fn close(&self) {
        let pool = self.cluster.pool();
        let endpoint = pool.endpoint().clone();
        pool.close();
        let _ = tokio::time::timeout(Duration::from_millis(250), endpoint.shutdown()).await;
    }

    /// The origins of the view, by name.
    pub fn origins(&self) -> Vec<Member> {
        self.view()
            .members_of(kraken_membership::Role::Origin)
            .cloned()
            .collect()
    }
}
