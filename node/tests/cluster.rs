//! End to end: real nodes (origins, a tracker, agents) in one process over real QUIC on
//! loopback, with a filesystem backend. Blobs are uploaded, distributed, read through,
//! survive lost origins and corrupt peers.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use kraken_node::config::NodeRole;
use support::{TestCluster, blob_file};

async fn cluster(origins: usize, agents: usize) -> TestCluster {
    cluster_with(origins, agents, |_| {}).await
}

/// `tweak` adjusts each agent's config.
async fn cluster_with(
    origins: usize,
    agents: usize,
    tweak: impl Fn(&mut kraken_node::NodeConfig),
) -> TestCluster {
    let mut c = TestCluster::new();
    for i in 1..=origins {
        c.add(&format!("origin-{i}"), NodeRole::Origin).await;
    }
    c.add("tracker-1", NodeRole::Tracker).await;
    for i in 1..=agents {
        let mut config = c.config(&format!("agent-{i}"), NodeRole::Agent);
        tweak(&mut config);
        c.start(config).await;
    }
    c.converge(origins).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_reaches_every_agent_mostly_from_other_agents() {
    const LEN: u64 = 200 << 20;
    let c = cluster(3, 8).await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 1);
    c.upload(&path, &digest, LEN).await;
    c.wait_replicated(&digest, 3).await;

    let agents = c.agents();
    let reports = futures::future::join_all(agents.iter().map(|&i| c.pull(i, &digest))).await;
    let mut from_origins = 0;
    for (&i, r) in agents.iter().zip(&reports) {
        let r = r.as_ref().unwrap();
        assert_eq!(r.length, LEN);
        assert_eq!(
            c.stored_digest(i, &digest),
            digest,
            "agent {i} stored other bytes"
        );
        from_origins += r.bytes_from_origins;
    }
    let egress = from_origins as f64 / LEN as f64;
    eprintln!("origin egress: {egress:.2}x the blob for 8 agents");
    assert!(
        egress < 5.0,
        "origins sent {egress:.2}x the blob to 8 agents"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_completes_after_two_of_three_origins_die_mid_distribution() {
    const LEN: u64 = 64 << 20;
    let mut c = cluster_with(3, 4, |a| a.agent.ingress_bytes_per_sec = 16 << 20).await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 2);
    c.upload(&path, &digest, LEN).await;
    c.wait_replicated(&digest, 3).await;

    // Agents download through an ingress limit so the distribution is still under way
    // when the origins die.
    let agents = c.agents();
    let pulls: Vec<_> = agents
        .iter()
        .map(|&i| {
            let addr = c.node(i).quic_addr();
            let client = c.client().clone();
            tokio::spawn(async move {
                let request = kraken_node::proto::Request::Pull {
                    namespace: "default".into(),
                    digest,
                };
                client
                    .call_within(addr, &request, Duration::from_secs(300))
                    .await
            })
        })
        .collect();
    // Once some agent has started receiving, kill two origins.
    let first = agents[0];
    let cas = c.node(first).roles().agent.as_ref().unwrap().cas().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cas.info(&digest).unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "no download started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let origins = c.origins();
    c.kill(origins[0]);
    c.kill(origins[1]);
    for (p, &i) in pulls.into_iter().zip(&agents) {
        match p.await.unwrap() {
            Ok(kraken_node::proto::Response::Pull(r)) => assert_eq!(r.length, LEN),
            other => panic!("agent {i}: {other:?}"),
        }
        assert_eq!(c.stored_digest(i, &digest), digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_only_in_the_backend_is_read_through_once_for_many_agents() {
    const LEN: u64 = 24 << 20;
    let c = cluster(3, 4).await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 3);
    // Put it straight into the backend, as another cluster's write-back would have.
    let backend = kraken_storage::backend::Backend::new(
        "seed",
        &support::fs_backend(&c.backend_root),
        kraken_storage::backend::default_http_client().unwrap(),
    )
    .unwrap();
    backend
        .put_file(&digest, std::fs::File::open(&path).unwrap(), LEN)
        .await
        .unwrap();

    let agents = c.agents();
    let reports = futures::future::join_all(agents.iter().map(|&i| c.pull(i, &digest))).await;
    for (&i, r) in agents.iter().zip(&reports) {
        assert_eq!(r.as_ref().unwrap().length, LEN);
        assert_eq!(c.stored_digest(i, &digest), digest);
    }
    // One read of the backend, by one owner, however many agents asked at once.
    let read: Vec<u64> = c
        .origins()
        .iter()
        .map(|&i| backend_read_bytes(c.node(i)))
        .collect();
    assert_eq!(
        read.iter().sum::<u64>(),
        LEN,
        "backend reads per origin: {read:?}"
    );

    // A blob the backend lacks is a clear "not found", not a hang.
    let missing = kraken_storage::Digest::sha256_of(b"nobody has this");
    let err = c.pull(agents[0], &missing).await.unwrap_err();
    assert!(err.contains("NotFound"), "{err}");
}

fn backend_read_bytes(node: &kraken_node::Node) -> u64 {
    let text = node.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix("kraken_backend_read_bytes_total "))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_pulls_of_one_digest_share_one_download() {
    const LEN: u64 = 16 << 20;
    let c = cluster(1, 1).await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 4);
    c.upload(&path, &digest, LEN).await;
    let agent_index = c.agents()[0];
    let agent = c.node(agent_index).roles().agent.clone().unwrap();
    let pulls = (0..100).map(|_| {
        let agent = agent.clone();
        tokio::spawn(async move { agent.pull("default", &digest).await })
    });
    let reports: Vec<_> = futures::future::join_all(pulls).await;
    let first = reports[0].as_ref().unwrap().as_ref().unwrap().clone();
    for r in &reports {
        let r = r.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(r, &first, "every caller sees the one pull");
    }
    assert!(!first.already_present);
    let text = c.node(agent_index).metrics().render();
    assert!(text.contains("kraken_pulls_total 1\n"), "{text}");
    // Exactly the blob crossed the network once (no endgame duplicates at one peer).
    assert_eq!(first.bytes_from_origins + first.bytes_from_agents, LEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_serving_corrupt_pieces_is_blacklisted_and_nothing_bad_is_stored() {
    const LEN: u64 = 32 << 20;
    let c = cluster(1, 5).await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 5);
    c.upload(&path, &digest, LEN).await;
    let agents = c.agents();
    let bad = agents[0];
    c.pull(bad, &digest).await.unwrap();
    // Rot every byte of the bad agent's copy on disk: it now serves garbage for every
    // piece while claiming to have them all.
    let cas = c.node(bad).roles().agent.as_ref().unwrap().cas().clone();
    let file = cas.blob_path(&digest);
    let mut bytes = std::fs::read(&file).unwrap();
    for b in bytes.iter_mut() {
        *b ^= 0x5a;
    }
    std::fs::write(&file, &bytes).unwrap();

    let others = &agents[1..];
    let reports = futures::future::join_all(others.iter().map(|&i| c.pull(i, &digest))).await;
    let mut bad_pieces = 0;
    for (&i, r) in others.iter().zip(&reports) {
        let r = r.as_ref().unwrap();
        bad_pieces += r.bad_pieces;
        // Blacklisted after its first bad pieces: at most what was in flight to it.
        assert!(
            r.bad_pieces <= 5,
            "agent {i} kept asking the corrupt agent: {r:?}"
        );
        assert_eq!(
            c.stored_digest(i, &digest),
            digest,
            "agent {i} stored bad bytes"
        );
    }
    eprintln!("bad pieces seen: {bad_pieces}");
    // The reports name the corrupt agent, and only it.
    let bad_ids: std::collections::BTreeSet<String> = reports
        .iter()
        .flat_map(|r| {
            r.as_ref()
                .unwrap()
                .bad_peers
                .iter()
                .map(|(id, _, _)| id.clone())
        })
        .collect();
    let pool_id = c.node(bad).cluster().pool().endpoint().peer_id();
    assert_eq!(bad_ids, [hex::encode(pool_id.0)].into_iter().collect());
    assert!(
        bad_pieces > 0,
        "nobody asked the corrupt agent: the test proved nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_and_a_wrong_digest_stores_nothing() {
    use kraken_node::proto::{ErrorKind, Request, Response};
    use kraken_transport::quic::RequestBody;
    const LEN: u64 = 8 << 20;
    let c = cluster(1, 0).await;
    let origin = c.node(c.origins()[0]);
    let addr = origin.quic_addr();
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 9);
    let data = std::fs::read(&path).unwrap();
    let upload = |offset: u64| Request::Upload {
        namespace: "default".into(),
        digest,
        offset,
        length: LEN,
        replica: false,
        persisted: false,
    };

    // The first half, then the body ends: the origin keeps it and says how much it has.
    let half = &data[..(LEN / 2) as usize];
    let (r, _) = c
        .client()
        .call_stream(addr, &upload(0), RequestBody::Bytes(half.to_vec().into()))
        .await
        .unwrap();
    assert!(
        matches!(r, Response::UploadOffset(n) if n == LEN / 2),
        "{r:?}"
    );
    // Resuming from the wrong place is refused with the right offset in the message.
    let err = c
        .client()
        .call_stream(addr, &upload(1), RequestBody::None)
        .await
        .unwrap_err();
    assert_eq!(err.remote().unwrap().kind, ErrorKind::OffsetMismatch);
    // push_file asks where to resume and sends only the rest.
    let pushed = kraken_node::origin::upload::push_file(
        c.client(),
        addr,
        "default",
        &digest,
        &path,
        LEN,
        false,
        false,
    )
    .await
    .unwrap();
    assert_eq!(pushed.sent, LEN / 2);
    let o = origin.roles().origin.as_ref().unwrap();
    assert!(o.cas().contains(&digest).unwrap());

    // Bytes that do not hash to the digest: a clear error, nothing stored, nothing queued.
    let liar = kraken_storage::Digest::sha256_of(b"something else");
    let wrong = Request::Upload {
        namespace: "default".into(),
        digest: liar,
        offset: 0,
        length: LEN,
        replica: false,
        persisted: false,
    };
    let err = c
        .client()
        .call_stream(addr, &wrong, RequestBody::Bytes(data.clone().into()))
        .await
        .unwrap_err();
    assert_eq!(
        err.remote().unwrap().kind,
        ErrorKind::DigestMismatch,
        "{err}"
    );
    assert!(!o.cas().contains(&liar).unwrap());
    match c
        .client()
        .call(addr, &Request::UploadStatus { digest: liar })
        .await
        .unwrap()
    {
        Response::UploadOffset(0) => {}
        other => panic!("{other:?}"),
    }
    // The write-back queued before the ingest is dropped as an orphan.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while o.queue().list().unwrap().iter().any(|i| i.digest == liar) {
        assert!(
            std::time::Instant::now() < deadline,
            "orphan write-back kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A body longer than declared is refused and leaves nothing staged.
    let short = Request::Upload {
        namespace: "default".into(),
        digest: liar,
        offset: 0,
        length: 10,
        replica: false,
        persisted: false,
    };
    let err = c
        .client()
        .call_stream(
            addr,
            &short,
            RequestBody::Bytes(data[..1000].to_vec().into()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.remote().unwrap().kind, ErrorKind::BadRequest, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_move_on_to_the_next_tracker_when_one_dies() {
    const LEN: u64 = 4 << 20;
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    let t1 = c.add("tracker-1", NodeRole::Tracker).await;
    let t2 = c.add("tracker-2", NodeRole::Tracker).await;
    let a = c.add("agent-1", NodeRole::Agent).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c
        .node(a)
        .cluster()
        .view()
        .ring(kraken_membership::Role::Tracker)
        .len()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "agent never saw both trackers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 10);
    c.upload(&path, &digest, LEN).await;
    // Kill whichever tracker owns the digest first.
    let owner = c
        .node(a)
        .cluster()
        .owners_of_digest(kraken_membership::Role::Tracker, &digest, 1)[0]
        .id
        .clone();
    let victim = if c.node(t1).name() == owner.as_str() {
        t1
    } else {
        t2
    };
    c.kill(victim);
    let started = std::time::Instant::now();
    let report = c.pull(a, &digest).await.unwrap();
    assert_eq!(report.length, LEN);
    assert_eq!(c.stored_digest(a, &digest), digest);
    eprintln!(
        "pull with a dead first tracker took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_origin_receives_the_blobs_it_now_owns() {
    const LEN: u64 = 2 << 20;
    let mut c = cluster(2, 0).await;
    let mut digests = Vec::new();
    for seed in 0..4 {
        let (path, digest) = blob_file(c.dir.path(), &format!("b{seed}"), LEN, 100 + seed);
        c.upload(&path, &digest, LEN).await;
        digests.push(digest);
    }
    for d in &digests {
        c.wait_replicated(d, 2).await;
    }
    // A third origin joins: with 3 replicas it owns every blob, and repair copies them.
    let o3 = c.add("origin-3", NodeRole::Origin).await;
    c.converge(3).await;
    let cas = c.node(o3).roles().origin.as_ref().unwrap().cas().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for d in &digests {
        while !cas.contains(d).unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "{d} never reached origin-3"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_streams_a_blob_and_a_range_of_it_while_downloading() {
    use futures::TryStreamExt;
    const LEN: u64 = 12 << 20;
    let c = cluster_with(1, 1, |a| a.agent.ingress_bytes_per_sec = 8 << 20).await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 11);
    let data = std::fs::read(&path).unwrap();
    c.upload(&path, &digest, LEN).await;
    let agent = c.node(c.agents()[0]).roles().agent.clone().unwrap();

    let range = 3_000_000..7_500_000u64;
    let (whole, part) = tokio::join!(
        async {
            let s = agent.read_stream("default", &digest, None).await.unwrap();
            let chunks: Vec<bytes::Bytes> = s.try_collect().await.unwrap();
            chunks.concat()
        },
        async {
            let s = agent
                .read_stream("default", &digest, Some(range.clone()))
                .await
                .unwrap();
            let chunks: Vec<bytes::Bytes> = s.try_collect().await.unwrap();
            chunks.concat()
        }
    );
    assert!(whole == data, "streamed bytes differ");
    assert!(part == data[range.start as usize..range.end as usize]);
    // Past the end: a clear error before any byte.
    let err = agent
        .read_stream("default", &digest, Some(0..LEN + 1))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind, kraken_node::proto::ErrorKind::BadRequest);
}

/// A metainfo past the 256 KiB one RPC frame carries (a blob past 64 GiB in 16 MiB pieces;
/// here 4,200 pieces of 16 KiB) travels origin → tracker → agent as a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metainfo_larger_than_one_frame_reaches_the_agents() {
    const PIECE: u32 = 16 * 1024;
    const LEN: u64 = 4_200 * PIECE as u64;
    let mut c = TestCluster::new();
    for i in 1..=2 {
        let mut config = c.config(&format!("origin-{i}"), NodeRole::Origin);
        config.store = Some(kraken_storage::cas::CasConfig {
            piece_lengths: kraken_storage::PieceLengthTable::uniform(PIECE),
            ..kraken_storage::cas::CasConfig::at(config.node.data_dir.join("cas"))
        });
        c.start(config).await;
    }
    c.add("tracker-1", NodeRole::Tracker).await;
    c.add("agent-1", NodeRole::Agent).await;
    c.converge(2).await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 77);
    c.upload(&path, &digest, LEN).await;

    let agent = c.agents()[0];
    let report = c.pull(agent, &digest).await.unwrap();
    assert_eq!(report.length, LEN);
    assert_eq!(c.stored_digest(agent, &digest), digest);
    let metainfo = c
        .node(agent)
        .roles()
        .agent
        .as_ref()
        .unwrap()
        .cas()
        .metainfo(&digest);
    let metainfo = metainfo.unwrap().unwrap();
    assert_eq!(metainfo.piece_count(), 4_200);
    assert!(metainfo.encode().len() > kraken_transport::wire::MAX_FRAME_LEN);
}
