//! Properties of the rendezvous ring: minimal disruption when a node joins or leaves (the
//! moved fraction is about 1/N and only the changed node moves), balance, weights, and
//! independence from input order.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use kraken_membership::{Member, NodeId, Ring, Role, RoleSet};
use kraken_storage::Digest;
use proptest::prelude::*;

const KEYS: u32 = 4000;

fn member(id: &str, weight: u32) -> Member {
    let mut m = Member::new(
        NodeId::new(id).unwrap(),
        RoleSet::of(&[Role::Origin]),
        "127.0.0.1:4000".parse().unwrap(),
    );
    m.weight = weight;
    m
}

/// `n` distinct node ids derived from `seed`.
fn node_ids(n: usize, seed: u64) -> Vec<String> {
    let mut ids = BTreeSet::new();
    let mut x = seed | 1;
    while ids.len() < n {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        ids.insert(format!(
            "origin-{:x}",
            x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40
        ));
    }
    ids.into_iter().collect()
}

fn keys(salt: u64) -> impl Iterator<Item = Digest> {
    (0..KEYS).map(move |i| {
        let mut b = salt.to_le_bytes().to_vec();
        b.extend_from_slice(&i.to_le_bytes());
        Digest::sha256_of(&b)
    })
}

fn owner_ids(ring: &Ring, d: &Digest, replicas: usize) -> Vec<NodeId> {
    ring.owners_of_digest(d, replicas)
        .into_iter()
        .map(|m| m.id.clone())
        .collect()
}

/// Five standard deviations of a binomial proportion, plus a little slack.
fn tolerance(p: f64) -> f64 {
    5.0 * (p * (1.0 - p) / f64::from(KEYS)).sqrt() + 0.002
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn adding_a_node_moves_only_its_keys(n in 1usize..24, replicas in 1usize..4, seed in any::<u64>()) {
        let ids = node_ids(n + 1, seed);
        let newcomer = NodeId::new(ids[n].clone()).unwrap();
        let before = Ring::new(ids[..n].iter().map(|id| member(id, 1)));
        let after = Ring::new(ids.iter().map(|id| member(id, 1)));
        let mut moved = 0u32;
        for d in keys(seed) {
            let old = owner_ids(&before, &d, replicas);
            let new = owner_ids(&after, &d, replicas);
            if old == new {
                continue;
            }
            moved += 1;
            // The only change is the newcomer taking a place; the rest keep their order.
            prop_assert!(new.contains(&newcomer));
            let rest: Vec<_> = new.iter().filter(|id| **id != newcomer).cloned().collect();
            prop_assert_eq!(&rest[..], &old[..rest.len()]);
        }
        let expected = replicas.min(n + 1) as f64 / (n + 1) as f64;
        let fraction = f64::from(moved) / f64::from(KEYS);
        prop_assert!(
            (fraction - expected).abs() <= tolerance(expected),
            "n={} replicas={} moved {} expected {}", n, replicas, fraction, expected
        );
    }

    #[test]
    fn removing_a_node_moves_only_its_keys(n in 2usize..24, replicas in 1usize..4, seed in any::<u64>(), which in any::<prop::sample::Index>()) {
        let ids = node_ids(n, seed);
        let gone = NodeId::new(ids[which.index(n)].clone()).unwrap();
        let before = Ring::new(ids.iter().map(|id| member(id, 1)));
        let after = Ring::new(ids.iter().filter(|id| **id != gone.as_str()).map(|id| member(id, 1)));
        let mut moved = 0u32;
        for d in keys(seed ^ 1) {
            let old = owner_ids(&before, &d, replicas);
            let new = owner_ids(&after, &d, replicas);
            if !old.contains(&gone) {
                prop_assert_eq!(old, new);
                continue;
            }
            moved += 1;
            // The survivors keep their order; at most one new owner joins at the end.
            let survivors: Vec<_> = old.iter().filter(|id| **id != gone).cloned().collect();
            prop_assert_eq!(&new[..survivors.len()], &survivors[..]);
            prop_assert!(new.len() <= old.len());
        }
        let expected = replicas.min(n) as f64 / n as f64;
        let fraction = f64::from(moved) / f64::from(KEYS);
        prop_assert!(
            (fraction - expected).abs() <= tolerance(expected),
            "n={} replicas={} moved {} expected {}", n, replicas, fraction, expected
        );
    }

    #[test]
    fn owners_do_not_depend_on_input_order(n in 1usize..16, seed in any::<u64>(), shuffle in any::<u64>()) {
        let ids = node_ids(n, seed);
        let mut shuffled = ids.clone();
        // Rotate and reverse: a different order, deterministically from the seed.
        let k = (shuffle as usize) % n;
        shuffled.rotate_left(k);
        if shuffle & 1 == 1 {
            shuffled.reverse();
        }
        let a = Ring::new(ids.iter().map(|id| member(id, 1 + (id.len() as u32 % 3))));
        let b = Ring::new(shuffled.iter().map(|id| member(id, 1 + (id.len() as u32 % 3))));
        for d in keys(seed).take(200) {
            let full = owner_ids(&a, &d, n);
            prop_assert_eq!(&full, &owner_ids(&b, &d, n));
            // Fewer replicas is a prefix of more.
            for r in 0..=n {
                prop_assert_eq!(&owner_ids(&a, &d, r)[..], &full[..r]);
            }
            let unique: BTreeSet<_> = full.iter().collect();
            prop_assert_eq!(unique.len(), n);
        }
    }

    #[test]
    fn weights_set_the_share_of_keys(n in 2usize..10, weight in 2u32..5, seed in any::<u64>()) {
        let ids = node_ids(n, seed);
        let heavy = NodeId::new(ids[0].clone()).unwrap();
        let ring = Ring::new(
            ids.iter().enumerate().map(|(i, id)| member(id, if i == 0 { weight } else { 1 })),
        );
        let first = keys(seed)
            .filter(|d| ring.owners_of_digest(d, 1)[0].id == heavy)
            .count();
        let expected = f64::from(weight) / (f64::from(weight) + (n - 1) as f64);
        let share = first as f64 / f64::from(KEYS);
        prop_assert!(
            (share - expected).abs() <= tolerance(expected),
            "n={} weight={} share {} expected {}", n, weight, share, expected
        );
    }
}

#[test]
fn keys_spread_evenly_over_equal_nodes() {
    let ids = node_ids(10, 99);
    let ring = Ring::new(ids.iter().map(|id| member(id, 1)));
    for id in &ids {
        let id = NodeId::new(id.clone()).unwrap();
        let share = keys(3)
            .filter(|d| ring.owners_of_digest(d, 1)[0].id == id)
            .count() as f64
            / f64::from(KEYS);
        assert!((share - 0.1).abs() <= tolerance(0.1), "{id}: {share}");
    }
}

#[test]
fn tags_and_digests_use_separate_key_spaces() {
    let ring = Ring::new(node_ids(16, 5).iter().map(|id| member(id, 1)));
    // The same text as a tag and as a raw key maps differently for most inputs.
    let differ = (0..200)
        .filter(|i| {
            let tag = format!("library/app:{i}");
            ring.owners_of_tag(&tag, 1)[0].id != ring.owners(tag.as_bytes(), 1)[0].id
        })
        .count();
    assert!(differ > 150, "{differ}");
}
