//! The swarm simulator (not yet built).
//!
//! Will hold (issue "simnet"): a single-threaded discrete-event core (virtual clock, event heap
//! ordered by `(time, seq)`) that drives the real swarm state machine and tracker handout
//! from `kraken-transport` without default features over a modelled network, TOML scenarios,
//! and reports compared against the Kumar & Ross lower bound.
