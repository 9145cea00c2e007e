//! `GuardedTransport`: chitchat's UDP transport, with what it drops counted and logged at
//! most once per [`LOG_INTERVAL`] instead of once per datagram.
//!
//! Chitchat 0.13 decodes datagrams inside its private `UdpSocket::recv` and logs a WARN for
//! every one that does not decode (its codec is not public, so this crate cannot decode
//! them itself). The guarded socket polls chitchat's `recv` under a scoped tracing
//! dispatcher (`Capture`) that takes those events instead of the process's subscriber:
//! each is counted in [`GossipCounters`], and the socket logs a summary (how many, the last
//! sender and error) at most once per interval, in the span gossip was started in.
//!
//! Messages for another cluster are also handled here, before chitchat would log each one:
//! a `Syn` with another cluster id is answered "bad cluster" (as chitchat does), a "bad
//! cluster" answer is dropped; both are counted and logged at most once per interval.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::{ChitchatEnvelope, ChitchatMessage};
use tracing::field::{Field, Visit};
use tracing::instrument::WithSubscriber as _;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Span, span, warn};

use super::stats::{GossipCounters, LOG_INTERVAL, RateLimitedLog};

/// How often a socket that receives nothing valid still reports what it dropped.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Opens [`GuardedSocket`]s over chitchat's UDP transport.
pub(crate) struct GuardedTransport {
    pub(crate) cluster_id: String,
    pub(crate) counters: Arc<GossipCounters>,
}

#[async_trait]
impl Transport for GuardedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = UdpTransport.open(listen_addr).await?;
        let dropped = Arc::new(Mutex::new(Dropped::default()));
        let capture = Dispatch::new(Capture {
            counters: self.counters.clone(),
            dropped: dropped.clone(),
        });
        Ok(Box::new(GuardedSocket {
            inner,
            capture,
            dropped,
            cluster_id: self.cluster_id.clone(),
            counters: self.counters.clone(),
            log: RateLimitedLog::new(LOG_INTERVAL),
            span: Span::current(),
        }))
    }
}

/// What chitchat's `recv` dropped since the last report.
#[derive(Debug, Default)]
struct Dropped {
    garbage: u64,
    last_garbage: Option<(String, String)>,
    other: u64,
    last_other: Option<String>,
}

/// A chitchat socket whose drops are counted and reported at most once per interval.
struct GuardedSocket {
    inner: Box<dyn Socket>,
    capture: Dispatch,
    dropped: Arc<Mutex<Dropped>>,
    cluster_id: String,
    counters: Arc<GossipCounters>,
    log: RateLimitedLog<&'static str>,
    span: Span,
}

impl GuardedSocket {
    /// Logs what was dropped, if the interval allows; what it does not log stays pending
    /// and is reported (summed) by a later line.
    fn report(&mut self, now: Instant) {
        let mut dropped = self.dropped.lock().unwrap_or_else(PoisonError::into_inner);
        let _in_span = self.span.enter();
        if dropped.garbage > 0 && self.log.hit(now, &"garbage").is_some() {
            let (from, error) = dropped.last_garbage.take().unwrap_or_default();
            warn!(datagrams = dropped.garbage, last_from = %from, last_error = %error,
                "dropped gossip datagrams that are not chitchat messages (logged at most once a minute)");
            dropped.garbage = 0;
        }
        if dropped.other > 0 && self.log.hit(now, &"other").is_some() {
            let what = dropped.last_other.take().unwrap_or_default();
            warn!(events = dropped.other, last = %what,
                "gossip socket problems (logged at most once a minute)");
            dropped.other = 0;
        }
    }

    /// A message for another cluster: counted, logged at most once per interval.
    fn wrong_cluster(&mut self, from: SocketAddr, theirs: Option<&str>) {
        self.counters.wrong_cluster();
        let key = if theirs.is_some() {
            "syn-other-cluster"
        } else {
            "bad-cluster"
        };
        if let Some(suppressed) = self.log.hit(Instant::now(), &key) {
            let _in_span = self.span.enter();
            match theirs {
                Some(theirs) => {
                    let theirs: String = theirs.chars().take(64).collect();
                    warn!(%from, their_cluster = %theirs, ours = %self.cluster_id, suppressed,
                        "gossip from another cluster refused (logged at most once a minute)");
                }
                None => warn!(%from, ours = %self.cluster_id, suppressed,
                    "a gossip peer says we are of another cluster (logged at most once a minute)"),
            }
        }
    }
}

#[async_trait]
impl Socket for GuardedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.inner.send(to, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let outcome = {
                // Chitchat's recv is cancel-safe (a loop over `recv_from`).
                let recv = self.inner.recv().with_subscriber(self.capture.clone());
                tokio::select! {
                    r = recv => Some(r),
                    () = tokio::time::sleep(FLUSH_EVERY) => None,
                }
            };
            self.report(Instant::now());
            let Some(outcome) = outcome else {
                continue;
            };
            let outcome = outcome?;
            match &outcome.envelope.message {
                ChitchatMessage::Syn { cluster_id, .. } if *cluster_id != self.cluster_id => {
                    let theirs = cluster_id.clone();
                    self.wrong_cluster(outcome.from_addr, Some(&theirs));
                    let answer = ChitchatEnvelope {
                        version: outcome.envelope.version,
                        message: ChitchatMessage::BadCluster,
                    };
                    // As chitchat answers; a failed send only means they learn later.
                    let _ = self.inner.send(outcome.from_addr, answer).await;
                }
                ChitchatMessage::BadCluster => self.wrong_cluster(outcome.from_addr, None),
                _ => return Ok(outcome),
            }
        }
    }
}

/// The scoped subscriber under which chitchat's `recv` runs: takes its WARN and ERROR
/// events (each one a dropped datagram or a transient socket error), counts them, and
/// keeps the last for the report. Takes nothing else.
struct Capture {
    counters: Arc<GossipCounters>,
    dropped: Arc<Mutex<Dropped>>,
}

impl Capture {
    fn wanted(meta: &Metadata<'_>) -> bool {
        meta.is_event() && meta.target().starts_with("chitchat") && *meta.level() <= Level::WARN
    }
}

/// The fields of a chitchat event, as text.
#[derive(Default)]
struct Fields {
    message: String,
    from: String,
    err: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = || {
            let mut s = format!("{value:?}");
            s.truncate(200);
            s
        };
        match field.name() {
            "message" => self.message = text(),
            "from" => self.from = text(),
            "err" | "error" => self.err = text(),
            _ => {}
        }
    }
}

impl tracing::Subscriber for Capture {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if Capture::wanted(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        Capture::wanted(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut dropped = self.dropped.lock().unwrap_or_else(PoisonError::into_inner);
        if fields.message == "invalid-chitchat-payload" {
            self.counters.garbage();
            dropped.garbage += 1;
            dropped.last_garbage = Some((fields.from, fields.err));
        } else {
            dropped.other += 1;
            dropped.last_other = Some(format!("{} {}", fields.message, fields.err));
        }
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}
