//! The build-index's durable per-digest records (redb, `digests.redb`): which
//! repositories link a blob, and the tombstones of purged blobs.
//!
//! - `links`: `(digest, repo) → linked_ms`. A repository links a blob it pushed, mounted,
//!   or that a manifest it stored reaches; links decide cross-repository mounts and
//!   deletion (see docs/registry.md, "Deletion"). Keyed by digest first, so the
//!   repositories linking one blob are one range scan.
//! - `blob_tombstones`: `(deleted_ms, digest)`, what agents poll to evict purged blobs,
//!   oldest first; pruned after the retention.
//!
//! Every write commits durably before it returns.

use std::path::Path;

use kraken_storage::Digest;
use kraken_storage::redb_handle::ReopeningDb;
use redb::{ReadableTable, TableDefinition};

use super::store::StoreError;

const LINKS: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("links");
const BLOB_TOMBSTONES: TableDefinition<'_, (u64, &str), ()> =
    TableDefinition::new("blob_tombstones");

/// Links and blob tombstones.
pub struct DigestStore {
    /// Reopens itself after a commit failed on a full disk (see
    /// `kraken_storage::redb_handle`).
    db: ReopeningDb,
}

impl DigestStore {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = ReopeningDb::create(path, "build-index links")?;
        let txn = db.begin_write()?;
        txn.open_table(LINKS)?;
        txn.open_table(BLOB_TOMBSTONES)?;
        txn.commit()?;
        Ok(DigestStore { db })
    }

    /// Links every digest of `digests` to `repo` at `now_ms` (one transaction); an existing
    /// link keeps its first time.
    pub fn link(&self, repo: &str, digests: &[Digest], now_ms: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut links = txn.open_table(LINKS)?;
            for d in digests {
                let key = d.to_string();
                if links.get((key.as_str(), repo))?.is_none() {
                    links.insert((key.as_str(), repo), now_ms)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes `repo`'s link to `digest`; whether there was one.
    pub fn unlink(&self, repo: &str, digest: &Digest) -> Result<bool, StoreError> {
        let key = digest.to_string();
        let txn = self.db.begin_write()?;
        let was = txn
            .open_table(LINKS)?
            .remove((key.as_str(), repo))?
            .is_some();
        txn.commit()?;
        Ok(was)
    }

    /// The repositories linking `digest`, sorted.
    pub fn linkers(&self, digest: &Digest) -> Result<Vec<String>, StoreError> {
        let key = digest.to_string();
        let txn = self.db.begin_read()?;
        let links = txn.open_table(LINKS)?;
        let mut out = Vec::new();
        // Repository names are ASCII: "\u{7f}" sorts after every one of them.
        for entry in links.range((key.as_str(), "")..(key.as_str(), "\u{7f}"))? {
            let (k, _) = entry?;
            out.push(k.value().1.to_string());
        }
        Ok(out)
    }

    /// Records that `digest` was purged at `deleted_ms`, and drops the links recorded until
    /// then (in one transaction): a purged blob is linked by no repository, or a mount from
    /// one would answer 201 for bytes that are gone. A link recorded later is a push of the
    /// blob again, and stays.
    pub fn add_tombstone(&self, digest: &Digest, deleted_ms: u64) -> Result<(), StoreError> {
        let key = digest.to_string();
        let txn = self.db.begin_write()?;
        txn.open_table(BLOB_TOMBSTONES)?
            .insert((deleted_ms, key.as_str()), ())?;
        {
            let mut links = txn.open_table(LINKS)?;
            // Repository names are ASCII: "\u{7f}" sorts after every one of them.
            let mut stale = Vec::new();
            for entry in links.range((key.as_str(), "")..(key.as_str(), "\u{7f}"))? {
                let (k, at) = entry?;
                if at.value() <= deleted_ms {
                    stale.push(k.value().1.to_string());
                }
            }
            for repo in &stale {
                links.remove((key.as_str(), repo.as_str()))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Up to `limit` tombstones recorded at or after `since_ms`, oldest first, and whether
    /// more follow.
    pub fn tombstones(
        &self,
        since_ms: u64,
        limit: usize,
    ) -> Result<(Vec<(Digest, u64)>, bool), StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOB_TOMBSTONES)?;
        let mut out = Vec::new();
        for entry in table.range((since_ms, "")..)? {
            if out.len() >= limit {
                return Ok((out, true));
            }
            let (k, _) = entry?;
            let (ms, digest) = k.value();
            let digest = digest
                .parse()
                .map_err(|_| StoreError::Corrupt(digest.to_string()))?;
            out.push((digest, ms));
        }
        Ok((out, false))
    }

    /// Forgets the tombstones recorded before `before_ms`; returns how many.
    pub fn prune_tombstones(&self, before_ms: u64) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let n = {
            let mut table = txn.open_table(BLOB_TOMBSTONES)?;
            let old: Vec<(u64, String)> = table
                .range((0, "")..(before_ms, ""))?
                .map(|e| e.map(|(k, _)| (k.value().0, k.value().1.to_string())))
                .collect::<Result<_, _>>()?;
            for (ms, d) in &old {
                table.remove((*ms, d.as_str()))?;
            }
            old.len()
        };
        txn.commit()?;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn links_are_per_repository_and_tombstones_page_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let s = DigestStore::open(&dir.path().join("d.redb")).unwrap();
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        s.link("one", &[a, b], 5).unwrap();
        s.link("two", &[a], 6).unwrap();
        assert_eq!(s.linkers(&a).unwrap(), ["one", "two"]);
        assert_eq!(s.linkers(&b).unwrap(), ["one"]);
        assert!(s.unlink("one", &a).unwrap());
        assert!(!s.unlink("one", &a).unwrap());
        assert_eq!(s.linkers(&a).unwrap(), ["two"]);

        s.add_tombstone(&a, 10).unwrap();
        s.add_tombstone(&b, 20).unwrap();
        // A purge drops the links recorded until then, not a later one (a push again).
        s.link("three", &[b], 25).unwrap();
        assert_eq!(s.linkers(&a).unwrap(), Vec::<String>::new());
        assert_eq!(s.linkers(&b).unwrap(), ["three"]);
        assert_eq!(
            s.tombstones(0, 10).unwrap(),
            (vec![(a, 10), (b, 20)], false)
        );
        assert_eq!(s.tombstones(0, 1).unwrap(), (vec![(a, 10)], true));
        assert_eq!(s.tombstones(20, 10).unwrap(), (vec![(b, 20)], false));
        assert_eq!(s.prune_tombstones(15).unwrap(), 1);
        assert_eq!(s.tombstones(0, 10).unwrap(), (vec![(b, 20)], false));
    }
}
