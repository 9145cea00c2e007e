//! The build-index's replication queue and its executor.
//!
//! Items live in a redb queue (the storage crate's `WriteBackQueue`, keyed by
//! `"<destination>\t<repo>\t<tag>"` and the tag's digest), queued before the tag is stored
//! and acknowledged, so nothing acknowledged is lost across restarts. Destinations:
//!
//! - `backend`: the tag's link file in the backend routed by repository (write-through);
//! - `owner:<node>`: another build-index owner of the tag (`PutTag` as a replica, with the
//!   setting's stamp; an owner holding a later setting answers it, and it is adopted here).
//!   An owner missing from this node's view is retried a while before the item is
//!   dropped: a node that just restarted has not heard of the others yet;
//! - `remote:<rule>`: a remote cluster. Its view is read from the rule's seed; every blob
//!   the tag depends on that the remote origins lack is copied (read from our origins into
//!   a temp file, uploaded with the resumable upload to the remote's owning origin), then
//!   the tag is put on the remote build-index, which checks it and may replicate it on.
//!
//! An item whose tag has since moved to another digest is dropped (the newer item carries
//! the newer digest); a deletion is dropped only if its tag was set again, and waits while
//! the local delete it was queued ahead of has not landed. The storage crate's queue
//! executor drains the queue with one lane per destination: when one item of a destination
//! fails, the pass stops trying that destination and its other due items are rescheduled
//! with backoff too, so a remote that is down costs one failed attempt per pass, not one
//! per tag. Every owner of a tag queues its remote replications, so losing the node that took
//! the put loses nothing; remotes see duplicates as no-ops.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use kraken_membership::{ClusterView, Role};
use kraken_storage::Digest;
use kraken_storage::queue::WriteBackItem;
use kraken_storage::queue::executor::{Executor, Job, Step};
use tokio::sync::watch;

use super::{BuildIndex, RemoteRule, closure, owners_of_tag};
use crate::client::Cluster;
use crate::fetch::{call_error, fetch_to_file};
use crate::proto::{DestinationStatus, ErrorKind, RemoteError, Request, Response};

/// The backend destination.
pub const BACKEND: &str = "backend";
/// Prefix of owner destinations.
pub const OWNER: &str = "owner:";
/// Prefix of remote destinations.
pub const REMOTE: &str = "remote:";
/// Removing a deleted tag's link from the backend.
pub const DELETE_BACKEND: &str = "delete-backend";
/// Prefix of deleting a tag on another owner.
pub const DELETE_OWNER: &str = "delete-owner:";

/// The queue key of a replication.
pub fn item_key(destination: &str, repo: &str, tag: &str) -> String {
    format!("{destination}\t{repo}\t{tag}")
}

/// `(destination, repo, tag)` of a queue key.
pub fn parse_item_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut parts = key.splitn(3, '\t');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// Items leased per pass.
const BATCH: usize = 256;

/// Runs until `stop` turns true.
pub async fn run(bi: BuildIndex, stop: watch::Receiver<bool>) {
    let inner = &bi.inner;
    let poll = Duration::from_millis(inner.config.replication_poll_ms);
    executor(&bi).run(&inner.wake, poll, stop).await;
}

/// The queue's executor: one lane per destination, so one destination's items run in
/// order, one at a time, and its first failure defers the rest; destinations run
/// concurrently.
fn executor(bi: &BuildIndex) -> Executor<'_, Replication<'_>> {
    let concurrency = bi.inner.config.replication_concurrency;
    Executor::new(&bi.inner.queue, Replication(bi), BATCH, concurrency)
}

/// Replication as the executor's job.
struct Replication<'a>(&'a BuildIndex);

/// The destination of a queue item ("" for an unreadable key).
fn destination(item: &WriteBackItem) -> &str {
    parse_item_key(&item.namespace).map_or("", |(d, _, _)| d)
}

impl Job for Replication<'_> {
    const NAME: &'static str = "replication";
    type Done = ();
    type Error = RemoteError;

    fn lane(&self, item: &WriteBackItem) -> Option<String> {
        Some(destination(item).to_string())
    }

    async fn attempt(&self, item: &WriteBackItem) -> Result<Step<()>, RemoteError> {
        match replicate_one(self.0, item).await? {
            Outcome::Done => Ok(Step::Done(())),
            Outcome::Dropped(why) => {
                tracing::debug!(destination = destination(item), item = %item.namespace.replace('\t', " "), why, "replication dropped");
                Ok(Step::Drop)
            }
        }
    }

    fn done(&self, item: &WriteBackItem, (): ()) {
        tracing::info!(destination = destination(item), item = %item.namespace.replace('\t', " "),
            digest = %item.digest, "replicated");
    }

    fn failed(&self, item: &WriteBackItem, error: &RemoteError, retry_in: Duration) {
        tracing::warn!(destination = destination(item), item = %item.namespace.replace('\t', " "),
            error = %error, attempts = item.attempts + 1,
            retry_in_ms = retry_in.as_millis(), "replication failed; will retry");
    }
}

enum Outcome {
    Done,
    Dropped(&'static str),
}

async fn replicate_one(bi: &BuildIndex, item: &WriteBackItem) -> Result<Outcome, RemoteError> {
    let inner = &bi.inner;
    let Some((dest, repo, tag)) = parse_item_key(&item.namespace) else {
        return Ok(Outcome::Dropped("unreadable item"));
    };
    let current = inner
        .store
        .get(repo, tag)
        .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?;
    if dest == DELETE_BACKEND || dest.starts_with(DELETE_OWNER) {
        return match deletion_step(current.as_ref(), &item.digest, item.enqueued, item.attempts) {
            DeletionStep::Carry => delete_elsewhere(bi, dest, repo, tag, item.attempts).await,
            DeletionStep::SetAgain => {
                Ok(Outcome::Dropped("the tag was set again after its deletion"))
            }
            DeletionStep::NotYet => Err(RemoteError::new(
                ErrorKind::Unavailable,
                "the deletion has not landed on this node yet",
            )),
        };
    }
    let set_ms = match put_step(current.as_ref(), &item.digest, item.enqueued, item.attempts) {
        PutStep::Carry => current.as_ref().map_or(0, |e| e.updated_ms),
        PutStep::MovedOn => {
            return Ok(Outcome::Dropped(
                "the tag has moved on (or was never stored)",
            ));
        }
        PutStep::NotYet => {
            return Err(RemoteError::new(
                ErrorKind::Unavailable,
                "the tag has not been stored on this node yet",
            ));
        }
    };
    if dest == BACKEND {
        backend(bi, repo)?
            .put_tag(repo, tag, &item.digest)
            .await
            .map_err(|e| RemoteError::new(ErrorKind::Unavailable, e.to_string()))?;
        return Ok(Outcome::Done);
    }
    if let Some(owner) = dest.strip_prefix(OWNER) {
        let request = Request::PutTag {
            repo: repo.into(),
            tag: tag.into(),
            digest: item.digest,
            replica: true,
            set_ms,
        };
        // An owner that holds a later setting (one this node missed while it was down)
        // answers it instead: adopt it, so that this node stops answering the older one.
        let mut adopted = None;
        let outcome = tell_owner(bi, owner, item.attempts, &request, |r| match r {
            Response::TagPut { .. } => true,
            Response::Tag { digest, updated_ms } => {
                adopted = Some((*digest, *updated_ms));
                true
            }
            _ => false,
        })
        .await?;
        if let Some((digest, updated_ms)) = adopted {
            let stored = inner
                .store
                .put_replica(repo, tag, &digest, updated_ms)
                .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?;
            tracing::info!(%repo, %tag, %owner, %digest, ?stored,
                "another owner holds a later setting of the tag: adopted it");
        }
        return Ok(outcome);
    }
    if let Some(name) = dest.strip_prefix(REMOTE) {
        let Some((rule, _)) = inner.rules.iter().find(|(r, _)| r.name == name) else {
            return Ok(Outcome::Dropped(
                "the remote rule was removed from the config",
            ));
        };
        replicate_remote(bi, rule, repo, tag, &item.digest).await?;
        return Ok(Outcome::Done);
    }
    Ok(Outcome::Dropped("unknown destination"))
}

/// What to do with a queued setting of a tag, given the tag as it is here now.
#[derive(Debug, PartialEq, Eq)]
enum PutStep {
    /// The tag holds the queued digest: carry it.
    Carry,
    /// The tag was set to another digest (or deleted) since: the item is obsolete.
    MovedOn,
    /// `put_tag` queues its replications before it stores the tag (so that an
    /// acknowledged tag survives a crash); a pass that runs in between finds the tag
    /// missing or older. Try again: dropping it would leave the other owners without the
    /// tag for good.
    NotYet,
}

/// A tag that is missing, or set to another digest no later than the item was queued,
/// has not seen this item's store yet. Past a few attempts it is taken as moved on (the
/// store failed, and the client was told so), so nothing retries forever.
fn put_step(
    current: Option<&super::store::TagEntry>,
    queued_digest: &Digest,
    queued: SystemTime,
    attempts: u32,
) -> PutStep {
    const PATIENCE: u32 = 5;
    match current {
        Some(entry) if entry.digest == *queued_digest => PutStep::Carry,
        Some(entry) if entry.updated_ms > millis(queued) => PutStep::MovedOn,
        _ if attempts < PATIENCE => PutStep::NotYet,
        _ => PutStep::MovedOn,
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What to do with a queued deletion, given the tag as it is here now.
#[derive(Debug, PartialEq, Eq)]
enum DeletionStep {
    /// The tag is gone here: delete it there too.
    Carry,
    /// The tag was set again since: the deletion is obsolete.
    SetAgain,
    /// `delete_tag` queues the deletion before it deletes here (so that an acknowledged
    /// deletion survives a crash); a pass that runs in between still sees the tag. Try
    /// again: dropping it would leave the tag on the other owners for good.
    NotYet,
}

/// A tag still present with the deleted digest and set no later than the deletion was
/// queued is the deleted one, not a new setting. Past a few attempts it is taken as set
/// again (the same digest, set again within the same millisecond), so nothing retries
/// forever.
fn deletion_step(
    current: Option<&super::store::TagEntry>,
    deleted: &Digest,
    queued: SystemTime,
    attempts: u32,
) -> DeletionStep {
    const PATIENCE: u32 = 5;
    let Some(entry) = current else {
        return DeletionStep::Carry;
    };
    let same = entry.digest == *deleted && entry.updated_ms <= millis(queued);
    match same && attempts < PATIENCE {
        true => DeletionStep::NotYet,
        false => DeletionStep::SetAgain,
    }
}

/// Carries a deletion to the backend or another owner.
async fn delete_elsewhere(
    bi: &BuildIndex,
    dest: &str,
    repo: &str,
    tag: &str,
    attempts: u32,
) -> Result<Outcome, RemoteError> {
    if dest == DELETE_BACKEND {
        backend(bi, repo)?
            .delete_tag(repo, tag)
            .await
            .map_err(|e| RemoteError::new(ErrorKind::Unavailable, e.to_string()))?;
        return Ok(Outcome::Done);
    }
    let request = Request::DeleteTag {
        repo: repo.into(),
        tag: tag.into(),
        replica: true,
    };
    let owner = dest.trim_start_matches(DELETE_OWNER);
    tell_owner(bi, owner, attempts, &request, |r| {
        matches!(r, Response::TagDeleted)
    })
    .await
}

/// The backend that holds `repo`'s tags.
fn backend<'a>(
    bi: &'a BuildIndex,
    repo: &str,
) -> Result<&'a kraken_storage::backend::Backend, RemoteError> {
    bi.inner
        .router
        .route(repo)
        .map_err(|e| RemoteError::new(ErrorKind::BadRequest, e.to_string()))
}

/// Attempts of an item for an owner missing from this node's view before it is taken as
/// gone for good (about 17 minutes with the default backoff).
const OWNER_PATIENCE: u32 = 10;

/// Whether an item for an owner missing from the view is dropped after `attempts`: not
/// at once, since a node that just started has not heard of the others yet (its
/// replications queued before a crash would be lost), and an owner that was away longer
/// than the ring's grace period comes back.
fn drop_for_missing_owner(attempts: u32) -> bool {
    attempts >= OWNER_PATIENCE
}

/// Sends `request` to the build-index node `owner`; done when it answers as `ok` says. An
/// owner missing from the view is retried, and the item dropped only after
/// [`OWNER_PATIENCE`] attempts (the owner left the cluster).
async fn tell_owner(
    bi: &BuildIndex,
    owner: &str,
    attempts: u32,
    request: &Request,
    mut ok: impl FnMut(&Response) -> bool,
) -> Result<Outcome, RemoteError> {
    let view = bi.inner.cluster.view();
    let Some(member) = view
        .members()
        .values()
        .find(|m| m.id.as_str() == owner && m.has_role(Role::BuildIndex))
    else {
        if drop_for_missing_owner(attempts) {
            return Ok(Outcome::Dropped("the owner left the cluster"));
        }
        return Err(RemoteError::new(
            ErrorKind::Unavailable,
            format!("build-index {owner} is not in this node's view"),
        ));
    };
    match bi.inner.cluster.call(member.quic_addr, request).await {
        Ok(answer) if ok(&answer) => Ok(Outcome::Done),
        Ok(other) => Err(call_error(crate::client::CallError::unexpected(
            member.quic_addr,
            other,
        ))),
        Err(e) => Err(call_error(e)),
    }
}

/// A client for the remote cluster: our pool, the remote's view from its seed.
async fn remote_cluster(bi: &BuildIndex, rule: &RemoteRule) -> Result<Cluster, RemoteError> {
    let local = &bi.inner.cluster;
    let seeds = crate::view::resolve_seeds(std::slice::from_ref(&rule.seed)).await;
    let mut last = RemoteError::new(
        ErrorKind::Unavailable,
        format!("remote {}: seed {} does not resolve", rule.name, rule.seed),
    );
    for addr in seeds {
        match local.call(addr, &Request::ClusterView).await {
            Ok(Response::View(bytes)) => {
                let view = ClusterView::decode(&bytes).map_err(|e| {
                    RemoteError::new(ErrorKind::Unavailable, format!("remote {}: {e}", rule.name))
                })?;
                return Ok(Cluster::new(local.pool().clone(), watch::channel(view).1));
            }
            Ok(other) => last = call_error(crate::client::CallError::unexpected(addr, other)),
            Err(e) => {
                last = RemoteError::new(
                    ErrorKind::Unavailable,
                    format!("remote {}: {}", rule.name, call_error(e).message),
                );
            }
        }
    }
    Err(last)
}

async fn replicate_remote(
    bi: &BuildIndex,
    rule: &RemoteRule,
    repo: &str,
    tag: &str,
    digest: &Digest,
) -> Result<(), RemoteError> {
    let remote = remote_cluster(bi, rule).await?;
    let blobs = closure(&bi.inner.cluster, repo, digest).await?;
    let mut copied = HashSet::new();
    for (blob, length) in &blobs {
        if !copied.insert(*blob) {
            continue;
        }
        copy_blob(bi, &remote, repo, blob, *length).await?;
    }
    let owners = owners_of_tag(&remote, repo, tag, 0);
    let request = Request::PutTag {
        repo: repo.into(),
        tag: tag.into(),
        digest: *digest,
        replica: false,
        set_ms: 0,
    };
    let limit = Duration::from_secs(120);
    match remote
        .call_first(&owners, Role::BuildIndex, &request, limit)
        .await
    {
        Ok(Response::TagPut { .. }) => Ok(()),
        Ok(other) => Err(RemoteError::new(
            ErrorKind::Internal,
            format!("remote {} answered {other:?}", rule.name),
        )),
        Err(e) => Err(call_error(e)),
    }
}

/// Copies one blob to the remote's owning origin unless it has it.
async fn copy_blob(
    bi: &BuildIndex,
    remote: &Cluster,
    namespace: &str,
    digest: &Digest,
    length: u64,
) -> Result<(), RemoteError> {
    let owners = remote.owners_of_digest(Role::Origin, digest, 1);
    let owner = owners.first().ok_or_else(|| {
        RemoteError::new(
            ErrorKind::Unavailable,
            "the remote cluster has no live origin",
        )
    })?;
    match remote
        .call(owner.quic_addr, &Request::UploadStatus { digest: *digest })
        .await
    {
        Ok(Response::UploadOffset(n)) if n == length => {
            // Complete there (or staged whole: the empty-bodied upload below commits it).
            if let Ok(Response::BlobStat(s)) = remote
                .call(owner.quic_addr, &Request::BlobStat { digest: *digest })
                .await
                && s.present
            {
                return Ok(());
            }
        }
        Ok(_) => {}
        Err(e) => return Err(call_error(e)),
    }
    let tmp = bi.inner.tmp_dir.join(digest.hex());
    let result = async {
        fetch_to_file(&bi.inner.cluster, digest, &tmp).await?;
        crate::origin::upload::push_file(
            remote,
            owner.quic_addr,
            namespace,
            digest,
            &tmp,
            length,
            false,
            false,
        )
        .await
        .map_err(call_error)
    }
    .await;
    let _ = tokio::fs::remove_file(&tmp).await;
    result.map(|_| ())
}

impl BuildIndex {
    /// Pending items per destination.
    pub(super) fn replication_status(&self) -> Result<Response, RemoteError> {
        let items = self
            .inner
            .queue
            .list()
            .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?;
        let now = SystemTime::now();
        let mut by: BTreeMap<String, DestinationStatus> = BTreeMap::new();
        for item in items {
            let dest = parse_item_key(&item.namespace).map_or("?", |(d, _, _)| d);
            let age = now.duration_since(item.enqueued).map_or(0, |d| d.as_secs());
            let entry = by.entry(dest.to_string()).or_insert(DestinationStatus {
                destination: dest.to_string(),
                pending: 0,
                oldest_age_secs: 0,
                attempts: 0,
                last_error: None,
            });
            entry.pending += 1;
            if age >= entry.oldest_age_secs {
                entry.oldest_age_secs = age;
                entry.attempts = item.attempts;
                entry.last_error = item.last_error.clone();
            }
        }
        Ok(Response::Replication(by.into_values().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys_round_trip() {
        let k = item_key("remote:dc2", "library/ubuntu", "22.04");
        assert_eq!(
            parse_item_key(&k),
            Some(("remote:dc2", "library/ubuntu", "22.04"))
        );
        assert_eq!(parse_item_key("nonsense"), None);
    }

    #[test]
    fn a_setting_waits_for_the_local_store_and_yields_to_a_newer_one() {
        use super::super::store::TagEntry;
        let queued_digest = Digest::sha256_of(b"queued");
        let other = Digest::sha256_of(b"other");
        let queued = SystemTime::UNIX_EPOCH + Duration::from_millis(5_000);
        let step = |digest, updated_ms, attempts| {
            let entry = TagEntry { digest, updated_ms };
            put_step(Some(&entry), &queued_digest, queued, attempts)
        };
        assert_eq!(step(queued_digest, 5_003, 0), PutStep::Carry);
        // Not stored yet, or still the older setting: the local store is pending.
        assert_eq!(put_step(None, &queued_digest, queued, 0), PutStep::NotYet);
        assert_eq!(step(other, 4_000, 4), PutStep::NotYet);
        // Set again later to another digest.
        assert_eq!(step(other, 5_001, 0), PutStep::MovedOn);
        // Never forever.
        assert_eq!(put_step(None, &queued_digest, queued, 5), PutStep::MovedOn);
        assert_eq!(step(other, 4_000, 5), PutStep::MovedOn);
    }

    #[test]
    fn an_owner_missing_from_the_view_is_waited_for_before_it_counts_as_gone() {
        // A node that just started has not heard of the others yet.
        assert!(!drop_for_missing_owner(0));
        assert!(!drop_for_missing_owner(OWNER_PATIENCE - 1));
        assert!(drop_for_missing_owner(OWNER_PATIENCE));
    }

    #[test]
    fn a_deletion_waits_for_the_local_delete_and_yields_to_a_new_setting() {
        use super::super::store::TagEntry;
        let old = Digest::sha256_of(b"old");
        let queued = SystemTime::UNIX_EPOCH + Duration::from_millis(5_000);
        let step = |digest, updated_ms, attempts| {
            let entry = TagEntry { digest, updated_ms };
            deletion_step(Some(&entry), &old, queued, attempts)
        };
        assert_eq!(deletion_step(None, &old, queued, 0), DeletionStep::Carry);
        // Still here, as it was when the deletion was queued: the local delete is pending.
        assert_eq!(step(old, 4_999, 0), DeletionStep::NotYet);
        assert_eq!(step(old, 5_000, 4), DeletionStep::NotYet);
        // Set again: later, or to another digest.
        assert_eq!(step(old, 5_001, 0), DeletionStep::SetAgain);
        assert_eq!(
            step(Digest::sha256_of(b"new"), 4_000, 0),
            DeletionStep::SetAgain
        );
        // Never forever.
        assert_eq!(step(old, 4_999, 5), DeletionStep::SetAgain);
    }
}
