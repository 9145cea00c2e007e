//! The piece exchange over real QUIC on loopback: whole blobs move between real CAS
//! stores, verified piece by piece; corrupt and vanishing peers are survived.
#![cfg(feature = "quic")]
#![allow(clippy::unwrap_used)]

mod quic_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kraken_storage::cas::{Cas, CasConfig};
use kraken_storage::{Digest, Metainfo, PieceIndex, PieceLengthTable};
use kraken_transport::exchange::{
    ExchangeConfig, ExchangeError, Handout, PieceExchange, PieceLatencyObserver, Tracker,
};
use kraken_transport::limit::RateLimiter;
use kraken_transport::quic::{
    ConnectionPool, Endpoint, PoolConfig, RpcConfig, RpcStream, Service, StreamOutcome, serve,
};
use kraken_transport::swarm::handout::{HandoutConfig, PeerStore};
use kraken_transport::swarm::{PeerInfo, PeerKind, SwarmConfig};
use kraken_transport::wire::PeerId;
use quic_support::{Cluster, cluster, endpoint, pattern};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tempfile::TempDir;

/// The real handout policy behind an in-process "tracker".
#[derive(Default)]
struct TestTracker {
    store: Mutex<Option<PeerStore>>,
    origins: Mutex<Vec<PeerInfo>>,
}

#[derive(Clone, Default)]
struct SharedTracker(Arc<TestTracker>);

impl Tracker for SharedTracker {
    type Error = std::convert::Infallible;

    async fn announce(
        &self,
        digest: Digest,
        me: PeerInfo,
        _have: u64,
    ) -> Result<Handout, Self::Error> {
        let now = Instant::now();
        let origins = self.0.origins.lock().unwrap().clone();
        let mut store = self.0.store.lock().unwrap();
        let store = store.get_or_insert_with(|| PeerStore::new(HandoutConfig::default()));
        store.announce(now, digest, me.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(u64::from(me.id.0[0]));
        let peers = store.handout(now, &digest, me.id, &origins, &mut rng);
        Ok(Handout {
            peers,
            interval: Some(Duration::from_millis(500)),
        })
    }
}

type Exchange = PieceExchange<SharedTracker>;

/// The node side of the protocol for tests: sessions and pieces go to the exchange.
#[derive(Default)]
struct NodeService {
    ex: OnceLock<Exchange>,
}

impl Service for NodeService {
    type Request = ();

    async fn rpc(&self, _peer: PeerId, _request: (), stream: RpcStream) -> StreamOutcome {
        stream.reject(kraken_transport::quic::codes::UNSUPPORTED_STREAM);
        StreamOutcome::Done
    }

    async fn session(
        &self,
        peer: PeerId,
        digest: Digest,
        stream: kraken_transport::quic::BiStream,
    ) -> StreamOutcome {
        self.ex
            .get()
            .unwrap()
            .accept_session(peer, digest, stream)
            .await
    }

    async fn uni_stream(&self, peer: PeerId, recv: quinn::RecvStream) -> StreamOutcome {
        self.ex.get().unwrap().accept_piece(peer, recv).await
    }
}

struct Node {
    ex: Exchange,
    pool: ConnectionPool,
    endpoint: Endpoint,
    info: PeerInfo,
    _dir: TempDir,
}

fn swarm_config() -> SwarmConfig {
    SwarmConfig {
        announce_interval: Duration::from_millis(500),
        request_timeout_base: Duration::from_secs(5),
        ..SwarmConfig::default()
    }
}

/// The exchange config of these tests: [`swarm_config`], no limits.
fn exchange_config() -> ExchangeConfig {
    ExchangeConfig {
        swarm: swarm_config(),
        ..ExchangeConfig::default()
    }
}

fn node(cluster: &Cluster, name: &str, kind: PeerKind, tracker: &SharedTracker) -> Node {
    node_with(cluster, name, kind, tracker, exchange_config())
}

fn node_with(
    cluster: &Cluster,
    name: &str,
    kind: PeerKind,
    tracker: &SharedTracker,
    config: ExchangeConfig,
) -> Node {
    node_verifying(cluster, name, kind, tracker, config, true)
}

fn node_verifying(
    cluster: &Cluster,
    name: &str,
    kind: PeerKind,
    tracker: &SharedTracker,
    config: ExchangeConfig,
    verify_digest: bool,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    // 256 KiB pieces: enough pieces per blob for the swarm to matter at test sizes.
    let cas = Cas::open(CasConfig {
        piece_lengths: PieceLengthTable::uniform(256 * 1024),
        verify_digest_on_commit: verify_digest,
        ..CasConfig::at(dir.path())
    })
    .unwrap();
    node_on(cluster, name, kind, tracker, config, cas, dir)
}

/// A node whose exchange works on `cas` (`dir` lives as long as the node).
fn node_on(
    cluster: &Cluster,
    name: &str,
    kind: PeerKind,
    tracker: &SharedTracker,
    config: ExchangeConfig,
    cas: Cas,
    dir: TempDir,
) -> Node {
    let (endpoint, identity) = endpoint(cluster, name);
    let addr: SocketAddr = endpoint.local_addr().unwrap();
    let service = Arc::new(NodeService::default());
    let serving = service.clone();
    let pool = ConnectionPool::new(endpoint.clone(), PoolConfig::default(), move |conn| {
        tokio::spawn(serve(conn, serving.clone(), RpcConfig::default()));
    })
    .unwrap();
    let info = PeerInfo {
        id: identity.peer_id,
        addr,
        kind,
        complete: false,
    };
    let ex = PieceExchange::new(pool.clone(), cas, tracker.clone(), info.clone(), config).unwrap();
    let _ = service.ex.set(ex.clone());
    if kind == PeerKind::Origin {
        let mut o = info.clone();
        o.complete = true;
        tracker.0.origins.lock().unwrap().push(o);
    }
    Node {
        ex,
        pool,
        endpoint,
        info,
        _dir: dir,
    }
}

/// Stores `data` in `node`'s CAS and starts seeding it.
fn seed(node: &Node, data: &[u8]) -> Metainfo {
    let digest = Digest::sha256_of(data);
    let got = node
        .ex
        .cas()
        .ingest(&digest, Some(data.len() as u64), data)
        .unwrap();
    node.ex.seed(&digest).unwrap();
    got.metainfo
}

async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s"))
}

fn read_back(node: &Node, digest: &Digest) -> Vec<u8> {
    node.ex.cas().reader(digest).unwrap().read_all().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_blob_moves_between_two_nodes() {
    let cluster = cluster();
    let tracker = SharedTracker::default();
    let origin = node(&cluster, "origin", PeerKind::Origin, &tracker);
    let agent = node(&cluster, "agent", PeerKind::Agent, &tracker);
    let data = pattern(256 << 20, 1);
    let meta = seed(&origin, &data);

    let report = within(120, "the download", agent.ex.download(meta.clone()))
        .await
        .unwrap();
    assert!(!report.already_present);
    assert_eq!(report.stats.bytes_from_origins, meta.length());
    assert_eq!(report.stats.bad_pieces, 0);
    assert!(agent.ex.cas().contains(meta.digest()).unwrap());
    assert!(
        read_back(&agent, meta.digest()) == data[..],
        "byte-identical"
    );
    eprintln!(
        "256 MiB in {:?} ({:.0} MB/s)",
        report.elapsed,
        meta.length() as f64 / report.elapsed.as_secs_f64() / 1e6
    );
    // A second download of a present blob does nothing.
    assert!(agent.ex.download(meta).await.unwrap().already_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_piece_reports_its_latency_once() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let cluster = cluster();
    let tracker = SharedTracker::default();
    let origin = node(&cluster, "origin", PeerKind::Origin, &tracker);
    let observed = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let config = ExchangeConfig {
        piece_latency: Some(PieceLatencyObserver::new({
            let (observed, slowest) = (observed.clone(), slowest.clone());
            move |d| {
                observed.fetch_add(1, Ordering::Relaxed);
                slowest.fetch_max(d.as_micros() as u64, Ordering::Relaxed);
            }
        })),
        ..exchange_config()
    };
    let agent = node_with(&cluster, "agent", PeerKind::Agent, &tracker, config);
    let data = pattern(8 << 20, 7);
    let meta = seed(&origin, &data);

    let report = within(60, "the download", agent.ex.download(meta.clone()))
        .await
        .unwrap();
    assert_eq!(
        observed.load(Ordering::Relaxed),
        u64::from(meta.piece_count()),
        "one observation per stored piece"
    );
    let slowest = Duration::from_micros(slowest.load(Ordering::Relaxed));
    assert!(
        slowest > Duration::ZERO && slowest <= report.elapsed,
        "latency {slowest:?} within the download's {:?}",
        report.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seeder_and_eight_leechers_over_quic() {
    let cluster = cluster();
    let tracker = SharedTracker::default();
    let origin = node(&cluster, "origin", PeerKind::Origin, &tracker);
    let leechers: Vec<Node> = (0..8)
        .map(|i| node(&cluster, &format!("agent{i}"), PeerKind::Agent, &tracker))
        .collect();
    let data = pattern(24 << 20, 2);
    let meta = seed(&origin, &data);

    let downloads = leechers.iter().map(|n| n.ex.download(meta.clone()));
    let reports = within(120, "eight downloads", futures::future::join_all(downloads)).await;
    let mut from_agents = 0;
    let mut from_origin = 0;
    for (n, r) in leechers.iter().zip(reports) {
        let r = r.unwrap();
        from_agents += r.stats.bytes_from_agents;
        from_origin += r.stats.bytes_from_origins;
        assert!(read_back(n, meta.digest()) == data[..]);
    }
    assert_eq!(from_agents + from_origin, 8 * meta.length());
    eprintln!("from agents {from_agents}, from the origin {from_origin}");
    assert!(
        from_agents > from_origin,
        "most bytes should come from leechers: {from_agents} from agents vs {from_origin} from the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_pieces_is_caught_and_the_download_completes() {
    let cluster = cluster();
    let tracker = SharedTracker::default();
    let origin = node(&cluster, "origin", PeerKind::Origin, &tracker);
    let rotten = node(&cluster, "rotten", PeerKind::Agent, &tracker);
    let data = pattern(8 << 20, 3);
    let meta = seed(&origin, &data);
    // Pieces are proven by the digest's sha256 chain alone (no BLAKE3 pass on receipt):
    // the chain must catch the corrupt ones, and blame their sender.
    assert!(meta.has_chain());
    within(60, "the first download", rotten.ex.download(meta.clone()))
        .await
        .unwrap();
    // Bit rot on the first agent's disk: every piece it now serves is corrupt.
    let path = rotten.ex.cas().blob_path(meta.digest());
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes.iter_mut().step_by(4096) {
        *b ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();

    let victim = node(&cluster, "victim", PeerKind::Agent, &tracker);
    let report = within(60, "the second download", victim.ex.download(meta.clone()))
        .await
        .unwrap();
    assert!(
        read_back(&victim, meta.digest()) == data[..],
        "no bad byte stored"
    );
    assert!(
        report.stats.bad_pieces > 0,
        "the rotten peer was tried: {:?}",
        report.stats
    );
    let from_rotten = report
        .stats
        .per_peer
        .get(&rotten.info.id)
        .map_or(0, |s| s.downloaded);
    assert_eq!(from_rotten, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metainfo_that_lies_about_its_digest_fails_the_download_at_once() {
    let cluster = cluster();
    let tracker = SharedTracker::default();
    // An origin that trusts whatever metainfo it is given holds `data` under the digest
    // (and sha256 chain) of `other`, with `data`'s piece hashes: every piece it serves
    // matches the metainfo's BLAKE3 hashes.
    let rogue = node_verifying(
        &cluster,
        "rogue",
        PeerKind::Origin,
        &tracker,
        exchange_config(),
        false,
    );
    let data = pattern(4 << 20, 11);
    let other = pattern(4 << 20, 12);
    let table = PieceLengthTable::uniform(256 * 1024);
    let honest = Metainfo::from_bytes(&data, &table).unwrap();
    let named = Metainfo::from_bytes(&other, &table).unwrap();
    let liar = Metainfo::new(
        *named.digest(),
        honest.length(),
        honest.piece_length(),
        honest.piece_hashes().to_vec(),
    )
    .unwrap()
    .with_chain(named.chain().to_vec())
    .unwrap();
    let mut partial = rogue.ex.cas().start_partial(&liar).unwrap();
    for i in 0..liar.piece_count() {
        let r = liar.piece_range(PieceIndex(i)).unwrap();
        partial
            .write_piece(PieceIndex(i), &data[r.start as usize..r.end as usize])
            .unwrap();
    }
    partial.commit().unwrap();
    rogue.ex.seed(liar.digest()).unwrap();

    let victim = node(&cluster, "victim", PeerKind::Agent, &tracker);
    let err = within(30, "the download", victim.ex.download(liar.clone()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not describe"),
        "a clear error: {err}"
    );
    // Nothing stored as complete under the digest.
    assert!(victim.ex.cas().reader(liar.digest()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leecher_killed_midway_does_not_stop_the_others() {
    let cluster = cluster();
    let tracker = SharedTracker::default();
    let origin = node(&cluster, "origin", PeerKind::Origin, &tracker);
    let doomed = node(&cluster, "doomed", PeerKind::Agent, &tracker);
    let others: Vec<Node> = (0..2)
        .map(|i| node(&cluster, &format!("agent{i}"), PeerKind::Agent, &tracker))
        .collect();
    let data = pattern(64 << 20, 4);
    let meta = seed(&origin, &data);
    let digest = *meta.digest();

    let doomed_download = tokio::spawn({
        let ex = doomed.ex.clone();
        let meta = meta.clone();
        async move { ex.download(meta).await }
    });
    // Wait until it has started receiving, then take it off the network.
    within(30, "the doomed node's first piece", async {
        loop {
            let started = doomed.ex.cas().info(&digest).unwrap().is_some();
            if started {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    doomed.pool.close();
    doomed.endpoint.close();
    doomed_download.abort();

    let downloads = others.iter().map(|n| n.ex.download(meta.clone()));
    for r in within(120, "the others", futures::future::join_all(downloads)).await {
        r.unwrap();
    }
    for n in &others {
        assert!(read_back(n, &digest) == data[..]);
    }
}

fn limited(ingress: Option<u64>, egress: Option<u64>) -> ExchangeConfig {
    // Burst 0: the default, 1 MiB at these rates.
    let limiter = |rate| RateLimiter::new(rate, 0).unwrap();
    ExchangeConfig {
        swarm: swarm_config(),
        ingress: ingress.map(limiter),
        egress: egress.map(limiter),
        ..exchange_config()
    }
}

/// An origin, and an agent whose ingress is limited to 8 MiB/s.
fn origin_and_slow_agent(cluster: &Cluster, tracker: &SharedTracker) -> (Node, Node) {
    let origin = node(cluster, "origin", PeerKind::Origin, tracker);
    let agent = node_with(
        cluster,
        "agent",
        PeerKind::Agent,
        tracker,
        limited(Some(8 << 20), None),
    );
    (origin, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_limit_slows_a_download_that_still_completes() {
    let cluster = cluster();
    let tracker = SharedTracker::default();
    let (origin, agent) = origin_and_slow_agent(&cluster, &tracker);
    let data = pattern(16 << 20, 5);
    let meta = seed(&origin, &data);

    let started = Instant::now();
    let report = within(60, "the download", agent.ex.download(meta.clone()))
        .await
        .unwrap();
    let took = started.elapsed();
    // 1 MiB of burst, then 15 MiB at 8 MiB/s: at least ~1.9 s.
    assert!(took >= Duration::from_millis(1500), "took {took:?}");
    assert_eq!(report.stats.bytes_from_origins, meta.length());
    assert!(
        read_back(&agent, meta.digest()) == data[..],
        "byte-identical"
    );
    eprintln!("16 MiB under an 8 MiB/s ingress limit in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_limit_on_the_seeder_slows_a_download_that_still_completes() {
    let cluster = cluster();
    let tracker = SharedTracker::default();
    let origin = node_with(
        &cluster,
        "origin",
        PeerKind::Origin,
        &tracker,
        limited(None, Some(8 << 20)),
    );
    let agent = node(&cluster, "agent", PeerKind::Agent, &tracker);
    let data = pattern(16 << 20, 6);
    let meta = seed(&origin, &data);

    let started = Instant::now();
    within(60, "the download", agent.ex.download(meta.clone()))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "took {took:?}");
    assert!(
        read_back(&agent, meta.digest()) == data[..],
        "byte-identical"
    );
    eprintln!("16 MiB under an 8 MiB/s egress limit in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leecher_streams_pieces_in_order_while_downloading() {
    let cluster = cluster();
    let tracker = SharedTracker::default();
    // Throttled, so that the stream visibly overlaps the download (~2 s).
    let (origin, agent) = origin_and_slow_agent(&cluster, &tracker);
    let data = pattern(16 << 20, 7);
    let meta = seed(&origin, &data);
    let digest = *meta.digest();
    let total = meta.piece_count();

    let mut watch = agent.ex.start_download(meta.clone()).unwrap();
    assert_eq!(watch.digest(), &digest);
    assert!(
        agent.ex.watch(&digest).is_some(),
        "a running task is watchable"
    );

    // Someone else follows the piece set as it grows.
    let mut pieces = watch.pieces();
    let follower = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let have = pieces.borrow_and_update().count_ones();
            seen.push(have);
            if have == total || pieces.changed().await.is_err() {
                return seen;
            }
        }
    });

    let mut streamed = Vec::with_capacity(data.len());
    let mut before_done = 0;
    within(60, "streaming the blob", async {
        for i in 0..total {
            let index = PieceIndex(i);
            watch.wait_piece(index).await.unwrap();
            if watch.outcome().is_none() {
                before_done += 1;
            }
            streamed.extend_from_slice(&watch.read_piece(index).await.unwrap());
        }
    })
    .await;
    let stats = within(60, "the commit", watch.finished()).await.unwrap();
    assert_eq!(stats.bytes_from_origins, meta.length());
    assert!(streamed == data[..], "the stream is the blob");
    assert!(read_back(&agent, &digest) == data[..]);

    let seen = within(10, "the follower", follower).await.unwrap();
    assert!(
        seen.iter().any(|&n| n > 0 && n < total),
        "the piece set grew in steps: {seen:?}"
    );
    // The watch still reads after the partial file was renamed into the CAS.
    assert_eq!(
        watch.read_piece(PieceIndex(0)).await.unwrap(),
        data.slice(..meta.piece_length() as usize)
    );
    eprintln!(
        "{before_done} of {total} pieces streamed before the download was done; \
         the follower saw {} states",
        seen.len()
    );
}

/// Where the exchange's streaming readers took their pieces from: (memory, disk).
fn streamed(node: &Node) -> (u64, u64) {
    let c = node.ex.counters();
    (
        c.streamed_from_memory
            .load(std::sync::atomic::Ordering::Relaxed),
        c.streamed_from_disk
            .load(std::sync::atomic::Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_running_download_get_their_range_in_order_from_memory() {
    use futures::TryStreamExt;
    let cluster = cluster();
    let tracker = SharedTracker::default();
    // Throttled, so that the readers overlap the download (~2 s).
    let (origin, agent) = origin_and_slow_agent(&cluster, &tracker);
    let data = pattern(16 << 20, 21);
    let meta = seed(&origin, &data);
    let total = meta.piece_count();
    let mut watch = agent.ex.start_download(meta.clone()).unwrap();
    // Registered before any piece arrives: its window (the whole blob here, 64 MiB) is
    // asked for in order and every piece reaches it from memory.
    let whole = watch.clone().read_range(0..meta.length());
    let whole = tokio::spawn(async move {
        let mut first_at = None;
        let chunks: Vec<bytes::Bytes> = whole
            .inspect_ok(|_| {
                first_at.get_or_insert_with(Instant::now);
            })
            .try_collect()
            .await
            .unwrap();
        (chunks.concat(), first_at.unwrap())
    });
    // A range from the middle, asked for once the download is under way.
    let mut pieces = watch.pieces();
    within(30, "the first pieces", async {
        while pieces.borrow_and_update().count_ones() < 4 {
            pieces.changed().await.unwrap();
        }
    })
    .await;
    let range = 5_000_001..11_000_000u64;
    let part: Vec<bytes::Bytes> = within(
        60,
        "the range",
        watch.clone().read_range(range.clone()).try_collect(),
    )
    .await
    .unwrap();
    let (whole, first_at) = within(60, "the whole blob", whole).await.unwrap();
    let done_at = Instant::now();
    within(60, "the commit", watch.finished()).await.unwrap();
    assert!(whole == data[..], "the stream is the blob, in order");
    assert!(part.concat() == data[range.start as usize..range.end as usize]);
    assert!(
        done_at.duration_since(first_at) > Duration::from_millis(500),
        "the first bytes came long before the last"
    );
    let (memory, disk) = streamed(&agent);
    assert!(
        memory >= u64::from(total),
        "the whole-blob reader took every piece from memory: {memory} from memory, {disk} from disk"
    );
    assert_eq!(
        agent.ex.stream_memory_used(),
        0,
        "the readers left: nothing kept"
    );
    assert!(read_back(&agent, meta.digest()) == data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_complete_blob_has_every_piece_at_once() {
    let cluster = cluster();
    let tracker = SharedTracker::default();
    let origin = node(&cluster, "origin", PeerKind::Origin, &tracker);
    let data = pattern(3 << 20, 8);
    let digest = Digest::sha256_of(&data);
    assert!(origin.ex.watch(&digest).is_none(), "nothing to watch yet");
    origin
        .ex
        .cas()
        .ingest(&digest, Some(data.len() as u64), &data[..])
        .unwrap();

    let check = |mut watch: kraken_transport::exchange::BlobWatch| {
        let data = data.clone();
        async move {
            let total = watch.metainfo().piece_count();
            assert!(total > 1);
            assert!(watch.have().is_complete());
            assert!(matches!(watch.outcome(), Some(Ok(_))));
            let mut all = Vec::new();
            for i in 0..total {
                // Nothing to wait for.
                futures::FutureExt::now_or_never(watch.wait_piece(PieceIndex(i)))
                    .expect("no waiting")
                    .unwrap();
                all.extend_from_slice(&watch.read_piece(PieceIndex(i)).await.unwrap());
            }
            assert!(all == data[..]);
            assert!(matches!(
                watch.wait_piece(PieceIndex(total)).await,
                Err(ExchangeError::Cas(_))
            ));
            assert!(matches!(
                watch.read_piece(PieceIndex(total)).await,
                Err(ExchangeError::Cas(_))
            ));
            watch.finished().await.unwrap();
        }
    };
    // No task: the watch reads the CAS.
    check(origin.ex.watch(&digest).unwrap()).await;
    let meta = origin.ex.cas().metainfo(&digest).unwrap().unwrap();
    check(origin.ex.start_download(meta).unwrap()).await;
    // A seeding task.
    origin.ex.seed(&digest).unwrap();
    check(origin.ex.watch(&digest).unwrap()).await;
}

/// Progress saved by the flushes that run beside a download (every 4 pieces here) lets a
/// restarted exchange on the same store resume where the first one stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_stopped_midway_resumes_from_its_saved_progress() {
    let cluster = cluster();
    let tracker = SharedTracker::default();
    let origin = node(&cluster, "origin", PeerKind::Origin, &tracker);
    let data = pattern(32 << 20, 6);
    let meta = seed(&origin, &data);
    let digest = *meta.digest();
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(CasConfig {
        piece_lengths: PieceLengthTable::uniform(256 * 1024),
        flush_every_pieces: 4,
        ..CasConfig::at(dir.path())
    })
    .unwrap();
    let spare = || tempfile::tempdir().unwrap();

    // Slowed to 40 MB/s, so that it is still far from done when it is stopped.
    let slow = limited(Some(40_000_000), None);
    let first = node_on(
        &cluster,
        "first",
        PeerKind::Agent,
        &tracker,
        slow,
        cas.clone(),
        spare(),
    );
    let watch = first.ex.start_download(meta.clone()).unwrap();
    let mut pieces = watch.pieces();
    let stored_before = within(30, "16 pieces", async {
        loop {
            let n = pieces.borrow_and_update().count_ones();
            if n >= 16 {
                break n;
            }
            pieces.changed().await.unwrap();
        }
    })
    .await;
    first.ex.close();
    within(30, "the first exchange's blob task to end", async {
        while first.ex.active_blobs() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    first.pool.close();
    first.endpoint.close();

    let second = node_on(
        &cluster,
        "second",
        PeerKind::Agent,
        &tracker,
        exchange_config(),
        cas,
        spare(),
    );
    let watch = second.ex.start_download(meta.clone()).unwrap();
    let resumed = watch.have().count_ones();
    assert!(
        resumed >= stored_before,
        "resumed with {resumed} pieces, {stored_before} were stored before the stop"
    );
    assert!(
        resumed < meta.piece_count(),
        "the first run was not meant to finish"
    );
    within(60, "the resumed download", second.ex.download(meta.clone()))
        .await
        .unwrap();
    assert!(read_back(&second, &digest) == data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_seeders_stops_the_least_recently_used_unwatched_ones_first() {
    let cluster = cluster();
    let tracker = SharedTracker::default();
    let agent = node(&cluster, "agent", PeerKind::Agent, &tracker);
    let len = 1u64 << 20;
    let mut digests = Vec::new();
    for n in 0..3u8 {
        digests.push(*seed(&agent, &pattern(len as usize, 11 + 2 * n)).digest());
        // Distinct blobs (the pattern uses odd seeds), with distinct last-access times
        // (milliseconds), so the LRU order is the seeding order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (oldest, middle, newest) = (digests[0], digests[1], digests[2]);
    assert_eq!(agent.ex.active_blobs(), 3);
    // A registry client streaming the oldest: its swarm stays.
    let watched = agent.ex.watch(&oldest).unwrap();

    let r = within(10, "release", agent.ex.release_seeders(1)).await;
    assert_eq!((r.blobs, r.bytes), (1, len), "one blob covers one byte");
    assert_eq!(agent.ex.active_blobs(), 2);
    // Its swarm closed the blob: the store may evict it now.
    let purged = agent.ex.cas().purge(&middle, None).unwrap();
    assert_eq!(
        purged,
        kraken_storage::cas::PurgeOutcome::Removed {
            freed_bytes: len,
            deferred: false
        },
        "nobody holds the released blob open"
    );

    let r = within(10, "release", agent.ex.release_seeders(u64::MAX)).await;
    assert_eq!(
        (r.blobs, r.bytes),
        (1, len),
        "only the unwatched newest is left"
    );
    assert!(agent.ex.cas().contains(&newest).unwrap());
    assert_eq!(agent.ex.active_blobs(), 1);

    drop(watched);
    let r = within(10, "release", agent.ex.release_seeders(u64::MAX)).await;
    assert_eq!(r.blobs, 1, "the oldest, no longer watched");
    assert_eq!(agent.ex.active_blobs(), 0);
    let released = agent
        .ex
        .counters()
        .seeders_released
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(released, 3);
}
