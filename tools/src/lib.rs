//! Operator tools: `krakenctl`, the command-line client that inspects and operates a
//! cluster over QUIC, and `kraken-bench`, the multi-host benchmark harness on shaped
//! network namespaces ([`bench`]).
//!
//! `krakenctl` connects with an admin client certificate signed by the cluster CA (or the
//! dev CA of `kraken dev`) to one seed — any origin or tracker — reads the cluster view
//! from it, and reaches every other node from the view. No static host list is needed.
//! The binary (`src/bin/krakenctl.rs`) only parses the command line and maps errors to
//! exit codes; everything else is in these modules, so tests can drive it:
//!
//! - [`cli`]: the clap command line and [`cli::run`], which checks arguments before
//!   dialling anything, then connects and dispatches.
//! - [`settings`]: where to connect — flags and `KRAKEN_*` variables, `--cluster
//!   DIR/cluster.json` (what `kraken dev` writes), and `~/.config/krakenctl.toml`.
//! - [`client`]: the QUIC endpoint, connection pool and `kraken_client` `Cluster` over the
//!   fetched view; pings and peer naming.
//! - Commands: [`members`] (the view, with health), [`ring`] (owners of a digest or tag),
//!   [`blob`] (`blob stat`, `blob peers`), [`blob_dht`] (`blob peers --dht`), [`transfer`] (`push`, `pull`), [`pull_report`],
//!   [`writeback`], [`repair`] (an anti-entropy pass now on every origin), and
//!   [`build_index`] (`tag get|put|ls|history`, `repos`,
//!   `replication`; exit 6 in a cluster without build-index nodes), [`preheat`] (owning
//!   origins fetch images from their backends), [`gc`] (garbage collection).
//! - [`output`] (tables, sizes, stdout that tolerates a closed pipe), [`progress`]
//!   (indicatif on a terminal, silence in a pipe), [`error`] (exit codes).
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | other error |
//! | 2 | usage: bad flags (clap), or no CA, certificate or seed given |
//! | 3 | the seed or another node could not be reached |
//! | 4 | bad digest, tag, address, file or other argument |
//! | 5 | not found: no origin holds the blob, unknown tag or repository, no pull on record, `NotFound` from a node |
//! | 6 | not available in this cluster: no build-index |
//!
//! Errors are one line on stderr, `krakenctl: <message>`. Tables go to stdout; `--json`
//! prints JSON instead. Progress bars are drawn on stderr only when it is a terminal.

pub mod bench;
pub mod blob;
pub mod blob_dht;
pub mod build_index;
pub mod cli;
pub mod client;
pub mod error;
pub mod gc;
pub mod members;
pub mod output;
pub mod preheat;
pub mod progress;
pub mod pull_report;
pub mod repair;
pub mod ring;
pub mod settings;
pub mod transfer;
pub mod writeback;

pub use cli::{Cli, run};
pub use error::{CtlError, exit};
