//! Tags of repositories that mirror an upstream registry (their route's backend is a
//! `registry`, read-only): the upstream is their source of truth, the tag table a cache.
//!
//! `GetTag` answers from the table while the tag is fresh ([`tagcache`]); otherwise it asks
//! the upstream (`HEAD` first, in the backend), once however many callers ask at once
//! ([`Flights`]). The upstream's answer is stored in the table (a new row of history only
//! when the digest changed) and confirmed in memory; a tag the upstream does not have is
//! removed and answered `NotFound`. A new or moved digest is then read through into its
//! owning origins in the background (an origin metainfo request with the repository as
//! namespace), so the manifest is held like a pushed one.
//!
//! When the upstream fails in a way worth retrying (down, unreachable, rate-limited), the
//! last known digest is answered while it is younger than the route's `tag_stale_secs`,
//! with one warning per tag per outage; otherwise the failure is the answer, the upstream's
//! refusals keeping their meaning ([`crate::mirror::backend_error`]).
//!
//! [`tagcache`]: super::tagcache

use std::sync::{Arc, Mutex, PoisonError};

use kraken_storage::Digest;
use kraken_storage::backend::{Backend, BackendError, RegistryStore};
use kraken_storage::time::now_ms;

use super::store::TagEntry;
use super::tagcache::{Fallback, TagCache, Ttl};
use super::{BuildIndex, internal};
use crate::fetch::origin_metainfo;
use crate::flight::Flights;
use crate::mirror::backend_error;
use crate::proto::{ErrorKind, RemoteError, Response};

/// What one upstream lookup found: the digest, none (no such tag), or why it failed.
type Asked = Result<Option<Digest>, Failure>;

/// Why a lookup failed (cheap to clone: every caller of the flight gets it).
#[derive(Debug, Clone)]
enum Failure {
    /// The upstream failed or refused.
    Upstream(Arc<BackendError>),
    /// This node failed (its tag table).
    Local(RemoteError),
}

/// A build-index's state for upstream tags: the cache policy's memory and the lookups in
/// flight.
#[derive(Default)]
pub(super) struct UpstreamTags {
    cache: Mutex<TagCache>,
    flights: Arc<Flights<(String, String), Asked>>,
}

/// What a caller answers, once the upstream was asked (or not).
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The digest the table now holds.
    Found(Digest),
    /// The last known digest, the upstream failing; `warn` for the first of an outage.
    Stale {
        digest: Digest,
        age_ms: u64,
        warn: bool,
    },
    /// The error to answer.
    Failed(RemoteError),
}

impl UpstreamTags {
    fn cache(&self) -> std::sync::MutexGuard<'_, TagCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the lookup `asked` means for a caller whose table held `local` (read before
    /// the lookup; the lookup itself stored a found digest). Pure but for the cache.
    fn answer(
        &self,
        (repo, tag): (&str, &str),
        asked: &Asked,
        local: Option<&TagEntry>,
        now_ms: u64,
        ttl: Ttl,
    ) -> Answer {
        match asked {
            Ok(Some(digest)) => Answer::Found(*digest),
            Ok(None) => Answer::Failed(RemoteError::new(
                ErrorKind::NotFound,
                format!("tag {repo}:{tag} is unknown upstream"),
            )),
            Err(Failure::Upstream(e)) if e.is_retryable() => {
                let stored_ms = local.map(|l| l.updated_ms);
                match (
                    self.cache().on_failure(repo, tag, stored_ms, now_ms, ttl),
                    local,
                ) {
                    (Fallback::Stale { age_ms, warn }, Some(local)) => Answer::Stale {
                        digest: local.digest,
                        age_ms,
                        warn,
                    },
                    _ => Answer::Failed(backend_error(e)),
                }
            }
            Err(Failure::Upstream(e)) => Answer::Failed(backend_error(e)),
            Err(Failure::Local(e)) => Answer::Failed(e.clone()),
        }
    }
}

impl BuildIndex {
    /// `GetTag` of `repo:tag`, whose route is the upstream `backend`; see the module docs.
    pub(super) async fn upstream_tag(
        &self,
        repo: &str,
        tag: &str,
        backend: &Backend,
        upstream: &RegistryStore,
    ) -> Result<Response, RemoteError> {
        let ttl = Ttl::from_secs(upstream.tag_cache_secs(), upstream.tag_stale_secs());
        let tags = &self.inner.upstream;
        let local = self.inner.store.get(repo, tag).map_err(internal)?;
        if let Some(l) = &local
            && tags
                .cache()
                .is_fresh(repo, tag, Some(l.updated_ms), now_ms(), ttl)
        {
            return Ok(Response::Tag {
                digest: l.digest,
                updated_ms: l.updated_ms,
            });
        }
        let (bi, backend) = (self.clone(), backend.clone());
        let (r, t) = (repo.to_string(), tag.to_string());
        let asked = tags
            .flights
            .run((r.clone(), t.clone()), move || async move {
                bi.ask_upstream(&backend, &r, &t).await
            })
            .await
            .unwrap_or_else(|| {
                Err(Failure::Local(internal(
                    "the upstream lookup ended without an outcome",
                )))
            });
        match tags.answer((repo, tag), &asked, local.as_ref(), now_ms(), ttl) {
            Answer::Found(digest) => {
                let stored = self.inner.store.get(repo, tag).map_err(internal)?;
                Ok(Response::Tag {
                    digest,
                    updated_ms: stored.map_or(0, |e| e.updated_ms),
                })
            }
            Answer::Stale {
                digest,
                age_ms,
                warn,
            } => {
                if warn && let Err(Failure::Upstream(e)) = &asked {
                    tracing::warn!(%repo, %tag, %digest, age_secs = age_ms / 1000,
                        error = %e, "upstream unavailable: answering the last known digest");
                }
                Ok(Response::Tag {
                    digest,
                    updated_ms: local.map_or(0, |l| l.updated_ms),
                })
            }
            Answer::Failed(e) => Err(e),
        }
    }

    /// One lookup (the flight's): asks the upstream and records its answer in the table
    /// and the cache; a new or moved digest is read through into the origins.
    async fn ask_upstream(&self, backend: &Backend, repo: &str, tag: &str) -> Asked {
        let found = backend
            .get_tag(repo, tag)
            .await
            .map_err(|e| Failure::Upstream(Arc::new(e)))?;
        let store = &self.inner.store;
        let local = |e| Failure::Local(internal(e));
        let Some(digest) = found else {
            self.inner.upstream.cache().forget(repo, tag);
            if store.get(repo, tag).map_err(local)?.is_some() {
                store.delete(repo, tag).map_err(local)?;
                tracing::info!(%repo, %tag, "tag removed upstream; removed here");
            }
            return Ok(None);
        };
        let changed = store.put(repo, tag, &digest).map_err(local)?;
        if self.inner.upstream.cache().confirmed(repo, tag, now_ms()) {
            tracing::info!(%repo, %tag, "upstream answers again");
        }
        if changed {
            tracing::info!(%repo, %tag, %digest, "tag resolved upstream");
            self.hold_in_origins(repo, digest);
        }
        Ok(Some(digest))
    }

    /// Makes the digest's owning origins read it through from the upstream (in the
    /// background: the caller's pull asks them for it anyway, and they fetch it once).
    fn hold_in_origins(&self, repo: &str, digest: Digest) {
        let (cluster, repo) = (self.inner.cluster.clone(), repo.to_string());
        crate::spawn(async move {
            if let Err(e) = origin_metainfo(&cluster, &repo, &digest).await {
                tracing::warn!(%repo, %digest, error = %e,
                    "the origins could not read an upstream tag's manifest through");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Ttl = Ttl {
        cache_ms: 1_000,
        stale_ms: 10_000,
    };

    fn entry(digest: Digest, updated_ms: u64) -> TagEntry {
        TagEntry { digest, updated_ms }
    }

    fn upstream(e: BackendError) -> Asked {
        Err(Failure::Upstream(Arc::new(e)))
    }

    #[test]
    fn answers_follow_the_upstream_and_fall_back_only_on_retryable_failures() {
        let tags = UpstreamTags::default();
        let key = ("docker.io/library/x", "latest");
        let (old, new) = (Digest::sha256_of(b"old"), Digest::sha256_of(b"new"));
        let local = entry(old, 100);
        assert_eq!(
            tags.answer(key, &Ok(Some(new)), Some(&local), 200, TTL),
            Answer::Found(new)
        );
        match tags.answer(key, &Ok(None), Some(&local), 200, TTL) {
            Answer::Failed(e) => assert_eq!(e.kind, ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        // Rate-limited or down: the last digest, warned once.
        let limited = upstream(BackendError::UpstreamTooManyRequests {
            backend: "hub".into(),
            message: "slow down".into(),
        });
        assert_eq!(
            tags.answer(key, &limited, Some(&local), 5_100, TTL),
            Answer::Stale {
                digest: old,
                age_ms: 5_000,
                warn: true
            }
        );
        assert!(matches!(
            tags.answer(key, &limited, Some(&local), 5_200, TTL),
            Answer::Stale { warn: false, .. }
        ));
        // Too stale, or nothing known: the upstream's refusal, with its message.
        match tags.answer(key, &limited, Some(&local), 10_100, TTL) {
            Answer::Failed(e) => {
                assert_eq!(e, RemoteError::new(ErrorKind::TooManyRequests, "slow down"));
            }
            other => panic!("{other:?}"),
        }
        match tags.answer(("r", "t"), &limited, None, 200, TTL) {
            Answer::Failed(e) => assert_eq!(e.kind, ErrorKind::TooManyRequests),
            other => panic!("{other:?}"),
        }
        // A refusal that retrying does not fix is never papered over.
        let refused = upstream(BackendError::UpstreamUnauthorized {
            backend: "hub".into(),
            message: "incorrect username or password".into(),
        });
        match tags.answer(key, &refused, Some(&local), 5_300, TTL) {
            Answer::Failed(e) => assert_eq!(
                e,
                RemoteError::new(ErrorKind::Unauthorized, "incorrect username or password")
            ),
            other => panic!("{other:?}"),
        }
        let unknown = upstream(BackendError::UpstreamNameUnknown {
            backend: "hub".into(),
            repository: "library/x".into(),
            message: "repository name not known to registry".into(),
        });
        match tags.answer(key, &unknown, Some(&local), 5_300, TTL) {
            Answer::Failed(e) => assert_eq!(e.kind, ErrorKind::NameUnknown),
            other => panic!("{other:?}"),
        }
        let local_failure = Err(Failure::Local(internal("disk")));
        match tags.answer(key, &local_failure, Some(&local), 5_300, TTL) {
            Answer::Failed(e) => assert_eq!(e.kind, ErrorKind::Internal),
            other => panic!("{other:?}"),
        }
    }
}
