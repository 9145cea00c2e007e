//! `Ring`: weighted rendezvous (highest-random-weight) hashing of a key over the members of
//! one role.
//!
//! Every member gets a score for a key, `weight / -ln(u)` where `u ∈ (0, 1)` is a uniform
//! value from BLAKE3 of the key and the member's id (the logarithm method of weighted
//! rendezvous hashing); the owners are the `replicas` highest scores, best first, ties
//! broken by node id. Consequences:
//!
//! - **Minimal disruption.** A key's owner list changes only if the member that joined or
//!   left is (or would be) among its top `replicas`: adding one member to `N` moves about
//!   `replicas / (N + 1)` of the owner lists, and only by inserting the newcomer.
//! - **Weights.** A member of weight `w` is first owner of a `w / Σw` share of the keys.
//!   Members of weight 0 own nothing.
//! - **Deterministic everywhere.** The score depends only on the key bytes, the node id and
//!   the weight; the logarithm is computed with basic IEEE-754 operations only (no platform
//!   `libm`), so every node, `krakenctl` and the simulator agree bit for bit. Changing
//!   [`score`] changes every owner in every cluster: treat it as a wire format.

use std::cmp::Ordering;

use kraken_storage::Digest;

use crate::member::{Member, NodeId};

/// Owners per key unless a caller asks otherwise.
pub const DEFAULT_REPLICAS: usize = 3;

/// Domain separation for the score hash; part of the "wire format".
const SCORE_DOMAIN: &[u8] = b"kraken-ring-v1\0";

/// The members of one role, ready to map keys to owners.
///
/// Build it with [`Ring::new`] (or [`ClusterView::ring`](crate::ClusterView::ring)); it is
/// plain data, cheap to query, and independent of the order members were given in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    /// Sorted by id, one per id, weight above 0.
    members: Vec<Member>,
}

impl Ring {
    /// A ring over `members`. Members of weight 0 are left out; when an id appears twice the
    /// highest generation wins (a restarted node replaces its old self).
    pub fn new(members: impl IntoIterator<Item = Member>) -> Self {
        let mut members: Vec<Member> = members.into_iter().filter(|m| m.weight > 0).collect();
        // Highest generation first within an id, then keep the first of each id.
        members.sort_by(|a, b| a.id.cmp(&b.id).then(b.generation.cmp(&a.generation)));
        members.dedup_by(|later, first| later.id == first.id);
        Ring { members }
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `id` is on the ring.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.members.binary_search_by(|m| m.id.cmp(id)).is_ok()
    }

    /// The owners of `key`, best first: `replicas` of them, or every member if there are
    /// fewer.
    pub fn owners(&self, key: &[u8], replicas: usize) -> Vec<&Member> {
        let replicas = replicas.min(self.members.len());
        if replicas == 0 {
            return Vec::new();
        }
        let mut scored: Vec<(f64, &Member)> = self
            .members
            .iter()
            .map(|m| (score(key, &m.id, m.weight), m))
            .collect();
        let by_rank = |a: &(f64, &Member), b: &(f64, &Member)| {
            b.0.partial_cmp(&a.0)
                .unwrap_or(Ordering::Equal)
                .then_with(|| a.1.id.cmp(&b.1.id))
        };
        if replicas < scored.len() {
            scored.select_nth_unstable_by(replicas - 1, by_rank);
            scored.truncate(replicas);
        }
        scored.sort_unstable_by(by_rank);
        scored.into_iter().map(|(_, m)| m).collect()
    }

    /// The first owner of `key`, if the ring is not empty.
    pub fn owner(&self, key: &[u8]) -> Option<&Member> {
        self.owners(key, 1).into_iter().next()
    }

    /// The owners of a blob, keyed by its registry string (`sha256:<hex>`), so any tool that
    /// has the string computes the same owners.
    pub fn owners_of_digest(&self, digest: &Digest, replicas: usize) -> Vec<&Member> {
        self.owners(digest_key(digest).as_bytes(), replicas)
    }

    /// The owners of a tag (`repo:tag`), in a key space apart from digests.
    pub fn owners_of_tag(&self, tag: &str, replicas: usize) -> Vec<&Member> {
        self.owners(&tag_key(tag), replicas)
    }
}

/// The ring key of a blob: its registry string.
pub fn digest_key(digest: &Digest) -> String {
    digest.to_string()
}

/// The ring key of a tag: `tag\0` followed by the tag (a NUL never occurs in a digest
/// string, so tags and digests cannot collide).
pub fn tag_key(tag: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + tag.len());
    key.extend_from_slice(b"tag\0");
    key.extend_from_slice(tag.as_bytes());
    key
}

/// The rendezvous score of member `id` with `weight` for `key`; higher wins.
///
/// `weight / -ln(u)`, with `u` the top 53 bits of BLAKE3(domain, key length, key, id) mapped
/// into the open interval (0, 1). Weight 0 scores 0.
pub fn score(key: &[u8], id: &NodeId, weight: u32) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(SCORE_DOMAIN);
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(id.as_str().as_bytes());
    let bytes = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    let bits = u64::from_le_bytes(first) >> 11;
    // (bits + 0.5) / 2^53: exact in f64, strictly inside (0, 1).
    let u = (bits as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
    f64::from(weight) / -ln(u)
}

/// Natural logarithm of a positive, normal `x`, using only `+ - * /` (correctly rounded
/// on every IEEE-754 platform, never fused by rustc), so results are identical everywhere.
/// Accurate to a few ulp, which is all ranking needs.
fn ln(x: f64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    const SQRT_2: f64 = std::f64::consts::SQRT_2;
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    // Mantissa in [1, 2).
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > SQRT_2 {
        m /= 2.0;
        exponent += 1;
    }
    // ln(m) = 2·atanh(s), s = (m-1)/(m+1), |s| <= 0.172: 2·(s + s³/3 + s⁵/5 + …).
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    let mut k = 1.0;
    for _ in 0..14 {
        sum += term / k;
        term *= s2;
        k += 2.0;
    }
    exponent as f64 * LN_2 + 2.0 * sum
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::member::{Role, RoleSet};

    fn member(id: &str, weight: u32) -> Member {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut m = Member::new(NodeId::new(id).unwrap(), RoleSet::of(&[Role::Origin]), addr);
        m.weight = weight;
        m
    }

    fn ids(owners: &[&Member]) -> Vec<String> {
        owners.iter().map(|m| m.id.to_string()).collect()
    }

    #[test]
    fn ln_matches_std_closely() {
        for &x in &[
            1e-16,
            1e-9,
            0.001,
            0.1,
            0.25,
            0.5,
            std::f64::consts::FRAC_1_SQRT_2,
            0.75,
            0.9,
            0.999999,
        ] {
            let (ours, std) = (ln(x), x.ln());
            assert!(
                (ours - std).abs() <= 4.0 * f64::EPSILON * std.abs().max(1.0),
                "{x}"
            );
        }
    }

    #[test]
    fn empty_and_small_rings() {
        let empty = Ring::new(Vec::new());
        assert!(empty.owners(b"k", 3).is_empty());
        assert!(empty.owner(b"k").is_none());
        let ring = Ring::new([member("a", 1), member("b", 1)]);
        assert_eq!(ring.owners(b"k", 3).len(), 2);
        assert_eq!(ring.owners(b"k", 0).len(), 0);
    }

    #[test]
    fn order_of_input_and_duplicates_do_not_matter() {
        let mut old = member("b", 1);
        old.generation = 1;
        let mut new = member("b", 1);
        new.generation = 2;
        let r1 = Ring::new([member("a", 1), old.clone(), new.clone(), member("c", 1)]);
        let r2 = Ring::new([member("c", 1), new, member("a", 1), old]);
        assert_eq!(r1, r2);
        assert_eq!(r1.len(), 3);
        assert_eq!(r1.members()[1].generation, 2);
        for k in 0..100u32 {
            assert_eq!(
                ids(&r1.owners(&k.to_le_bytes(), 3)),
                ids(&r2.owners(&k.to_le_bytes(), 3))
            );
        }
    }

    #[test]
    fn weight_zero_owns_nothing() {
        let ring = Ring::new([member("a", 1), member("b", 0)]);
        assert!(!ring.contains(&NodeId::new("b").unwrap()));
        assert_eq!(ids(&ring.owners(b"k", 3)), ["a"]);
    }

    #[test]
    fn digest_and_tag_keys_are_separate() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(digest_key(&d), d.to_string());
        assert_eq!(tag_key("library/redis:7"), b"tag\0library/redis:7");
    }

    /// Pins the score function: a change here reassigns every key in every cluster.
    #[test]
    fn owners_are_stable_across_versions() {
        let ring = Ring::new((0..8).map(|i| member(&format!("origin-{i}"), 1)));
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        let got = (
            ids(&ring.owners_of_digest(&d, 3)),
            ids(&ring.owners_of_tag("library/redis:7", 3)),
            score(b"key", &NodeId::new("origin-0").unwrap(), 1).to_bits(),
        );
        assert_eq!(got.0, ["origin-6", "origin-3", "origin-7"]);
        assert_eq!(got.1, ["origin-7", "origin-6", "origin-5"]);
        assert_eq!(got.2, 4_601_374_068_112_806_066);
    }
}
