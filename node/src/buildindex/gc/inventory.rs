//! What garbage collection reads from the cluster: the roots (every build-index node's whole
//! tag table, mirrored repositories' cached tags included, in pages), what each origin's
//! store holds (in pages), and what each writable backend of this node's routes holds
//! (listed here, on the build-index: its routes are the cluster's `[[backends]]`).
//!
//! A build-index node that does not answer fails the run: a root missed would delete a
//! live image. An origin that does not answer only leaves its copies out of this run (the
//! report names it): blobs nobody listed are never swept.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use kraken_membership::Role;
use kraken_registry_gateway::media;
use kraken_storage::Digest;
use kraken_storage::backend::Backend;

use super::plan::{Holding, Inventory, add_origin_copy};
use crate::buildindex::BuildIndex;
use crate::fetch::call_error;
use crate::proto::{ErrorKind, RemoteError, Request, Response};

/// Page size asked of the nodes: a page of tags with the longest names still fits one
/// frame (256 KiB).
const PAGE: u32 = 200;

/// Longest one page may take.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A root: `(repo, tag, digest)`.
pub type Root = (String, String, Digest);

fn unexpected(what: &str, answer: &Response) -> RemoteError {
    RemoteError::new(
        ErrorKind::Internal,
        format!("{what} answered {}", response_name(answer)),
    )
}

fn response_name(answer: &Response) -> String {
    let debug = format!("{answer:?}");
    debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Every tag of every build-index node (deduplicated: owners hold copies).
pub async fn roots(bi: &BuildIndex) -> Result<BTreeSet<Root>, RemoteError> {
    let cluster = &bi.inner.cluster;
    let mut out = BTreeSet::new();
    for member in cluster.view().ring(Role::BuildIndex).members() {
        let mut after: Option<(String, String)> = None;
        loop {
            let (rows, next) = if member.id == bi.inner.me {
                let n = PAGE as usize;
                let after_ref = after.as_ref().map(|(r, t)| (r.as_str(), t.as_str()));
                let rows = bi
                    .inner
                    .store
                    .list_all(after_ref, n)
                    .map_err(super::super::internal)?;
                let next = (rows.len() == n)
                    .then(|| rows.last().map(|(r, t, _)| (r.clone(), t.clone())))
                    .flatten();
                (rows, next)
            } else {
                let request = Request::ListTagTable {
                    after: after.clone(),
                    limit: PAGE,
                };
                match cluster
                    .call_within(member.quic_addr, &request, PAGE_TIMEOUT)
                    .await
                {
                    Ok(Response::TagTable { rows, next }) => (rows, next),
                    Ok(other) => return Err(unexpected("a build-index's tag listing", &other)),
                    Err(e) => {
                        let e = call_error(e);
                        return Err(RemoteError::new(
                            ErrorKind::Unavailable,
                            format!(
                                "listing the tags of build-index {}: {}",
                                member.id, e.message
                            ),
                        ));
                    }
                }
            };
            out.extend(rows);
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    Ok(out)
}

/// What every live origin holds, with each referrer's subject. Origins that fail are
/// named in the returned errors and left out.
pub async fn origin_blobs(
    bi: &BuildIndex,
    subjects: &mut std::collections::BTreeMap<Digest, Digest>,
) -> (Inventory, Vec<String>) {
    let cluster = &bi.inner.cluster;
    let mut inventory = Inventory::new();
    let mut errors = Vec::new();
    'origins: for member in cluster.view().ring(Role::Origin).members() {
        let mut after = None;
        loop {
            let request = Request::ListBlobs { after, limit: PAGE };
            let (blobs, next) = match cluster
                .call_within(member.quic_addr, &request, PAGE_TIMEOUT)
                .await
            {
                Ok(Response::Blobs { blobs, next }) => (blobs, next),
                Ok(other) => {
                    errors.push(unexpected(&format!("origin {}", member.id), &other).message);
                    continue 'origins;
                }
                Err(e) => {
                    errors.push(format!(
                        "listing origin {}: {}",
                        member.id,
                        call_error(e).message
                    ));
                    continue 'origins;
                }
            };
            for b in blobs {
                add_origin_copy(&mut inventory, b.digest, b.length, b.last_used_ms);
                if let Some(s) = b.subject {
                    subjects.insert(b.digest, s);
                }
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    (inventory, errors)
}

/// The writable backends of this node's routes, each once (a backend serves many
/// namespaces); read-only ones and upstream registries are never swept.
fn writable_backends(bi: &BuildIndex) -> Vec<(String, Backend)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (pattern, backend) in bi.inner.router.routes() {
        if backend.is_read_only() || backend.registry().is_some() {
            continue;
        }
        if seen.insert(backend.name().to_string()) {
            out.push((pattern.to_string(), backend.clone()));
        }
    }
    out
}

/// Adds what the writable backends hold to `inventory`; a blob only a backend holds is
/// asked its length, and read (from the backend, not the origins) if it may be a referrer.
pub async fn backend_blobs(
    bi: &BuildIndex,
    inventory: &mut Inventory,
    subjects: &mut std::collections::BTreeMap<Digest, Digest>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for (pattern, backend) in writable_backends(bi) {
        let mut listing = match backend.list().await {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("listing backend {}: {e}", backend.name()));
                continue;
            }
        };
        while let Some(item) = listing.next().await {
            let digest = match item {
                Ok(d) => d,
                Err(e) => {
                    errors.push(format!("listing backend {}: {e}", backend.name()));
                    break;
                }
            };
            if let Some(h) = inventory.get_mut(&digest) {
                h.in_backend = true;
                continue;
            }
            let length = match backend.stat(&digest).await {
                Ok(Some(n)) => n,
                // Gone since the listing.
                Ok(None) => continue,
                Err(e) => {
                    errors.push(format!("{digest} in backend {}: {e}", backend.name()));
                    continue;
                }
            };
            if length <= media::MAX_MANIFEST_LEN
                && let Some(s) = backend_subject(&backend, &pattern, &digest).await
            {
                subjects.insert(digest, s);
            }
            inventory.insert(
                digest,
                Holding {
                    length,
                    in_backend: true,
                    ..Holding::default()
                },
            );
        }
    }
    errors
}

async fn backend_subject(backend: &Backend, namespace: &str, digest: &Digest) -> Option<Digest> {
    let mut stream = backend.read(namespace, digest).await.ok()?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.ok()?);
        if bytes.first().is_some_and(|b| *b != b'{') {
            return None;
        }
    }
    super::mark::edges(&bytes)?.subject
}
