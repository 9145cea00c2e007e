//! Request handling: [`dispatch`] maps (method, [`Route`]) to a handler.
//!
//! - [`pull`]: manifests, blobs (with ranges), tag lists, the catalog and referrers.
//! - [`uploads`]: blob upload sessions (start, mount, chunks, status, finish, cancel).
//! - [`upload_stream`]: monolithic uploads streamed to the cluster as they arrive.
//! - [`manifest_push`]: manifest PUT (with referrers upkeep) and tag DELETE.
//! - [`manifest_check`]: what must exist before a pushed manifest is stored.
//! - [`delete`]: manifest DELETE by digest and blob DELETE.
//! - [`manifests`]: reading and writing manifest bytes through the cluster.
//! - [`negotiate`]: `Accept` negotiation for manifest pulls.
//!
//! Writes pass [`write_gate`] first: 405 when push is off, 401 without credentials.
//! Before any handler, `?ns=` maps the route's repository ([`crate::mirror`]), and after
//! it a `Location` under that repository is rewritten to the client's own path.

pub(crate) mod delete;
pub(crate) mod manifest_check;
pub(crate) mod manifest_push;
pub(crate) mod manifests;
pub(crate) mod negotiate;
pub(crate) mod pull;
pub(crate) mod upload_stream;
pub(crate) mod uploads;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, LOCATION, TRANSFER_ENCODING,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode};
use crate::mirror::Mirrored;
use crate::reference::check_name;
use crate::registry::Registry;
use crate::route::Route;
use crate::server::Gateway;

/// A handler's outcome.
pub(crate) type Reply = Result<Response, ApiError>;

/// The parts of a request handlers read.
pub(crate) struct Ctx {
    /// Request headers.
    pub(crate) headers: HeaderMap,
    /// Query parameters (the last of repeated ones; `ns` has been applied to the route's
    /// name already).
    pub(crate) query: HashMap<String, String>,
    /// Whether this is a HEAD (no body in the answer).
    pub(crate) head: bool,
    /// The client's address (`0.0.0.0` when the router is served without one): upload
    /// sessions are charged to it.
    pub(crate) client: IpAddr,
}

impl Ctx {
    /// A header as text, if present and visible ASCII.
    pub(crate) fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A query parameter.
    pub(crate) fn query(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }
}

/// A response with `status`, the given body and `Content-Length`.
pub(crate) fn respond(
    status: StatusCode,
    body: Vec<u8>,
    content_type: Option<&str>,
    head: bool,
) -> Response {
    let len = body.len();
    let mut r = Response::new(if head {
        Body::empty()
    } else {
        Body::from(body)
    });
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        set(&mut r, CONTENT_TYPE, ct);
    }
    // A 204 carries no Content-Length (RFC 9110 section 8.6).
    if status != StatusCode::NO_CONTENT {
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

/// A response with no body.
pub(crate) fn empty(status: StatusCode) -> Response {
    respond(status, Vec::new(), None, false)
}

/// Sets a header (values come from validated names, digests and numbers; an invalid one
/// is dropped rather than panicking).
pub(crate) fn set(r: &mut Response, name: impl axum::http::header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// Refuses a write when push is off or the credentials are missing.
fn write_gate<R>(gw: &Gateway<R>, ctx: &Ctx) -> Result<(), ApiError> {
    if !gw.config.push {
        return Err(ApiError::push_disabled());
    }
    match &gw.config.auth {
        Some(auth) => auth.check(&ctx.headers),
        None => Ok(()),
    }
}

/// `GET /v2/`: the version check. With credentials configured it also answers clients'
/// "ping": 401 with the challenges unless valid credentials came along, which is how
/// clients (docker, containers/image) learn to send them and how `docker login` checks
/// them. Other reads stay open.
fn base<R>(gw: &Gateway<R>, ctx: &Ctx) -> Reply {
    if let Some(auth) = &gw.config.auth {
        auth.check(&ctx.headers)?;
    }
    Ok(respond(
        StatusCode::OK,
        b"{}".to_vec(),
        Some("application/json"),
        ctx.head,
    ))
}

/// The single handler behind the router.
pub(crate) async fn dispatch<R: Registry>(
    State(gw): State<Arc<Gateway<R>>>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let Some(mut route) = Route::parse(path) else {
        return ApiError::not_found(path).into_response();
    };
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let mirrored = mirror_route(&mut route, query.get("ns").map(String::as_str));
    let method = parts.method.clone();
    let has_body = parts.headers.contains_key(TRANSFER_ENCODING)
        || parts
            .headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let client = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let ctx = Ctx {
        headers: parts.headers,
        query,
        head: method == Method::HEAD,
        client,
    };
    let (result, mirrored) = match mirrored {
        Ok(mirrored) => (
            handle(gw.as_ref(), &ctx, method, route, body).await,
            mirrored,
        ),
        Err(e) => (Err(e), None),
    };
    let mut response = result.unwrap_or_else(|e| {
        let mut r = e.into_response();
        // An error may leave the request body unread (a 413 stops reading at the limit),
        // and then the server closes the connection after answering. Saying so keeps the
        // client from sending its next request on it: without this, a pooled client's
        // next request could meet the close and fail (seen once in CI as an incomplete
        // message on the request after a 413).
        if has_body {
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if ctx.head {
            // Keep the headers, drop the body.
            *r.body_mut() = Body::empty();
        }
        r
    });
    if let Some(m) = &mirrored {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok());
        if let Some(rewritten) = location.and_then(|l| m.location(l)) {
            set(&mut response, LOCATION, &rewritten);
        }
    }
    response
}

/// The handler of (method, route).
async fn handle<R: Registry>(
    gw: &Gateway<R>,
    ctx: &Ctx,
    method: Method,
    route: Route,
    body: Body,
) -> Reply {
    let read = method == Method::GET || method == Method::HEAD;
    match route {
        Route::Base if read => base(gw, ctx),
        Route::Base => Err(ApiError::method_not_allowed("GET, HEAD")),
        Route::Catalog if read => pull::catalog(gw, ctx).await,
        Route::Catalog => Err(ApiError::method_not_allowed("GET, HEAD")),
        Route::Tags { name } if read => pull::tags(gw, ctx, &name).await,
        Route::Tags { .. } => Err(ApiError::method_not_allowed("GET, HEAD")),
        Route::Manifest { name, reference } => match method {
            Method::GET | Method::HEAD => pull::manifest(gw, ctx, &name, &reference).await,
            Method::PUT => match write_gate(gw, ctx) {
                Ok(()) => manifest_push::put(gw, ctx, &name, &reference, body).await,
                Err(e) => Err(e),
            },
            Method::DELETE => match write_gate(gw, ctx) {
                Ok(()) => manifest_push::delete(gw, &name, &reference).await,
                Err(e) => Err(e),
            },
            _ => Err(ApiError::method_not_allowed("GET, HEAD, PUT, DELETE")),
        },
        Route::Blob { name, digest } => match method {
            Method::GET | Method::HEAD => pull::blob(gw, ctx, &name, &digest).await,
            Method::DELETE => match write_gate(gw, ctx) {
                Ok(()) => delete::blob(gw, &name, &digest).await,
                Err(e) => Err(e),
            },
            _ => Err(ApiError::method_not_allowed("GET, HEAD, DELETE")),
        },
        Route::UploadStart { name } => match method {
            Method::POST => match write_gate(gw, ctx) {
                Ok(()) => uploads::start(gw, ctx, &name, body).await,
                Err(e) => Err(e),
            },
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        Route::Upload { name, id } => match write_gate(gw, ctx) {
            Err(e) => Err(e),
            Ok(()) => match method {
                Method::GET => uploads::status(gw, &name, &id).await,
                Method::PATCH => uploads::patch(gw, ctx, &name, &id, body).await,
                Method::PUT => uploads::finish(gw, ctx, &name, &id, body).await,
                Method::DELETE => uploads::cancel(gw, &name, &id).await,
                _ => Err(ApiError::method_not_allowed("GET, PATCH, PUT, DELETE")),
            },
        },
        Route::Referrers { name, digest } if read => pull::referrers(gw, ctx, &name, &digest).await,
        Route::Referrers { .. } => Err(ApiError::method_not_allowed("GET, HEAD")),
    }
}

/// Maps the route's repository for containerd's `ns` (see [`crate::mirror`]); 400
/// `NAME_INVALID` for a bad `ns`. Routes without a repository ignore it.
fn mirror_route(route: &mut Route, ns: Option<&str>) -> Result<Option<Mirrored>, ApiError> {
    let Some(name) = route.name_mut() else {
        return Ok(None);
    };
    let mirrored = Mirrored::new(ns, name)
        .map_err(|e| ApiError::new(ErrorCode::NameInvalid, e.to_string()))?;
    if let Some(m) = &mirrored {
        check_name(m.cluster())?;
        *name = m.cluster().to_string();
    }
    Ok(mirrored)
}
