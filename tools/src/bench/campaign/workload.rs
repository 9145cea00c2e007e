//! The workload: pushers put images through the proxy, pullers read them back through
//! every agent, and the [`Ledger`] records what was acknowledged and what came back.
//!
//! A push is one repository tag `t<n>` of a fresh image (1–3 random layers, an OCI config,
//! an OCI manifest), then the same manifest under `latest`. It is acknowledged when the
//! manifest `PUT` of `t<n>` answers 201; `latest` is acknowledged by its own 201. Each
//! pusher owns its repository, so the order of its `latest` acknowledgements is the order
//! of its pushes. A `latest` `PUT` that failed may still have landed, so later attempts
//! are remembered: the tag may resolve to the last acknowledged digest or to one of them.
//!
//! A pull reads the manifest by tag and every blob it names from one agent and checks
//! each complete answer against the digest. A refused, failed, cut-off or non-200 answer
//! is *unavailable* (counted, retried a few times, never a violation); a complete answer
//! with other bytes is a violation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kraken_storage::Digest;

use super::http::{self, HttpError};
use crate::bench::data::SplitMix64;

/// The manifest media type pushed and asked for.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// How long one request may wait for a read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Attempts per step before a push gives up or a pull counts as unavailable.
const ATTEMPTS: u32 = 3;

/// One acknowledged image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Repository.
    pub repo: String,
    /// Its own tag (`t<n>`).
    pub tag: String,
    /// The manifest's digest.
    pub manifest: Digest,
    /// Layers and config, with their lengths.
    pub blobs: Vec<(Digest, u64)>,
    /// The manifest's length.
    pub manifest_len: u64,
}

/// What `latest` of a repository may resolve to.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    /// The last acknowledged digest.
    pub acked: Option<Digest>,
    /// Digests of attempts after it that failed without an answer (they may have landed).
    pub maybe: Vec<Digest>,
}

/// Counters of the workload.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counts {
    /// Pushes acknowledged (manifest 201).
    pub pushes_acked: u64,
    /// Pushes given up (some step failed [`ATTEMPTS`] times).
    pub pushes_failed: u64,
    /// `latest` tags acknowledged.
    pub latest_acked: u64,
    /// Bytes of acknowledged pushes (blobs and manifests).
    pub pushed_bytes: u64,
    /// Image pulls that read every byte and found it right.
    pub pulls_ok: u64,
    /// Image pulls that could not finish (unavailable, not wrong).
    pub pulls_unavailable: u64,
    /// Requests that failed or were refused (each retried).
    pub requests_failed: u64,
    /// Bytes pulled and checked.
    pub pulled_bytes: u64,
}

/// Everything the workload saw, shared by its threads and the final checks.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Acknowledged images, in order.
    pub images: Vec<Image>,
    /// `latest` per repository.
    pub latest: HashMap<String, Latest>,
    /// Counters.
    pub counts: Counts,
    /// Wrong bytes and lost data: what failed the campaign.
    pub violations: Vec<String>,
}

/// The ledger shared between threads.
pub type Shared = Arc<Mutex<Ledger>>;

fn lock(l: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a request did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// Transport or HTTP failure.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// An answer with an unexpected status.
    #[error("status {0}")]
    Status(u16),
    /// A 201/202 without the header the next step needs.
    #[error("no {0} header")]
    Missing(&'static str),
}

/// A request, retried up to [`ATTEMPTS`] times while it fails or answers other than
/// `want`, waiting a second between tries (counted in `requests_failed`).
fn retry(
    ledger: &Shared,
    stop: &AtomicBool,
    mut f: impl FnMut() -> Result<http::Answer, HttpError>,
    want: u16,
) -> Result<http::Answer, Unavailable> {
    let mut last = Unavailable::Status(0);
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            lock(ledger).counts.requests_failed += 1;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        match f() {
            Ok(a) if a.status == want => return Ok(a),
            Ok(a) => last = Unavailable::Status(a.status),
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

/// Random bytes of a length drawn from `1..=max`.
fn random_blob(rng: &mut SplitMix64, max: u64) -> Vec<u8> {
    let len = 1 + rng.below(max.max(1)) as usize;
    let mut b = vec![0; len];
    rng.fill(&mut b);
    b
}

/// Pushes one blob (`POST`, then `PUT ?digest=` with all of it).
fn push_blob(
    ledger: &Shared,
    stop: &AtomicBool,
    proxy: SocketAddr,
    repo: &str,
    bytes: &[u8],
    digest: &Digest,
) -> Result<(), Unavailable> {
    let loc = retry(
        ledger,
        stop,
        || {
            http::request(
                proxy,
                "POST",
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                &[],
                REQUEST_TIMEOUT,
            )
        },
        202,
    )?;
    let loc = loc
        .header("location")
        .ok_or(Unavailable::Missing("Location"))?;
    // The location is a path (or an absolute URL on the proxy itself).
    let path = match loc.find("/v2/") {
        Some(i) => &loc[i..],
        None => return Err(Unavailable::Missing("Location")),
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let put = format!("{path}{sep}digest={digest}");
    retry(
        ledger,
        stop,
        || {
            http::request(
                proxy,
                "PUT",
                &put,
                &[("Content-Type", "application/octet-stream")],
                bytes,
                REQUEST_TIMEOUT,
            )
        },
        201,
    )?;
    Ok(())
}

/// The manifest and config of an image of `layers`.
fn image_documents(layers: &[(Digest, u64)], n: u64) -> (Vec<u8>, Vec<u8>) {
    let diff_ids: Vec<String> = layers.iter().map(|(d, _)| format!("\"{d}\"")).collect();
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{\"Labels\":{{\"campaign.push\":\"{n}\"}}}},\
         \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        diff_ids.join(",")
    )
    .into_bytes();
    let config_digest = Digest::sha256_of(&config);
    let descs: Vec<String> = layers
        .iter()
        .map(|(d, len)| {
            format!(
                "{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"{d}\",\"size\":{len}}}"
            )
        })
        .collect();
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{MANIFEST_TYPE}\",\
         \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{config_digest}\",\"size\":{}}},\
         \"layers\":[{}]}}",
        config.len(),
        descs.join(",")
    )
    .into_bytes();
    (manifest, config)
}

/// What a pusher needs.
#[derive(Debug, Clone)]
pub struct Pusher {
    /// The proxy's registry address (its port survives restarts).
    pub proxy: SocketAddr,
    /// This pusher's repository.
    pub repo: String,
    /// Its RNG seed.
    pub seed: u64,
    /// Largest layer, bytes.
    pub max_layer: u64,
    /// Pause between pushes.
    pub pause: Duration,
    /// Pushes under way, all pushers together (the origin-kill fault waits for one).
    pub in_flight: Arc<AtomicUsize>,
}

impl Pusher {
    /// Pushes until `stop`.
    pub fn run(&self, ledger: &Shared, stop: &AtomicBool) {
        let mut rng = SplitMix64::new(self.seed);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let pushed = self.push(&mut rng, n, ledger, stop);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if pushed.is_err() {
                lock(ledger).counts.pushes_failed += 1;
            }
            std::thread::sleep(self.pause);
        }
    }

    fn push(
        &self,
        rng: &mut SplitMix64,
        n: u64,
        ledger: &Shared,
        stop: &AtomicBool,
    ) -> Result<(), Unavailable> {
        let repo = &self.repo;
        let layers: Vec<Vec<u8>> = (0..1 + rng.below(3))
            .map(|_| random_blob(rng, self.max_layer))
            .collect();
        let layer_descs: Vec<(Digest, u64)> = layers
            .iter()
            .map(|l| (Digest::sha256_of(l), l.len() as u64))
            .collect();
        let (manifest, config) = image_documents(&layer_descs, n);
        let mut blobs = layer_descs.clone();
        blobs.push((Digest::sha256_of(&config), config.len() as u64));
        for (bytes, (digest, _)) in layers.iter().chain([&config]).zip(&blobs) {
            push_blob(ledger, stop, self.proxy, repo, bytes, digest)?;
        }
        let digest = Digest::sha256_of(&manifest);
        let tag = format!("t{n}");
        let put = |tag: &str| {
            http::request(
                self.proxy,
                "PUT",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("Content-Type", MANIFEST_TYPE)],
                &manifest,
                REQUEST_TIMEOUT,
            )
        };
        retry(ledger, stop, || put(&tag), 201)?;
        {
            let mut l = lock(ledger);
            l.counts.pushes_acked += 1;
            l.counts.pushed_bytes +=
                blobs.iter().map(|(_, len)| len).sum::<u64>() + manifest.len() as u64;
            l.images.push(Image {
                repo: repo.clone(),
                tag,
                manifest: digest,
                blobs,
                manifest_len: manifest.len() as u64,
            });
        }
        let latest = retry(ledger, stop, || put("latest"), 201);
        let mut l = lock(ledger);
        let entry = l.latest.entry(repo.clone()).or_default();
        match latest {
            Ok(_) => {
                entry.acked = Some(digest);
                entry.maybe.clear();
                l.counts.latest_acked += 1;
            }
            Err(_) => entry.maybe.push(digest),
        }
        Ok(())
    }
}

/// How one image pull ended.
#[derive(Debug)]
pub enum PullOutcome {
    /// Every byte read and right.
    Ok {
        /// Bytes read.
        bytes: u64,
    },
    /// Some request never gave a whole answer.
    Unavailable(String),
    /// A whole answer with wrong bytes.
    Wrong(String),
}

/// `GET` of `path` from `agent`, following up to three redirects (an agent sends blobs it
/// holds to its blob server) to `http://host:port/…` locations.
fn get_following(agent: SocketAddr, path: &str) -> Result<http::Answer, HttpError> {
    let (mut addr, mut path) = (agent, path.to_string());
    for _ in 0..3 {
        let a = http::request(
            addr,
            "GET",
            &path,
            &[("Accept", MANIFEST_TYPE)],
            &[],
            REQUEST_TIMEOUT,
        )?;
        if !matches!(a.status, 301 | 302 | 303 | 307 | 308) {
            return Ok(a);
        }
        let loc = a
            .header("location")
            .ok_or_else(|| HttpError::Malformed("a redirect without Location".into()))?;
        (addr, path) = redirect_target(addr, loc)
            .ok_or_else(|| HttpError::Malformed(format!("redirect to {loc:?}")))?;
    }
    Err(HttpError::Malformed("more than three redirects".into()))
}

/// Where a `Location` leads: `http://ip:port/path` or a path on `from`.
fn redirect_target(from: SocketAddr, loc: &str) -> Option<(SocketAddr, String)> {
    if loc.starts_with('/') {
        return Some((from, loc.to_string()));
    }
    let rest = loc.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = match host.parse() {
        Ok(a) => a,
        Err(_) => {
            let (h, port) = host.rsplit_once(':')?;
            let ip = if h == "localhost" { "127.0.0.1" } else { h };
            format!("{ip}:{port}").parse().ok()?
        }
    };
    Some((
        addr,
        if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
    ))
}

/// `GET` of `path` from `agent`, retried while unavailable; the body must hash to `want`
/// with `want_len` bytes.
fn get_checked(
    ledger: &Shared,
    stop: &AtomicBool,
    agent: SocketAddr,
    path: &str,
    want: &Digest,
    want_len: u64,
) -> Result<Result<u64, String>, Unavailable> {
    let a = retry(ledger, stop, || get_following(agent, path), 200)?;
    let got = Digest::sha256_of(&a.body);
    if got != *want || a.body.len() as u64 != want_len {
        return Ok(Err(format!(
            "GET {path} from {agent}: {} bytes hashing to {got}, expected {want_len} bytes of {want}",
            a.body.len()
        )));
    }
    Ok(Ok(a.body.len() as u64))
}

/// Pulls `image` (manifest by its tag, then every blob) from `agent`.
pub fn pull_image(
    ledger: &Shared,
    stop: &AtomicBool,
    agent: SocketAddr,
    image: &Image,
) -> PullOutcome {
    let repo = &image.repo;
    let mut bytes = 0;
    let manifest_path = format!("/v2/{repo}/manifests/{}", image.tag);
    let mut items = vec![(manifest_path, image.manifest, image.manifest_len)];
    for (d, len) in &image.blobs {
        items.push((format!("/v2/{repo}/blobs/{d}"), *d, *len));
    }
    for (path, digest, len) in &items {
        match get_checked(ledger, stop, agent, path, digest, *len) {
            Ok(Ok(n)) => bytes += n,
            Ok(Err(wrong)) => return PullOutcome::Wrong(wrong),
            Err(e) => return PullOutcome::Unavailable(format!("GET {path} from {agent}: {e}")),
        }
    }
    PullOutcome::Ok { bytes }
}

/// Records a pull's outcome (a wrong one as a violation).
pub fn record(ledger: &Shared, outcome: &PullOutcome) {
    let mut l = lock(ledger);
    match outcome {
        PullOutcome::Ok { bytes } => {
            l.counts.pulls_ok += 1;
            l.counts.pulled_bytes += bytes;
        }
        PullOutcome::Unavailable(_) => l.counts.pulls_unavailable += 1,
        PullOutcome::Wrong(why) => l.violations.push(format!("wrong bytes: {why}")),
    }
}

/// Pulls random acknowledged images from `agent` until `stop`.
pub fn puller(ledger: &Shared, stop: &AtomicBool, agent: SocketAddr, seed: u64, pause: Duration) {
    let mut rng = SplitMix64::new(seed);
    while !stop.load(Ordering::Relaxed) {
        let image = {
            let l = lock(ledger);
            if l.images.is_empty() {
                None
            } else {
                // Newer images more often: half the draws from the last ten.
                let n = l.images.len() as u64;
                let i = if rng.below(2) == 0 {
                    n - 1 - rng.below(n.min(10))
                } else {
                    rng.below(n)
                };
                Some(l.images[i as usize].clone())
            }
        };
        if let Some(image) = image {
            let outcome = pull_image(ledger, stop, agent, &image);
            record(ledger, &outcome);
        }
        let until = Instant::now() + pause;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The ledger, locked (for the final checks and the report).
pub fn locked(ledger: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    lock(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_lead_to_absolute_or_relative_locations() {
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            redirect_target(from, "http://127.0.0.1:6000/v2/a/blobs/x"),
            Some(("127.0.0.1:6000".parse().unwrap(), "/v2/a/blobs/x".into()))
        );
        assert_eq!(
            redirect_target(from, "http://localhost:6001/b"),
            Some(("127.0.0.1:6001".parse().unwrap(), "/b".into()))
        );
        assert_eq!(redirect_target(from, "/c"), Some((from, "/c".into())));
        assert_eq!(redirect_target(from, "https://x/c"), None);
    }

    #[test]
    fn manifests_name_every_layer_and_the_config() {
        let layers = vec![(Digest::sha256_of(b"a"), 1), (Digest::sha256_of(b"bb"), 2)];
        let (manifest, config) = image_documents(&layers, 7);
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(m["layers"].as_array().unwrap().len(), 2);
        assert_eq!(m["layers"][1]["size"], 2);
        assert_eq!(
            m["config"]["digest"].as_str().unwrap(),
            Digest::sha256_of(&config).to_string()
        );
        let c: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"][0], layers[0].0.to_string());
    }
}
