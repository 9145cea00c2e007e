//! An agent telling origins about the bad pieces they sent: the origin's copy may have
//! rotted on its disk, and only the origin can check and repair it (see
//! `origin::scrub`).
//!
//! The agent's exchange hands every piece that failed verification to a
//! [`BadPieceObserver`] ([`channel`]), which only `try_send`s it into a bounded channel (the
//! blob's task must not wait; a report that finds the channel full is dropped, and the
//! next bad piece reports again). [`run`] keeps the reports about origins and sends each
//! origin `Request::SuspectBlob` at most once per (origin, digest) per [`REPORT_EVERY`],
//! with at most [`IN_FLIGHT`] calls under way: a fire-and-forget call whose failure is
//! only logged, since the swarm has already banned the peer and fetches the piece
//! elsewhere. Agents and peers that dialled us are not reported: only an origin can
//! repair its store, and only peers handed out to us have a known address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kraken_storage::Digest;
use kraken_transport::exchange::{BadPiece, BadPieceObserver};
use kraken_transport::swarm::PeerKind;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::bounded::Cooldown;
use crate::client::Cluster;
use crate::metrics::Metrics;
use crate::proto::Request;

/// Bad pieces waiting to be looked at.
pub const QUEUE: usize = 64;
/// One report per (origin, digest) per this long.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);
/// (origin, digest) pairs remembered for [`REPORT_EVERY`].
pub const REMEMBERED: usize = 4096;
/// Reports sent at once, at most; more are dropped.
pub const IN_FLIGHT: usize = 8;
/// Longest a report call may take.
const CALL_LIMIT: Duration = Duration::from_secs(5);

/// The observer to put in the exchange's config, and the receiving end for [`run`].
pub fn channel() -> (BadPieceObserver, mpsc::Receiver<BadPiece>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let observer = BadPieceObserver::new(move |bad| {
        let _ = tx.try_send(bad);
    });
    (observer, rx)
}

/// Which bad pieces become reports: those from origins with a known address, once per
/// (origin, digest) per [`REPORT_EVERY`]. Pure: time comes from the caller.
#[derive(Debug)]
pub struct ReportFilter {
    sent: Cooldown<(SocketAddr, Digest)>,
}

impl Default for ReportFilter {
    fn default() -> Self {
        ReportFilter {
            sent: Cooldown::new(REMEMBERED, REPORT_EVERY),
        }
    }
}

impl ReportFilter {
    /// The origin to tell about `bad`, if it is to be told now.
    pub fn report(&mut self, bad: &BadPiece, now: Instant) -> Option<SocketAddr> {
        match bad.from {
            Some((addr, PeerKind::Origin)) if self.sent.allow((addr, bad.digest), now) => {
                Some(addr)
            }
            _ => None,
        }
    }
}

/// Sends the reports until `stop` turns true (or the exchange is gone).
pub async fn run(
    cluster: Cluster,
    mut reports: mpsc::Receiver<BadPiece>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut filter = ReportFilter::default();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let bad = tokio::select! {
            bad = reports.recv() => match bad {
                Some(bad) => bad,
                None => return,
            },
            _ = stop.changed() => return,
        };
        let Some(addr) = filter.report(&bad, Instant::now()) else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(digest = %bad.digest, %addr, "too many bad-piece reports under way; dropped");
            continue;
        };
        tracing::warn!(digest = %bad.digest, origin = %addr, piece = %bad.index,
            "origin sent a bad piece; asking it to check its copy");
        metrics.bad_piece_reported();
        let cluster = cluster.clone();
        let request = Request::SuspectBlob { digest: bad.digest };
        crate::spawn(async move {
            if let Err(e) = cluster.call_within(addr, &request, CALL_LIMIT).await {
                tracing::debug!(%addr, error = %e, "bad-piece report not delivered");
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_storage::PieceIndex;
    use kraken_transport::wire::PeerId;

    fn bad(from: Option<(SocketAddr, PeerKind)>, digest: Digest) -> BadPiece {
        BadPiece {
            digest,
            index: PieceIndex(3),
            peer: PeerId([7; 32]),
            from,
        }
    }

    #[test]
    fn origins_are_told_once_per_digest_per_interval_and_agents_never() {
        let t0 = Instant::now();
        let (o1, o2): (SocketAddr, SocketAddr) =
            ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let mut f = ReportFilter::default();
        let origin = |addr| Some((addr, PeerKind::Origin));
        assert_eq!(f.report(&bad(origin(o1), a), t0), Some(o1));
        // The same origin and blob again (more bad pieces of the same copy): once is enough.
        assert_eq!(f.report(&bad(origin(o1), a), t0), None);
        // Another blob, another origin: each its own report.
        assert_eq!(f.report(&bad(origin(o1), b), t0), Some(o1));
        assert_eq!(f.report(&bad(origin(o2), a), t0), Some(o2));
        // An agent, or a peer with no known address: nobody to tell.
        let agent = Some(("10.0.0.3:1".parse().unwrap(), PeerKind::Agent));
        assert_eq!(f.report(&bad(agent, a), t0), None);
        assert_eq!(f.report(&bad(None, a), t0), None);
        // After the interval, the origin hears again (its restore may have failed).
        assert_eq!(f.report(&bad(origin(o1), a), t0 + REPORT_EVERY), Some(o1));
    }
}
