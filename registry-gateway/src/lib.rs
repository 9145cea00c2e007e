//! The Docker Registry v2 / OCI distribution HTTP API over cluster traits.
//!
//! This crate is the HTTP edge and knows nothing of QUIC or roles: [`registry::Registry`]
//! is what it needs from a cluster, and `kraken-node` implements it. [`router`] builds the
//! axum router over any implementation, [`serve`] (and [`serve_tls`]) run it on a listener.
//!
//! Modules:
//! - [`names`]: the specification's grammar for repository names and tags, shared by the
//!   gateway and the build-index so both refuse exactly the same names.
//! - [`registry`]: the [`registry::Registry`] trait and its error type.
//! - [`media`]: manifest media types and the one manifest parser: what a pushed manifest
//!   must look like, what a stored one is served as, and what it references (the
//!   build index follows those).
//! - [`error`]: the specification's error codes and JSON error bodies.
//! - [`mirror`]: containerd's mirror requests (`?ns=<registry>`): the cluster repository
//!   a name maps to, with Docker Hub's rules.
//! - `config`: [`GatewayConfig`], [`GatewayError`]; `auth`: [`PushAuth`] for writes;
//!   `metrics`: [`GatewayMetrics`] (registered into the process's prometheus-client
//!   registry).
//! - `listen`: every HTTP listener's connection handling ([`serve_router`]): a cap on
//!   connections (`503` past it), head, idle and body timeouts, a minimum body rate, all
//!   in [`HttpLimits`], counted in [`ListenerMetrics`]; `loglimit`: [`LogLimiter`], one
//!   log line per kind of problem per interval.
//! - `server`: [`router`] and [`serve`]; `tls`: [`serve_tls`]; `blobserve`:
//!   [`serve_blobs`], the zero-copy blob server blob `GET`s are redirected to when the
//!   blob is complete on this host.
//! - `route`: which endpoint a path names (parsed from the right, names have slashes);
//!   `reference`: validation of names, tags and digests; `range`: `Range` and
//!   `Content-Range`; `uploads`: durable upload sessions on disk; `referrers`: the
//!   referrers API's index, built from the list the cluster keeps.
//! - `handlers`: the request handlers; `access`: version header, access log, metrics.
//!
//! # The API served
//!
//! Every response carries `Docker-Distribution-API-Version: registry/2.0`; unknown query
//! parameters are ignored. containerd's `ns` (the registry a mirror is asked for) maps
//! every `/v2/<name>/…` request to repository `<ns>/<name>` before the [`registry::Registry`]
//! sees it (see [`mirror`]; a bad `ns` is 400 `NAME_INVALID`), and `Location`s name the
//! client's own path with the same `ns`.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v2/` | 200 `{}` |
//! | `GET,HEAD /v2/<name>/manifests/<tag or digest>` | the manifest, typed by its `mediaType`, if `Accept` allows it |
//! | `GET,HEAD /v2/<name>/blobs/<digest>` | the blob, streamed; `Range` gives 206 or 416; a `GET` of a blob complete on this host is `307` to the blob server when one runs ([`GatewayConfig::blob_server`]) |
//! | `GET /v2/<name>/tags/list`, `GET /v2/_catalog` | pages (`n`, `last`, `Link`) |
//! | `GET /v2/<name>/referrers/<digest>` | an OCI index from the cluster's referrers list (empty when none) |
//! | `POST /v2/<name>/blobs/uploads/` | session (202), monolithic `?digest=` or mount (201) |
//! | `PATCH`/`PUT`/`GET`/`DELETE` on an upload | chunk / finish / progress / cancel |
//! | `PUT /v2/<name>/manifests/<ref>` | 201 once what it references exists; lists a `subject`'s referrer |
//! | `DELETE /v2/<name>/manifests/<tag>` | the cluster's `delete_tag` |
//!
//! `docs/registry.md` lists the choices the specification leaves and where the gateway
//! differs from distribution.
//!
//! Writes (uploads, manifest PUT, every DELETE) answer 405 `UNSUPPORTED` when
//! [`GatewayConfig::push`] is off and 401 without the configured credentials; a push-enabled
//! gateway without credentials serves only on loopback unless
//! [`GatewayConfig::allow_anonymous_push`]. Upload sessions and their staged bytes are capped
//! per client address and in total ([`UploadLimits`], 429 `TOOMANYREQUESTS`), and every
//! connection is served within [`HttpLimits`] (`docs/registry.md`, "Connections, uploads
//! and exposure").

mod access;
mod auth;
mod blobserve;
mod config;
pub mod error;
mod handlers;
mod listen;
mod loglimit;
pub mod media;
mod metrics;
pub mod mirror;
pub mod names;
mod pass_on;
mod range;
mod reference;
mod referrers;
pub mod registry;
mod route;
mod server;
mod tls;
mod uploads;

pub use auth::{AuthConfigError, BasicCredential, PushAuth};
pub use blobserve::fuzzing::decode_blob_request;
pub use blobserve::{BlobServerConfig, DEFAULT_BLOB_MAX_CONNECTIONS, serve_blobs};
pub use config::{
    DEFAULT_EMPTY_UPLOAD_TTL, DEFAULT_MAX_MANIFEST_LEN, DEFAULT_PAGE_LIMIT, DEFAULT_UPLOAD_TTL,
    GatewayConfig, GatewayError, UploadLimits,
};
pub use listen::{
    DEFAULT_BODY_MIN_RATE, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, HttpLimits, ListenerMetrics, serve_router,
};
pub use loglimit::{DEFAULT_LOG_INTERVAL, LogLimiter};
pub use metrics::GatewayMetrics;
pub use server::{router, serve};
pub use tls::{serve_tls, tls_config_from_pem};
