//! The referrers table: which manifests of a repository name a given `subject`.
//!
//! The OCI referrers API (`GET /v2/<name>/referrers/<digest>`) lists them; keeping the list
//! here rather than in "referrers tag schema" fallback tags (`sha256-<hex>` tags holding an
//! index) keeps those tags out of `tags/list`, `_catalog` and `crane ls`.
//!
//! A redb table of its own (`referrers.redb`) keyed `(repo, subject, referrer) →
//! descriptor JSON`, so one subject's referrers are a range scan. A put commits before it
//! answers. The owners of `(repo, subject)` are the build-index ring's owners of the key
//! `repo:<subject digest>` ([`owners_of_referrers`]; a digest holds a `:`, so no tag key is
//! ever the same). `PutReferrer` goes to the first live owner, which stores it and then
//! copies it to the other live owners (best effort, no retry queue: the list is read as the
//! union over every live build-index node, so one durable copy is enough to be listed).
//! `DeleteReferrer` is sent to every live build-index node.

use std::path::Path;

use kraken_membership::Member;
use kraken_storage::Digest;
use kraken_storage::redb_handle::ReopeningDb;
use redb::TableDefinition;

use crate::client::Cluster;
use crate::proto::{ErrorKind, RemoteError, Request, Response};

use super::store::StoreError;
use super::{BuildIndex, internal, owners_of_tag};

const REFERRERS: TableDefinition<'_, (&str, &str, &str), &[u8]> = TableDefinition::new("referrers");

/// Above every character of a digest: `(repo, subject, AFTER)` sorts after every referrer.
const AFTER: &str = "\u{7f}";

/// The build-index owners of `subject`'s referrers in `repo`, best first (`replicas` 0:
/// every build-index node in ring order).
pub fn owners_of_referrers(
    cluster: &Cluster,
    repo: &str,
    subject: &Digest,
    replicas: usize,
) -> Vec<Member> {
    owners_of_tag(cluster, repo, &subject.to_string(), replicas)
}

/// The referrers table.
pub struct ReferrerStore {
    /// Reopens itself after a commit failed on a full disk (see
    /// `kraken_storage::redb_handle`).
    db: ReopeningDb,
}

impl ReferrerStore {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = ReopeningDb::create(path, "build-index referrers")?;
        let txn = db.begin_write()?;
        txn.open_table(REFERRERS)?;
        txn.commit()?;
        Ok(ReferrerStore { db })
    }

    /// Lists `referrer` (described by `descriptor`) under `subject` in `repo`, durably.
    pub fn put(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &str,
    ) -> Result<(), StoreError> {
        let (s, r) = (subject.to_string(), referrer.to_string());
        let txn = self.db.begin_write()?;
        txn.open_table(REFERRERS)?
            .insert((repo, s.as_str(), r.as_str()), descriptor.as_bytes())?;
        txn.commit()?;
        Ok(())
    }

    /// The descriptors listed under `subject` in `repo`, by referrer digest.
    pub fn list(&self, repo: &str, subject: &Digest) -> Result<Vec<String>, StoreError> {
        let s = subject.to_string();
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REFERRERS)?;
        let mut out = Vec::new();
        for entry in table.range((repo, s.as_str(), "")..(repo, s.as_str(), AFTER))? {
            let (key, value) = entry?;
            let descriptor = String::from_utf8(value.value().to_vec())
                .map_err(|_| StoreError::Corrupt(key.value().2.to_string()))?;
            out.push(descriptor);
        }
        Ok(out)
    }

    /// Every entry held here as `(repo, subject, referrer)`, sorted: what garbage
    /// collection walks to keep the referrers of a live manifest (pushed by digest, they
    /// are reachable from no tag).
    pub fn all(&self) -> Result<Vec<(String, Digest, Digest)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REFERRERS)?;
        let mut out = Vec::new();
        for entry in table.range::<(&str, &str, &str)>(..)? {
            let (key, _) = entry?;
            let (repo, subject, referrer) = key.value();
            let parse = |d: &str| {
                d.parse::<Digest>()
                    .map_err(|_| StoreError::Corrupt(format!("{repo} {subject} {referrer}")))
            };
            out.push((repo.to_string(), parse(subject)?, parse(referrer)?));
        }
        Ok(out)
    }

    /// Forgets `referrer` under `subject` in `repo`; true if it was listed.
    pub fn delete(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<bool, StoreError> {
        let (s, r) = (subject.to_string(), referrer.to_string());
        let txn = self.db.begin_write()?;
        let removed = txn
            .open_table(REFERRERS)?
            .remove((repo, s.as_str(), r.as_str()))?
            .is_some();
        txn.commit()?;
        Ok(removed)
    }
}

impl BuildIndex {
    /// Lists `digest` under `subject` in `repo` here, then (unless `replica`) copies it to
    /// the other live owners, best effort. Answers once stored here.
    pub async fn put_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        digest: &Digest,
        descriptor: &str,
        replica: bool,
    ) -> Result<Response, RemoteError> {
        check_repo(repo)?;
        let parsed: Option<serde_json::Value> = serde_json::from_str(descriptor).ok();
        if !parsed.as_ref().is_some_and(serde_json::Value::is_object) {
            return Err(RemoteError::new(
                ErrorKind::BadRequest,
                format!("the descriptor of referrer {digest} is not a JSON object"),
            ));
        }
        self.inner
            .referrers
            .put(repo, subject, digest, descriptor)
            .map_err(internal)?;
        tracing::info!(%repo, %subject, referrer = %digest, replica, "referrer stored");
        if !replica {
            self.copy_referrer(repo, subject, digest, descriptor).await;
        }
        Ok(Response::ReferrerPut)
    }

    /// Sends the referrer to the other live owners of `(repo, subject)`.
    async fn copy_referrer(&self, repo: &str, subject: &Digest, digest: &Digest, descriptor: &str) {
        let cluster = &self.inner.cluster;
        let owners = owners_of_referrers(cluster, repo, subject, self.inner.config.replicas);
        let request = Request::PutReferrer {
            repo: repo.into(),
            subject: *subject,
            digest: *digest,
            descriptor: descriptor.into(),
            replica: true,
        };
        let view = cluster.view();
        let others = owners
            .iter()
            .filter(|m| m.id != self.inner.me && !view.is_suspected(&m.id));
        let copies = futures::future::join_all(others.map(|m| {
            let request = &request;
            async move { (m.id.clone(), cluster.call(m.quic_addr, request).await) }
        }))
        .await;
        for (owner, answer) in copies {
            if let Err(e) = answer {
                tracing::warn!(%owner, %repo, %subject, error = %e, "referrer not copied to an owner");
            }
        }
    }

    /// The referrers of `subject` in `repo` this node holds.
    pub fn referrers(&self, repo: &str, subject: &Digest) -> Result<Response, RemoteError> {
        check_repo(repo)?;
        let list = self.inner.referrers.list(repo, subject).map_err(internal)?;
        Ok(Response::Referrers(list))
    }

    /// Forgets the referrer `digest` of `subject` in `repo` here (absent is fine).
    pub fn delete_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        digest: &Digest,
    ) -> Result<Response, RemoteError> {
        check_repo(repo)?;
        let removed = self
            .inner
            .referrers
            .delete(repo, subject, digest)
            .map_err(internal)?;
        tracing::info!(%repo, %subject, referrer = %digest, removed, "referrer deleted");
        Ok(Response::ReferrerDeleted)
    }
}

fn check_repo(repo: &str) -> Result<(), RemoteError> {
    kraken_registry_gateway::names::validate_name(repo)
        .map_err(|e| RemoteError::new(ErrorKind::BadRequest, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_per_repo_and_subject_survive_reopen_and_forget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("referrers.redb");
        let (s1, s2) = (Digest::sha256_of(b"s1"), Digest::sha256_of(b"s2"));
        let (r1, r2) = (Digest::sha256_of(b"r1"), Digest::sha256_of(b"r2"));
        {
            let store = ReferrerStore::open(&path).unwrap();
            store.put("app", &s1, &r1, "{\"a\":1}").unwrap();
            store.put("app", &s1, &r2, "{\"a\":2}").unwrap();
            store.put("app", &s2, &r1, "{\"b\":1}").unwrap();
            store.put("other", &s1, &r1, "{\"c\":1}").unwrap();
        }
        let store = ReferrerStore::open(&path).unwrap();
        let list = store.list("app", &s1).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(store.list("app", &s2).map(|l| l.len()).ok(), Some(1));
        assert!(store.delete("app", &s1, &r1).unwrap());
        assert!(!store.delete("app", &s1, &r1).unwrap());
        assert_eq!(
            store.list("app", &s1).ok(),
            Some(vec!["{\"a\":2}".to_string()])
        );
        assert_eq!(store.list("other", &s1).map(|l| l.len()).ok(), Some(1));
        let mut all = store.all().unwrap();
        let mut want = vec![
            ("app".to_string(), s1, r2),
            ("app".to_string(), s2, r1),
            ("other".to_string(), s1, r1),
        ];
        all.sort_by_key(|(r, s, d)| (r.clone(), s.to_string(), d.to_string()));
        want.sort_by_key(|(r, s, d)| (r.clone(), s.to_string(), d.to_string()));
        assert_eq!(all, want);
    }
}
