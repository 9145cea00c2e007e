//! The `kraken/1` wire protocol and the swarm scheduler (not yet built).
//!
//! Will hold (issue "Transport"): length-prefixed postcard wire messages for RPC and piece
//! exchange; the sans-IO swarm state machine (`handle_*(now, ..)` in, `poll_*` out) that
//! picks pieces and peers; the tracker handout policy; and, behind the default `quic`
//! feature, the quinn endpoint, mutual-TLS identities, connection pool and RPC client.
//! Without default features it stays pure so `kraken-simnet` can drive the same code.
