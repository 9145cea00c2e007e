//! Manifest writes: `PUT /v2/<name>/manifests/<reference>` and `DELETE` of a tag (of a
//! digest: [`super::delete`]).
//!
//! A PUT reads the body (at most `max_manifest_len`, else 413), validates it
//! ([`Manifest::parse`]), hashes it with a digest reference's algorithm (sha256 for a
//! tag) and checks it against the reference, checks that every
//! blob and child manifest it needs exists with the size it claims
//! ([`check_required`]: by tag and by digest alike, and before anything is stored, so a
//! refused manifest leaves nothing behind), stores it as a blob, points the tag at it (the
//! build index checks the whole closure again), and, when it has a `subject` (which need
//! not exist), lists it among that subject's referrers and answers with `OCI-Subject`.

use axum::body::Body;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use futures::StreamExt;
use kraken_storage::{Digest, DigestAlgorithm};

use super::manifest_check::check_required;
use super::manifests::store_manifest;
use super::pull::DIGEST_HEADER;
use super::{Ctx, Reply, empty, set};
use crate::error::{ApiError, ErrorCode};
use crate::media::Manifest;
use crate::reference::{Reference, check_name};
use crate::referrers::descriptor;
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
    let algorithm = match &reference {
        Reference::Digest(d) => d.algorithm(),
        Reference::Tag(_) => DigestAlgorithm::default(),
    };
    let digest = Digest::of(algorithm, &bytes);
    if let Reference::Digest(d) = &reference
        && *d != digest
    {
        return Err(ApiError::new(
            ErrorCode::DigestInvalid,
            format!("manifest has digest {digest}, not {d}"),
        ));
    }
    check_required(gw, name, &manifest.required).await?;
    store_manifest(gw, name, &digest, &bytes).await?;
    match &reference {
        Reference::Tag(tag) => gw.registry.put_tag(name, tag, &digest).await?,
        // The repository links the manifest and all it reaches (by tag: through put_tag).
        Reference::Digest(_) => gw.registry.link_manifest(name, &digest).await?,
    }
    if let Some(subject) = &manifest.subject {
        let listed = descriptor(&manifest, &digest, bytes.len() as u64).to_string();
        gw.registry
            .put_referrer(name, subject, &digest, &listed)
            .await?;
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
