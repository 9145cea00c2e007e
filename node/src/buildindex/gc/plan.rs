//! Plan: from the inventory (what origins and backends hold) and the marked set, which
//! blobs to purge and which to keep because they were used after the cutoff. Pure.

use std::collections::{BTreeMap, BTreeSet};

use kraken_storage::Digest;

/// What the cluster holds of one blob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
    /// Its length (0 while only a backend that was not asked its size holds it).
    pub length: u64,
    /// The latest write or use any origin reports, ms since the epoch (0: no origin holds
    /// it, only a backend).
    pub last_used_ms: u64,
    /// Origins holding it.
    pub origins: u32,
    /// A writable backend holds it.
    pub in_backend: bool,
}

/// Every blob the inventory found.
pub type Inventory = BTreeMap<Digest, Holding>;

/// Adds one origin's copy of a blob.
pub fn add_origin_copy(inventory: &mut Inventory, digest: Digest, length: u64, last_used_ms: u64) {
    let h = inventory.entry(digest).or_default();
    h.length = h.length.max(length);
    h.last_used_ms = h.last_used_ms.max(last_used_ms);
    h.origins += 1;
}

/// What the sweep is to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Blobs to purge with their lengths, ordered by digest.
    pub sweep: Vec<(Digest, u64)>,
    /// Unmarked blobs kept because they were used at or after the cutoff.
    pub kept_recent: u64,
}

/// Unmarked blobs not used since `cutoff_ms` go; unmarked ones used since stay (a push in
/// progress, a blob just read).
pub fn plan(inventory: &Inventory, marked: &BTreeSet<Digest>, cutoff_ms: u64) -> Plan {
    let mut out = Plan::default();
    for (digest, h) in inventory {
        if marked.contains(digest) {
            continue;
        }
        if h.last_used_ms >= cutoff_ms {
            out.kept_recent += 1;
        } else {
            out.sweep.push((*digest, h.length));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmarked_and_unused_since_the_cutoff_is_swept_the_rest_kept() {
        let d = |s: &str| Digest::sha256_of(s.as_bytes());
        let mut inv = Inventory::new();
        add_origin_copy(&mut inv, d("live"), 10, 1);
        add_origin_copy(&mut inv, d("old"), 20, 5);
        add_origin_copy(&mut inv, d("old"), 20, 50); // another origin used it lately
        add_origin_copy(&mut inv, d("dead"), 30, 9);
        inv.insert(
            d("backend-only"),
            Holding {
                length: 40,
                in_backend: true,
                ..Holding::default()
            },
        );
        let marked: BTreeSet<_> = [d("live")].into();
        let p = plan(&inv, &marked, 50);
        let mut want = vec![(d("dead"), 30), (d("backend-only"), 40)];
        want.sort();
        assert_eq!(p.sweep, want);
        assert_eq!(p.kept_recent, 1);
        assert_eq!(inv[&d("old")].origins, 2);
    }
}
