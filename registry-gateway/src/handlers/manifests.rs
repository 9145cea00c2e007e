//! Manifest bytes to and from the cluster, where manifests are plain blobs.
//!
//! [`read_manifest`] reads one whole, refusing more than the configured limit and checking
//! the bytes against their digest; [`store_manifest`] stages bytes in a file and hands it
//! to `put_blob`.

use futures::StreamExt;
use kraken_storage::Digest;

use crate::error::{ApiError, ErrorCode};
use crate::registry::{Registry, RegistryError};
use crate::server::Gateway;

/// Reads the manifest `digest` of `repo` whole (at most `max_manifest_len` bytes; a larger
/// blob is 404 `MANIFEST_UNKNOWN`).
pub(crate) async fn read_manifest<R: Registry>(
    gw: &Gateway<R>,
    repo: &str,
    digest: &Digest,
) -> Result<Vec<u8>, ApiError> {
    let max = gw.config.max_manifest_len;
    let body = gw
        .registry
        .read_blob(repo, digest, None)
        .await
        .map_err(ApiError::from_manifest)?;
    // Larger than any manifest: a blob asked for through the manifests endpoint, which
    // is unknown as a manifest (distribution answers 404 too), not an invalid request.
    let too_big = || {
        ApiError::new(
            ErrorCode::ManifestUnknown,
            format!("{digest} is larger than the {max}-byte manifest limit: not a manifest"),
        )
    };
    if body.total > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(body.total).unwrap_or(0));
    let mut stream = body.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ApiError::from_manifest)?;
        if (bytes.len() + chunk.len()) as u64 > max {
            return Err(too_big());
        }
        bytes.extend_from_slice(&chunk);
    }
    if !digest.matches(&bytes) {
        return Err(ApiError::from(RegistryError::Internal(format!(
            "the cluster returned bytes that do not match {digest}"
        ))));
    }
    Ok(bytes)
}

/// Stores `bytes` as blob `digest` of `repo`.
pub(crate) async fn store_manifest<R: Registry>(
    gw: &Gateway<R>,
    repo: &str,
    digest: &Digest,
    bytes: &[u8],
) -> Result<(), ApiError> {
    let staged = gw.uploads()?.staging_file();
    tokio::fs::write(staged.path(), bytes)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unknown, format!("staging manifest: {e}")))?;
    gw.registry
        .put_blob(repo, digest, staged.path(), bytes.len() as u64)
        .await
        .map_err(ApiError::from)
}
