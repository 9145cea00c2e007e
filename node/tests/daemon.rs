//! The `kraken` binary from the outside: the example configs in `examples/` parse, validate
//! and write out every key of their sections with its default; bad config files stop the
//! daemon with an error naming the key; `kraken dev` starts a loopback cluster, writes
//! `cluster.json`, answers on its HTTP endpoints and exits cleanly on SIGTERM; and
//! `kraken dev --demo --exit-after-demo` pulls a blob through every agent's registry API and
//! exits; a restarted `kraken dev` keeps every address, and a second one on its data
//! directory is refused.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kraken_node::agent::AgentConfig;
use kraken_node::config::{NodeConfig, NodeRole};
use kraken_node::dev::ClusterFile;
use kraken_node::origin::OriginConfig;
use kraken_node::tracker::TrackerConfig;
use kraken_storage::backend::ServiceConfig;
use kraken_storage::cas::CasConfig;
use kraken_storage::queue::QueueConfig;
use kraken_transport::quic::tls::dev::DevCa;

const KRAKEN: &str = env!("CARGO_BIN_EXE_kraken");

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// A `kraken` child process, killed (and reaped) when dropped, so that a failing test does
/// not leave a cluster running. Its stdout lines arrive on a channel; stderr goes to a file
/// that is printed when the test fails.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: PathBuf,
}

impl Daemon {
    fn spawn(args: &[&str], stderr: PathBuf) -> Daemon {
        let mut child = Command::new(KRAKEN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        // Drains stdout until the process closes it, so the child never blocks on a pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    fn context(&self) -> String {
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "stdout so far:\n{}\nstderr (last 40 lines):\n{}",
            self.stdout.join("\n"),
            tail.join("\n")
        )
    }

    /// Reads stdout until a line equal to `want`, panicking after `limit`.
    fn wait_for_line(&mut self, want: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.trim() == want;
                    self.stdout.push(line);
                    if done {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no {want:?} line within {limit:?}\n{}", self.context())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "stdout closed before a {want:?} line (exit: {status:?})\n{}",
                        self.context()
                    )
                }
            }
        }
    }

    /// Waits for the process to exit, panicking after `limit`; then collects the rest of
    /// its stdout.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                panic!("still running after {limit:?}\n{}", self.context());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push(line);
        }
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw = runtime.block_on(async {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .unwrap_or_else(|_| panic!("GET {path} on {addr} timed out"))
            .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
    });
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------
// Example configs

const EXAMPLES: [(&str, NodeRole); 5] = [
    ("origin.toml", NodeRole::Origin),
    ("tracker.toml", NodeRole::Tracker),
    ("agent.toml", NodeRole::Agent),
    ("build-index.toml", NodeRole::BuildIndex),
    ("proxy.toml", NodeRole::Proxy),
];

#[test]
fn every_example_config_parses_and_validates() {
    for (file, role) in EXAMPLES {
        let c = NodeConfig::load(&example(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        c.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(c.node.roles, vec![role], "{file}");
        assert_eq!(c.quic.listen.port(), 7600, "{file}");
        assert_eq!(c.quic_advertise().port(), 7600, "{file}");
        assert_eq!(c.http.address().map(|a| a.port()), Some(7602), "{file}");
        if c.is_ring_node() {
            assert_eq!(c.gossip.listen.port(), 7601, "{file}");
            assert!(
                !c.gossip.seeds.is_empty(),
                "{file}: a ring node needs seeds"
            );
            assert!(
                c.gossip.seeds.iter().all(|s| s.ends_with(":7601")),
                "{file}"
            );
        } else {
            assert!(
                !c.view.seeds.is_empty(),
                "{file}: an agent needs view seeds"
            );
            assert!(c.view.seeds.iter().all(|s| s.ends_with(":7600")), "{file}");
        }
    }

    let origin = NodeConfig::load(&example("origin.toml")).unwrap();
    let routes: Vec<(&str, &str)> = origin
        .backends
        .iter()
        .map(|r| (r.namespace.as_str(), r.backend.service.name()))
        .collect();
    assert_eq!(routes, [("library/.*", "s3"), (".*", "fs")]);
    let ServiceConfig::S3(s3) = &origin.backends[0].backend.service else {
        unreachable!()
    };
    assert!(!s3.bucket.is_empty());
}

/// Tunables in the examples are the defaults, so the comments saying "default: X" stay
/// true when a default changes.
#[test]
fn example_tunables_are_the_defaults() {
    fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }
    let defaults = NodeConfig::default();
    for (file, role) in EXAMPLES {
        let c = NodeConfig::load(&example(file)).unwrap();
        assert_eq!(c.node.cluster_id, defaults.node.cluster_id, "{file}");
        assert_eq!(c.node.data_dir, defaults.node.data_dir, "{file}");
        assert_eq!(c.gossip.interval_ms, defaults.gossip.interval_ms, "{file}");
        assert_eq!(
            c.gossip.max_member_weight, defaults.gossip.max_member_weight,
            "{file}"
        );
        assert_eq!(c.view.refresh_secs, defaults.view.refresh_secs, "{file}");
        assert_eq!(c.swarm, defaults.swarm, "{file}");
        if role != NodeRole::Tracker {
            // The written root is the default one, `<data_dir>/cas`.
            assert_eq!(
                json(&c.store_config()),
                json(&CasConfig::at(c.node.data_dir.join("cas"))),
                "{file}"
            );
        }
        match role {
            NodeRole::Origin => {
                assert_eq!(c.origin, OriginConfig::default());
                assert_eq!(c.discovery, defaults.discovery);
                assert_eq!(json(&c.writeback_queue), json(&QueueConfig::default()));
                for route in &c.backends {
                    let d =
                        kraken_storage::backend::BackendConfig::new(route.backend.service.clone());
                    assert_eq!(route.backend, d, "{}", route.namespace);
                }
            }
            NodeRole::Tracker => assert_eq!(c.tracker, TrackerConfig::default()),
            NodeRole::Agent => {
                assert_eq!(c.agent, AgentConfig::default());
                assert_eq!(c.discovery, defaults.discovery);
            }
            NodeRole::BuildIndex => {
                let d = kraken_node::buildindex::BuildIndexConfig {
                    remotes: c.build_index.remotes.clone(),
                    ..Default::default()
                };
                assert_eq!(c.build_index, d);
                assert_eq!(json(&c.writeback_queue), json(&QueueConfig::default()));
            }
            NodeRole::Proxy => {
                assert_eq!(c.registry.page_limit, 1000);
                assert_eq!(c.registry.max_manifest_len, 4 << 20);
            }
        }
    }
}

/// Every key of every section an example writes is written out (keys whose default is
/// "unset" may stay commented out), and each role's file has the sections it uses.
#[test]
fn examples_write_out_every_key_of_their_sections() {
    fn missing(path: &str, full: &serde_json::Value, written: &toml::Value, out: &mut Vec<String>) {
        match (full, written) {
            (serde_json::Value::Object(keys), toml::Value::Table(table)) => {
                for (k, v) in keys {
                    let p = format!("{path}.{k}");
                    match table.get(k) {
                        _ if v.is_null() => {}
                        Some(w) => missing(&p, v, w, out),
                        None => out.push(p),
                    }
                }
            }
            (serde_json::Value::Array(items), toml::Value::Array(written)) => {
                for (i, (v, w)) in items.iter().zip(written).enumerate() {
                    missing(&format!("{path}[{i}]"), v, w, out);
                }
            }
            _ => {}
        }
    }
    let common = ["node", "quic", "tls", "view", "http"];
    let by_role: [(&str, &[&str]); 5] = [
        (
            "origin.toml",
            &[
                "gossip",
                "store",
                "origin",
                "writeback_queue",
                "backends",
                "discovery",
            ],
        ),
        ("tracker.toml", &["gossip", "tracker"]),
        (
            "agent.toml",
            &["store", "swarm", "agent", "registry", "discovery"],
        ),
        ("proxy.toml", &["view", "registry"]),
        (
            "build-index.toml",
            &["gossip", "build_index", "writeback_queue", "backends"],
        ),
    ];
    for (file, sections) in by_role {
        let text = std::fs::read_to_string(example(file)).unwrap();
        let written: toml::Table = toml::from_str(&text).unwrap();
        for s in common.iter().chain(sections) {
            assert!(written.contains_key(*s), "{file} lacks [{s}]");
        }
        let full = serde_json::to_value(NodeConfig::load(&example(file)).unwrap()).unwrap();
        let mut out = Vec::new();
        missing("", &full, &toml::Value::Table(written), &mut out);
        // Sections a file leaves out (other roles') are not checked.
        out.retain(|p| {
            let section = p[1..].split(['.', '[']).next().unwrap();
            common.contains(&section) || sections.contains(&section)
        });
        assert!(out.is_empty(), "{file} does not write out {out:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Bad config files on the command line

/// Writes `<dir>/<name>.toml`: `origin.toml` with the TLS paths at real dev certificates,
/// the data directory under `dir` and the addresses at loopback port 0, edited by `edit`.
fn origin_config(dir: &Path, name: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let ca_dir = dir.join("ca");
    if !ca_dir.join("ca.crt").exists() {
        let ca = DevCa::create(&ca_dir).unwrap();
        ca.write_node_cert("origin-1").unwrap();
    }
    let text = std::fs::read_to_string(example("origin.toml")).unwrap();
    let ca = ca_dir.display();
    let text = text
        .replace("/etc/kraken/tls", &ca.to_string())
        .replace("/var/lib/kraken", &dir.join("data").display().to_string())
        .replace("/srv/kraken", &dir.join("backend").display().to_string())
        .replace("0.0.0.0:7600", "127.0.0.1:0")
        .replace("0.0.0.0:7601", "127.0.0.1:0")
        .replace("0.0.0.0:7602", "127.0.0.1:0")
        .replace("advertise = \"10.0.0.11:7601\"\n", "");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, edit(&text)).unwrap();
    path
}

/// Runs `kraken origin --config <origin.toml edited by `edit`>` and returns its stderr
/// after checking it exits non-zero. The TLS paths point at real dev certificates and the
/// addresses at loopback port 0, so only the edit can stop the node.
fn refused(dir: &Path, name: &str, edit: impl Fn(&str) -> String) -> String {
    let path = origin_config(dir, name, |t| {
        let edited = edit(t);
        assert_ne!(edited, t, "{name}: the edit changed nothing");
        edited
    });
    let path = path.to_str().unwrap();
    let mut d = Daemon::spawn(
        &["origin", "--config", path],
        dir.join(format!("{name}.stderr")),
    );
    let status = d.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "{name}: exited with {status}");
    assert!(
        !d.stdout.iter().any(|l| l == "ready"),
        "{name}: the node started"
    );
    std::fs::read_to_string(&d.stderr).unwrap()
}

fn assert_one_line_naming(name: &str, stderr: &str, key: &str) {
    let stderr = stderr.trim_end();
    assert!(
        stderr.contains(key),
        "{name}: {key:?} not named in {stderr:?}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{name}: the error is not one line:\n{stderr}"
    );
}

#[test]
fn an_unknown_key_stops_the_daemon_with_a_one_line_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused(dir.path(), "unknown-key", |t| {
        t.replace("replicas = 3\n", "replicas = 3\nreplicaz = 3\n")
    });
    assert_one_line_naming("unknown-key", &stderr, "replicaz");
}

#[test]
fn an_invalid_value_stops_the_daemon_with_a_one_line_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // Out of range: caught by `validate()`.
    let stderr = refused(dir.path(), "zero-replicas", |t| {
        t.replace("replicas = 3\n", "replicas = 0\n")
    });
    assert_one_line_naming("zero-replicas", &stderr, "origin.replicas");
    // The wrong type: caught by the parser.
    let stderr = refused(dir.path(), "string-replicas", |t| {
        t.replace("replicas = 3\n", "replicas = \"three\"\n")
    });
    assert_one_line_naming("string-replicas", &stderr, "replicas");
}

#[test]
fn a_second_process_on_a_data_directory_in_use_is_refused_naming_the_pid_until_the_first_dies() {
    let dir = tempfile::tempdir().unwrap();
    let config = origin_config(dir.path(), "origin", str::to_string);
    let config = config.to_str().unwrap();
    let spawn = |n: u32| {
        let stderr = dir.path().join(format!("origin-{n}.stderr"));
        Daemon::spawn(&["origin", "--config", config], stderr)
    };
    let mut first = spawn(1);
    first.wait_for_line("ready", Duration::from_secs(60));

    let mut second = spawn(2);
    let status = second.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "the second process exited with {status}");
    let stderr = std::fs::read_to_string(&second.stderr).unwrap();
    let data = dir.path().join("data");
    let want = format!(
        "data directory {} is in use by another kraken process (pid {})",
        data.display(),
        first.child.id()
    );
    assert!(stderr.contains(&want), "{want:?} not in {stderr:?}");
    assert_one_line_naming("second", &stderr, "data directory");

    // The lock dies with its process, however it dies: a restart after SIGKILL starts.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let mut third = spawn(3);
    third.wait_for_line("ready", Duration::from_secs(60));
}

// ---------------------------------------------------------------------------------------
// kraken dev

#[test]
fn kraken_dev_serves_http_writes_its_cluster_file_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let logs = dir.path().join("dev.stderr");
    let mut d = Daemon::spawn(
        &[
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--agents",
            "2",
            "--base-port",
            "0",
        ],
        logs,
    );
    d.wait_for_line("ready", Duration::from_secs(60));

    let file: ClusterFile =
        serde_json::from_slice(&std::fs::read(data.join("cluster.json")).unwrap()).unwrap();
    let with_role = |role: &str| {
        file.nodes
            .iter()
            .filter(|n| n.roles.iter().any(|r| r == role))
            .collect::<Vec<_>>()
    };
    let (origins, trackers, agents) = (
        with_role("origin"),
        with_role("tracker"),
        with_role("agent"),
    );
    assert_eq!(
        (origins.len(), trackers.len(), agents.len()),
        (3, 1, 2),
        "{file:?}"
    );
    assert_eq!(with_role("build-index").len(), 1, "{file:?}");
    assert_eq!(with_role("proxy").len(), 1, "{file:?}");
    assert_eq!(file.nodes.len(), 8, "{file:?}");
    for path in [&file.ca, &file.admin_cert, &file.admin_key] {
        assert!(path.is_file(), "{} is missing", path.display());
    }
    for n in &file.nodes {
        assert!(n.http.is_some(), "{} has no HTTP endpoint", n.name);
        assert_eq!(
            n.gossip.is_some(),
            n.roles.iter().any(|r| r != "agent" && r != "proxy"),
            "{}: only ring nodes gossip",
            n.name
        );
    }

    // Agents (pull) and the proxy (push) serve the registry API.
    for n in file
        .nodes
        .iter()
        .filter(|n| n.roles.iter().any(|r| r == "agent" || r == "proxy"))
    {
        let (status, _) = http_get(n.registry.expect("a registry address"), "/v2/");
        assert_eq!(status, 200, "{}: GET /v2/", n.name);
        // Its request counters are on the node's /metrics.
        let (_, metrics) = http_get(n.http.unwrap(), "/metrics");
        assert!(
            metrics.contains("kraken_gateway_requests_total"),
            "{}: {metrics}",
            n.name
        );
    }

    let origin = origins[0].http.unwrap();
    let (status, body) = http_get(origin, "/health");
    assert_eq!((status, body.trim()), (200, "ok"), "/health");
    let (status, body) = http_get(origin, "/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    assert!(
        body.contains("kraken_ring_size{role=\"origin\"} 3"),
        "/metrics:\n{body}"
    );
    // One registry: the node's counters, its histograms and the gauges read at scrape time.
    for line in [
        "# TYPE kraken_rpcs_total counter",
        "# TYPE kraken_upload_duration_seconds histogram",
        "kraken_pull_duration_seconds_bucket{le=\"+Inf\"} 0",
        "# TYPE kraken_writeback_queue_depth gauge",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(line)),
            "no {line:?} in /metrics:\n{body}"
        );
    }
    for agent in &agents {
        let (status, body) = http_get(agent.http.unwrap(), "/ready");
        assert_eq!(status, 200, "{} /ready: {body}", agent.name);
    }

    let pid = d.child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success(), "kill -TERM {pid}: {kill}");
    let status = d.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        d.context()
    );
}

#[test]
fn kraken_dev_demo_pulls_through_every_agent_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let logs = dir.path().join("dev.stderr");
    let mut d = Daemon::spawn(
        &[
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--agents",
            "2",
            "--base-port",
            "0",
            "--demo",
            "--demo-mib",
            "8",
            "--exit-after-demo",
        ],
        logs,
    );
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit: {status}\n{}", d.context());
    for agent in ["agent-1", "agent-2"] {
        let lines: Vec<&String> = d
            .stdout
            .iter()
            .filter(|l| {
                l.starts_with(&format!("{agent}:"))
                    && l.contains("from agents")
                    && l.contains("from origins")
            })
            .collect();
        assert_eq!(lines.len(), 1, "{agent}\n{}", d.context());
    }
    let reports = d
        .stdout
        .iter()
        .filter(|l| l.contains("from agents") && l.contains("from origins"))
        .count();
    assert_eq!(reports, 2, "{}", d.context());
    // Each agent's bytes came through its registry API and were checked against the digest.
    assert!(
        d.stdout
            .iter()
            .filter(|l| l.contains(": GET http://") && l.contains("sha256 verified"))
            .count()
            == 2
            && d.stdout
                .iter()
                .any(|l| l.starts_with("every byte verified: 2 agents")),
        "{}",
        d.context()
    );
    // One pull can be followed through a node's log: the node, the HTTP request and the
    // pull are spans around every line. No colour codes in a file.
    let stderr = std::fs::read_to_string(&d.stderr).unwrap();
    let pulled = stderr
        .lines()
        .find(|l| l.contains("node{name=agent-1}") && l.contains(" pulled "))
        .unwrap_or_else(|| panic!("no pull logged by agent-1\n{}", d.context()));
    assert!(
        pulled.contains(":request{method=GET path=/v2/kraken-dev/demo/blobs/sha256:")
            && pulled.contains("}:pull: "),
        "{pulled}"
    );
    assert!(!stderr.contains('\u{1b}'), "colour codes in a log file");
}

/// A base port whose `nodes` × 10 ports are free on loopback now (TCP and UDP), for a test
/// that needs `kraken dev`'s fixed layout. Another process may take one before the test
/// binds it; the range is picked at random among thousands to make that unlikely.
fn free_base_port(nodes: u16) -> u16 {
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    let span = nodes * 10;
    for attempt in 0..500u64 {
        let slot = (seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(attempt * 7919))
            % 3000;
        let base = 20000 + u16::try_from(slot).unwrap() * 10;
        let free = (base..base + span).all(|port| {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free range of {span} ports on loopback");
}

#[test]
fn kraken_dev_restarted_on_its_data_dir_keeps_every_address_and_refuses_a_second_instance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    // Three origins, a tracker, a build-index, one agent, a proxy.
    let base = free_base_port(7);
    let base_arg = base.to_string();
    let args = [
        "dev",
        "--data-dir",
        data.to_str().unwrap(),
        "--agents",
        "1",
        "--base-port",
        &base_arg,
    ];
    let read_file = || -> ClusterFile {
        serde_json::from_slice(&std::fs::read(data.join("cluster.json")).unwrap()).unwrap()
    };
    let mut first = Daemon::spawn(&args, dir.path().join("dev-1.stderr"));
    first.wait_for_line("ready", Duration::from_secs(60));
    let before = read_file();
    assert_eq!(before.nodes.len(), 7, "{before:?}");
    for (k, n) in before.nodes.iter().enumerate() {
        let at = |offset: usize| {
            SocketAddr::from((
                [127, 0, 0, 1],
                base + u16::try_from(10 * k + offset).unwrap(),
            ))
        };
        assert_eq!(n.quic, at(0), "{}", n.name);
        assert_eq!(n.http, Some(at(2)), "{}", n.name);
        if let Some(gossip) = n.gossip {
            assert_eq!(gossip, at(1), "{}", n.name);
        }
        if let Some(registry) = n.registry {
            assert_eq!(registry, at(3), "{}", n.name);
        }
    }
    // It names where to push and pull.
    let proxy = before.nodes.iter().find(|n| n.name == "proxy-1").unwrap();
    let agent = before.nodes.iter().find(|n| n.name == "agent-1").unwrap();
    let want = format!(
        "push to the proxy at {}; pull from any agent: agent-1 {}",
        proxy.registry.unwrap(),
        agent.registry.unwrap()
    );
    assert!(
        first.stdout.iter().any(|l| l.contains(&want)),
        "{want:?} not printed\n{}",
        first.context()
    );

    // A second instance on the same data directory is refused, naming the first.
    let mut second = Daemon::spawn(&args, dir.path().join("dev-2.stderr"));
    let status = second.wait_exit(Duration::from_secs(20));
    assert!(
        !status.success(),
        "the second instance exited with {status}"
    );
    let stderr = std::fs::read_to_string(&second.stderr).unwrap();
    let want = format!(
        "another kraken dev (pid {}) holds {}",
        first.child.id(),
        std::fs::canonicalize(&data).unwrap().display()
    );
    assert!(stderr.contains(&want), "{want:?} not in {stderr:?}");
    assert_one_line_naming("second", &stderr, "another kraken dev");

    // Restarted, it listens where it did.
    let pid = first.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        first.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        first.context()
    );
    let mut third = Daemon::spawn(&args, dir.path().join("dev-3.stderr"));
    third.wait_for_line("ready", Duration::from_secs(60));
    let after = read_file();
    let addresses = |f: &ClusterFile| -> Vec<_> {
        f.nodes
            .iter()
            .map(|n| (n.name.clone(), n.quic, n.gossip, n.http, n.registry))
            .collect()
    };
    assert_eq!(addresses(&after), addresses(&before));
}
