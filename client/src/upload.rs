//! The resumable upload's client: [`push_file`] asks the origin how much of the blob it
//! already holds, then sends the rest of the file. The origin's side (staging, verifying,
//! queueing the write-back before it answers) is in the node crate.

use std::io::SeekFrom;
use std::net::SocketAddr;
use std::path::Path;

use kraken_storage::Digest;
use kraken_transport::quic::RequestBody;
use tokio::io::AsyncSeekExt;

use crate::cluster::{CallError, Cluster};
use crate::proto::{ErrorKind, RemoteError, Request, Response};

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
    let offset = match cluster
        .call(addr, &Request::UploadStatus { digest: *digest })
        .await?
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
    let io = |source| CallError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    file.seek(SeekFrom::Start(offset)).await.map_err(io)?;
    let mut body = tokio::io::AsyncReadExt::take(file, length.saturating_sub(offset));
    let request = Request::Upload {
        namespace: namespace.to_string(),
        digest: *digest,
        offset,
        length,
        replica,
        persisted,
    };
    let (response, _) = cluster
        .call_stream(addr, &request, RequestBody::Reader(&mut body))
        .await?;
    match response {
        Response::Uploaded { length } => Ok(Pushed {
            sent: length.saturating_sub(offset),
            length,
        }),
        other => Err(CallError::unexpected(addr, other)),
    }
}
