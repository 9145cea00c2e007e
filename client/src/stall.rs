//! The stall watchdog of calls that send a blob to one node (the ingest, the resumable
//! upload): it tells a dead receiver from a slow one within seconds, so that a push moves to
//! the next owner long before QUIC's idle timeout (30 s) would notice.
//!
//! Each step of such a call (opening it, one write of the body, the wait for the verdict)
//! is watched. A step that makes no progress for the stall time (a write the peer's flow
//! control or acknowledgements do not let through; a verdict that does not come) makes the
//! watchdog ask whether the node is alive: a `Ping` on the same pool, limited to the stall
//! time, while the step goes on. The node failed (→ [`CallError::Stalled`], the caller
//! tries the next owner) when the cluster view suspects it, or when the ping goes
//! unanswered. A node that answers the ping is slow, not dead (a busy disk, an fsync of a
//! large blob, a congested path): the step keeps waiting, and is asked about again after
//! each further stall time. A SIGKILLed or partitioned owner is thus given up after at
//! most two stall times; a live one is never given up by this watchdog. A node given up is
//! remembered for [`STALLED_FOR`]: a send to it that stalls then fails at the first stall
//! time, without a ping, and a new ingest is not even opened to it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::cluster::{CallError, Cluster};
use crate::proto::{Request, Response};

/// Default of [`Cluster::stall_timeout`]: 2 s. A live node in one datacenter answers a
/// ping in well under a millisecond and even a loaded one within tens of milliseconds, and
/// a write that moves nothing for 2 s already lost more than a second of a 10 Gbit/s link;
/// a dead owner costs at most two of them (4 s) before the next owner is tried.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a node the watchdog gave up on is taken for dead by later sends
/// ([`Cluster::mark_stalled`]): long enough for gossip to suspect it too, short enough
/// that a node restarted at once is soon sent to again.
pub const STALLED_FOR: Duration = Duration::from_secs(15);

/// Whether the node answered a liveness probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It answered (anything, an error answer included): slow, not dead.
    Alive,
    /// No answer within the probe's limit, or the connection failed.
    Dead,
}

/// Awaits `step`; whenever it makes no progress for `stall`, awaits `probe` alongside it
/// and gives up with [`CallError::Stalled`] when the probe says the node is dead.
pub async fn watch<F, P, Fut>(
    addr: SocketAddr,
    stall: Duration,
    step: F,
    mut probe: P,
) -> Result<F::Output, CallError>
where
    F: Future,
    P: FnMut() -> Fut,
    Fut: Future<Output = Liveness>,
{
    tokio::pin!(step);
    let mut waited = Duration::ZERO;
    loop {
        if let Ok(out) = tokio::time::timeout(stall, &mut step).await {
            return Ok(out);
        }
        waited += stall;
        let probing = probe();
        tokio::pin!(probing);
        tokio::select! {
            biased;
            out = &mut step => return Ok(out),
            liveness = &mut probing => {
                if liveness == Liveness::Dead {
                    return Err(CallError::Stalled { addr, after: waited });
                }
                tracing::debug!(%addr, ?waited, "a send is slow but the node answers; waiting");
            }
        }
    }
}

/// [`watch`] with the cluster's probe: the view's suspicion, then a `Ping` limited to the
/// stall time.
pub async fn guard<F: Future>(
    cluster: &Cluster,
    addr: SocketAddr,
    step: F,
) -> Result<F::Output, CallError> {
    let watched = watch(addr, cluster.stall_timeout, step, || probe(cluster, addr)).await;
    if let Err(CallError::Stalled { .. }) = &watched {
        cluster.mark_stalled(addr);
    }
    watched
}

/// Whether the node at `addr` is alive: not suspected by the view, and answering a ping
/// within the stall time.
pub async fn probe(cluster: &Cluster, addr: SocketAddr) -> Liveness {
    if cluster.suspects(addr) || cluster.stalled_lately(addr) {
        return Liveness::Dead;
    }
    match cluster
        .call_within(addr, &Request::Ping, cluster.stall_timeout)
        .await
    {
        Ok(Response::Pong(_)) | Err(CallError::Remote { .. }) => Liveness::Alive,
        Ok(_) | Err(_) => Liveness::Dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!())
    }

    const STALL: Duration = Duration::from_secs(2);

    #[tokio::test(start_paused = true)]
    async fn a_dead_node_is_given_up_after_two_stall_times() {
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<()>();
        let probe = || async {
            tokio::time::sleep(STALL).await;
            Liveness::Dead
        };
        let err = watch(addr(), STALL, never, probe).await.unwrap_err();
        assert!(matches!(err, CallError::Stalled { after, .. } if after == STALL));
        assert!(err.try_next(), "the next owner is tried");
        assert_eq!(started.elapsed(), STALL * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_node_that_answers_is_waited_for() {
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = probes.clone();
        let slow = async {
            tokio::time::sleep(STALL * 5).await;
            7
        };
        let probe = move || {
            counted.fetch_add(1, Ordering::Relaxed);
            async { Liveness::Alive }
        };
        assert_eq!(watch(addr(), STALL, slow, probe).await.unwrap(), 7);
        assert_eq!(
            probes.load(Ordering::Relaxed),
            4,
            "asked once per stall time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_that_ends_while_probing_wins() {
        let step = async {
            tokio::time::sleep(STALL + Duration::from_millis(10)).await;
            "done"
        };
        let probe = || async {
            tokio::time::sleep(STALL).await;
            Liveness::Dead
        };
        assert_eq!(watch(addr(), STALL, step, probe).await.unwrap(), "done");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_costs_no_probe() {
        let probe = || async { panic!("no probe while steps finish in time") };
        for _ in 0..10 {
            let step = tokio::time::sleep(STALL / 2);
            watch(addr(), STALL, step, probe).await.unwrap();
        }
    }
}
