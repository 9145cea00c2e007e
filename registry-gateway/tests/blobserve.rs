//! The zero-copy blob server behind the registry API: blob `GET`s of blobs complete in
//! the host's store (a real CAS) are redirected there and arrive byte-identical, whole and
//! in ranges, through reqwest and `curl -L`; what is not complete is never redirected; and
//! the server holds its ground against malformed, oversized, trickling and surplus
//! connections, and against eviction mid-send.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kraken_registry_gateway::{
    BlobServerConfig, GatewayConfig, GatewayMetrics, serve, serve_blobs,
};
use kraken_storage::Digest;
use kraken_storage::cas::{Cas, CasConfig};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A registry API and its blob server over one `MemRegistry` whose local blobs are a CAS.
struct Pair {
    api: SocketAddr,
    blobs: SocketAddr,
    registry: Arc<MemRegistry>,
    cas: Cas,
    metrics: GatewayMetrics,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start(tweak: impl FnOnce(&mut BlobServerConfig)) -> Pair {
        Pair::start_on("127.0.0.1:0", tweak).await
    }

    /// With the blob server bound to `blob_bind`.
    async fn start_on(blob_bind: &str, tweak: impl FnOnce(&mut BlobServerConfig)) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(CasConfig::at(dir.path().join("cas"))).unwrap();
        let registry = MemRegistry::new();
        registry.cas.set(cas.clone()).ok().unwrap();
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let blob_listener = tokio::net::TcpListener::bind(blob_bind).await.unwrap();
        let api = api_listener.local_addr().unwrap();
        let blobs = blob_listener.local_addr().unwrap();
        let metrics = GatewayMetrics::new();
        let config = GatewayConfig {
            blob_server: Some(blobs),
            metrics: metrics.clone(),
            ..pull_config(&uploads_dir(&dir))
        };
        let (stop, stopped) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tokio::spawn(serve(
            api_listener,
            registry.clone(),
            config,
            until(stopped.clone()),
        ));
        let mut blob_config = BlobServerConfig::new(api, metrics.clone());
        tweak(&mut blob_config);
        tokio::spawn(serve_blobs(
            blob_listener,
            registry.clone(),
            blob_config,
            until(stopped),
        ));
        Pair {
            api,
            blobs,
            registry,
            cas,
            metrics,
            stop,
            _dir: dir,
        }
    }

    /// A blob the cluster has (the streaming path) and this host holds complete.
    fn put_local(&self, bytes: &[u8]) -> Digest {
        let d = self.registry.insert_blob(bytes);
        self.cas
            .ingest(&d, Some(bytes.len() as u64), bytes)
            .unwrap();
        d
    }

    fn url(&self, digest: &Digest) -> String {
        format!("http://{}/v2/library/app/blobs/{digest}", self.api)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn bytes_of(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn no_redirects() -> reqwest::Client {
    let _ = http_client();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The ranges every path is checked with, and what each selects of `total` bytes.
fn ranges(total: u64) -> Vec<(String, std::ops::Range<u64>)> {
    vec![
        ("bytes=0-99".into(), 0..100),
        ("bytes=1000-1999999".into(), 1000..2_000_000),
        ("bytes=-4321".into(), total - 4321..total),
        (format!("bytes={}-", total - 77), total - 77..total),
        (format!("bytes=5-{}", total + 100), 5..total),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_blobs_redirect_and_arrive_byte_identical_whole_and_in_ranges() {
    let p = Pair::start(|_| {}).await;
    let data = bytes_of(3 << 20, 7);
    let total = data.len() as u64;
    let d = p.put_local(&data);

    // The registry API redirects the GET to the blob server; HEAD stays.
    let r = no_redirects().get(p.url(&d)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = header(&r, "location").unwrap();
    assert_eq!(
        location,
        format!("http://{}/v2/library/app/blobs/{d}", p.blobs)
    );
    let r = no_redirects().head(p.url(&d)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length").unwrap(), total.to_string());

    let client = http_client();
    let r = client.get(p.url(&d)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.url().as_str(), location);
    assert_eq!(header(&r, "docker-content-digest").unwrap(), d.to_string());
    assert_eq!(header(&r, "etag").unwrap(), format!("\"{d}\""));
    assert_eq!(header(&r, "accept-ranges").unwrap(), "bytes");
    assert_eq!(header(&r, "content-length").unwrap(), total.to_string());
    assert!(r.bytes().await.unwrap() == data);

    for (range, want) in ranges(total) {
        let r = client
            .get(p.url(&d))
            .header("range", &range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&r, "content-range").unwrap(),
            format!("bytes {}-{}/{total}", want.start, want.end - 1)
        );
        // The streaming path (told to stay) answers the same.
        let streamed = client
            .get(format!("{}?kraken-local=0", p.url(&d)))
            .header("range", &range)
            .send()
            .await
            .unwrap();
        assert_eq!(streamed.url().port(), Some(p.api.port()));
        let streamed = streamed.bytes().await.unwrap();
        let body = r.bytes().await.unwrap();
        assert!(
            body == data[want.start as usize..want.end as usize],
            "{range}"
        );
        assert!(body == streamed, "{range}");
    }

    // Unsatisfiable: 416 with the length, as the registry API says it.
    let r = client
        .get(p.url(&d))
        .header("range", format!("bytes={total}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header(&r, "content-range").unwrap(),
        format!("bytes */{total}")
    );
    assert_eq!(error_code(r).await, "RANGE_INVALID");

    // HEAD on the blob server itself, and an empty blob.
    let r = client
        .head(format!("http://{}/v2/x/blobs/{d}", p.blobs))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length").unwrap(), total.to_string());
    let empty = p.put_local(b"");
    let r = client.get(p.url(&empty)).send().await.unwrap();
    assert_eq!(r.url().port(), Some(p.blobs.port()));
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap().is_empty());

    // Counted like the registry API's requests: the redirects and the blob answers. The
    // blob server counts an answer once its send returns, which may be just after the
    // client has the last byte.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.metrics.requests("GET", 2) < 12 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(p.metrics.requests("GET", 3) >= 8);
    assert!(p.metrics.requests("GET", 2) >= 12);
    assert_eq!(p.metrics.requests("GET", 4), 1);
    assert!(p.metrics.response_bytes() >= 2 * total);
}

#[tokio::test]
async fn a_wildcard_blob_server_is_named_by_the_host_the_client_used() {
    let p = Pair::start_on("0.0.0.0:0", |_| {}).await;
    let data = bytes_of(300_000, 29);
    let d = p.put_local(&data);
    let url = format!("http://localhost:{}/v2/library/app/blobs/{d}", p.api.port());
    let r = no_redirects().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        header(&r, "location").unwrap(),
        format!(
            "http://localhost:{}/v2/library/app/blobs/{d}",
            p.blobs.port()
        )
    );
    let r = http_client().get(&url).send().await.unwrap();
    assert_eq!(r.url().port(), Some(p.blobs.port()));
    assert!(r.bytes().await.unwrap() == data);
}

/// Runs `curl -sS -L -o <file> [-r range] url`; the file's bytes.
async fn curl(url: String, range: Option<String>, out: std::path::PathBuf) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "-f", "-L", "-o"]).arg(&out);
        if let Some(r) = range {
            cmd.args(["-r", &r]);
        }
        let status = cmd.arg(&url).status().unwrap();
        assert!(status.success(), "curl {url}");
        std::fs::read(&out).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_follows_the_redirect_byte_identical() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(std::env::var_os("CI").is_none(), "curl is not installed");
        eprintln!("SKIPPED: curl is not installed");
        return;
    }
    let p = Pair::start(|_| {}).await;
    let data = bytes_of(5 << 20, 11);
    let total = data.len() as u64;
    let d = p.put_local(&data);
    let dir = tempfile::tempdir().unwrap();
    assert!(curl(p.url(&d), None, dir.path().join("whole")).await == data);
    for (i, (range, want)) in ranges(total).into_iter().enumerate() {
        let spec = range.trim_start_matches("bytes=").to_string();
        let got = curl(p.url(&d), Some(spec), dir.path().join(format!("r{i}"))).await;
        assert!(
            got == data[want.start as usize..want.end as usize],
            "{range}"
        );
    }
    let before = p.metrics.requests("GET", 3);
    assert!(before >= 6, "{before} redirects");
}

#[tokio::test]
async fn blobs_not_complete_here_are_never_redirected() {
    let p = Pair::start(|_| {}).await;
    let client = no_redirects();
    // Only in the cluster.
    let remote = bytes_of(100_000, 3);
    let d = p.registry.insert_blob(&remote);
    let r = client.get(p.url(&d)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap() == remote);
    // A download in progress: some pieces in the store, not all.
    let partial = bytes_of(9 << 20, 5);
    let meta = kraken_storage::Metainfo::from_bytes(
        &partial,
        &kraken_storage::metainfo::PieceLengthTable::uniform(1 << 20),
    )
    .unwrap();
    let d = p.registry.insert_blob(&partial);
    let mut writing = p.cas.start_partial(&meta).unwrap();
    writing
        .write_piece(kraken_storage::PieceIndex(0), &partial[..1 << 20])
        .unwrap();
    let r = client.get(p.url(&d)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap() == partial);
    // Asked of the blob server directly, it sends the client back, never bytes.
    let r = client
        .get(format!("http://{}/v2/library/app/blobs/{d}", p.blobs))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        header(&r, "location").unwrap(),
        format!("{}?kraken-local=0", p.url(&d))
    );
    assert_eq!(p.metrics.requests("GET", 3), 1);
}

/// A raw HTTP/1.1 connection, read one response at a time.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response: status, fields (lower-case names), body.
type Answer = (u16, HashMap<String, String>, Vec<u8>);

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next response (`head_only`: a HEAD's, no body); `None` if the connection ends.
    async fn answer(&mut self, head_only: bool) -> Option<Answer> {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(n) = resp.parse(&self.buf).unwrap() {
                let status = resp.code.unwrap();
                let fields: HashMap<String, String> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let len: usize = if head_only {
                    0
                } else {
                    fields["content-length"].parse().unwrap()
                };
                while self.buf.len() < n + len {
                    if !self.fill().await {
                        return None;
                    }
                }
                let body = self.buf[n..n + len].to_vec();
                self.buf.drain(..n + len);
                return Some((status, fields, body));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Whether the server closed the connection (reads until EOF, up to `within`).
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut chunk = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

#[tokio::test]
async fn one_connection_serves_several_requests_and_pipelines() {
    let p = Pair::start(|_| {}).await;
    let data = bytes_of(1 << 20, 13);
    let d = p.put_local(&data);
    let path = format!("/v2/library/app/blobs/{d}");
    let mut c = Raw::connect(p.blobs).await;
    c.send(&format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\n\r\n\
         HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET {path} HTTP/1.1\r\nHost: x\r\n\r\n"
    ))
    .await;
    let (status, fields, body) = c.answer(false).await.unwrap();
    assert_eq!(status, 206);
    assert_eq!(
        fields["content-range"],
        format!("bytes 10-19/{}", data.len())
    );
    assert_eq!(body, &data[10..20]);
    let (status, fields, _) = c.answer(true).await.unwrap();
    assert_eq!(
        (status, fields["content-length"].as_str()),
        (200, "1048576")
    );
    assert!(fields.contains_key("date"));
    let (status, _, body) = c.answer(false).await.unwrap();
    assert_eq!(status, 200);
    assert!(body == data);
    // Still open: one more, and a path that is no blob keeps the connection too.
    c.send("GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (status, _, body) = c.answer(false).await.unwrap();
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("UNSUPPORTED"));
    c.send(&format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ))
    .await;
    let (status, fields, body) = c.answer(false).await.unwrap();
    assert_eq!((status, fields["connection"].as_str()), (200, "close"));
    assert!(body == data);
    assert!(c.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused_and_closed() {
    let p = Pair::start(|_| {}).await;
    let d = p.put_local(b"some blob");
    let path = format!("/v2/a/blobs/{d}");
    let big = "x".repeat(9000);
    for (request, status) in [
        (format!("BREW {path} HTTP/1.1\r\nHost: x\r\n\r\n"), 405),
        (format!("DELETE {path} HTTP/1.1\r\nHost: x\r\n\r\n"), 405),
        (
            "\x16\x03\x01\x00\x45\x01\x00\x00\x41\x03\x03".to_string(),
            400,
        ),
        (
            "GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_string(),
            400,
        ),
        (format!("GET {path} HTTP/1.1\r\n\r\n"), 400),
        (
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"),
            400,
        ),
        (
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
            431,
        ),
        (format!("GET /{big} HTTP/1.1\r\nHost: x\r\n\r\n"), 431),
    ] {
        let mut c = Raw::connect(p.blobs).await;
        c.send(&request).await;
        let (got, fields, _) = c
            .answer(false)
            .await
            .unwrap_or_else(|| panic!("no answer to {request:?}"));
        assert_eq!(got, status, "{request:?}");
        assert_eq!(fields["connection"], "close");
        assert!(c.closed_within(Duration::from_secs(5)).await, "{request:?}");
    }
    // Bad names and digests get the registry API's codes, and the connection stays.
    let mut c = Raw::connect(p.blobs).await;
    c.send("GET /v2/UPPER/blobs/sha256:00 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (status, _, body) = c.answer(false).await.unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("NAME_INVALID"));
    c.send("GET /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (status, _, body) = c.answer(false).await.unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("DIGEST_INVALID"));
    assert!(p.metrics.requests("OTHER", 4) >= 8);
}

#[tokio::test]
async fn trickling_and_idle_connections_are_closed_on_time() {
    let p = Pair::start(|c| {
        c.header_timeout = Duration::from_millis(400);
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let d = p.put_local(b"slow");
    // Slowloris: a byte every 100 ms never finishes a head in time.
    let mut c = Raw::connect(p.blobs).await;
    let start = Instant::now();
    let request = format!("GET /v2/a/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answered = None;
    for b in request.bytes() {
        if c.stream.write_all(&[b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut chunk = [0u8; 1024];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), c.stream.read(&mut chunk)).await
        {
            answered = Some(String::from_utf8_lossy(&chunk[..n]).into_owned());
            break;
        }
    }
    let elapsed = start.elapsed();
    let answered = answered.expect("the server never gave up");
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert!(c.closed_within(Duration::from_secs(2)).await);

    // A fresh connection that sends nothing is closed at the header timeout; a kept-alive
    // one after its idle timeout.
    let mut silent = Raw::connect(p.blobs).await;
    assert!(silent.closed_within(Duration::from_secs(2)).await);
    let mut idle = Raw::connect(p.blobs).await;
    idle.send(&request).await;
    assert_eq!(idle.answer(false).await.unwrap().0, 200);
    let start = Instant::now();
    assert!(idle.closed_within(Duration::from_secs(2)).await);
    assert!(start.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn connections_beyond_the_cap_are_sent_back_to_the_registry_api() {
    let p = Pair::start(|c| {
        c.max_connections = 2;
        c.max_redirects = 2;
    })
    .await;
    let data = bytes_of(70_000, 17);
    let d = p.put_local(&data);
    let request = format!("GET /v2/app/blobs/{d} HTTP/1.1\r\nHost: localhost:1\r\n\r\n");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::connect(p.blobs).await;
        c.send(&request).await;
        assert_eq!(c.answer(false).await.unwrap().0, 200);
        held.push(c);
    }
    // Two more are accepted for a redirect back; a fifth is closed unanswered.
    let mut overflow = vec![Raw::connect(p.blobs).await, Raw::connect(p.blobs).await];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut dropped = Raw::connect(p.blobs).await;
    assert!(dropped.closed_within(Duration::from_secs(2)).await);
    for c in &mut overflow {
        c.send(&request).await;
        let (status, fields, _) = c.answer(false).await.unwrap();
        assert_eq!(status, 307);
        assert_eq!(
            fields["location"],
            format!(
                "http://127.0.0.1:{}/v2/app/blobs/{d}?kraken-local=0",
                p.api.port()
            )
        );
        assert!(c.closed_within(Duration::from_secs(2)).await);
    }
    // Following the redirect back still delivers the blob.
    let r = http_client()
        .get(format!("http://{}/v2/app/blobs/{d}?kraken-local=0", p.api))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap() == data);
    // A slot frees when a served connection goes.
    drop(held);
    drop(overflow);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = Raw::connect(p.blobs).await;
    c.send(&request).await;
    assert_eq!(c.answer(false).await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_being_served_cannot_be_evicted_and_is_sent_back_once_gone() {
    let p = Pair::start(|_| {}).await;
    let data = bytes_of(48 << 20, 19);
    let d = p.put_local(&data);
    let mut c = Raw::connect(p.blobs).await;
    c.send(&format!(
        "GET /v2/app/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n"
    ))
    .await;
    // The client reads a little and stops: the sender blocks with the blob open.
    assert!(c.fill().await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(
        p.cas.delete(&d),
        Err(kraken_storage::cas::CasError::Busy(_))
    ));
    let far = std::time::SystemTime::now() + Duration::from_secs(10 * 365 * 86_400);
    let report = p.cas.evict_at(far).unwrap();
    assert!(!report.evicted.contains(&d), "{report:?}");
    let (status, _, body) = c.answer(false).await.unwrap();
    assert_eq!(status, 200);
    assert!(body == data);
    // Sent: the reader is gone and the blob can go. The next GET is sent back to the
    // registry API, which streams it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.cas.delete(&d).is_err() {
        assert!(Instant::now() < deadline, "still busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http_client().get(p.url(&d)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.url().port(), Some(p.api.port()));
    assert!(r.bytes().await.unwrap() == data);
}

#[tokio::test]
async fn the_access_log_says_what_the_blob_server_sent() {
    use std::sync::Mutex;
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let p = Pair::start(|_| {}).await;
    let data = bytes_of(200_000, 23);
    let d = p.put_local(&data);
    let r = http_client().get(p.url(&d)).send().await.unwrap();
    assert!(r.bytes().await.unwrap() == data);
    // Lines are written once the answer is out, which may be after the client has it.
    let path = format!("path=/v2/library/app/blobs/{d}");
    let redirected = |l: &str| l.contains(&path) && l.contains("status=307");
    let sent = |l: &str| l.contains(&path) && l.contains("status=200");
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        if log.lines().any(redirected) && log.lines().any(sent) {
            break log;
        }
        assert!(Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for line in log.lines().filter(|l| redirected(l) || sent(l)) {
        assert!(line.contains("kraken_registry_gateway::access"), "{line}");
        assert!(line.contains("complete=true"), "{line}");
    }
    let line = log.lines().find(|l| sent(l)).unwrap();
    assert!(line.contains("bytes=200000"), "{line}");
}
