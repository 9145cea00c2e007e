//! Whole blobs and metainfo from the origins, for roles that need them (the build-index's
//! manifest checks and replication, the registry proxy): small blobs (manifests) into
//! memory, large ones into a file, trying each owner in ring order. The calls themselves
//! are `kraken_client`'s [`Download`] (checked against the digest) and
//! [`MetainfoQuery`] (with a deadline); this module turns their errors into the
//! [`RemoteError`]s roles answer with.

use std::path::Path;
use std::time::Instant;

use kraken_client::download::{Download, DownloadError};
use kraken_client::metainfo::{METAINFO_DEADLINE, MetainfoQuery, MetainfoQueryError};
use kraken_membership::Role;
use kraken_storage::{Digest, Metainfo};

use crate::client::{CallError, Cluster};
use crate::proto::{ErrorKind, RemoteError};

/// The whole blob in memory, if it is at most `max` bytes.
pub async fn fetch_bytes(
    cluster: &Cluster,
    digest: &Digest,
    max: u64,
) -> Result<Vec<u8>, RemoteError> {
    from_owners(cluster, digest, |download| async move {
        let len = download.len();
        if len > max {
            return Err(RemoteError::new(
                ErrorKind::BadRequest,
                format!("{digest} is {len} bytes; at most {max} are read into memory"),
            ));
        }
        download.into_vec().await.map_err(download_error)
    })
    .await
}

/// The whole blob into `path` (created or truncated; removed if the fetch fails); returns
/// its length. The bytes are checked against the digest.
pub async fn fetch_to_file(
    cluster: &Cluster,
    digest: &Digest,
    path: &Path,
) -> Result<u64, RemoteError> {
    from_owners(cluster, digest, |download| async move {
        download.save(path, |_| {}).await.map_err(download_error)
    })
    .await
}

/// Downloads the whole blob from its origins in ring order and hands it to `read`, until
/// one succeeds. Errors no other owner can fix (a bad request, a digest mismatch the
/// origin itself reports) end the search.
async fn from_owners<T, F>(
    cluster: &Cluster,
    digest: &Digest,
    mut read: impl FnMut(Download) -> F,
) -> Result<T, RemoteError>
where
    F: Future<Output = Result<T, RemoteError>>,
{
    let owners = cluster.owners_of_digest(Role::Origin, digest, 0);
    let mut last = RemoteError::new(ErrorKind::Unavailable, "no live origin");
    for owner in owners {
        let result = match Download::open(cluster, owner.quic_addr, digest, None).await {
            Ok(download) => read(download).await,
            Err(e) => Err(download_error(e)),
        };
        match result {
            Ok(out) => return Ok(out),
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

/// A failed download as the remote error a caller reports: the node's own answer if it
/// gave one, an unavailable origin if its bytes did not arrive whole and right (another
/// owner may do better), an internal error if the local file failed.
fn download_error(e: DownloadError) -> RemoteError {
    match e {
        DownloadError::Call(e) => call_error(*e),
        DownloadError::File { .. } => RemoteError::new(ErrorKind::Internal, e.to_string()),
        other => RemoteError::new(ErrorKind::Unavailable, other.to_string()),
    }
}

/// The blob's metainfo, asked of its origins in ring order; an owner that lacks it reads
/// it through from its backend (the call waits on that, asking again on `Pending` until
/// [`METAINFO_DEADLINE`]). Every origin disowning the blob means nobody has it: `NotFound`.
pub async fn origin_metainfo(
    cluster: &Cluster,
    namespace: &str,
    digest: &Digest,
) -> Result<Metainfo, RemoteError> {
    let wait = std::time::Duration::from_secs(10);
    let query = MetainfoQuery::origins(namespace, digest, 0, wait, cluster.call_timeout);
    let e = match query.run(cluster, Instant::now() + METAINFO_DEADLINE).await {
        Ok(metainfo) => return Ok(metainfo),
        Err(e) => metainfo_error(e),
    };
    Err(if e.kind == ErrorKind::WrongNode {
        RemoteError::new(ErrorKind::NotFound, e.message)
    } else {
        e
    })
}

/// A failed metainfo query as the remote error a caller reports: the owner's own answer if
/// it gave one; a metainfo that does not decode or is another blob's is internal.
pub fn metainfo_error(e: MetainfoQueryError) -> RemoteError {
    match e {
        MetainfoQueryError::Call(e) => call_error(*e),
        MetainfoQueryError::StillPending { .. } => {
            RemoteError::new(ErrorKind::Unavailable, e.to_string())
        }
        MetainfoQueryError::Decode { .. } | MetainfoQueryError::WrongDigest { .. } => {
            RemoteError::new(ErrorKind::Internal, e.to_string())
        }
    }
}

/// A call error as the remote error a caller reports.
pub fn call_error(e: CallError) -> RemoteError {
    match e {
        CallError::Remote { source, .. } => source,
        // A local file the call needed: nothing another node can fix.
        e @ CallError::File { .. } => RemoteError::new(ErrorKind::BadRequest, e.to_string()),
        other => RemoteError::new(ErrorKind::Unavailable, other.to_string()),
    }
}
