//! The resumable upload's client: [`push_file`] asks the origin how much of the blob it
//! already holds, then sends the rest of the file. An origin that stalls and answers no
//! ping is given up within seconds ([`crate::stall`]): the caller moves on to the next
//! owner. The origin's side (staging, verifying,
//! queueing the write-back before it answers) is in the node crate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use kraken_storage::Digest;
use kraken_transport::quic::codes;

use crate::cluster::{CallError, Cluster};
use crate::ingest::read_range;
use crate::proto::{ErrorKind, RemoteError, Request, Response};
use crate::stall;

/// What [`push_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Bytes sent in this call (less than the length when resuming).
    pub sent: u64,
    /// The blob's length.
    pub length: u64,
}

/// Uploads `length` bytes of `path` as `digest` to the origin at `addr`, resuming where the
/// origin's staged copy ends.
#[allow(clippy::too_many_arguments)]
pub async fn push_file(
    cluster: &Cluster,
    addr: SocketAddr,
    namespace: &str,
    digest: &Digest,
    path: &Path,
    length: u64,
    replica: bool,
    persisted: bool,
) -> Result<Pushed, CallError> {
    let offset = match stall::guard(
        cluster,
        addr,
        cluster.call(addr, &Request::UploadStatus { digest: *digest }),
    )
    .await??
    {
        Response::UploadOffset(n) => n,
        other => return Err(CallError::unexpected(addr, other)),
    };
    // At `length` it is complete there, or staged whole: an empty body commits it.
    if offset > length {
        return Err(CallError::Remote {
            addr,
            source: RemoteError::new(
                ErrorKind::BadRequest,
                format!("{digest} is {offset} bytes at the origin, not {length}"),
            ),
        });
    }
    let request = Request::Upload {
        namespace: namespace.to_string(),
        digest: *digest,
        offset,
        length,
        replica,
        persisted,
    };
    let rpc = |source| CallError::Rpc { addr, source };
    let mut call = stall::guard(cluster, addr, cluster.open_call(addr, &request)).await??;
    let open = {
        let path = path.to_path_buf();
        move || std::fs::File::open(&path).map(Arc::new)
    };
    let mut chunks = read_range(open, offset..length);
    while let Some(chunk) = chunks.recv().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(source) => {
                call.abort(codes::ABANDONED);
                return Err(CallError::File {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        // A stall resets the stream (the origin keeps what it staged, to resume from).
        if !stall::guard(cluster, addr, call.send(chunk)).await? {
            break;
        }
    }
    let (response, _) = stall::guard(cluster, addr, call.finish::<Response>())
        .await?
        .map_err(rpc)?;
    match response {
        Response::Uploaded { length } => Ok(Pushed {
            sent: length.saturating_sub(offset),
            length,
        }),
        other => Err(CallError::unexpected(addr, other)),
    }
}
