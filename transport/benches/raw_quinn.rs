//! Loopback QUIC throughput: raw-quinn baselines and this crate's piece protocol.
//!
//! ```text
//! cargo bench -p kraken-transport --bench raw_quinn -- [--mib N] [--rounds N] [MODE ...]
//! ```
//!
//! Modes (`raw endpoint pieces exchange` by default), each moving `N` MiB (default 1024)
//! over one connection between two endpoints in this process, with mutual TLS from a dev
//! CA and 4 MiB socket buffers:
//! - `raw`: quinn endpoints built directly with quinn's default transport settings; one
//!   unidirectional stream carries everything. The baseline.
//! - `raw-mtu`: `raw` with path MTU discovery allowed up to 6,500-byte UDP payloads
//!   (quinn's default stops at 1452), the largest whose batched sends plain quinn gets
//!   through Linux: the nearest to like-for-like, since quinn's cost is mostly per packet
//!   (`QuicConfig` goes up to 8,952, which only this crate's socket can send).
//! - `endpoint`: the same single stream over this crate's `Endpoint` (its `QuicConfig`
//!   windows, congestion controller and MTU discovery).
//! - `work`: no network; the exchange's other work on every byte, through the same storage
//!   calls, on one thread: an origin's store reads each 4 MiB piece, a leecher's partial
//!   blob takes it through a piece writer (BLAKE3, the sha256 chain, direct writes),
//!   progress is saved every 16 pieces, then the commit. With `endpoint` it gives a bound
//!   for the exchange: (their CPU time) / cores.
//! - `pieces`: this crate's piece protocol: 4 MiB pieces, each on its own stream via
//!   `send_piece`, 8 in flight, each verified by `recv_piece` (BLAKE3) on arrival.
//! - `exchange`: the whole piece exchange between two nodes in this process: the seeder's
//!   CAS (its blob ingested, then read once, as replication does on an origin, so it is
//!   sent from the page cache as `raw` sends from memory), `PieceExchange` sessions
//!   driven by the swarm, pieces streamed into the leecher's CAS while hashed with BLAKE3
//!   and checked along the digest's sha256 chain, then the leecher's commit. The figure
//!   that matters; it also reports the download's CPU time and the process's peak RSS,
//!   an upper bound for the leecher (the seeder shares the process).
//! - `exchange-trusting`: the same with the leecher's `verify_digest_on_commit` off: every
//!   piece is still BLAKE3-verified on arrival, but the blob's sha256 is not checked.
//! - `exchange-buffered`: the same with the leecher's `direct_writes` off: pieces are
//!   written through the page cache.
//! - `exchange-split`: `exchange` with the seeder in a child process (this binary again,
//!   `--seeder-child`), so the peak RSS reported is the leecher's alone.
//!
//! After each `exchange`, `exchange-trusting` and `exchange-buffered` download the leecher
//! reads the blob once, as an agent serving it to a local client does, and reports that
//! read's time: after direct writes it comes from the disk and fills the page cache, which
//! the download itself skipped.
//!
//! Reports MB/s (10^6 bytes per second) from the first byte sent to the last byte received,
//! the process's CPU time (user + system) during the mode (for the `exchange` modes
//! including the seeder's ingest and the read after; their own line gives the download's),
//! and each mode's ratio to `raw` (and to `raw-mtu`, and to the bound) when they ran.
//! `--rounds N` runs the modes N times over, interleaved (each round runs every mode in the
//! order given), then prints each mode's median and range over the rounds. Every ratio is
//! taken within its round: this VM's speed drifts by a quarter within minutes, and one
//! baseline run against one mode run can land on either side of a target by that drift.
//! `KRAKEN_BENCH_DIR` picks where the files of `work` and the `exchange` modes live
//! (default: the system temp dir).

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use kraken_storage::{Metainfo, PieceIndex, PieceLengthTable};
use kraken_transport::quic::tls::dev::DevCa;
use kraken_transport::quic::{
    ClusterCa, Endpoint, NodeIdentity, QuicConfig, recv_piece, send_piece,
};
use kraken_transport::wire::PieceHeader;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::Semaphore;

const MIB: usize = 1024 * 1024;
const SOCKET_BUFFER: usize = 4 * MIB;
const PIECES_IN_FLIGHT: usize = 8;
/// The baseline modes: every mode after one in a round gets a ratio to it.
const BASELINES: [&str; 2] = ["raw", "raw-mtu"];
/// The exchange's throughput target, as a ratio to `raw`.
const EXCHANGE_TARGET: f64 = 0.85;
/// The modes running both exchange nodes in this process (`exchange_bench::run`).
const LOCAL_EXCHANGE_MODES: [&str; 3] = ["exchange", "exchange-trusting", "exchange-buffered"];

fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some(exchange_bench::SEEDER_CHILD) {
        let args: Vec<String> = std::env::args().skip(2).collect();
        return exchange_bench::seeder_child(&args);
    }
    let mut mib = 1024usize;
    let mut rounds = 1usize;
    let mut modes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--mib" => mib = args.next().context("--mib needs a value")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds needs a value")?.parse()?,
            "raw" | "raw-mtu" | "endpoint" | "work" | "pieces" | "exchange"
            | "exchange-trusting" | "exchange-buffered" | "exchange-split" => modes.push(arg),
            other => bail!(
                "unknown argument {other:?} (expected --mib N, --rounds N, raw, raw-mtu, \
                 endpoint, work, pieces, exchange, exchange-trusting, exchange-buffered, \
                 exchange-split)"
            ),
        }
    }
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if modes.is_empty() {
        modes = vec![
            "raw".into(),
            "endpoint".into(),
            "pieces".into(),
            "exchange".into(),
        ];
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let ca = DevCa::create(dir.path())?;
        let nodes = Nodes {
            sender: ca.issue_node_cert("sender")?,
            receiver: ca.issue_node_cert("receiver")?,
            cluster: ca.cluster_ca(),
            ca,
        };
        let bytes = mib * MIB;
        let mut summary = Summary::default();
        for round in 1..=rounds {
            if rounds > 1 {
                println!("round {round} of {rounds}");
            }
            run_round(&modes, &nodes, bytes, &mut summary).await?;
        }
        if rounds > 1 {
            summary.print(&modes, rounds);
        }
        Ok(())
    })
}

/// The two nodes' identities and the dev CA that issued them.
struct Nodes {
    ca: DevCa,
    cluster: ClusterCa,
    sender: NodeIdentity,
    receiver: NodeIdentity,
}

/// One mode's figures in one round.
struct Figures {
    secs: f64,
    /// To each baseline that ran earlier in the same round.
    ratios: Vec<(&'static str, f64)>,
    /// To the CPU bound, for the modes that verify what `work` does.
    to_bound: Option<f64>,
}

/// Every round's figures, by mode, for the closing summary.
#[derive(Default)]
struct Summary(std::collections::BTreeMap<String, Vec<Figures>>);

impl Summary {
    /// Per mode: the median and range of its time and of each ratio over the rounds. A
    /// ratio is always taken within one round, so the VM's drift between rounds (its speed
    /// wanders by a quarter within minutes) moves the baseline and the mode together.
    fn print(&self, modes: &[String], rounds: usize) {
        println!("summary over {rounds} rounds (median, then min-max):");
        let mut shown = std::collections::BTreeSet::new();
        for mode in modes.iter().filter(|m| shown.insert(m.as_str())) {
            let Some(figures) = self.0.get(mode) else {
                continue;
            };
            let secs: Vec<f64> = figures.iter().map(|f| f.secs).collect();
            let mut line = format!("{mode:>8}: {} s", spread(&secs));
            for name in BASELINES {
                let ratios: Vec<f64> = figures
                    .iter()
                    .flat_map(|f| f.ratios.iter().filter(|(n, _)| *n == name))
                    .map(|(_, r)| *r)
                    .collect();
                if ratios.is_empty() {
                    continue;
                }
                line += &format!("  ratio to {name} {}", spread(&ratios));
                if name == "raw" && mode.starts_with("exchange") {
                    let met = ratios.iter().filter(|r| **r >= EXCHANGE_TARGET).count();
                    line += &format!(" ({met} of {} at {EXCHANGE_TARGET} or above)", ratios.len());
                }
            }
            let bounds: Vec<f64> = figures.iter().filter_map(|f| f.to_bound).collect();
            if !bounds.is_empty() {
                line += &format!("  ratio to the CPU bound {}", spread(&bounds));
            }
            println!("{line}");
        }
    }
}

/// "median (min-max)" of `values`, which is not empty.
fn spread(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = match n % 2 {
        1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    format!("{median:.2} ({:.2}-{:.2})", sorted[0], sorted[n - 1])
}

/// Runs every mode once, in order, printing each one's figures and ratios to the baselines
/// that ran before it in this round.
async fn run_round(
    modes: &[String],
    nodes: &Nodes,
    bytes: usize,
    summary: &mut Summary,
) -> Result<()> {
    let Nodes {
        ca,
        cluster,
        sender,
        receiver,
    } = nodes;
    let mut baselines: Vec<(&'static str, f64)> = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut endpoint_cpu, mut work_cpu) = (None, None);
    for mode in modes {
        let cpu_before = cpu_secs();
        let mut cpu_of_work = None;
        let (secs, moved) = match mode.as_str() {
            "raw" => raw(sender, receiver, cluster, bytes).await?,
            "raw-mtu" => raw_mtu(sender, receiver, cluster, bytes).await?,
            "endpoint" => endpoint_stream(sender, receiver, cluster, bytes).await?,
            "work" => {
                let (secs, moved, cpu) = work(bytes)?;
                cpu_of_work = cpu;
                (secs, moved)
            }
            m if LOCAL_EXCHANGE_MODES.contains(&m) => {
                let store = exchange_bench::LeecherStore::of_mode(mode);
                exchange_bench::run(mode, sender, receiver, cluster, bytes, store).await?
            }
            "exchange-split" => exchange_bench::run_split(ca, receiver, bytes).await?,
            _ => pieces(sender, receiver, cluster, bytes).await?,
        };
        let cpu = match mode.as_str() {
            "work" => cpu_of_work,
            _ => cpu_since(cpu_before),
        };
        match mode.as_str() {
            "endpoint" => endpoint_cpu = cpu,
            "work" => work_cpu = cpu,
            _ => {}
        }
        let rate = moved as f64 / secs / 1e6;
        let ratios: Vec<(&'static str, f64)> = baselines
            .iter()
            .map(|(name, r)| (*name, rate / r))
            .collect();
        let mut shown: String = ratios
            .iter()
            .map(|(name, r)| format!("  ratio to {name} = {r:.2}"))
            .collect();
        // `work` hashes with sha256 too: a bound only for the modes that check it.
        let verifying = matches!(mode.as_str(), "exchange" | "exchange-split");
        let mut to_bound = None;
        if let (true, Some(e), Some(w)) = (verifying, endpoint_cpu, work_cpu) {
            // Both kinds of work spread perfectly over every core: no download is faster.
            let bound = (e + w) / cores as f64;
            to_bound = Some(bound / secs);
            shown += &format!(
                "  ratio to the CPU bound ((endpoint + work CPU) / {cores} cores = {bound:.2} s) \
                 = {:.2}",
                bound / secs
            );
        }
        let with_ingest = match LOCAL_EXCHANGE_MODES.contains(&mode.as_str()) {
            true => " with the ingest and the read",
            false => "",
        };
        println!(
            "{mode:>8}: {} MiB in {secs:.2} s = {rate:.0} MB/s, process CPU {}{with_ingest}\
             {shown}",
            moved / MIB,
            show_cpu(cpu),
        );
        if let Some(name) = BASELINES.into_iter().find(|b| b == mode) {
            baselines.push((name, rate));
        }
        summary.0.entry(mode.clone()).or_default().push(Figures {
            secs,
            ratios,
            to_bound,
        });
    }
    Ok(())
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat`
/// (Linux's 100 ticks a second).
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU seconds used since `before` (a [`cpu_secs`] reading).
fn cpu_since(before: Option<f64>) -> Option<f64> {
    cpu_secs().zip(before).map(|(now, before)| now - before)
}

fn show_cpu(cpu: Option<f64>) -> String {
    cpu.map_or("unknown".into(), |c| format!("{c:.2} s"))
}

/// A quinn endpoint with quinn's default transport settings and 4 MiB socket buffers; with
/// `max_udp_payload`, path MTU discovery may go up to it (quinn's default stops at 1452).
fn raw_quinn_endpoint(
    identity: &NodeIdentity,
    ca: &ClusterCa,
    max_udp_payload: Option<u16>,
) -> Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
    let mut endpoint_config = quinn::EndpointConfig::default();
    let mut transport = quinn::TransportConfig::default();
    if let Some(max) = max_udp_payload {
        endpoint_config.max_udp_payload_size(max)?;
        let mut discovery = quinn::MtuDiscoveryConfig::default();
        discovery.upper_bound(max);
        transport.mtu_discovery_config(Some(discovery));
    }
    let transport = Arc::new(transport);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(
        identity.server_config(ca)?,
    )?));
    server.transport_config(transport.clone());
    let mut endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )?;
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(
        identity.client_config(ca)?,
    )?));
    client.transport_config(transport);
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Sends `bytes` on one unidirectional stream of `conn`; the peer counts them.
async fn one_stream(
    send_conn: quinn::Connection,
    recv_conn: quinn::Connection,
    bytes: usize,
) -> Result<(f64, usize)> {
    let reader = tokio::spawn(async move {
        let mut recv = recv_conn.accept_uni().await?;
        let mut total = 0usize;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            total += chunk.bytes.len();
        }
        anyhow::Ok((total, Instant::now()))
    });
    let chunk = Bytes::from(vec![0x5au8; MIB]);
    let start = Instant::now();
    let mut send = send_conn.open_uni().await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB);
        send.write_chunk(chunk.slice(..n)).await?;
        left -= n;
    }
    send.finish()?;
    let (total, end) = reader.await??;
    if total != bytes {
        bail!("received {total} of {bytes} bytes");
    }
    Ok(((end - start).as_secs_f64(), total))
}

async fn raw(
    sender: &NodeIdentity,
    receiver: &NodeIdentity,
    ca: &ClusterCa,
    bytes: usize,
) -> Result<(f64, usize)> {
    raw_with(sender, receiver, ca, bytes, None).await
}

/// `raw` with MTU discovery up to the largest UDP payload plain quinn can send in full
/// batches: 10 datagrams per send, and Linux takes at most 65,507 bytes in one.
async fn raw_mtu(
    sender: &NodeIdentity,
    receiver: &NodeIdentity,
    ca: &ClusterCa,
    bytes: usize,
) -> Result<(f64, usize)> {
    const PLAIN_QUINN_MAX: u16 = 6500;
    raw_with(sender, receiver, ca, bytes, Some(PLAIN_QUINN_MAX)).await
}

async fn raw_with(
    sender: &NodeIdentity,
    receiver: &NodeIdentity,
    ca: &ClusterCa,
    bytes: usize,
    max_udp_payload: Option<u16>,
) -> Result<(f64, usize)> {
    let a = raw_quinn_endpoint(sender, ca, max_udp_payload)?;
    let b = raw_quinn_endpoint(receiver, ca, max_udp_payload)?;
    let b_addr = b.local_addr()?;
    let accept = tokio::spawn(async move {
        b.accept()
            .await
            .context("no connection")?
            .await
            .map_err(anyhow::Error::from)
    });
    let conn = a.connect(b_addr, "kraken-node")?.await?;
    let server_conn = accept.await??;
    one_stream(conn, server_conn, bytes).await
}

async fn endpoints(
    sender: &NodeIdentity,
    receiver: &NodeIdentity,
    ca: &ClusterCa,
) -> Result<(Endpoint, quinn::Connection, quinn::Connection)> {
    let config = QuicConfig::bind_to(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let a = Endpoint::bind(&config, sender, ca)?;
    let b = Endpoint::bind(&config, receiver, ca)?;
    let b_addr = b.local_addr()?;
    let accept = tokio::spawn(async move {
        let accepting = b.accept().await.context("no connection")?;
        anyhow::Ok(accepting.establish().await?)
    });
    let conn = a.connect(b_addr).await?;
    let server_conn = accept.await??;
    Ok((
        a,
        conn.connection().clone(),
        server_conn.connection().clone(),
    ))
}

async fn endpoint_stream(
    sender: &NodeIdentity,
    receiver: &NodeIdentity,
    ca: &ClusterCa,
    bytes: usize,
) -> Result<(f64, usize)> {
    let (_a, conn, server_conn) = endpoints(sender, receiver, ca).await?;
    one_stream(conn, server_conn, bytes).await
}

/// `work`: what the exchange does to every byte apart from QUIC, through the same storage
/// calls, on one thread and without a network: an origin's store reads each piece (as a
/// seeder does), a leecher's partial blob takes it through a piece writer (BLAKE3 and the
/// sha256 chain, direct writes where the filesystem allows), records it, saves progress
/// every 16 pieces and commits. Its CPU time plus `endpoint`'s is the least CPU a verified
/// download can take; divided by the cores, a bound on its time.
fn work(bytes: usize) -> Result<(f64, usize, Option<f64>)> {
    use kraken_storage::cas::{Cas, CasConfig};
    let dir = tempfile::tempdir_in(exchange_bench::bench_dir())?;
    let origin = Cas::open(CasConfig::at(dir.path().join("origin")))?;
    let metainfo = exchange_bench::ingest_pattern(&origin, bytes as u64)?;
    let source = origin.reader(metainfo.digest())?.piece_source()?;
    let leecher = Cas::open(CasConfig::at(dir.path().join("leecher")))?;
    let start = Instant::now();
    let cpu_start = cpu_secs();
    let mut partial = leecher.start_partial(&metainfo)?;
    println!("    work: direct writes: {}", partial.writes_direct());
    for i in 0..metainfo.piece_count() {
        let piece = source.read_piece(PieceIndex(i))?;
        let mut writer = partial.piece_writer(PieceIndex(i))?;
        writer.write(&piece)?;
        partial.mark_stored(writer.finish()?)?;
    }
    partial.commit()?;
    let cpu = cpu_since(cpu_start);
    Ok((start.elapsed().as_secs_f64(), bytes, cpu))
}

async fn pieces(
    sender: &NodeIdentity,
    receiver: &NodeIdentity,
    ca: &ClusterCa,
    bytes: usize,
) -> Result<(f64, usize)> {
    // A 64 MiB blob of 4 MiB pieces, sent round after round until `bytes` have moved.
    let blob: Vec<u8> = (0..64 * MIB).map(|i| (i * 31 % 251) as u8).collect();
    let metainfo = Arc::new(Metainfo::from_bytes(&blob, &PieceLengthTable::default())?);
    let blob = Bytes::from(blob);
    let piece_len = metainfo.piece_length() as usize;
    let count = bytes.div_ceil(piece_len);
    let (_a, conn, server_conn) = endpoints(sender, receiver, ca).await?;

    let verifier = {
        let metainfo = metainfo.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..count {
                let recv = server_conn.accept_uni().await?;
                let metainfo = metainfo.clone();
                tasks.spawn(async move { recv_piece(recv, &metainfo).await.map(|(_, b)| b.len()) });
            }
            let mut total = 0;
            while let Some(r) = tasks.join_next().await {
                total += r??;
            }
            anyhow::Ok((total, Instant::now()))
        })
    };

    let in_flight = Arc::new(Semaphore::new(PIECES_IN_FLIGHT));
    let start = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..count {
        let index = (i % metainfo.piece_count() as usize) as u32;
        let range = metainfo
            .piece_range(PieceIndex(index))
            .context("piece range")?;
        let body = blob.slice(range.start as usize..range.end as usize);
        let header = PieceHeader {
            digest: *metainfo.digest(),
            index: PieceIndex(index),
            len: body.len() as u32,
        };
        let permit = in_flight.clone().acquire_owned().await?;
        let conn = conn.clone();
        sends.spawn(async move {
            let r = send_piece(&conn, header, body).await;
            drop(permit);
            r
        });
    }
    while let Some(r) = sends.join_next().await {
        r??;
    }
    let (total, end) = verifier.await??;
    Ok(((end - start).as_secs_f64(), total))
}

/// The `exchange` mode: two full nodes (CAS + pool + piece exchange) in this process.
mod exchange_bench {
    use std::io::Read;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result};
    use kraken_storage::cas::{BlobReader, Cas, CasConfig};
    use kraken_storage::{Digest, DigestAlgorithm, Metainfo};
    use kraken_transport::exchange::{ExchangeConfig, Handout, PieceExchange, Tracker};
    use kraken_transport::quic::tls::dev::DevCa;
    use kraken_transport::quic::{
        BiStream, ClusterCa, ConnectionPool, Endpoint, NodeIdentity, PoolConfig, QuicConfig,
        RpcConfig, RpcStream, Service, StreamOutcome, codes, serve,
    };
    use kraken_transport::swarm::{PeerInfo, PeerKind};
    use kraken_transport::wire::PeerId;

    /// How the leecher's store differs from the defaults in a mode (the seeder's never does).
    #[derive(Clone, Copy)]
    pub(super) struct LeecherStore {
        verify_digest: bool,
        direct_writes: bool,
    }

    impl LeecherStore {
        const DEFAULT: LeecherStore = LeecherStore {
            verify_digest: true,
            direct_writes: true,
        };

        pub(super) fn of_mode(mode: &str) -> Self {
            match mode {
                "exchange-trusting" => LeecherStore {
                    verify_digest: false,
                    ..Self::DEFAULT
                },
                "exchange-buffered" => LeecherStore {
                    direct_writes: false,
                    ..Self::DEFAULT
                },
                _ => Self::DEFAULT,
            }
        }
    }

    /// Hands out the seeder, always.
    #[derive(Clone)]
    struct FixedTracker(Arc<OnceLock<PeerInfo>>);

    impl Tracker for FixedTracker {
        type Error = std::convert::Infallible;

        async fn announce(&self, _: Digest, _: PeerInfo, _: u64) -> Result<Handout, Self::Error> {
            Ok(Handout {
                peers: self.0.get().cloned().into_iter().collect(),
                interval: Some(Duration::from_secs(5)),
            })
        }
    }

    #[derive(Default)]
    struct NodeService(OnceLock<PieceExchange<FixedTracker>>);

    impl Service for NodeService {
        type Request = ();

        async fn rpc(&self, _: PeerId, _: (), stream: RpcStream) -> StreamOutcome {
            stream.reject(codes::UNSUPPORTED_STREAM);
            StreamOutcome::Done
        }

        async fn session(&self, peer: PeerId, digest: Digest, stream: BiStream) -> StreamOutcome {
            match self.0.get() {
                Some(ex) => ex.accept_session(peer, digest, stream).await,
                None => StreamOutcome::Done,
            }
        }

        async fn uni_stream(&self, peer: PeerId, recv: quinn::RecvStream) -> StreamOutcome {
            match self.0.get() {
                Some(ex) => ex.accept_piece(peer, recv).await,
                None => StreamOutcome::Done,
            }
        }
    }

    fn node(
        identity: &NodeIdentity,
        ca: &ClusterCa,
        kind: PeerKind,
        tracker: FixedTracker,
        dir: &std::path::Path,
        store: LeecherStore,
    ) -> Result<(PieceExchange<FixedTracker>, Endpoint)> {
        let config = QuicConfig::bind_to(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let endpoint = Endpoint::bind(&config, identity, ca)?;
        let handle = endpoint.clone();
        let addr = endpoint.local_addr()?;
        let service = Arc::new(NodeService::default());
        let serving = service.clone();
        let pool = ConnectionPool::new(endpoint, PoolConfig::default(), move |conn| {
            tokio::spawn(serve(conn, serving.clone(), RpcConfig::default()));
        })?;
        let me = PeerInfo {
            id: identity.peer_id,
            addr,
            kind,
            complete: kind == PeerKind::Origin,
        };
        let cas = Cas::open(CasConfig {
            verify_digest_on_commit: store.verify_digest,
            direct_writes: store.direct_writes,
            ..CasConfig::at(dir)
        })?;
        let ex = PieceExchange::new(
            pool,
            cas,
            tracker.clone(),
            me.clone(),
            ExchangeConfig::default(),
        )?;
        let _ = service.0.set(ex.clone());
        if kind == PeerKind::Origin {
            let _ = tracker.0.set(me);
        }
        // The endpoint too: its accept loop holds the node, which holds its store.
        Ok((ex, handle))
    }

    /// Stops a node, so that a round's peak memory is not every earlier round's nodes too.
    fn stop((ex, endpoint): &(PieceExchange<FixedTracker>, Endpoint)) {
        ex.close();
        endpoint.close();
    }

    /// Deterministic bytes without holding the blob in memory.
    pub(super) struct Pattern {
        left: u64,
        state: u64,
    }

    impl Pattern {
        /// The first `len` bytes of the pattern.
        pub(super) fn new(len: u64) -> Self {
            Pattern {
                left: len,
                state: 7,
            }
        }
    }

    impl Read for Pattern {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX))
                / 8
                * 8;
            let n = if n == 0 {
                buf.len().min(self.left as usize)
            } else {
                n
            };
            for chunk in buf[..n].chunks_mut(8) {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
            }
            self.left -= n as u64;
            Ok(n)
        }
    }

    fn digest_of(len: u64) -> std::io::Result<Digest> {
        Digest::of_reader(DigestAlgorithm::Sha256, Pattern::new(len)).map(|(digest, _)| digest)
    }

    /// The first argument that makes this binary a seeder for `exchange-split`.
    pub(super) const SEEDER_CHILD: &str = "--seeder-child";

    /// `--seeder-child <ca dir> <bytes>`: ingests the pattern blob, seeds it, writes its
    /// metainfo to `<ca dir>/bench-metainfo`, prints `ready <addr>` and serves until its
    /// standard input closes.
    pub(super) fn seeder_child(args: &[String]) -> Result<()> {
        use std::io::Write;
        let [ca_dir, bytes] = args else {
            anyhow::bail!("usage: {SEEDER_CHILD} <ca dir> <bytes>");
        };
        let ca_dir = std::path::Path::new(ca_dir);
        let len: u64 = bytes.parse()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let ca = DevCa::load(ca_dir)?;
            let identity = DevCa::load_node_cert(ca_dir, "bench-seeder")?;
            let store = tempfile::tempdir_in(bench_dir())?;
            let tracker = FixedTracker(Arc::new(OnceLock::new()));
            let (seeder, _endpoint) = node(
                &identity,
                &ca.cluster_ca(),
                PeerKind::Origin,
                tracker.clone(),
                store.path(),
                LeecherStore::DEFAULT,
            )?;
            let metainfo = seed_pattern(&seeder, len).await?;
            std::fs::write(ca_dir.join("bench-metainfo"), metainfo.encode())?;
            let addr = tracker
                .0
                .get()
                .context("the seeder registered itself")?
                .addr;
            let mut out = std::io::stdout();
            writeln!(out, "ready {addr}")?;
            out.flush()?;
            // Serve until the parent closes our input (or dies).
            tokio::task::spawn_blocking(|| {
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
            })
            .await?;
            seeder.close();
            anyhow::Ok(())
        })
    }

    /// `exchange` with the seeder in a child process: the peak RSS is the leecher's.
    pub(super) async fn run_split(
        ca: &DevCa,
        receiver: &NodeIdentity,
        bytes: usize,
    ) -> Result<(f64, usize)> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let seeder_id = match DevCa::load_node_cert(ca.dir(), "bench-seeder") {
            Ok(id) => id,
            Err(_) => ca.write_node_cert("bench-seeder")?,
        };
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                SEEDER_CHILD,
                &ca.dir().display().to_string(),
                &bytes.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        })
        .await??;
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("ready ")
            .with_context(|| format!("the seeder child said {line:?}"))?
            .parse()?;
        let metainfo = Metainfo::decode(&std::fs::read(ca.dir().join("bench-metainfo"))?)?;

        let store = tempfile::tempdir_in(bench_dir())?;
        let tracker = FixedTracker(Arc::new(OnceLock::new()));
        let _ = tracker.0.set(PeerInfo {
            id: seeder_id.peer_id,
            addr,
            kind: PeerKind::Origin,
            complete: true,
        });
        let (leecher, _endpoint) = node(
            receiver,
            &ca.cluster_ca(),
            PeerKind::Agent,
            tracker,
            store.path(),
            LeecherStore::DEFAULT,
        )?;
        let before = peak_rss_mib();
        let t = Instant::now();
        let report = leecher.download(metainfo).await;
        let secs = t.elapsed().as_secs_f64();
        // Closing its input ends the child.
        drop(child.stdin.take());
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        let report = report?;
        println!(
            "exchange-split: peak RSS of the leecher's process {} MiB (before the download: {} MiB); \
             from origin {} bytes",
            peak_rss_mib().unwrap_or(0),
            before.unwrap_or(0),
            report.stats.bytes_from_origins,
        );
        Ok((secs, bytes))
    }

    /// Reads a whole blob once, 1 MiB at a time: its time and CPU.
    fn read_once(reader: &BlobReader) -> Result<(f64, Option<f64>)> {
        let t = Instant::now();
        let cpu_before = super::cpu_secs();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0;
        while offset < reader.len() {
            let n = reader.read_at(offset, &mut buf)?;
            anyhow::ensure!(n > 0, "the blob ended early");
            offset += n as u64;
        }
        Ok((t.elapsed().as_secs_f64(), super::cpu_since(cpu_before)))
    }

    /// Ingests `len` bytes of the pattern into `seeder`'s store and seeds them.
    async fn seed_pattern(seeder: &PieceExchange<FixedTracker>, len: u64) -> Result<Metainfo> {
        let cas = seeder.cas().clone();
        let metainfo = tokio::task::spawn_blocking(move || ingest_pattern(&cas, len)).await??;
        seeder.seed(metainfo.digest())?;
        Ok(metainfo)
    }

    /// Ingests `len` bytes of the pattern into `cas` (as an origin does), then reads the
    /// blob once, as replication to an origin's co-owners does after a push: ingest
    /// writes past the page cache, and the seeder should send from the page cache as raw
    /// quinn sends from memory, not measure the disk. Their metainfo.
    pub(super) fn ingest_pattern(cas: &Cas, len: u64) -> Result<Metainfo> {
        let digest = digest_of(len)?;
        let metainfo = cas.ingest(&digest, Some(len), Pattern::new(len))?.metainfo;
        read_once(&cas.reader(&digest)?)?;
        Ok(metainfo)
    }

    /// Where stores live: `KRAKEN_BENCH_DIR`, else the system temp dir.
    pub(super) fn bench_dir() -> std::path::PathBuf {
        std::env::var_os("KRAKEN_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into)
    }

    fn peak_rss_mib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024)
    }

    pub(super) async fn run(
        mode: &str,
        sender: &NodeIdentity,
        receiver: &NodeIdentity,
        ca: &ClusterCa,
        bytes: usize,
        store: LeecherStore,
    ) -> Result<(f64, usize)> {
        let base = bench_dir();
        let dirs = (tempfile::tempdir_in(&base)?, tempfile::tempdir_in(&base)?);
        let tracker = FixedTracker(Arc::new(OnceLock::new()));
        let seeder_node = node(
            sender,
            ca,
            PeerKind::Origin,
            tracker.clone(),
            dirs.0.path(),
            LeecherStore::DEFAULT,
        )?;
        let leecher_node = node(receiver, ca, PeerKind::Agent, tracker, dirs.1.path(), store)?;
        let (seeder, leecher) = (&seeder_node.0, &leecher_node.0);
        let metainfo = seed_pattern(seeder, bytes as u64).await?;
        let before = peak_rss_mib();
        let cpu_before = super::cpu_secs();
        let t = Instant::now();
        let digest = *metainfo.digest();
        let report = leecher.download(metainfo).await?;
        let secs = t.elapsed().as_secs_f64();
        let cpu = super::cpu_since(cpu_before);
        let (read_secs, read_cpu) = read_once(&leecher.cas().reader(&digest)?)?;
        println!(
            "{mode}: download CPU {}, then one read of the blob {read_secs:.2} s, {} CPU; \
             {} peers, peak RSS of the whole process {} MiB (after ingest: {} MiB); \
             from origin {} bytes",
            super::show_cpu(cpu),
            super::show_cpu(read_cpu),
            report.stats.per_peer.len(),
            peak_rss_mib().unwrap_or(0),
            before.unwrap_or(0),
            report.stats.bytes_from_origins,
        );
        stop(&seeder_node);
        stop(&leecher_node);
        Ok((secs, bytes))
    }
}
