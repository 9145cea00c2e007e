//! The node roles and the `kraken` daemon (not yet built).
//!
//! Will hold (issues "Node" and "Build-index"): the origin (ring-owned seeding, read-through,
//! write-back, self-healing), the tracker (announce and handout), the agent (P2P download and
//! seeding behind the registry gateway), the build-index (durable tags and cross-cluster
//! replication), the `kraken` binary and `kraken dev`, which runs a whole local cluster.
