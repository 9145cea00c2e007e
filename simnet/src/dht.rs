//! The DHT discovery model: what a Kademlia (libp2p-kad) provider lookup costs and
//! returns, next to the tracker's handout.
//!
//! Pure and deterministic: lookup delays and answer samples are drawn from the caller's
//! seeded RNG, and the provider store is one logical store per blob (as the trackers are
//! one logical peer store).
//!
//! What is modelled (see [`DhtConfig`] for the settings):
//! - **Lookup delay**: a Kademlia lookup over `N` nodes takes about `⌈log2(N) / α⌉`
//!   rounds of one round trip each ([`LookupDelay::Kademlia`]), or a configured uniform
//!   distribution ([`LookupDelay::Uniform`]).
//! - **Provides**: an agent provides the blob once it holds `provide_after_pieces`
//!   verified pieces (default 1; 0 provides on arrival, as a tracker announce does); the record
//!   becomes visible one lookup delay later (a provide first looks up the closest nodes,
//!   then stores), expires `record_ttl_s` after it was stored, and is republished every
//!   `republish_interval_s` while the host lives. A dead host stops republishing; its
//!   record lingers until it expires (dials to it fail, as they would).
//! - **The store**: each key's store keeps at most `store_max_providers` records. When
//!   it is full ([`WhenFull`]), a new provider is either ignored, first come first kept
//!   (libp2p-kad 0.48's `MemoryStore`, the version libp2p 0.56 uses, against Sybil
//!   floods; a slot frees only when a record expires), or replaces a random held record
//!   (`kraken-dht`'s own store). Expired records always go first.
//! - **Lookup answers**: at most `k` of the held providers ([`Answer`]): the first `k`
//!   held, the same for every asker (libp2p-kad answers `GET_PROVIDERS` with the store's
//!   providers in order, cut at the replication factor), or a random sample, a fresh one
//!   per lookup (`kraken-dht`'s own store).
//!
//! Not modelled: routing-table churn, per-node store differences (every node among the
//! `k` closest holds the same records), DHT traffic's bandwidth, lookups that fail.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::{Deserialize, Serialize};

use crate::net::Nanos;

/// How hosts find peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Discovery {
    /// Announces to the trackers, which answer with a handout. The default.
    #[default]
    Tracker,
    /// Provider records in a Kademlia DHT, looked up while incomplete.
    Dht,
}

impl Discovery {
    /// The name used in scenario files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Discovery::Tracker => "tracker",
            Discovery::Dht => "dht",
        }
    }
}

/// The `[dht]` table: the DHT's settings (used when `discovery = "dht"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DhtConfig {
    /// Most providers a lookup returns (Kademlia's `k`). Default: 20 (libp2p-kad's
    /// `K_VALUE`).
    pub k: usize,
    /// Lookup parallelism (Kademlia's `α`). Default: 3.
    pub alpha: usize,
    /// Most provider records a store keeps per key. Default: 20 (libp2p-kad's
    /// `MemoryStoreConfig::max_providers_per_key`).
    pub store_max_providers: usize,
    /// What a full store does with a new provider. Default: `"ignore"` (libp2p-kad's).
    pub when_full: WhenFull,
    /// Which `k` of the held providers a lookup returns. Default: `"first"`
    /// (libp2p-kad's).
    pub answer: Answer,
    /// How long a lookup (and a provide) takes. Default: `{ model = "kademlia" }`.
    pub lookup: LookupDelay,
    /// A record is forgotten this long after it was stored, seconds. Default: 172,800
    /// (48 h, libp2p-kad's `provider_record_ttl`).
    pub record_ttl_s: f64,
    /// A provider stores its record again this often, seconds; below the TTL.
    /// Default: 43,200 (12 h, libp2p-kad's `provider_publication_interval`).
    pub republish_interval_s: f64,
    /// An incomplete host looks up providers again this often, seconds (the tracker
    /// mode's announce interval's counterpart). Default: 2.
    pub relookup_interval_s: f64,
    /// An agent provides the blob once it holds this many verified pieces; 0 provides on
    /// arrival, before it has anything to serve. Default: 1.
    pub provide_after_pieces: u32,
    /// A lookup that found fewer providers than this is followed by the next one after
    /// `thin_relookup_interval_s` instead (the node: half its `dht_max_peers`, 15).
    /// Default: 0 (off).
    pub thin_below: usize,
    /// The re-lookup interval after a thin lookup, seconds (the node: a quarter of its
    /// interval, 0.5). Default: 0.5.
    pub thin_relookup_interval_s: f64,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            k: 20,
            alpha: 3,
            store_max_providers: 20,
            when_full: WhenFull::Ignore,
            answer: Answer::First,
            lookup: LookupDelay::Kademlia,
            record_ttl_s: 172_800.0,
            republish_interval_s: 43_200.0,
            relookup_interval_s: 2.0,
            provide_after_pieces: 1,
            thin_below: 0,
            thin_relookup_interval_s: 0.5,
        }
    }
}

impl DhtConfig {
    /// Why these settings cannot work, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.k == 0 || self.alpha == 0 || self.store_max_providers == 0 {
            return Err("dht: k, alpha and store_max_providers must be at least 1".into());
        }
        if !(self.record_ttl_s > 0.0
            && self.relookup_interval_s > 0.0
            && self.thin_relookup_interval_s > 0.0)
        {
            return Err(
                "dht: record_ttl_s, relookup_interval_s and thin_relookup_interval_s must be above 0"
                    .into(),
            );
        }
        if !(self.republish_interval_s > 0.0 && self.republish_interval_s < self.record_ttl_s) {
            // A record republished no sooner than it expires vanishes for a while.
            return Err("dht.republish_interval_s must be above 0 and below record_ttl_s".into());
        }
        if let LookupDelay::Uniform { min_ms, max_ms } = self.lookup
            && !(min_ms >= 0.0 && max_ms >= min_ms)
        {
            return Err("dht.lookup: need 0 ≤ min_ms ≤ max_ms".into());
        }
        Ok(())
    }
}

/// What a full provider store does with a new provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Ignores it: first come, first kept (libp2p-kad's `MemoryStore`).
    #[default]
    Ignore,
    /// Stores it in place of a random held record (`kraken-dht`'s store).
    ReplaceRandom,
}

/// Which of the held providers a lookup returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// The first `k` held (in the order they were stored), the same for every asker:
    /// libp2p-kad's `GET_PROVIDERS` answer.
    #[default]
    First,
    /// A uniform random sample of `k` held providers, a different one per lookup.
    Random,
}

/// How long one lookup takes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "model", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LookupDelay {
    /// `⌈log2(N) / α⌉` rounds (at least 1), each one round trip over a link of the
    /// scenario's latency (`2 × (latency_ms + U(0, latency_jitter_ms))`, drawn per round).
    #[default]
    Kademlia,
    /// Uniform between two bounds, milliseconds.
    Uniform {
        /// Shortest lookup.
        min_ms: f64,
        /// Longest lookup.
        max_ms: f64,
    },
}

/// Rounds of a Kademlia lookup among `nodes` nodes with parallelism `alpha`:
/// `⌈log2(nodes) / alpha⌉`, at least 1.
pub fn kademlia_rounds(nodes: usize, alpha: usize) -> u32 {
    let bits = (nodes.max(2) as f64).log2();
    ((bits / alpha.max(1) as f64).ceil() as u32).max(1)
}

/// One lookup's delay, in nanoseconds. `nodes` is the DHT's size; `latency_ms` and
/// `jitter_ms` the network's one-way link latency (used by the Kademlia model).
pub fn lookup_delay(
    cfg: &DhtConfig,
    nodes: usize,
    latency_ms: f64,
    jitter_ms: f64,
    rng: &mut impl Rng,
) -> Nanos {
    let ms = match cfg.lookup {
        LookupDelay::Kademlia => (0..kademlia_rounds(nodes, cfg.alpha))
            .map(|_| 2.0 * (latency_ms + rng.random::<f64>() * jitter_ms))
            .sum(),
        LookupDelay::Uniform { min_ms, max_ms } => min_ms + rng.random::<f64>() * (max_ms - min_ms),
    };
    crate::sim::millis(ms)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    host: u32,
    expires: Nanos,
}

/// One blob's provider records, in the order they were first stored, at most `max`.
#[derive(Debug, Clone)]
pub struct ProviderStore {
    max: usize,
    when_full: WhenFull,
    records: Vec<Record>,
}

impl ProviderStore {
    /// An empty store keeping at most `max` records, doing `when_full` with a newcomer
    /// once it holds them.
    pub fn new(max: usize, when_full: WhenFull) -> Self {
        ProviderStore {
            max: max.max(1),
            when_full,
            records: Vec::new(),
        }
    }

    /// Records held (expired or not).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn expire(&mut self, now: Nanos) {
        self.records.retain(|r| r.expires > now);
    }

    /// Stores (or refreshes, in place) `host`'s record at `now`, expiring at `expires`. A
    /// new provider is ignored while the store is full, or replaces a random held record
    /// (see [`WhenFull`]). Returns whether the record is held.
    pub fn put(&mut self, now: Nanos, host: u32, expires: Nanos, rng: &mut impl Rng) -> bool {
        self.expire(now);
        if let Some(r) = self.records.iter_mut().find(|r| r.host == host) {
            r.expires = expires;
            return true;
        }
        let record = Record { host, expires };
        if self.records.len() >= self.max {
            match self.when_full {
                WhenFull::Ignore => return false,
                WhenFull::ReplaceRandom => {
                    let victim = rng.random_range(0..self.records.len());
                    self.records[victim] = record;
                    return true;
                }
            }
        }
        self.records.push(record);
        true
    }

    /// A lookup's answer at `now`: at most `k` unexpired providers other than `asker`,
    /// chosen by `answer`, in random order (an answer's providers arrive from several
    /// nodes at once).
    pub fn lookup(
        &mut self,
        now: Nanos,
        k: usize,
        answer: Answer,
        asker: u32,
        rng: &mut impl Rng,
    ) -> Vec<u32> {
        self.expire(now);
        let held = self.records.iter().map(|r| r.host).filter(|h| *h != asker);
        let mut out: Vec<u32> = match answer {
            Answer::First => held.take(k).collect(),
            Answer::Random => {
                let all: Vec<u32> = held.collect();
                all.choose_multiple(rng, k).copied().collect()
            }
        };
        out.shuffle(rng);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn rounds_grow_with_log_n_over_alpha() {
        assert_eq!(kademlia_rounds(1, 3), 1);
        assert_eq!(kademlia_rounds(8, 3), 1);
        assert_eq!(kademlia_rounds(9, 3), 2);
        // 2,005 nodes: log2 ≈ 10.97, / 3 → 4 rounds; with α = 1, 11.
        assert_eq!(kademlia_rounds(2005, 3), 4);
        assert_eq!(kademlia_rounds(2005, 1), 11);
        assert_eq!(kademlia_rounds(10_000, 3), 5);
    }

    #[test]
    fn lookup_delay_is_rounds_of_round_trips_or_the_configured_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cfg = DhtConfig::default();
        // No jitter: exactly 4 rounds × 2 × 0.25 ms.
        assert_eq!(lookup_delay(&cfg, 2005, 0.25, 0.0, &mut rng), 2_000_000);
        for _ in 0..100 {
            let d = lookup_delay(&cfg, 2005, 0.25, 0.25, &mut rng);
            assert!((2_000_000..=4_000_000).contains(&d), "{d}");
        }
        let uni = DhtConfig {
            lookup: LookupDelay::Uniform {
                min_ms: 50.0,
                max_ms: 60.0,
            },
            ..DhtConfig::default()
        };
        for _ in 0..100 {
            let d = lookup_delay(&uni, 2005, 0.25, 0.25, &mut rng);
            assert!((50_000_000..=60_000_000).contains(&d), "{d}");
        }
        // Same seed, same delays.
        let a: Vec<_> = {
            let mut r = ChaCha8Rng::seed_from_u64(9);
            (0..5)
                .map(|_| lookup_delay(&cfg, 100, 1.0, 1.0, &mut r))
                .collect()
        };
        let mut r = ChaCha8Rng::seed_from_u64(9);
        let b: Vec<_> = (0..5)
            .map(|_| lookup_delay(&cfg, 100, 1.0, 1.0, &mut r))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn a_full_store_ignores_newcomers_until_a_record_expires() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut s = ProviderStore::new(3, WhenFull::Ignore);
        assert!(s.put(0, 10, 100, &mut rng));
        assert!(s.put(0, 11, 200, &mut rng));
        assert!(s.put(0, 12, 200, &mut rng));
        assert!(!s.put(0, 13, 200, &mut rng), "full: first come, first kept");
        // A refresh of a held record is not a new one, and keeps its place.
        assert!(s.put(0, 10, 300, &mut rng));
        assert_eq!(s.len(), 3);
        let mut got = s.lookup(0, 20, Answer::First, u32::MAX, &mut rng);
        got.sort_unstable();
        assert_eq!(got, vec![10, 11, 12]);
        // 11 and 12 expire at 200: two slots free up.
        assert!(s.put(250, 13, 400, &mut rng));
        let mut got = s.lookup(250, 20, Answer::First, u32::MAX, &mut rng);
        got.sort_unstable();
        assert_eq!(got, vec![10, 13]);
        assert!(ProviderStore::new(1, WhenFull::Ignore).is_empty());
    }

    #[test]
    fn a_replacing_store_takes_every_newcomer_in_place_of_a_random_record() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut s = ProviderStore::new(3, WhenFull::ReplaceRandom);
        for h in 0..3 {
            assert!(s.put(0, h, 100, &mut rng));
        }
        // Every newcomer is held; the store stays at its bound; the victim is random, so
        // a record older than the last three newcomers sometimes survives (never so with
        // FIFO eviction).
        let mut older_survived = false;
        for h in 3..40 {
            assert!(s.put(0, h, 100, &mut rng));
            assert_eq!(s.len(), 3);
            let held = s.lookup(0, 20, Answer::First, u32::MAX, &mut rng);
            assert!(held.contains(&h), "{h} not held: {held:?}");
            older_survived |= held.iter().any(|o| *o + 3 <= h);
        }
        assert!(older_survived);
        // Expired records go before any live one.
        assert!(s.put(0, 100, 50, &mut rng));
        let mut before = s.lookup(0, 20, Answer::First, u32::MAX, &mut rng);
        before.retain(|h| *h != 100);
        before.push(101);
        before.sort_unstable();
        assert!(s.put(60, 101, 200, &mut rng));
        let mut after = s.lookup(60, 20, Answer::First, u32::MAX, &mut rng);
        after.sort_unstable();
        assert_eq!(after, before);
    }

    #[test]
    fn first_answers_are_the_same_for_everyone_random_ones_vary() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut s = ProviderStore::new(100, WhenFull::Ignore);
        for h in 0..50u32 {
            s.put(0, h, 1_000, &mut rng);
        }
        let sorted = |mut v: Vec<u32>| {
            v.sort_unstable();
            v
        };
        // The first k held, never the asker.
        let a = sorted(s.lookup(1, 5, Answer::First, 2, &mut rng));
        assert_eq!(a, vec![0, 1, 3, 4, 5]);
        let b = sorted(s.lookup(1, 5, Answer::First, 40, &mut rng));
        assert_eq!(b, vec![0, 1, 2, 3, 4]);
        // Random: k distinct held providers, not the asker, different between lookups.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let r = sorted(s.lookup(1, 5, Answer::Random, 7, &mut rng));
            assert_eq!(r.len(), 5);
            assert!(r.windows(2).all(|w| w[0] < w[1]) && !r.contains(&7));
            assert!(r.iter().all(|h| *h < 50));
            seen.insert(r);
        }
        assert!(seen.len() > 10, "{seen:?}");
        // Fewer held than k: all of them.
        assert_eq!(s.lookup(1, 80, Answer::Random, 7, &mut rng).len(), 49);
    }

    #[test]
    fn settings_that_cannot_work_are_rejected() {
        assert!(DhtConfig::default().validate().is_ok());
        for bad in [
            DhtConfig {
                k: 0,
                ..DhtConfig::default()
            },
            DhtConfig {
                republish_interval_s: 172_800.0,
                ..DhtConfig::default()
            },
            DhtConfig {
                relookup_interval_s: 0.0,
                ..DhtConfig::default()
            },
            DhtConfig {
                lookup: LookupDelay::Uniform {
                    min_ms: 5.0,
                    max_ms: 1.0,
                },
                ..DhtConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
