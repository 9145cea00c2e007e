//! A blob sent to an origin before its digest is known, then named: [`Request::Stage`]
//! ([`StageCall`]) and [`Request::CommitStaged`] ([`commit`]). This is how a proxy passes on a registry client's
//! chunked upload while the chunks arrive. The client names the digest only in its last
//! request; by then the origin holds the bytes, fsynced and hashed, and the commit costs a
//! pass over them and a rename.
//!
//! As with the ingest ([`crate::ingest`]), nothing of the body is taken before the origin
//! answers [`Response::Proceed`], every send runs under the stall watchdog
//! ([`crate::stall`]), and dropping the call before its end resets the stream (the origin
//! keeps nothing).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use kraken_storage::Digest;

use crate::cluster::{CallError, Cluster};
use crate::ingest::{IngestCall, Opened};
use crate::proto::{Request, Response};
use crate::stall;

/// Longest a commit may take: a pass over the blob and an fsync. The stall watchdog gives
/// up much sooner on an origin that stops answering.
const COMMIT_LIMIT: Duration = Duration::from_secs(3600);

/// Bytes an origin holds under a token, waiting for their digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// The origin holding them.
    pub addr: SocketAddr,
    /// Names them to [`commit`].
    pub token: u64,
    /// How many bytes it holds.
    pub length: u64,
    /// Their sha256 digest, as the origin computed it.
    pub digest: Digest,
}

/// A stage the origin has accepted: send it the bytes with [`StageCall::send_all`].
/// Dropping it first resets the stream (the origin keeps nothing).
#[derive(Debug)]
pub struct StageCall {
    call: IngestCall,
    addr: SocketAddr,
}

impl StageCall {
    /// Asks the origin at `addr` to take a blob of `namespace` whose digest is not known
    /// yet. Nothing is sent before it accepts, so a refusal (busy, down) leaves the bytes
    /// for another origin.
    pub async fn open(
        cluster: &Cluster,
        addr: SocketAddr,
        namespace: &str,
    ) -> Result<StageCall, CallError> {
        let request = Request::Stage {
            namespace: namespace.to_string(),
        };
        match IngestCall::open_request(cluster, addr, &request, 0).await? {
            Opened::Proceed(call) => Ok(StageCall { call, addr }),
            Opened::Present { length } => {
                Err(CallError::unexpected(addr, Response::Uploaded { length }))
            }
        }
    }

    /// Sends everything `chunks` yields, and returns once the origin holds it fsynced.
    pub async fn send_all<S>(self, chunks: &mut S) -> Result<Staged, CallError>
    where
        S: Stream<Item = Bytes> + Unpin + ?Sized,
    {
        let StageCall { mut call, addr } = self;
        let mut sent = 0u64;
        while let Some(bytes) = chunks.next().await {
            sent += bytes.len() as u64;
            if !call.send(bytes).await {
                break;
            }
        }
        match call.verdict().await? {
            Response::Staged {
                token,
                length,
                digest,
            } if length == sent => Ok(Staged {
                addr,
                token,
                length,
                digest,
            }),
            other => Err(CallError::unexpected(addr, other)),
        }
    }
}

/// Stores what `staged` holds as blob `digest` of `namespace`; `Ok` once an owning origin
/// holds it verified, fsynced, pinned and queued for write-back (an ingest's `Uploaded`):
/// the one holding the bytes, or, when it does not own `digest`, the first live owner it
/// sends them to.
pub async fn commit(
    cluster: &Cluster,
    staged: &Staged,
    namespace: &str,
    digest: &Digest,
) -> Result<u64, CallError> {
    let addr = staged.addr;
    let request = Request::CommitStaged {
        namespace: namespace.to_string(),
        token: staged.token,
        digest: *digest,
    };
    let call = cluster.call_within(addr, &request, COMMIT_LIMIT);
    match stall::guard(cluster, addr, call).await?? {
        Response::Uploaded { length } if length == staged.length => Ok(length),
        other => Err(CallError::unexpected(addr, other)),
    }
}
