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
//! - [`auth`]: the signed member record and `MemberAuth`, the trait that signs this node's
//!   record and verifies others' (implemented over TLS certificates by the transport
//!   crate).
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
//! readiness and weight are keys), with its certificate and its signature over the record
//! (see Security below); a node enters others' views only once that verifies. Heartbeats feed chitchat's phi-accrual failure detector;
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
//! Gossip is plain UDP. The cluster id keeps clusters that share a network apart (a node of
//! another cluster is answered "bad cluster" and never admitted), but it is not a secret.
//! Chitchat 0.13 keeps its envelope codec private, so no MAC can be layered under it;
//! membership is authenticated above it instead, per member record:
//!
//! - **Signed records.** Every ring node publishes its record (cluster id, node id,
//!   generation, roles, QUIC, HTTP and gossip addresses, version, readiness, weight) in a
//!   domain-separated canonical encoding ([`auth::signed_record`]), signed with the key of
//!   its cluster certificate, beside that certificate (chitchat keys `kraken.cert`,
//!   `kraken.sig`), and signs again whenever the record changes.
//! - **Admission.** A gossiped node enters the view, and so any ring, only once its
//!   certificate chains to the cluster CA now, the signature verifies with the
//!   certificate's key, and the certificate names the node id it claims (exactly, a DNS
//!   name or an IP address). The record binds the addresses the member is reached at: a
//!   copy with another address, generation or cluster does not verify. A node whose own
//!   certificate does not name its node id refuses to start, naming both.
//! - **No replays, no takeovers.** A generation lower than the highest admitted for a node
//!   id never replaces it; a newer state that fails verification does not evict the last
//!   verified record of that gossip identity, so rewriting a real member's gossip keys can
//!   neither remove it nor move it; states claiming this node's own id are ignored.
//! - **Bounded weight.** A claimed weight above `max_member_weight` is lowered to it.
//! - **Counted, rate-limited.** Refused records are counted by reason
//!   ([`gossip::GossipStats`], the node's `kraken_gossip_rejected_members_total`), each
//!   distinct record once; garbage datagrams and messages of other clusters are counted
//!   too. Each problem is logged at most once per node and reason (or per kind of
//!   datagram) a minute ([`gossip::LOG_INTERVAL`]), never once per datagram.
//! - Agents, proxies and `krakenctl` read views from ring nodes over mutually
//!   authenticated QUIC; those views carry admitted members only.
//!
//! What an attacker who can send datagrams to a gossip port **can still do**: read the
//! membership (gossip is not encrypted: ids, roles, addresses, certificates); spend
//! bandwidth, CPU (one signature check per distinct record) and memory (chitchat keeps any
//! node state it is sent until it is forgotten, `forget_dead_node_after`); forge
//! heartbeats of a real member, so a dead member stays on its rings longer (requests to it
//! fail over to the next owner), or freeze a real member's published state at its last
//! verified record (its later changes, such as leaving the rings while draining, are then
//! seen only when it restarts with a new generation). What it **cannot** do without a
//! certificate of the cluster CA naming the id it claims: join a ring, take a member's
//! keys, move data, or impersonate a node (every connection between nodes is also mutual
//! TLS against the same CA). Deploy the gossip port on a private network and firewall it
//! from agents and the outside. Malformed datagrams are dropped without disturbing the
//! cluster (tested).

pub mod auth;
pub mod member;
pub mod refresh;
pub mod ring;
pub mod view;

#[cfg(feature = "gossip")]
pub mod gossip;

pub use auth::{MemberAuth, RecordError, RejectReason, SignError};
pub use member::{Member, MemberError, NodeId, Role, RoleSet};
pub use refresh::{ViewRefreshConfig, ViewRefresher};
pub use ring::{DEFAULT_REPLICAS, Ring};
pub use view::{ClusterId, ClusterView, ViewError};

#[cfg(feature = "gossip")]
pub use gossip::{GossipCounters, GossipStats, Membership, MembershipConfig, MembershipError};

/// A configuration that cannot work, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {0}")]
pub struct ConfigError(pub String);
