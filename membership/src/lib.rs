//! Cluster membership (not yet built).
//!
//! Will hold (issue "Membership"): the pure rendezvous (highest-random-weight) ring that maps
//! a digest or tag to its owners among the live members of a role, and, behind the default
//! `gossip` feature, the chitchat driver that lets ring nodes find each other from one seed
//! and publishes a watchable `ClusterView`.
