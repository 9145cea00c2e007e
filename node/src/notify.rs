//! Push notifications on the proxy: a registry tells the cluster what was pushed, and the
//! cluster preheats it (the owning origins read it through from the backend, so the first
//! pulls find it warm).
//!
//! Two formats, each on its own path of the proxy's registry API:
//! - `POST /kraken/v1/notifications`: distribution's envelope
//!   (`application/vnd.docker.distribution.events.v1+json`). Only `push` events of
//!   manifests count (distribution also reports each layer push, which the manifest's walk
//!   reaches anyway); pulls, mounts and deletes are ignored.
//! - `POST /kraken/v1/webhooks/harbor`: Harbor's `PUSH_ARTIFACT` webhook; other event types
//!   are ignored.
//!
//! Both need `Authorization: Bearer <token>` (`[registry.notifications] token` or
//! `token_file`), compared in constant time; without a token configured the paths are not
//! served at all (404), so nothing is exposed by default. A body over [`MAX_BODY`] is 413,
//! malformed JSON 400. The answer does not wait for the fetch: accepted images go into a
//! bounded queue (202) that [`NotificationsConfig::max_in_flight`] preheats drain. When the
//! queue is full the event is dropped and counted, and the answer is 503, so the sender
//! (distribution and Harbor both retry on errors) tries again later: nothing is lost.
//! The repository is the one the notification names, after
//! [`NotificationsConfig::prefix`] (e.g. `docker.io/`, for the cluster's name of the
//! notifying registry's repositories).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kraken_client::preheat::{ImageRef, PreheatConfig, PreheatError, Reference, preheat};
use kraken_registry_gateway::media::Kind;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::client::Cluster;
use crate::metrics::Metrics;

/// The largest notification body read (distribution batches events; a megabyte is
/// thousands of them).
pub const MAX_BODY: usize = 1 << 20;

/// `[registry.notifications]`: preheating what a registry says was pushed (proxies).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// The bearer token senders present; unset (and no `token_file`): the endpoints are
    /// not served.
    pub token: Option<String>,
    /// A file holding the token (trailing whitespace ignored).
    pub token_file: Option<PathBuf>,
    /// Put before the repository a notification names (`docker.io/`: the notifying
    /// registry is the cluster's upstream under that name). Empty: the name as is.
    pub prefix: String,
    /// Images preheated at once.
    pub max_in_flight: usize,
    /// Images waiting to be preheated; beyond it, events are dropped and answered 503.
    pub queue: usize,
}

impl Default for NotificationsConfig {
    /// Off (no token), names as they come, 2 images at a time (each walks 4 blobs at once)
    /// and 1024 waiting.
    fn default() -> Self {
        NotificationsConfig {
            token: None,
            token_file: None,
            prefix: String::new(),
            max_in_flight: 2,
            queue: 1024,
        }
    }
}

impl std::fmt::Debug for NotificationsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationsConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("prefix", &self.prefix)
            .field("max_in_flight", &self.max_in_flight)
            .field("queue", &self.queue)
            .finish()
    }
}

/// Why `[registry.notifications]` cannot work.
#[derive(Debug, thiserror::Error)]
pub enum NotificationsError {
    /// Both `token` and `token_file`.
    #[error("registry.notifications: token and token_file exclude each other")]
    TwoTokens,
    /// `max_in_flight` or `queue` is 0.
    #[error("registry.notifications: max_in_flight and queue must be at least 1")]
    Zero,
    /// The token file cannot be read.
    #[error("registry.notifications.token_file {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token is empty.
    #[error("registry.notifications: the token is empty")]
    EmptyToken,
}

impl NotificationsConfig {
    /// Rejects settings that cannot work (the token file is read at start).
    pub fn validate(&self) -> Result<(), NotificationsError> {
        if self.token.is_some() && self.token_file.is_some() {
            return Err(NotificationsError::TwoTokens);
        }
        if self.max_in_flight == 0 || self.queue == 0 {
            return Err(NotificationsError::Zero);
        }
        Ok(())
    }

    /// The token, if one is configured.
    pub fn load_token(&self) -> Result<Option<String>, NotificationsError> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| NotificationsError::TokenFile {
                    path: path.clone(),
                    source,
                })?
                .trim_end()
                .to_string(),
            (None, None) => return Ok(None),
        };
        if token.is_empty() {
            return Err(NotificationsError::EmptyToken);
        }
        Ok(Some(token))
    }
}

/// Counters of notification preheats.
#[derive(Clone, Default)]
struct Counters {
    started: Counter,
    done: Counter,
    failed: Counter,
    dropped: Counter,
}

struct Notifier {
    token: String,
    prefix: String,
    queue: mpsc::Sender<ImageRef>,
    counters: Counters,
}

/// The notification endpoints over `cluster`, if a token is configured (`None`: not
/// served); starts the preheat workers, which stop when the router is dropped.
pub fn routes(
    config: &NotificationsConfig,
    cluster: Cluster,
    metrics: &Metrics,
) -> Result<Option<Router>, NotificationsError> {
    let Some(token) = config.load_token()? else {
        return Ok(None);
    };
    let counters = Counters::default();
    metrics.register(|r| {
        let c = &counters;
        for (name, help, counter) in [
            (
                "kraken_preheats_started",
                "Preheats started by push notifications",
                &c.started,
            ),
            (
                "kraken_preheats_done",
                "Preheats that warmed every blob",
                &c.done,
            ),
            (
                "kraken_preheats_failed",
                "Preheats with a blob or the tag failing",
                &c.failed,
            ),
            (
                "kraken_preheats_dropped",
                "Notified images dropped: queue full (answered 503)",
                &c.dropped,
            ),
        ] {
            r.register(name, help, counter.clone());
        }
    });
    let (tx, rx) = mpsc::channel(config.queue);
    crate::spawn(drain(rx, cluster, config.max_in_flight, counters.clone()));
    let notifier = Arc::new(Notifier {
        token,
        prefix: config.prefix.clone(),
        queue: tx,
        counters,
    });
    Ok(Some(
        Router::new()
            .route("/kraken/v1/notifications", post(distribution))
            .route("/kraken/v1/webhooks/harbor", post(harbor))
            .with_state(notifier),
    ))
}

/// Runs queued preheats, `max_in_flight` at a time, until every sender is gone.
async fn drain(
    mut rx: mpsc::Receiver<ImageRef>,
    cluster: Cluster,
    max_in_flight: usize,
    counters: Counters,
) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    while let Some(image) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (cluster, counters, permits) = (cluster.clone(), counters.clone(), permits.clone());
        counters.started.inc();
        crate::spawn(async move {
            preheat_with_retries(&cluster, &image, &counters, permit, &permits).await;
        });
    }
}

/// Attempts one notified preheat gets before it is counted failed.
const PREHEAT_ATTEMPTS: u32 = 5;
/// Wait before the second attempt; doubled before each further one (1 + 2 + 4 + 8 s).
const PREHEAT_RETRY_BASE: std::time::Duration = std::time::Duration::from_secs(1);

/// Preheats `image`, trying again after a failure: the sender got its 202 already and will
/// not send the event again, and most failures are transient (a build-index or origin not
/// yet in view, an upstream hiccup). Warming again what is held costs one RPC per blob.
///
/// Each attempt holds one of the `max_in_flight` permits (`permit` is the first one); the
/// wait between attempts does not, so events failing against a dead upstream do not hold
/// back the healthy ones behind them. An unknown tag is final: it is not asked again.
async fn preheat_with_retries(
    cluster: &Cluster,
    image: &ImageRef,
    counters: &Counters,
    permit: OwnedSemaphorePermit,
    permits: &Arc<Semaphore>,
) {
    let config = PreheatConfig::default();
    let mut permit = Some(permit);
    let mut wait = PREHEAT_RETRY_BASE;
    for attempt in 1..=PREHEAT_ATTEMPTS {
        let held = match permit.take() {
            Some(p) => p,
            None => match permits.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return, // The node is stopping.
            },
        };
        let mut last = attempt == PREHEAT_ATTEMPTS;
        match preheat(cluster, image, &config, |_| {}).await {
            Ok(s) if s.failures.is_empty() => {
                counters.done.inc();
                tracing::info!(%image, blobs = s.blobs(), fetched = s.bytes_fetched, attempt, "preheated");
                return;
            }
            Ok(s) => {
                let first = &s.failures[0];
                tracing::warn!(%image, failed = s.failures.len(), digest = %first.digest, error = %first.error, attempt, last, "preheat incomplete");
            }
            Err(e) => {
                last |= matches!(e, PreheatError::UnknownTag { .. });
                tracing::warn!(%image, error = %e, attempt, last, "preheat failed");
            }
        }
        if last {
            counters.failed.inc();
            return;
        }
        drop(held);
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

/// Distribution's envelope: only the fields read.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(default)]
    action: String,
    target: Option<Target>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    media_type: Option<String>,
    digest: Option<String>,
    repository: Option<String>,
    tag: Option<String>,
}

/// Harbor's webhook: only the fields read.
#[derive(Debug, Deserialize)]
struct HarborEvent {
    #[serde(rename = "type", default)]
    kind: String,
    event_data: Option<HarborData>,
}

#[derive(Debug, Deserialize)]
struct HarborData {
    #[serde(default)]
    resources: Vec<HarborResource>,
    repository: Option<HarborRepository>,
}

#[derive(Debug, Deserialize)]
struct HarborResource {
    digest: Option<String>,
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HarborRepository {
    repo_full_name: Option<String>,
}

/// The images a distribution envelope says were pushed.
fn distribution_images(envelope: Envelope) -> Vec<(String, Option<String>, Option<String>)> {
    envelope
        .events
        .into_iter()
        .filter(|e| e.action == "push")
        .filter_map(|e| e.target)
        // Layer pushes are reached through their manifest; a target without a type is
        // a manifest only if it names a tag.
        .filter(|t| match &t.media_type {
            Some(m) => Kind::of(m).is_some(),
            None => t.tag.is_some(),
        })
        .filter_map(|t| Some((t.repository?, t.digest, t.tag)))
        .collect()
}

/// The images a Harbor push webhook names.
fn harbor_images(event: HarborEvent) -> Vec<(String, Option<String>, Option<String>)> {
    if event.kind != "PUSH_ARTIFACT" {
        return Vec::new();
    }
    let Some(data) = event.event_data else {
        return Vec::new();
    };
    let Some(repo) = data.repository.and_then(|r| r.repo_full_name) else {
        return Vec::new();
    };
    data.resources
        .into_iter()
        .map(|r| (repo.clone(), r.digest, r.tag))
        .collect()
}

async fn distribution(State(n): State<Arc<Notifier>>, headers: HeaderMap, body: Body) -> Response {
    receive(&n, &headers, body, |bytes| {
        serde_json::from_slice(bytes).map(distribution_images)
    })
    .await
}

async fn harbor(State(n): State<Arc<Notifier>>, headers: HeaderMap, body: Body) -> Response {
    receive(&n, &headers, body, |bytes| {
        serde_json::from_slice(bytes).map(harbor_images)
    })
    .await
}

/// Checks the token, reads and parses the body, queues what it names.
async fn receive(
    n: &Notifier,
    headers: &HeaderMap,
    body: Body,
    parse: impl FnOnce(&[u8]) -> serde_json::Result<Vec<(String, Option<String>, Option<String>)>>,
) -> Response {
    if !authorized(headers, &n.token) {
        let challenge = [(header::WWW_AUTHENTICATE, "Bearer realm=\"kraken\"")];
        return (
            StatusCode::UNAUTHORIZED,
            challenge,
            "bad or missing bearer token\n",
        )
            .into_response();
    }
    let too_large = (
        StatusCode::PAYLOAD_TOO_LARGE,
        "notification body over 1 MiB\n",
    );
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return too_large.into_response();
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return too_large.into_response();
    };
    // serde would also read a struct from a JSON array: both formats are objects.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return (StatusCode::BAD_REQUEST, "a notification is a JSON object\n").into_response();
    }
    let named = match parse(&bytes) {
        Ok(named) => named,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("malformed notification: {e}\n"),
            )
                .into_response();
        }
    };
    let (mut queued, mut ignored, mut dropped) = (0u32, 0u32, 0u32);
    for (repo, digest, tag) in named {
        let Some(image) = image_ref(&n.prefix, repo, digest, tag) else {
            ignored += 1;
            continue;
        };
        match n.queue.try_send(image) {
            Ok(()) => queued += 1,
            Err(_) => {
                n.counters.dropped.inc();
                dropped += 1;
            }
        }
    }
    let status = if dropped > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::ACCEPTED
    };
    let body = serde_json::json!({"queued": queued, "ignored": ignored, "dropped": dropped});
    let json = [(header::CONTENT_TYPE, "application/json")];
    (status, json, format!("{body}\n")).into_response()
}

/// The image to preheat: by digest when the event names a valid one (what was pushed,
/// even if the tag moved since), else by tag; `None` when it names neither.
fn image_ref(
    prefix: &str,
    repo: String,
    digest: Option<String>,
    tag: Option<String>,
) -> Option<ImageRef> {
    if repo.is_empty() {
        return None;
    }
    let reference = match (digest.and_then(|d| d.parse().ok()), tag) {
        (Some(d), _) => Reference::Digest(d),
        (None, Some(t)) if !t.is_empty() => Reference::Tag(t),
        _ => return None,
    };
    Some(ImageRef {
        repo: format!("{prefix}{repo}"),
        reference,
    })
}

/// Whether `headers` carry `Authorization: Bearer <token>` (compared in constant time).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_storage::Digest;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a sender posts, the parsers answer with images or an error.
        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(e) = serde_json::from_slice::<Envelope>(&bytes) {
                for (repo, digest, tag) in distribution_images(e) {
                    let _ = image_ref("p/", repo, digest, tag);
                }
            }
            if let Ok(e) = serde_json::from_slice::<HarborEvent>(&bytes) {
                let _ = harbor_images(e);
            }
        }
    }

    #[test]
    fn only_manifest_pushes_of_distribution_count() {
        let d = Digest::sha256_of(b"m");
        let json = format!(
            r#"{{"events":[
              {{"id":"1","action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","repository":"app","tag":"v1","size":9}},"request":{{"host":"r"}},"actor":{{}},"source":{{}}}},
              {{"action":"push","target":{{"mediaType":"application/octet-stream","digest":"{d}","repository":"app"}}}},
              {{"action":"pull","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","repository":"app"}}}},
              {{"action":"delete","target":{{"digest":"{d}","repository":"app"}}}},
              {{"action":"push","target":{{"repository":"app","tag":"v2"}}}}
            ]}}"#
        );
        let images = distribution_images(serde_json::from_str(&json).unwrap());
        assert_eq!(
            images,
            [
                ("app".into(), Some(d.to_string()), Some("v1".into())),
                ("app".into(), None, Some("v2".into()))
            ]
        );
    }

    #[test]
    fn harbor_pushes_name_their_artifacts() {
        let json = r#"{"type":"PUSH_ARTIFACT","occur_at":1,"operator":"ci","event_data":{"resources":[{"digest":"sha256:ab","tag":"v1","resource_url":"h/p/app:v1"}],"repository":{"name":"app","namespace":"p","repo_full_name":"p/app","repo_type":"private"}}}"#;
        let images = harbor_images(serde_json::from_str(json).unwrap());
        assert_eq!(
            images,
            [("p/app".into(), Some("sha256:ab".into()), Some("v1".into()))]
        );
        let pull = json.replace("PUSH_ARTIFACT", "PULL_ARTIFACT");
        assert!(harbor_images(serde_json::from_str(&pull).unwrap()).is_empty());
    }

    #[test]
    fn references_prefer_a_valid_digest_and_take_the_prefix() {
        let d = Digest::sha256_of(b"m");
        let r = image_ref(
            "docker.io/",
            "library/x".into(),
            Some(d.to_string()),
            Some("v".into()),
        );
        assert_eq!(r.unwrap().to_string(), format!("docker.io/library/x@{d}"));
        let r = image_ref("", "x".into(), Some("sha256:bad".into()), Some("v".into()));
        assert_eq!(r.unwrap().to_string(), "x:v");
        assert!(image_ref("", "x".into(), None, None).is_none());
        assert!(image_ref("", String::new(), None, Some("v".into())).is_none());
    }

    #[test]
    fn tokens_are_checked_exactly() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorized(&h, "s3cret"));
        assert!(!authorized(&h, "s3cre"));
        h.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!authorized(&h, "s3cret"));
    }

    #[test]
    fn config_checks_and_redacts() {
        let c = NotificationsConfig {
            token: Some("hunter2".into()),
            ..NotificationsConfig::default()
        };
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains("hunter2"));
        let both = NotificationsConfig {
            token_file: Some("/x".into()),
            ..c.clone()
        };
        assert!(both.validate().is_err());
        let empty = NotificationsConfig {
            token: Some(String::new()),
            ..NotificationsConfig::default()
        };
        assert!(matches!(
            empty.load_token(),
            Err(NotificationsError::EmptyToken)
        ));
        assert_eq!(NotificationsConfig::default().load_token().unwrap(), None);
    }
}
