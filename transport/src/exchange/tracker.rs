//! Where the exchange announces: the [`Tracker`] trait and its answer, a [`Handout`].

use std::future::Future;
use std::time::Duration;

use kraken_storage::Digest;

use crate::swarm::PeerInfo;

/// A tracker's answer to an announce.
#[derive(Debug, Clone, Default)]
pub struct Handout {
    /// Peers to consider, best first.
    pub peers: Vec<PeerInfo>,
    /// The announce interval the tracker wants.
    pub interval: Option<Duration>,
}

/// Where the exchange announces. The node implements it with an RPC to the digest's
/// tracker; tests use an in-process `PeerStore`.
pub trait Tracker: Send + Sync + 'static {
    /// Why an announce failed. The exchange logs it and announces again at the swarm's
    /// next interval.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Announces that `me` holds `have_bytes` of `digest` (all of it if `me.complete`).
    fn announce(
        &self,
        digest: Digest,
        me: PeerInfo,
        have_bytes: u64,
    ) -> impl Future<Output = Result<Handout, Self::Error>> + Send;
}
