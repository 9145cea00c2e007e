//! The build-index's durable tag table (redb): `repo:tag → digest`, with each tag's history.
//!
//! Keys are `(repo, tag)` tuples, so listing a repository's tags is a sorted range scan and
//! the catalog is a scan that skips from one repository to the next. A put commits before
//! it returns (redb's durable commit), so an acknowledged tag survives kill -9.

use std::path::Path;

use kraken_storage::Digest;
use kraken_storage::redb_handle::ReopeningDb;
use kraken_storage::time::now_ms;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

const TAGS: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("tags");
const HISTORY: TableDefinition<'_, (&str, &str, u64), &[u8]> = TableDefinition::new("history");
/// Deleted tags, with when: a deleted tag is not read back from the backend.
const TOMBSTONES: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("tombstones");

/// Above every character a tag may hold: `(repo, AFTER_TAGS)` sorts after all of a
/// repository's tags.
const AFTER_TAGS: &str = "\u{7f}";

/// Why a build-index table (tags, links and tombstones, referrers, the gc journal)
/// failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("build-index database: {0}")]
    Db(#[from] redb::Error),
    /// A record does not decode.
    #[error("corrupt build-index record {0}")]
    Corrupt(String),
}

macro_rules! db_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[derive(Serialize, Deserialize)]
struct Record {
    digest: String,
    updated_ms: u64,
}

/// A tag's current target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEntry {
    /// What it points at.
    pub digest: Digest,
    /// When it was last set (ms since the epoch).
    pub updated_ms: u64,
}

/// The tag table.
pub struct TagStore {
    /// Reopens itself after a commit failed on a full disk (see
    /// `kraken_storage::redb_handle`).
    db: ReopeningDb,
}

fn decode(key: &str, bytes: &[u8]) -> Result<TagEntry, StoreError> {
    let r: Record = postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt(key.into()))?;
    let digest = r
        .digest
        .parse()
        .map_err(|_| StoreError::Corrupt(key.into()))?;
    Ok(TagEntry {
        digest,
        updated_ms: r.updated_ms,
    })
}

/// What [`TagStore::put_replica`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaPut {
    /// Stored (`changed` false if the tag already pointed there).
    Stored {
        /// Whether the tag moved.
        changed: bool,
    },
    /// Refused: this node holds a later setting, returned.
    Newer(TagEntry),
}

/// Whether a setting of `digest` at `set_ms` replaces `current` (another digest): the later
/// setting wins, the larger digest on a tie, the same way on every node.
pub fn replaces(digest: &Digest, set_ms: u64, current: &TagEntry) -> bool {
    (set_ms, digest.to_string()) > (current.updated_ms, current.digest.to_string())
}

fn current(
    tags: &redb::Table<'_, (&'static str, &'static str), &'static [u8]>,
    repo: &str,
    tag: &str,
) -> Result<Option<TagEntry>, StoreError> {
    match tags.get((repo, tag))? {
        // An unreadable record is replaced, as before stamps were compared.
        Some(v) => Ok(decode(tag, v.value()).ok()),
        None => Ok(None),
    }
}

/// Writes the tag's row and its history entry.
fn write(
    txn: &redb::WriteTransaction,
    tags: &mut redb::Table<'_, (&'static str, &'static str), &'static [u8]>,
    repo: &str,
    tag: &str,
    digest: &Digest,
    ms: u64,
) -> Result<(), StoreError> {
    let record = postcard::to_allocvec(&Record {
        digest: digest.to_string(),
        updated_ms: ms,
    })
    .unwrap_or_default();
    tags.insert((repo, tag), record.as_slice())?;
    txn.open_table(HISTORY)?
        .insert((repo, tag, ms), record.as_slice())?;
    Ok(())
}

impl TagStore {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = ReopeningDb::create(path, "build-index tags")?;
        let txn = db.begin_write()?;
        txn.open_table(TAGS)?;
        txn.open_table(HISTORY)?;
        txn.open_table(TOMBSTONES)?;
        txn.commit()?;
        Ok(TagStore { db })
    }

    /// Points `repo:tag` at `digest`, durably (a client's put, taken by this owner).
    /// Returns false if it already did. The setting is stamped now, and always later than
    /// the setting it replaces (whatever this node's clock did), so that it wins over
    /// every older setting wherever replication carries it ([`TagStore::put_replica`]).
    pub fn put(&self, repo: &str, tag: &str, digest: &Digest) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let changed = {
            let mut tags = txn.open_table(TAGS)?;
            let old = current(&tags, repo, tag)?;
            txn.open_table(TOMBSTONES)?.remove((repo, tag))?;
            match old {
                Some(e) if e.digest == *digest => false,
                old => {
                    let ms = now_ms().max(old.map_or(0, |e| e.updated_ms.saturating_add(1)));
                    write(&txn, &mut tags, repo, tag, digest, ms)?;
                    true
                }
            }
        };
        txn.commit()?;
        Ok(changed)
    }

    /// Stores a setting another owner took at `set_ms` (its stamp, kept here), unless this
    /// node holds a later one: the later setting wins (the larger digest on a tie), so a
    /// replication that arrives late, or from a node that was down while the tag moved on,
    /// never sets a tag back.
    pub fn put_replica(
        &self,
        repo: &str,
        tag: &str,
        digest: &Digest,
        set_ms: u64,
    ) -> Result<ReplicaPut, StoreError> {
        let txn = self.db.begin_write()?;
        let outcome = {
            let mut tags = txn.open_table(TAGS)?;
            match current(&tags, repo, tag)? {
                Some(e) if e.digest == *digest => ReplicaPut::Stored { changed: false },
                Some(e) if !replaces(digest, set_ms, &e) => ReplicaPut::Newer(e),
                _ => {
                    txn.open_table(TOMBSTONES)?.remove((repo, tag))?;
                    write(&txn, &mut tags, repo, tag, digest, set_ms)?;
                    ReplicaPut::Stored { changed: true }
                }
            }
        };
        txn.commit()?;
        Ok(outcome)
    }

    /// Stores a tag read from a backend, unless the tag is here already. Its stamp is 0:
    /// when it was set is unknown, and any owner's setting replaces it (a backend's copy
    /// may lag behind the owners while its write-back is queued).
    pub fn put_from_backend(
        &self,
        repo: &str,
        tag: &str,
        digest: &Digest,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let stored = {
            let mut tags = txn.open_table(TAGS)?;
            match current(&tags, repo, tag)? {
                Some(_) => false,
                None => {
                    txn.open_table(TOMBSTONES)?.remove((repo, tag))?;
                    write(&txn, &mut tags, repo, tag, digest, 0)?;
                    true
                }
            }
        };
        txn.commit()?;
        Ok(stored)
    }

    /// Deletes `repo:tag` durably, leaving a tombstone; returns what it pointed at.
    pub fn delete(&self, repo: &str, tag: &str) -> Result<Option<TagEntry>, StoreError> {
        let txn = self.db.begin_write()?;
        let old = {
            let mut tags = txn.open_table(TAGS)?;
            let old = match tags.remove((repo, tag))? {
                Some(v) => Some(decode(tag, v.value())?),
                None => None,
            };
            txn.open_table(TOMBSTONES)?.insert((repo, tag), now_ms())?;
            old
        };
        txn.commit()?;
        Ok(old)
    }

    /// Whether `repo:tag` was deleted (and not set again since).
    pub fn is_deleted(&self, repo: &str, tag: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(TOMBSTONES)?.get((repo, tag))?.is_some())
    }

    /// Whether a tag of `repo` was ever deleted here: a repository whose last tag was
    /// deleted is still known (its tag list is empty, not unknown).
    pub fn had_tags(&self, repo: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let tombstones = txn.open_table(TOMBSTONES)?;
        let mut range = tombstones.range((repo, "")..(repo, AFTER_TAGS))?;
        Ok(range.next().transpose()?.is_some())
    }

    /// What `repo:tag` points at.
    pub fn get(&self, repo: &str, tag: &str) -> Result<Option<TagEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        let tags = txn.open_table(TAGS)?;
        match tags.get((repo, tag))? {
            Some(v) => Ok(Some(decode(tag, v.value())?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` tags of `repo` in order, after `after` if given.
    pub fn list_tags(
        &self,
        repo: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let tags = txn.open_table(TAGS)?;
        let mut out = Vec::new();
        let start = after.unwrap_or("");
        for entry in tags.range((repo, start)..(repo, AFTER_TAGS))? {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry?;
            let (_, tag) = k.value();
            if after.is_some_and(|a| tag <= a) {
                continue;
            }
            out.push(tag.to_string());
        }
        Ok(out)
    }

    /// Up to `limit` repository names in order, after `after` if given.
    pub fn list_repos(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let tags = txn.open_table(TAGS)?;
        let mut out: Vec<String> = Vec::new();
        let mut from: String = after.map_or(String::new(), ToString::to_string);
        let mut skip_current = after.is_some();
        while out.len() < limit {
            let lower = if skip_current { AFTER_TAGS } else { "" };
            let mut range = tags.range((from.as_str(), lower)..)?;
            let Some(entry) = range.next() else { break };
            let (k, _) = entry?;
            let (repo, _) = k.value();
            out.push(repo.to_string());
            from = repo.to_string();
            skip_current = true;
        }
        Ok(out)
    }

    /// Up to `limit` rows `(repo, tag, digest)` of the whole table in order, after
    /// `(repo, tag)` if given: garbage collection's roots.
    pub fn list_all(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, Digest)>, StoreError> {
        let txn = self.db.begin_read()?;
        let tags = txn.open_table(TAGS)?;
        let range = match after {
            Some(key) => tags.range::<(&str, &str)>((
                std::ops::Bound::Excluded(key),
                std::ops::Bound::Unbounded,
            ))?,
            None => tags.range::<(&str, &str)>(..)?,
        };
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (k, v) = entry?;
            let (repo, tag) = k.value();
            let e = decode(tag, v.value())?;
            out.push((repo.to_string(), tag.to_string(), e.digest));
        }
        Ok(out)
    }

    /// Every digest `repo:tag` has pointed at, oldest first, with when.
    pub fn history(&self, repo: &str, tag: &str) -> Result<Vec<TagEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        let history = txn.open_table(HISTORY)?;
        let mut out = Vec::new();
        for entry in history.range((repo, tag, 0)..=(repo, tag, u64::MAX))? {
            let (_, v) = entry?;
            out.push(decode(tag, v.value())?);
        }
        Ok(out)
    }

    /// Whether no tag is stored (a wiped node imports from its backend).
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(TAGS)?.is_empty()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_all_pages_through_every_repository() {
        let dir = tempfile::tempdir().unwrap();
        let s = TagStore::open(&dir.path().join("t.redb")).unwrap();
        let d = Digest::sha256_of(b"1");
        for (repo, tag) in [("b", "x"), ("a", "2"), ("a", "1"), ("c", "z")] {
            s.put(repo, tag, &d).unwrap();
        }
        let first = s.list_all(None, 3).unwrap();
        let keys: Vec<_> = first.iter().map(|(r, t, _)| format!("{r}:{t}")).collect();
        assert_eq!(keys, ["a:1", "a:2", "b:x"]);
        let rest = s.list_all(Some(("b", "x")), 3).unwrap();
        assert_eq!(rest, vec![("c".to_string(), "z".to_string(), d)]);
    }

    #[test]
    fn the_later_setting_wins_wherever_it_lands() {
        let dir = tempfile::tempdir().unwrap();
        let s = TagStore::open(&dir.path().join("t.redb")).unwrap();
        let (d1, d2) = (Digest::sha256_of(b"1"), Digest::sha256_of(b"2"));
        let at = |ms| TagEntry {
            digest: d2,
            updated_ms: ms,
        };
        // A replica keeps the stamp of the owner that took the put.
        assert_eq!(
            s.put_replica("r", "t", &d2, 2_000).unwrap(),
            ReplicaPut::Stored { changed: true }
        );
        assert_eq!(s.get("r", "t").unwrap(), Some(at(2_000)));
        // An older setting arriving late is refused with the later one.
        assert_eq!(
            s.put_replica("r", "t", &d1, 1_000).unwrap(),
            ReplicaPut::Newer(at(2_000))
        );
        assert_eq!(
            s.put_replica("r", "t", &d2, 1_000).unwrap(),
            ReplicaPut::Stored { changed: false }
        );
        // On a tie the larger digest wins, on every node alike.
        let (small, large) = if d1.to_string() < d2.to_string() {
            (d1, d2)
        } else {
            (d2, d1)
        };
        assert!(replaces(
            &large,
            5,
            &TagEntry {
                digest: small,
                updated_ms: 5
            }
        ));
        assert!(!replaces(
            &small,
            5,
            &TagEntry {
                digest: large,
                updated_ms: 5
            }
        ));
        // A later one is taken.
        assert_eq!(
            s.put_replica("r", "t", &d1, 3_000).unwrap(),
            ReplicaPut::Stored { changed: true }
        );
        assert_eq!(s.get("r", "t").unwrap().unwrap().digest, d1);
        // A client's put is stamped later than what it replaces, even with a clock behind.
        let far = now_ms() + 60_000;
        s.put_replica("r", "t", &d2, far).unwrap();
        assert!(s.put("r", "t", &d1).unwrap());
        let e = s.get("r", "t").unwrap().unwrap();
        assert_eq!((e.digest, e.updated_ms), (d1, far + 1));
        // A backend's copy never replaces a tag, and any setting replaces it.
        assert!(!s.put_from_backend("r", "t", &d2).unwrap());
        assert!(s.put_from_backend("r", "u", &d2).unwrap());
        assert_eq!(s.get("r", "u").unwrap().unwrap().updated_ms, 0);
        assert_eq!(
            s.put_replica("r", "u", &d1, 1).unwrap(),
            ReplicaPut::Stored { changed: true }
        );
    }

    #[test]
    fn put_get_list_history() {
        let dir = tempfile::tempdir().unwrap();
        let s = TagStore::open(&dir.path().join("t.redb")).unwrap();
        assert!(s.is_empty().unwrap());
        let d1 = Digest::sha256_of(b"1");
        let d2 = Digest::sha256_of(b"2");
        assert!(s.put("library/ubuntu", "22.04", &d1).unwrap());
        assert!(!s.put("library/ubuntu", "22.04", &d1).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(s.put("library/ubuntu", "22.04", &d2).unwrap());
        for (repo, tag) in [
            ("library/ubuntu", "latest"),
            ("library/ubuntu", "20.04"),
            ("a", "x"),
            ("library/ubuntu-dev", "1"),
            ("z/z", "1"),
        ] {
            s.put(repo, tag, &d1).unwrap();
        }
        assert_eq!(
            s.get("library/ubuntu", "22.04").unwrap().unwrap().digest,
            d2
        );
        assert_eq!(s.get("library/ubuntu", "nope").unwrap(), None);
        let h = s.history("library/ubuntu", "22.04").unwrap();
        assert_eq!(h.iter().map(|e| e.digest).collect::<Vec<_>>(), vec![d1, d2]);

        assert_eq!(
            s.list_tags("library/ubuntu", None, 10).unwrap(),
            ["20.04", "22.04", "latest"]
        );
        assert_eq!(
            s.list_tags("library/ubuntu", None, 2).unwrap(),
            ["20.04", "22.04"]
        );
        assert_eq!(
            s.list_tags("library/ubuntu", Some("22.04"), 10).unwrap(),
            ["latest"]
        );
        assert!(s.list_tags("library", None, 10).unwrap().is_empty());

        assert_eq!(
            s.list_repos(None, 10).unwrap(),
            ["a", "library/ubuntu", "library/ubuntu-dev", "z/z"]
        );
        assert_eq!(s.list_repos(None, 2).unwrap(), ["a", "library/ubuntu"]);
        assert_eq!(
            s.list_repos(Some("library/ubuntu"), 10).unwrap(),
            ["library/ubuntu-dev", "z/z"]
        );
        assert!(s.list_repos(Some("z/z"), 10).unwrap().is_empty());
    }
}
