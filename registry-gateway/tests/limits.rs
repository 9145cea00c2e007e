//! The listener's limits over real TCP: idle and head-trickling connections are closed, a
//! slow upload body is cut off with its session kept at the last acknowledged chunk, the
//! connection cap answers `503` and recovers, upload sessions and staged bytes are capped
//! per client address and in total (`429 TOOMANYREQUESTS`), a push-enabled gateway beyond
//! loopback needs credentials or `allow_anonymous_push`, and deletes need the same
//! credentials as pushes.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use kraken_registry_gateway::{
    GatewayConfig, GatewayError, HttpLimits, PushAuth, UploadLimits, serve,
};
use kraken_storage::Digest;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any event here may take.
const DEADLINE: Duration = Duration::from_secs(10);

fn short_limits() -> HttpLimits {
    HttpLimits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    }
}

fn limited(dir: &std::path::Path, http: HttpLimits) -> GatewayConfig {
    GatewayConfig {
        http,
        ..push_config(dir)
    }
}

fn addr_of(s: &Server) -> SocketAddr {
    s.base.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the server closes the connection (EOF or reset); what it sent.
async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the server did not close the connection");
    out
}

/// Sends `head`, then one `byte` every 20 ms until the server closes the connection;
/// what the server sent.
async fn trickle_until_closed(tcp: TcpStream, head: &[u8], byte: &'static [u8]) -> Vec<u8> {
    let (mut rd, mut wr) = tcp.into_split();
    wr.write_all(head).await.unwrap();
    let trickle = async move {
        while wr.write_all(byte).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::future::pending::<()>().await;
    };
    let answer = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, async {
        tokio::select! {
            () = trickle => unreachable!(),
            got = answer => got,
        }
    })
    .await
    .expect("the server did not close the trickling connection")
}

/// Sends `GET /v2/` on `tcp` and reads the (small, keep-alive) answer's head.
async fn ping(tcp: &mut TcpStream) -> String {
    tcp.write_all(b"GET /v2/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        // `{}` is the whole body of the answer.
        while !got.ends_with(b"{}") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap();
    String::from_utf8(got).unwrap()
}

#[tokio::test]
async fn idle_connections_are_closed_before_and_after_a_request() {
    let tmp = tempfile::tempdir().unwrap();
    let config = limited(&uploads_dir(&tmp), short_limits());
    let metrics = config.metrics.clone();
    let s = Server::start(MemRegistry::new(), config).await;
    // Never sends a byte.
    let mut silent = TcpStream::connect(addr_of(&s)).await.unwrap();
    // Sends one request, then keeps the connection open.
    let mut kept = TcpStream::connect(addr_of(&s)).await.unwrap();
    let started = Instant::now();
    assert!(ping(&mut kept).await.starts_with("HTTP/1.1 200"));
    read_until_closed(&mut silent).await;
    read_until_closed(&mut kept).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(metrics.connections().closed("idle") >= 2);
    s.stop().await;
}

#[tokio::test]
async fn a_connection_trickling_its_head_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let http = HttpLimits {
        idle_timeout: Duration::from_secs(30),
        ..short_limits()
    };
    let config = limited(&uploads_dir(&tmp), http);
    let metrics = config.metrics.clone();
    let s = Server::start(MemRegistry::new(), config).await;
    let tcp = TcpStream::connect(addr_of(&s)).await.unwrap();
    let started = Instant::now();
    let got = trickle_until_closed(tcp, b"GET /v2/ HTTP/1.1\r\nx-slow: ", b"a").await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert_eq!(metrics.connections().closed("header_timeout"), 1);
    s.stop().await;
}

/// A PATCH whose body comes at 50 bytes/s against a 1 KiB/s minimum.
#[tokio::test]
async fn a_slow_upload_body_is_cut_off_and_its_session_keeps_what_was_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let http = HttpLimits {
        idle_timeout: Duration::from_secs(30),
        header_read_timeout: Duration::from_secs(30),
        ..short_limits()
    };
    let config = limited(&uploads_dir(&tmp), http);
    let metrics = config.metrics.clone();
    let s = Server::start(MemRegistry::new(), config).await;
    let loc = start_upload(&s, "app").await;
    let r = s
        .client
        .patch(&loc)
        .body(b"hello".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range").as_deref(), Some("0-4"));

    let path = loc.trim_start_matches(&s.base).to_string();
    let tcp = TcpStream::connect(addr_of(&s)).await.unwrap();
    let head = format!("PATCH {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n");
    let started = Instant::now();
    let got = trickle_until_closed(tcp, head.as_bytes(), b"x").await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("BLOB_UPLOAD_INVALID"), "{text}");
    assert!(text.contains("too slow"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    // Cut off once the 300 ms grace was waited, not at the 30 s timeouts.
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(metrics.connections().closed("body_timeout") >= 1);

    // The session is where the last acknowledged chunk left it, and resumes.
    let r = s.client.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range").as_deref(), Some("0-4"));
    let d = Digest::sha256_of(b"hello world");
    let r = s
        .client
        .put(format!("{loc}?digest={d}"))
        .header("content-range", "5-10")
        .body(b" world".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(s.registry.blob(&d).unwrap(), &b"hello world"[..]);
    s.stop().await;
}

#[tokio::test]
async fn a_stalled_upload_body_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let http = HttpLimits {
        idle_timeout: Duration::from_secs(30),
        header_read_timeout: Duration::from_secs(30),
        body_min_rate: 0,
        ..short_limits()
    };
    let s = Server::start(MemRegistry::new(), limited(&uploads_dir(&tmp), http)).await;
    let loc = start_upload(&s, "app").await;
    let path = loc.trim_start_matches(&s.base).to_string();
    let mut tcp = TcpStream::connect(addr_of(&s)).await.unwrap();
    let head = format!("PATCH {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut tcp).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("stalled"), "{text}");
    let r = s.client.get(&loc).send().await.unwrap();
    assert_eq!(header(&r, "range").as_deref(), Some("0-0"));
    s.stop().await;
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_get_503_until_others_close() {
    let tmp = tempfile::tempdir().unwrap();
    let http = HttpLimits {
        max_connections: 2,
        ..HttpLimits::default()
    };
    let config = limited(&uploads_dir(&tmp), http);
    let metrics = config.metrics.clone();
    let s = Server::start(MemRegistry::new(), config).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(addr_of(&s)).await.unwrap();
        assert!(ping(&mut tcp).await.starts_with("HTTP/1.1 200"));
        held.push(tcp);
    }
    let mut third = TcpStream::connect(addr_of(&s)).await.unwrap();
    third
        .write_all(b"GET /v2/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let text = String::from_utf8(read_until_closed(&mut third).await).unwrap();
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert_eq!(metrics.connections().closed("connection_cap"), 1);
    assert_eq!(metrics.connections().open(), 2);

    // One closes: a new connection is served again (once the server saw the close).
    drop(held.pop());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut tcp = TcpStream::connect(addr_of(&s)).await.unwrap();
        tcp.write_all(b"GET /v2/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let text = String::from_utf8(read_until_closed(&mut tcp).await).unwrap();
        if text.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    s.stop().await;
}

fn client_from(ip: IpAddr) -> reqwest::Client {
    let _ = http_client();
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, s: &Server) -> reqwest::Response {
    client
        .post(s.url("/v2/app/blobs/uploads/"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn upload_sessions_are_capped_per_client_and_in_total() {
    let tmp = tempfile::tempdir().unwrap();
    let config = GatewayConfig {
        upload_limits: UploadLimits {
            max_sessions: 3,
            max_sessions_per_client: 2,
            ..UploadLimits::default()
        },
        ..push_config(&uploads_dir(&tmp))
    };
    let s = Server::start(MemRegistry::new(), config).await;
    let a = client_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let b = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let first = post(&a, &s).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first = s.url(&header(&first, "location").unwrap());
    assert_eq!(post(&a, &s).await.status(), StatusCode::ACCEPTED);
    let r = post(&a, &s).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    // Another client still may, up to the total.
    assert_eq!(post(&b, &s).await.status(), StatusCode::ACCEPTED);
    let r = post(&b, &s).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = json_of(r).await;
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("maximum of 3"),
        "{body}"
    );
    // A cancelled session frees its slot.
    assert_eq!(
        a.delete(&first).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(post(&b, &s).await.status(), StatusCode::ACCEPTED);
    s.stop().await;
}

#[tokio::test]
async fn staged_bytes_are_capped_per_client_and_in_total() {
    let tmp = tempfile::tempdir().unwrap();
    let config = GatewayConfig {
        upload_limits: UploadLimits {
            max_staged_bytes: 15,
            max_staged_bytes_per_client: 10,
            ..UploadLimits::default()
        },
        ..push_config(&uploads_dir(&tmp))
    };
    let s = Server::start(MemRegistry::new(), config).await;
    let a = client_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let b = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let patch = |client: &reqwest::Client, loc: &str, body: &'static [u8]| {
        client.patch(loc).body(body.to_vec()).send()
    };
    let loc_a = s.url(&header(&post(&a, &s).await, "location").unwrap());
    let loc_b = s.url(&header(&post(&b, &s).await, "location").unwrap());
    assert_eq!(
        patch(&a, &loc_a, b"12345678").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    // Past the client's 10 bytes: refused, and nothing of the chunk is kept.
    let r = patch(&a, &loc_a, b"9ab").await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    let r = a.get(&loc_a).send().await.unwrap();
    assert_eq!(header(&r, "range").as_deref(), Some("0-7"));
    // Past the total's 15 (8 staged by a): refused for b too.
    let r = patch(&b, &loc_b, b"12345678").await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        patch(&b, &loc_b, b"1234567").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    // A finished upload frees its bytes.
    let d = Digest::sha256_of(b"12345678");
    let r = a.put(format!("{loc_a}?digest={d}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        patch(&b, &loc_b, b"89").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    s.stop().await;
}

#[tokio::test]
async fn a_push_gateway_beyond_loopback_needs_credentials_or_allow_anonymous_push() {
    let tmp = tempfile::tempdir().unwrap();
    let open = || async { tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap() };
    let refused = serve(
        open().await,
        MemRegistry::new(),
        push_config(&uploads_dir(&tmp)),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    let message = refused.to_string();
    assert!(message.contains("allow_anonymous_push"), "{message}");
    assert!(
        refused
            .get_ref()
            .and_then(|e| e.downcast_ref::<GatewayError>())
            .is_some_and(|e| matches!(e, GatewayError::AnonymousPush(_))),
        "{refused:?}"
    );

    // Said so: it serves.
    let listener = open().await;
    let port = listener.local_addr().unwrap().port();
    let config = GatewayConfig {
        allow_anonymous_push: true,
        ..push_config(&uploads_dir(&tmp))
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, MemRegistry::new(), config, async move {
        let _ = rx.await;
    }));
    let r = http_client()
        .get(format!("http://127.0.0.1:{port}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = tx.send(());
    task.await.unwrap().unwrap();

    // With credentials, or read-only, no setting is needed.
    for config in [
        GatewayConfig {
            auth: Some(PushAuth {
                bearer_tokens: vec!["t".into()],
                ..PushAuth::default()
            }),
            ..push_config(&uploads_dir(&tmp))
        },
        pull_config(&uploads_dir(&tmp)),
    ] {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            open().await,
            MemRegistry::new(),
            config,
            async move {
                let _ = rx.await;
            },
        ));
        let _ = tx.send(());
        task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn deletes_need_the_push_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(MemRegistry::new(), auth_config(&uploads_dir(&tmp))).await;
    let m = image_manifest(&s.registry, Some(OCI_MANIFEST), "a");
    let d = Digest::sha256_of(&m);
    let r = s
        .client
        .put(s.url("/v2/app/manifests/v1"))
        .bearer_auth("tok3n")
        .header("content-type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let blob = s.registry.insert_blob(b"layer");
    s.registry.link("app", blob);
    let paths = [
        "/v2/app/manifests/v1".to_string(),
        format!("/v2/app/manifests/{d}"),
        format!("/v2/app/blobs/{blob}"),
    ];
    for path in &paths {
        for attempt in [
            s.client.delete(s.url(path)),
            s.client.delete(s.url(path)).bearer_auth("wrong"),
            s.client.delete(s.url(path)).basic_auth("ci", Some("nope")),
        ] {
            let r = attempt.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert!(header(&r, "www-authenticate").is_some(), "{path}");
            assert_eq!(error_code(r).await, "UNAUTHORIZED", "{path}");
        }
    }
    // Nothing was deleted.
    assert_eq!(s.registry.tag_of("app", "v1"), Some(d));
    assert!(s.registry.links("app", &blob));
    // With them, the tag goes.
    let r = s
        .client
        .delete(s.url("/v2/app/manifests/v1"))
        .basic_auth("ci", Some("hunter2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(s.registry.tag_of("app", "v1"), None);
    s.stop().await;
}
