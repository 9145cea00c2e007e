//! Who a ring node is: `NodeId`, `Role`, `RoleSet` and `Member`, with their validation.
//!
//! A `Member` is what a ring node publishes about itself (through gossip, or in a
//! [`ClusterView`](crate::ClusterView) sent to agents). Everything here is plain data and
//! validated on construction and on decoding, because it crosses the network.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest accepted [`NodeId`], in bytes.
pub const MAX_NODE_ID_LEN: usize = 128;
/// Longest accepted [`Member::version`] string, in bytes.
pub const MAX_VERSION_LEN: usize = 64;

/// Why a node id, role or member is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// The node id is empty.
    #[error("node id is empty")]
    EmptyNodeId,
    /// The node id is longer than [`MAX_NODE_ID_LEN`].
    #[error("node id is {0} bytes long, more than the {MAX_NODE_ID_LEN} allowed")]
    NodeIdTooLong(usize),
    /// The node id has a character outside `[A-Za-z0-9._:@-]`.
    #[error("node id has invalid character {0:?} (allowed: ASCII letters, digits and . _ : @ -)")]
    NodeIdInvalidChar(char),
    /// A role name that is not `origin`, `tracker` or `build-index`.
    #[error("unknown role {0:?} (known: origin, tracker, build-index)")]
    UnknownRole(String),
    /// A member with no role at all.
    #[error("member {0} has no role")]
    NoRoles(NodeId),
    /// The version string is longer than [`MAX_VERSION_LEN`].
    #[error(
        "version string of member {id} is {len} bytes long, more than the {MAX_VERSION_LEN} allowed"
    )]
    VersionTooLong {
        /// The member.
        id: NodeId,
        /// Length seen.
        len: usize,
    },
    /// The version string has a control character or whitespace.
    #[error("version string of member {0} has a control or whitespace character")]
    VersionInvalidChar(NodeId),
    /// A QUIC address with port 0 or an unspecified IP cannot be dialled.
    #[error("member {id} advertises an undialable address {addr}")]
    UndialableAddr {
        /// The member.
        id: NodeId,
        /// The address.
        addr: SocketAddr,
    },
}

/// The identity of a ring node: stable across its restarts (the restart counter is
/// [`Member::generation`]).
///
/// 1 to [`MAX_NODE_ID_LEN`] bytes of `[A-Za-z0-9._:@-]`, so it is safe in logs, metrics
/// labels and gossip keys.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, MemberError> {
        let id = id.into();
        if id.is_empty() {
            return Err(MemberError::EmptyNodeId);
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(MemberError::NodeIdTooLong(id.len()));
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')))
        {
            return Err(MemberError::NodeIdInvalidChar(c));
        }
        Ok(NodeId(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = MemberError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        NodeId::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl FromStr for NodeId {
    type Err = MemberError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// A ring a node can be a member of. Agents are not ring members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Seeds blobs and owns them by rendezvous hash over the live origins.
    Origin,
    /// Remembers which peers hold which blob.
    Tracker,
    /// Owns tag → digest mappings.
    BuildIndex,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 3] = [Role::Origin, Role::Tracker, Role::BuildIndex];

    /// The role's name in config files and gossip: `origin`, `tracker`, `build-index`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Origin => "origin",
            Role::Tracker => "tracker",
            Role::BuildIndex => "build-index",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Role::Origin => 1,
            Role::Tracker => 2,
            Role::BuildIndex => 4,
        }
    }
}

impl FromStr for Role {
    type Err = MemberError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| MemberError::UnknownRole(s.chars().take(40).collect()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Role`]s, one bit each.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct RoleSet(u8);

impl RoleSet {
    /// No role.
    pub const EMPTY: RoleSet = RoleSet(0);

    /// The set holding exactly `roles`.
    pub fn of(roles: &[Role]) -> Self {
        roles.iter().copied().collect()
    }

    /// Whether `role` is in the set.
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Adds `role`.
    pub fn insert(&mut self, role: Role) {
        self.0 |= role.bit();
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles, in [`Role::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl FromIterator<Role> for RoleSet {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        let mut set = RoleSet::EMPTY;
        for r in iter {
            set.insert(r);
        }
        set
    }
}

impl TryFrom<u8> for RoleSet {
    type Error = MemberError;

    fn try_from(bits: u8) -> Result<Self, Self::Error> {
        if bits & !0b111 != 0 {
            return Err(MemberError::UnknownRole(format!("bits {bits:#010b}")));
        }
        Ok(RoleSet(bits))
    }
}

impl From<RoleSet> for u8 {
    fn from(set: RoleSet) -> u8 {
        set.0
    }
}

/// Comma-separated role names, e.g. `origin,tracker`.
impl fmt::Display for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(r.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoleSet({self})")
    }
}

/// Parses the [`Display`](fmt::Display) form; an empty string is the empty set.
impl FromStr for RoleSet {
    type Err = MemberError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(RoleSet::EMPTY);
        }
        s.split(',').map(Role::from_str).collect()
    }
}

/// What a ring node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Stable identity.
    pub id: NodeId,
    /// The rings this node is a member of.
    pub roles: RoleSet,
    /// Where other nodes and agents reach it over QUIC.
    pub quic_addr: SocketAddr,
    /// Its HTTP edge (health, metrics, registry API), if any.
    pub http_addr: Option<SocketAddr>,
    /// Restart counter: must grow on every restart, so the new incarnation replaces the old
    /// one everywhere (a persisted counter, or the start time in milliseconds).
    pub generation: u64,
    /// Software version, for rolling upgrades and `krakenctl`.
    pub version: String,
    /// Whether it serves requests; nodes that are not ready are members but own no keys.
    pub ready: bool,
    /// Relative share of keys to own on its rings (1 = normal, 0 = owns nothing, e.g. while
    /// draining).
    pub weight: u32,
}

impl Member {
    /// A ready member of weight 1 at generation 0 with this crate's version and no HTTP
    /// address.
    pub fn new(id: NodeId, roles: RoleSet, quic_addr: SocketAddr) -> Self {
        Member {
            id,
            roles,
            quic_addr,
            http_addr: None,
            generation: 0,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ready: true,
            weight: 1,
        }
    }

    /// Whether the member has `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(role)
    }

    /// Rejects members other nodes could not use. (The id is valid by construction.)
    pub fn validate(&self) -> Result<(), MemberError> {
        if self.roles.is_empty() {
            return Err(MemberError::NoRoles(self.id.clone()));
        }
        if self.version.len() > MAX_VERSION_LEN {
            return Err(MemberError::VersionTooLong {
                id: self.id.clone(),
                len: self.version.len(),
            });
        }
        if self
            .version
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(MemberError::VersionInvalidChar(self.id.clone()));
        }
        for addr in std::iter::once(&self.quic_addr).chain(self.http_addr.as_ref()) {
            if addr.port() == 0 || addr.ip().is_unspecified() {
                return Err(MemberError::UndialableAddr {
                    id: self.id.clone(),
                    addr: *addr,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_validation() {
        assert!(NodeId::new("origin-1.dc1:7000@x_y").is_ok());
        assert_eq!(NodeId::new(""), Err(MemberError::EmptyNodeId));
        assert_eq!(
            NodeId::new("a".repeat(MAX_NODE_ID_LEN + 1)),
            Err(MemberError::NodeIdTooLong(MAX_NODE_ID_LEN + 1))
        );
        assert_eq!(NodeId::new("a b"), Err(MemberError::NodeIdInvalidChar(' ')));
        assert_eq!(NodeId::new("a,b"), Err(MemberError::NodeIdInvalidChar(',')));
        assert!(NodeId::new("é").is_err());
    }

    #[test]
    fn roles_round_trip_through_text_and_bits() {
        let set = RoleSet::of(&[Role::BuildIndex, Role::Origin]);
        assert_eq!(set.to_string(), "origin,build-index");
        assert_eq!("origin,build-index".parse::<RoleSet>(), Ok(set));
        assert_eq!("".parse::<RoleSet>(), Ok(RoleSet::EMPTY));
        assert!("origin,agent".parse::<RoleSet>().is_err());
        assert_eq!(RoleSet::try_from(u8::from(set)), Ok(set));
        assert!(RoleSet::try_from(8).is_err());
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [Role::Origin, Role::BuildIndex]
        );
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
    }

    #[test]
    fn member_validation() {
        let id = NodeId::new("n1").unwrap();
        let m = Member::new(
            id.clone(),
            RoleSet::of(&[Role::Origin]),
            "127.0.0.1:4000".parse().unwrap(),
        );
        assert!(m.validate().is_ok());
        let mut bad = m.clone();
        bad.roles = RoleSet::EMPTY;
        assert_eq!(bad.validate(), Err(MemberError::NoRoles(id.clone())));
        let mut bad = m.clone();
        bad.version = "x".repeat(MAX_VERSION_LEN + 1);
        assert!(matches!(
            bad.validate(),
            Err(MemberError::VersionTooLong { .. })
        ));
        let mut bad = m.clone();
        bad.version = "1.0 beta".into();
        assert!(matches!(
            bad.validate(),
            Err(MemberError::VersionInvalidChar(_))
        ));
        let mut bad = m.clone();
        bad.quic_addr = "0.0.0.0:4000".parse().unwrap();
        assert!(matches!(
            bad.validate(),
            Err(MemberError::UndialableAddr { .. })
        ));
        let mut bad = m;
        bad.http_addr = Some("127.0.0.1:0".parse().unwrap());
        assert!(matches!(
            bad.validate(),
            Err(MemberError::UndialableAddr { .. })
        ));
    }
}
