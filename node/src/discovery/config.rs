//! `[discovery]`: where an agent finds peers (the tracker ring, the DHT, or both), and the
//! DHT's own settings, passed through to `kraken_dht::DhtConfig`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::Mode;

/// `[discovery]` in a node's config (agents and origins read it; other roles ignore it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// `tracker` (default), `dht` or `both`.
    pub mode: Mode,
    /// While tracker mode is fallen back to the DHT, how often one announce tries the
    /// trackers again, seconds.
    pub tracker_retry_secs: u64,
    /// Announce interval of a DHT-sourced handout while the blob is incomplete, ms.
    pub dht_interval_ms: u64,
    /// Announce interval of a DHT-sourced handout once the blob is complete, seconds.
    pub dht_complete_interval_secs: u64,
    /// Most DHT providers one handout names (the owning origins come on top).
    pub dht_max_peers: usize,
    /// Longest one provider lookup may take, ms.
    pub dht_lookup_timeout_ms: u64,
    /// UDP address of the DHT's libp2p QUIC listener (port 0: any free port). Default:
    /// `quic.listen`'s host, port `quic.listen`'s + 3 (7603 next to QUIC's 7600, gossip's
    /// 7601), or any free port when QUIC's is 0. Peers reach it at the node's advertised
    /// QUIC host with this port.
    pub dht_listen: Option<SocketAddr>,
    /// How long a provider record lives in the DHT without a republish, seconds.
    pub dht_provider_ttl_secs: u64,
    /// How often a node republishes the records it provides, seconds (below the TTL).
    pub dht_republish_secs: u64,
    /// Most records (of any kind) one node's DHT store holds.
    pub dht_max_records: usize,
    /// Most digests one node's store holds provider records of.
    pub dht_max_provider_keys: usize,
    /// Most providers one node's store keeps per digest (others' records; a full digest
    /// takes a newcomer in place of a random held provider).
    pub dht_max_providers_per_key: usize,
    /// Most provider records of other nodes one node's store holds in all (about 400 B
    /// each).
    pub dht_max_provider_records: usize,
    /// Most DHT queries this node starts per second (lookups and publishes).
    pub dht_queries_per_sec: u32,
    /// Most inbound DHT store requests this node handles per second from one remote peer;
    /// the rest are dropped and counted.
    pub dht_inbound_per_sec: u32,
}

/// How far above the QUIC port the DHT listens by default (7600 → 7603: gossip has 7601, the HTTP endpoint TCP 7602).
pub const DHT_PORT_OFFSET: u16 = 3;

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            mode: Mode::Tracker,
            tracker_retry_secs: 5,
            dht_interval_ms: 2000,
            dht_complete_interval_secs: 30,
            dht_max_peers: 30,
            dht_lookup_timeout_ms: 3000,
            dht_listen: None,
            dht_provider_ttl_secs: 3 * 3600,
            dht_republish_secs: 3600,
            dht_max_records: 16_384,
            dht_max_provider_keys: 65_536,
            dht_max_providers_per_key: 1024,
            dht_max_provider_records: 131_072,
            dht_queries_per_sec: 50,
            dht_inbound_per_sec: 100,
        }
    }
}

/// Why a [`DiscoveryConfig`] cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryConfigError {
    /// An interval, timeout, bound or rate is 0.
    #[error("{0} must be above 0")]
    Zero(&'static str),
    /// Records would expire before they are republished.
    #[error(
        "dht_republish_secs ({republish}) must be below dht_provider_ttl_secs ({ttl}): records would expire between republishes"
    )]
    RepublishAfterExpiry {
        /// `dht_republish_secs`.
        republish: u64,
        /// `dht_provider_ttl_secs`.
        ttl: u64,
    },
}

impl DiscoveryConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), DiscoveryConfigError> {
        let zero = [
            ("tracker_retry_secs", self.tracker_retry_secs == 0),
            ("dht_interval_ms", self.dht_interval_ms == 0),
            (
                "dht_complete_interval_secs",
                self.dht_complete_interval_secs == 0,
            ),
            ("dht_max_peers", self.dht_max_peers == 0),
            ("dht_lookup_timeout_ms", self.dht_lookup_timeout_ms == 0),
            ("dht_provider_ttl_secs", self.dht_provider_ttl_secs == 0),
            ("dht_republish_secs", self.dht_republish_secs == 0),
            ("dht_max_records", self.dht_max_records == 0),
            ("dht_max_provider_keys", self.dht_max_provider_keys == 0),
            (
                "dht_max_providers_per_key",
                self.dht_max_providers_per_key == 0,
            ),
            (
                "dht_max_provider_records",
                self.dht_max_provider_records == 0,
            ),
            ("dht_queries_per_sec", self.dht_queries_per_sec == 0),
            ("dht_inbound_per_sec", self.dht_inbound_per_sec == 0),
        ];
        if let Some((key, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(DiscoveryConfigError::Zero(key));
        }
        if self.dht_republish_secs >= self.dht_provider_ttl_secs {
            return Err(DiscoveryConfigError::RepublishAfterExpiry {
                republish: self.dht_republish_secs,
                ttl: self.dht_provider_ttl_secs,
            });
        }
        Ok(())
    }

    /// Where the DHT listens: `dht_listen`, else next to `quic_listen` (see the key).
    pub fn dht_listen(&self, quic_listen: SocketAddr) -> SocketAddr {
        self.dht_listen.unwrap_or_else(|| {
            let mut a = quic_listen;
            if a.port() != 0 {
                a.set_port(a.port().saturating_add(DHT_PORT_OFFSET));
            }
            a
        })
    }

    /// How often a fallen-back node retries the trackers.
    pub fn tracker_retry(&self) -> Duration {
        Duration::from_secs(self.tracker_retry_secs)
    }

    /// Where the DHT identity (its libp2p key) is kept: `<data_dir>/dht/identity.key`.
    pub fn identity_path(data_dir: &Path) -> std::path::PathBuf {
        data_dir.join("dht").join("identity.key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_validate_and_read_from_toml() {
        DiscoveryConfig::default().validate().unwrap();
        let c: DiscoveryConfig =
            toml::from_str("mode = \"dht\"\ndht_listen = \"127.0.0.1:0\"").unwrap();
        assert_eq!(c.mode, Mode::Dht);
        assert_eq!(
            c.dht_listen,
            Some("127.0.0.1:0".parse().unwrap()),
            "port 0 is allowed"
        );
        let d = DiscoveryConfig::default();
        assert_eq!(
            d.dht_listen("0.0.0.0:7600".parse().unwrap()),
            "0.0.0.0:7603".parse().unwrap()
        );
        assert_eq!(
            d.dht_listen("127.0.0.1:0".parse().unwrap()),
            "127.0.0.1:0".parse().unwrap()
        );
        c.validate().unwrap();
        let c: DiscoveryConfig = toml::from_str("mode = \"both\"").unwrap();
        assert_eq!(c.mode, Mode::Both);
        assert!(toml::from_str::<DiscoveryConfig>("mode = \"gossip\"").is_err());
        assert!(
            toml::from_str::<DiscoveryConfig>("seeds = []").is_err(),
            "no seed key"
        );
    }

    #[test]
    fn zeros_and_a_republish_past_the_ttl_are_refused() {
        let c = DiscoveryConfig {
            dht_max_records: 0,
            ..DiscoveryConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(DiscoveryConfigError::Zero("dht_max_records"))
        );
        let c = DiscoveryConfig {
            dht_republish_secs: 100,
            dht_provider_ttl_secs: 100,
            ..DiscoveryConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(DiscoveryConfigError::RepublishAfterExpiry { .. })
        ));
    }
}
