//! The driver: one tokio task owning the libp2p swarm (Kademlia over QUIC). It turns
//! [`Command`]s of the [`Dht`](crate::Dht) handles into Kademlia queries, filters inbound
//! stores (cards must verify, provider keys must be blob keys, bounds and rate limits
//! hold), resolves provider records to verified cards, and keeps the blacklist.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kraken_storage::time::now_ms;

use futures::StreamExt;
use kraken_storage::Digest;
use kraken_transport::quic::{ClusterCa, MemberCertAuth, NodeIdentity};
use libp2p::core::ConnectedPoint;
use libp2p::kad::store::{MemoryStoreConfig, RecordStore};
use libp2p::kad::{self, InboundRequest, QueryId, Quorum, Record, RecordKey, StoreInserts};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId as DhtPeerId, StreamProtocol, Swarm, SwarmBuilder};
use tokio::sync::{mpsc, oneshot};

use crate::card::{self, Card};
use crate::limits::{KeyedBuckets, TokenBucket};
use crate::stats::{StatsCells, bump, set};
use crate::store::{Bounds, Store};
use crate::{DhtConfig, DhtError, LocalCard, MAX_PACKET_BYTES, Provider};

/// The Kademlia protocol of kraken clusters (never a public DHT's).
pub const PROTOCOL: &str = "/kraken/kad/1";
/// Kademlia's `k`: replication factor and bucket size (see the crate docs).
const K: usize = 20;
/// How often the driver looks at its clocks (deadlines, queued provides, card).
const TICK: Duration = Duration::from_millis(50);
/// Provides waiting for the rate limit, at most.
const MAX_QUEUED_PROVIDES: usize = 4_096;
/// Blacklisted peers remembered, at most (the oldest is forgotten first).
const MAX_BLACKLIST: usize = 10_000;
/// Remote peers with a rate-limit bucket, at most.
const MAX_LIMITED_PEERS: usize = 4_096;
/// How long the listener may take to report its address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

mod inbound;
mod lookup;

use lookup::Lookup;

/// What a [`Dht`](crate::Dht) handle asks of the driver.
pub(crate) enum Command {
    AddBootstrap(Vec<(String, SocketAddr)>),
    Provide(Digest),
    StopProviding(Digest),
    FindProviders {
        digest: Digest,
        limit: usize,
        timeout: Duration,
        reply: oneshot::Sender<Result<Vec<Provider>, DhtError>>,
    },
    ReportLiar(String),
    Blacklisted(oneshot::Sender<Vec<String>>),
    Shutdown(oneshot::Sender<()>),
}

/// What [`start`] hands the [`Dht`](crate::Dht) handle.
pub(crate) struct Started {
    pub commands: mpsc::UnboundedSender<Command>,
    pub listen_addr: SocketAddr,
    pub dht_peer_id: String,
    pub stats: Arc<StatsCells>,
}

/// Whose a running Kademlia query is.
enum Owner {
    /// A `find_providers` lookup (its id).
    Lookup(u64),
    /// The card of a provider.
    Card(DhtPeerId),
}

pub(crate) async fn start(
    config: DhtConfig,
    me: LocalCard,
    identity: &NodeIdentity,
    ca: &ClusterCa,
) -> Result<Started, DhtError> {
    let auth = MemberCertAuth::new(identity, ca)?;
    let keypair = crate::identity::load_or_create(&config.identity_path)?;
    let local = keypair.public().to_peer_id();
    let transport = |e: &dyn std::fmt::Display| DhtError::Transport(e.to_string());

    let mut kad_config = kad::Config::new(StreamProtocol::new(PROTOCOL));
    let k = NonZeroUsize::new(K).expect("K is not zero");
    kad_config
        .set_replication_factor(k)
        .set_kbucket_size(k)
        .set_record_filtering(StoreInserts::FilterBoth)
        .set_provider_record_ttl(Some(config.provider_ttl))
        .set_provider_publication_interval(Some(config.republish_interval))
        .set_record_ttl(Some(config.provider_ttl))
        // The driver republishes its own card (re-signed, fresh issue time); nodes never
        // re-replicate others' cards, so a stored card always comes from its owner.
        .set_publication_interval(None)
        .set_replication_interval(None)
        .set_caching(kad::Caching::Disabled)
        .set_max_packet_size(MAX_PACKET_BYTES)
        .set_query_timeout(Duration::from_secs(10));
    let store = Store::new(
        local,
        MemoryStoreConfig {
            max_records: config.max_records,
            max_value_bytes: card::MAX_CARD_BYTES + 1,
            // Unused: provider records live in the store's own table.
            ..MemoryStoreConfig::default()
        },
        Bounds {
            max_keys: config.max_provider_keys,
            max_per_key: config.max_providers_per_key,
            max_total: config.max_provider_records,
            answer: K,
        },
    );
    let mut behaviour = kad::Behaviour::with_config(local, store, kad_config);
    // Server mode always: nodes have no confirmed external address otherwise.
    behaviour.set_mode(Some(kad::Mode::Server));

    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| behaviour)
        .map_err(|e| transport(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    swarm
        .listen_on(multiaddr(config.listen))
        .map_err(|e| transport(&e))?;
    let listen_addr = tokio::time::timeout(LISTEN_TIMEOUT, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    if let Some(addr) = socket_addr(&address) {
                        return Ok(addr);
                    }
                }
                SwarmEvent::ListenerClosed { reason, .. } => {
                    return Err(DhtError::Transport(format!("listener closed: {reason:?}")));
                }
                SwarmEvent::ListenerError { error, .. } => return Err(transport(&error)),
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| DhtError::Transport("the listener reported no address".into()))??;
    // Nodes sit on a LAN: the listen address is the address others dial. Listening on an
    // unspecified address reports one address per interface (the rest reach the driver);
    // loopback is then no address for others, and the bound address is the unspecified
    // one with the actual port.
    let listen_addr = if config.listen.ip().is_unspecified() {
        if !listen_addr.ip().is_loopback() {
            swarm.add_external_address(multiaddr(listen_addr));
        }
        SocketAddr::new(config.listen.ip(), listen_addr.port())
    } else {
        swarm.add_external_address(multiaddr(listen_addr));
        listen_addr
    };

    let stats = Arc::new(StatsCells::default());
    let (commands, inbox) = mpsc::unbounded_channel();
    let now = Instant::now();
    let mut driver = Driver {
        swarm,
        local,
        auth,
        me,
        listen_ip: config.listen.ip(),
        query_bucket: TokenBucket::new(config.queries_per_sec, now),
        inbound: KeyedBuckets::new(config.inbound_per_sec, MAX_LIMITED_PEERS),
        max_card_age_ms: millis(config.provider_ttl + config.republish_interval),
        config,
        stats: stats.clone(),
        inbox,
        provided: HashSet::new(),
        queued_provides: VecDeque::new(),
        unannounced: Vec::new(),
        lookups: HashMap::new(),
        next_lookup: 0,
        owners: HashMap::new(),
        card_waiters: HashMap::new(),
        cards: HashMap::new(),
        blacklist: HashSet::new(),
        blacklist_order: VecDeque::new(),
        card_published: None,
        next_sweep: now,
    };
    driver.publish_card(now);
    tokio::spawn(driver.run());
    Ok(Started {
        commands,
        listen_addr,
        dht_peer_id: local.to_base58(),
        stats,
    })
}

fn multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty()
        .with(ip)
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}

fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip: IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Udp(port) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Driver {
    swarm: Swarm<kad::Behaviour<Store>>,
    local: DhtPeerId,
    auth: MemberCertAuth,
    me: LocalCard,
    listen_ip: IpAddr,
    config: DhtConfig,
    stats: Arc<StatsCells>,
    inbox: mpsc::UnboundedReceiver<Command>,
    /// Outgoing lookups and provides.
    query_bucket: TokenBucket,
    /// Inbound stores, per remote peer.
    inbound: KeyedBuckets<DhtPeerId>,
    /// Cards older than this are refused (TTL plus one republish interval).
    max_card_age_ms: u64,
    /// Digests this node provides (started or queued).
    provided: HashSet<Digest>,
    /// Provides waiting for the rate limit.
    queued_provides: VecDeque<Digest>,
    /// Provides started while no peer was known (stored here only).
    unannounced: Vec<Digest>,
    lookups: HashMap<u64, Lookup>,
    next_lookup: u64,
    owners: HashMap<QueryId, Owner>,
    /// Lookups waiting for a provider's card.
    card_waiters: HashMap<DhtPeerId, Vec<u64>>,
    /// Verified cards, at most `max_records`.
    cards: HashMap<DhtPeerId, Card>,
    blacklist: HashSet<DhtPeerId>,
    blacklist_order: VecDeque<DhtPeerId>,
    /// When this node's card was last published, and to how many routing peers.
    card_published: Option<(Instant, usize)>,
    next_sweep: Instant,
}

impl Driver {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.inbox.recv() => match command {
                    None => break,
                    Some(Command::Shutdown(ack)) => {
                        let _ = ack.send(());
                        break;
                    }
                    Some(command) => self.on_command(command, Instant::now()),
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event, Instant::now()),
                _ = tick.tick() => self.on_tick(Instant::now()),
            }
        }
        for (_, lookup) in self.lookups.drain() {
            let _ = lookup.reply.send(Err(DhtError::Stopped));
        }
    }

    fn kad(&mut self) -> &mut kad::Behaviour<Store> {
        self.swarm.behaviour_mut()
    }

    fn on_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::AddBootstrap(peers) => self.add_bootstrap(peers),
            Command::Provide(digest) => {
                if self.provided.insert(digest) {
                    if self.queued_provides.len() >= MAX_QUEUED_PROVIDES {
                        // Forgotten, so that a later `provide` tries again.
                        self.provided.remove(&digest);
                        bump(&self.stats.provides_dropped);
                    } else {
                        self.queued_provides.push_back(digest);
                        self.start_queued_provides(now);
                    }
                }
            }
            Command::StopProviding(digest) => {
                if self.provided.remove(&digest) {
                    self.queued_provides.retain(|d| *d != digest);
                    let key = RecordKey::new(&crate::provider_key(&digest));
                    self.kad().stop_providing(&key);
                }
            }
            Command::FindProviders {
                digest,
                limit,
                timeout,
                reply,
            } => self.find_providers(digest, limit, timeout, reply, now),
            Command::ReportLiar(peer) => match peer.parse::<DhtPeerId>() {
                Ok(peer) => self.blacklist(peer, "reported by the node"),
                Err(e) => tracing::debug!(%peer, error = %e, "report_liar: not a dht peer id"),
            },
            Command::Blacklisted(reply) => {
                let _ = reply.send(self.blacklist_order.iter().map(|p| p.to_base58()).collect());
            }
            Command::Shutdown(ack) => {
                // `run` stops before handing a shutdown here; acknowledge anyway.
                let _ = ack.send(());
            }
        }
        set(&self.stats.keys_provided, self.provided.len());
    }

    fn add_bootstrap(&mut self, peers: Vec<(String, SocketAddr)>) {
        let mut added = 0;
        for (id, addr) in peers {
            let Ok(peer) = id.parse::<DhtPeerId>() else {
                tracing::debug!(%id, "bootstrap peer: not a dht peer id");
                continue;
            };
            if peer == self.local || self.blacklist.contains(&peer) {
                continue;
            }
            self.kad().add_address(&peer, multiaddr(addr));
            added += 1;
        }
        if added > 0 {
            // Fails only without known peers, and there are some.
            let _ = self.kad().bootstrap();
        }
    }

    fn start_queued_provides(&mut self, now: Instant) {
        if self.queued_provides.is_empty() {
            return;
        }
        let alone = self.routing_peers() == 0;
        while !self.queued_provides.is_empty() && self.query_bucket.try_take(now) {
            let Some(digest) = self.queued_provides.pop_front() else {
                break;
            };
            let key = RecordKey::new(&crate::provider_key(&digest));
            if let Err(e) = self.kad().start_providing(key) {
                tracing::warn!(%digest, error = %e, "dht: cannot provide (store full)");
                self.provided.remove(&digest);
                bump(&self.stats.refused_store_full);
            } else if alone && self.unannounced.len() < MAX_QUEUED_PROVIDES {
                // Stored here only: announce it again once there are peers rather than
                // a republish interval later (beyond the bound, the interval it is).
                self.unannounced.push(digest);
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<kad::Event>, now: Instant) {
        match event {
            SwarmEvent::Behaviour(event) => self.on_kad_event(event, now),
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if self.blacklist.contains(&peer_id) {
                    bump(&self.stats.dropped_blacklisted);
                    // Kademlia routes to peers it dialled itself; never hand out a liar.
                    self.kad().remove_peer(&peer_id);
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                } else if let ConnectedPoint::Listener { send_back_addr, .. } = endpoint {
                    // libp2p's QUIC transport dials from its listening socket, so the
                    // source address of an inbound connection is the dialer's DHT
                    // address: route to it (Kademlia only learns addresses it dialled,
                    // and nodes bootstrap from a few members only).
                    if socket_addr(&send_back_addr).is_some() {
                        self.kad().add_address(&peer_id, send_back_addr);
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                // Listening on an unspecified address reports one address per interface:
                // others can dial those, except loopback.
                if let Some(addr) = socket_addr(&address)
                    && self.listen_ip.is_unspecified()
                    && !addr.ip().is_loopback()
                {
                    self.swarm.add_external_address(address);
                }
            }
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event, now: Instant) {
        match event {
            kad::Event::InboundRequest { request } => match request {
                InboundRequest::AddProvider {
                    record: Some(record),
                } => self.on_inbound_provider(record, now),
                InboundRequest::PutRecord {
                    source,
                    record: Some(record),
                    ..
                } => self.on_inbound_record(source, record, now),
                _ => {}
            },
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => self.on_query_progress(id, result, step.last, now),
            _ => {}
        }
    }

    fn blacklist(&mut self, peer: DhtPeerId, why: &str) {
        if peer == self.local || !self.blacklist.insert(peer) {
            return;
        }
        tracing::warn!(%peer, why, "dht: peer blacklisted");
        self.blacklist_order.push_back(peer);
        if self.blacklist_order.len() > MAX_BLACKLIST
            && let Some(old) = self.blacklist_order.pop_front()
        {
            self.blacklist.remove(&old);
        }
        self.cards.remove(&peer);
        let kad = self.swarm.behaviour_mut();
        kad.remove_peer(&peer);
        let store = kad.store_mut();
        store.remove(&RecordKey::new(&card::card_key(&peer)));
        store.providers_mut().remove_everywhere(&peer);
        let keys = store.providers_mut().other_keys();
        set(&self.stats.provider_keys_held, keys);
        let _ = self.swarm.disconnect_peer_id(peer);
        set(&self.stats.liars, self.blacklist.len());
    }

    /// Signs and publishes this node's card (stored locally, then at the `k` closest).
    fn publish_card(&mut self, now: Instant) {
        let card = Card {
            dht_peer: self.local,
            kraken_peer: self.me.peer,
            addr: self.me.addr,
            kind: self.me.kind,
            issued_ms: now_ms(),
        };
        let value = match card::encode(&card, &self.auth) {
            Ok(value) => value,
            Err(e) => {
                tracing::error!(error = %e, "dht: cannot sign this node's card");
                return;
            }
        };
        let mut record = Record::new(card::card_key(&self.local), value);
        record.publisher = Some(self.local);
        if let Err(e) = self.kad().put_record(record, Quorum::One) {
            tracing::warn!(error = %e, "dht: cannot store this node's card");
        }
        let peers = self.routing_peers();
        self.card_published = Some((now, peers));
    }

    /// Queues again the keys provided while no peer was known, once a bootstrap is over
    /// (not at the first peer: the routing table is filled by then).
    pub(super) fn announce_unannounced(&mut self, now: Instant) {
        if self.unannounced.is_empty() || self.routing_peers() == 0 {
            return;
        }
        for digest in std::mem::take(&mut self.unannounced) {
            if self.provided.contains(&digest) && self.queued_provides.len() < MAX_QUEUED_PROVIDES {
                self.queued_provides.push_back(digest);
            }
        }
        self.start_queued_provides(now);
    }

    fn routing_peers(&mut self) -> usize {
        self.kad().kbuckets().map(|b| b.num_entries()).sum()
    }

    fn on_tick(&mut self, now: Instant) {
        self.start_queued_provides(now);
        let ids: Vec<u64> = self.lookups.keys().copied().collect();
        for id in ids {
            self.check_lookup(id, now);
        }
        // Republish the card every interval, and sooner while this node knew fewer than
        // `k` peers when it last did (its card may sit nowhere but here).
        let peers = self.routing_peers();
        set(&self.stats.routing_peers, peers);
        let due = match self.card_published {
            None => true,
            Some((at, with)) => {
                let age = now.saturating_duration_since(at);
                age >= self.config.republish_interval
                    || (with < K && peers > with && age >= Duration::from_secs(1))
            }
        };
        if due {
            self.publish_card(now);
        }
        if now >= self.next_sweep {
            self.sweep(now);
            let every = (self.config.provider_ttl / 8).clamp(TICK, Duration::from_secs(60));
            self.next_sweep = now + every;
        }
    }

    /// Drops expired records and provider records (Kademlia drops them only when asked
    /// for them) and updates the store gauges.
    fn sweep(&mut self, now: Instant) {
        let store = self.swarm.behaviour_mut().store_mut();
        store.retain_records(|_, r| !r.is_expired(now));
        let expired = store.providers_mut().remove_expired(now);
        let records = store.records().count();
        let keys = store.providers_mut().other_keys();
        let providers = store.providers_mut().other_records();
        tracing::debug!(expired, keys, providers, "dht: provider store swept");
        set(&self.stats.records_held, records);
        set(&self.stats.provider_keys_held, keys);
    }
}
