//! The DHT's record store: value records (cards) in libp2p's `MemoryStore`, provider
//! records in a [`ProviderTable`] of our own.
//!
//! Why not libp2p-kad's `MemoryStore` for providers: it keeps the first 20 providers of a
//! key, ignores newcomers while full, and answers every `GET_PROVIDERS` with those same
//! 20. In a large swarm everyone is then handed the same 20 peers (simnet: 80 × T_min at
//! 2,000 hosts, against 1.35 × with trackers). The table instead:
//! - keeps up to `max_per_key` providers per key, under a total of `max_total` provider
//!   records for other nodes and `max_keys` keys (see [`crate::DhtConfig`]);
//! - drops expired records first; then a newcomer to a full key **replaces a random held
//!   provider** rather than being ignored: fresh providers are the ones still downloading
//!   (and so worth pointing others at), while a random victim, unlike the oldest, does not
//!   flush long-lived seeders (origins, early finishers) in a fixed order, and lets no
//!   sender pick whom its record displaces;
//! - when the total is reached, takes the newcomer's place from the key holding the most
//!   records (a random one of them): hot keys shrink towards the others, rare ones keep
//!   what they have;
//! - answers each `providers(key)` with a fresh uniform random sample of at most `k`
//!   (the node's own record included), so two finders get different peers;
//! - always keeps this node's own provider records (never evicted, never expired here:
//!   Kademlia republishes them from [`RecordStore::provided`]).
//!
//! The table is pure (time and randomness are arguments) and unit-tested; [`Store`] wires
//! it to Kademlia with `Instant::now()` and the thread's OS-seeded CSPRNG (the sample
//! answers network requests, so it must not be predictable).

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::{self, Entry as MapEntry};
use std::iter;
use std::time::{Duration, Instant};

use libp2p::kad::store::{self, MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::{Multiaddr, PeerId};
use rand::Rng;

/// Addresses kept per provider record (the rest are dropped). A node listening on an
/// unspecified address announces one per interface; four covers a host's usual ones.
pub(crate) const MAX_ADDRS_PER_PROVIDER: usize = 4;
/// Longest address kept, bytes (an `/ip6/…/udp/…/quic-v1/p2p/<id>` is about 60).
pub(crate) const MAX_ADDR_BYTES: usize = 64;
/// A full table sweeps expired records globally at most this often (each full-table add
/// otherwise drops only the expired records of the keys it touches).
const GLOBAL_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The bounds of a [`ProviderTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Keys held for others, and keys this node provides, each at most.
    pub(crate) max_keys: usize,
    /// Other nodes' providers kept per key.
    pub(crate) max_per_key: usize,
    /// Other nodes' provider records kept in all.
    pub(crate) max_total: usize,
    /// Providers in one answer (Kademlia's `k`).
    pub(crate) answer: usize,
}

/// One other node's provider record (the key is the map's).
#[derive(Debug, Clone)]
struct Held {
    provider: PeerId,
    expires: Option<Instant>,
    addresses: Vec<Multiaddr>,
}

impl Held {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|t| t <= now)
    }
}

/// What [`ProviderTable::add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Added {
    /// This node's own record, stored or refreshed.
    Own,
    /// A held record refreshed (expiry and addresses).
    Refreshed,
    /// A new record, in a free place.
    Inserted,
    /// A new record, in place of this provider's record (of this key or of the fullest).
    Replaced(PeerId),
}

/// Why [`ProviderTable::add`] refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// A new key while `max_keys` keys are held.
    #[error("the provider store holds its maximum of keys")]
    TooManyKeys,
}

/// Provider records: this node's own, and other nodes' within [`Bounds`].
#[derive(Debug)]
pub(crate) struct ProviderTable {
    local: PeerId,
    bounds: Bounds,
    own: HashMap<RecordKey, ProviderRecord>,
    others: HashMap<RecordKey, Vec<Held>>,
    /// Records in `others`.
    total: usize,
    next_global_sweep: Option<Instant>,
}

impl ProviderTable {
    pub(crate) fn new(local: PeerId, bounds: Bounds) -> Self {
        ProviderTable {
            local,
            bounds,
            own: HashMap::new(),
            others: HashMap::new(),
            total: 0,
            next_global_sweep: None,
        }
    }

    /// Keys held for other nodes.
    pub(crate) fn other_keys(&self) -> usize {
        self.others.len()
    }

    /// Other nodes' records held.
    pub(crate) fn other_records(&self) -> usize {
        self.total
    }

    /// Stores `record` at `now`: this node's own always (within `max_keys`), another
    /// node's as the module docs say.
    pub(crate) fn add(
        &mut self,
        mut record: ProviderRecord,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Result<Added, Refused> {
        if record.provider == self.local {
            if !self.own.contains_key(&record.key) && self.own.len() >= self.bounds.max_keys {
                return Err(Refused::TooManyKeys);
            }
            self.own.insert(record.key.clone(), record);
            return Ok(Added::Own);
        }
        let addresses = bounded_addresses(std::mem::take(&mut record.addresses));
        let held = Held {
            provider: record.provider,
            expires: record.expires,
            addresses,
        };
        if let Some(list) = self.others.get_mut(&record.key)
            && let Some(h) = list.iter_mut().find(|h| h.provider == held.provider)
        {
            *h = held;
            return Ok(Added::Refreshed);
        }
        if !self.others.contains_key(&record.key) && self.others.len() >= self.bounds.max_keys {
            self.sweep_if_due(now);
            if self.others.len() >= self.bounds.max_keys {
                return Err(Refused::TooManyKeys);
            }
        }
        let list = self.others.entry(record.key.clone()).or_default();
        let before = list.len();
        list.retain(|h| !h.expired(now));
        self.total -= before - list.len();
        if list.len() >= self.bounds.max_per_key {
            let victim = rng.random_range(0..list.len());
            let old = std::mem::replace(&mut list[victim], held);
            return Ok(Added::Replaced(old.provider));
        }
        let mut replaced = None;
        if self.total >= self.bounds.max_total {
            self.sweep_if_due(now);
            if self.total >= self.bounds.max_total {
                replaced = self.evict_from_fullest(&record.key, now, rng);
            }
        }
        // The sweep or the eviction may have emptied and removed this key.
        self.others.entry(record.key).or_default().push(held);
        self.total += 1;
        Ok(replaced.map_or(Added::Inserted, Added::Replaced))
    }

    /// Removes a random record of the key holding the most (`key` on a tie, so a hot key
    /// pays first), its expired ones first. The evicted provider, if any.
    fn evict_from_fullest(
        &mut self,
        key: &RecordKey,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<PeerId> {
        let own_len = self.others.get(key).map_or(0, Vec::len);
        let fullest = self
            .others
            .iter()
            .max_by_key(|(_, list)| list.len())
            .filter(|(_, list)| list.len() > own_len)
            .map_or_else(|| key.clone(), |(k, _)| k.clone());
        let list = self.others.get_mut(&fullest)?;
        let before = list.len();
        list.retain(|h| !h.expired(now));
        let mut evicted = None;
        if list.len() == before && !list.is_empty() {
            let victim = rng.random_range(0..list.len());
            evicted = Some(list.swap_remove(victim).provider);
        }
        self.total -= before - list.len();
        if list.is_empty() {
            self.others.remove(&fullest);
        }
        evicted
    }

    fn sweep_if_due(&mut self, now: Instant) {
        if self.next_global_sweep.is_none_or(|t| now >= t) {
            self.remove_expired(now);
            self.next_global_sweep = Some(now + GLOBAL_SWEEP_EVERY);
        }
    }

    /// Drops other nodes' expired records; how many.
    pub(crate) fn remove_expired(&mut self, now: Instant) -> usize {
        self.retain_others(|h| !h.expired(now))
    }

    /// Keeps the records of other nodes that `keep` accepts; how many went.
    fn retain_others(&mut self, keep: impl Fn(&Held) -> bool) -> usize {
        let before = self.total;
        let mut total = 0;
        self.others.retain(|_, list| {
            list.retain(&keep);
            total += list.len();
            !list.is_empty()
        });
        self.total = total;
        before - total
    }

    /// Removes `provider`'s record of `key` (this node's own when `provider` is local).
    pub(crate) fn remove(&mut self, key: &RecordKey, provider: &PeerId) {
        if *provider == self.local {
            self.own.remove(key);
            return;
        }
        if let MapEntry::Occupied(mut entry) = self.others.entry(key.clone()) {
            let list = entry.get_mut();
            if let Some(i) = list.iter().position(|h| h.provider == *provider) {
                list.swap_remove(i);
                self.total -= 1;
            }
            if list.is_empty() {
                entry.remove();
            }
        }
    }

    /// Removes every record of `provider` (a blacklisted peer).
    pub(crate) fn remove_everywhere(&mut self, provider: &PeerId) {
        self.retain_others(|h| h.provider != *provider);
    }

    /// A uniform random sample of at most `answer` unexpired providers of `key` at `now`,
    /// this node included if it provides the key; a fresh sample per call.
    pub(crate) fn sample(
        &self,
        key: &RecordKey,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Vec<ProviderRecord> {
        let own = self.own.get(key);
        let live: Vec<&Held> = self
            .others
            .get(key)
            .map(|list| list.iter().filter(|h| !h.expired(now)).collect())
            .unwrap_or_default();
        let pool = live.len() + usize::from(own.is_some());
        // Index `live.len()` stands for the own record.
        rand::seq::index::sample(rng, pool, self.bounds.answer.min(pool))
            .into_iter()
            .filter_map(|i| match live.get(i) {
                Some(h) => Some(ProviderRecord {
                    key: key.clone(),
                    provider: h.provider,
                    expires: h.expires,
                    addresses: h.addresses.clone(),
                }),
                None => own.cloned(),
            })
            .collect()
    }

    /// This node's own records.
    pub(crate) fn provided(&self) -> hash_map::Values<'_, RecordKey, ProviderRecord> {
        self.own.values()
    }
}

/// At most [`MAX_ADDRS_PER_PROVIDER`] addresses of at most [`MAX_ADDR_BYTES`] each,
/// duplicates dropped: a `GET_PROVIDERS` answer of `k` providers then stays far below
/// [`crate::MAX_PACKET_BYTES`] whatever providers announced.
fn bounded_addresses(addresses: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let mut kept: Vec<Multiaddr> = Vec::new();
    for a in addresses {
        if kept.len() == MAX_ADDRS_PER_PROVIDER {
            break;
        }
        if a.len() <= MAX_ADDR_BYTES && !kept.contains(&a) {
            kept.push(a);
        }
    }
    kept
}

/// The store Kademlia runs on: cards in a `MemoryStore`, providers in a
/// [`ProviderTable`].
pub(crate) struct Store {
    records: MemoryStore,
    providers: ProviderTable,
}

impl Store {
    pub(crate) fn new(local: PeerId, records: MemoryStoreConfig, bounds: Bounds) -> Self {
        Store {
            records: MemoryStore::with_config(local, records),
            providers: ProviderTable::new(local, bounds),
        }
    }

    /// The provider table (gauges, sweeps, blacklisting).
    pub(crate) fn providers_mut(&mut self) -> &mut ProviderTable {
        &mut self.providers
    }

    /// Keeps the value records satisfying `keep`.
    pub(crate) fn retain_records(&mut self, keep: impl FnMut(&RecordKey, &mut Record) -> bool) {
        self.records.retain(keep);
    }
}

impl RecordStore for Store {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = iter::Map<
        hash_map::Values<'a, RecordKey, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.records.get(k)
    }

    fn put(&mut self, r: Record) -> store::Result<()> {
        self.records.put(r)
    }

    fn remove(&mut self, k: &RecordKey) {
        self.records.remove(k);
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.records.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> store::Result<()> {
        self.providers
            .add(record, Instant::now(), &mut rand::rng())
            .map(drop)
            .map_err(|_| store::Error::MaxProvidedKeys)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.providers.sample(key, Instant::now(), &mut rand::rng())
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.providers.provided().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.providers.remove(k, p);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn bounds(max_keys: usize, max_per_key: usize, max_total: usize) -> Bounds {
        Bounds {
            max_keys,
            max_per_key,
            max_total,
            answer: 20,
        }
    }

    fn key(i: usize) -> RecordKey {
        RecordKey::new(&format!("kraken-blob/{i}"))
    }

    fn record(key: &RecordKey, provider: PeerId, expires: Option<Instant>) -> ProviderRecord {
        ProviderRecord {
            key: key.clone(),
            provider,
            expires,
            addresses: vec!["/ip4/10.0.0.1/udp/4001/quic-v1".parse().expect("addr")],
        }
    }

    /// A seeded generator, the current instant and an expiry an hour after it.
    fn clock(seed: u64) -> (SmallRng, Instant, Option<Instant>) {
        let now = Instant::now();
        (
            SmallRng::seed_from_u64(seed),
            now,
            Some(now + Duration::from_secs(3600)),
        )
    }

    /// Adds `n` new providers of `k` expiring at `expires`; their ids.
    fn fill(
        t: &mut ProviderTable,
        k: &RecordKey,
        n: usize,
        expires: Option<Instant>,
        now: Instant,
        rng: &mut SmallRng,
    ) -> Vec<PeerId> {
        let ids: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        for p in &ids {
            t.add(record(k, *p, expires), now, rng).expect("stored");
        }
        ids
    }

    fn held(t: &ProviderTable, k: &RecordKey) -> HashSet<PeerId> {
        t.others
            .get(k)
            .map(|l| l.iter().map(|h| h.provider).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_full_key_takes_every_newcomer_in_place_of_a_random_provider() {
        let (mut rng, now, later) = clock(1);
        let mut t = ProviderTable::new(PeerId::random(), bounds(10, 5, 1000));
        let k = key(0);
        let first: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for p in &first {
            assert_eq!(
                t.add(record(&k, *p, later), now, &mut rng),
                Ok(Added::Inserted)
            );
        }
        // A refresh is not a newcomer.
        assert_eq!(
            t.add(record(&k, first[2], later), now, &mut rng),
            Ok(Added::Refreshed)
        );
        let mut victims = HashSet::new();
        for _ in 0..40 {
            let p = PeerId::random();
            let Ok(Added::Replaced(old)) = t.add(record(&k, p, later), now, &mut rng) else {
                panic!("a newcomer to a full key replaces someone");
            };
            victims.insert(old);
            let h = held(&t, &k);
            assert!(h.contains(&p) && !h.contains(&old));
            assert_eq!((h.len(), t.other_records()), (5, 5));
        }
        // Random victims: some of the first five were replaced long after the first
        // newcomers, and not in arrival order (a FIFO would evict first[0] first).
        assert!(victims.iter().filter(|v| first.contains(v)).count() >= 4);
    }

    #[test]
    fn expired_records_go_before_live_ones() {
        let (mut rng, now, later) = clock(2);
        let soon = Some(now + Duration::from_secs(1));
        let mut t = ProviderTable::new(PeerId::random(), bounds(10, 3, 1000));
        let k = key(0);
        let live = fill(&mut t, &k, 2, later, now, &mut rng);
        let stale = PeerId::random();
        t.add(record(&k, stale, soon), now, &mut rng)
            .expect("stored");
        let then = now + Duration::from_secs(2);
        // Expired records are not answered.
        assert!(
            t.sample(&k, then, &mut rng)
                .iter()
                .all(|r| r.provider != stale)
        );
        let p = PeerId::random();
        assert_eq!(
            t.add(record(&k, p, later), then, &mut rng),
            Ok(Added::Inserted)
        );
        let h = held(&t, &k);
        assert!(h.contains(&p) && !h.contains(&stale) && live.iter().all(|l| h.contains(l)));
        // A global sweep drops them everywhere.
        t.add(record(&key(1), PeerId::random(), soon), now, &mut rng)
            .expect("stored");
        assert_eq!(t.remove_expired(then), 1);
        assert_eq!((t.other_keys(), t.other_records()), (1, 3));
    }

    #[test]
    fn the_total_bound_takes_from_the_fullest_key_and_keys_are_bounded() {
        let (mut rng, now, later) = clock(3);
        let mut t = ProviderTable::new(PeerId::random(), bounds(3, 100, 10));
        let (hot, rare, new) = (key(0), key(1), key(2));
        fill(&mut t, &hot, 8, later, now, &mut rng);
        fill(&mut t, &rare, 2, later, now, &mut rng);
        assert_eq!(t.other_records(), 10);
        for _ in 0..5 {
            let got = t.add(record(&new, PeerId::random(), later), now, &mut rng);
            assert!(matches!(got, Ok(Added::Replaced(_))), "{got:?}");
            assert_eq!(t.other_records(), 10);
        }
        // The hot key paid for the new one; the rare one kept both its providers.
        assert_eq!(held(&t, &rare).len(), 2);
        // 8 + 2 + 5 in 10 places: the hot key down to 4, the new one up to 4 (on a tie
        // the newcomer's own key pays).
        assert_eq!(held(&t, &hot).len(), 4);
        assert_eq!(held(&t, &new).len(), 4);
        // A fourth key is refused (max_keys = 3), a held key still takes newcomers.
        assert_eq!(
            t.add(record(&key(3), PeerId::random(), later), now, &mut rng),
            Err(Refused::TooManyKeys)
        );
        assert!(
            t.add(record(&rare, PeerId::random(), later), now, &mut rng)
                .is_ok()
        );
        // Removing a peer everywhere (blacklisting) keeps the count right.
        let liar = PeerId::random();
        t.add(record(&hot, liar, later), now, &mut rng)
            .expect("stored");
        t.add(record(&rare, liar, later), now, &mut rng)
            .expect("stored");
        let n = t.other_records();
        t.remove_everywhere(&liar);
        assert_eq!(t.other_records(), n - 2);
        assert!(!held(&t, &hot).contains(&liar) && !held(&t, &rare).contains(&liar));
    }

    #[test]
    fn own_records_are_always_kept_listed_and_answered() {
        let (mut rng, now, later) = clock(4);
        let me = PeerId::random();
        let mut t = ProviderTable::new(me, bounds(2, 3, 3));
        let k = key(0);
        assert_eq!(t.add(record(&k, me, None), now, &mut rng), Ok(Added::Own));
        // Floods of others neither evict nor count against it.
        fill(&mut t, &k, 50, later, now, &mut rng);
        assert_eq!(
            t.provided().map(|r| r.key.clone()).collect::<Vec<_>>(),
            vec![k.clone()]
        );
        assert_eq!(t.other_records(), 3);
        // The own record is in the pool of answers: 4 held, answer of up to 20.
        let answer = t.sample(&k, now, &mut rng);
        assert_eq!(answer.len(), 4);
        assert!(answer.iter().any(|r| r.provider == me));
        // Own keys are bounded by max_keys; removing one frees its place.
        t.add(record(&key(1), me, None), now, &mut rng)
            .expect("stored");
        assert_eq!(
            t.add(record(&key(2), me, None), now, &mut rng),
            Err(Refused::TooManyKeys)
        );
        t.remove(&k, &me);
        assert_eq!(t.provided().count(), 1);
        assert_eq!(t.sample(&k, now, &mut rng).len(), 3);
    }

    #[test]
    fn samples_vary_cover_every_provider_and_are_uniform() {
        let (mut rng, now, later) = clock(5);
        let mut t = ProviderTable::new(PeerId::random(), bounds(10, 256, 1000));
        let k = key(0);
        fill(&mut t, &k, 100, later, now, &mut rng);
        let mut counts: BTreeMap<PeerId, u32> = BTreeMap::new();
        let mut distinct = HashSet::new();
        const ROUNDS: u32 = 2_000;
        for _ in 0..ROUNDS {
            let s = t.sample(&k, now, &mut rng);
            assert_eq!(s.len(), 20);
            let ids: Vec<PeerId> = s.iter().map(|r| r.provider).collect();
            assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 20, "no repeats");
            for id in &ids {
                *counts.entry(*id).or_default() += 1;
            }
            let mut sorted = ids;
            sorted.sort();
            distinct.insert(sorted);
        }
        // Every provider is handed out, each about 20 / 100 of the time (400 of 2,000
        // answers; 5 standard deviations is ±90), and answers differ.
        assert_eq!(counts.len(), 100);
        assert!(
            counts.values().all(|c| (310..=490).contains(c)),
            "{counts:?}"
        );
        assert!(distinct.len() as u32 > ROUNDS - 5);
        // Fewer held than k: all of them. None held: nothing.
        assert_eq!(t.sample(&key(9), now, &mut rng), Vec::new());
    }

    #[test]
    fn addresses_are_bounded_so_an_answer_fits_a_packet() {
        let (mut rng, now, _) = clock(6);
        let mut t = ProviderTable::new(PeerId::random(), bounds(10, 256, 1000));
        let k = key(0);
        let long: Multiaddr = format!("/dns/{}/udp/1/quic-v1", "a".repeat(200))
            .parse()
            .expect("addr");
        let mut r = record(&k, PeerId::random(), None);
        r.addresses = std::iter::repeat_n(long, 3)
            .chain((0..50).map(|i| {
                format!("/ip4/10.0.0.{i}/udp/1/quic-v1")
                    .parse()
                    .expect("addr")
            }))
            .collect();
        t.add(r, now, &mut rng).expect("stored");
        let got = t.sample(&k, now, &mut rng);
        assert_eq!(got[0].addresses.len(), MAX_ADDRS_PER_PROVIDER);
        assert!(got[0].addresses.iter().all(|a| a.len() <= MAX_ADDR_BYTES));
        // A GET_PROVIDERS answer: per peer a 38-byte peer id, its addresses and the
        // protobuf framing (2 bytes a field at these sizes), for k providers and k closer
        // peers, far below the 16 KiB packet cap.
        let peer = 2 + 38 + MAX_ADDRS_PER_PROVIDER * (2 + MAX_ADDR_BYTES) + 2 + 3;
        assert!(2 * 20 * peer < crate::MAX_PACKET_BYTES, "{}", 2 * 20 * peer);
    }

    #[test]
    fn a_held_record_is_as_small_as_the_memory_bound_assumes() {
        // `DhtConfig::max_provider_records` assumes about 400 B a record: this struct
        // (peer id, expiry, address list), one to four addresses of about 70 B each on the
        // heap (an `Arc`'d byte vector), and the list's spare capacity.
        assert!(
            std::mem::size_of::<Held>() <= 128,
            "{}",
            std::mem::size_of::<Held>()
        );
    }

    #[test]
    fn the_kademlia_store_delegates_records_and_samples_providers() {
        let me = PeerId::random();
        let mut s = Store::new(me, MemoryStoreConfig::default(), bounds(10, 256, 1000));
        let k = key(0);
        s.put(Record::new(k.clone(), b"card".to_vec()))
            .expect("put");
        assert_eq!(s.get(&k).map(|r| r.value.clone()), Some(b"card".to_vec()));
        s.add_provider(record(&k, me, None)).expect("own");
        for _ in 0..30 {
            s.add_provider(record(&k, PeerId::random(), None))
                .expect("other");
        }
        assert_eq!(s.provided().count(), 1);
        let a: HashSet<PeerId> = s.providers(&k).iter().map(|r| r.provider).collect();
        let b: HashSet<PeerId> = s.providers(&k).iter().map(|r| r.provider).collect();
        assert_eq!((a.len(), b.len()), (20, 20));
        // OS-seeded: two answers of 20 of 31 are equal with probability 1 / C(31, 20).
        assert_ne!(a, b);
        s.remove_provider(&k, &me);
        assert_eq!(s.provided().count(), 0);
        s.retain_records(|_, _| false);
        assert!(s.get(&k).is_none());
        assert_eq!(s.providers_mut().other_records(), 30);
    }
}
