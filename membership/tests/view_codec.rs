//! The `ClusterView` encoding: round trips, and untrusted bytes never panic.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use kraken_membership::view::MAX_ENCODED_LEN;
use kraken_membership::{ClusterId, ClusterView, Member, NodeId, RoleSet};
use proptest::prelude::*;

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), 1u16..).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
    .prop_filter("dialable", |a| !a.ip().is_unspecified())
}

fn member() -> impl Strategy<Value = Member> {
    (
        "[A-Za-z0-9._:@-]{1,40}",
        1u8..8,
        addr(),
        proptest::option::of(addr()),
        any::<u64>(),
        "[0-9a-z.+-]{0,20}",
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(
            |(id, roles, quic, http, generation, version, ready, weight)| Member {
                id: NodeId::new(id).unwrap(),
                roles: RoleSet::try_from(roles).unwrap(),
                quic_addr: quic,
                http_addr: http,
                generation,
                version,
                ready,
                weight,
            },
        )
}

fn view() -> impl Strategy<Value = ClusterView> {
    (
        "[a-z0-9._-]{1,30}",
        any::<u64>(),
        proptest::collection::btree_map("[a-z0-9-]{1,12}", member(), 0..20),
        any::<u64>(),
    )
        .prop_map(|(cluster, epoch, members, suspect_mask)| {
            let members: Vec<Member> = members
                .into_iter()
                .map(|(id, mut m)| {
                    m.id = NodeId::new(id).unwrap();
                    m
                })
                .collect();
            let suspected: Vec<NodeId> = members
                .iter()
                .enumerate()
                .filter(|(i, _)| suspect_mask >> (i % 64) & 1 == 1)
                .map(|(_, m)| m.id.clone())
                .collect();
            ClusterView::from_parts(ClusterId::new(cluster).unwrap(), epoch, members, suspected)
                .unwrap()
        })
}

proptest! {
    #[test]
    fn round_trips(v in view()) {
        let bytes = v.encode();
        prop_assert!(bytes.len() <= MAX_ENCODED_LEN);
        let back = ClusterView::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(back.fingerprint(), v.fingerprint());
        prop_assert_eq!(back.epoch(), v.epoch());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = ClusterView::decode(&bytes);
        let mut versioned = bytes;
        versioned.insert(0, 1);
        let _ = ClusterView::decode(&versioned);
    }

    #[test]
    fn mutated_encodings_never_panic(v in view(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let mut bytes = v.encode();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= byte;
        }
        if let Ok(decoded) = ClusterView::decode(&bytes) {
            // Whatever decodes is a valid view: it survives its own round trip.
            prop_assert_eq!(ClusterView::decode(&decoded.encode()).unwrap(), decoded);
        }
        let len = cut.index(bytes.len() + 1);
        let _ = ClusterView::decode(&bytes[..len]);
    }
}
