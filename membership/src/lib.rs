//! Cluster membership for origins, trackers and build-index nodes: who is in the cluster,
//! and which of them own a given blob or tag.
//!
//! There are no static host lists: a ring node joins by knowing one seed address (an
//! `ip:port` or a `dns-name:port`), and the rings heal themselves as nodes come and go.
//!
//! Modules, bottom up:
//! - [`member`]: `NodeId`, `Role` (origin, tracker, build-index; agents are not ring
//!   members), `RoleSet` and `Member`, what a ring node publishes about itself.
//! - [`ring`]: `Ring`, weighted rendezvous (highest-random-weight) hashing of a digest, tag
//!   or raw key over the members of one role, giving an ordered owner list.
//! - [`view`]: `ClusterView`, the members as one node sees them, cheap to clone, with its
//!   compact postcard encoding for agents (decoding is bounded and never panics).
//! - [`refresh`]: `ViewRefresher`, the sans-IO policy by which agents (which do not gossip)
//!   refresh their view from a ring node, periodically and after errors.
//! - `gossip` (feature `gossip`, default): `Membership`, the chitchat driver that publishes
//!   this node's `Member`, runs phi-accrual failure detection, and keeps a `ClusterView`
//!   current in a tokio watch channel.
//!
//! Without default features the crate is pure (no tokio, no sockets, no clock): the simulator
//! and `krakenctl` compute exactly the owners the nodes compute.
//!
//! # Gossip protocol
//!
//! Chitchat (scuttlebutt anti-entropy over UDP). Every `gossip_interval` each node sends a
//! digest of all the node states it knows to up to three live nodes (plus, sometimes, a seed
//! and a dead node); the peer answers with what the sender lacks, and the sender with what
//! the peer lacks. Each node publishes its member record as key-values (node id and
//! generation are chitchat's node identity; roles, QUIC and HTTP addresses, version,
//! readiness and weight are keys). Heartbeats feed chitchat's phi-accrual failure detector;
//! a node it holds dead stays in the view, marked suspected and still on its rings, for
//! `dead_node_grace_period`, then leaves. A restarted node gossips under a higher
//! generation and replaces its old self in every view at once. Nodes that are not ready
//! (starting, or leaving via `Membership::shutdown`) are members but own no keys.
//!
//! # Supported size
//!
//! Tens to a few hundred ring nodes (`gossip::SUPPORTED_RING_NODES`
//! = 300). Chitchat sends the digest of *all* members in every round, in one UDP datagram
//! of at most 65,507 bytes (compressed with protocol V1), and the state it sends back must
//! fit in what is left. A datagram that large is ~45 IP fragments: losing any one loses the
//! round. Thousands of gossiping nodes would need another protocol; this is why agents
//! never gossip and read a `ClusterView` from any ring node instead.
//!
//! # Security
//!
//! Gossip is plain UDP with neither authentication nor encryption. The cluster id keeps
//! clusters that share a network apart (a node of another cluster is answered "bad
//! cluster" and never admitted), but it is not a secret and not authentication: anyone who
//! can send UDP datagrams to the gossip port can read the membership and inject or alter
//! members. Chitchat 0.13 offers no message authentication, and its wire codec is private
//! to the crate, so a keyed MAC cannot be added through its `Transport` trait either.
//! **Run gossip on a private network** (a dedicated VLAN/VPC, or WireGuard/IPsec between
//! ring nodes) and firewall the gossip port from agents and the outside. Everything else
//! between nodes travels over mutually authenticated QUIC, so a forged member can misroute
//! requests but cannot impersonate a node at the TLS layer. Malformed datagrams are dropped
//! by chitchat's decoder and do not disturb the cluster (tested).

pub mod member;
pub mod refresh;
pub mod ring;
pub mod view;

#[cfg(feature = "gossip")]
pub mod gossip;

pub use member::{Member, MemberError, NodeId, Role, RoleSet};
pub use refresh::{ViewRefreshConfig, ViewRefresher};
pub use ring::{DEFAULT_REPLICAS, Ring};
pub use view::{ClusterId, ClusterView, ViewError};

#[cfg(feature = "gossip")]
pub use gossip::{Membership, MembershipConfig, MembershipError};

/// A configuration that cannot work, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {0}")]
pub struct ConfigError(pub String);
