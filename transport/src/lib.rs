//! The `kraken/1` QUIC piece-exchange protocol and the sans-IO swarm.
//!
//! Modules:
//! - [`wire`]: length-prefixed postcard frames and the protocol's messages (pure).
//! - [`swarm`]: the per-blob swarm state machine — which peers to connect to, which piece
//!   to request from whom, what to serve, whom to blacklist — in the style of quinn-proto:
//!   `handle_*(now, ..)` in, `poll_*` out, one `poll_timeout()`, randomness from a seeded
//!   RNG. No I/O, no clock, no tokio: the node drives it over QUIC and `kraken-simnet`
//!   drives the very same code over a simulated network.
//!
//! Without default features the crate is exactly these two modules.

pub mod swarm;
pub mod wire;
