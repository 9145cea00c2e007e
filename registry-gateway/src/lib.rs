//! The registry HTTP edge (not yet built).
//!
//! Will hold (issue "Registry gateway"): an axum server for the Docker Registry v2 / OCI
//! distribution API (pull, push, content discovery and management, with the spec's error
//! bodies and headers), written against traits that `kraken-node` implements with QUIC
//! requests to the cluster, so this crate knows nothing of QUIC or roles.
