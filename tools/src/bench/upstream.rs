//! The upstream source of a run (`kraken-bench run --source upstream`): instead of being
//! pushed to an origin, the blob sits in Debian's `docker-registry` (distribution 2.8) on
//! the origin's host, the origin's and the build-index's `[[backends]]` name that registry
//! (`backend.registry`), and the agents' pulls (in the namespace of the registry's
//! repository) make the origin read the blob through from it once while the swarm spreads
//! it.
//!
//! The registry listens on that host's loopback: the registry → origin hop stays off the
//! shaped link, so the run measures the swarm, not a link to the upstream that a cluster
//! does not control. What the upstream served is its own count: the bytes its access log
//! says it sent for `GET`s of the blob, whole (200) or ranged (206).

use std::path::Path;

use anyhow::Context;
use kraken_storage::Digest;

use super::registry::curl::{Site, push_monolithic_at};
use super::registry::servers::{DockerRegistry, RegistryPlace, registry_version};

/// The repository the blob is put into upstream, and so the namespace agents pull it in.
pub const UPSTREAM_REPO: &str = "bench/upstream";

/// The registry's port on its host's loopback.
pub const UPSTREAM_PORT: u16 = 5000;

/// The registry running on a test host, holding the blob.
#[derive(Debug)]
pub struct Upstream {
    registry: DockerRegistry,
    /// `docker-registry --version`.
    pub version: String,
}

impl Upstream {
    /// Starts `bin` in namespace `ns` with its access log on, its files in `dir`, and puts
    /// `blob` (hashing to `digest`) into [`UPSTREAM_REPO`] with a monolithic upload.
    pub fn start(
        bin: &Path,
        ns: &str,
        dir: &Path,
        blob: &Path,
        digest: &Digest,
    ) -> anyhow::Result<Upstream> {
        let version = registry_version(bin)?;
        let place = RegistryPlace {
            netns: Some(ns.to_string()),
            port: Some(UPSTREAM_PORT),
            access_log: true,
        };
        let registry = DockerRegistry::start_at(bin, dir, &place)?;
        push_monolithic_at(Site::Netns(ns), &registry.base, UPSTREAM_REPO, blob, digest)
            .context("cannot put the blob into the upstream registry")?;
        Ok(Upstream { registry, version })
    }

    /// Its base URL, as the origin on its host reaches it.
    pub fn url(&self) -> &str {
        &self.registry.base
    }

    /// Bytes it has sent for `GET`s of `digest` in [`UPSTREAM_REPO`] so far.
    pub fn served(&self, digest: &Digest) -> anyhow::Result<u64> {
        let log = std::fs::read_to_string(&self.registry.log)
            .with_context(|| format!("cannot read {}", self.registry.log.display()))?;
        Ok(blob_bytes_served(&log, UPSTREAM_REPO, digest))
    }

    /// Stops it.
    pub fn stop(self) {
        self.registry.stop();
    }
}

/// The bytes sent for successful `GET`s (200 or 206) of blob `digest` of `repo`, summed
/// over a distribution access log (Apache combined format: `… "GET /v2/<repo>/blobs/<digest>
/// HTTP/1.1" 200 <bytes> …`; the byte count is what was written, so a cut-off answer counts
/// what it sent).
pub fn blob_bytes_served(log: &str, repo: &str, digest: &Digest) -> u64 {
    let path = format!("/v2/{repo}/blobs/{digest}");
    log.lines()
        .filter_map(|line| {
            let (_, request) = line.split_once("\"GET ")?;
            let (target, after) = request.split_once('"')?;
            let target = target.split(' ').next()?;
            let target = target.split('?').next()?;
            if target != path {
                return None;
            }
            let mut fields = after.split_whitespace();
            let status = fields.next()?;
            let bytes: u64 = fields.next()?.parse().ok()?;
            matches!(status, "200" | "206").then_some(bytes)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_successful_gets_of_the_blob_count() {
        let d = Digest::sha256_of(b"blob");
        let other = Digest::sha256_of(b"other");
        let line = |method: &str, repo: &str, digest: &Digest, tail: &str| {
            format!(
                "127.0.0.1 - - [06/Dec/2026:19:51:34 +0000] \"{method} /v2/{repo}/blobs/{digest} \
                 HTTP/1.1\" {tail} \"\" \"kraken\""
            )
        };
        let log = [
            "time=\"2026-12-06T19:51:32Z\" level=warning msg=\"No HTTP secret provided\"".into(),
            line("GET", "bench/upstream", &d, "200 1000"),
            line("GET", "bench/upstream", &d, "206 100"),
            line("HEAD", "bench/upstream", &d, "200 0"),
            line("GET", "bench/upstream", &d, "404 157"),
            line("GET", "bench/other", &d, "200 7"),
            line("GET", "bench/upstream", &other, "200 9"),
            "127.0.0.1 - - [06/Dec/2026:19:51:35 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"curl\""
                .into(),
        ]
        .join("\n");
        assert_eq!(blob_bytes_served(&log, "bench/upstream", &d), 1100);
        assert_eq!(blob_bytes_served(&log, "bench/other", &d), 7);
        assert_eq!(blob_bytes_served("", "bench/upstream", &d), 0);
    }
}
