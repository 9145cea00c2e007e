//! Agents follow the tombstones of purged blobs (see [`crate::purge`]).
//!
//! Every `tombstone_poll_secs` (give or take a fifth, at random, so a fleet does not poll in
//! lockstep; and once at start) an agent asks every live build-index
//! node for the tombstones recorded since its cursor for that node (the node's own clock;
//! the bound is inclusive, so the cursor remembers the digests it saw at its own
//! millisecond and skips them: a blob pushed again after its deletion is not evicted at
//! every poll), and evicts each blob it holds:
//! its swarm task stops (no more seeding, announces or downloads of it) and its store
//! drops the blob; a copy being read goes when its readers finish. From then on the
//! agent's registry answers a `GET` of the blob from the cluster, which no longer has it:
//! 404. A blob that cannot go yet (a partial download still closing) is tried again at the
//! next poll. Cursors live in memory: a restarted agent reads every tombstone still
//! retained, which also evicts what it held across the restart.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use kraken_membership::Role;
use kraken_storage::Digest;
use kraken_storage::cas::PurgeOutcome;
use tokio::sync::watch;

use crate::agent::Agent;
use crate::proto::{Request, Response};

/// Tombstones asked for in one call.
const PAGE: u32 = 1000;

/// Polls and evicts until `stop` turns true.
pub async fn follow(agent: Agent, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(agent.config().tombstone_poll_secs);
    let mut follower = Follower::default();
    loop {
        follower.poll(&agent).await;
        tokio::select! {
            _ = tokio::time::sleep(jittered(every)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// `every`, give or take a fifth at random: thousands of agents started together (a fleet
/// rollout) must not poll the build-index in lockstep.
fn jittered(every: Duration) -> Duration {
    every.mul_f64(rand::random_range(0.8..1.2))
}

/// The poll's state: a cursor per build-index node, and blobs to evict again.
#[derive(Debug, Default)]
pub struct Follower {
    cursors: HashMap<SocketAddr, Cursor>,
    retry: BTreeSet<Digest>,
}

/// Where the poll of one node stands: the newest tombstone time seen, and the digests
/// seen at exactly that time (the next poll starts there, inclusive).
#[derive(Debug, Default)]
struct Cursor {
    ms: u64,
    seen: BTreeSet<Digest>,
}

impl Cursor {
    /// Takes in a tombstone; true when it is new.
    fn advance(&mut self, digest: Digest, ms: u64) -> bool {
        if ms < self.ms || (ms == self.ms && self.seen.contains(&digest)) {
            return false;
        }
        if ms > self.ms {
            self.ms = ms;
            self.seen.clear();
        }
        self.seen.insert(digest);
        true
    }
}

impl Follower {
    /// One poll of every live build-index node; evicts what the new tombstones name.
    pub async fn poll(&mut self, agent: &Agent) {
        let mut due: BTreeSet<Digest> = std::mem::take(&mut self.retry);
        let cluster = agent.cluster();
        for addr in cluster.live_addrs(Role::BuildIndex) {
            let cursor = self.cursors.entry(addr).or_default();
            loop {
                let request = Request::Tombstones {
                    since_ms: cursor.ms,
                    limit: PAGE,
                };
                let (entries, more) = match cluster.call(addr, &request).await {
                    Ok(Response::Tombstones { entries, more }) => (entries, more),
                    Ok(other) => {
                        tracing::warn!(%addr, ?other, "unexpected answer to a tombstone poll");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "tombstone poll failed; next time");
                        break;
                    }
                };
                let before = cursor.ms;
                for (digest, ms) in entries {
                    if cursor.advance(digest, ms) {
                        due.insert(digest);
                    }
                }
                // A full page of one millisecond would not move the cursor: stop there.
                if !more || cursor.ms == before {
                    break;
                }
            }
        }
        for digest in due {
            if !evict(agent, &digest).await {
                self.retry.insert(digest);
            }
        }
    }
}

/// Stops the blob's swarm and drops it from the store; false if it must be tried again.
async fn evict(agent: &Agent, digest: &Digest) -> bool {
    agent.exchange().stop(digest).await;
    agent.forget(digest);
    let cas = agent.cas().clone();
    let d = *digest;
    match tokio::task::spawn_blocking(move || cas.purge(&d, None)).await {
        Ok(Ok(PurgeOutcome::Removed { freed_bytes, .. })) => {
            tracing::info!(%digest, freed_bytes, "evicted a deleted blob");
            true
        }
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::info!(%digest, error = %e, "cannot evict a deleted blob yet");
            false
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "eviction task failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_are_spread_around_the_interval() {
        let every = Duration::from_secs(10);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(every)).collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= every.mul_f64(0.8) && *w < every.mul_f64(1.2))
        );
        // Not all the same: the point is that agents drift apart.
        assert!(waits.iter().any(|w| *w != waits[0]));
    }

    #[test]
    fn a_cursor_takes_each_tombstone_once() {
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let mut c = Cursor::default();
        assert!(c.advance(a, 10));
        // The next poll starts at 10 again: `a` is not news, `b` at 10 is.
        assert!(!c.advance(a, 10));
        assert!(c.advance(b, 10));
        assert!(c.advance(a, 11));
        assert!(!c.advance(b, 10));
        assert!(!c.advance(a, 11));
    }
}
