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
//! - `quic` (feature `quic`, default): the network — quinn endpoints with mutual TLS, the
//!   connection pool, RPC and piece streams. It needs no local store, so clients
//!   (`krakenctl`) take this feature alone.
//! - `exchange` (feature `exchange`, default; implies `quic` and the storage crate's
//!   `local`): one tokio task per active blob driving its swarm over QUIC and the local
//!   CAS; watches that stream a blob's verified pieces while it downloads.
//! - `limit` (feature `quic`): `RateLimiter`, the async token bucket behind the exchange's
//!   egress and ingress bandwidth limits.
//!
//! Without default features the crate is exactly `wire` and `swarm`.

#[cfg(feature = "exchange")]
pub mod exchange;
#[cfg(feature = "quic")]
pub mod limit;
#[cfg(feature = "quic")]
pub mod quic;
pub mod swarm;
pub mod wire;
