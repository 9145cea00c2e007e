//! Preheating: make the owning origins hold an image — its manifest or index, the children
//! an index names, configs and layers — reading what they lack through from their
//! backends, without moving a byte to the caller.
//!
//! [`preheat`] resolves a tag through the build-index, then walks the image breadth first:
//! each blob is one [`Request::Warm`] to its owning origins in ring order, whose answer
//! lists what the blob references when it is a manifest, so the walk never downloads a
//! manifest itself. A few blobs are warmed at once ([`PreheatConfig::concurrency`]);
//! shared blobs are warmed once. A blob that fails does not stop the others: the
//! [`PreheatSummary`] lists each failure with its cause. `krakenctl preheat` and the
//! proxy's push notifications both run this walk.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kraken_membership::Role;
use kraken_storage::Digest;

use crate::cluster::{CallError, Cluster, ORIGIN_REPLICAS, owners_of_tag};
use crate::proto::{
    ErrorKind, MAX_METAINFO_WAIT, Platform, RefKind, Request, Response, WarmRef, Warmed,
};

/// What to preheat: `repo:tag` or `repo@digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The cluster repository (it routes the read-through to a backend).
    pub repo: String,
    /// A tag or a digest.
    pub reference: Reference,
}

/// The second half of an [`ImageRef`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// Resolved through the build-index.
    Tag(String),
    /// Used as is.
    Digest(Digest),
}

/// Why an image reference or a platform does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Neither `repo:tag` nor `repo@digest`.
    #[error("{0:?} is not repo:tag or repo@digest")]
    Image(String),
    /// The digest after `@` does not parse.
    #[error("{0:?} has an invalid digest")]
    Digest(String),
    /// Not `os/arch` or `os/arch/variant`.
    #[error("{0:?} is not os/arch or os/arch/variant")]
    Platform(String),
}

impl FromStr for ImageRef {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Image(s.to_string());
        if let Some((repo, digest)) = s.split_once('@') {
            let digest = digest
                .parse()
                .map_err(|_| ParseError::Digest(s.to_string()))?;
            return ImageRef::new(repo, Reference::Digest(digest)).ok_or_else(bad);
        }
        // A tag follows the last `:` after the last `/` (a registry host may carry a port).
        let name_start = s.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = s[name_start..]
            .rfind(':')
            .map(|i| s.split_at(name_start + i))
            .ok_or_else(bad)?;
        let tag = &tag[1..];
        if tag.is_empty() {
            return Err(bad());
        }
        ImageRef::new(repo, Reference::Tag(tag.to_string())).ok_or_else(bad)
    }
}

impl ImageRef {
    fn new(repo: &str, reference: Reference) -> Option<Self> {
        (!repo.is_empty()).then(|| ImageRef {
            repo: repo.to_string(),
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(tag) => write!(f, "{}:{tag}", self.repo),
            Reference::Digest(digest) => write!(f, "{}@{digest}", self.repo),
        }
    }
}

/// `--platform os/arch[/variant]`: which children of an index to warm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformFilter {
    /// Required `os`.
    pub os: String,
    /// Required `architecture`.
    pub architecture: String,
    /// Required `variant`, if given (else any variant matches).
    pub variant: Option<String>,
}

impl FromStr for PlatformFilter {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(ParseError::Platform(s.to_string()));
        }
        match parts[..] {
            [os, arch] | [os, arch, _] => Ok(PlatformFilter {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()),
            }),
            _ => Err(ParseError::Platform(s.to_string())),
        }
    }
}

impl PlatformFilter {
    /// Whether an index entry of `platform` passes (an entry without one never does).
    pub fn matches(&self, platform: Option<&Platform>) -> bool {
        platform.is_some_and(|p| {
            p.os == self.os
                && p.architecture == self.architecture
                && self
                    .variant
                    .as_ref()
                    .is_none_or(|v| p.variant.as_ref() == Some(v))
        })
    }
}

/// How a preheat runs.
#[derive(Debug, Clone)]
pub struct PreheatConfig {
    /// Blobs warmed at once (at least 1). 4 keeps a few owners busy without flooding an
    /// upstream that rate-limits.
    pub concurrency: usize,
    /// Only the index children of this platform (all when `None`).
    pub platform: Option<PlatformFilter>,
    /// How long one warm call holds open on the owner before it answers `Pending`.
    pub wait: Duration,
    /// How long one blob may take in all (asking again while the owner reads it through).
    pub blob_deadline: Duration,
}

impl Default for PreheatConfig {
    /// Four at once, every platform, and an hour per blob (a multi-GB layer read through
    /// from a slow upstream).
    fn default() -> Self {
        PreheatConfig {
            concurrency: 4,
            platform: None,
            wait: MAX_METAINFO_WAIT,
            blob_deadline: Duration::from_secs(3600),
        }
    }
}

/// Why a preheat could not start.
#[derive(Debug, thiserror::Error)]
pub enum PreheatError {
    /// The build-index has no such tag.
    #[error("unknown tag {repo}:{tag}")]
    UnknownTag {
        /// The repository.
        repo: String,
        /// The tag.
        tag: String,
    },
    /// The build-index could not be asked.
    #[error("resolving {repo}:{tag}: {source}")]
    Resolve {
        /// The repository.
        repo: String,
        /// The tag.
        tag: String,
        /// Why.
        source: CallError,
    },
}

/// Why one blob was not warmed.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// No owner warmed it (the last owner's answer, or an answer no other owner can fix).
    #[error(transparent)]
    Call(#[from] CallError),
    /// Still being read through when the blob's deadline passed.
    #[error("still being read through after {0:?}")]
    Deadline(Duration),
}

/// The role of a blob in the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobRole {
    /// The manifest or index the reference names.
    Root,
    /// Something a warmed manifest referenced.
    Ref(RefKind),
}

impl BlobRole {
    /// For people: `root`, `manifest`, `config`, `layer`, `subject`.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobRole::Root => "root",
            BlobRole::Ref(RefKind::Manifest) => "manifest",
            BlobRole::Ref(RefKind::Config) => "config",
            BlobRole::Ref(RefKind::Layer) => "layer",
            BlobRole::Ref(RefKind::Subject) => "subject",
        }
    }
}

/// A blob that failed.
#[derive(Debug)]
pub struct BlobFailure {
    /// The blob.
    pub digest: Digest,
    /// Its role.
    pub role: BlobRole,
    /// Why.
    pub error: WarmError,
}

/// Progress, as the walk goes.
#[derive(Debug)]
pub enum PreheatEvent<'a> {
    /// A blob is being warmed.
    Started {
        /// The blob.
        digest: Digest,
        /// Its role.
        role: BlobRole,
    },
    /// The owner holds it.
    Done {
        /// The blob.
        digest: Digest,
        /// Its role.
        role: BlobRole,
        /// Its length.
        length: u64,
        /// Read through now (false: already held).
        fetched: bool,
    },
    /// It failed; the others go on.
    Failed(&'a BlobFailure),
}

/// What a preheat did.
#[derive(Debug)]
pub struct PreheatSummary {
    /// The manifest or index warmed first.
    pub root: Digest,
    /// Blobs the owners read through now.
    pub blobs_fetched: u64,
    /// Their bytes.
    pub bytes_fetched: u64,
    /// Blobs the owners already held.
    pub blobs_held: u64,
    /// Their bytes.
    pub bytes_held: u64,
    /// Index entries left out by the platform filter.
    pub skipped: u64,
    /// Blobs that failed, with why.
    pub failures: Vec<BlobFailure>,
    /// Wall time of the walk (resolution included).
    pub elapsed: Duration,
}

impl PreheatSummary {
    /// Blobs the owners now hold.
    pub fn blobs(&self) -> u64 {
        self.blobs_fetched + self.blobs_held
    }
}

/// The digest `image` names: itself, or its tag's target on the build-index.
pub async fn resolve(cluster: &Cluster, image: &ImageRef) -> Result<Digest, PreheatError> {
    let tag = match &image.reference {
        Reference::Digest(d) => return Ok(*d),
        Reference::Tag(tag) => tag,
    };
    let repo = &image.repo;
    let owners = owners_of_tag(cluster, repo, tag, 0);
    let request = Request::GetTag {
        repo: repo.clone(),
        tag: tag.clone(),
    };
    // The build-index may ask an upstream registry for the tag.
    let limit = cluster.call_timeout + Duration::from_secs(30);
    let fail = |source| PreheatError::Resolve {
        repo: repo.clone(),
        tag: tag.clone(),
        source,
    };
    match cluster
        .call_first(&owners, Role::BuildIndex, &request, limit)
        .await
    {
        Ok(Response::Tag { digest, .. }) => Ok(digest),
        Ok(other) => Err(fail(CallError::unexpected(first_addr(&owners), other))),
        Err(e) if e.remote().is_some_and(|r| r.kind == ErrorKind::NotFound) => {
            Err(PreheatError::UnknownTag {
                repo: repo.clone(),
                tag: tag.clone(),
            })
        }
        Err(e) => Err(fail(e)),
    }
}

/// Warms one blob on its first owner that answers, asking again while it reads the blob
/// through. `fetched` is true if any answer was `Pending` (the owner lacked it).
pub async fn warm_blob(
    cluster: &Cluster,
    namespace: &str,
    digest: &Digest,
    config: &PreheatConfig,
) -> Result<Warmed, WarmError> {
    let started = Instant::now();
    let request = Request::Warm {
        namespace: namespace.to_string(),
        digest: *digest,
        wait_ms: u64::try_from(config.wait.as_millis()).unwrap_or(u64::MAX),
    };
    let limit = config.wait + cluster.call_timeout;
    let mut pending = false;
    loop {
        let owners = cluster.owners_of_digest(Role::Origin, digest, ORIGIN_REPLICAS);
        let answer = cluster
            .call_first(&owners, Role::Origin, &request, limit)
            .await?;
        match answer {
            Response::Warmed(mut warmed) => {
                warmed.fetched |= pending;
                return Ok(warmed);
            }
            Response::Pending if started.elapsed() < config.blob_deadline => pending = true,
            Response::Pending => return Err(WarmError::Deadline(config.blob_deadline)),
            other => return Err(CallError::unexpected(first_addr(&owners), other).into()),
        }
    }
}

/// Preheats `image`: resolves it, then warms it and everything it references on the
/// owning origins, reporting each blob to `progress`. Fails only if the reference cannot
/// be resolved; a blob that fails is in the summary.
pub async fn preheat(
    cluster: &Cluster,
    image: &ImageRef,
    config: &PreheatConfig,
    mut progress: impl FnMut(&PreheatEvent<'_>),
) -> Result<PreheatSummary, PreheatError> {
    let started = Instant::now();
    let root = resolve(cluster, image).await?;
    let mut summary = PreheatSummary {
        root,
        blobs_fetched: 0,
        bytes_fetched: 0,
        blobs_held: 0,
        bytes_held: 0,
        skipped: 0,
        failures: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut queue = VecDeque::from([(root, BlobRole::Root)]);
    let mut seen = HashSet::from([root]);
    let mut running = FuturesUnordered::new();
    let namespace = image.repo.as_str();
    loop {
        while running.len() < config.concurrency.max(1)
            && let Some((digest, role)) = queue.pop_front()
        {
            progress(&PreheatEvent::Started { digest, role });
            running.push(async move {
                let result = warm_blob(cluster, namespace, &digest, config).await;
                (digest, role, result)
            });
        }
        let Some((digest, role, result)) = running.next().await else {
            break;
        };
        match result {
            Ok(warmed) => {
                progress(&PreheatEvent::Done {
                    digest,
                    role,
                    length: warmed.length,
                    fetched: warmed.fetched,
                });
                if warmed.fetched {
                    summary.blobs_fetched += 1;
                    summary.bytes_fetched += warmed.length;
                } else {
                    summary.blobs_held += 1;
                    summary.bytes_held += warmed.length;
                }
                for r in warmed.references {
                    if !wanted(&r, config.platform.as_ref()) {
                        summary.skipped += 1;
                    } else if seen.insert(r.digest) {
                        queue.push_back((r.digest, BlobRole::Ref(r.kind)));
                    }
                }
            }
            Err(error) => {
                let failure = BlobFailure {
                    digest,
                    role,
                    error,
                };
                progress(&PreheatEvent::Failed(&failure));
                summary.failures.push(failure);
            }
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The address an unexpected answer is blamed on: the first owner asked.
fn first_addr(owners: &[kraken_membership::Member]) -> std::net::SocketAddr {
    owners.first().map_or_else(
        || std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        |m| m.quic_addr,
    )
}

/// Whether the walk follows `r`: an index entry must match the platform filter.
fn wanted(r: &WarmRef, filter: Option<&PlatformFilter>) -> bool {
    match filter {
        Some(f) if r.kind == RefKind::Manifest => f.matches(r.platform.as_ref()),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_parse() {
        let d = Digest::sha256_of(b"x");
        let tag = |repo: &str, tag: &str| ImageRef {
            repo: repo.into(),
            reference: Reference::Tag(tag.into()),
        };
        assert_eq!(
            "library/ubuntu:22.04".parse(),
            Ok(tag("library/ubuntu", "22.04"))
        );
        assert_eq!(
            "localhost:5000/app:v1".parse(),
            Ok(tag("localhost:5000/app", "v1"))
        );
        assert_eq!(
            format!("docker.io/library/x@{d}").parse(),
            Ok(ImageRef {
                repo: "docker.io/library/x".into(),
                reference: Reference::Digest(d)
            })
        );
        for bad in ["app", "localhost:5000/app", "app:", ":v1"] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
        assert!(matches!(
            "app@sha256:nothex".parse::<ImageRef>(),
            Err(ParseError::Digest(_))
        ));
        assert_eq!(tag("a/b", "c").to_string(), "a/b:c");
    }

    #[test]
    fn platform_filters_match_os_arch_and_variant() {
        let p = |os: &str, arch: &str, v: Option<&str>| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: v.map(Into::into),
        };
        let amd: PlatformFilter = "linux/amd64".parse().unwrap();
        assert!(amd.matches(Some(&p("linux", "amd64", None))));
        assert!(amd.matches(Some(&p("linux", "amd64", Some("v3")))));
        assert!(!amd.matches(Some(&p("linux", "arm64", None))));
        assert!(!amd.matches(None));
        let v7: PlatformFilter = "linux/arm/v7".parse().unwrap();
        assert!(v7.matches(Some(&p("linux", "arm", Some("v7")))));
        assert!(!v7.matches(Some(&p("linux", "arm", Some("v6")))));
        assert!(!v7.matches(Some(&p("linux", "arm", None))));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", ""] {
            assert!(bad.parse::<PlatformFilter>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_filter_applies_to_index_entries_only() {
        let r = |kind| WarmRef {
            digest: Digest::sha256_of(b"x"),
            kind,
            platform: None,
        };
        let f: PlatformFilter = "linux/amd64".parse().unwrap();
        assert!(!wanted(&r(RefKind::Manifest), Some(&f)));
        assert!(wanted(&r(RefKind::Layer), Some(&f)));
        assert!(wanted(&r(RefKind::Subject), Some(&f)));
        assert!(wanted(&r(RefKind::Manifest), None));
    }
}
