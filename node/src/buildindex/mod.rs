//! The build-index role: durable tags (`repo:tag → digest`) and their replication.
//!
//! - [`store`]: the redb tag table with history.
//! - [`referrers`]: the redb referrers table (`(repo, subject, referrer) → descriptor`)
//!   behind the OCI referrers API.
//! - [`digests`] and `links`: which repositories link each blob (pushes, mounts, stored
//!   manifests' closures) and the tombstones of purged blobs agents poll, each on the
//!   digest's build-index owners.
//! - what a manifest references (Docker schema2, manifest list, OCI manifest and index,
//!   OCI 1.1 `subject`) is read by the gateway's manifest parser,
//!   [`kraken_registry_gateway::media::references`].
//! - [`replicate`]: the durable replication queue and its executor: every stored tag is
//!   written through to the backend, copied to the tag's other build-index owners, and sent
//!   to each remote cluster whose rule matches, with per-destination retry and backoff.
//! - [`gc`]: garbage collection (mark from every tag, plan, journaled sweep) and its
//!   schedule.
//! - `upstream`: tags of repositories that mirror an upstream registry, resolved there
//!   (single flight, `flight`), cached by the pure policy of [`tagcache`], with the last
//!   known digest answered while the upstream is down; the manifest is read through into
//!   the origins. `PutTag` and `DeleteTag` on such a repository are refused (`Denied`).
//!
//! A tag is owned by the build-index ring (rendezvous over live build-index nodes,
//! `replicas` owners). `PutTag` on an owner checks that the digest and, recursively, every
//! blob and child manifest it references exist in the origins (an owner reads missing blobs
//! through from its backend; a `subject` and a foreign layer with `urls` are no
//! dependencies: see `media::references`), queues the tag's replications, stores it, and only then
//! answers; a missing dependency is an error that names it. A setting is stamped with the
//! time the owner that took it set it (later than the setting it replaces); replicas keep
//! that stamp, and an owner refuses a replica older than its own setting, answering that
//! setting, which the sender adopts: the later setting wins on every owner (the larger
//! digest on a tie), however late a queued replication arrives. `GetTag` on an owner that
//! lacks a tag reads it back from the backend, and a node that starts with an empty table
//! imports every tag from its backends, so a wiped build-index recovers (a tag read from
//! a backend is stamped 0: any owner's setting replaces it).

pub mod digests;
pub mod gc;
mod links;
pub mod referrers;
pub mod replicate;
pub mod store;
pub mod tagcache;
mod upstream;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kraken_membership::NodeId;
use kraken_registry_gateway::media;
use kraken_registry_gateway::names::{validate_name, validate_tag};
use kraken_storage::Digest;
use kraken_storage::backend::NamespaceRouter;
use kraken_storage::queue::WriteBackQueue;
use regex::Regex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

pub use kraken_client::cluster::owners_of_tag;

use crate::client::Cluster;
use crate::fetch::{fetch_bytes, origin_metainfo};
use crate::proto::{ErrorKind, RemoteError, Request, Response};
use store::TagStore;

/// Settings of the build-index role (`[build_index]` in a node's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildIndexConfig {
    /// Build-index nodes holding each tag.
    pub replicas: usize,
    /// Check that a tag's digest and everything it references exist before storing it.
    pub check_dependencies: bool,
    /// Largest page of a listing.
    pub max_page: u32,
    /// Replications run at once.
    pub replication_concurrency: usize,
    /// How often the replication executor looks for due items when not woken, in ms.
    pub replication_poll_ms: u64,
    /// Remote clusters that receive matching tags (and their blobs).
    pub remotes: Vec<RemoteRule>,
    /// Run a garbage collection this often, in seconds, on the node that owns it (0: never;
    /// `krakenctl gc` runs one on demand).
    pub gc_interval_secs: u64,
    /// Garbage collection keeps unreachable blobs used within this many seconds before it
    /// started (uploads of a push in progress, blobs just read).
    pub gc_grace_secs: u64,
    /// How long tombstones of purged blobs are kept for agents to poll, in seconds
    /// (default 7 days: an agent offline longer may serve a deleted blob it still holds
    /// until its own eviction drops it).
    pub tombstone_retention_secs: u64,
}

/// One `[[build_index.remotes]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteRule {
    /// Its name (in queue items, logs and `krakenctl replication`).
    pub name: String,
    /// Regex over `repo:tag` (anchored): matching tags are replicated.
    pub tags: String,
    /// QUIC address (`host:port`) of any ring node of the remote cluster. The remote's
    /// certificates must chain to a CA this node trusts.
    pub seed: String,
}

impl Default for BuildIndexConfig {
    fn default() -> Self {
        BuildIndexConfig {
            replicas: 3,
            check_dependencies: true,
            max_page: 1000,
            replication_concurrency: 4,
            replication_poll_ms: 1000,
            remotes: Vec::new(),
            gc_interval_secs: 0,
            gc_grace_secs: 3600,
            tombstone_retention_secs: 7 * 24 * 3600,
        }
    }
}

/// Why a `[build_index]` section was refused.
#[derive(Debug, thiserror::Error)]
pub enum BuildIndexConfigError {
    /// A count is 0: nothing would hold, list or replicate a tag.
    #[error("build_index replicas, max_page and replication_concurrency must be above 0")]
    ZeroCount,
    /// `replication_poll_ms` is 0: the executor would spin.
    #[error("build_index.replication_poll_ms must be above 0")]
    ZeroPoll,
    /// A remote's name is empty or holds a tab or colon (queue keys are tab-separated and
    /// name destinations `remote:NAME`).
    #[error("build_index.remotes: bad name {0:?}")]
    RemoteName(String),
    /// Two remotes share a name.
    #[error("build_index.remotes: duplicate name {0:?}")]
    DuplicateRemote(String),
    /// A remote's `tags` is not a regex.
    #[error("build_index.remotes {name:?}: bad tags regex: {source}")]
    TagsRegex {
        /// The remote.
        name: String,
        /// The regex parser's complaint.
        source: regex::Error,
    },
    /// A remote has no seed to dial.
    #[error("build_index.remotes {0:?}: seed is empty")]
    EmptySeed(String),
}

impl BuildIndexConfig {
    /// Rejects settings that cannot work, naming the bad rule.
    pub fn validate(&self) -> Result<(), BuildIndexConfigError> {
        if self.replicas == 0 || self.max_page == 0 || self.replication_concurrency == 0 {
            return Err(BuildIndexConfigError::ZeroCount);
        }
        if self.replication_poll_ms == 0 {
            return Err(BuildIndexConfigError::ZeroPoll);
        }
        let mut names = HashSet::new();
        for r in &self.remotes {
            if r.name.is_empty() || r.name.contains(['\t', ':']) {
                return Err(BuildIndexConfigError::RemoteName(r.name.clone()));
            }
            if !names.insert(&r.name) {
                return Err(BuildIndexConfigError::DuplicateRemote(r.name.clone()));
            }
            r.compile()?;
            if r.seed.is_empty() {
                return Err(BuildIndexConfigError::EmptySeed(r.name.clone()));
            }
        }
        Ok(())
    }
}

impl RemoteRule {
    /// Its `tags` regex, anchored.
    fn compile(&self) -> Result<Regex, BuildIndexConfigError> {
        Regex::new(&format!("^(?:{})$", self.tags)).map_err(|source| {
            BuildIndexConfigError::TagsRegex {
                name: self.name.clone(),
                source,
            }
        })
    }
}

/// Why a build-index could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Its data directory or the replication's temp directory could not be created.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The tag table (or the links and tombstones table) could not be opened.
    #[error("opening the tag table: {0}")]
    Tags(#[from] store::StoreError),
    /// The referrers table could not be opened.
    #[error("opening the referrers table: {0}")]
    Referrers(#[source] store::StoreError),
    /// The replication queue could not be opened.
    #[error("opening the replication queue: {0}")]
    Queue(#[from] kraken_storage::queue::QueueError),
    /// The garbage collection journal could not be opened.
    #[error("opening the garbage collection journal: {0}")]
    Gc(#[source] store::StoreError),
    /// A remote rule does not compile (settings not validated).
    #[error(transparent)]
    Config(#[from] BuildIndexConfigError),
}

/// The build-index role. Cheap to clone.
#[derive(Clone)]
pub struct BuildIndex {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    cluster: Cluster,
    store: TagStore,
    referrers: referrers::ReferrerStore,
    digests: digests::DigestStore,
    router: NamespaceRouter,
    queue: WriteBackQueue,
    config: BuildIndexConfig,
    rules: Vec<(RemoteRule, Regex)>,
    tmp_dir: PathBuf,
    wake: Notify,
    upstream: upstream::UpstreamTags,
    gc: gc::Collector,
}

/// What a build-index is built from.
pub struct BuildIndexParts {
    /// This node's ring id.
    pub me: NodeId,
    /// Calls to other nodes.
    pub cluster: Cluster,
    /// Where its state lives (`tags.redb`, `referrers.redb`, `replication.redb`, temp
    /// files).
    pub data_dir: PathBuf,
    /// Backends by repository.
    pub router: NamespaceRouter,
    /// Settings (validated).
    pub config: BuildIndexConfig,
    /// The replication queue's backoff.
    pub queue: kraken_storage::queue::QueueConfig,
}

impl BuildIndex {
    /// Opens the tag table and replication queue under the data directory.
    pub fn open(parts: BuildIndexParts) -> Result<Self, OpenError> {
        let create = |path: &Path| {
            std::fs::create_dir_all(path).map_err(|source| OpenError::CreateDir {
                path: path.to_path_buf(),
                source,
            })
        };
        create(&parts.data_dir)?;
        let tmp_dir = parts.data_dir.join("replication-tmp");
        // Leftovers of a crashed copy are never resumed from: start clean.
        let _ = std::fs::remove_dir_all(&tmp_dir);
        create(&tmp_dir)?;
        let store = TagStore::open(&parts.data_dir.join("tags.redb"))?;
        let referrers = referrers::ReferrerStore::open(&parts.data_dir.join("referrers.redb"))
            .map_err(OpenError::Referrers)?;
        let digests = digests::DigestStore::open(&parts.data_dir.join("digests.redb"))?;
        let queue = WriteBackQueue::open(&parts.data_dir.join("replication.redb"), parts.queue)?;
        let journal =
            gc::journal::Journal::open(&parts.data_dir.join("gc.redb")).map_err(OpenError::Gc)?;
        let rules = parts
            .config
            .remotes
            .iter()
            .map(|r| r.compile().map(|re| (r.clone(), re)))
            .collect::<Result<_, _>>()?;
        Ok(BuildIndex {
            inner: Arc::new(Inner {
                me: parts.me,
                cluster: parts.cluster,
                store,
                referrers,
                digests,
                router: parts.router,
                queue,
                config: parts.config,
                rules,
                tmp_dir,
                wake: Notify::new(),
                upstream: upstream::UpstreamTags::default(),
                gc: gc::Collector::open(journal),
            }),
        })
    }

    /// Imports tags from the backends if the table is empty, then starts the replication
    /// executor (until `stop`).
    pub fn spawn_background(&self, stop: watch::Receiver<bool>) {
        crate::spawn(self.clone().gc_schedule(stop.clone()));
        let bi = self.clone();
        crate::spawn(async move {
            if bi.inner.store.is_empty().unwrap_or(false) {
                bi.import_from_backends().await;
            }
            replicate::run(bi, stop).await;
        });
    }

    async fn import_from_backends(&self) {
        let mut imported = 0usize;
        for (name, backend) in self.inner.router.routes() {
            match backend.list_tags().await {
                Ok(tags) => {
                    for (repo, tag, digest) in tags {
                        // A deletion whose backend half is still queued stays deleted.
                        if self.inner.store.is_deleted(&repo, &tag).unwrap_or(false) {
                            continue;
                        }
                        if matches!(
                            self.inner.store.put_from_backend(&repo, &tag, &digest),
                            Ok(true)
                        ) {
                            imported += 1;
                        }
                    }
                }
                Err(e) => tracing::warn!(backend = %name, error = %e, "cannot list tags to import"),
            }
        }
        if imported > 0 {
            tracing::info!(
                imported,
                "imported tags from the backends into an empty build-index"
            );
        }
    }

    /// The tag table.
    pub fn store(&self) -> &TagStore {
        &self.inner.store
    }

    /// The referrers table.
    pub fn referrers_table(&self) -> &referrers::ReferrerStore {
        &self.inner.referrers
    }

    /// The links and blob tombstones.
    pub fn digests(&self) -> &digests::DigestStore {
        &self.inner.digests
    }

    /// The replication queue.
    pub fn queue(&self) -> &WriteBackQueue {
        &self.inner.queue
    }

    /// The owners of `repo:tag` on the build-index ring, best first.
    pub fn owners(&self, repo: &str, tag: &str) -> Vec<kraken_membership::Member> {
        owners_of_tag(&self.inner.cluster, repo, tag, self.inner.config.replicas)
    }

    /// Serves one build-index request; `None` if the request is not a build-index's.
    pub async fn handle(&self, request: &Request) -> Option<Response> {
        let answer = match request {
            Request::PutTag {
                repo,
                tag,
                digest,
                replica,
                set_ms,
            } => {
                let from = replica.then_some(*set_ms);
                self.put_tag(repo, tag, digest, from).await
            }
            Request::GetTag { repo, tag } => self.get_tag(repo, tag).await,
            Request::ListTags { repo, after, limit } => {
                self.list_tags(repo, after.as_deref(), *limit)
            }
            Request::ListRepos { after, limit } => self.list_repos(after.as_deref(), *limit),
            Request::TagHistory { repo, tag } => self.history(repo, tag),
            Request::ReplicationStatus => self.replication_status(),
            Request::DeleteTag { repo, tag, replica } => self.delete_tag(repo, tag, *replica).await,
            Request::PutReferrer {
                repo,
                subject,
                digest,
                descriptor,
                replica,
            } => {
                self.put_referrer(repo, subject, digest, descriptor, *replica)
                    .await
            }
            Request::Referrers { repo, subject } => self.referrers(repo, subject),
            Request::DeleteReferrer {
                repo,
                subject,
                digest,
            } => self.delete_referrer(repo, subject, digest),
            Request::ListTagTable { after, limit } => self.list_tag_table(after.as_ref(), *limit),
            Request::Gc {
                dry_run,
                grace_ms,
                wait_ms,
            } => {
                self.gc(*dry_run, *grace_ms, Duration::from_millis(*wait_ms))
                    .await
            }
            Request::GcStatus { run_id, wait_ms } => {
                self.gc_status(*run_id, Duration::from_millis(*wait_ms))
                    .await
            }
            other => self.handle_blob_request(other).await?,
        };
        Some(answer.unwrap_or_else(Response::Error))
    }

    fn check_names(repo: &str, tag: &str) -> Result<(), RemoteError> {
        validate_name(repo).map_err(|e| RemoteError::new(ErrorKind::BadRequest, e.to_string()))?;
        validate_tag(tag).map_err(|e| RemoteError::new(ErrorKind::BadRequest, e.to_string()))
    }

    fn is_owner(&self, repo: &str, tag: &str) -> bool {
        self.owners(repo, tag).iter().any(|m| m.id == self.inner.me)
    }

    /// Stores `repo:tag → digest` after checking its dependencies: a client's put, or,
    /// with `replica` (the time the other owner set it), a replica, stored only if it is
    /// later than the setting here, which is answered instead (`Tag`).
    pub async fn put_tag(
        &self,
        repo: &str,
        tag: &str,
        digest: &Digest,
        replica: Option<u64>,
    ) -> Result<Response, RemoteError> {
        let set_ms = replica;
        let replica = set_ms.is_some();
        self.check_tag_write(repo, tag, replica)?;
        if let Some(set_ms) = set_ms
            && let Some(newer) = self.newer_setting(repo, tag, digest, set_ms)?
        {
            tracing::info!(%repo, %tag, set_ms, "replica older than the setting here: refused");
            return Ok(newer);
        }
        if !replica {
            // The repository links the manifest and all it reaches (see `links`).
            let linked: Vec<Digest> = match self.inner.config.check_dependencies {
                true => self
                    .closure(repo, digest)
                    .await?
                    .into_iter()
                    .map(|(d, _)| d)
                    .collect(),
                false => vec![*digest],
            };
            // A garbage collection that started before this push keeps what it touches.
            gc::touch(&self.inner.cluster, linked.clone()).await;
            self.link_blobs(repo, &linked, false).await?;
        }
        // The replications are queued (durably) before the tag is stored and acknowledged;
        // the executor drops items whose tag has moved on.
        let now = std::time::SystemTime::now();
        let destinations = self.destinations(repo, tag, replica);
        for dest in &destinations {
            self.inner
                .queue
                .enqueue(&replicate::item_key(dest, repo, tag), digest, now)
                .map_err(internal)?;
        }
        let changed = match set_ms {
            None => self.inner.store.put(repo, tag, digest).map_err(internal)?,
            Some(set_ms) => match self
                .inner
                .store
                .put_replica(repo, tag, digest, set_ms)
                .map_err(internal)?
            {
                store::ReplicaPut::Stored { changed } => changed,
                store::ReplicaPut::Newer(e) => {
                    // A later setting landed meanwhile: its queued replications (replaced
                    // above by this item's) go out again.
                    for dest in &destinations {
                        self.inner
                            .queue
                            .enqueue(&replicate::item_key(dest, repo, tag), &e.digest, now)
                            .map_err(internal)?;
                    }
                    return Ok(Response::Tag {
                        digest: e.digest,
                        updated_ms: e.updated_ms,
                    });
                }
            },
        };
        self.inner.wake.notify_one();
        // The digest is in the request's span.
        tracing::info!(%repo, %tag, replica, changed, "tag stored");
        Ok(Response::TagPut { changed })
    }

    /// The setting of `repo:tag` here, as a `Tag` answer, if it is later than a replica
    /// of `digest` set at `set_ms`.
    fn newer_setting(
        &self,
        repo: &str,
        tag: &str,
        digest: &Digest,
        set_ms: u64,
    ) -> Result<Option<Response>, RemoteError> {
        let here = self.inner.store.get(repo, tag).map_err(internal)?;
        Ok(here
            .filter(|e| e.digest != *digest && !store::replaces(digest, set_ms, e))
            .map(|e| Response::Tag {
                digest: e.digest,
                updated_ms: e.updated_ms,
            }))
    }

    /// A tag write (put or delete) needs valid names and, unless it is a replica, this
    /// node among the tag's owners.
    fn check_tag_write(&self, repo: &str, tag: &str, replica: bool) -> Result<(), RemoteError> {
        Self::check_names(repo, tag)?;
        // A mirror's tags are the upstream's: never set or removed here, replicas included.
        crate::mirror::refuse_writes(&self.inner.router, repo)?;
        if !replica && !self.is_owner(repo, tag) {
            return Err(RemoteError::new(
                ErrorKind::WrongNode,
                format!("{} does not own {repo}:{tag}", self.inner.me),
            ));
        }
        Ok(())
    }

    /// Where a stored tag must go.
    fn destinations(&self, repo: &str, tag: &str, replica: bool) -> Vec<String> {
        let mut out = vec![replicate::BACKEND.to_string()];
        if !replica {
            for m in self.owners(repo, tag) {
                if m.id != self.inner.me {
                    out.push(format!("{}{}", replicate::OWNER, m.id));
                }
            }
        }
        let full = format!("{repo}:{tag}");
        for (rule, re) in &self.inner.rules {
            if re.is_match(&full) {
                out.push(format!("{}{}", replicate::REMOTE, rule.name));
            }
        }
        out
    }

    /// Deletes `repo:tag` here, then (queued, durable) on the other owners and in the
    /// backend. Remote clusters keep their copy.
    pub async fn delete_tag(
        &self,
        repo: &str,
        tag: &str,
        replica: bool,
    ) -> Result<Response, RemoteError> {
        self.check_tag_write(repo, tag, replica)?;
        let old = self.inner.store.get(repo, tag).map_err(internal)?;
        let Some(old) = old else {
            if replica {
                // The owner that took the delete had it; make sure we do not keep one.
                self.inner.store.delete(repo, tag).map_err(internal)?;
                return Ok(Response::TagDeleted);
            }
            return Err(RemoteError::new(
                ErrorKind::NotFound,
                format!("tag {repo}:{tag} is unknown"),
            ));
        };
        let now = std::time::SystemTime::now();
        let mut dests = vec![replicate::DELETE_BACKEND.to_string()];
        if !replica {
            for m in self.owners(repo, tag) {
                if m.id != self.inner.me {
                    dests.push(format!("{}{}", replicate::DELETE_OWNER, m.id));
                }
            }
        }
        for dest in dests {
            self.inner
                .queue
                .enqueue(&replicate::item_key(&dest, repo, tag), &old.digest, now)
                .map_err(internal)?;
        }
        self.inner.store.delete(repo, tag).map_err(internal)?;
        self.inner.wake.notify_one();
        tracing::info!(%repo, %tag, digest = %old.digest, replica, "tag deleted");
        Ok(Response::TagDeleted)
    }

    async fn get_tag(&self, repo: &str, tag: &str) -> Result<Response, RemoteError> {
        Self::check_names(repo, tag)?;
        if let Ok(backend) = self.inner.router.route(repo)
            && let Some(upstream) = backend.registry()
        {
            return self.upstream_tag(repo, tag, backend, upstream).await;
        }
        if let Some(e) = self.inner.store.get(repo, tag).map_err(internal)? {
            return Ok(Response::Tag {
                digest: e.digest,
                updated_ms: e.updated_ms,
            });
        }
        if self.inner.store.is_deleted(repo, tag).map_err(internal)? {
            return Err(RemoteError::new(
                ErrorKind::NotFound,
                format!("tag {repo}:{tag} was deleted"),
            ));
        }
        // Not here: the backend may have it (a wiped or new owner).
        let backend = self
            .inner
            .router
            .route(repo)
            .map_err(|e| RemoteError::new(ErrorKind::BadRequest, e.to_string()))?;
        match backend.get_tag(repo, tag).await {
            Ok(Some(digest)) => {
                self.inner
                    .store
                    .put_from_backend(repo, tag, &digest)
                    .map_err(internal)?;
                // An owner's setting that landed meanwhile is the answer.
                let (digest, updated_ms) = self
                    .inner
                    .store
                    .get(repo, tag)
                    .map_err(internal)?
                    .map_or((digest, 0), |e| (e.digest, e.updated_ms));
                Ok(Response::Tag { digest, updated_ms })
            }
            Ok(None) => Err(RemoteError::new(
                ErrorKind::NotFound,
                format!("tag {repo}:{tag} is unknown"),
            )),
            Err(e) => Err(crate::mirror::backend_error(&e)),
        }
    }

    fn page(&self, limit: u32) -> usize {
        limit.clamp(1, self.inner.config.max_page) as usize
    }

    fn list_tags(
        &self,
        repo: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Response, RemoteError> {
        validate_name(repo).map_err(|e| RemoteError::new(ErrorKind::BadRequest, e.to_string()))?;
        let n = self.page(limit);
        let mut names = self
            .inner
            .store
            .list_tags(repo, after, n + 1)
            .map_err(internal)?;
        // A repository whose tags were all deleted stays known: an empty list.
        if names.is_empty()
            && after.is_none()
            && !self.inner.store.had_tags(repo).map_err(internal)?
        {
            return Err(RemoteError::new(
                ErrorKind::NotFound,
                format!("repository {repo} has no tags"),
            ));
        }
        let next = (names.len() > n).then(|| {
            names.truncate(n);
            names.last().cloned().unwrap_or_default()
        });
        Ok(Response::Names { names, next })
    }

    fn list_repos(&self, after: Option<&str>, limit: u32) -> Result<Response, RemoteError> {
        let n = self.page(limit);
        let mut names = self
            .inner
            .store
            .list_repos(after, n + 1)
            .map_err(internal)?;
        let next = (names.len() > n).then(|| {
            names.truncate(n);
            names.last().cloned().unwrap_or_default()
        });
        Ok(Response::Names { names, next })
    }

    fn list_tag_table(
        &self,
        after: Option<&(String, String)>,
        limit: u32,
    ) -> Result<Response, RemoteError> {
        let n = self.page(limit);
        let after = after.map(|(r, t)| (r.as_str(), t.as_str()));
        let mut rows = self.inner.store.list_all(after, n + 1).map_err(internal)?;
        let next = (rows.len() > n).then(|| {
            rows.truncate(n);
            rows.last()
                .map(|(r, t, _)| (r.clone(), t.clone()))
                .unwrap_or_default()
        });
        Ok(Response::TagTable { rows, next })
    }

    fn history(&self, repo: &str, tag: &str) -> Result<Response, RemoteError> {
        Self::check_names(repo, tag)?;
        let h = self.inner.store.history(repo, tag).map_err(internal)?;
        if h.is_empty() {
            return Err(RemoteError::new(
                ErrorKind::NotFound,
                format!("tag {repo}:{tag} is unknown"),
            ));
        }
        Ok(Response::History(
            h.into_iter().map(|e| (e.digest, e.updated_ms)).collect(),
        ))
    }

    /// Every digest `digest` depends on (itself included), each checked to exist in the
    /// origins; the first missing one is an error naming it and what referenced it.
    pub async fn closure(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Vec<(Digest, u64)>, RemoteError> {
        closure(&self.inner.cluster, repo, digest).await
    }
}

/// Most digests one tag may depend on (a guard against hostile manifests).
const MAX_CLOSURE: usize = 100_000;

/// See [`BuildIndex::closure`]; `cluster` says which cluster's origins to ask.
pub async fn closure(
    cluster: &Cluster,
    repo: &str,
    root: &Digest,
) -> Result<Vec<(Digest, u64)>, RemoteError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    // (digest, may be a manifest, referenced by)
    let mut todo: Vec<(Digest, bool, Option<Digest>)> = vec![(*root, true, None)];
    while let Some((digest, manifest, parent)) = todo.pop() {
        if !seen.insert(digest) {
            continue;
        }
        if seen.len() > MAX_CLOSURE {
            return Err(RemoteError::new(
                ErrorKind::BadRequest,
                format!("{root} references more than {MAX_CLOSURE} blobs"),
            ));
        }
        let length = match blob_length(cluster, repo, &digest).await {
            Ok(n) => n,
            Err(e) if e.kind == ErrorKind::NotFound => {
                let by = parent.map_or(String::new(), |p| format!(" (referenced by {p})"));
                return Err(RemoteError::new(
                    ErrorKind::NotFound,
                    format!("missing dependency {digest}{by}: no origin or backend has it"),
                ));
            }
            Err(e) => return Err(e),
        };
        out.push((digest, length));
        if manifest && length <= media::MAX_MANIFEST_LEN {
            let bytes = fetch_bytes(cluster, &digest, media::MAX_MANIFEST_LEN).await?;
            let refs = media::references(&bytes)
                .map_err(|e| RemoteError::new(ErrorKind::BadRequest, format!("{digest}: {e}")))?;
            if let Some(refs) = refs {
                todo.extend(refs.blobs.into_iter().map(|b| (b, false, Some(digest))));
                todo.extend(refs.manifests.into_iter().map(|m| (m, true, Some(digest))));
            }
        }
    }
    Ok(out)
}

/// The blob's length from its metainfo (see [`origin_metainfo`]).
async fn blob_length(
    cluster: &Cluster,
    namespace: &str,
    digest: &Digest,
) -> Result<u64, RemoteError> {
    Ok(origin_metainfo(cluster, namespace, digest).await?.length())
}

fn internal(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(name: &str, tags: &str) -> RemoteRule {
        RemoteRule {
            name: name.into(),
            tags: tags.into(),
            seed: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn a_remote_rule_is_anchored_and_a_bad_one_is_named() {
        let re = remote("dc2", "prod/.*:v.*").compile().unwrap();
        assert!(re.is_match("prod/app:v1"));
        assert!(!re.is_match("x/prod/app:v1"));

        let config = BuildIndexConfig {
            remotes: vec![remote("dc2", "prod/.*"), remote("dc3", "(")],
            ..BuildIndexConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert!(
            matches!(&err, BuildIndexConfigError::TagsRegex { name, .. } if name == "dc3"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("build_index.remotes \"dc3\": bad tags regex"),
            "{err}"
        );
    }
}
