//! Summaries of a set of digests per bucket of the digest space, and what two summaries
//! say about the sets behind them. Pure.
//!
//! A bucket is the first byte of a digest's hash (256 buckets, uniform for sha256 and
//! sha512). A bucket's summary is its count and the BLAKE3 (domain-separated) of its
//! digests in [`Digest`] order, each as an algorithm byte and the hash: equal summaries
//! mean equal sets but for a hash collision.
//!
//! Why a hash of the sorted digests and not the XOR of their hashes: XOR is linear, so
//! anyone who can upload a few hundred blobs of their choosing can find a set whose hashes
//! XOR to zero (Gaussian elimination over GF(2)) and would be invisible to a summary; a
//! hash of the ordered list has no such structure. XOR's one advantage, updating a
//! summary in place as blobs come and go, is not used: a pass rebuilds its summaries from
//! one scan of the store anyway, already in order.

use kraken_storage::Digest;

use crate::proto::{BucketSum, SUMMARY_BUCKETS};

/// Domain of the bucket hash, so it can never equal another BLAKE3 of the same bytes.
const DOMAIN: &[u8] = b"kraken anti-entropy bucket v1\0";

/// Why a peer's summary cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    /// Not one entry per bucket.
    #[error("a summary has {0} buckets, not {SUMMARY_BUCKETS}")]
    WrongBuckets(usize),
}

/// The bucket of `digest`.
pub fn bucket_of(digest: &Digest) -> u8 {
    digest.hash_bytes()[0]
}

/// The summary of `digests`, which must come in ascending order (as a store lists them).
pub fn summarize<'a>(digests: impl IntoIterator<Item = &'a Digest>) -> Vec<BucketSum> {
    let mut hashers: Vec<Option<blake3::Hasher>> = vec![None; SUMMARY_BUCKETS];
    let mut sums = vec![BucketSum::default(); SUMMARY_BUCKETS];
    for d in digests {
        let b = usize::from(bucket_of(d));
        sums[b].count = sums[b].count.saturating_add(1);
        let h = hashers[b].get_or_insert_with(|| {
            let mut h = blake3::Hasher::new();
            h.update(DOMAIN);
            h
        });
        h.update(&[d.algorithm() as u8]);
        h.update(d.hash_bytes());
    }
    for (sum, h) in sums.iter_mut().zip(hashers) {
        if let Some(h) = h {
            sum.hash = *h.finalize().as_bytes();
        }
    }
    sums
}

/// What to do about one bucket shared with a peer, from both summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketAction {
    /// Same set (or nothing of ours in it): the peer holds everything of ours there.
    Same,
    /// We hold none of it: nothing to send, whatever the peer holds.
    NothingOfOurs,
    /// The peer holds none of it: send all of ours.
    SendAll,
    /// Both hold some and the sets differ: list the peer's to find what it lacks.
    List,
}

/// Compares our summary with a peer's, bucket by bucket.
pub fn compare(
    ours: &[BucketSum],
    theirs: &[BucketSum],
) -> Result<Vec<BucketAction>, SummaryError> {
    if theirs.len() != SUMMARY_BUCKETS {
        return Err(SummaryError::WrongBuckets(theirs.len()));
    }
    if ours.len() != SUMMARY_BUCKETS {
        return Err(SummaryError::WrongBuckets(ours.len()));
    }
    Ok(ours
        .iter()
        .zip(theirs)
        .map(|(o, t)| {
            if o.count == 0 {
                BucketAction::NothingOfOurs
            } else if o == t {
                BucketAction::Same
            } else if t.count == 0 {
                BucketAction::SendAll
            } else {
                BucketAction::List
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_storage::DigestAlgorithm;

    fn digests(n: u32) -> Vec<Digest> {
        let mut v: Vec<Digest> = (0..n)
            .map(|i| Digest::sha256_of(&i.to_le_bytes()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn equal_sets_have_equal_summaries_and_any_difference_shows_in_its_bucket() {
        let all = digests(1000);
        let a = summarize(&all);
        assert_eq!(a, summarize(&all.clone()));
        assert_eq!(a.iter().map(|s| u64::from(s.count)).sum::<u64>(), 1000);

        let gone = all[417];
        let fewer: Vec<Digest> = all.iter().copied().filter(|d| *d != gone).collect();
        let b = summarize(&fewer);
        let actions = compare(&a, &b).unwrap();
        for (i, action) in actions.iter().enumerate() {
            if i == usize::from(bucket_of(&gone)) {
                assert_eq!(*action, BucketAction::List, "bucket {i}");
            } else if a[i].count == 0 {
                assert_eq!(*action, BucketAction::NothingOfOurs);
            } else {
                assert_eq!(*action, BucketAction::Same, "bucket {i}");
            }
        }
    }

    #[test]
    fn a_swapped_digest_changes_the_bucket_even_at_the_same_count() {
        let all = digests(300);
        let b = usize::from(bucket_of(&all[0]));
        let in_bucket: Vec<Digest> = all
            .iter()
            .copied()
            .filter(|d| usize::from(bucket_of(d)) == b)
            .collect();
        // Another digest of the same bucket in place of the first.
        let other = (1000u32..)
            .map(|i| Digest::sha256_of(&i.to_le_bytes()))
            .find(|d| usize::from(bucket_of(d)) == b && !in_bucket.contains(d))
            .unwrap();
        let mut swapped: Vec<Digest> = in_bucket[1..].to_vec();
        swapped.push(other);
        swapped.sort();
        let (x, y) = (summarize(&in_bucket), summarize(&swapped));
        assert_eq!(x[b].count, y[b].count);
        assert_ne!(x[b].hash, y[b].hash);
    }

    #[test]
    fn algorithms_never_collide_and_empty_buckets_read_zero() {
        let a = Digest::of(DigestAlgorithm::Sha256, b"x");
        let s = summarize([&a]);
        let b = usize::from(bucket_of(&a));
        assert_eq!(s[b].count, 1);
        assert_ne!(s[b].hash, [0; 32]);
        let empty = summarize([]);
        assert!(empty.iter().all(|s| *s == BucketSum::default()));
        let big = Digest::of(DigestAlgorithm::Sha512, b"x");
        assert_eq!(summarize([&big]).iter().filter(|s| s.count == 1).count(), 1);
    }

    #[test]
    fn actions_send_everything_to_an_empty_peer_and_nothing_from_an_empty_side() {
        let all = digests(50);
        let ours = summarize(&all);
        let theirs = summarize([]);
        let actions = compare(&ours, &theirs).unwrap();
        for (o, a) in ours.iter().zip(&actions) {
            let want = if o.count == 0 {
                BucketAction::NothingOfOurs
            } else {
                BucketAction::SendAll
            };
            assert_eq!(*a, want);
        }
        let back = compare(&theirs, &ours).unwrap();
        assert!(back.iter().all(|a| *a == BucketAction::NothingOfOurs));
    }

    #[test]
    fn a_malformed_peer_summary_is_an_error_not_a_panic() {
        let ours = summarize([]);
        assert_eq!(
            compare(&ours, &ours[..3]),
            Err(SummaryError::WrongBuckets(3))
        );
        assert_eq!(compare(&ours, &[]), Err(SummaryError::WrongBuckets(0)));
    }
}
