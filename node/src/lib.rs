//! The node roles and the `kraken` daemon.
//!
//! A node is one QUIC endpoint and one or more roles (see `docs/architecture.md`):
//!
//! - [`origin`]: ring-owned seeding, streaming ingest and resumable uploads, read-through
//!   from backends (single flight), the durable write-back executor, replication and
//!   ring-change repair, scrubbing (re-verifying stored blobs, quarantine and restore).
//! - [`tracker`]: announces and handouts (transport's pure `PeerStore`), metainfo from the
//!   owning origins, an announce interval that grows under load.
//! - [`agent`]: pulls through the swarm with one download per digest however many callers,
//!   streaming before completion, bandwidth limits, and a report of where the bytes came from;
//!   [`bad_pieces`]: telling an origin that sent a bad piece to check its copy.
//! - [`buildindex`]: durable tags with dependency checks, write-through to backends, and a
//!   durable replication queue to the other owners and to remote clusters; tags of
//!   repositories that mirror an upstream registry resolve there, cached.
//! - [`mirror`]: what the roles share about repositories routed to an upstream registry:
//!   writes refused, the upstream's refusals carried to the client.
//!   [`verified`] remembers which stored copies were checked against their digests since
//!   their files last changed, so warm reads hash a copy once, not every time.
//! - [`purge`]: removing one blob from the whole cluster (origins' stores and backends,
//!   trackers, a build-index tombstone), the primitive under registry `DELETE` and garbage
//!   collection; [`tombstones`]: agents polling those tombstones and evicting their copies.
//!
//! Around them: [`proto`] (the RPC messages) and [`client`] (calls with owner failover),
//! both from the `kraken-client` crate that `krakenctl` shares,
//! [`service`] (routing incoming streams to roles), [`view`] (agents' view refresh),
//! [`registry`] (the registry gateway over the cluster), [`push`] (its blob writes) and
//! `referrers` (its referrers calls to the build-index),
//! [`notify`] (push notifications on the proxy, preheated through `kraken_client::preheat`),
//! [`discovery`] (where agents find peers: trackers, the Kademlia DHT, or both),
//! [`config`] (the TOML file), [`node`] (start and stop), [`http`] and [`metrics`]
//! (health, readiness, Prometheus), [`dev`] (`kraken dev`: a whole cluster in one process).

pub mod agent;
pub mod bad_pieces;
pub mod bounded;
pub mod bridge;
pub mod buildindex;
pub mod certs;
pub mod config;
pub mod dev;
pub mod discovery;
pub mod fetch;
mod flight;
pub mod http;
pub mod metrics;
pub mod mirror;
pub mod node;
pub mod notify;
pub mod origin;
pub mod origin_peers;
pub mod purge;
pub mod push;
mod referrers;
pub mod registry;
pub mod serve;
pub mod service;
pub mod tombstones;
pub mod tracker;
pub mod upstream;
pub mod verified;
pub mod view;

pub use config::{NodeConfig, NodeRole};
/// The RPC protocol and the client side of calls live in `kraken-client` (so `krakenctl`
/// links no server side); the roles name them here as before.
pub use kraken_client::{cluster as client, proto};
pub use node::{Node, StartError};

/// Spawns `task` in the caller's span. Tokio tasks do not inherit it, and every line a node
/// logs must carry its `node` span (and a request's, where one started the task).
pub(crate) fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument as _;
    tokio::spawn(task.in_current_span())
}
