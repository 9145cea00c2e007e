//! The proxy's side of repository links: recording them (blob uploads, manifest `PUT`s by
//! digest, mounts), cross-repository mounts, and deletion of manifests and blobs.
//!
//! Links live on the build-index (`crate::buildindex::digests`); every call here goes to
//! the digest's build-index owners in ring order, and the node that takes it fans out to
//! the other owners. A deletion removes the repository's link (and, for a manifest, the
//! repository's tags that point at it); when no repository links the digest any more it
//! is purged from the cluster at once ([`crate::purge`]). If the purge fails the link is
//! put back and the client is told to retry (503), so a failed delete can be repeated.

use std::time::Duration;

use kraken_membership::Role;
use kraken_registry_gateway::registry::RegistryError;
use kraken_storage::Digest;

use super::{ClusterRegistry, upstream_refusal};
use crate::client::CallError;
use crate::proto::{ErrorKind, Request, Response};

/// How long a link call may take (a manifest's closure is walked on the build-index).
const LINK_LIMIT: Duration = Duration::from_secs(120);

/// A failed build-index call as the gateway's error; `missing` is what a `NotFound` means.
fn link_error(e: CallError, missing: impl FnOnce(String) -> RegistryError) -> RegistryError {
    match e.remote() {
        Some(r) if let Some(refused) = upstream_refusal(r) => refused,
        Some(r) if r.kind == ErrorKind::NotFound => missing(r.message.clone()),
        _ => RegistryError::Unavailable(e.to_string()),
    }
}

impl ClusterRegistry {
    /// `request` about `digest` to its build-index owners, in ring order.
    async fn ask_digest_owners(
        &self,
        digest: &Digest,
        request: &Request,
        limit: Duration,
    ) -> Result<Response, CallError> {
        let owners = self.cluster.owners_of_digest(Role::BuildIndex, digest, 0);
        self.cluster
            .call_first(&owners, Role::BuildIndex, request, limit)
            .await
    }

    /// Links `digests` to `repo`.
    pub(super) async fn link(&self, repo: &str, digests: &[Digest]) -> Result<(), RegistryError> {
        let Some(first) = digests.first() else {
            return Ok(());
        };
        if self.cluster.view().ring(Role::BuildIndex).is_empty() {
            // A cluster without a build-index keeps no tags or links (and deletes nothing).
            return Ok(());
        }
        let request = Request::LinkBlobs {
            repo: repo.into(),
            digests: digests.to_vec(),
            replica: false,
        };
        match self.ask_digest_owners(first, &request, LINK_LIMIT).await {
            Ok(Response::Linked { .. }) => Ok(()),
            Ok(other) => Err(RegistryError::Internal(format!("{other:?}"))),
            Err(e) => Err(link_error(e, RegistryError::Unavailable)),
        }
    }

    /// Links manifest `digest` and its closure to `repo` (a manifest `PUT` by digest).
    pub(super) async fn link_closure(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        // Agents hold no links and delete nothing.
        self.pushing()?;
        let request = Request::LinkManifest {
            repo: repo.into(),
            digest: *digest,
        };
        match self.ask_digest_owners(digest, &request, LINK_LIMIT).await {
            Ok(Response::Linked { .. }) => Ok(()),
            Ok(other) => Err(RegistryError::Internal(format!("{other:?}"))),
            Err(e) => Err(link_error(e, RegistryError::ManifestBlobUnknown)),
        }
    }

    /// The repositories linking `digest` (the union over its live build-index owners).
    async fn linkers(&self, digest: &Digest) -> Result<Vec<String>, RegistryError> {
        let request = Request::Linkers {
            digest: *digest,
            gather: true,
        };
        let limit = self.cluster.call_timeout;
        match self.ask_digest_owners(digest, &request, limit).await {
            Ok(Response::Linkers(repos)) => Ok(repos),
            Ok(other) => Err(RegistryError::Internal(format!("{other:?}"))),
            Err(e) => Err(link_error(e, RegistryError::Unavailable)),
        }
    }

    /// A mount: `from` must link the blob; then `repo` links it too.
    pub(super) async fn mount(
        &self,
        repo: &str,
        from: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        // Agents hold no links and delete nothing.
        self.pushing()?;
        if !self.linkers(digest).await?.iter().any(|r| r == from) {
            return Ok(false);
        }
        self.link(repo, &[*digest]).await?;
        Ok(true)
    }

    /// Deletes `digest` from `repo`: with `manifest`, the repository's tags pointing at
    /// it first. `unknown` is the error for a repository that does not link it.
    pub(super) async fn delete_digest(
        &self,
        repo: &str,
        digest: &Digest,
        manifest: bool,
        unknown: RegistryError,
    ) -> Result<(), RegistryError> {
        // Agents hold no links and delete nothing.
        self.pushing()?;
        if !self.linkers(digest).await?.iter().any(|r| r == repo) {
            // Unlinking nothing still tells a mirror's repository apart: 403 `DENIED`.
            self.unlink(repo, digest).await?;
            return Err(unknown);
        }
        if manifest {
            self.delete_tags_pointing_at(repo, digest).await?;
            // REFERRERS (i23-spec): when the manifest has a `subject`, remove its entry
            // from the build-index referrers table here (`Request::DeleteReferrer`).
        }
        let remaining = self.unlink(repo, digest).await?;
        if !remaining.is_empty() {
            tracing::info!(%repo, %digest, ?remaining, "unlinked; other repositories keep it");
            return Ok(());
        }
        if let Err(e) = crate::purge::purge(&self.cluster, digest, None).await {
            // Put the link back, so the client's retry finds something to delete.
            let relinked = self.link(repo, &[*digest]).await;
            tracing::warn!(%repo, %digest, error = %e, ?relinked, "purge failed; link restored");
            return Err(RegistryError::Unavailable(e.to_string()));
        }
        Ok(())
    }

    /// Removes `repo`'s link to `digest`; returns the repositories that still link it.
    async fn unlink(&self, repo: &str, digest: &Digest) -> Result<Vec<String>, RegistryError> {
        let request = Request::UnlinkBlob {
            repo: repo.into(),
            digest: *digest,
            replica: false,
        };
        let limit = self.cluster.call_timeout;
        match self.ask_digest_owners(digest, &request, limit).await {
            Ok(Response::Unlinked { remaining, .. }) => Ok(remaining),
            Ok(other) => Err(RegistryError::Internal(format!("{other:?}"))),
            Err(e) => Err(link_error(e, RegistryError::Unavailable)),
        }
    }

    /// Deletes every tag of `repo` that points at `digest`.
    async fn delete_tags_pointing_at(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        use kraken_registry_gateway::registry::Registry;
        let mut after: Option<String> = None;
        loop {
            let page = match self.list_tags(repo, after.as_deref(), 1000).await {
                Ok(page) => page,
                Err(RegistryError::NameUnknown(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            for tag in &page.names {
                match self.cluster_tag(repo, tag).await {
                    Ok(d) if d == *digest => match self.delete_tag(repo, tag).await {
                        Ok(()) | Err(RegistryError::TagUnknown(_)) => {}
                        Err(e) => return Err(e),
                    },
                    Ok(_) | Err(RegistryError::TagUnknown(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if !page.more {
                return Ok(());
            }
            after = page.names.last().cloned();
        }
    }
}
