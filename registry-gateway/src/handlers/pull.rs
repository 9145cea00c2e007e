//! The read side: manifests, blobs (streamed, with ranges), tag lists, the catalog and
//! referrers.

use axum::body::Body;
use axum::http::StatusCode;
use axum::http::header::{ETAG, LINK, RANGE};
use axum::response::Response;
use futures::StreamExt;
use kraken_storage::Digest;
use serde_json::json;

use super::manifests::read_manifest;
use super::negotiate::{Accept, default_platform_child};
use super::{Ctx, Reply, respond, set};
use crate::blobserve::redirect::to_blob_server;
use crate::blobserve::response::blob_fields;
use crate::error::{ApiError, ErrorCode};
use crate::media::{DOCKER_MANIFEST_LIST, OCI_INDEX, content_type_of};
use crate::reference::{Reference, check_name, check_tag, parse_digest};
use crate::referrers::{index_of, legacy_entries, merge, referrers_tag};
use crate::registry::{ByteRange, Registry, RegistryError, resolve_range};
use crate::server::Gateway;

/// `Docker-Content-Digest`.
pub(crate) const DIGEST_HEADER: &str = "docker-content-digest";

/// The manifest `digest` of `name` and the type it is served with; 404 `MANIFEST_UNKNOWN`
/// for a blob that is no manifest.
async fn load<R: Registry>(
    gw: &Gateway<R>,
    name: &str,
    digest: &Digest,
) -> Result<(Vec<u8>, String), ApiError> {
    let bytes = read_manifest(gw, name, digest).await?;
    let content_type = content_type_of(&bytes).ok_or_else(|| {
        ApiError::new(
            ErrorCode::ManifestUnknown,
            format!("{digest} is not a manifest"),
        )
    })?;
    Ok((bytes, content_type))
}

fn not_accepted(content_type: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ManifestUnknown,
        format!("the manifest is a {content_type}, which the Accept header does not list"),
    )
}

/// `GET|HEAD /v2/<name>/manifests/<reference>`, negotiated by `Accept` (see
/// [`super::negotiate`]).
pub(crate) async fn manifest<R: Registry>(
    gw: &Gateway<R>,
    ctx: &Ctx,
    name: &str,
    reference: &str,
) -> Reply {
    check_name(name)?;
    let reference = Reference::parse(reference)?;
    let by_tag = matches!(reference, Reference::Tag(_));
    let mut digest = match reference {
        Reference::Tag(tag) => gw
            .registry
            .resolve_tag(name, &tag)
            .await
            .map_err(ApiError::from_manifest)?,
        Reference::Digest(d) => d,
    };
    let (mut bytes, mut content_type) = load(gw, name, &digest).await?;
    let accept = Accept::of(ctx);
    if !accept.accepts(&content_type) {
        // Distribution's fallback for old clients: a list by tag becomes its
        // linux/amd64 entry.
        let child = (by_tag && content_type == DOCKER_MANIFEST_LIST)
            .then(|| default_platform_child(&bytes))
            .flatten()
            .ok_or_else(|| not_accepted(&content_type))?;
        (bytes, content_type) = load(gw, name, &child).await?;
        if !accept.accepts(&content_type) {
            return Err(not_accepted(&content_type));
        }
        digest = child;
    }
    let mut r = respond(StatusCode::OK, bytes, Some(&content_type), ctx.head);
    set(&mut r, DIGEST_HEADER, &digest.to_string());
    set(&mut r, ETAG, &format!("\"{digest}\""));
    Ok(r)
}

/// `GET|HEAD /v2/<name>/blobs/<digest>`, with `Range` support.
///
/// A `GET` is one [`Registry::read_blob`] call with the range as the client sent it: the
/// cluster finds the blob once and resolves the range against its length once. A `HEAD`
/// asks only [`Registry::stat_blob`].
pub(crate) async fn blob<R: Registry>(
    gw: &Gateway<R>,
    ctx: &Ctx,
    name: &str,
    digest: &str,
) -> Reply {
    check_name(name)?;
    let digest = parse_digest(digest)?;
    // Complete on this host: the zero-copy blob server sends it (see `blobserve`).
    if let Some(redirect) = to_blob_server(gw, ctx, name, &digest).await {
        return Ok(redirect);
    }
    let asked = ctx.header(RANGE).and_then(ByteRange::parse);
    let (range, total, stream) = if ctx.head {
        let total = gw
            .registry
            .stat_blob(name, &digest)
            .await
            .map_err(ApiError::from_blob)?;
        (resolve_range(asked, total)?, total, None)
    } else {
        let body = gw
            .registry
            .read_blob(name, &digest, asked)
            .await
            .map_err(ApiError::from_blob)?;
        (body.range, body.total, Some(body.stream))
    };
    let status = if asked.is_some() || range != (0..total) {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let body = match stream {
        Some(s) => Body::from_stream(s.inspect(|item| {
            if let Err(e) = item {
                tracing::warn!(error = %e, "blob stream failed mid-response");
            }
        })),
        None => Body::empty(),
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    // The same fields as the blob server's answer.
    let partial = status == StatusCode::PARTIAL_CONTENT;
    *r.headers_mut() = blob_fields(&digest, &range, total, partial);
    Ok(r)
}

/// `n` and `last` of a listing: `n` defaults to and is capped at the page limit.
fn page_params(ctx: &Ctx, limit: usize) -> Result<(usize, Option<String>), ApiError> {
    let n = match ctx.query("n") {
        None | Some("") => limit,
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::PaginationNumberInvalid,
                    "n must be a non-negative integer",
                )
            })?
            .min(limit),
    };
    Ok((
        n,
        ctx.query("last")
            .filter(|l| !l.is_empty())
            .map(str::to_string),
    ))
}

/// `GET /v2/<name>/tags/list?n=&last=`.
pub(crate) async fn tags<R: Registry>(gw: &Gateway<R>, ctx: &Ctx, name: &str) -> Reply {
    check_name(name)?;
    let (n, last) = page_params(ctx, gw.config.page_limit)?;
    if let Some(l) = &last {
        check_tag(l)?;
    }
    let page = if n == 0 {
        Default::default()
    } else {
        gw.registry.list_tags(name, last.as_deref(), n).await?
    };
    let body = json!({ "name": name, "tags": page.names })
        .to_string()
        .into_bytes();
    let mut r = respond(StatusCode::OK, body, Some("application/json"), ctx.head);
    if let (true, Some(last)) = (page.more, page.names.last()) {
        set(
            &mut r,
            LINK,
            &format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""),
        );
    }
    Ok(r)
}

/// `GET /v2/_catalog?n=&last=`.
pub(crate) async fn catalog<R: Registry>(gw: &Gateway<R>, ctx: &Ctx) -> Reply {
    let (n, last) = page_params(ctx, gw.config.page_limit)?;
    if let Some(l) = &last {
        check_name(l)?;
    }
    let page = if n == 0 {
        Default::default()
    } else {
        gw.registry.catalog(last.as_deref(), n).await?
    };
    let body = json!({ "repositories": page.names })
        .to_string()
        .into_bytes();
    let mut r = respond(StatusCode::OK, body, Some("application/json"), ctx.head);
    if let (true, Some(last)) = (page.more, page.names.last()) {
        set(
            &mut r,
            LINK,
            &format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\""),
        );
    }
    Ok(r)
}

/// The referrers an older version kept in a `sha256-<hex>` tag, best effort: the table is
/// the list, so a failure to read the old tag only logs.
async fn legacy_referrers<R: Registry>(
    gw: &Gateway<R>,
    name: &str,
    subject: &Digest,
) -> Vec<serde_json::Value> {
    let index = match gw.registry.resolve_tag(name, &referrers_tag(subject)).await {
        Ok(index) => index,
        Err(RegistryError::TagUnknown(_) | RegistryError::NameUnknown(_)) => return Vec::new(),
        Err(e) => {
            tracing::warn!(%name, %subject, error = %e, "cannot read a legacy referrers tag");
            return Vec::new();
        }
    };
    match read_manifest(gw, name, &index).await {
        Ok(bytes) => legacy_entries(&bytes),
        Err(e) => {
            if e.code() != ErrorCode::ManifestUnknown {
                tracing::warn!(%name, %subject, "cannot read a legacy referrers index");
            }
            Vec::new()
        }
    }
}

/// `GET /v2/<name>/referrers/<digest>?artifactType=`.
pub(crate) async fn referrers<R: Registry>(
    gw: &Gateway<R>,
    ctx: &Ctx,
    name: &str,
    digest: &str,
) -> Reply {
    check_name(name)?;
    let subject = parse_digest(digest)?;
    let artifact_type = ctx.query("artifactType").filter(|t| !t.is_empty());
    let listed = gw.registry.referrers(name, &subject).await?;
    let legacy = legacy_referrers(gw, name, &subject).await;
    let body = index_of(merge(&listed, legacy), artifact_type);
    let mut r = respond(StatusCode::OK, body, Some(OCI_INDEX), ctx.head);
    if artifact_type.is_some() {
        set(&mut r, "oci-filters-applied", "artifactType");
    }
    Ok(r)
}
