//! The invariants, checked once every fault is healed. Each check polls until it holds,
//! since a healed cluster needs a while to catch up (rings re-form, views refresh,
//! write-back retries come due), for at most `limit` from its own start: a check fails
//! when its item stays unavailable that long, not when the checks as a whole are slow
//! (thousands of pulls of a long campaign take a while on a loaded machine).
//!
//! 1. Every acknowledged push is readable byte-identical from every agent (manifest by
//!    its tag, every blob by digest).
//! 2. Every acknowledged `latest` resolves, on every agent, to the last acknowledged
//!    digest (or to a later push whose `PUT` failed without an answer and may have landed).
//! 3. The backend (S3 on moto, read directly) holds every acknowledged blob and manifest,
//!    byte-identical, once the write-back queues drain.
//! 4. Every acknowledged blob and manifest is held by `min(replicas, live origins)`
//!    origins with the right bytes, and no origin holds a wrong copy ([`super::replicas`]:
//!    origin CAS files read and hashed here), within `--converge-timeout-secs`.
//! 5. No process panicked (`panicked` in any node's log).
//! 6. No pull returned a wrong byte (during the run: recorded by the workload; here: any
//!    complete answer with other bytes).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use kraken_storage::Digest;

use super::http;
use super::nodes::{BUCKET, Cluster};
use super::workload::{Image, Latest, MANIFEST_TYPE, PullOutcome, Shared, locked, pull_image};

/// Results of the final checks.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Checks {
    /// Checks that held, by invariant.
    pub held: BTreeMap<String, u64>,
    /// Seconds the checks took.
    pub secs: f64,
    /// Checks that did not hold.
    pub violations: Vec<String>,
}

impl Checks {
    fn held(&mut self, what: &str) {
        *self.held.entry(what.to_string()).or_default() += 1;
    }
}

/// Runs every check; each polls for at most `limit`, the replica check for at most
/// `converge`.
pub fn check_all(
    cluster: &Cluster,
    ledger: &Shared,
    limit: Duration,
    converge: Duration,
) -> Checks {
    let start = Instant::now();
    let (images, latest) = {
        let l = locked(ledger);
        (l.images.clone(), l.latest.clone())
    };
    let mut checks = Checks::default();
    let agents = cluster.agents();
    // Pulls from every agent at once, one thread each.
    let results: Vec<(String, Vec<Result<(), String>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = agents
            .iter()
            .map(|(name, addr)| {
                let images = &images;
                let latest = &latest;
                s.spawn(move || {
                    let mut out = Vec::new();
                    for image in images {
                        out.push(readable(ledger, *addr, image, Instant::now() + limit));
                    }
                    for (repo, l) in latest {
                        out.push(latest_resolves(*addr, repo, l, Instant::now() + limit));
                    }
                    eprintln!(
                        "kraken-bench campaign: {name} checked ({:.0} s)",
                        start.elapsed().as_secs_f64()
                    );
                    (name.clone(), out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (String::new(), vec![Err("checker panicked".into())]))
            })
            .collect()
    });
    for (agent, outs) in results {
        for (i, r) in outs.into_iter().enumerate() {
            let what = if i < images.len() {
                "acked push readable from an agent"
            } else {
                "acked latest tag resolves on an agent"
            };
            match r {
                Ok(()) => checks.held(what),
                Err(e) => checks.violations.push(format!("{agent}: {e}")),
            }
        }
    }
    let mut want: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    for image in &images {
        want.insert(
            image.manifest.to_string(),
            (image.manifest, image.manifest_len),
        );
        for (d, len) in &image.blobs {
            want.insert(d.to_string(), (*d, *len));
        }
    }
    for (d, len) in want.values() {
        match in_backend(cluster, d, *len, Instant::now() + limit) {
            Ok(()) => checks.held("acked blob in the backend"),
            Err(e) => checks.violations.push(e),
        }
    }
    for r in super::replicas::check(cluster, &want, converge) {
        match r {
            Ok(()) => {
                checks.held("acked blob at its replica count on the origins, every copy right")
            }
            Err(e) => checks.violations.push(e),
        }
    }
    for n in &cluster.nodes {
        match panics(&n.proc.log) {
            Some(line) => checks
                .violations
                .push(format!("{} panicked: {line}", n.proc.name)),
            None => checks.held("process without a panic"),
        }
    }
    checks.secs = start.elapsed().as_secs_f64();
    checks
}

/// Pulls `image` from `agent` until it comes back whole and right, or `deadline`.
fn readable(
    ledger: &Shared,
    agent: SocketAddr,
    image: &Image,
    deadline: Instant,
) -> Result<(), String> {
    let never = AtomicBool::new(false);
    loop {
        match pull_image(ledger, &never, agent, image) {
            PullOutcome::Ok { .. } => return Ok(()),
            PullOutcome::Wrong(why) => return Err(format!("wrong bytes: {why}")),
            PullOutcome::Unavailable(why) if Instant::now() > deadline => {
                return Err(format!(
                    "acked push {}:{} ({}) not readable: {why}",
                    image.repo, image.tag, image.manifest
                ));
            }
            PullOutcome::Unavailable(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// `latest` of `repo` on `agent` resolves to what the ledger allows, by `deadline`.
fn latest_resolves(
    agent: SocketAddr,
    repo: &str,
    l: &Latest,
    deadline: Instant,
) -> Result<(), String> {
    let Some(acked) = &l.acked else {
        return Ok(());
    };
    let path = format!("/v2/{repo}/manifests/latest");
    loop {
        let last = match http::request(
            agent,
            "GET",
            &path,
            &[("Accept", MANIFEST_TYPE)],
            &[],
            Duration::from_secs(60),
        ) {
            Ok(a) if a.status == 200 => {
                let got = Digest::sha256_of(&a.body);
                if got == *acked || l.maybe.contains(&got) {
                    return Ok(());
                }
                format!("resolves to {got}, last acked {acked}")
            }
            Ok(a) => format!("status {}", a.status),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!("{repo}:latest: {last}"));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The backend's copy of `digest`: present with the right bytes by `deadline`.
fn in_backend(
    cluster: &Cluster,
    digest: &Digest,
    len: u64,
    deadline: Instant,
) -> Result<(), String> {
    let hex = digest.hex();
    let key = format!(
        "/{BUCKET}/docker/registry/v2/blobs/{}/{}/{hex}/data",
        digest.algorithm().name(),
        &hex[..2]
    );
    let mut last;
    loop {
        match cluster.moto.s3("GET", &key, &[]) {
            Ok(a) if a.status == 200 => {
                if Digest::sha256_of(&a.body) == *digest && a.body.len() as u64 == len {
                    return Ok(());
                }
                return Err(format!(
                    "backend holds other bytes for {digest}: {} bytes hashing to {}",
                    a.body.len(),
                    Digest::sha256_of(&a.body)
                ));
            }
            Ok(a) => last = format!("status {}", a.status),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            return Err(format!("backend lacks acked blob {digest}: {last}"));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The first line of `log` that says a thread panicked.
pub fn panics(log: &Path) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    String::from_utf8_lossy(&text)
        .lines()
        .find(|l| l.contains("panicked"))
        .map(|l| l.chars().take(300).collect())
}
