//! Operator tools (not yet built).
//!
//! Will hold (issues "krakenctl" and "Multi-host benchmarks"): the `krakenctl` command-line
//! client that inspects and operates a cluster over QUIC, and the harness that runs real
//! `kraken` processes in shaped network namespaces and compares them with a plain registry.
