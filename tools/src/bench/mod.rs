//! `kraken-bench`: multi-host benchmarks of kraken on shaped links, with a plain-HTTP
//! baseline and the simulator's figure for the same setup.
//!
//! A run builds N test hosts as network namespaces on a bridge (each with its own address
//! and a `tc tbf` rate limit both ways), starts origins, a tracker, a build-index and
//! agents as separate `kraken` processes inside them, pushes a blob (or puts it into an
//! upstream registry the origin reads through), has every agent pull it at once, checks
//! every stored copy against the digest, and tears everything down even on failure. Then the same hosts fetch the same blob from one plain HTTP server,
//! and `simnet` simulates the setup. Needs root, `ip`, `tc`, `python3` and `curl`.
//!
//! - [`netns`]: the shaped network ([`netns::Testnet`], removed on drop; `down_all`).
//! - [`procs`]: `kraken` processes in namespaces, readiness, CPU time, kill/restart.
//! - [`cluster`]: dev CA, per-node TOML configs, starting the cluster.
//! - [`ctl`]: the control client that runs inside the control namespace (`ctl` subcommand).
//! - [`baseline`]: `python3 -m http.server` + concurrent `curl`.
//! - [`simnet`]: the calibration scenario and its figures.
//! - [`report`]: T_min, distributions, ratios, egress, CPU s/GB; table and JSON.
//! - [`run`]: one run start to finish, with faults ([`run::Fault`]).
//! - [`data`]: seeded pseudo-random blobs and stored-gzip layers, written fast.
//! - [`registry`]: `kraken-bench registry`, the registry edge (push, pulls, an image
//!   through skopeo) against Debian's docker-registry on loopback, no namespaces.
//! - [`campaign`]: `kraken-bench campaign`, a fault campaign on loopback: pushes and pulls
//!   while processes are killed, a disk filled, the backend stopped and pieces corrupted;
//!   then the invariants (nothing acknowledged lost, no wrong byte, no panic).
//! - [`upstream`]: `run --source upstream`, the blob read through by the origin from a
//!   docker-registry on its host instead of pushed; the registry's egress.
//!
//! # What is measured
//!
//! Completion time of an agent: from the moment the control client sends every agent its
//! `Pull` (all at once) to that agent's answer. Baseline: curl's `time_total`. Origin
//! egress: bytes sent on the origin hosts' links during the distribution (interface
//! counters, so QUIC and tracker overhead included). CPU: user + system seconds of every
//! `kraken` process during the distribution (baseline: server + curl), per 10^9 bytes
//! delivered. `T_min` uses the nominal link rates.

pub mod baseline;
pub mod campaign;
pub mod cluster;
pub mod ctl;
pub mod data;
pub mod netns;
pub mod procs;
pub mod registry;
pub mod report;
pub mod run;
pub mod simnet;
pub mod upstream;
