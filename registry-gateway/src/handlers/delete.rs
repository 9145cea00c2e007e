//! Deletion by digest: `DELETE /v2/<name>/manifests/<digest>` and
//! `DELETE /v2/<name>/blobs/<digest>`, both 202 `Accepted`.
//!
//! What leaves the cluster is the [`Registry`]'s business (on kraken: the repository's
//! link, the tags pointing at a manifest, and the blob itself once no repository links it;
//! docs/registry.md, "Deletion"). A repository that does not hold the digest answers 404
//! `MANIFEST_UNKNOWN` / `BLOB_UNKNOWN`; a mirror of a read-only upstream 403 `DENIED`; a
//! cluster that cannot delete 405 `UNSUPPORTED`.

use axum::http::StatusCode;
use kraken_storage::Digest;

use super::{Reply, empty};
use crate::reference::{check_name, parse_digest};
use crate::registry::Registry;
use crate::server::Gateway;

/// `DELETE /v2/<name>/manifests/<digest>` (the name is checked by the caller).
pub(crate) async fn manifest<R: Registry>(gw: &Gateway<R>, name: &str, digest: &Digest) -> Reply {
    gw.registry.delete_manifest(name, digest).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

/// `DELETE /v2/<name>/blobs/<digest>`.
pub(crate) async fn blob<R: Registry>(gw: &Gateway<R>, name: &str, digest: &str) -> Reply {
    check_name(name)?;
    let digest = parse_digest(digest)?;
    gw.registry.delete_blob(name, &digest).await?;
    Ok(empty(StatusCode::ACCEPTED))
}
