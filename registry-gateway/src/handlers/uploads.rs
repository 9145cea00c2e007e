//! Blob uploads: `POST` (start, monolithic, or cross-repository mount), `PATCH` (chunks),
//! `PUT` (finish), `GET` (progress) and `DELETE` (cancel) on upload sessions.
//!
//! Two paths into the cluster, neither hashing on the gateway (the owning origin verifies
//! the digest in the one pass that stores the blob):
//!
//! - **Streamed**: a monolithic upload with a `Content-Length` (`POST ?digest=`, or the
//!   `PUT ?digest=` of a session that holds no bytes) goes to the owning origin while the
//!   client sends it, with no copy on this disk ([`super::upload_stream`]). If the first
//!   owner fails before a byte of the body is taken, the next one is tried; if it fails
//!   mid-body, the answer is 503 `UNAVAILABLE` with `Retry-After`: the client's request was
//!   fine and sending it again works (the session, still empty, stays for that). It is not
//!   `BLOB_UPLOAD_INVALID`, which is a 400 and blames the client's upload. A cluster that
//!   cannot take a stream (an origin from before the streaming ingest, during a rolling
//!   upgrade) declines it before reading a byte, and the body is staged instead.
//! - **Staged**: chunks (`PATCH`, a chunk with the `PUT`, a body without `Content-Length`)
//!   are appended to the session's file and fsynced before they are acknowledged; the
//!   closing `PUT ?digest=` sends the file to the owning origin (`put_blob`).
//! - **Passed on**: a staged session's chunks also go to the cluster as they arrive
//!   ([`crate::pass_on`], `Registry::stage_blob`), and the closing `PUT` has the cluster
//!   store those bytes under the digest (`Registry::commit_staged`) instead of sending the
//!   file. If that fails in any way but wrong content, the file is sent as above.
//!
//! A digest that does not match discards the session and stores nothing anywhere (400
//! `DIGEST_INVALID`). If the cluster is unavailable the session is kept so the client can
//! retry the `PUT`.
//!
//! **When 201 is sent** (any path): the first owning origin that took the blob holds it
//! verified (its digest, hashed with the digest's algorithm, and its length), fsynced in
//! its store and pinned, and its write-back to the backend was committed to its redb queue
//! before the blob entered its store (for a streamed or staged body, before the body was
//! even asked for). Copies to the blob's other owners follow asynchronously,
//! each queueing its own write-back. A `202` to a
//! `PATCH` means the chunk is fsynced in the session on the gateway's disk and counted in
//! its `meta.json`.

use std::time::Instant;

use axum::body::Body;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_RANGE, LOCATION, RANGE};

use super::pull::DIGEST_HEADER;
use super::upload_stream::{Streamed, stream_blob, stream_error, whole_body_length};
use super::{Ctx, Reply, empty, set};
use crate::error::{ApiError, ErrorCode};
use crate::pass_on::Leg;
use crate::range::{parse_chunk_range, upload_range_header};
use crate::reference::{check_name, parse_digest};
use crate::registry::{Registry, RegistryError};
use crate::server::Gateway;
use crate::uploads::{Session, UploadError};
use kraken_storage::Digest;

const UUID_HEADER: &str = "docker-upload-uuid";

fn location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// The API error of a failed session operation.
pub(crate) fn upload_error(e: UploadError, name: &str, id: &str) -> ApiError {
    match e {
        UploadError::Unknown => ApiError::new(
            ErrorCode::BlobUploadUnknown,
            format!("upload {id} of {name} is unknown or expired"),
        ),
        UploadError::Body(e) => match crate::listen::body_timeout(&e) {
            // The session keeps what it had acknowledged: the client may resume there.
            Some(why) => ApiError::new(
                ErrorCode::BlobUploadInvalid,
                format!("{why}; upload {id} keeps the bytes acknowledged before this request"),
            ),
            None => ApiError::new(ErrorCode::BlobUploadInvalid, e.to_string()),
        },
        UploadError::Length { expected, got } => ApiError::new(
            ErrorCode::SizeInvalid,
            format!("chunk length {got} does not match its Content-Range ({expected} bytes)"),
        ),
        UploadError::Io(e) => ApiError::new(ErrorCode::Unknown, format!("upload storage: {e}")),
        UploadError::TooMany(why) => ApiError::new(ErrorCode::TooManyRequests, why),
    }
}

/// 202 with the session's location and progress.
fn progress(
    status: StatusCode,
    name: &str,
    session_id: &str,
    received: u64,
) -> axum::response::Response {
    let mut r = empty(status);
    set(&mut r, LOCATION, &location(name, session_id));
    set(&mut r, RANGE, &upload_range_header(received));
    set(&mut r, UUID_HEADER, session_id);
    r
}

/// 201 for a blob now in the cluster.
fn created(name: &str, digest: &Digest) -> axum::response::Response {
    let mut r = empty(StatusCode::CREATED);
    set(&mut r, LOCATION, &format!("/v2/{name}/blobs/{digest}"));
    set(&mut r, DIGEST_HEADER, &digest.to_string());
    r
}

/// `POST /v2/<name>/blobs/uploads/` with optional `?digest=` or `?mount=&from=` (201
/// only when `from` links the blob, see [`Registry::mount_blob`]).
pub(crate) async fn start<R: Registry>(
    gw: &Gateway<R>,
    ctx: &Ctx,
    name: &str,
    body: Body,
) -> Reply {
    check_name(name)?;
    if let Some(mount) = ctx.query("mount") {
        let digest = parse_digest(mount)?;
        // Only a repository that links the blob lends it; otherwise (and without `from`)
        // a normal upload starts, as the specification says.
        if let Some(from) = ctx.query("from") {
            check_name(from)?;
            match gw.registry.mount_blob(name, from, &digest).await {
                Ok(true) => return Ok(created(name, &digest)),
                Ok(false) | Err(RegistryError::BlobUnknown(_) | RegistryError::NameUnknown(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let monolithic = ctx.query("digest").map(parse_digest).transpose()?;
    let mut body = body;
    if let Some(digest) = &monolithic
        && let Some(len) = whole_body_length(ctx)
    {
        let started = Instant::now();
        match stream_blob(gw, name, digest, len, body).await {
            Ok(Streamed::Stored) => {
                gw.config.metrics.upload_done(started.elapsed());
                return Ok(created(name, digest));
            }
            Ok(Streamed::Declined(unread)) => body = unread,
            Err(e) => return Err(stream_error(e, name, "new")),
        }
    }
    let mut session = gw
        .uploads()?
        .create(name, ctx.client)
        .await
        .map_err(|e| upload_error(e, name, "new"))?;
    let id = session.id().as_str().to_string();
    match monolithic {
        Some(digest) => {
            if let Err(e) = session.append(body, None, &mut None).await {
                let _ = session.remove().await;
                return Err(upload_error(e, name, &id));
            }
            // The client never saw this session's id: nothing to retry, so never keep it.
            complete(gw, name, session, &digest, false, None).await
        }
        None => Ok(progress(StatusCode::ACCEPTED, name, &id, 0)),
    }
}

/// `GET <location>`: 204 with the progress.
pub(crate) async fn status<R: Registry>(gw: &Gateway<R>, name: &str, id: &str) -> Reply {
    check_name(name)?;
    let (id, received) = gw
        .uploads()?
        .status(name, id)
        .await
        .map_err(|e| upload_error(e, name, id))?;
    Ok(progress(
        StatusCode::NO_CONTENT,
        name,
        id.as_str(),
        received,
    ))
}

/// The leg passing `session`'s bytes on to the cluster ([`crate::pass_on`]): its own,
/// or a new one for a session that holds no byte yet.
fn leg_for<R: Registry>(gw: &Gateway<R>, name: &str, session: &Session) -> Option<Leg> {
    if !gw.config.pass_on_chunks {
        return None;
    }
    let legs = gw.uploads().ok()?.legs();
    match legs.take(session.id()) {
        Some(leg) => Some(leg),
        None if session.received() == 0 && legs.room() => Some(Leg::start(&gw.registry, name)),
        None => None,
    }
}

/// Writes the body at the session's end, honouring an optional `Content-Range`, and
/// hands it to `leg` too.
async fn write_chunk(
    ctx: &Ctx,
    name: &str,
    session: &mut Session,
    body: Body,
    leg: &mut Option<Leg>,
) -> Result<(), ApiError> {
    let id = session.id().as_str().to_string();
    let expected = match ctx.header(CONTENT_RANGE) {
        None => None,
        Some(v) => {
            let r = parse_chunk_range(v);
            match r {
                Some(r) if r.start == session.received() => Some(r.end - r.start),
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::RangeInvalid,
                        format!(
                            "chunk range {:?} does not start at the {} bytes received",
                            crate::error::clip(v),
                            session.received()
                        ),
                    )
                    .with_header(LOCATION, &location(name, &id))
                    .with_header(RANGE, &upload_range_header(session.received()))
                    .with_header(UUID_HEADER, &id));
                }
            }
        }
    };
    session
        .append(body, expected, leg)
        .await
        .map(|_| ())
        .map_err(|e| upload_error(e, name, &id))
}

/// `PATCH <location>`: one chunk.
pub(crate) async fn patch<R: Registry>(
    gw: &Gateway<R>,
    ctx: &Ctx,
    name: &str,
    id: &str,
    body: Body,
) -> Reply {
    check_name(name)?;
    let uploads = gw.uploads()?;
    let mut session = uploads
        .open_session(name, id)
        .await
        .map_err(|e| upload_error(e, name, id))?;
    let mut leg = leg_for(gw, name, &session);
    write_chunk(ctx, name, &mut session, body, &mut leg).await?;
    if let Some(leg) = leg {
        uploads
            .legs()
            .keep(session.id().clone(), leg, uploads.ttl());
    }
    Ok(progress(
        StatusCode::ACCEPTED,
        name,
        session.id().as_str(),
        session.received(),
    ))
}

/// `PUT <location>?digest=`: optional last chunk, then verify and store.
pub(crate) async fn finish<R: Registry>(
    gw: &Gateway<R>,
    ctx: &Ctx,
    name: &str,
    id: &str,
    body: Body,
) -> Reply {
    check_name(name)?;
    let digest = match ctx.query("digest") {
        Some(d) => parse_digest(d)?,
        None => {
            return Err(ApiError::new(
                ErrorCode::DigestInvalid,
                "finishing an upload needs ?digest=",
            ));
        }
    };
    let mut session = gw
        .uploads()?
        .open_session(name, id)
        .await
        .map_err(|e| upload_error(e, name, id))?;
    let mut body = body;
    if session.received() == 0
        && let Some(len) = whole_body_length(ctx)
    {
        // A leg of no bytes (an empty PATCH) has nothing to offer a streamed body.
        drop(gw.uploads()?.legs().take(session.id()));
        match stream_blob(gw, name, &digest, len, body).await {
            Ok(Streamed::Stored) => return finished(session, name, &digest).await,
            Ok(Streamed::Declined(unread)) => body = unread,
            Err(e) => {
                if !e.retryable() {
                    discard(session).await;
                }
                return Err(stream_error(e, name, id));
            }
        }
    }
    let mut leg = leg_for(gw, name, &session);
    write_chunk(ctx, name, &mut session, body, &mut leg).await?;
    complete(gw, name, session, &digest, true, leg).await
}

/// Stores the session's bytes as blob `digest`: from what its `leg` passed on when that
/// works, else by handing the staged file to the cluster, which verifies it against
/// `digest`. When the cluster fails for a reason worth retrying, the session is kept if
/// `keep_for_retry`.
async fn complete<R: Registry>(
    gw: &Gateway<R>,
    name: &str,
    session: Session,
    digest: &Digest,
    keep_for_retry: bool,
    leg: Option<Leg>,
) -> Reply {
    // The cluster hashes what a leg passes on with sha256 only.
    let from_leg = match leg {
        Some(leg) if matches!(digest, Digest::Sha256(_)) => {
            commit_leg(gw, name, &session, digest, leg).await
        }
        _ => None,
    };
    let stored = match from_leg {
        Some(stored) => stored,
        None => {
            gw.registry
                .put_blob(name, digest, &session.data_path(), session.received())
                .await
        }
    };
    match stored {
        Ok(()) => finished(session, name, digest).await,
        // Keep the session: the client may retry the PUT.
        Err(e) if keep_for_retry && !matches!(e, RegistryError::DigestInvalid(_)) => Err(e.into()),
        Err(e) => {
            discard(session).await;
            Err(e.into())
        }
    }
}

/// Tries to store the session as blob `digest` from what `leg` passed on: `Some(Ok)` when
/// stored, `Some(Err(DigestInvalid))` when those bytes (the session's very bytes) do not
/// hash to `digest`. Anything else (the leg failed, or the commit did) is `None` and costs
/// only the time it took: the caller sends the staged file, which the cluster checks
/// against the digest as always.
async fn commit_leg<R: Registry>(
    gw: &Gateway<R>,
    name: &str,
    session: &Session,
    digest: &Digest,
    leg: Leg,
) -> Option<Result<(), RegistryError>> {
    let id = session.id().as_str();
    let finishing = Instant::now();
    let staged = match leg.finish().await {
        Ok(staged) => staged,
        Err(e) => {
            tracing::debug!(id, error = %e, "the bytes passed on did not all arrive; sending the staged file");
            return None;
        }
    };
    if staged.length != session.received() {
        tracing::debug!(
            id,
            length = staged.length,
            "the bytes passed on are not the upload's; sending the staged file"
        );
        return None;
    }
    // Asked even when the digests differ: the cluster then drops the bytes at once, and
    // its verdict on the session's very bytes is the one the staged file would get.
    let committing = Instant::now();
    let committed = gw.registry.commit_staged(name, &staged, digest).await;
    tracing::debug!(id, finish = ?(committing - finishing), commit = ?committing.elapsed(), "passed-on upload committed");
    match committed {
        Ok(()) => {
            gw.config.metrics.passed_on();
            Some(Ok(()))
        }
        Err(e @ RegistryError::DigestInvalid(_)) => Some(Err(e)),
        Err(e) => {
            tracing::debug!(id, error = %e, "the bytes passed on were not stored; sending the staged file");
            None
        }
    }
}

/// 201 for a session whose blob is stored; the session goes.
async fn finished(session: Session, name: &str, digest: &Digest) -> Reply {
    let id = session.id().as_str().to_string();
    if let Err(e) = session.completed().await {
        tracing::warn!(id, error = %e, "removing a finished upload session");
    }
    Ok(created(name, digest))
}

/// Removes a session that can never succeed (its bytes do not match their digest).
async fn discard(session: Session) {
    let id = session.id().as_str().to_string();
    if let Err(e) = session.remove().await {
        tracing::warn!(id, error = %e, "removing a failed upload session");
    }
}

/// `DELETE <location>`: cancel.
pub(crate) async fn cancel<R: Registry>(gw: &Gateway<R>, name: &str, id: &str) -> Reply {
    check_name(name)?;
    let uploads = gw.uploads()?;
    let session = uploads
        .open_session(name, id)
        .await
        .map_err(|e| upload_error(e, name, id))?;
    drop(uploads.legs().take(session.id()));
    session
        .remove()
        .await
        .map_err(|e| upload_error(UploadError::Io(e), name, id))?;
    Ok(empty(StatusCode::NO_CONTENT))
}
