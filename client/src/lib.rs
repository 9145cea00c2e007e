//! The node RPC protocol and the client side of every call: what the nodes and `krakenctl`
//! share, without the server side.
//!
//! The `kraken-node` crate serves these calls (and re-exports [`proto`] and, as
//! `kraken_node::client`, [`cluster`], so its roles name them as before); `krakenctl` makes
//! them without linking the roles, their HTTP stack, backends, store or gossip.
//!
//! Modules:
//! - [`proto`]: every request and answer, and the errors a caller can act on.
//! - [`cluster`]: [`cluster::Cluster`], the connection pool and the cluster view every call
//!   goes through, with owner failover along a ring.
//! - [`download`]: the `Download` RPC's client: a blob (or a range of it) from one node,
//!   counted, with a stall timeout, and checked against its digest whenever the whole blob
//!   is read.
//! - [`metainfo`]: asking trackers or origins for a blob's metainfo, asking again while an
//!   origin reads the blob through from its backend, until a deadline.
//! - [`upload`]: the resumable upload's client ([`upload::push_file`]).
//! - [`ingest`]: the streaming ingest's client: a whole blob into an origin's store in one
//!   pass, from a file or as it arrives ([`ingest::ingest_file`], [`ingest::IngestCall`]).
//! - [`stall`]: the stall watchdog of blob sends: a receiver that makes no progress and
//!   answers no ping is given up within seconds, so a push moves to the next owner.
//! - [`preheat`]: walking an image (tag, manifest or index, children, layers) so its owning
//!   origins hold every blob, reading what they lack through from their backends.
//! - [`cluster_file`]: `cluster.json`, the file `kraken dev` writes for tools.

pub mod cluster;
pub mod cluster_file;
pub mod download;
pub mod ingest;
pub mod metainfo;
pub mod preheat;
pub mod proto;
pub mod stage;
pub mod stall;
pub mod upload;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testing;

pub use cluster::{CallError, Cluster, ORIGIN_REPLICAS};
