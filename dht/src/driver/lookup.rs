//! `find_providers` lookups: the provider query, the card fetch of each provider (cached
//! once verified), and the answer when enough are found, the query is over, or the
//! deadline passes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kraken_storage::Digest;
use libp2p::PeerId as DhtPeerId;
use libp2p::kad::{GetProvidersOk, GetRecordOk, QueryId, QueryResult, RecordKey};
use tokio::sync::oneshot;

use kraken_storage::time::now_ms;

use super::{Driver, Owner};
use crate::card::{self, Card};
use crate::stats::{add, bump};
use crate::{DhtError, Provider};

/// A `find_providers` in progress.
pub(super) struct Lookup {
    pub(super) query: QueryId,
    pub(super) limit: usize,
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    pub(super) reply: oneshot::Sender<Result<Vec<Provider>, DhtError>>,
    pub(super) found: Vec<Provider>,
    pub(super) seen: HashSet<DhtPeerId>,
    /// Providers whose card is being fetched.
    pub(super) pending: HashSet<DhtPeerId>,
    /// The provider query is over.
    pub(super) providers_done: bool,
}

impl Driver {
    pub(super) fn find_providers(
        &mut self,
        digest: Digest,
        limit: usize,
        timeout: Duration,
        reply: oneshot::Sender<Result<Vec<Provider>, DhtError>>,
        now: Instant,
    ) {
        bump(&self.stats.lookups);
        if !self.query_bucket.try_take(now) {
            bump(&self.stats.lookup_failures);
            let _ = reply.send(Err(DhtError::RateLimited));
            return;
        }
        let key = RecordKey::new(&crate::provider_key(&digest));
        let query = self.kad().get_providers(key);
        let id = self.next_lookup;
        self.next_lookup += 1;
        self.owners.insert(query, Owner::Lookup(id));
        self.lookups.insert(
            id,
            Lookup {
                query,
                limit,
                started: now,
                deadline: now + timeout,
                reply,
                found: Vec::new(),
                seen: HashSet::new(),
                pending: HashSet::new(),
                providers_done: false,
            },
        );
    }

    /// A provider record of lookup `id` names `peer`: answer from a fresh cached card or
    /// fetch the card.
    pub(super) fn offer_provider(&mut self, id: u64, peer: DhtPeerId) {
        if peer == self.local || self.blacklist.contains(&peer) {
            return;
        }
        let cached = self.fresh_card(&peer).map(provider_of);
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        if !lookup.seen.insert(peer) {
            return;
        }
        if let Some(provider) = cached {
            lookup.found.push(provider);
            return;
        }
        lookup.pending.insert(peer);
        let waiters = self.card_waiters.entry(peer).or_default();
        waiters.push(id);
        if waiters.len() == 1 {
            let query = self
                .kad()
                .get_record(RecordKey::new(&card::card_key(&peer)));
            self.owners.insert(query, Owner::Card(peer));
        }
    }

    pub(super) fn fresh_card(&self, peer: &DhtPeerId) -> Option<Card> {
        let card = self.cards.get(peer)?;
        (now_ms().saturating_sub(card.issued_ms) <= self.max_card_age_ms).then(|| card.clone())
    }

    pub(super) fn cache_card(&mut self, card: Card) {
        if self.cards.len() >= self.config.max_records && !self.cards.contains_key(&card.dht_peer) {
            let now = now_ms();
            let max_age = self.max_card_age_ms;
            self.cards
                .retain(|_, c| now.saturating_sub(c.issued_ms) <= max_age);
            if self.cards.len() >= self.config.max_records {
                let victim = self.cards.keys().next().copied();
                if let Some(victim) = victim {
                    self.cards.remove(&victim);
                }
            }
        }
        self.cards.insert(card.dht_peer, card);
    }

    /// The card fetch of `peer` is over, with a verified card or none.
    pub(super) fn card_done(&mut self, peer: DhtPeerId, card: Option<Card>, now: Instant) {
        for id in self.card_waiters.remove(&peer).unwrap_or_default() {
            if let Some(lookup) = self.lookups.get_mut(&id) {
                lookup.pending.remove(&peer);
                if let Some(card) = &card
                    && !self.blacklist.contains(&peer)
                {
                    lookup.found.push(provider_of(card.clone()));
                }
            }
            self.check_lookup(id, now);
        }
    }

    /// Answers lookup `id` if it has enough providers, is over, or is past its deadline.
    pub(super) fn check_lookup(&mut self, id: u64, now: Instant) {
        let Some(lookup) = self.lookups.get(&id) else {
            return;
        };
        let enough = lookup.found.len() >= lookup.limit;
        let over = lookup.providers_done && lookup.pending.is_empty();
        let late = now >= lookup.deadline;
        if !(enough || over || late || lookup.reply.is_closed()) {
            return;
        }
        let Some(mut lookup) = self.lookups.remove(&id) else {
            return;
        };
        if self.owners.remove(&lookup.query).is_some()
            && let Some(mut query) = self.kad().query_mut(&lookup.query)
        {
            query.finish();
        }
        for peer in &lookup.pending {
            if let Some(waiters) = self.card_waiters.get_mut(peer) {
                waiters.retain(|w| *w != id);
            }
        }
        lookup.found.truncate(lookup.limit);
        let answer = if lookup.found.is_empty() && late && !over {
            bump(&self.stats.lookup_failures);
            Err(DhtError::Timeout)
        } else {
            let latency = now.saturating_duration_since(lookup.started);
            add(
                &self.stats.lookup_latency_us_sum,
                u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            );
            bump(&self.stats.lookup_latency_count);
            add(&self.stats.providers_found, lookup.found.len() as u64);
            Ok(lookup.found)
        };
        let _ = lookup.reply.send(answer);
    }

    pub(super) fn on_query_progress(
        &mut self,
        id: QueryId,
        result: QueryResult,
        last: bool,
        now: Instant,
    ) {
        match (self.owners.get(&id), result) {
            (Some(Owner::Lookup(lookup)), QueryResult::GetProviders(result)) => {
                let lookup = *lookup;
                match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        for peer in providers {
                            self.offer_provider(lookup, peer);
                        }
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) => {
                        self.providers_done(lookup)
                    }
                }
                if last {
                    self.owners.remove(&id);
                    self.providers_done(lookup);
                }
                self.check_lookup(lookup, now);
            }
            (Some(Owner::Card(peer)), QueryResult::GetRecord(result)) => {
                let peer = *peer;
                let mut done = last;
                let mut verified = None;
                match result {
                    Ok(GetRecordOk::FoundRecord(found)) => {
                        match card::decode_and_verify(
                            &found.record.value,
                            &peer,
                            &self.auth,
                            now_ms(),
                            self.max_card_age_ms,
                        ) {
                            Ok(card) => {
                                self.cache_card(card.clone());
                                verified = Some(card);
                                if let Some(mut query) = self.kad().query_mut(&id) {
                                    query.finish();
                                }
                                done = true;
                            }
                            Err(e) => {
                                bump(&self.stats.dropped_malformed);
                                // Honest nodes store only verified cards: whoever served
                                // this one lies (the owner itself, if it served it).
                                if let Some(from) = found.peer {
                                    tracing::warn!(%peer, %from, error = %e, "dht: bad card");
                                    self.blacklist(from, "served a card that does not verify");
                                }
                            }
                        }
                    }
                    Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) => {
                        done = true;
                    }
                }
                if done {
                    self.owners.remove(&id);
                    self.card_done(peer, verified, now);
                }
            }
            (None, QueryResult::Bootstrap(_)) if last => self.announce_unannounced(now),
            (None, QueryResult::PutRecord(Err(e))) => {
                tracing::debug!(error = %e, "dht: card publication incomplete");
            }
            _ => {
                if last {
                    self.owners.remove(&id);
                }
            }
        }
    }

    pub(super) fn providers_done(&mut self, lookup: u64) {
        if let Some(lookup) = self.lookups.get_mut(&lookup) {
            lookup.providers_done = true;
        }
    }
}

pub(super) fn provider_of(card: Card) -> Provider {
    Provider {
        peer: card.kraken_peer,
        addr: card.addr,
        kind: card.kind,
        dht_peer: card.dht_peer.to_base58(),
    }
}
