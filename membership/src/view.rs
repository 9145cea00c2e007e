//! `ClusterView`: the ring nodes one node knows, by id, with their roles and versions; and
//! its compact encoding for agents.
//!
//! A view is immutable and reference-counted, so cloning it (into a watch channel, a
//! request handler, a ring repair task) costs one atomic increment. Ring nodes maintain
//! theirs by gossip; agents receive one over QUIC from any ring node ([`ClusterView::encode`]
//! / [`ClusterView::decode`]) and refresh it (see [`ViewRefresher`](crate::ViewRefresher)).
//!
//! Encoding: postcard of a versioned struct (`version = 1`), at most [`MAX_ENCODED_LEN`]
//! bytes and [`MAX_MEMBERS`] members. Decoding never panics, rejects trailing bytes,
//! duplicate ids, invalid members and suspects that are not members.
//!
//! The `epoch` counts changes seen by the node that produced the view; it orders views from
//! one node, not across nodes. To compare views from different nodes use
//! [`ClusterView::fingerprint`], which covers the membership and not the epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::member::{Member, MemberError, NodeId, Role};
use crate::ring::Ring;

/// Most members a decoded view may hold (gossip supports a few hundred; see the crate docs).
pub const MAX_MEMBERS: usize = 4096;
/// Longest encoded view accepted by [`ClusterView::decode`].
pub const MAX_ENCODED_LEN: usize = 1 << 20;
/// Longest accepted [`ClusterId`], in bytes.
pub const MAX_CLUSTER_ID_LEN: usize = 64;

/// Encoding version written by [`ClusterView::encode`].
const WIRE_VERSION: u8 = 1;

/// Why a view could not be built or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The cluster id is empty, too long, or has a character outside `[A-Za-z0-9._-]`.
    #[error("invalid cluster id {0:?} (1 to {MAX_CLUSTER_ID_LEN} of ASCII letters, digits, . _ -)")]
    InvalidClusterId(String),
    /// A member is not valid.
    #[error("invalid member: {0}")]
    Member(#[from] MemberError),
    /// Two members share an id.
    #[error("member {0} appears twice")]
    DuplicateMember(NodeId),
    /// A suspected node is not a member.
    #[error("suspected node {0} is not a member")]
    UnknownSuspect(NodeId),
    /// More members than [`MAX_MEMBERS`].
    #[error("view has {0} members, more than the {MAX_MEMBERS} allowed")]
    TooManyMembers(usize),
    /// The encoding is longer than [`MAX_ENCODED_LEN`].
    #[error("encoded view is {actual} bytes, more than the {max} allowed")]
    TooLong {
        /// Length seen.
        actual: usize,
        /// The cap.
        max: usize,
    },
    /// The input is empty.
    #[error("malformed view: empty input")]
    Empty,
    /// The bytes are not a postcard view.
    #[error("malformed view: {0}")]
    Malformed(#[source] postcard::Error),
    /// An encoding version this code does not know.
    #[error("unsupported view encoding version {0}")]
    UnsupportedVersion(u8),
    /// Bytes left after the view.
    #[error("{0} trailing bytes after the view")]
    TrailingBytes(usize),
    /// A view of another cluster.
    #[error("view is of cluster {actual:?}, expected {expected:?}")]
    WrongCluster {
        /// The cluster we belong to.
        expected: ClusterId,
        /// The cluster of the view.
        actual: ClusterId,
    },
}

/// The name of a cluster. Gossip messages and views of another cluster are rejected. It is
/// not a secret and not authentication (see the crate docs).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterId(String);

impl ClusterId {
    /// Validates `id`: 1 to [`MAX_CLUSTER_ID_LEN`] bytes of `[A-Za-z0-9._-]`.
    pub fn new(id: impl Into<String>) -> Result<Self, ViewError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_CLUSTER_ID_LEN
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(ClusterId(id))
        } else {
            Err(ViewError::InvalidClusterId(id.chars().take(80).collect()))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `kraken`.
impl Default for ClusterId {
    fn default() -> Self {
        ClusterId("kraken".to_owned())
    }
}

impl TryFrom<String> for ClusterId {
    type Error = ViewError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        ClusterId::new(s)
    }
}

impl From<ClusterId> for String {
    fn from(id: ClusterId) -> String {
        id.0
    }
}

impl FromStr for ClusterId {
    type Err = ViewError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClusterId::new(s)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({})", self.0)
    }
}

/// The ring nodes of a cluster as one node sees them. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterView {
    inner: Arc<Inner>,
}

#[derive(PartialEq, Eq)]
struct Inner {
    cluster_id: ClusterId,
    epoch: u64,
    members: BTreeMap<NodeId, Member>,
    suspected: BTreeSet<NodeId>,
}

impl ClusterView {
    /// A view of `members` at epoch 0 with no suspects.
    pub fn new(
        cluster_id: ClusterId,
        members: impl IntoIterator<Item = Member>,
    ) -> Result<Self, ViewError> {
        ClusterView::from_parts(cluster_id, 0, members, [])
    }

    /// A view with every part given: `suspected` are members the failure detector holds
    /// dead that are still within their grace period (still on the rings).
    pub fn from_parts(
        cluster_id: ClusterId,
        epoch: u64,
        members: impl IntoIterator<Item = Member>,
        suspected: impl IntoIterator<Item = NodeId>,
    ) -> Result<Self, ViewError> {
        let mut map = BTreeMap::new();
        for m in members {
            m.validate()?;
            if map.len() >= MAX_MEMBERS {
                return Err(ViewError::TooManyMembers(map.len() + 1));
            }
            if let Some(dup) = map.insert(m.id.clone(), m) {
                return Err(ViewError::DuplicateMember(dup.id));
            }
        }
        let mut set = BTreeSet::new();
        for id in suspected {
            if !map.contains_key(&id) {
                return Err(ViewError::UnknownSuspect(id));
            }
            set.insert(id);
        }
        Ok(ClusterView::from_checked(cluster_id, epoch, map, set))
    }

    /// Builds a view from parts already validated (by the gossip driver).
    pub(crate) fn from_checked(
        cluster_id: ClusterId,
        epoch: u64,
        members: BTreeMap<NodeId, Member>,
        suspected: BTreeSet<NodeId>,
    ) -> Self {
        ClusterView {
            inner: Arc::new(Inner {
                cluster_id,
                epoch,
                members,
                suspected,
            }),
        }
    }

    /// The cluster.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.inner.cluster_id
    }

    /// How many changes the producing node has seen; orders views from one node only.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// Every member by id, including ones not ready and suspected ones.
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.inner.members
    }

    /// One member.
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.inner.members.get(id)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.inner.members.len()
    }

    /// Whether the view has no member.
    pub fn is_empty(&self) -> bool {
        self.inner.members.is_empty()
    }

    /// The members with `role`, by id, ready or not.
    pub fn members_of(&self, role: Role) -> impl Iterator<Item = &Member> {
        self.inner
            .members
            .values()
            .filter(move |m| m.has_role(role))
    }

    /// Members the failure detector holds dead but that are still within the grace period
    /// (and so still on their rings). Callers may prefer other owners for I/O.
    pub fn suspected(&self) -> &BTreeSet<NodeId> {
        &self.inner.suspected
    }

    /// Whether `id` is suspected dead.
    pub fn is_suspected(&self, id: &NodeId) -> bool {
        self.inner.suspected.contains(id)
    }

    /// The ring of `role`: its members that are ready and have a weight above 0 (suspected
    /// members stay on the ring until their grace period ends).
    pub fn ring(&self, role: Role) -> Ring {
        Ring::new(self.members_of(role).filter(|m| m.ready).cloned())
    }

    /// The same view with another epoch.
    pub fn with_epoch(&self, epoch: u64) -> Self {
        ClusterView::from_checked(
            self.inner.cluster_id.clone(),
            epoch,
            self.inner.members.clone(),
            self.inner.suspected.clone(),
        )
    }

    /// Whether both views hold the same cluster, members and suspects (epochs may differ).
    pub fn same_membership(&self, other: &ClusterView) -> bool {
        self.inner.cluster_id == other.inner.cluster_id
            && self.inner.members == other.inner.members
            && self.inner.suspected == other.inner.suspected
    }

    /// BLAKE3 of the encoding without the epoch: equal on two nodes iff
    /// [`same_membership`](Self::same_membership).
    pub fn fingerprint(&self) -> [u8; 32] {
        *blake3::hash(&self.with_epoch(0).encode()).as_bytes()
    }

    /// The compact binary encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireRef {
            version: WIRE_VERSION,
            cluster_id: &self.inner.cluster_id,
            epoch: self.inner.epoch,
            members: self.inner.members.values().collect(),
            suspected: self.inner.suspected.iter().collect(),
        };
        // Serializing plain data into a Vec cannot fail.
        postcard::to_allocvec(&wire).unwrap_or_default()
    }

    /// Decodes and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ViewError> {
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(ViewError::TooLong {
                actual: bytes.len(),
                max: MAX_ENCODED_LEN,
            });
        }
        // Check the version first so a future encoding gets a clear error.
        match bytes.first() {
            Some(&WIRE_VERSION) => {}
            Some(&v) => return Err(ViewError::UnsupportedVersion(v)),
            None => return Err(ViewError::Empty),
        }
        let (wire, rest): (Wire, _) =
            postcard::take_from_bytes(bytes).map_err(ViewError::Malformed)?;
        if !rest.is_empty() {
            return Err(ViewError::TrailingBytes(rest.len()));
        }
        if wire.members.len() > MAX_MEMBERS {
            return Err(ViewError::TooManyMembers(wire.members.len()));
        }
        ClusterView::from_parts(wire.cluster_id, wire.epoch, wire.members, wire.suspected)
    }

    /// Decodes, then rejects a view of a cluster other than `expected`.
    pub fn decode_for(bytes: &[u8], expected: &ClusterId) -> Result<Self, ViewError> {
        let view = ClusterView::decode(bytes)?;
        if view.cluster_id() != expected {
            return Err(ViewError::WrongCluster {
                expected: expected.clone(),
                actual: view.cluster_id().clone(),
            });
        }
        Ok(view)
    }
}

impl fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterView")
            .field("cluster_id", &self.inner.cluster_id)
            .field("epoch", &self.inner.epoch)
            .field("members", &self.inner.members.values().collect::<Vec<_>>())
            .field("suspected", &self.inner.suspected)
            .finish()
    }
}

#[derive(Serialize)]
struct WireRef<'a> {
    version: u8,
    cluster_id: &'a ClusterId,
    epoch: u64,
    members: Vec<&'a Member>,
    suspected: Vec<&'a NodeId>,
}

#[derive(Deserialize)]
struct Wire {
    #[allow(dead_code)]
    version: u8,
    cluster_id: ClusterId,
    epoch: u64,
    members: Vec<Member>,
    suspected: Vec<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::RoleSet;

    fn member(id: &str, roles: &[Role]) -> Member {
        let mut m = Member::new(
            NodeId::new(id).unwrap(),
            RoleSet::of(roles),
            "10.0.0.1:4000".parse().unwrap(),
        );
        m.http_addr = Some("10.0.0.1:8080".parse().unwrap());
        m.generation = 7;
        m
    }

    fn cluster() -> ClusterId {
        ClusterId::new("prod-1").unwrap()
    }

    fn sample() -> ClusterView {
        let mut b = member("b", &[Role::Tracker]);
        b.ready = false;
        ClusterView::from_parts(
            cluster(),
            42,
            [
                member("a", &[Role::Origin, Role::Tracker]),
                b,
                member("c", &[Role::Origin]),
            ],
            [NodeId::new("c").unwrap()],
        )
        .unwrap()
    }

    #[test]
    fn cluster_id_validation() {
        assert!(ClusterId::new("prod-1.dc_2").is_ok());
        assert!(ClusterId::new("").is_err());
        assert!(ClusterId::new("a b").is_err());
        assert!(ClusterId::new("x".repeat(MAX_CLUSTER_ID_LEN + 1)).is_err());
    }

    #[test]
    fn roles_and_rings() {
        let v = sample();
        assert_eq!(v.members_of(Role::Origin).count(), 2);
        assert_eq!(v.members_of(Role::Tracker).count(), 2);
        assert_eq!(v.members_of(Role::BuildIndex).count(), 0);
        // b is not ready: a member, but not on the tracker ring.
        assert_eq!(v.ring(Role::Tracker).len(), 1);
        // c is suspected: still on the origin ring.
        assert_eq!(v.ring(Role::Origin).len(), 2);
        assert!(v.is_suspected(&NodeId::new("c").unwrap()));
        assert!(v.ring(Role::BuildIndex).is_empty());
    }

    #[test]
    fn encode_decode_round_trip() {
        let v = sample();
        let bytes = v.encode();
        let back = ClusterView::decode(&bytes).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.epoch(), 42);
        assert_eq!(ClusterView::decode_for(&bytes, &cluster()).unwrap(), v);
        assert!(matches!(
            ClusterView::decode_for(&bytes, &ClusterId::new("other").unwrap()),
            Err(ViewError::WrongCluster { .. })
        ));
    }

    #[test]
    fn fingerprint_ignores_epoch_only() {
        let v = sample();
        assert_eq!(v.fingerprint(), v.with_epoch(1).fingerprint());
        assert!(v.same_membership(&v.with_epoch(9)));
        let other = ClusterView::new(cluster(), [member("a", &[Role::Origin])]).unwrap();
        assert_ne!(v.fingerprint(), other.fingerprint());
    }

    #[test]
    fn construction_rejects_bad_parts() {
        let a = member("a", &[Role::Origin]);
        assert_eq!(
            ClusterView::new(cluster(), [a.clone(), a.clone()]),
            Err(ViewError::DuplicateMember(a.id.clone()))
        );
        assert_eq!(
            ClusterView::from_parts(cluster(), 0, [a.clone()], [NodeId::new("z").unwrap()]),
            Err(ViewError::UnknownSuspect(NodeId::new("z").unwrap()))
        );
        let mut no_roles = a;
        no_roles.roles = RoleSet::EMPTY;
        assert!(matches!(
            ClusterView::new(cluster(), [no_roles]),
            Err(ViewError::Member(MemberError::NoRoles(_)))
        ));
    }

    #[test]
    fn decode_rejects_bad_bytes() {
        let bytes = sample().encode();
        assert_eq!(ClusterView::decode(&[]), Err(ViewError::Empty));
        assert_eq!(
            ClusterView::decode(&[2, 0]),
            Err(ViewError::UnsupportedVersion(2))
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            ClusterView::decode(&trailing),
            Err(ViewError::TrailingBytes(1))
        );
        for len in 0..bytes.len() {
            assert!(ClusterView::decode(&bytes[..len]).is_err(), "prefix {len}");
        }
        assert!(matches!(
            ClusterView::decode(&vec![1; MAX_ENCODED_LEN + 1]),
            Err(ViewError::TooLong { .. })
        ));
        // A huge member count with no bytes behind it fails without allocating for it.
        let mut huge = vec![WIRE_VERSION, 1, b'a', 0];
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(ClusterView::decode(&huge).is_err());
        // An invalid node id inside an otherwise well-formed encoding.
        let wire = WireRef {
            version: WIRE_VERSION,
            cluster_id: &cluster(),
            epoch: 0,
            members: Vec::new(),
            suspected: Vec::new(),
        };
        let mut enc = postcard::to_allocvec(&wire).unwrap();
        enc.pop();
        enc.extend_from_slice(&[1, 3, b'a', b' ', b'b']);
        assert!(matches!(
            ClusterView::decode(&enc),
            Err(ViewError::Malformed(_))
        ));
    }
}
