//! How a node learns the cluster's view: ring nodes join gossip, agents and proxies read
//! the view from seeds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kraken_membership::{
    ClusterId, ClusterView, Member, Membership, MembershipConfig, NodeId, RoleSet,
    ViewRefreshConfig,
};
use kraken_transport::quic::{ClusterCa, ConnectionPool, MemberCertAuth, NodeIdentity};
use tokio::sync::watch;

use super::StartError;
use crate::client::Cluster;
use crate::config::NodeConfig;

/// A node's place in the cluster.
pub(super) struct Joined {
    /// Gossip, on ring nodes.
    pub membership: Option<Membership>,
    /// The view: gossiped on ring nodes, refreshed from seeds on the others.
    pub view: watch::Receiver<ClusterView>,
}

/// Joins gossip (ring nodes, at the QUIC `advertise` and `http_addr` addresses, signing
/// with `tls`'s identity) or starts refreshing the view from `view.seeds` (until `stop`).
pub(super) async fn join(
    config: &NodeConfig,
    cluster_id: ClusterId,
    node_id: NodeId,
    (advertise, http_addr): (SocketAddr, Option<SocketAddr>),
    tls: (&NodeIdentity, &ClusterCa),
    pool: &ConnectionPool,
    stop: watch::Receiver<bool>,
) -> Result<Joined, StartError> {
    if config.is_ring_node() {
        let member = member(config, node_id, advertise, http_addr);
        // Signs this node's gossiped record and verifies the others' (see
        // kraken_membership::auth).
        let auth = MemberCertAuth::new(tls.0, tls.1)?;
        let membership = join_gossip(config, cluster_id, member, Arc::new(auth)).await?;
        let view = membership.watch();
        return Ok(Joined {
            membership: Some(membership),
            view,
        });
    }
    let view = refresh_from_seeds(config, cluster_id, pool, stop)?;
    Ok(Joined {
        membership: None,
        view,
    })
}

/// This node's member record: not ready yet, so it owns no keys before it can serve them.
fn member(
    config: &NodeConfig,
    node_id: NodeId,
    advertise: SocketAddr,
    http_addr: Option<SocketAddr>,
) -> Member {
    let mut roles = RoleSet::default();
    for r in config.node.roles.iter().filter_map(|r| r.ring()) {
        roles.insert(r);
    }
    let mut member = Member::new(node_id, roles, advertise);
    member.http_addr = http_addr;
    member.ready = false;
    member.generation = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    member
}

/// Joins gossip; members are admitted only with a record signed by a certificate of the
/// cluster CA that names them (`auth`).
async fn join_gossip(
    config: &NodeConfig,
    cluster_id: ClusterId,
    member: Member,
    auth: Arc<MemberCertAuth>,
) -> Result<Membership, StartError> {
    let mconfig = MembershipConfig {
        cluster_id,
        gossip_listen_addr: config.gossip.listen,
        gossip_advertise_addr: config.gossip.advertise,
        seeds: config.gossip.seeds.clone(),
        gossip_interval: Duration::from_millis(config.gossip.interval_ms),
        max_member_weight: config.gossip.max_member_weight,
        ..MembershipConfig::default()
    };
    Membership::start(mconfig, member, auth)
        .await
        .map_err(StartError::JoinGossip)
}

/// An empty view, filled in the background from the seeds.
fn refresh_from_seeds(
    config: &NodeConfig,
    cluster_id: ClusterId,
    pool: &ConnectionPool,
    stop: watch::Receiver<bool>,
) -> Result<watch::Receiver<ClusterView>, StartError> {
    let empty = ClusterView::new(cluster_id.clone(), []).map_err(StartError::View)?;
    let (tx, rx) = watch::channel(empty);
    let refresh = ViewRefreshConfig {
        interval: Duration::from_secs(config.view.refresh_secs),
        ..ViewRefreshConfig::default()
    };
    let cluster = Cluster::new(pool.clone(), rx.clone());
    crate::spawn(crate::view::refresh_view(
        cluster,
        cluster_id,
        config.view.seeds.clone(),
        refresh,
        tx,
        stop,
    ));
    Ok(rx)
}
