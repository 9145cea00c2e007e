//! Trackerless discovery: a Kademlia DHT (`libp2p-kad` on a libp2p swarm over QUIC) in which
//! agents and origins provide the blob digests they hold, and find who else does.
//!
//! # Modules
//! - [`config`]: [`DhtConfig`], its defaults and `validate()`.
//! - [`card`]: signed cards binding a DHT identity to a kraken identity (pure).
//! - [`limits`]: token buckets (pure).
//! - `identity`: the persisted libp2p key.
//! - `driver`: the task owning the libp2p swarm; every [`Dht`] handle talks to it. Its
//!   `lookup` submodule resolves providers to verified cards, `inbound` filters what
//!   others store here.
//! - `store`: the record store Kademlia runs on: cards in libp2p's `MemoryStore`,
//!   provider records in a bounded table of our own answering with random samples.
//! - `stats`: [`DhtStats`].
//!
//! # Design
//! Every node runs Kademlia in server mode under the protocol name `/kraken/kad/1` (so it
//! never joins a public DHT), on libp2p's QUIC transport (rustls with ring, the project's
//! one crypto provider), listening on [`DhtConfig::listen`]. Its libp2p identity is an
//! ed25519 key persisted at [`DhtConfig::identity_path`]. It bootstraps from the peers the
//! node already knows through membership ([`Dht::add_bootstrap`]): no seed setting.
//!
//! A blob is found through a Kademlia *provider record* at the key
//! `kraken-blob/<digest>`. Provider records carry only a libp2p peer id, so each node also
//! publishes a **card** (see [`card`]): a Kademlia value record at
//! `kraken-card/<libp2p peer id>` stating its kraken peer id, kraken QUIC address and kind,
//! signed with the key of its **cluster certificate** (the one its QUIC endpoint presents),
//! the chain attached. A reader accepts a provider only with a card that verifies: chain
//! to the cluster CA, signature, kraken peer id equal to the certificate's, and libp2p
//! peer id equal to the provider's (a card replayed under another provider record fails).
//! A node therefore cannot claim another node's kraken identity; the only lie left is a
//! wrong address, which the kraken QUIC handshake disproves (the caller then calls
//! [`Dht::report_liar`]). Why cards rather than checking at the handshake alone: a
//! handshake can only tell that the address is wrong, not who lied, while a card makes
//! every claim attributable to a cluster member before anyone dials.
//!
//! Inbound stores are filtered (`StoreInserts::FilterBoth`): a value record is stored only
//! if it is a card that verifies and is sent by its owner; a provider record only if its
//! key is a blob key, its provider is its sender (Kademlia checks), and the store bounds
//! and the sender's rate limit allow. A record that fails verification is dropped and
//! counted, and its sender blacklisted: its connections are closed, its records and cards
//! ignored from then on.
//!
//! # Parameters and their cost
//! - `k` (replication factor and bucket size) = 20, α (parallelism) = 3: Kademlia's own
//!   values. A lookup contacts about α·log₂(n/k) + k nodes: 20 to 40 messages at n = 10 to
//!   10,000 nodes, finishing in 2 to 4 round trips on a LAN; 20 copies of each record
//!   survive the loss of most of them between two republications.
//! - [`DhtConfig::republish_interval`] (1 h): a node re-provides each of its keys and
//!   republishes its card this often. [`DhtConfig::provider_ttl`] (3 h): records and cards
//!   expire this long after their last publication at the nodes that store them.
//! - Traffic per node and hour for `N` provided keys: `N · (3600 s / republish) · (L + k)`
//!   messages, `L` ≈ α·log₂(n/k) lookup requests of about 1.3 KB answered (20 peers) plus
//!   `k` `ADD_PROVIDER` of about 200 B: about `N · 20 KB` per hour at n = 1,000 (1,000 keys:
//!   20 MB/h, 5.6 KB/s), plus one card (about 1 KB) to `k` nodes per interval.
//! - Memory of the store: provider records held at a node ≈ `Σ_keys min(providers,
//!   max_providers_per_key) · k / n` (each node holds its share of the `k` copies), about
//!   400 B each (peer id, expiry, at most 4 addresses of at most 64 B, the key's share
//!   and map overhead); bounded by `max_provider_records · 400 B` (131,072 · 400 B ≈
//!   52 MB; ~70 MB if every record carried 4 addresses) however peers behave, plus this
//!   node's own records (at most `max_provider_keys`, about 200 B each). Cards: at most `max_records` of about 1 KB.
//! - The provider store (module `store`) keeps up to `max_providers_per_key` (1,024)
//!   providers per key; a newcomer to a full key replaces a random one, and every
//!   `GET_PROVIDERS` is answered with a fresh uniform random sample of `k` (20), so
//!   finders of a hot blob are spread over its swarm. An answer of 20 providers with
//!   their (bounded) addresses and 20 closer peers stays under 13 KB, below
//!   [`MAX_PACKET_BYTES`].
//! - Rate limits: [`DhtConfig::queries_per_sec`] bounds the lookups and provides a node
//!   starts (a node can republish at most `queries_per_sec · republish` keys per interval:
//!   180,000 at the defaults), [`DhtConfig::inbound_per_sec`] the stores one peer may make
//!   here. Kademlia answers reads (`FIND_NODE`, `GET_*`) itself, bounded by its handler (32
//!   streams per connection) and [`MAX_PACKET_BYTES`].

pub mod card;
pub mod config;
mod driver;
mod identity;
pub mod limits;
mod stats;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kraken_storage::Digest;
use kraken_transport::quic::{ClusterCa, NodeIdentity, TlsError};
use kraken_transport::swarm::PeerKind;
use kraken_transport::wire::PeerId;
use tokio::sync::{mpsc, oneshot};

pub use card::CardError;
pub use config::{DhtConfig, DhtConfigError};
pub use driver::PROTOCOL;
pub use stats::DhtStats;

/// Largest Kademlia message accepted (a card is at most [`card::MAX_CARD_BYTES`]).
pub const MAX_PACKET_BYTES: usize = 16 * 1024;

/// What a provider key starts with.
const PROVIDER_KEY_PREFIX: &str = "kraken-blob/";

/// The Kademlia key of a blob's provider records: `kraken-blob/<digest>`.
pub fn provider_key(digest: &Digest) -> Vec<u8> {
    format!("{PROVIDER_KEY_PREFIX}{digest}").into_bytes()
}

/// The digest a provider key names, if it is one.
pub fn digest_of_key(key: &[u8]) -> Option<Digest> {
    let rest = key.strip_prefix(PROVIDER_KEY_PREFIX.as_bytes())?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// What this node says about itself in its card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalCard {
    /// Its kraken peer id (from its cluster certificate; checked at start).
    pub peer: PeerId,
    /// Its kraken QUIC address.
    pub addr: SocketAddr,
    /// Agent or origin.
    pub kind: PeerKind,
}

/// A verified provider of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// Its kraken peer id (its card's signer).
    pub peer: PeerId,
    /// Its kraken QUIC address, as its card says.
    pub addr: SocketAddr,
    /// Agent or origin.
    pub kind: PeerKind,
    /// Its libp2p peer id (base58), for [`Dht::report_liar`].
    pub dht_peer: String,
}

/// Why the DHT failed.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] DhtConfigError),
    /// The identity file could not be read or written.
    #[error("failed to {op} the dht identity {path}: {source}")]
    Identity {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The identity file does not hold a libp2p key.
    #[error("{path} is not a libp2p key: {reason}")]
    BadIdentity {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        reason: String,
    },
    /// The node's cluster identity cannot sign cards.
    #[error("the node identity cannot sign dht cards: {0}")]
    Tls(#[from] TlsError),
    /// The card of [`LocalCard`] names another peer than the identity's certificate.
    #[error("the local card's peer id is not the identity's")]
    WrongLocalPeer,
    /// This node's card could not be made.
    #[error(transparent)]
    Card(#[from] CardError),
    /// The libp2p swarm could not be built or could not listen.
    #[error("dht transport: {0}")]
    Transport(String),
    /// Too many lookups per second ([`DhtConfig::queries_per_sec`]).
    #[error("dht lookup refused: rate limit reached")]
    RateLimited,
    /// The lookup found no verified provider before its deadline.
    #[error("dht lookup timed out")]
    Timeout,
    /// The DHT has been shut down.
    #[error("the dht is stopped")]
    Stopped,
}

/// A handle to a running DHT; cheap to clone. The DHT stops when [`Dht::shutdown`] is
/// called or every handle is dropped.
#[derive(Clone)]
pub struct Dht {
    commands: mpsc::UnboundedSender<driver::Command>,
    listen_addr: SocketAddr,
    dht_peer_id: String,
    stats: Arc<stats::StatsCells>,
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht")
            .field("listen_addr", &self.listen_addr)
            .field("dht_peer_id", &self.dht_peer_id)
            .finish_non_exhaustive()
    }
}

impl Dht {
    /// Starts the DHT of the node holding `identity` in the cluster of `ca`: loads or
    /// creates the libp2p key, listens, publishes this node's card (again once it has
    /// peers). Fails on a bad configuration, identity or listen address.
    pub async fn start(
        config: DhtConfig,
        me: LocalCard,
        identity: &NodeIdentity,
        ca: &ClusterCa,
    ) -> Result<Dht, DhtError> {
        config.validate()?;
        if me.peer != identity.peer_id {
            return Err(DhtError::WrongLocalPeer);
        }
        let started = driver::start(config, me, identity, ca).await?;
        Ok(Dht {
            commands: started.commands,
            listen_addr: started.listen_addr,
            dht_peer_id: started.dht_peer_id,
            stats: started.stats,
        })
    }

    /// The UDP address the DHT listens on (the actual port when configured with 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// This node's libp2p peer id (base58).
    pub fn dht_peer_id(&self) -> String {
        self.dht_peer_id.clone()
    }

    fn send(&self, command: driver::Command) {
        // A stopped driver has nothing to do with it; the caller learns of the stop from
        // the calls that answer.
        let _ = self.commands.send(command);
    }

    /// Adds peers (libp2p peer id, DHT address) to the routing table, dials them and
    /// bootstraps. Idempotent; call again when membership changes. Unparsable ids are
    /// skipped.
    pub fn add_bootstrap(&self, peers: Vec<(String, SocketAddr)>) {
        self.send(driver::Command::AddBootstrap(peers));
    }

    /// Provides `digest` from now on (republished every interval). Idempotent. Provides
    /// start at most [`DhtConfig::queries_per_sec`] a second; up to 4,096 wait, and one
    /// beyond is dropped (counted in [`DhtStats::provides_dropped`]; calling `provide`
    /// again later retries it). A key provided while no peer is known is announced when the
    /// first bootstrap with peers is over.
    pub fn provide(&self, digest: Digest) {
        self.send(driver::Command::Provide(digest));
    }

    /// Stops providing `digest` (the records at others expire with their TTL).
    pub fn stop_providing(&self, digest: Digest) {
        self.send(driver::Command::StopProviding(digest));
    }

    /// Up to `limit` verified providers of `digest`, this node excluded. Answers once
    /// `limit` are found, the lookup is over, or `timeout` passes with some found;
    /// [`DhtError::Timeout`] if it passes with none, [`DhtError::RateLimited`] at once when
    /// over [`DhtConfig::queries_per_sec`].
    pub async fn find_providers(
        &self,
        digest: Digest,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<Provider>, DhtError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(driver::Command::FindProviders {
                digest,
                limit: limit.max(1),
                timeout,
                reply,
            })
            .map_err(|_| DhtError::Stopped)?;
        answer.await.map_err(|_| DhtError::Stopped)?
    }

    /// Blacklists a DHT peer (base58) that lied, e.g. whose card's address led to another
    /// kraken peer: its records and card are ignored and dropped, its connections closed.
    pub fn report_liar(&self, dht_peer: &str) {
        self.send(driver::Command::ReportLiar(dht_peer.to_owned()));
    }

    /// The DHT peers (base58) blacklisted, oldest first; empty once stopped.
    pub async fn blacklisted(&self) -> Vec<String> {
        let (reply, answer) = oneshot::channel();
        self.send(driver::Command::Blacklisted(reply));
        answer.await.unwrap_or_default()
    }

    /// The DHT's counters and gauges.
    pub fn stats(&self) -> DhtStats {
        self.stats.snapshot()
    }

    /// Stops the DHT and waits for its task to end (every handle then answers
    /// [`DhtError::Stopped`]).
    pub async fn shutdown(self) {
        let (ack, done) = oneshot::channel();
        if self.commands.send(driver::Command::Shutdown(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_keys_round_trip_and_reject_garbage() {
        let d = Digest::sha256_of(b"blob");
        assert_eq!(digest_of_key(&provider_key(&d)), Some(d));
        assert_eq!(digest_of_key(b"kraken-blob/sha256:zz"), None);
        assert_eq!(digest_of_key(b"other"), None);
        assert_eq!(digest_of_key(&[0xff; 40]), None);
    }
}
