//! The node's health and metrics port holds its resources like the registry API: an idle
//! connection and one trickling its request head are closed after `[http.limits]`'s
//! timeouts, counted in `kraken_http_connections_closed`, while `/health` keeps answering.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kraken_node::config::NodeRole;
use support::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(10);

/// Waits until the server closes `tcp` (EOF or reset), trickling `trickle` a byte at a time
/// every 20 ms meanwhile if given.
async fn closed_by_server(tcp: TcpStream, trickle: Option<&'static [u8]>) {
    let (mut rd, mut wr) = tcp.into_split();
    let writing = async move {
        if let Some(bytes) = trickle {
            let _ = wr.write_all(bytes).await;
            while wr.write_all(b"a").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        std::future::pending::<()>().await;
    };
    let reading = async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, async {
        tokio::select! {
            () = writing => {}
            () = reading => {}
        }
    })
    .await
    .expect("the connection stayed open");
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_port_closes_idle_and_trickling_connections() {
    let mut c = TestCluster::new();
    let mut config = c.config("tracker-1", NodeRole::Tracker);
    config.http.limits.idle_timeout_ms = 300;
    config.http.limits.header_read_timeout_ms = 300;
    let i = c.start(config).await;
    let addr = c.node(i).http_addr().unwrap();

    let started = Instant::now();
    let silent = TcpStream::connect(addr).await.unwrap();
    let trickling = TcpStream::connect(addr).await.unwrap();
    tokio::join!(
        closed_by_server(silent, None),
        closed_by_server(trickling, Some(b"GET /health HTTP/1.1\r\nx-slow: ")),
    );
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Still serving, and the closings are counted by reason.
    assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200"));
    let metrics = get(addr, "/metrics").await;
    for reason in ["idle", "header_timeout"] {
        let line = format!("kraken_http_connections_closed_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
}
