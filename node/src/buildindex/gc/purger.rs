//! The sweep's purge on a real cluster: [`crate::purge::purge`] with the run's guard.

use kraken_storage::Digest;

use super::sweep::{Purged, Purger};
use crate::client::Cluster;
use crate::purge::{PurgeError, purge};

/// Purges through the cluster's origins, trackers and build-index.
pub struct ClusterPurger<'a>(pub &'a Cluster);

impl Purger for ClusterPurger<'_> {
    type Error = PurgeError;

    async fn purge(&self, digest: &Digest, unused_since_ms: u64) -> Result<Purged, PurgeError> {
        let report = purge(self.0, digest, Some(unused_since_ms)).await?;
        Ok(if report.purged {
            Purged::Gone
        } else {
            Purged::Kept
        })
    }
}
