//! Asking for a blob's metainfo: of its trackers (agents, before a pull) or of its origin
//! owners (the proxy, the build-index, `krakenctl pull` to start a read-through).
//!
//! An owner that lacks the blob reads it through from its backend and holds the call open
//! for a while; if that is not enough it answers [`Response::Pending`] and is asked again,
//! until a deadline. Every answer is decoded and must describe the digest asked for: a
//! metainfo names the pieces every later byte is checked against.

use std::time::{Duration, Instant};

use kraken_membership::Role;
use kraken_storage::{Digest, Metainfo};

use crate::cluster::{CallError, Cluster};
use crate::proto::{RemoteError, Request, Response};

/// Longest a metainfo is waited for when the caller has no deadline of its own: a
/// read-through of a very large blob from a slow backend.
pub const METAINFO_DEADLINE: Duration = Duration::from_secs(600);

/// Longest one call to a tracker may take: it may hold the call while an origin reads the
/// blob through.
const TRACKER_CALL_LIMIT: Duration = Duration::from_secs(60);

/// Why no metainfo came back.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoQueryError {
    /// The last owner asked failed, or answered with an error (or with something else).
    /// Boxed: the other variants are much smaller.
    #[error(transparent)]
    Call(Box<CallError>),
    /// The owners were still reading the blob through at the deadline.
    #[error("{digest} was still being read through from a backend after {after:?}")]
    StillPending {
        /// The blob.
        digest: Digest,
        /// How long it was waited for.
        after: Duration,
    },
    /// The answer is not a metainfo.
    #[error("bad metainfo for {digest}: {source}")]
    Decode {
        /// The blob.
        digest: Digest,
        /// Why.
        source: kraken_storage::MetainfoError,
    },
    /// The answer describes another blob.
    #[error("asked for the metainfo of {digest}, got that of {got}")]
    WrongDigest {
        /// The blob asked for.
        digest: Digest,
        /// The blob described.
        got: Digest,
    },
}

impl From<CallError> for MetainfoQueryError {
    fn from(e: CallError) -> Self {
        MetainfoQueryError::Call(Box::new(e))
    }
}

impl MetainfoQueryError {
    /// The owner's error answer, if it gave one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            MetainfoQueryError::Call(e) => e.remote(),
            _ => None,
        }
    }
}

/// A metainfo request and whom it goes to; [`Self::run`] asks.
#[derive(Debug, Clone)]
pub struct MetainfoQuery {
    digest: Digest,
    role: Role,
    replicas: usize,
    request: Request,
    call_limit: Duration,
}

impl MetainfoQuery {
    /// Ask the digest's trackers (all of the ring, in failover order); they ask the owning
    /// origins and cache the answer.
    pub fn trackers(namespace: &str, digest: &Digest) -> Self {
        MetainfoQuery {
            digest: *digest,
            role: Role::Tracker,
            replicas: 0,
            request: Request::Metainfo {
                namespace: namespace.to_string(),
                digest: *digest,
            },
            call_limit: TRACKER_CALL_LIMIT,
        }
    }

    /// Ask the digest's first `replicas` origin owners (0: every origin, in failover
    /// order). An owner that lacks the blob reads it through from the backend that
    /// `namespace` routes to, holding the call up to `wait`; `call_timeout` is added to
    /// that for the call itself.
    pub fn origins(
        namespace: &str,
        digest: &Digest,
        replicas: usize,
        wait: Duration,
        call_timeout: Duration,
    ) -> Self {
        MetainfoQuery {
            digest: *digest,
            role: Role::Origin,
            replicas,
            request: Request::OriginMetainfo {
                namespace: namespace.to_string(),
                digest: *digest,
                wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            },
            call_limit: wait + call_timeout,
        }
    }

    /// Asks the owners in ring order until one answers, and again on
    /// [`Response::Pending`] until `deadline` passes. Owners are looked up afresh each
    /// round, so a view that changed meanwhile is followed.
    pub async fn run(
        &self,
        cluster: &Cluster,
        deadline: Instant,
    ) -> Result<Metainfo, MetainfoQueryError> {
        let started = Instant::now();
        let digest = self.digest;
        loop {
            let owners = cluster.owners_of_digest(self.role, &digest, self.replicas);
            let answer = cluster
                .call_first(&owners, self.role, &self.request, self.call_limit)
                .await?;
            match answer {
                Response::Metainfo(bytes) => return self.check(&bytes),
                Response::Pending if Instant::now() < deadline => {}
                Response::Pending => {
                    return Err(MetainfoQueryError::StillPending {
                        digest,
                        after: started.elapsed(),
                    });
                }
                other => {
                    // `call_first` answered, so there was an owner; it does not say which.
                    let addr = owners.first().map(|m| m.quic_addr);
                    return Err(match addr {
                        Some(addr) => CallError::unexpected(addr, other).into(),
                        None => CallError::NoOwners(self.role.as_str()).into(),
                    });
                }
            }
        }
    }

    fn check(&self, bytes: &[u8]) -> Result<Metainfo, MetainfoQueryError> {
        let digest = self.digest;
        let metainfo = Metainfo::decode(bytes)
            .map_err(|source| MetainfoQueryError::Decode { digest, source })?;
        if *metainfo.digest() != digest {
            return Err(MetainfoQueryError::WrongDigest {
                digest,
                got: *metainfo.digest(),
            });
        }
        Ok(metainfo)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use kraken_storage::PieceHasher;

    use super::*;
    use crate::proto::ErrorKind;
    use crate::testing::node;

    fn metainfo_of(bytes: &[u8]) -> Metainfo {
        let mut hasher = PieceHasher::new(16 * 1024);
        hasher.update(bytes);
        hasher.finish(Digest::sha256_of(bytes)).unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    fn query(role: Role, digest: &Digest) -> MetainfoQuery {
        match role {
            Role::Tracker => MetainfoQuery::trackers("ns", digest),
            _ => MetainfoQuery::origins("ns", digest, 0, Duration::ZERO, Duration::from_secs(5)),
        }
    }

    #[tokio::test]
    async fn pending_is_asked_again_until_the_metainfo_comes() {
        let meta = metainfo_of(b"blob");
        let encoded = meta.encode();
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let n = node(&[Role::Origin, Role::Tracker], move |_| {
            let answer = match count.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Response::Pending,
                _ => Response::Metainfo(encoded.clone()),
            };
            (answer, Bytes::new())
        });
        for role in [Role::Origin, Role::Tracker] {
            asked.store(0, Ordering::SeqCst);
            let got = query(role, meta.digest()).run(&n.cluster, soon()).await;
            assert_eq!(got.unwrap().id(), meta.id());
            assert_eq!(asked.load(Ordering::SeqCst), 3);
        }
    }

    #[tokio::test]
    async fn pending_past_the_deadline_gives_up() {
        let n = node(&[Role::Tracker], |_| (Response::Pending, Bytes::new()));
        let digest = Digest::sha256_of(b"blob");
        let e = query(Role::Tracker, &digest)
            .run(&n.cluster, Instant::now())
            .await;
        assert!(
            matches!(e, Err(MetainfoQueryError::StillPending { .. })),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn answers_must_describe_the_digest_asked_for() {
        let other = metainfo_of(b"another blob").encode();
        let n = node(&[Role::Tracker], move |request| match request {
            Request::Metainfo { namespace, .. } if namespace == "garbage" => {
                (Response::Metainfo(vec![1, 2, 3]), Bytes::new())
            }
            _ => (Response::Metainfo(other.clone()), Bytes::new()),
        });
        let digest = Digest::sha256_of(b"blob");
        let e = query(Role::Tracker, &digest).run(&n.cluster, soon()).await;
        assert!(
            matches!(e, Err(MetainfoQueryError::WrongDigest { .. })),
            "{e:?}"
        );
        let garbage = MetainfoQuery::trackers("garbage", &digest);
        let e = garbage.run(&n.cluster, soon()).await;
        assert!(matches!(e, Err(MetainfoQueryError::Decode { .. })), "{e:?}");
    }

    #[tokio::test]
    async fn error_answers_reach_the_caller_typed() {
        let n = node(&[Role::Origin], |_| {
            let e = RemoteError::new(ErrorKind::NotFound, "no such blob in the backend");
            (Response::Error(e), Bytes::new())
        });
        let digest = Digest::sha256_of(b"blob");
        let e = query(Role::Origin, &digest)
            .run(&n.cluster, soon())
            .await
            .unwrap_err();
        assert_eq!(e.remote().map(|r| r.kind), Some(ErrorKind::NotFound));
        // No tracker in the view at all.
        let e = query(Role::Tracker, &digest)
            .run(&n.cluster, soon())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, MetainfoQueryError::Call(c) if matches!(**c, CallError::NoOwners(_))),
            "{e}"
        );
    }
}
