//! The check a pushed manifest passes before anything of it is stored: every blob and
//! child manifest it needs ([`crate::media::Required`]) exists in the cluster with the
//! size its descriptor claims.
//!
//! Missing ones are `400 MANIFEST_BLOB_UNKNOWN` naming every one of them (in `detail.blobs`
//! too); a descriptor whose `size` differs from the stored blob's is `400 MANIFEST_INVALID`
//! naming the field, the digest, the claimed and the actual size: the blob is known, the
//! descriptor is wrong. The cluster is asked about each distinct digest once, a few at a
//! time.

use futures::StreamExt;
use kraken_storage::Digest;
use serde_json::json;

use crate::error::{ApiError, ErrorCode};
use crate::media::Required;
use crate::registry::{Registry, RegistryError};
use crate::server::Gateway;

/// Digests asked about at once.
const CONCURRENCY: usize = 16;

/// Refuses the manifest unless everything in `required` exists with its claimed size.
pub(crate) async fn check_required<R: Registry>(
    gw: &Gateway<R>,
    repo: &str,
    required: &[Required],
) -> Result<(), ApiError> {
    let mut distinct: Vec<Digest> = required.iter().map(|r| r.digest).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let lengths: Vec<(Digest, Result<u64, RegistryError>)> = futures::stream::iter(
        distinct
            .into_iter()
            .map(|d| async move { (d, gw.registry.stat_blob(repo, &d).await) }),
    )
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    let mut missing = Vec::new();
    let mut found = std::collections::HashMap::new();
    for (digest, answer) in lengths {
        match answer {
            Ok(len) => {
                found.insert(digest, len);
            }
            Err(RegistryError::BlobUnknown(_)) => missing.push(digest),
            Err(e) => return Err(e.into()),
        }
    }
    if !missing.is_empty() {
        missing.sort_unstable();
        let names: Vec<String> = missing.iter().map(Digest::to_string).collect();
        return Err(ApiError::new(
            ErrorCode::ManifestBlobUnknown,
            format!("blob unknown to registry: {}", names.join(", ")),
        )
        .with_detail(json!({ "blobs": names })));
    }
    for r in required {
        let actual = found.get(&r.digest).copied();
        if let (Some(claimed), Some(actual)) = (r.size, actual)
            && claimed != actual
        {
            return Err(ApiError::new(
                ErrorCode::ManifestInvalid,
                format!(
                    "{} descriptor {} claims {claimed} bytes but the blob has {actual}",
                    r.field, r.digest
                ),
            )
            .with_detail(json!({
                "field": r.field,
                "digest": r.digest.to_string(),
                "size": claimed,
                "actual": actual,
            })));
        }
    }
    Ok(())
}
