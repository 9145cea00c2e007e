//! The ledger of one anti-entropy pass: the complete blobs this origin holds, their owners
//! on the ring the pass started with, and which owners are known to hold each. Pure: the
//! pass feeds it the peers' answers and reads from it what to send and what is short.
//!
//! A blob is **shared** with peer P when its owners include both this origin and P; the
//! pair compares only those (see [`Ledger::summary`]). A blob this origin holds but does
//! not own is **offered** to each of its owners ([`Ledger::offers`]).

use std::collections::{BTreeMap, BTreeSet};

use kraken_membership::{NodeId, Ring};
use kraken_storage::Digest;

use super::summary::{self, BucketAction, SummaryError};
use crate::proto::{BucketSum, MAX_REPORTED_DIGESTS};

/// A complete local blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalBlob {
    /// The blob.
    pub digest: Digest,
    /// Already in its backend (copies then queue no write-back).
    pub persisted: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    blob: LocalBlob,
    /// This origin owns it.
    mine: bool,
    /// The other owners (indexes into `peers`), and whether each is known to hold it.
    others: Vec<(usize, bool)>,
}

/// What is short, counted over the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Blobs in the ledger.
    pub blobs: u64,
    /// Blobs some owner is not known to hold.
    pub short: u64,
    /// The first [`MAX_REPORTED_DIGESTS`] of them.
    pub digests: Vec<Digest>,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// Every other ring member, sorted.
    peers: Vec<NodeId>,
    /// By digest, ascending.
    entries: Vec<Entry>,
}

impl Ledger {
    /// The ledger of `blobs` (any order) held by `me`, with `replicas` owners per blob on
    /// `ring`. Costs one owner computation per blob.
    pub fn new(me: &NodeId, ring: &Ring, replicas: usize, blobs: Vec<LocalBlob>) -> Self {
        let peers: Vec<NodeId> = ring
            .members()
            .iter()
            .map(|m| m.id.clone())
            .filter(|id| id != me)
            .collect();
        let index: BTreeMap<&NodeId, usize> =
            peers.iter().enumerate().map(|(i, p)| (p, i)).collect();
        let mut entries: Vec<Entry> = blobs
            .into_iter()
            .map(|blob| {
                let owners = ring.owners_of_digest(&blob.digest, replicas);
                let mine = owners.iter().any(|m| &m.id == me);
                let others = owners
                    .iter()
                    .filter_map(|m| index.get(&m.id).map(|&i| (i, false)))
                    .collect();
                Entry { blob, mine, others }
            })
            .collect();
        entries.sort_by_key(|e| e.blob.digest);
        entries.dedup_by(|a, b| a.blob.digest == b.blob.digest);
        Ledger { peers, entries }
    }

    fn peer_index(&self, peer: &NodeId) -> Option<usize> {
        self.peers.binary_search(peer).ok()
    }

    fn shared<'a>(&'a self, peer: usize) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.mine && e.others.iter().any(|(p, _)| *p == peer))
    }

    /// The peers this origin shares at least one blob with.
    pub fn co_owners(&self) -> Vec<NodeId> {
        let mut seen = BTreeSet::new();
        for e in self.entries.iter().filter(|e| e.mine) {
            seen.extend(e.others.iter().map(|(p, _)| *p));
        }
        seen.into_iter().map(|p| self.peers[p].clone()).collect()
    }

    /// The summary of the blobs shared with `peer` (all buckets empty for a peer not on
    /// the ring).
    pub fn summary(&self, peer: &NodeId) -> Vec<BucketSum> {
        match self.peer_index(peer) {
            Some(p) => summary::summarize(self.shared(p).map(|e| &e.blob.digest)),
            None => summary::summarize([]),
        }
    }

    /// Up to `limit` blobs shared with `peer` in `buckets`, after `after`, ascending; and
    /// the cursor of the next page, if any.
    pub fn shared_page(
        &self,
        peer: &NodeId,
        buckets: &[u8],
        after: Option<&Digest>,
        limit: usize,
    ) -> (Vec<Digest>, Option<Digest>) {
        let Some(p) = self.peer_index(peer) else {
            return (Vec::new(), None);
        };
        let limit = limit.max(1);
        let wanted: BTreeSet<u8> = buckets.iter().copied().collect();
        let mut page: Vec<Digest> = self
            .shared(p)
            .map(|e| e.blob.digest)
            .filter(|d| after.is_none_or(|a| d > a) && wanted.contains(&summary::bucket_of(d)))
            .take(limit.saturating_add(1))
            .collect();
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page[limit - 1]
        });
        (page, next)
    }

    /// Compares with `peer`'s summary of what it shares with this origin: marks the blobs
    /// of matching buckets as held by the peer, and returns the blobs to send at once (the
    /// peer holds nothing in their bucket) and the buckets to list.
    pub fn compare(
        &mut self,
        peer: &NodeId,
        theirs: &[BucketSum],
    ) -> Result<(Vec<Digest>, Vec<u8>), SummaryError> {
        let ours = self.summary(peer);
        let actions = summary::compare(&ours, theirs)?;
        let Some(p) = self.peer_index(peer) else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut send = Vec::new();
        for e in self.shared_mut(p) {
            let d = e.blob.digest;
            match actions[usize::from(summary::bucket_of(&d))] {
                BucketAction::Same => mark(e, p),
                BucketAction::SendAll => send.push(d),
                BucketAction::List | BucketAction::NothingOfOurs => {}
            }
        }
        let list = (0..=u8::MAX)
            .filter(|b| actions[usize::from(*b)] == BucketAction::List)
            .collect();
        Ok((send, list))
    }

    fn shared_mut(&mut self, p: usize) -> impl Iterator<Item = &mut Entry> {
        self.entries
            .iter_mut()
            .filter(move |e| e.mine && e.others.iter().any(|(q, _)| *q == p))
    }

    /// Given everything `peer` shares with this origin in `buckets` (`theirs`), marks what
    /// it holds and returns what it lacks.
    pub fn reconcile(
        &mut self,
        peer: &NodeId,
        buckets: &[u8],
        theirs: &BTreeSet<Digest>,
    ) -> Vec<Digest> {
        let Some(p) = self.peer_index(peer) else {
            return Vec::new();
        };
        let wanted: BTreeSet<u8> = buckets.iter().copied().collect();
        let mut missing = Vec::new();
        for e in self.shared_mut(p) {
            let d = e.blob.digest;
            if !wanted.contains(&summary::bucket_of(&d)) {
                continue;
            }
            if theirs.contains(&d) {
                mark(e, p);
            } else {
                missing.push(d);
            }
        }
        missing
    }

    /// Records that `peer` holds `digest` (a copy landed, or it had it).
    pub fn confirm(&mut self, peer: &NodeId, digest: &Digest) {
        let Some(p) = self.peer_index(peer) else {
            return;
        };
        if let Ok(i) = self.entries.binary_search_by(|e| e.blob.digest.cmp(digest)) {
            mark(&mut self.entries[i], p);
        }
    }

    /// Records that every owner of `digest` holds it.
    pub fn confirm_all(&mut self, digest: &Digest) {
        if let Ok(i) = self.entries.binary_search_by(|e| e.blob.digest.cmp(digest)) {
            for o in &mut self.entries[i].others {
                o.1 = true;
            }
        }
    }

    /// Blobs this origin holds but does not own, with the owners not known to hold them.
    pub fn offers(&self) -> Vec<(Digest, Vec<NodeId>)> {
        self.entries
            .iter()
            .filter(|e| !e.mine)
            .map(|e| {
                let owners = e
                    .others
                    .iter()
                    .filter(|(_, held)| !held)
                    .map(|(p, _)| self.peers[*p].clone())
                    .collect();
                (e.blob.digest, owners)
            })
            .filter(|(_, owners): &(Digest, Vec<NodeId>)| !owners.is_empty())
            .collect()
    }

    /// Whether every owner of `digest` (other than this origin) is known to hold it.
    pub fn held_by_all(&self, digest: &Digest) -> bool {
        self.entries
            .binary_search_by(|e| e.blob.digest.cmp(digest))
            .is_ok_and(|i| self.entries[i].others.iter().all(|(_, held)| *held))
    }

    /// The local blob `digest`, if in the ledger.
    pub fn blob(&self, digest: &Digest) -> Option<LocalBlob> {
        self.entries
            .binary_search_by(|e| e.blob.digest.cmp(digest))
            .ok()
            .map(|i| self.entries[i].blob)
    }

    /// Blobs some owner is not known to hold (an unreachable owner counts as lacking).
    pub fn tally(&self) -> Tally {
        let mut t = Tally {
            blobs: self.entries.len() as u64,
            ..Tally::default()
        };
        for e in &self.entries {
            if e.others.iter().any(|(_, held)| !held) {
                t.short += 1;
                if t.digests.len() < MAX_REPORTED_DIGESTS {
                    t.digests.push(e.blob.digest);
                }
            }
        }
        t
    }
}

fn mark(e: &mut Entry, p: usize) {
    for o in e.others.iter_mut().filter(|(q, _)| *q == p) {
        o.1 = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_membership::{Member, Role, RoleSet};

    fn ring(n: usize) -> Ring {
        Ring::new((1..=n).map(|i| {
            Member::new(
                NodeId::new(format!("origin-{i}")).unwrap(),
                RoleSet::of(&[Role::Origin]),
                format!("127.0.0.1:{}", 7000 + i).parse().unwrap(),
            )
        }))
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn blobs(n: u32) -> Vec<LocalBlob> {
        (0..n)
            .map(|i| LocalBlob {
                digest: Digest::sha256_of(&i.to_le_bytes()),
                persisted: false,
            })
            .collect()
    }

    /// What `me` holds of `all`: the blobs it owns, per `ring`.
    fn owned(me: &str, ring: &Ring, all: &[LocalBlob]) -> Vec<LocalBlob> {
        all.iter()
            .copied()
            .filter(|b| {
                ring.owners_of_digest(&b.digest, 3)
                    .iter()
                    .any(|m| m.id.as_str() == me)
            })
            .collect()
    }

    /// One comparison of `a` against `b` as the pass runs it, listing from `b`'s ledger.
    fn sync(a: &mut Ledger, a_id: &NodeId, b: &Ledger, b_id: &NodeId) -> Vec<Digest> {
        let (mut send, list) = a.compare(b_id, &b.summary(a_id)).unwrap();
        if !list.is_empty() {
            let mut theirs = BTreeSet::new();
            let mut after = None;
            loop {
                let (page, next) = b.shared_page(a_id, &list, after.as_ref(), 7);
                theirs.extend(page);
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            send.extend(a.reconcile(b_id, &list, &theirs));
        }
        send
    }

    #[test]
    fn in_steady_state_nothing_is_sent_and_nothing_is_short() {
        let r = ring(4);
        let all = blobs(400);
        let (a_id, b_id) = (id("origin-1"), id("origin-2"));
        let mut a = Ledger::new(&a_id, &r, 3, owned("origin-1", &r, &all));
        let b = Ledger::new(&b_id, &r, 3, owned("origin-2", &r, &all));
        assert_eq!(
            a.co_owners(),
            vec![id("origin-2"), id("origin-3"), id("origin-4")]
        );
        assert!(sync(&mut a, &a_id, &b, &b_id).is_empty());
        // Only origin-2 was asked: blobs shared with 3 and 4 are not confirmed yet.
        for peer in ["origin-3", "origin-4"] {
            let p = id(peer);
            let other = Ledger::new(&p, &r, 3, owned(peer, &r, &all));
            assert!(sync(&mut a, &a_id, &other, &p).is_empty());
        }
        let t = a.tally();
        assert_eq!(t.short, 0);
        assert_eq!(t.blobs, owned("origin-1", &r, &all).len() as u64);
    }

    #[test]
    fn what_a_peer_lacks_is_found_whether_its_bucket_is_empty_or_not() {
        let r = ring(3);
        let all = blobs(2000);
        let (a_id, b_id) = (id("origin-1"), id("origin-2"));
        let mut a = Ledger::new(&a_id, &r, 3, all.clone());
        // origin-2 lost a few blobs, including every blob of one bucket.
        let lost_bucket = summary::bucket_of(&all[0].digest);
        let lost: BTreeSet<Digest> = all
            .iter()
            .map(|b| b.digest)
            .filter(|d| summary::bucket_of(d) == lost_bucket)
            .chain([all[5].digest, all[77].digest, all[1500].digest])
            .collect();
        let kept: Vec<LocalBlob> = all
            .iter()
            .copied()
            .filter(|b| !lost.contains(&b.digest))
            .collect();
        let b = Ledger::new(&b_id, &r, 3, kept);
        let mut sent = sync(&mut a, &a_id, &b, &b_id);
        sent.sort();
        assert_eq!(sent, lost.iter().copied().collect::<Vec<_>>());
        // Until the copies land, they are short; origin-3 was never asked, so all are.
        let t = a.tally();
        assert_eq!(t.short, t.blobs);
        let c_id = id("origin-3");
        let c = Ledger::new(&c_id, &r, 3, all.clone());
        assert!(sync(&mut a, &a_id, &c, &c_id).is_empty());
        assert_eq!(a.tally().short, lost.len() as u64);
        for d in &lost {
            a.confirm(&b_id, d);
        }
        assert_eq!(
            a.tally(),
            Tally {
                blobs: 2000,
                short: 0,
                digests: vec![]
            }
        );
    }

    #[test]
    fn views_that_differ_fall_back_to_lists_and_stay_correct() {
        // origin-1 sees 3 origins, origin-2 still sees a 4th: their shared sets differ.
        let (r3, r4) = (ring(3), ring(4));
        let all = blobs(300);
        let (a_id, b_id) = (id("origin-1"), id("origin-2"));
        let mut a = Ledger::new(&a_id, &r3, 3, all.clone());
        let b = Ledger::new(&b_id, &r4, 3, owned("origin-2", &r4, &all));
        let sent: BTreeSet<Digest> = sync(&mut a, &a_id, &b, &b_id).into_iter().collect();
        // Everything origin-2 lacks is sent; so may be blobs it holds without sharing them
        // with origin-1 in its view (the push then costs one round trip and no bytes).
        let held: BTreeSet<Digest> = owned("origin-2", &r4, &all)
            .iter()
            .map(|b| b.digest)
            .collect();
        let lacking: BTreeSet<Digest> = all
            .iter()
            .map(|b| b.digest)
            .filter(|d| !held.contains(d))
            .collect();
        assert!(!lacking.is_empty());
        assert!(lacking.is_subset(&sent));
        assert!(sent.len() < all.len(), "matching buckets are not sent");
    }

    #[test]
    fn blobs_not_owned_are_offered_to_their_owners_until_confirmed() {
        let r = ring(4);
        let all = blobs(100);
        let me = id("origin-4");
        let mut l = Ledger::new(&me, &r, 3, all.clone());
        let offers = l.offers();
        let not_mine = all.len() - owned("origin-4", &r, &all).len();
        assert_eq!(offers.len(), not_mine);
        assert!(
            offers
                .iter()
                .all(|(_, owners)| owners.len() == 3 && !owners.contains(&me))
        );
        let (d, owners) = offers[0].clone();
        l.confirm(&owners[0], &d);
        assert_eq!(l.offers()[0].1.len(), 2);
        assert!(!l.held_by_all(&d));
        l.confirm_all(&d);
        assert!(l.held_by_all(&d));
        assert!(l.offers().iter().all(|(x, _)| *x != d));
        assert_eq!(l.blob(&d).map(|b| b.digest), Some(d));
    }

    #[test]
    fn a_lone_origin_and_unknown_peers_have_nothing_to_compare() {
        let r = ring(1);
        let me = id("origin-1");
        let mut l = Ledger::new(&me, &r, 3, blobs(10));
        assert!(l.co_owners().is_empty());
        assert_eq!(l.tally().short, 0);
        let stranger = id("origin-9");
        assert!(l.summary(&stranger).iter().all(|s| s.count == 0));
        assert_eq!(l.shared_page(&stranger, &[0], None, 10), (vec![], None));
        let theirs = summary::summarize([]);
        assert_eq!(l.compare(&stranger, &theirs), Ok((vec![], vec![])));
    }
}
