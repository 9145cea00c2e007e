//! A digest's owning origins as swarm peers, for the tracker's handouts and the agents'
//! DHT handouts alike. Member records carry no peer id (the certificate proves it at the
//! handshake), so each origin's is learned by connecting to it once and kept by address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kraken_membership::Role;
use kraken_storage::Digest;
use kraken_transport::swarm::{PeerInfo, PeerKind};
use kraken_transport::wire::PeerId;

use crate::client::{Cluster, ORIGIN_REPLICAS};

/// Longest the dial that learns an origin's peer id may take.
const DIAL_LIMIT: Duration = Duration::from_secs(2);

/// Origin peer ids by QUIC address, learned by connecting.
#[derive(Debug, Default)]
pub struct OriginPeers {
    ids: Mutex<HashMap<SocketAddr, PeerId>>,
}

impl OriginPeers {
    /// The owners of `digest` in `cluster`'s view, in ring order, as complete origin
    /// peers; an owner whose id is unknown and that does not answer within
    /// [`DIAL_LIMIT`] is left out.
    pub async fn of(&self, cluster: &Cluster, digest: &Digest) -> Vec<PeerInfo> {
        let owners = cluster.owners_of_digest(Role::Origin, digest, ORIGIN_REPLICAS);
        let pool = cluster.pool();
        let peers = owners.iter().map(|m| async move {
            let known = self.ids().get(&m.quic_addr).copied();
            let id = match known {
                Some(id) => id,
                None => {
                    let conn = tokio::time::timeout(DIAL_LIMIT, pool.get_or_connect(m.quic_addr))
                        .await
                        .ok()?
                        .ok()?;
                    self.ids().insert(m.quic_addr, conn.peer_id());
                    conn.peer_id()
                }
            };
            Some(PeerInfo {
                id,
                addr: m.quic_addr,
                kind: PeerKind::Origin,
                complete: true,
            })
        });
        futures::future::join_all(peers)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, PeerId>> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
