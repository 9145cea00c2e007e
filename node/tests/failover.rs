//! Fail-over of pushes whose owning origin dies: separate `kraken` processes (3 origins, a
//! tracker, a proxy) on loopback, the owner killed with SIGKILL while the blob flows to it
//! (no connection is closed: its peers hear nothing more, as after a crash or a
//! partition). The push must move to the next owner within seconds, resuming from what the
//! proxy holds, and the blob must end up correct on the owners that live.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kraken_membership::{ClusterView, Member, Role};
use kraken_node::client::Cluster;
use kraken_node::proto::{Request, Response};
use kraken_storage::Digest;
use support::process::KrakenProcess;
use support::{TestCluster, blob_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Each blob pushed.
const LEN: u64 = 64 << 20;
/// What a fail-over may add to a push: detection (at most two 2 s stall times) and
/// slack for a loaded CI machine. The issue measured 12.3 s before this bound.
const FAILOVER_BUDGET: Duration = Duration::from_secs(10);

/// One `kraken` child process and its data directory.
struct Proc {
    process: KrakenProcess,
    quic: SocketAddr,
    data: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, role: &str, config: &str) -> Proc {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let process = KrakenProcess::spawn(role, &path, log.into());
        Proc {
            quic: process.quic,
            process,
            data: dir.join(name),
        }
    }

    /// SIGKILL, and waits until it is gone.
    fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Waits until the blob's bytes flow into this node: a file it is writing (its store's
    /// `tmp`/`partial`, its upload staging) holds at least 1 MiB.
    async fn wait_receiving(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while incoming_bytes(&self.data) < 1 << 20 {
            assert!(Instant::now() < deadline, "no bytes reached the owner");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// The largest file under a `tmp`, `partial` or `uploads` directory below `dir`.
fn incoming_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let staging = matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("tmp" | "partial" | "uploads")
    );
    let mut most = 0;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            most = most.max(incoming_bytes(&entry.path()));
        } else if staging {
            most = most.max(meta.len());
        }
    }
    most
}

/// A loopback port nobody holds right now (held by the returned socket until dropped).
fn udp_port() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// 3 origins and a tracker gossiping, a proxy whose registry API takes pushes, and a
/// client of the cluster's RPCs.
struct Fixture {
    c: TestCluster,
    origins: Vec<Proc>,
    _tracker: Proc,
    _proxy: Proc,
    registry: SocketAddr,
    client: Cluster,
}

impl Fixture {
    /// `pass_on`: the proxy's `pass_on_chunks` (a chunked push's bytes also go to an
    /// origin as they arrive).
    async fn start(pass_on: bool) -> Fixture {
        let c = TestCluster::new();
        let dir = c.dir.path().to_path_buf();
        let names = ["origin-1", "origin-2", "origin-3", "tracker-1", "proxy-1"];
        for name in names {
            c.ca.write_node_cert(name).unwrap();
        }
        let tls = dir.join("ca");
        let gossip: Vec<_> = (0..4).map(|_| udp_port()).collect();
        let seeds: Vec<String> = gossip.iter().map(|(_, a)| format!("\"{a}\"")).collect();
        let common = |name: &str, role: &str| {
            format!(
                "[node]\nname = \"{name}\"\nroles = [\"{role}\"]\ndata_dir = {data}\ncluster_id = \"test\"\n\
                 [quic]\nlisten = \"127.0.0.1:0\"\n\
                 [tls]\nca = {ca}\ncert = {cert}\nkey = {key}\n\
                 [http]\nlisten = \"127.0.0.1:0\"\n",
                data = quoted(&dir.join(name)),
                ca = quoted(&tls.join("ca.crt")),
                cert = quoted(&tls.join(format!("{name}.crt"))),
                key = quoted(&tls.join(format!("{name}.key"))),
            )
        };
        let ring = |name: &str, role: &str, i: usize| {
            format!(
                "{}[registry]\nenabled = false\n[gossip]\nlisten = \"{}\"\nseeds = [{}]\ninterval_ms = 200\n",
                common(name, role),
                gossip[i].1,
                seeds.join(", ")
            )
        };
        let backend = dir.join("backend");
        std::fs::create_dir_all(&backend).unwrap();
        let origin = |i: usize| {
            format!(
                "{}[origin]\nreplicas = 3\nrepair_delay_ms = 500\n\
                 [[backends]]\nnamespace = \".*\"\nbackend = {{ fs = {{ root = {} }} }}\n",
                ring(names[i], "origin", i),
                quoted(&backend)
            )
        };
        let configs: Vec<String> = (0..3).map(origin).collect();
        let tracker_config = ring("tracker-1", "tracker", 3);
        drop(gossip);
        let origins: Vec<Proc> = (0..3)
            .map(|i| Proc::spawn(&dir, names[i], "origin", &configs[i]))
            .collect();
        let tracker = Proc::spawn(&dir, "tracker-1", "tracker", &tracker_config);

        let registry = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let view_seeds: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.quic)).collect();
        let proxy_config = format!(
            "{}[registry]\nenabled = true\nlisten = \"{registry}\"\npass_on_chunks = {pass_on}\n\
             [view]\nseeds = [{}]\nrefresh_secs = 1\n",
            common("proxy-1", "proxy"),
            view_seeds.join(", ")
        );
        let proxy = Proc::spawn(&dir, "proxy-1", "proxy", &proxy_config);

        let client = c.plain_client();
        let f = Fixture {
            c,
            origins,
            _tracker: tracker,
            registry,
            _proxy: proxy,
            client,
        };
        // The proxy sees all three origins on its ring before anything is pushed.
        let deadline = Instant::now() + Duration::from_secs(20);
        while f
            .view(f._proxy.quic)
            .await
            .map(|v| v.ring(Role::Origin).len())
            != Some(3)
        {
            assert!(Instant::now() < deadline, "the proxy never saw 3 origins");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        f
    }

    async fn view(&self, node: SocketAddr) -> Option<ClusterView> {
        match self.client.call(node, &Request::ClusterView).await {
            Ok(Response::View(bytes)) => ClusterView::decode(&bytes).ok(),
            _ => None,
        }
    }

    /// The digest's origin owners in the proxy's order, as processes.
    async fn owners(&self, digest: &Digest) -> Vec<usize> {
        let view = self.view(self._proxy.quic).await.unwrap();
        let owners: Vec<Member> = view
            .ring(Role::Origin)
            .owners_of_digest(digest, 3)
            .into_iter()
            .cloned()
            .collect();
        owners
            .iter()
            .map(|m| {
                self.origins
                    .iter()
                    .position(|o| o.quic == m.quic_addr)
                    .unwrap()
            })
            .collect()
    }

    /// Whether origin `i` holds the whole blob.
    async fn holds(&self, i: usize, digest: &Digest) -> bool {
        let stat = Request::BlobStat { digest: *digest };
        matches!(
            self.client.call(self.origins[i].quic, &stat).await,
            Ok(Response::BlobStat(s)) if s.present
        )
    }

    /// Waits until every origin of `live` holds the blob, and checks the first one's copy
    /// byte for byte against its digest.
    async fn wait_held(&self, live: &[usize], digest: &Digest) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for &i in live {
            while !self.holds(i, digest).await {
                assert!(Instant::now() < deadline, "origin {i} never held {digest}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let download = kraken_client::download::Download::open(
            &self.client,
            self.origins[live[0]].quic,
            digest,
            None,
        )
        .await
        .unwrap();
        assert_eq!(download.into_vec().await.unwrap().len() as u64, LEN);
    }
}

/// Sends `head` and `body` over a fresh connection to `addr`, awaiting `pause` after the
/// first `split` bytes of the body; the response's status code and headers.
async fn http(
    addr: SocketAddr,
    head: String,
    body: &[u8],
    split: usize,
    pause: impl Future<Output = ()>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // A write error means the server answered early: its answer says why.
    if s.write_all(&body[..split]).await.is_ok() {
        pause.await;
        let _ = s.write_all(&body[split..]).await;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (status, text)
}

/// A monolithic push (`POST ?digest=` with the whole body); `pause` runs after `split`
/// bytes of the body.
async fn push_monolithic(
    registry: SocketAddr,
    digest: &Digest,
    body: &[u8],
    split: usize,
    pause: impl Future<Output = ()>,
) -> u16 {
    let head = format!(
        "POST /v2/failover/blob/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {registry}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (status, text) = http(registry, head, body, split, pause).await;
    assert!(status == 201 || status >= 400, "{text}");
    status
}

fn header<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn blob(c: &TestCluster, name: &str, seed: u64) -> (Vec<u8>, Digest) {
    let (path, digest) = blob_file(c.dir.path(), name, LEN, seed);
    (std::fs::read(path).unwrap(), digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monolithic_push_moves_to_the_next_owner_when_its_owner_is_killed_mid_body() {
    let mut f = Fixture::start(true).await;
    let (warm, warm_digest) = blob(&f.c, "warm", 1);
    let started = Instant::now();
    let status = push_monolithic(f.registry, &warm_digest, &warm, 0, async {}).await;
    let baseline = started.elapsed();
    assert_eq!(status, 201);

    let (data, digest) = blob(&f.c, "blob", 2);
    let owners = f.owners(&digest).await;
    let first = owners[0];
    let mut killed_at = None;
    let dead = &mut f.origins[first];
    let pause = async {
        dead.wait_receiving(Duration::from_secs(20)).await;
        dead.kill9();
        killed_at = Some(Instant::now());
    };
    // A quarter of the body reaches the owner; it dies; the rest follows.
    let status = push_monolithic(f.registry, &digest, &data, data.len() / 4, pause).await;
    let after_kill = killed_at.unwrap().elapsed();
    eprintln!(
        "monolithic push of {} MiB: {baseline:?} undisturbed, {after_kill:?} from the owner's SIGKILL to 201",
        LEN >> 20
    );
    assert_eq!(status, 201, "the push survived its owner");
    assert!(
        after_kill < baseline + FAILOVER_BUDGET,
        "fail-over took {after_kill:?} after the kill (an undisturbed push: {baseline:?})"
    );
    f.wait_held(&owners[1..], &digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_push_moves_to_the_next_owner_when_its_owner_is_killed_mid_body() {
    // Without passing the chunks on, the final PUT sends the staged file.
    let mut f = Fixture::start(false).await;
    let (data, digest) = blob(&f.c, "blob", 3);
    let owners = f.owners(&digest).await;
    let registry = f.registry;

    // Staged on the proxy: a session, one PATCH with the whole blob.
    let post = format!(
        "POST /v2/failover/chunked/blobs/uploads/ HTTP/1.1\r\nHost: {registry}\r\nContent-Length: 0\r\n\r\n"
    );
    let (status, text) = http(registry, post, &[], 0, async {}).await;
    assert_eq!(status, 202, "{text}");
    let location = header(&text, "Location").to_string();
    let patch = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {registry}\r\nContent-Type: application/octet-stream\r\n\
         Content-Range: 0-{}\r\nContent-Length: {}\r\n\r\n",
        data.len() - 1,
        data.len()
    );
    let (status, text) = http(registry, patch, &data, data.len(), async {}).await;
    assert_eq!(status, 202, "{text}");
    let location = header(&text, "Location").to_string();
    let sep = if location.contains('?') { '&' } else { '?' };

    // The final PUT sends the staged file to the owner, which dies while it flows.
    let put = format!(
        "PUT {location}{sep}digest={digest} HTTP/1.1\r\nHost: {registry}\r\nContent-Length: 0\r\n\r\n"
    );
    let started = Instant::now();
    let finishing = tokio::spawn(http(registry, put, &[], 0, async {}));
    let dead = &mut f.origins[owners[0]];
    dead.wait_receiving(Duration::from_secs(20)).await;
    dead.kill9();
    let killed_at = Instant::now();
    let (status, text) = finishing.await.unwrap();
    let after_kill = killed_at.elapsed();
    eprintln!(
        "chunked push's final PUT of {} MiB: {:?} in all, {after_kill:?} from the owner's SIGKILL to 201",
        LEN >> 20,
        started.elapsed()
    );
    assert_eq!(status, 201, "{text}");
    assert!(
        after_kill < FAILOVER_BUDGET,
        "fail-over took {after_kill:?} after the kill"
    );
    f.wait_held(&owners[1..], &digest).await;
}

/// A chunked push whose bytes were passed on to an origin as they arrived: that origin
/// is killed before the closing `PUT`, which then sends the proxy's own copy to the
/// owners that live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_push_lands_from_the_proxys_copy_when_the_origin_holding_its_chunks_dies() {
    let mut f = Fixture::start(true).await;
    let (data, digest) = blob(&f.c, "blob", 5);
    let registry = f.registry;
    let post = format!(
        "POST /v2/failover/passed/blobs/uploads/ HTTP/1.1\r\nHost: {registry}\r\nContent-Length: 0\r\n\r\n"
    );
    let (status, text) = http(registry, post, &[], 0, async {}).await;
    assert_eq!(status, 202, "{text}");
    let location = header(&text, "Location").to_string();
    let patch = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {registry}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        data.len()
    );
    let (status, text) = http(registry, patch, &data, data.len(), async {}).await;
    assert_eq!(status, 202, "{text}");
    let location = header(&text, "Location").to_string();
    let sep = if location.contains('?') { '&' } else { '?' };

    // One origin holds (most of) the body in its temp directory, waiting for the digest:
    // the last batch stays in its memory until the body ends.
    let deadline = Instant::now() + Duration::from_secs(20);
    let holder = loop {
        if let Some(i) = (0..3).find(|&i| incoming_bytes(&f.origins[i].data) >= LEN / 2) {
            break i;
        }
        assert!(Instant::now() < deadline, "no origin received the chunks");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    f.origins[holder].kill9();
    let killed_at = Instant::now();
    let put = format!(
        "PUT {location}{sep}digest={digest} HTTP/1.1\r\nHost: {registry}\r\nContent-Length: 0\r\n\r\n"
    );
    let (status, text) = http(registry, put, &[], 0, async {}).await;
    let after_kill = killed_at.elapsed();
    eprintln!("chunked push passed on to a dead origin: {after_kill:?} from its SIGKILL to 201");
    assert_eq!(status, 201, "{text}");
    assert!(
        after_kill < FAILOVER_BUDGET,
        "the PUT took {after_kill:?} after the kill"
    );
    let live: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    f.wait_held(&live, &digest).await;
}

/// `krakenctl push`'s path: the resumable Upload RPC to each owner in turn
/// (`kraken_client::upload::push_file`), the first killed mid-body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_upload_moves_to_the_next_owner_when_its_owner_is_killed_mid_body() {
    let mut f = Fixture::start(true).await;
    let (path, digest) = blob_file(f.c.dir.path(), "blob", LEN, 4);
    let owners = f.owners(&digest).await;
    let client = f.client.clone();
    let addrs: Vec<SocketAddr> = owners.iter().map(|&i| f.origins[i].quic).collect();
    let pushing = tokio::spawn(async move {
        for addr in addrs {
            match kraken_client::upload::push_file(
                &client, addr, "failover", &digest, &path, LEN, false, false,
            )
            .await
            {
                Ok(pushed) => return (addr, pushed),
                Err(e) if e.try_next() => eprintln!("{e}; trying the next owner"),
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no owner took it");
    });
    let dead = &mut f.origins[owners[0]];
    dead.wait_receiving(Duration::from_secs(20)).await;
    dead.kill9();
    let killed_at = Instant::now();
    let (took_it, pushed) = pushing.await.unwrap();
    let after_kill = killed_at.elapsed();
    eprintln!("resumable upload: {after_kill:?} from the owner's SIGKILL to uploaded");
    assert_eq!(took_it, f.origins[owners[1]].quic);
    assert_eq!(pushed.length, LEN);
    assert!(
        after_kill < FAILOVER_BUDGET,
        "fail-over took {after_kill:?} after the kill"
    );
    f.wait_held(&owners[1..], &digest).await;
}
