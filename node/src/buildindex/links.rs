//! The build-index's blob RPCs over [`super::digests`]: links and tombstones, each kept
//! on the digest's build-index owners (rendezvous over the build-index ring by digest,
//! `replicas` of them).
//!
//! - Writes (`LinkBlobs`, `RecordTombstone`, `UnlinkBlob`) go to any build-index node,
//!   which stores what it owns and sends the rest to the other live owners, one call per
//!   owner. A write succeeds when every digest is stored durably on at least one owner.
//! - Reads (`Linkers` with `gather`, `UnlinkBlob`'s answer) take the union over the live
//!   owners: a link any owner holds counts, so an owner that missed a write never makes
//!   a blob look unlinked (and deletable).
//! - `Tombstones` answers this node's own records; agents poll every build-index node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use kraken_membership::Role;
use kraken_registry_gateway::names::validate_name;
use kraken_storage::Digest;
use kraken_storage::time::now_ms;

use super::{BuildIndex, internal};
use crate::proto::{ErrorKind, RemoteError, Request, Response};

/// Largest page of tombstones one answer carries (well within a 256 KiB frame).
const MAX_TOMBSTONES: u32 = 2_000;

/// Digests per `LinkBlobs` call between owners (well within a 256 KiB frame).
const LINK_BATCH: usize = 1_000;

impl BuildIndex {
    /// Serves the blob RPCs; `None` for every other request.
    pub(super) async fn handle_blob_request(
        &self,
        request: &Request,
    ) -> Option<Result<Response, RemoteError>> {
        Some(match request {
            Request::RecordTombstone {
                digest,
                deleted_ms,
                replica,
            } => self.record_tombstone(digest, *deleted_ms, *replica).await,
            Request::Tombstones { since_ms, limit } => self.tombstones(*since_ms, *limit),
            Request::LinkBlobs {
                repo,
                digests,
                replica,
            } => self.link_blobs(repo, digests, *replica).await,
            Request::LinkManifest { repo, digest } => self.link_manifest(repo, digest).await,
            Request::Linkers { digest, gather } => self
                .linkers(digest, *gather)
                .await
                .map(|r| Response::Linkers(r.into_iter().collect())),
            Request::UnlinkBlob {
                repo,
                digest,
                replica,
            } => self.unlink(repo, digest, *replica).await,
            _ => return None,
        })
    }

    /// The digest's owners on the build-index ring that are not suspected, as (is this
    /// node, address).
    fn live_digest_owners(&self, digest: &Digest) -> Vec<(bool, SocketAddr)> {
        let view = self.inner.cluster.view();
        self.inner
            .cluster
            .owners_of_digest(Role::BuildIndex, digest, self.inner.config.replicas)
            .into_iter()
            .filter(|m| !view.is_suspected(&m.id))
            .map(|m| (m.id == self.inner.me, m.quic_addr))
            .collect()
    }

    async fn record_tombstone(
        &self,
        digest: &Digest,
        deleted_ms: u64,
        replica: bool,
    ) -> Result<Response, RemoteError> {
        let store = &self.inner.digests;
        store.add_tombstone(digest, deleted_ms).map_err(internal)?;
        let retention = self
            .inner
            .config
            .tombstone_retention_secs
            .saturating_mul(1000);
        if let Err(e) = store.prune_tombstones(now_ms().saturating_sub(retention)) {
            tracing::warn!(error = %e, "cannot prune old blob tombstones");
        }
        if !replica {
            let forward = Request::RecordTombstone {
                digest: *digest,
                deleted_ms,
                replica: true,
            };
            let others: Vec<_> = self
                .live_digest_owners(digest)
                .into_iter()
                .filter(|(me, _)| !me)
                .map(|(_, addr)| addr)
                .collect();
            for (addr, r) in self.call_all(&others, &forward).await {
                if let Err(e) = r {
                    // Agents poll every build-index node: one copy is enough for them.
                    tracing::warn!(%addr, %digest, error = %e, "tombstone not copied to an owner");
                }
            }
        }
        Ok(Response::TombstoneRecorded)
    }

    fn tombstones(&self, since_ms: u64, limit: u32) -> Result<Response, RemoteError> {
        let (entries, more) = self
            .inner
            .digests
            .tombstones(since_ms, limit.clamp(1, MAX_TOMBSTONES) as usize)
            .map_err(internal)?;
        Ok(Response::Tombstones { entries, more })
    }

    /// Links `digests` to `repo`: all of them here for a replica; otherwise each on its
    /// live owners, one call per owner.
    pub(super) async fn link_blobs(
        &self,
        repo: &str,
        digests: &[Digest],
        replica: bool,
    ) -> Result<Response, RemoteError> {
        validate_name(repo).map_err(|e| RemoteError::new(ErrorKind::BadRequest, e.to_string()))?;
        let count = digests.len() as u64;
        if replica {
            self.inner
                .digests
                .link(repo, digests, now_ms())
                .map_err(internal)?;
            return Ok(Response::Linked { count });
        }
        let mut mine = Vec::new();
        let mut by_owner: BTreeMap<SocketAddr, Vec<Digest>> = BTreeMap::new();
        for d in digests {
            let owners = self.live_digest_owners(d);
            if owners.is_empty() {
                return Err(unavailable(format!("no live build-index owner of {d}")));
            }
            for (me, addr) in owners {
                match me {
                    true => mine.push(*d),
                    false => by_owner.entry(addr).or_default().push(*d),
                }
            }
        }
        let mut stored: BTreeSet<Digest> = BTreeSet::new();
        if !mine.is_empty() {
            self.inner
                .digests
                .link(repo, &mine, now_ms())
                .map_err(internal)?;
            stored.extend(mine);
        }
        // One call per owner, in batches a frame holds.
        let batches = by_owner.into_iter().flat_map(|(addr, ds)| {
            ds.chunks(LINK_BATCH)
                .map(|c| (addr, c.to_vec()))
                .collect::<Vec<_>>()
        });
        let calls = batches.map(|(addr, ds)| {
            let request = Request::LinkBlobs {
                repo: repo.to_string(),
                digests: ds.clone(),
                replica: true,
            };
            async move { (ds, self.inner.cluster.call(addr, &request).await) }
        });
        for (ds, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(Response::Linked { .. }) => stored.extend(ds),
                Ok(other) => tracing::warn!(?other, "unexpected answer to a link"),
                Err(e) => tracing::warn!(error = %e, "links not stored on an owner"),
            }
        }
        if let Some(missing) = digests.iter().find(|d| !stored.contains(d)) {
            return Err(unavailable(format!(
                "no build-index owner stored the link of {missing} to {repo}"
            )));
        }
        Ok(Response::Linked { count })
    }

    /// Links manifest `digest` and everything it reaches to `repo`.
    async fn link_manifest(&self, repo: &str, digest: &Digest) -> Result<Response, RemoteError> {
        let closure: Vec<Digest> = self
            .closure(repo, digest)
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        // As for a tag: a garbage collection that started before this push keeps them.
        super::gc::touch(&self.inner.cluster, closure.clone()).await;
        self.link_blobs(repo, &closure, false).await
    }

    /// The repositories linking `digest`: this node's records, and with `gather` the
    /// union over the digest's live owners (an owner that does not answer is an error:
    /// a partial answer could make a linked blob look unlinked).
    async fn linkers(
        &self,
        digest: &Digest,
        gather: bool,
    ) -> Result<BTreeSet<String>, RemoteError> {
        let mut all: BTreeSet<String> = self
            .inner
            .digests
            .linkers(digest)
            .map_err(internal)?
            .into_iter()
            .collect();
        if gather {
            let request = Request::Linkers {
                digest: *digest,
                gather: false,
            };
            for (addr, answer) in self.call_all(&self.other_owners(digest), &request).await {
                match answer {
                    Ok(Response::Linkers(repos)) => all.extend(repos),
                    Ok(other) => return Err(internal(format!("{addr}: {other:?}"))),
                    Err(e) => return Err(unavailable(format!("owner {addr}: {e}"))),
                }
            }
        }
        Ok(all)
    }

    /// Removes `repo`'s link to `digest` here and (unless `replica`) on the other live
    /// owners; answers whether any held it and who links the digest still.
    async fn unlink(
        &self,
        repo: &str,
        digest: &Digest,
        replica: bool,
    ) -> Result<Response, RemoteError> {
        // A mirror's repositories link nothing and delete nothing: say so (403 `DENIED`).
        crate::mirror::refuse_writes(&self.inner.router, repo)?;
        let store = &self.inner.digests;
        let mut was_linked = store.unlink(repo, digest).map_err(internal)?;
        let mut remaining: BTreeSet<String> = store
            .linkers(digest)
            .map_err(internal)?
            .into_iter()
            .collect();
        if !replica {
            let request = Request::UnlinkBlob {
                repo: repo.to_string(),
                digest: *digest,
                replica: true,
            };
            for (addr, answer) in self.call_all(&self.other_owners(digest), &request).await {
                match answer {
                    Ok(Response::Unlinked {
                        was_linked: w,
                        remaining: r,
                    }) => {
                        was_linked |= w;
                        remaining.extend(r);
                    }
                    Ok(other) => return Err(internal(format!("{addr}: {other:?}"))),
                    Err(e) => return Err(unavailable(format!("owner {addr}: {e}"))),
                }
            }
        }
        Ok(Response::Unlinked {
            was_linked,
            remaining: remaining.into_iter().collect(),
        })
    }

    fn other_owners(&self, digest: &Digest) -> Vec<SocketAddr> {
        self.live_digest_owners(digest)
            .into_iter()
            .filter(|(me, _)| !me)
            .map(|(_, addr)| addr)
            .collect()
    }

    /// `request` to every address at once, answers in the same order.
    async fn call_all(
        &self,
        addrs: &[SocketAddr],
        request: &Request,
    ) -> Vec<(SocketAddr, Result<Response, crate::client::CallError>)> {
        let calls = addrs
            .iter()
            .map(|addr| async move { (*addr, self.inner.cluster.call(*addr, request).await) });
        futures::future::join_all(calls).await
    }
}

fn unavailable(message: String) -> RemoteError {
    RemoteError::new(ErrorKind::Unavailable, message)
}
