//! Inbound stores (`StoreInserts::FilterBoth`): what this node agrees to keep for others.
//! A card is kept only if it verifies and comes from its owner; a provider record only
//! under a blob key, within the store bounds; both only within the sender's rate and never
//! from a blacklisted peer. A sender of a record that fails verification is blacklisted.

use std::time::Instant;

use libp2p::PeerId as DhtPeerId;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{ProviderRecord, Record};

use kraken_storage::time::now_ms;

use super::Driver;
use crate::card;
use crate::digest_of_key;
use crate::stats::{bump, set};

impl Driver {
    /// Admits an inbound store from `source`: not blacklisted, within its rate.
    pub(super) fn admit(&mut self, source: DhtPeerId, now: Instant) -> bool {
        if self.blacklist.contains(&source) {
            bump(&self.stats.dropped_blacklisted);
            return false;
        }
        if !self.inbound.try_take(&source, now) {
            bump(&self.stats.dropped_rate_limited);
            return false;
        }
        true
    }

    pub(super) fn on_inbound_provider(&mut self, record: ProviderRecord, now: Instant) {
        let source = record.provider;
        if !self.admit(source, now) {
            return;
        }
        if digest_of_key(record.key.as_ref()).is_none() {
            bump(&self.stats.dropped_malformed);
            self.blacklist(source, "provided a key that is not a blob digest");
            return;
        }
        // The store applies its bounds: a full key takes the newcomer in place of a
        // random provider; only a new key beyond `max_provider_keys` is refused.
        let store = self.swarm.behaviour_mut().store_mut();
        if store.add_provider(record).is_err() {
            bump(&self.stats.refused_store_full);
            return;
        }
        let keys = store.providers_mut().other_keys();
        set(&self.stats.provider_keys_held, keys);
    }

    pub(super) fn on_inbound_record(
        &mut self,
        source: DhtPeerId,
        mut record: Record,
        now: Instant,
    ) {
        if !self.admit(source, now) {
            return;
        }
        let Some(owner) = card::card_owner(record.key.as_ref()) else {
            bump(&self.stats.dropped_malformed);
            self.blacklist(source, "stored a value that is not a card");
            return;
        };
        if owner != source {
            // Only owners publish cards (caching and re-replication are off): not proof
            // of a lie by itself, but nothing to keep.
            bump(&self.stats.dropped_malformed);
            return;
        }
        let card = match card::decode_and_verify(
            &record.value,
            &owner,
            &self.auth,
            now_ms(),
            self.max_card_age_ms,
        ) {
            Ok(card) => card,
            Err(e) => {
                bump(&self.stats.dropped_malformed);
                tracing::warn!(peer = %source, error = %e, "dht: refused a card");
                self.blacklist(source, "published a card that does not verify");
                return;
            }
        };
        let store = self.swarm.behaviour_mut().store_mut();
        // What the store holds was verified when it went in: only its age is read.
        let newer = store.get(&record.key).is_none_or(|held| {
            card::issued_ms_of_stored(&held.value).is_none_or(|t| t <= card.issued_ms)
        });
        if !newer {
            return;
        }
        let expires = now + self.config.provider_ttl;
        record.expires = Some(record.expires.map_or(expires, |e| e.min(expires)));
        record.publisher = Some(source);
        if store.put(record).is_err() {
            bump(&self.stats.refused_store_full);
            return;
        }
        // Cards arrive about once per node and republish interval: counting is cheap.
        set(&self.stats.records_held, store.records().count());
        self.cache_card(card);
    }
}
