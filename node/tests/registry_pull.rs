//! A registry client's `GET` of a blob on an agent is that agent's pull: the bytes stream
//! in order while the blob downloads (ranges too), and the pull is counted in the metrics
//! and reported (`krakenctl pull-report`) as a `Pull` RPC's would be; a warm `GET` is
//! counted as a pull of a local blob.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use kraken_node::config::NodeRole;
use kraken_node::proto::{Request, Response};
use support::{TestCluster, blob_file};

fn http() -> reqwest::Client {
    // Workspace builds give reqwest's rustls no default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()[name].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_get_streams_the_blob_while_it_downloads_and_counts_as_the_pull() {
    const LEN: u64 = 24 << 20;
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    // Throttled, so that the clients overlap the download (~3 s).
    let mut config = c.config("agent-1", NodeRole::Agent);
    config.agent.ingress_bytes_per_sec = 8 << 20;
    let agent = c.start(config).await;
    c.converge(1).await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 31);
    let data = std::fs::read(&path).unwrap();
    c.upload(&path, &digest, LEN).await;
    let role = c.node(agent).roles().agent.clone().unwrap();
    let url = format!(
        "http://{}/v2/library/app/blobs/{digest}",
        c.node(agent).registry_addr().unwrap()
    );
    let h = http();

    // The whole blob: its first bytes arrive while the download runs.
    let mut whole = h.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(header(&whole, "content-length"), LEN.to_string());
    let first = whole.chunk().await.unwrap().unwrap();
    assert!(
        !role.cas().contains(&digest).unwrap(),
        "the first bytes came before the download completed"
    );
    // A range from the middle, asked for mid-download: the same download serves it.
    let ranged = h
        .get(&url)
        .header("range", "bytes=10000000-15999999")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        header(&ranged, "content-range"),
        format!("bytes 10000000-15999999/{LEN}")
    );
    let part = ranged.bytes().await.unwrap();
    assert!(part == data[10_000_000..16_000_000], "the range's bytes");
    let mut body = first.to_vec();
    while let Some(chunk) = whole.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    assert!(body == data, "the blob's bytes, in order");

    // One pull, counted and reported like a `Pull` RPC's (the report lands at the commit,
    // just after the last byte went out).
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let asked = c
            .client()
            .call_within(
                c.node(agent).quic_addr(),
                &Request::PullReport { digest },
                Duration::from_secs(10),
            )
            .await;
        match asked {
            Ok(Response::Pull(r)) => break r,
            other => assert!(Instant::now() < deadline, "no pull report: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!report.already_present);
    assert_eq!(report.length, LEN);
    assert_eq!(report.bytes_from_origins + report.bytes_from_agents, LEN);
    let text = c.node(agent).metrics().render();
    assert!(text.contains("kraken_pulls_total 1\n"), "{text}");
    assert!(
        text.contains(&format!(
            "kraken_bytes_received_total{{kind=\"origin\"}} {LEN}\n"
        )),
        "{text}"
    );
    let memory: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("kraken_streamed_pieces_total{from=\"memory\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(memory > 0, "pieces reached the clients from memory: {text}");
    assert_eq!(
        role.exchange().stream_memory_used(),
        0,
        "nothing kept after"
    );

    // Again, now that the agent holds it: the blob server sends it from the store (one
    // redirect, followed), counted as a pull that moved nothing; the download's report stays.
    let warm = h.get(&url).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    assert_ne!(warm.url().as_str(), url, "served by the blob server");
    assert!(warm.bytes().await.unwrap() == data, "the warm blob's bytes");
    let text = c.node(agent).metrics().render();
    assert!(text.contains("kraken_pulls_total 2\n"), "{text}");
    assert!(
        text.contains(&format!(
            "kraken_bytes_received_total{{kind=\"origin\"}} {LEN}\n"
        )),
        "{text}"
    );
    assert!(!role.report(&digest).unwrap().already_present);
}

/// Found by the fault campaign (`kraken-bench campaign`, its "corrupt" fault): a byte flipped
/// in an agent's stored copy of a blob was sent to registry clients as it was, by the blob
/// server's `sendfile` path, and made the blob's manifest unreadable there (500) for good.
/// Now a local read checks the copy first, evicts one that no longer matches its digest and
/// downloads a fresh one: the client gets the right bytes, and the store holds them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_copy_is_never_sent_to_a_client_and_is_downloaded_again() {
    const LEN: u64 = 3 << 20;
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    let agent = c.add("agent-1", NodeRole::Agent).await;
    c.converge(1).await;
    let (path, digest) = blob_file(c.dir.path(), "blob", LEN, 77);
    let data = std::fs::read(&path).unwrap();
    c.upload(&path, &digest, LEN).await;
    let url = format!(
        "http://{}/v2/library/app/blobs/{digest}",
        c.node(agent).registry_addr().unwrap()
    );
    let h = http();
    let first = h.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.bytes().await.unwrap(), data);
    let cas = c.node(agent).roles().agent.as_ref().unwrap().cas().clone();
    // The download commits just after the last byte streams out.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cas.contains(&digest).unwrap() {
        assert!(Instant::now() < deadline, "the blob was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Warm reads of a copy that just downloaded, or was checked since its file last
    // changed, do not hash it again (at most once, should a read beat the download's
    // completion to the record).
    let role = c.node(agent).roles().agent.as_ref().unwrap().clone();
    for _ in 0..3 {
        let warm = h.get(&url).send().await.unwrap();
        assert_eq!(warm.bytes().await.unwrap(), data);
    }
    let hashed = role.copies_hashed();
    assert!(hashed <= 1, "warm reads hashed the copy {hashed} times");

    // Rot one byte in the middle of the stored copy.
    let file = cas.blob_path(&digest);
    let mut stored = std::fs::read(&file).unwrap();
    stored[(LEN / 2) as usize] ^= 0xff;
    std::fs::write(&file, &stored).unwrap();

    // Warm path (the blob server), then the registry API's streaming path: right bytes.
    for _ in 0..2 {
        let again = h.get(&url).send().await.unwrap();
        assert_eq!(again.status(), 200);
        let body = again.bytes().await.unwrap();
        assert!(body == data, "a client was sent the corrupt copy");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cas.contains(&digest).unwrap() {
        assert!(Instant::now() < deadline, "the fresh copy was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        role.copies_hashed() > hashed,
        "the changed copy was not hashed"
    );
    assert_eq!(c.stored_digest(agent, &digest), digest);
}
