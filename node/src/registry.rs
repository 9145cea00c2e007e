//! The cluster behind the registry gateway: `kraken_registry_gateway::registry::Registry`
//! implemented with QUIC calls.
//!
//! - On an **agent** ([`ClusterRegistry::agent`]), blobs and manifests come from the agent's
//!   P2P download and stream to the client as verified pieces arrive; tags resolve through
//!   the build-index. A pull by digest never touches the build-index, so it works while the
//!   build-index is unreachable.
//! - On a **proxy** ([`ClusterRegistry::proxy`]), blobs go to (and are read from) the
//!   owning origins (writes through [`crate::push`]: streamed into the origin's store, which
//!   verifies them), and tags go to the build-index, which checks that every blob a
//!   manifest references exists.
//!
//! Repository links, mounts and deletion: [`links`].
//!
//! Tag listings and the catalog are gathered from every live build-index node and merged
//! (each node holds the tags it owns), so they are complete however large the ring.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use kraken_client::download::Download;
use kraken_membership::Role;
use kraken_registry_gateway::registry::{
    BlobBody, ByteRange, LocalBlob, Page, Registry, RegistryError, StageChunks, StagedUpload,
    UploadBody, resolve_range,
};
use kraken_storage::cas::CasError;
use kraken_storage::{Digest, Metainfo};

use crate::agent::Agent;
use crate::buildindex::owners_of_tag;
use crate::client::{CallError, Cluster};
use crate::fetch::origin_metainfo;
use crate::proto::{ErrorKind, RemoteError, Request, Response};
use crate::upstream::Upstreams;

mod links;

/// The registry of an agent or a proxy.
#[derive(Clone)]
pub struct ClusterRegistry {
    cluster: Cluster,
    agent: Option<Agent>,
    upstreams: Option<Upstreams>,
    /// Where a streamed push spills what it took, to move to another owner mid-body.
    spill_dir: Option<PathBuf>,
}

impl ClusterRegistry {
    /// Pulls through `agent`'s P2P downloads.
    pub fn agent(agent: Agent, cluster: Cluster) -> Self {
        ClusterRegistry {
            cluster,
            agent: Some(agent),
            upstreams: None,
            spill_dir: None,
        }
    }

    /// Falls back to `upstreams` for repositories they route, when the cluster lacks a
    /// tag or blob.
    pub fn with_upstreams(mut self, upstreams: Upstreams) -> Self {
        self.upstreams = Some(upstreams);
        self
    }

    /// The upstreams, if pass-through is configured for `repo`.
    fn upstream(&self, repo: &str) -> Option<&Upstreams> {
        self.upstreams.as_ref().filter(|u| u.route(repo).is_some())
    }

    /// Pushes to (and reads from) the origins directly.
    pub fn proxy(cluster: Cluster) -> Self {
        ClusterRegistry {
            cluster,
            agent: None,
            upstreams: None,
            spill_dir: None,
        }
    }

    /// Spills streamed pushes into `dir` (the proxy's uploads directory) so that they
    /// survive an owner failing mid-body ([`crate::push::put_stream`]).
    pub fn with_spill_dir(mut self, dir: PathBuf) -> Self {
        self.spill_dir = Some(dir);
        self
    }

    /// The blob's metainfo: the agent's (local, or from the tracker) or the origins'.
    async fn metainfo(&self, repo: &str, digest: &Digest) -> Result<Metainfo, RegistryError> {
        if let Some(agent) = &self.agent {
            return agent
                .metainfo(repo, digest)
                .await
                .map_err(|e| blob_error(e, digest));
        }
        origin_metainfo(&self.cluster, repo, digest)
            .await
            .map_err(|e| blob_error(e, digest))
    }

    /// Every live build-index node (tags are spread over them by owner).
    fn build_index_nodes(&self) -> Vec<std::net::SocketAddr> {
        self.cluster.live_addrs(Role::BuildIndex)
    }

    /// Asks every build-index node for a page and merges them; the flag says whether any
    /// node answered with a list (an empty one included) rather than `NotFound`.
    async fn gather(
        &self,
        make: impl Fn(u32) -> Request,
        limit: usize,
    ) -> Result<(Page, bool), RegistryError> {
        let nodes = self.build_index_nodes();
        if nodes.is_empty() {
            return Err(RegistryError::Unavailable(
                "no live build-index node".into(),
            ));
        }
        let ask = u32::try_from(limit.saturating_add(1)).unwrap_or(u32::MAX);
        let answers = futures::future::join_all(nodes.iter().map(|addr| {
            let request = make(ask);
            async move { self.cluster.call(*addr, &request).await }
        }))
        .await;
        let mut all = BTreeSet::new();
        let mut reached = 0;
        let mut listed = false;
        let mut last_error = None;
        for a in answers {
            match a {
                Ok(Response::Names { names, .. }) => {
                    reached += 1;
                    listed = true;
                    all.extend(names);
                }
                Ok(other) => last_error = Some(RegistryError::Internal(format!("{other:?}"))),
                Err(e) => match e.remote() {
                    // A node that holds none of this repository's tags.
                    Some(r) if r.kind == ErrorKind::NotFound => reached += 1,
                    _ => last_error = Some(RegistryError::Unavailable(e.to_string())),
                },
            }
        }
        if reached == 0 {
            return Err(
                last_error.unwrap_or_else(|| RegistryError::Unavailable("no answer".into()))
            );
        }
        let more = all.len() > limit;
        let page = Page {
            names: all.into_iter().take(limit).collect(),
            more,
        };
        Ok((page, listed))
    }

    /// `range` of the blob from its origins, in ring order, as it arrives. A whole blob is
    /// checked against its digest before its last bytes go out (see
    /// `kraken_client::download`).
    async fn origin_stream(
        &self,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<kraken_registry_gateway::registry::ByteStream, RegistryError> {
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        let owners = self.cluster.owners_of_digest(Role::Origin, digest, 0);
        let mut last = RegistryError::Unavailable("no live origin".into());
        for owner in owners {
            let download =
                Download::open(&self.cluster, owner.quic_addr, digest, Some(range.clone()));
            match download.await {
                Ok(download) => {
                    let stream = download.into_stream();
                    return Ok(stream
                        .map(|r| r.map_err(|e| RegistryError::Unavailable(e.to_string())))
                        .boxed());
                }
                Err(e) => {
                    last = match e.remote() {
                        Some(r) if let Some(refused) = upstream_refusal(r) => refused,
                        Some(r) if r.kind == ErrorKind::NotFound => {
                            RegistryError::BlobUnknown(digest.to_string())
                        }
                        _ => RegistryError::Unavailable(e.to_string()),
                    };
                }
            }
        }
        Err(last)
    }
}

impl ClusterRegistry {
    /// Refuses blob pushes on an agent.
    fn pushing(&self) -> Result<(), RegistryError> {
        match self.agent {
            Some(_) => Err(RegistryError::Unsupported(
                "agents do not accept pushes".into(),
            )),
            None => Ok(()),
        }
    }
}

/// What a refusal that came from an upstream registry (or a write to a mirror of one)
/// means to the gateway, with the upstream's message: 401 `UNAUTHORIZED`, 404
/// `NAME_UNKNOWN`, 429 `TOOMANYREQUESTS`, 403 `DENIED`. `None` for every other kind.
pub(crate) fn upstream_refusal(e: &RemoteError) -> Option<RegistryError> {
    let message = e.message.clone();
    Some(match e.kind {
        ErrorKind::Unauthorized => RegistryError::Unauthorized(message),
        ErrorKind::NameUnknown => RegistryError::NameUnknown(message),
        ErrorKind::TooManyRequests => RegistryError::TooManyRequests(message),
        ErrorKind::Denied => RegistryError::Denied(message),
        _ => return None,
    })
}

fn blob_error(e: RemoteError, digest: &Digest) -> RegistryError {
    if let Some(refused) = upstream_refusal(&e) {
        return refused;
    }
    match e.kind {
        ErrorKind::NotFound => RegistryError::BlobUnknown(digest.to_string()),
        ErrorKind::DigestMismatch => RegistryError::DigestInvalid(e.message),
        ErrorKind::BadRequest => RegistryError::Internal(e.message),
        ErrorKind::Unavailable | ErrorKind::WrongNode => RegistryError::Unavailable(e.message),
        _ => RegistryError::Internal(e.message),
    }
}

fn tag_error(e: CallError, repo: &str, tag: &str) -> RegistryError {
    if let Some(refused) = e.remote().and_then(upstream_refusal) {
        return refused;
    }
    match e.remote() {
        Some(r) if r.kind == ErrorKind::NotFound => {
            RegistryError::TagUnknown(format!("{repo}:{tag}"))
        }
        Some(r) if r.kind == ErrorKind::BadRequest => RegistryError::Internal(r.message.clone()),
        _ => RegistryError::Unavailable(e.to_string()),
    }
}

impl ClusterRegistry {
    /// Sends a tag request to the tag's build-index owners, in ring order.
    async fn ask_build_index(
        &self,
        repo: &str,
        tag: &str,
        request: &Request,
        limit: Duration,
    ) -> Result<Response, CallError> {
        let owners = owners_of_tag(&self.cluster, repo, tag, 0);
        self.cluster
            .call_first(&owners, Role::BuildIndex, request, limit)
            .await
    }

    /// The tag as the build-index has it.
    async fn cluster_tag(&self, repo: &str, tag: &str) -> Result<Digest, RegistryError> {
        let request = Request::GetTag {
            repo: repo.into(),
            tag: tag.into(),
        };
        match self
            .ask_build_index(repo, tag, &request, self.cluster.call_timeout)
            .await
        {
            Ok(Response::Tag { digest, .. }) => Ok(digest),
            Ok(other) => Err(RegistryError::Internal(format!("{other:?}"))),
            Err(CallError::NoOwners(_)) => Err(RegistryError::Unavailable(
                "no live build-index node".into(),
            )),
            Err(e) => Err(tag_error(e, repo, tag)),
        }
    }

    /// The blob from the cluster (the agent's download, or the origins), with `range`
    /// resolved against its length once the blob is found: one metainfo lookup at most
    /// (none on an agent that holds the blob or is downloading it already).
    async fn cluster_read(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobBody, RegistryError> {
        if let Some(agent) = &self.agent {
            let watch = agent
                .stream(repo, digest)
                .await
                .map_err(|e| blob_error(e, digest))?;
            let total = watch.metainfo().length();
            let range = resolve_range(range, total)?;
            let stream = crate::agent::read_range(watch, range.clone())
                .map(|r| r.map_err(|e| RegistryError::Unavailable(e.message)))
                .boxed();
            return Ok(BlobBody {
                total,
                range,
                stream,
            });
        }
        let total = self.metainfo(repo, digest).await?.length();
        let range = resolve_range(range, total)?;
        let stream = self.origin_stream(digest, range.clone()).await?;
        Ok(BlobBody {
            total,
            range,
            stream,
        })
    }
}

impl Registry for ClusterRegistry {
    async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Digest, RegistryError> {
        match self.cluster_tag(repo, tag).await {
            Err(RegistryError::TagUnknown(_) | RegistryError::Unavailable(_))
                if let Some(u) = self.upstream(repo) =>
            {
                u.resolve_tag(repo, tag).await
            }
            other => other,
        }
    }

    async fn stat_blob(&self, repo: &str, digest: &Digest) -> Result<u64, RegistryError> {
        match self.metainfo(repo, digest).await {
            Ok(m) => Ok(m.length()),
            Err(RegistryError::BlobUnknown(_)) if let Some(u) = self.upstream(repo) => {
                u.stat(repo, digest).await
            }
            Err(e) => Err(e),
        }
    }

    async fn read_blob(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobBody, RegistryError> {
        match self.cluster_read(repo, digest, range).await {
            Err(RegistryError::BlobUnknown(_)) if let Some(u) = self.upstream(repo) => {
                u.read(repo, digest, range).await
            }
            other => other,
        }
    }

    /// Agents: whether their store holds the blob complete. Proxies hold nothing.
    async fn holds_local_blob(&self, digest: &Digest) -> bool {
        self.agent
            .as_ref()
            .is_some_and(|a| a.cas().contains(digest).unwrap_or(false))
    }

    /// Agents: the blob if their store holds it complete and it still matches its digest
    /// ([`crate::agent::Agent::verify_local`]), held open (the store neither evicts nor
    /// deletes it meanwhile), counted as a pull of a local blob. Proxies hold nothing.
    async fn local_blob(&self, digest: &Digest) -> Option<LocalBlob> {
        let agent = self.agent.as_ref()?;
        // A corrupt copy is evicted here; the blob server then sends the client back to
        // the registry API, which downloads a fresh one.
        if !agent.verify_local(digest).await {
            return None;
        }
        let reader = match agent.cas().reader(digest) {
            Ok(reader) => reader,
            Err(CasError::NotFound(_)) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a local blob; streaming it instead");
                return None;
            }
        };
        let file = reader.file().try_clone().ok()?;
        agent.served_locally(digest);
        Some(LocalBlob::new(file, reader.len(), reader))
    }

    async fn list_tags(
        &self,
        repo: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, RegistryError> {
        let (page, listed) = self
            .gather(
                |n| Request::ListTags {
                    repo: repo.into(),
                    after: after.map(Into::into),
                    limit: n,
                },
                limit,
            )
            .await?;
        // Every node said `NotFound`: no such repository (one whose tags were all deleted
        // answers an empty list).
        if !listed && after.is_none() {
            return Err(RegistryError::NameUnknown(repo.to_string()));
        }
        Ok(page)
    }

    async fn catalog(&self, after: Option<&str>, limit: usize) -> Result<Page, RegistryError> {
        self.gather(
            |n| Request::ListRepos {
                after: after.map(Into::into),
                limit: n,
            },
            limit,
        )
        .await
        .map(|(page, _)| page)
    }

    async fn put_blob(
        &self,
        repo: &str,
        digest: &Digest,
        path: &Path,
        len: u64,
    ) -> Result<(), RegistryError> {
        self.pushing()?;
        crate::push::put_file(&self.cluster, repo, digest, path, len).await?;
        self.link(repo, &[*digest]).await
    }

    async fn put_blob_stream(
        &self,
        repo: &str,
        digest: &Digest,
        len: u64,
        body: &mut UploadBody,
    ) -> Result<(), RegistryError> {
        self.pushing()?;
        crate::push::put_stream(
            &self.cluster,
            repo,
            digest,
            len,
            body,
            self.spill_dir.as_deref(),
        )
        .await?;
        self.link(repo, &[*digest]).await
    }

    async fn stage_blob(
        &self,
        repo: &str,
        chunks: StageChunks,
    ) -> Result<StagedUpload, RegistryError> {
        self.pushing()?;
        crate::push::stage(&self.cluster, repo, chunks).await
    }

    async fn commit_staged(
        &self,
        repo: &str,
        staged: &StagedUpload,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        self.pushing()?;
        crate::push::commit_staged(&self.cluster, repo, staged, digest).await?;
        self.link(repo, &[*digest]).await
    }

    async fn put_tag(&self, repo: &str, tag: &str, digest: &Digest) -> Result<(), RegistryError> {
        if self.agent.is_some() {
            return Err(RegistryError::Unsupported(
                "agents do not accept pushes".into(),
            ));
        }
        let request = Request::PutTag {
            repo: repo.into(),
            tag: tag.into(),
            digest: *digest,
            replica: false,
            set_ms: 0,
        };
        match self
            .ask_build_index(repo, tag, &request, Duration::from_secs(120))
            .await
        {
            Ok(Response::TagPut { .. }) => Ok(()),
            Ok(other) => Err(RegistryError::Internal(format!("{other:?}"))),
            Err(CallError::NoOwners(_)) => Err(RegistryError::Unavailable(
                "no live build-index node".into(),
            )),
            Err(e) => match e.remote() {
                Some(r) if let Some(refused) = upstream_refusal(r) => Err(refused),
                Some(r) if r.kind == ErrorKind::NotFound => {
                    Err(RegistryError::ManifestBlobUnknown(r.message.clone()))
                }
                Some(r) if r.kind == ErrorKind::BadRequest => {
                    Err(RegistryError::Internal(r.message.clone()))
                }
                _ => Err(RegistryError::Unavailable(e.to_string())),
            },
        }
    }

    async fn delete_tag(&self, repo: &str, tag: &str) -> Result<(), RegistryError> {
        if self.agent.is_some() {
            return Err(RegistryError::Unsupported(
                "agents do not delete tags".into(),
            ));
        }
        let request = Request::DeleteTag {
            repo: repo.into(),
            tag: tag.into(),
            replica: false,
        };
        match self
            .ask_build_index(repo, tag, &request, self.cluster.call_timeout)
            .await
        {
            Ok(Response::TagDeleted) => Ok(()),
            Ok(other) => Err(RegistryError::Internal(format!("{other:?}"))),
            Err(CallError::NoOwners(_)) => Err(RegistryError::Unavailable(
                "no live build-index node".into(),
            )),
            Err(e) => Err(tag_error(e, repo, tag)),
        }
    }

    async fn put_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &str,
    ) -> Result<(), RegistryError> {
        self.pushing()?;
        crate::referrers::put(&self.cluster, repo, subject, referrer, descriptor).await
    }

    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<String>, RegistryError> {
        crate::referrers::list(&self.cluster, repo, subject).await
    }

    async fn delete_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<(), RegistryError> {
        self.pushing()?;
        crate::referrers::delete(&self.cluster, repo, subject, referrer).await
    }

    async fn link_manifest(&self, repo: &str, digest: &Digest) -> Result<(), RegistryError> {
        self.link_closure(repo, digest).await
    }

    async fn mount_blob(
        &self,
        repo: &str,
        from: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        self.mount(repo, from, digest).await
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<(), RegistryError> {
        let unknown = RegistryError::TagUnknown(format!("{repo}@{digest}"));
        self.delete_digest(repo, digest, true, unknown).await
    }

    async fn delete_blob(&self, repo: &str, digest: &Digest) -> Result<(), RegistryError> {
        let unknown = RegistryError::BlobUnknown(digest.to_string());
        self.delete_digest(repo, digest, false, unknown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(kind: ErrorKind) -> CallError {
        CallError::Remote {
            addr: "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
            source: RemoteError::new(kind, "the upstream's own words"),
        }
    }

    #[test]
    fn upstream_refusals_reach_the_gateway_with_the_upstreams_message() {
        let words = || "the upstream's own words".to_string();
        let digest = Digest::sha256_of(b"x");
        for (kind, expected) in [
            (
                ErrorKind::Unauthorized,
                RegistryError::Unauthorized(words()),
            ),
            (ErrorKind::NameUnknown, RegistryError::NameUnknown(words())),
            (
                ErrorKind::TooManyRequests,
                RegistryError::TooManyRequests(words()),
            ),
            (ErrorKind::Denied, RegistryError::Denied(words())),
        ] {
            let e = RemoteError::new(kind, words());
            assert_eq!(blob_error(e.clone(), &digest), expected, "{kind:?}");
            assert_eq!(tag_error(remote(kind), "r", "t"), expected, "{kind:?}");
        }
        // The others keep their meaning: a missing tag is MANIFEST_UNKNOWN's TagUnknown.
        assert_eq!(
            tag_error(remote(ErrorKind::NotFound), "r", "t"),
            RegistryError::TagUnknown("r:t".into())
        );
        assert_eq!(
            blob_error(RemoteError::new(ErrorKind::NotFound, "x"), &digest),
            RegistryError::BlobUnknown(digest.to_string())
        );
        assert!(upstream_refusal(&RemoteError::new(ErrorKind::Unavailable, "x")).is_none());
    }
}
