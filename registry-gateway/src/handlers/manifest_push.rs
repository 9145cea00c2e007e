//! Manifest writes: `PUT /v2/<name>/manifests/<reference>` and `DELETE` of a tag (of a
//! digest: [`super::delete`]).
//!
//! A PUT reads the body (at most `max_manifest_len`, else 413), validates it
//! ([`Manifest::parse`]), checks its sha256 against a digest reference, stores it as a
//! blob, points the tag at it (the cluster checks that everything it references exists:
//! `MANIFEST_BLOB_UNKNOWN` otherwise), and, when it has a `subject`, lists it in that
//! subject's referrers index and answers with `OCI-Subject`.

use axum::body::Body;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use futures::StreamExt;
use kraken_storage::Digest;

use super::manifests::{add_to_referrers, store_manifest};
use super::pull::DIGEST_HEADER;
use super::{Ctx, Reply, empty, set};
use crate::error::{ApiError, ErrorCode};
use crate::media::Manifest;
use crate::reference::{Reference, check_name};
use crate::registry::Registry;
use crate::server::Gateway;

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::ManifestInvalid,
        format!("manifest is larger than the {max}-byte limit"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// Reads a body of at most `max` bytes.
async fn read_body(body: Body, max: u64) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("request body failed: {e}"),
            )
        })?;
        if (out.len() + chunk.len()) as u64 > max {
            return Err(too_large(max));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `PUT /v2/<name>/manifests/<reference>`.
pub(crate) async fn put<R: Registry>(
    gw: &Gateway<R>,
    ctx: &Ctx,
    name: &str,
    reference: &str,
    body: Body,
) -> Reply {
    check_name(name)?;
    let reference = Reference::parse(reference)?;
    let max = gw.config.max_manifest_len;
    if ctx
        .header(CONTENT_LENGTH)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max)
    {
        return Err(too_large(max));
    }
    let bytes = read_body(body, max).await?;
    let manifest = Manifest::parse(&bytes, ctx.header(CONTENT_TYPE))
        .map_err(|e| ApiError::new(ErrorCode::ManifestInvalid, e.to_string()))?;
    let digest = Digest::sha256_of(&bytes);
    if let Reference::Digest(d) = &reference
        && *d != digest
    {
        return Err(ApiError::new(
            ErrorCode::DigestInvalid,
            format!("manifest has digest {digest}, not {d}"),
        ));
    }
    store_manifest(gw, name, &digest, &bytes).await?;
    match &reference {
        Reference::Tag(tag) => gw.registry.put_tag(name, tag, &digest).await?,
        // The repository links the manifest and all it reaches (by tag: through put_tag).
        Reference::Digest(_) => gw.registry.link_manifest(name, &digest).await?,
    }
    if let Some(subject) = &manifest.subject {
        add_to_referrers(gw, name, subject, &manifest, &digest, bytes.len() as u64).await?;
    }
    let mut r = empty(StatusCode::CREATED);
    set(&mut r, LOCATION, &format!("/v2/{name}/manifests/{digest}"));
    set(&mut r, DIGEST_HEADER, &digest.to_string());
    if let Some(subject) = &manifest.subject {
        set(&mut r, "oci-subject", &subject.to_string());
    }
    Ok(r)
}

/// `DELETE /v2/<name>/manifests/<tag or digest>` (by digest: see [`super::delete`]).
pub(crate) async fn delete<R: Registry>(gw: &Gateway<R>, name: &str, reference: &str) -> Reply {
    check_name(name)?;
    match Reference::parse(reference)? {
        Reference::Digest(digest) => super::delete::manifest(gw, name, &digest).await,
        Reference::Tag(tag) => {
            gw.registry.delete_tag(name, &tag).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
    }
}
