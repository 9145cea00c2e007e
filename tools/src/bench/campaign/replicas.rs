//! The replica invariant, checked once everything is healed: every acknowledged blob is
//! held by `min(replicas, live origins)` origins with the right bytes, and no origin holds
//! a wrong copy of it. Checked without asking the nodes: each origin's CAS file
//! (`<data>/cas/blobs/<xx>/<hex>`) is read from its data directory and hashed here, so a
//! node that believes its copy good (or reports a repair it did not do) cannot pass it.
//!
//! It polls until it holds or its deadline (`--converge-timeout-secs`) passes: repairs and
//! re-replication take a while after the last fault heals. A copy found right is not read
//! again unless its file changes (length or modification time).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use kraken_storage::Digest;

use super::nodes::{Cluster, Role};

/// What the origins hold of one blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    /// Origins whose copy has the blob's bytes.
    pub right: Vec<String>,
    /// Origins whose copy has other bytes (or the wrong length).
    pub wrong: Vec<String>,
}

/// Why `holding` breaks the invariant for a blob that needs `need` copies; `None` if it
/// holds.
pub fn verdict(need: usize, holding: &Holding) -> Option<String> {
    let mut why = Vec::new();
    if holding.right.len() < need {
        why.push(format!(
            "held right by {} of the {need} origins it needs ({})",
            holding.right.len(),
            if holding.right.is_empty() {
                "none".to_string()
            } else {
                holding.right.join(", ")
            }
        ));
    }
    if !holding.wrong.is_empty() {
        why.push(format!("wrong copies on {}", holding.wrong.join(", ")));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// A file's identity short of reading it: what a change of its bytes (in place, or a new
/// file renamed over it) changes.
type Stamp = (u64, u64, Option<SystemTime>);

/// Reads and hashes origin copies, remembering the verdict per file version.
#[derive(Debug, Default)]
struct Reader {
    seen: HashMap<PathBuf, (Stamp, bool)>,
}

impl Reader {
    /// `Some(true)` if `path` holds `digest`'s `len` bytes, `Some(false)` if it holds
    /// others, `None` if there is no such file.
    fn copy_ok(&mut self, path: &Path, digest: &Digest, len: u64) -> Option<bool> {
        let meta = std::fs::metadata(path).ok()?;
        let stamp = (meta.ino(), meta.len(), meta.modified().ok());
        if let Some((s, ok)) = self.seen.get(path)
            && *s == stamp
        {
            return Some(*ok);
        }
        let bytes = std::fs::read(path).ok()?;
        let ok = bytes.len() as u64 == len && Digest::sha256_of(&bytes) == *digest;
        self.seen.insert(path.to_path_buf(), (stamp, ok));
        Some(ok)
    }
}

/// Where an origin with data directory `data` keeps `digest`.
fn cas_path(data: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    data.join("cas").join("blobs").join(&hex[..2]).join(&hex)
}

/// Checks every blob of `want` (by name: digest and length) until all hold or `limit`
/// passes; one result per blob, in `want`'s order.
pub fn check(
    cluster: &Cluster,
    want: &BTreeMap<String, (Digest, u64)>,
    limit: Duration,
) -> Vec<Result<(), String>> {
    let deadline = Instant::now() + limit;
    let origins: Vec<(String, PathBuf)> = cluster
        .of(Role::Origin)
        .filter(|(_, n)| n.proc.running())
        .map(|(_, n)| (n.proc.name.clone(), n.data.clone()))
        .collect();
    let need = cluster.replicas.min(origins.len());
    let mut reader = Reader::default();
    let mut failing: BTreeMap<&String, String> = BTreeMap::new();
    let mut pending: Vec<&String> = want.keys().collect();
    loop {
        failing.clear();
        for name in &pending {
            let (digest, len) = &want[*name];
            let mut holding = Holding::default();
            for (origin, data) in &origins {
                match reader.copy_ok(&cas_path(data, digest), digest, *len) {
                    Some(true) => holding.right.push(origin.clone()),
                    Some(false) => holding.wrong.push(origin.clone()),
                    None => {}
                }
            }
            if let Some(why) = verdict(need, &holding) {
                failing.insert(name, why);
            }
        }
        pending.retain(|n| failing.contains_key(n));
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    want.keys()
        .map(|name| match failing.get(name) {
            None => Ok(()),
            Some(why) => Err(format!(
                "acked blob {name} not at its replica count {limit:?} after healing: {why}"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(right: &[&str], wrong: &[&str]) -> Holding {
        Holding {
            right: right.iter().map(ToString::to_string).collect(),
            wrong: wrong.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_blob_needs_its_count_of_right_copies_and_no_wrong_one() {
        assert_eq!(verdict(2, &holding(&["o1", "o2"], &[])), None);
        assert_eq!(verdict(2, &holding(&["o1", "o2", "o3"], &[])), None);
        let short = verdict(2, &holding(&["o1"], &[])).unwrap();
        assert!(short.contains("1 of the 2"), "{short}");
        let bad = verdict(1, &holding(&["o1"], &["o2"])).unwrap();
        assert!(bad.contains("wrong copies on o2"), "{bad}");
        let both = verdict(2, &holding(&[], &["o1"])).unwrap();
        assert!(both.contains("none") && both.contains("o1"), "{both}");
    }

    #[test]
    fn copies_are_read_from_the_cas_layout_and_rehashed_only_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"the blob".to_vec();
        let digest = Digest::sha256_of(&bytes);
        let path = cas_path(dir.path(), &digest);
        let mut r = Reader::default();
        assert_eq!(r.copy_ok(&path, &digest, 8), None);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(r.copy_ok(&path, &digest, 8), Some(true));
        assert_eq!(r.copy_ok(&path, &digest, 8), Some(true), "remembered");
        std::fs::write(&path, b"the blob!").unwrap();
        assert_eq!(r.copy_ok(&path, &digest, 8), Some(false), "a new length");
    }
}
