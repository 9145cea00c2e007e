//! `Membership`: the chitchat gossip driver of a ring node (feature `gossip`).
//!
//! [`Membership::start`] binds the gossip UDP port, publishes the node's [`Member`] as
//! chitchat key-values (see `keys`), joins through the configured seeds, and keeps a
//! [`ClusterView`] current in a tokio watch channel: members join when chitchat's phi-accrual
//! failure detector holds them live and their keys have arrived, leave
//! [`MembershipConfig::dead_node_grace_period`] after it holds them dead, and a restarted node
//! (same id, higher generation) replaces its old self at once.
//!
//! Only authenticated members enter the view: every node publishes its record signed with
//! the key of its cluster certificate, beside that certificate ([`MemberAuth`]), and a
//! gossiped node is admitted once its record verifies (see `admit`). What was refused is
//! counted ([`Membership::counters`]) and logged at most once per node and reason a minute.
//!
//! Modules: `keys` (member ⇄ key-values),
//! `admit` (which gossiped states are members), `guard` (the UDP transport that counts and
//! rate-limits what it drops), `stats` (counters, rate-limited logs), `tracker` (live sets
//! → views, grace periods).

mod admit;
mod guard;
mod keys;
mod stats;
mod tracker;

pub use stats::{GossipCounters, GossipStats, LOG_INTERVAL};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion,
    spawn_chitchat,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::ConfigError;
use crate::auth::{self, MemberAuth, RecordError, SignError};
use crate::member::{Member, MemberError};
use crate::view::{ClusterId, ClusterView};
use admit::Admission;
use guard::GuardedTransport;
use tracker::ViewTracker;

/// Ring nodes beyond which gossip is outside what this crate supports (see the crate docs):
/// every gossip round carries a digest of all members in one UDP datagram.
pub const SUPPORTED_RING_NODES: usize = 300;

/// How many times [`Membership::start`] tries free ports when asked for port 0.
const PORT_ATTEMPTS: usize = 8;

/// Why membership could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node's own member record is not valid.
    #[error("invalid self member: {0}")]
    Member(#[from] MemberError),
    /// Binding the gossip port failed.
    #[error("cannot bind gossip socket on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Chitchat failed to start (e.g. the gossip port is taken).
    #[error("cannot start gossip: {0}")]
    Start(String),
    /// The gossip task ended with an error.
    #[error("gossip stopped with an error: {0}")]
    Shutdown(String),
    /// This node's record could not be signed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// This node's own signed record does not verify (e.g. its certificate does not name
    /// its node id, or does not chain to the cluster CA).
    #[error("this node's own member record does not verify: {0}")]
    SelfRecord(#[source] RecordError),
}

/// Gossip settings of a ring node.
///
/// The defaults suit a handful to a few hundred ring nodes on one datacenter network: a
/// gossip round per second, a node declared dead after about eight silent rounds (phi 8),
/// then kept on the rings for 10 more seconds so a brief stall does not move ownership.
/// Durations are milliseconds in config files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// Gossip messages of other clusters are rejected. Not authentication.
    pub cluster_id: ClusterId,
    /// UDP address to gossip on. Port 0 picks a free port (see
    /// [`Membership::gossip_addr`]).
    pub gossip_listen_addr: SocketAddr,
    /// Address other nodes gossip to, if not the listen address (needed when listening on
    /// `0.0.0.0`). Port 0 means the listen port.
    pub gossip_advertise_addr: Option<SocketAddr>,
    /// Where to join: `ip:port` or `dns-name:port` of one or more ring nodes. DNS names are
    /// re-resolved every minute. Empty for the first node.
    pub seeds: Vec<String>,
    /// Time between gossip rounds.
    #[serde(with = "millis")]
    pub gossip_interval: Duration,
    /// Phi above which chitchat's failure detector holds a node dead. Higher tolerates longer
    /// stalls and detects failures later (timeout ≈ phi × mean heartbeat interval).
    pub phi_threshold: f64,
    /// Heartbeat interval the failure detector assumes before it has measured any.
    #[serde(with = "millis")]
    pub initial_heartbeat_interval: Duration,
    /// Heartbeat gaps longer than this are not counted in the mean (e.g. after a pause).
    #[serde(with = "millis")]
    pub max_heartbeat_interval: Duration,
    /// A node held dead stays a member, and on its rings, this long before it leaves.
    #[serde(with = "millis")]
    pub dead_node_grace_period: Duration,
    /// Chitchat forgets the state of a dead node after this long.
    #[serde(with = "millis")]
    pub forget_dead_node_after: Duration,
    /// Deleted chitchat keys are garbage-collected after this long.
    #[serde(with = "millis")]
    pub marked_for_deletion_grace_period: Duration,
    /// Highest ring weight a member may claim; a higher claim is lowered to this (and
    /// logged once per member), so no member can own more than this share of keys.
    pub max_member_weight: u32,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            cluster_id: ClusterId::default(),
            gossip_listen_addr: SocketAddr::from(([127, 0, 0, 1], 7946)),
            gossip_advertise_addr: None,
            seeds: Vec::new(),
            gossip_interval: Duration::from_secs(1),
            phi_threshold: 8.0,
            initial_heartbeat_interval: Duration::from_secs(2),
            max_heartbeat_interval: Duration::from_secs(10),
            dead_node_grace_period: Duration::from_secs(10),
            forget_dead_node_after: Duration::from_secs(3600),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            max_member_weight: DEFAULT_MAX_MEMBER_WEIGHT,
        }
    }
}

/// Default [`MembershipConfig::max_member_weight`]: a member may own up to ten times the
/// keys of a member of weight 1.
pub const DEFAULT_MAX_MEMBER_WEIGHT: u32 = 10;

impl MembershipConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if self.gossip_interval.is_zero() || self.gossip_interval > Duration::from_secs(60) {
            return bad(format!(
                "gossip_interval must be above 0 and at most 60 s, got {:?}",
                self.gossip_interval
            ));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return bad(format!(
                "phi_threshold must be a positive number, got {}",
                self.phi_threshold
            ));
        }
        if self.initial_heartbeat_interval.is_zero() {
            return bad("initial_heartbeat_interval must be above 0".into());
        }
        if self.max_heartbeat_interval < self.gossip_interval {
            return bad(format!(
                "max_heartbeat_interval ({:?}) must be at least gossip_interval ({:?})",
                self.max_heartbeat_interval, self.gossip_interval
            ));
        }
        if self.forget_dead_node_after < self.dead_node_grace_period
            || self.forget_dead_node_after.is_zero()
        {
            return bad(format!(
                "forget_dead_node_after ({:?}) must be above 0 and at least dead_node_grace_period ({:?})",
                self.forget_dead_node_after, self.dead_node_grace_period
            ));
        }
        if self.max_member_weight == 0 {
            return bad("max_member_weight must be at least 1".into());
        }
        match self.gossip_advertise_addr {
            Some(a) if a.ip().is_unspecified() => {
                return bad(format!("gossip_advertise_addr {a} has no concrete IP"));
            }
            None if self.gossip_listen_addr.ip().is_unspecified() => {
                return bad(format!(
                    "gossip_listen_addr {} has no concrete IP: set gossip_advertise_addr",
                    self.gossip_listen_addr
                ));
            }
            _ => {}
        }
        for seed in &self.seeds {
            let port_ok = seed.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                return bad(format!("seed {seed:?} is not ip:port or host:port"));
            }
        }
        Ok(())
    }
}

/// `Duration` as whole milliseconds in config files.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A running gossip membership. Dropping it stops gossip abruptly (like a crash);
/// [`shutdown`](Self::shutdown) leaves gracefully.
pub struct Membership {
    handle: Option<ChitchatHandle>,
    view_rx: watch::Receiver<ClusterView>,
    stop_tx: watch::Sender<bool>,
    view_task: JoinHandle<()>,
    self_member: Arc<Mutex<Member>>,
    /// Serializes record updates, so the published keys and signature always match.
    publishing: tokio::sync::Mutex<()>,
    auth: Arc<dyn MemberAuth>,
    counters: Arc<GossipCounters>,
    gossip_addr: SocketAddr,
    cluster_id: ClusterId,
    gossip_interval: Duration,
}

impl Membership {
    /// Starts gossiping as `self_member` and joins through `config.seeds`. `auth` signs
    /// this node's record and verifies everyone else's (see [`MemberAuth`]); a node whose
    /// own signed record does not verify (its certificate does not name `self_member.id`,
    /// or does not chain to the cluster CA) refuses to start.
    ///
    /// `self_member.generation` must grow on every restart of the node. Must be called
    /// within a tokio runtime.
    pub async fn start(
        config: MembershipConfig,
        self_member: Member,
        auth: Arc<dyn MemberAuth>,
    ) -> Result<Membership, MembershipError> {
        config.validate()?;
        self_member.validate()?;
        let counters = Arc::new(GossipCounters::default());
        let pick_port = config.gossip_listen_addr.port() == 0;
        let attempts = if pick_port { PORT_ATTEMPTS } else { 1 };
        let mut last_error = String::new();
        for _ in 0..attempts {
            let listen_addr = if pick_port {
                free_udp_port(config.gossip_listen_addr)?
            } else {
                config.gossip_listen_addr
            };
            let advertise_addr = match config.gossip_advertise_addr {
                Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), listen_addr.port()),
                Some(a) => a,
                None => listen_addr,
            };
            let chain = auth.certificate_chain();
            let signature = sign_self(&*auth, &config.cluster_id, advertise_addr, &self_member)?;
            let chitchat_id = ChitchatId::new(
                self_member.id.as_str(),
                self_member.generation,
                advertise_addr,
            );
            let chitchat_config = ChitchatConfig {
                chitchat_id,
                cluster_id: config.cluster_id.as_str().to_owned(),
                gossip_interval: config.gossip_interval,
                listen_addr,
                seed_nodes: config.seeds.clone(),
                failure_detector_config: FailureDetectorConfig {
                    phi_threshold: config.phi_threshold,
                    sampling_window_size: 1_000,
                    max_interval: config.max_heartbeat_interval,
                    initial_interval: config.initial_heartbeat_interval,
                    dead_node_grace_period: config.forget_dead_node_after,
                },
                marked_for_deletion_grace_period: config.marked_for_deletion_grace_period,
                catchup_callback: None,
                extra_liveness_predicate: None,
                // V1 compresses the digest: more members per datagram. Every ring node runs
                // this crate, so all of them decode it.
                protocol_version: ProtocolVersion::V1,
            };
            let transport = GuardedTransport {
                cluster_id: config.cluster_id.as_str().to_owned(),
                counters: counters.clone(),
            };
            match spawn_chitchat(
                chitchat_config,
                keys::to_key_values(&self_member, &chain, &signature),
                &transport,
            )
            .await
            {
                Ok(handle) => {
                    return Ok(Membership::run(
                        handle,
                        &config,
                        self_member,
                        advertise_addr,
                        auth,
                        counters,
                    )
                    .await);
                }
                Err(e) => {
                    debug!(error = %format!("{e:#}"), %listen_addr, "gossip start failed");
                    last_error = format!("{e:#}");
                }
            }
        }
        Err(MembershipError::Start(last_error))
    }

    async fn run(
        handle: ChitchatHandle,
        config: &MembershipConfig,
        self_member: Member,
        gossip_addr: SocketAddr,
        auth: Arc<dyn MemberAuth>,
        counters: Arc<GossipCounters>,
    ) -> Membership {
        let live_rx = handle.with_chitchat(|c| c.live_nodes_watcher()).await;
        let tracker = ViewTracker::new(
            config.cluster_id.clone(),
            config.dead_node_grace_period,
            BTreeMap::from([(self_member.id.clone(), self_member.clone())]),
        );
        let admission = Admission::new(
            config.cluster_id.clone(),
            config.max_member_weight,
            auth.clone(),
            counters.clone(),
        );
        let (view_tx, view_rx) = watch::channel(tracker.view());
        let (stop_tx, stop_rx) = watch::channel(false);
        let self_member = Arc::new(Mutex::new(self_member));
        let maintaining = maintain_view(
            tracker,
            admission,
            live_rx,
            view_tx,
            stop_rx,
            self_member.clone(),
        );
        // In the caller's span (a node's): tokio tasks inherit none.
        let view_task = tokio::spawn(tracing::Instrument::in_current_span(maintaining));
        info!(%gossip_addr, cluster = %config.cluster_id, seeds = ?config.seeds, "gossip started");
        Membership {
            handle: Some(handle),
            view_rx,
            stop_tx,
            view_task,
            self_member,
            publishing: tokio::sync::Mutex::new(()),
            auth,
            counters,
            gossip_addr,
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
        }
    }

    /// What gossip refused so far (shared: it keeps counting).
    pub fn counters(&self) -> Arc<GossipCounters> {
        self.counters.clone()
    }

    /// The address other nodes gossip to (the bound port when started with port 0).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// The cluster.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// This node's member record as last published.
    pub fn self_member(&self) -> Member {
        self.self_member
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current view (cheap: a reference-count increment).
    pub fn view(&self) -> ClusterView {
        self.view_rx.borrow().clone()
    }

    /// A receiver that sees every view change, e.g. to re-run ring repair when owners change.
    pub fn watch(&self) -> watch::Receiver<ClusterView> {
        self.view_rx.clone()
    }

    /// Publishes whether this node serves requests. Nodes that are not ready stay members
    /// but own no keys ([`ClusterView::ring`]).
    pub async fn set_ready(&self, ready: bool) {
        self.update_self(|m| m.ready = ready, keys::READY, ready.to_string())
            .await;
    }

    /// Publishes this node's ring weight (0 = own nothing, e.g. while draining).
    pub async fn set_weight(&self, weight: u32) {
        self.update_self(|m| m.weight = weight, keys::WEIGHT, weight.to_string())
            .await;
    }

    /// Changes this node's record and publishes the changed key with the record's new
    /// signature (in one step, so peers see both together).
    async fn update_self(&self, change: impl FnOnce(&mut Member), key: &str, value: String) {
        let _one_at_a_time = self.publishing.lock().await;
        let member = {
            let mut me = self
                .self_member
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            change(&mut me);
            me.clone()
        };
        let signature = match sign_self(&*self.auth, &self.cluster_id, self.gossip_addr, &member) {
            Ok(s) => keys::encode_signature(&s),
            Err(e) => {
                // Peers keep this node's last verified record.
                warn!(error = %e, key, "cannot sign the updated member record; not published");
                return;
            }
        };
        if let Some(handle) = &self.handle {
            handle
                .with_chitchat(|c| {
                    let state = c.self_node_state();
                    state.set(key, &value);
                    state.set(keys::SIG, &signature);
                })
                .await;
        }
    }

    /// Leaves gracefully: publishes "not ready" (so peers take this node off their rings
    /// at once), pushes that to the live peers, lingers two gossip rounds (at most 2 s) for
    /// it to spread, then stops. Peers drop the member itself once their failure detector
    /// and grace period have run.
    pub async fn shutdown(mut self) -> Result<(), MembershipError> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        let member = {
            let mut me = self
                .self_member
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            me.ready = false;
            me.clone()
        };
        let signature = sign_self(&*self.auth, &self.cluster_id, self.gossip_addr, &member)
            .map(|s| keys::encode_signature(&s));
        let peers: Vec<SocketAddr> = handle
            .with_chitchat(|c| {
                if let Ok(signature) = &signature {
                    // Unsigned, "not ready" would not verify: peers then wait for failure
                    // detection instead.
                    let state = c.self_node_state();
                    state.set(keys::READY, "false");
                    state.set(keys::SIG, signature);
                }
                let me = c.self_chitchat_id().clone();
                c.live_nodes()
                    .filter(|id| **id != me)
                    .map(|id| id.gossip_advertise_addr)
                    .collect()
            })
            .await;
        for peer in peers {
            // A failed send only means that peer learns later.
            let _ = handle.gossip(peer);
        }
        let linger = (self.gossip_interval * 2).min(Duration::from_secs(2));
        tokio::time::sleep(linger).await;
        let _ = self.stop_tx.send(true);
        handle
            .shutdown()
            .await
            .map_err(|e| MembershipError::Shutdown(format!("{e:#}")))
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.view_task.abort();
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("gossip_addr", &self.gossip_addr)
            .field("cluster_id", &self.cluster_id)
            .field("view", &*self.view_rx.borrow())
            .finish_non_exhaustive()
    }
}

/// Binds `addr` with port 0 to learn a free port, and releases it for chitchat to bind.
fn free_udp_port(addr: SocketAddr) -> Result<SocketAddr, MembershipError> {
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| MembershipError::Bind { addr, source })?;
    socket
        .local_addr()
        .map_err(|source| MembershipError::Bind { addr, source })
}

/// Signs this node's record, and checks that it verifies as peers will check it.
fn sign_self(
    auth: &dyn MemberAuth,
    cluster: &ClusterId,
    gossip_addr: SocketAddr,
    me: &Member,
) -> Result<Vec<u8>, MembershipError> {
    let bytes = auth::signed_record(cluster, gossip_addr, me);
    let signature = auth.sign(&bytes)?;
    auth.verify(&auth.certificate_chain(), &bytes, &signature, &me.id)
        .map_err(MembershipError::SelfRecord)?;
    Ok(signature)
}

/// Follows chitchat's live set and publishes views until stopped.
async fn maintain_view(
    mut tracker: ViewTracker,
    mut admission: Admission,
    mut live_rx: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    view_tx: watch::Sender<ClusterView>,
    mut stop_rx: watch::Receiver<bool>,
    self_member: Arc<Mutex<Member>>,
) {
    let mut warned_size = false;
    loop {
        let deadline = tracker.poll_timeout();
        let sleep_until = tokio::time::Instant::from_std(
            deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
        );
        let changed = tokio::select! {
            _ = stop_rx.changed() => return,
            r = live_rx.changed() => {
                if r.is_err() {
                    return;
                }
                let me = self_member.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let now = Instant::now();
                let live = admission.admit(now, &live_rx.borrow_and_update(), &me);
                tracker.update(now, live)
            }
            () = tokio::time::sleep_until(sleep_until), if deadline.is_some() => {
                tracker.handle_timeout(Instant::now())
            }
        };
        if changed {
            let view = tracker.view();
            if view.len() > SUPPORTED_RING_NODES && !warned_size {
                warned_size = true;
                warn!(
                    members = view.len(),
                    supported = SUPPORTED_RING_NODES,
                    "more ring nodes than gossip supports well"
                );
            }
            debug!(
                epoch = view.epoch(),
                members = view.len(),
                suspected = view.suspected().len(),
                "cluster view changed"
            );
            view_tx.send_replace(view);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(MembershipConfig::default().validate(), Ok(()));
        assert_eq!(MembershipConfig::default().cluster_id.as_str(), "kraken");
    }

    #[test]
    fn validate_rejects_nonsense() {
        let ok = MembershipConfig::default();
        let cases: Vec<(&str, MembershipConfig)> = vec![
            (
                "gossip_interval",
                MembershipConfig {
                    gossip_interval: Duration::ZERO,
                    ..ok.clone()
                },
            ),
            (
                "phi_threshold",
                MembershipConfig {
                    phi_threshold: f64::NAN,
                    ..ok.clone()
                },
            ),
            (
                "phi_threshold",
                MembershipConfig {
                    phi_threshold: 0.0,
                    ..ok.clone()
                },
            ),
            (
                "initial_heartbeat_interval",
                MembershipConfig {
                    initial_heartbeat_interval: Duration::ZERO,
                    ..ok.clone()
                },
            ),
            (
                "max_heartbeat_interval",
                MembershipConfig {
                    max_heartbeat_interval: Duration::from_millis(1),
                    ..ok.clone()
                },
            ),
            (
                "forget_dead_node_after",
                MembershipConfig {
                    forget_dead_node_after: Duration::from_secs(1),
                    ..ok.clone()
                },
            ),
            (
                "gossip_listen_addr",
                MembershipConfig {
                    gossip_listen_addr: "0.0.0.0:7946".parse().unwrap(),
                    ..ok.clone()
                },
            ),
            (
                "gossip_advertise_addr",
                MembershipConfig {
                    gossip_advertise_addr: Some("0.0.0.0:7946".parse().unwrap()),
                    ..ok.clone()
                },
            ),
            (
                "seed",
                MembershipConfig {
                    seeds: vec!["no-port".into()],
                    ..ok.clone()
                },
            ),
            (
                "max_member_weight",
                MembershipConfig {
                    max_member_weight: 0,
                    ..ok.clone()
                },
            ),
            (
                "seed",
                MembershipConfig {
                    seeds: vec!["host:0".into()],
                    ..ok.clone()
                },
            ),
            (
                "seed",
                MembershipConfig {
                    seeds: vec![":7946".into()],
                    ..ok.clone()
                },
            ),
        ];
        for (what, cfg) in cases {
            let err = cfg.validate().expect_err(what).to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
        let listen_any = MembershipConfig {
            gossip_listen_addr: "0.0.0.0:0".parse().unwrap(),
            gossip_advertise_addr: Some("10.0.0.1:0".parse().unwrap()),
            seeds: vec![
                "seed.kraken.svc:7946".into(),
                "10.0.0.2:7946".into(),
                "[::1]:7946".into(),
            ],
            ..ok
        };
        assert_eq!(listen_any.validate(), Ok(()));
    }
}
