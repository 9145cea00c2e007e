//! The sweep's purge on a real cluster: `crate::purge` with the run's guard.

use kraken_storage::Digest;

use super::sweep::{Purged, Purger};
use crate::client::Cluster;

/// Purges through the cluster's origins, trackers and build-index.
pub struct ClusterPurger<'a>(pub &'a Cluster);

/// Why a purge did not run.
#[derive(Debug, thiserror::Error)]
pub enum PurgerError {
    /// This build has no purge primitive yet.
    #[error("purge is not available in this build")]
    Unavailable,
}

impl Purger for ClusterPurger<'_> {
    type Error = PurgerError;

    async fn purge(&self, _digest: &Digest, _unused_since_ms: u64) -> Result<Purged, PurgerError> {
        let _ = self.0;
        Err(PurgerError::Unavailable)
    }
}
