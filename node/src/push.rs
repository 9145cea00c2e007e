//! The proxy's blob writes: a pushed blob into its owning origins with the streaming ingest
//! (`Request::Ingest`, served by [`crate::origin::ingest`]), in ring order.
//!
//! - [`put_file`]: a staged upload session's file. An owner that fails, before or during
//!   the body, is followed by the next: the file is still here to send again.
//! - [`put_stream`]: a request body as the client sends it. An owner that fails before it
//!   asks for the body (down, busy, not an owner, or its queue unusable) is followed by the
//!   next, with nothing of the body consumed. Once the body flows, what is taken from it is
//!   also spilled to an unsynced file in the proxy's uploads directory ([`spill`]): an
//!   owner that fails mid-body is followed by the next, which gets the spilled prefix and
//!   then the rest of the live body; the client's request stays open throughout. Without a
//!   spill (none configured, or it cannot be written) such a failure fails the upload
//!   ([`RegistryError::Unavailable`]: sending it again works). An owner from before the
//!   streaming ingest declines the stream ([`RegistryError::Unsupported`], the body
//!   untouched): the gateway stages it and comes back through [`put_file`], which sends it
//!   the resumable upload.
//!
//! - [`stage`] and [`commit_staged`]: a chunked upload's bytes passed on to an origin as
//!   they arrive, before the client names the digest, then stored under it there
//!   ([`kraken_registry_gateway`]'s `pass_on`); the gateway's staged file stays the
//!   fallback.
//!
//! An owner fails when it refuses in a way the next owner may not (down, busy, not an
//! owner), or when a send to it stalls and it answers no ping: the stall watchdog
//! (`kraken_client::stall`) gives a dead owner up after at most two stall times
//! (2 s each by default), long before QUIC's idle timeout, and never gives up on one that
//! answers (a slow disk, a long fsync).
//!
//! The proxy does not hash: the origin checks the digest in its one pass over the bytes
//! and a mismatch comes back as [`RegistryError::DigestInvalid`], nothing stored. `Ok`
//! means the origin answered `Uploaded`: the blob is verified, fsynced in its store, pinned,
//! and its write-back queued.

use std::path::Path;

use futures::StreamExt as _;
use kraken_client::ingest::{
    IngestCall, IngestRequest, Opened, SendAllError, ingest_file, predates_ingest,
};
use kraken_client::stage::{self, StageCall};
use kraken_membership::Role;
use kraken_registry_gateway::registry::{RegistryError, StageChunks, StagedUpload, UploadBody};
use kraken_storage::Digest;

use crate::client::{CallError, Cluster};
use spill::Spill;

mod spill;
use crate::proto::ErrorKind;

/// Stores `len` bytes of the file at `path` as blob `digest` of namespace `repo`.
pub async fn put_file(
    cluster: &Cluster,
    repo: &str,
    digest: &Digest,
    path: &Path,
    len: u64,
) -> Result<(), RegistryError> {
    ingest_file_to_owners(cluster, request(repo, digest, len), path)
        .await
        .map(drop)
        .map_err(push_error)
}

/// Ingests the file at `path` on the digest's origins in ring order (the owners, then
/// the others as fail-over), each that fails in a way the next may not followed by the
/// next; the first verdict that is not such a failure, else the last failure
/// ([`CallError::NoOwners`] when there is no origin at all).
pub async fn ingest_file_to_owners(
    cluster: &Cluster,
    ingest: IngestRequest<'_>,
    path: &Path,
) -> Result<u64, CallError> {
    let mut last = CallError::NoOwners(Role::Origin.as_str());
    for owner in cluster.owners_of_digest(Role::Origin, ingest.digest, 0) {
        match ingest_file(cluster, owner.quic_addr, ingest, path).await {
            Ok(pushed) => return Ok(pushed.length),
            Err(e) if e.try_next() => {
                tracing::debug!(owner = %owner.id, error = %e, "owner failed; trying the next");
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Stores blob `digest` of namespace `repo`, exactly `len` bytes, from `body` as it
/// arrives. Nothing is taken from `body` before an owner asks for it. With a `spill_dir`,
/// what was taken is spilled there ([`spill`]), so an owner that fails mid-body is
/// followed by the next with no help from the client.
pub async fn put_stream(
    cluster: &Cluster,
    repo: &str,
    digest: &Digest,
    len: u64,
    body: &mut UploadBody,
    spill_dir: Option<&Path>,
) -> Result<(), RegistryError> {
    let ingest = request(repo, digest, len);
    // Made when the first owner asks for the body (not for a blob an owner has).
    let mut spill: Option<Spill> = None;
    let mut spill_dir = spill_dir;
    let mut taken = 0u64;
    let mut last = RegistryError::Unavailable("no live origin".into());
    for owner in cluster.owners_of_digest(Role::Origin, digest, 0) {
        let call = match IngestCall::open(cluster, owner.quic_addr, ingest).await {
            Ok(Opened::Proceed(call)) => call,
            Ok(Opened::Present { .. }) => return Ok(()),
            // Nothing of the body is taken: the gateway stages it and calls put_file,
            // which falls back to the resumable upload.
            Err(e) if predates_ingest(&e) && taken == 0 => {
                return Err(RegistryError::Unsupported(format!(
                    "origin {} predates the streaming ingest",
                    owner.id
                )));
            }
            Err(e) if e.try_next() => {
                tracing::debug!(owner = %owner.id, error = %e, "owner failed; trying the next");
                last = RegistryError::Unavailable(e.to_string());
                continue;
            }
            Err(e) => return Err(push_error(e)),
        };
        if let Some(dir) = spill_dir.take() {
            spill = Spill::create(dir)
                .inspect_err(|e| tracing::warn!(dir = %dir.display(), error = %e, "cannot create a push spill; an owner failing mid-body will fail the upload"))
                .ok();
        }
        let e = match send_body(call, body, spill.as_mut(), taken).await {
            Ok(()) => return Ok(()),
            Err(SendAllError::Call(e)) => e,
            // The gateway knows why from the body itself.
            Err(SendAllError::Source(e)) => {
                return Err(RegistryError::Unavailable(format!(
                    "the upload's body failed: {e}"
                )));
            }
        };
        if !e.try_next() {
            return Err(push_error(e));
        }
        // Whatever was taken must be in the spill to go on.
        taken = match &mut spill {
            Some(s) => match s.flushed().await {
                Ok(n) => n,
                Err(spilled) => {
                    return Err(RegistryError::Unavailable(format!(
                        "{e}; the spill cannot resume it: {spilled}"
                    )));
                }
            },
            None => return Err(push_error(e)),
        };
        tracing::info!(owner = %owner.id, error = %e, resumed = taken, "owner failed mid-body; the push moves to the next owner");
        last = RegistryError::Unavailable(e.to_string());
    }
    Err(last)
}

/// Sends one owner the body: the `taken` bytes already spilled, then the rest of `body`
/// (spilled as it is taken), and waits for its verdict.
async fn send_body(
    mut call: IngestCall,
    body: &mut UploadBody,
    mut spill: Option<&mut Spill>,
    taken: u64,
) -> Result<(), SendAllError> {
    if let Some(s) = spill.as_deref_mut()
        && taken > 0
    {
        let mut prefix = s.prefix(taken);
        while let Some(chunk) = prefix.recv().await {
            match chunk {
                Ok(bytes) => {
                    if !call.send(bytes).await {
                        return Ok(call.finish().await.map(drop)?);
                    }
                }
                Err(e) => {
                    call.abort();
                    return Err(SendAllError::Source(e));
                }
            }
        }
    }
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => {
                if let Some(s) = spill.as_deref_mut() {
                    s.keep(&bytes).await;
                }
                if !call.send(bytes).await {
                    break;
                }
            }
            Err(e) => {
                call.abort();
                return Err(SendAllError::Source(e));
            }
        }
    }
    Ok(call.finish().await.map(drop)?)
}

/// Passes the chunks of an upload to `repo` on to an origin as they arrive
/// ([`kraken_client::stage`]), before their digest is known. The origin is drawn at random
/// (uploads spread over the ring; the digest will decide who owns the blob), and the next
/// in ring order is asked when one refuses before taking a byte.
pub async fn stage(
    cluster: &Cluster,
    repo: &str,
    mut chunks: StageChunks,
) -> Result<StagedUpload, RegistryError> {
    let spot = Digest::Sha256(rand::random());
    let mut last = RegistryError::Unavailable("no live origin".into());
    for origin in cluster.owners_of_digest(Role::Origin, &spot, 0) {
        let call = match StageCall::open(cluster, origin.quic_addr, repo).await {
            Ok(call) => call,
            Err(e) => {
                tracing::debug!(origin = %origin.id, error = %e, "origin refused a stage; trying the next");
                last = RegistryError::Unavailable(e.to_string());
                continue;
            }
        };
        let mut chunks = futures::stream::poll_fn(move |cx| chunks.poll_recv(cx));
        let staged = call
            .send_all(&mut chunks)
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        return Ok(StagedUpload {
            node: staged.addr,
            token: staged.token,
            length: staged.length,
            digest: staged.digest,
        });
    }
    Err(last)
}

/// Stores what [`stage`] passed on as blob `digest` of `repo`. `Ok` means what [`put_file`]'s
/// does: an owning origin (the one holding the bytes, or the first live owner it sent
/// them to) has the blob verified, fsynced, pinned and queued for write-back.
pub async fn commit_staged(
    cluster: &Cluster,
    repo: &str,
    staged: &StagedUpload,
    digest: &Digest,
) -> Result<(), RegistryError> {
    let held = stage::Staged {
        addr: staged.node,
        token: staged.token,
        length: staged.length,
        digest: staged.digest,
    };
    stage::commit(cluster, &held, repo, digest)
        .await
        .map(drop)
        .map_err(push_error)
}

fn request<'a>(repo: &'a str, digest: &'a Digest, len: u64) -> IngestRequest<'a> {
    IngestRequest {
        namespace: repo,
        digest,
        length: len,
        replica: false,
        persisted: false,
    }
}

/// What a failed ingest means to the gateway: the content is wrong, sending again may work,
/// or neither.
fn push_error(e: CallError) -> RegistryError {
    match e.remote() {
        Some(r) if let Some(refused) = crate::registry::upstream_refusal(r) => refused,
        Some(r) if r.kind == ErrorKind::DigestMismatch => {
            RegistryError::DigestInvalid(r.message.clone())
        }
        Some(r) if r.kind == ErrorKind::BadRequest => RegistryError::Internal(r.message.clone()),
        _ if e.try_next() => RegistryError::Unavailable(e.to_string()),
        _ => RegistryError::Internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::RemoteError;

    #[test]
    fn a_push_into_a_mirror_is_denied_with_the_reason() {
        let e = CallError::Remote {
            addr: "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
            source: RemoteError::new(ErrorKind::Denied, "repository r mirrors u and is read-only"),
        };
        assert!(!e.try_next(), "no other owner would take it");
        assert_eq!(
            push_error(e),
            RegistryError::Denied("repository r mirrors u and is read-only".into())
        );
    }
}
