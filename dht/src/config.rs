//! [`DhtConfig`]: where the DHT listens, where its identity lives, how long records live,
//! and the bounds of its store and traffic.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Settings of one node's DHT. The defaults are tuned for clusters of 10 to 10,000 nodes
/// on a LAN, each providing up to a few thousand blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtConfig {
    /// UDP address of the libp2p QUIC listener. Default `0.0.0.0:0` (the node sets it;
    /// tests use port 0 on loopback).
    pub listen: SocketAddr,
    /// File of the node's libp2p ed25519 key (protobuf encoding), created with mode 0600
    /// on first start and reused after, so the node keeps its DHT identity across
    /// restarts. Default `dht.key` (relative: the node puts it in its data directory).
    pub identity_path: PathBuf,
    /// How long provider records and cards live at the nodes that store them. Default
    /// 3 h: three republish intervals, so a record survives two lost republications, and a
    /// node that died without saying so is forgotten within three hours (the swarm's
    /// handshake weeds out dead providers sooner).
    pub provider_ttl: Duration,
    /// How often a node re-provides its keys and republishes its card. Default 1 h: each
    /// republication costs one provide query per key (see the crate docs for the traffic).
    pub republish_interval: Duration,
    /// Value records (cards) held at most. Default 16,384: one card per node of a 10,000
    /// node cluster would fit even if all were stored here (they are spread over `k`).
    pub max_records: usize,
    /// Provider keys (digests) held at most for other nodes, and provided by this node
    /// at most (each). Default 16,384: a node holds about `k / n` of the cluster's keys,
    /// so this is far above need.
    pub max_provider_keys: usize,
    /// Other nodes' providers kept per key. Default 1,024. When a key is full, a
    /// newcomer replaces a random held provider (fresh providers are the ones still
    /// downloading), and each `GET_PROVIDERS` is answered with a fresh random 20 of them,
    /// so finders are spread over the swarm instead of all handed the same 20. The more a
    /// store holds, the more peers a swarm's finders are spread over: in simnet at 2,000
    /// hosts pulling at once, the slowest finishes at 3.6 × T_min with 256 per key, 2.45
    /// × with 1,024 and 2.2 × keeping all (see docs/performance.md). A full key costs about
    /// 400 KB; `max_provider_records` bounds the sum.
    pub max_providers_per_key: usize,
    /// Other nodes' provider records held at most, all keys together. Default 131,072:
    /// about 400 B each (a 120 B entry of peer id, expiry and address list, its
    /// addresses, about 70 B each and at most 4, and spare list capacity; up to about
    /// 530 B with 4 addresses), so the provider store stays near 50 MB (at most ~70 MB)
    /// however peers behave. When reached, a newcomer takes the place of a random record
    /// of the key holding the most. This node's own records are not counted (bounded by
    /// `max_provider_keys`) and never evicted.
    pub max_provider_records: usize,
    /// Outgoing lookups and provides started per second (token bucket, burst of one
    /// second). Excess provides wait in a bounded queue; excess lookups fail at once with
    /// [`DhtError::RateLimited`](crate::DhtError::RateLimited). Default 50.
    pub queries_per_sec: u32,
    /// Inbound store requests (`ADD_PROVIDER`, `PUT_VALUE`) handled per second from one
    /// remote peer (token bucket, burst of one second); the excess is dropped and counted.
    /// Default 100.
    pub inbound_per_sec: u32,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            identity_path: PathBuf::from("dht.key"),
            provider_ttl: Duration::from_secs(3 * 3600),
            republish_interval: Duration::from_secs(3600),
            max_records: 16_384,
            max_provider_keys: 16_384,
            max_providers_per_key: 1_024,
            max_provider_records: 131_072,
            queries_per_sec: 50,
            inbound_per_sec: 100,
        }
    }
}

/// Why a [`DhtConfig`] cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhtConfigError {
    /// A TTL of zero would expire every record as it is stored.
    #[error("dht provider_ttl must be positive")]
    ZeroTtl,
    /// Records would expire before they are republished.
    #[error(
        "dht republish_interval ({republish:?}) must be positive and shorter than provider_ttl ({ttl:?})"
    )]
    RepublishTooSlow {
        /// The republish interval.
        republish: Duration,
        /// The TTL.
        ttl: Duration,
    },
    /// A bound of zero would refuse everything.
    #[error("dht {0} must be at least 1")]
    ZeroBound(
        /// The setting.
        &'static str,
    ),
    /// No identity file.
    #[error("dht identity_path must not be empty")]
    NoIdentityPath,
}

impl DhtConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), DhtConfigError> {
        if self.provider_ttl.is_zero() {
            return Err(DhtConfigError::ZeroTtl);
        }
        if self.republish_interval.is_zero() || self.republish_interval >= self.provider_ttl {
            return Err(DhtConfigError::RepublishTooSlow {
                republish: self.republish_interval,
                ttl: self.provider_ttl,
            });
        }
        for (name, value) in [
            ("max_records", self.max_records),
            ("max_provider_keys", self.max_provider_keys),
            ("max_providers_per_key", self.max_providers_per_key),
            ("max_provider_records", self.max_provider_records),
            ("queries_per_sec", self.queries_per_sec as usize),
            ("inbound_per_sec", self.inbound_per_sec as usize),
        ] {
            if value == 0 {
                return Err(DhtConfigError::ZeroBound(name));
            }
        }
        if self.identity_path.as_os_str().is_empty() {
            return Err(DhtConfigError::NoIdentityPath);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_nonsense_is_rejected() {
        assert_eq!(DhtConfig::default().validate(), Ok(()));
        let bad = |f: fn(&mut DhtConfig)| {
            let mut c = DhtConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(
            bad(|c| c.provider_ttl = Duration::ZERO),
            DhtConfigError::ZeroTtl
        );
        assert!(matches!(
            bad(|c| c.republish_interval = c.provider_ttl),
            DhtConfigError::RepublishTooSlow { .. }
        ));
        assert!(matches!(
            bad(|c| c.republish_interval = Duration::ZERO),
            DhtConfigError::RepublishTooSlow { .. }
        ));
        assert_eq!(
            bad(|c| c.max_provider_keys = 0),
            DhtConfigError::ZeroBound("max_provider_keys")
        );
        assert_eq!(
            bad(|c| c.max_provider_records = 0),
            DhtConfigError::ZeroBound("max_provider_records")
        );
        assert_eq!(
            bad(|c| c.queries_per_sec = 0),
            DhtConfigError::ZeroBound("queries_per_sec")
        );
        assert_eq!(
            bad(|c| c.identity_path = PathBuf::new()),
            DhtConfigError::NoIdentityPath
        );
    }
}
