//! Reading whole blobs from origins over the `Download` RPC: small ones (manifests) into
//! memory, large ones into a file, trying each owner in ring order.

use std::path::Path;

use kraken_membership::{Member, Role};
use kraken_storage::Digest;
use kraken_transport::quic::RequestBody;
use tokio::io::AsyncWriteExt;

use crate::client::{CallError, Cluster};
use crate::proto::{ErrorKind, RemoteError, Request, Response};

/// Where the bytes go.
enum Sink<'a> {
    Memory { max: u64, out: &'a mut Vec<u8> },
    File(&'a Path),
}

/// The whole blob in memory, if it is at most `max` bytes.
pub async fn fetch_bytes(
    cluster: &Cluster,
    digest: &Digest,
    max: u64,
) -> Result<Vec<u8>, RemoteError> {
    let mut out = Vec::new();
    fetch(cluster, digest, Sink::Memory { max, out: &mut out }).await?;
    Ok(out)
}

/// The whole blob into `path` (created or truncated); returns its length. The bytes are
/// checked against the digest.
pub async fn fetch_to_file(
    cluster: &Cluster,
    digest: &Digest,
    path: &Path,
) -> Result<u64, RemoteError> {
    fetch(cluster, digest, Sink::File(path)).await
}

async fn fetch(cluster: &Cluster, digest: &Digest, mut sink: Sink<'_>) -> Result<u64, RemoteError> {
    let owners: Vec<Member> = cluster.owners_of_digest(Role::Origin, digest, 0);
    let mut last = RemoteError::new(ErrorKind::Unavailable, "no live origin");
    for owner in owners {
        match fetch_from(cluster, owner.quic_addr, digest, &mut sink).await {
            Ok(n) => return Ok(n),
            Err(e) => {
                let give_up = matches!(e.kind, ErrorKind::BadRequest | ErrorKind::DigestMismatch);
                last = e;
                if give_up {
                    break;
                }
            }
        }
    }
    Err(last)
}

async fn fetch_from(
    cluster: &Cluster,
    addr: std::net::SocketAddr,
    digest: &Digest,
    sink: &mut Sink<'_>,
) -> Result<u64, RemoteError> {
    let request = Request::Download {
        digest: *digest,
        offset: 0,
        len: 0,
    };
    let (response, mut recv) = cluster
        .call_stream(addr, &request, RequestBody::None)
        .await
        .map_err(call_error)?;
    let len = match response {
        Response::Content { len, .. } => len,
        other => return Err(call_error(CallError::unexpected(addr, other))),
    };
    if let Sink::Memory { max, .. } = sink
        && len > *max
    {
        return Err(RemoteError::new(
            ErrorKind::BadRequest,
            format!("{digest} is {len} bytes; at most {max} are read into memory"),
        ));
    }
    let mut hasher = kraken_storage::DigestHasher::new(digest.algorithm());
    let mut file = match sink {
        Sink::File(path) => Some(tokio::fs::File::create(path).await.map_err(io_error)?),
        Sink::Memory { .. } => None,
    };
    let mut got = 0u64;
    loop {
        let chunk = recv.read_chunk(usize::MAX, true).await.map_err(|e| {
            RemoteError::new(ErrorKind::Unavailable, format!("download from {addr}: {e}"))
        })?;
        let Some(chunk) = chunk else { break };
        got += chunk.bytes.len() as u64;
        if got > len {
            break;
        }
        hasher.update(&chunk.bytes);
        match (&mut file, &mut *sink) {
            (Some(f), _) => f.write_all(&chunk.bytes).await.map_err(io_error)?,
            (None, Sink::Memory { out, .. }) => out.extend_from_slice(&chunk.bytes),
            (None, Sink::File(_)) => {}
        }
    }
    if got != len || hasher.finish() != *digest {
        if let Sink::Memory { out, .. } = sink {
            out.clear();
        }
        return Err(RemoteError::new(
            ErrorKind::Unavailable,
            format!("download of {digest} from {addr} was cut short or corrupt"),
        ));
    }
    if let Some(mut f) = file {
        f.flush().await.map_err(io_error)?;
        f.sync_data().await.map_err(io_error)?;
    }
    Ok(len)
}

fn io_error(e: std::io::Error) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, e.to_string())
}

/// The blob's metainfo, asked of its origins in ring order; an owner that lacks it reads
/// it through from its backend (the call waits on that, asking again on `Pending`). Every
/// origin disowning the blob means nobody has it: `NotFound`.
pub async fn origin_metainfo(
    cluster: &Cluster,
    namespace: &str,
    digest: &Digest,
) -> Result<kraken_storage::Metainfo, RemoteError> {
    let owners = cluster.owners_of_digest(Role::Origin, digest, 0);
    let request = Request::OriginMetainfo {
        namespace: namespace.to_string(),
        digest: *digest,
        wait_ms: 10_000,
    };
    let limit = std::time::Duration::from_secs(10) + cluster.call_timeout;
    loop {
        match cluster
            .call_first(&owners, Role::Origin, &request, limit)
            .await
        {
            Ok(Response::Metainfo(bytes)) => {
                return kraken_storage::Metainfo::decode(&bytes)
                    .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()));
            }
            Ok(Response::Pending) => continue,
            Ok(other) => {
                return Err(RemoteError::new(
                    ErrorKind::Internal,
                    format!("unexpected origin answer {other:?}"),
                ));
            }
            Err(e) => {
                let e = call_error(e);
                return Err(if e.kind == ErrorKind::WrongNode {
                    RemoteError::new(ErrorKind::NotFound, e.message)
                } else {
                    e
                });
            }
        }
    }
}

/// A call error as the remote error a caller reports.
pub fn call_error(e: CallError) -> RemoteError {
    match e {
        CallError::Remote { source, .. } => source,
        other => RemoteError::new(ErrorKind::Unavailable, other.to_string()),
    }
}
