//! `krakenctl` end to end: the built binary against an in-process `kraken dev` cluster
//! (three origins, a tracker, two agents on loopback), checking its tables, its JSON and
//! its exit codes.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kraken_node::dev::{DevCluster, DevOptions};
use kraken_storage::Digest;
use kraken_tools::exit;
use serde_json::Value;

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "krakenctl failed: {self:?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Fails unless it exited with `code` with one stderr line, whatever it printed before.
    fn failed_with_output(&self, code: u8) {
        assert_eq!(self.code, i32::from(code), "{self:?}");
        assert_eq!(self.stderr.lines().count(), 1, "{self:?}");
    }

    /// Fails unless it exited with `code` and said so in exactly one stderr line.
    fn failed_with(&self, code: u8) {
        assert_eq!(self.code, i32::from(code), "{self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{self:?}");
        assert!(lines[0].starts_with("krakenctl: "), "{self:?}");
        assert!(self.stdout.is_empty(), "{self:?}");
    }
}

/// Runs `krakenctl ARGS` with a clean environment (no `KRAKEN_*`, no user config). The
/// child runs while this test's runtime keeps serving the in-process cluster.
async fn krakenctl(home: &Path, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_krakenctl"));
    cmd.args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true);
    for var in [
        "KRAKEN_SEED",
        "KRAKEN_CA",
        "KRAKEN_CERT",
        "KRAKEN_KEY",
        "KRAKEN_CLUSTER",
        "KRAKENCTL_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("krakenctl {args:?} hung"))
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    cluster: DevCluster,
    file: PathBuf,
}

impl Fixture {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cluster = kraken_node::dev::start(&DevOptions {
            data_dir: dir.path().join("dev"),
            agents: 2,
            origins: 3,
            upstreams: Vec::new(),
            base_port: 0,
        })
        .await
        .unwrap();
        let file = dir.path().join("dev").join("cluster.json");
        assert!(file.exists());
        Fixture { dir, cluster, file }
    }

    /// `krakenctl --cluster DIR/cluster.json ARGS`.
    async fn ctl(&self, args: &[&str]) -> Run {
        let mut all = vec!["--cluster", self.file.to_str().unwrap()];
        all.extend_from_slice(args);
        krakenctl(self.dir.path(), &all).await
    }

    /// Runs `args` until `done` accepts the run, or panics after `limit`.
    async fn ctl_until(&self, args: &[&str], limit: Duration, done: impl Fn(&Run) -> bool) -> Run {
        let deadline = Instant::now() + limit;
        loop {
            let run = self.ctl(args).await;
            if done(&run) {
                return run;
            }
            assert!(Instant::now() < deadline, "never happened: {run:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn quic_of(&self, name: &str) -> String {
        self.cluster
            .file
            .nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap()
            .quic
            .to_string()
    }
}

/// A file of `len` bytes from a seed, and its digest.
fn blob_file(dir: &Path, name: &str, len: usize, seed: u8) -> (PathBuf, Digest) {
    let mut state = u64::from(seed) | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, Digest::sha256_of(&bytes))
}

fn row<'a>(table: &'a str, first: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_ring_and_build_index_commands() {
    let f = Fixture::start().await;

    // members: ring nodes from the view, agents from cluster.json, all healthy.
    let table = f.ctl(&["members"]).await.ok().stdout;
    let names: Vec<&str> = f
        .cluster
        .file
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    for name in [
        "origin-1",
        "origin-2",
        "origin-3",
        "tracker-1",
        "agent-1",
        "agent-2",
    ] {
        assert!(names.contains(&name), "{names:?}");
    }
    for name in &names {
        let line = row(&table, name);
        assert!(line.contains(" ok "), "{line}");
    }
    assert!(row(&table, "origin-1").contains(&f.quic_of("origin-1")));
    assert!(row(&table, "agent-2").contains("cluster-file"));
    assert!(table.starts_with("cluster kraken-dev "), "{table}");
    let json = f.ctl(&["members", "--json"]).await.ok().json();
    let members = json["members"].as_array().unwrap();
    assert_eq!(members.len(), names.len());
    assert!(
        members
            .iter()
            .all(|m| m["health"] == "ok" && m["reachable"] == true)
    );
    let origin = members.iter().find(|m| m["name"] == "origin-2").unwrap();
    assert_eq!(origin["roles"][0], "origin");
    assert_eq!(origin["source"], "view");
    assert!(origin["generation"].as_u64().is_some());
    assert_eq!(json["cluster_id"], "kraken-dev");

    // ring: three origin owners and the tracker, as the nodes compute them.
    let digest = Digest::sha256_of(b"ring");
    let table = f.ctl(&["ring", &digest.to_string()]).await.ok().stdout;
    let origin_rows = table.lines().filter(|l| l.starts_with("origin ")).count();
    assert_eq!(origin_rows, 3, "{table}");
    assert!(row(&table, "tracker").contains("tracker-1"), "{table}");
    let json = f
        .ctl(&["--json", "ring", &digest.to_string()])
        .await
        .ok()
        .json();
    let expected: Vec<String> = f.cluster.nodes[0]
        .cluster()
        .owners_of_digest(kraken_membership::Role::Origin, &digest, 3)
        .iter()
        .map(|m| m.id.as_str().to_string())
        .collect();
    let got: Vec<String> = json["owners"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["role"] == "origin")
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, expected);

    // Unknown (valid) digest: exit 5; a bad digest: exit 4.
    let unknown = Digest::sha256_of(b"nobody has this");
    let run = f.ctl(&["blob", "stat", &unknown.to_string()]).await;
    run.failed_with(exit::NOT_FOUND);
    assert!(run.stderr.contains("no origin holds"), "{run:?}");
    f.ctl(&["blob", "stat", "sha256:zz"])
        .await
        .failed_with(exit::BAD_ARGUMENT);
    f.ctl(&["pull-report", &unknown.to_string(), "--agent", "agent-1"])
        .await
        .failed_with(exit::NOT_FOUND);

    // Without a build-index (stop the dev cluster's, if it has one), tags, repos and
    // replication say so with exit 6.
    let mut f = f;
    if let Some(i) = f
        .cluster
        .nodes
        .iter()
        .position(|n| n.roles().build_index.is_some())
    {
        let table = f.ctl(&["ring", "library/app:v1"]).await.ok().stdout;
        assert!(row(&table, "build-index").contains("owner"), "{table}");
        f.cluster.nodes.remove(i).shutdown().await;
        f.ctl_until(&["tag", "get", "repo:tag"], Duration::from_secs(30), |r| {
            r.code == i32::from(exit::NOT_AVAILABLE)
        })
        .await;
    }
    for args in [
        &["tag", "get", "repo:tag"][..],
        &["tag", "put", "repo:tag", &digest.to_string()],
        &["tag", "ls", "repo"],
        &["tag", "history", "repo:tag"],
        &["repos"],
        &["replication"],
        &["ring", "repo:tag"],
    ] {
        let run = f.ctl(args).await;
        run.failed_with(exit::NOT_AVAILABLE);
        assert_eq!(
            run.stderr.trim(),
            "krakenctl: not available in this cluster: no build-index"
        );
    }

    f.cluster.shutdown().await;
}

/// `push --algorithm sha512` names the blob by its sha512; stat, ring and pull (through an
/// agent, P2P) take the sha512 digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_a_blob_by_its_sha512() {
    let f = Fixture::start().await;
    let (path, _) = blob_file(f.dir.path(), "blob512", 1 << 20, 7);
    let bytes = std::fs::read(&path).unwrap();
    let d = Digest::of(kraken_storage::DigestAlgorithm::Sha512, &bytes).to_string();
    let file = path.to_str().unwrap();
    let out = f
        .ctl(&["push", file, "--algorithm", "sha512"])
        .await
        .ok()
        .stdout;
    assert_eq!(out, format!("{d}\n"));
    f.ctl_until(&["blob", "stat", &d], Duration::from_secs(30), |r| {
        r.code == 0 && r.stdout.contains("held by       3 of 3 origins")
    })
    .await;
    let ring = f.ctl(&["ring", &d]).await.ok().stdout;
    assert_eq!(ring.lines().filter(|l| l.starts_with("origin ")).count(), 3);
    let out_path = f.dir.path().join("pulled512");
    let agent = f.quic_of("agent-1");
    let to = out_path.to_str().unwrap();
    f.ctl(&["pull", &d, "-o", to, "--agent", &agent]).await.ok();
    assert_eq!(std::fs::read(&out_path).unwrap(), bytes);
    // An algorithm the cluster does not know is a usage error; nothing is pushed.
    let run = f.ctl(&["push", file, "--algorithm", "md5"]).await;
    assert_eq!(run.code, i32::from(exit::USAGE), "{run:?}");
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_stat_pull_and_report_a_blob() {
    const LEN: usize = 3 << 20;
    let f = Fixture::start().await;
    let (path, digest) = blob_file(f.dir.path(), "blob", LEN, 42);
    let d = digest.to_string();

    // push prints just the digest when piped.
    let out = f.ctl(&["push", path.to_str().unwrap()]).await.ok().stdout;
    assert_eq!(out, format!("{d}\n"));

    // blob stat: all three owners hold it and it reaches the backend.
    let stat = f
        .ctl_until(&["blob", "stat", &d], Duration::from_secs(30), |r| {
            r.code == 0
                && r.stdout.contains("held by       3 of 3 origins")
                && r.stdout.contains("backend       persisted")
        })
        .await
        .stdout;
    assert!(
        stat.contains("size          3.00 MiB (3145728 bytes)"),
        "{stat}"
    );
    for origin in ["origin-1", "origin-2", "origin-3"] {
        let line = row(&stat, origin);
        assert_eq!(
            line.split_whitespace().take(3).collect::<Vec<_>>(),
            [origin, "yes", "yes"],
            "{stat}"
        );
    }
    let json = f.ctl(&["blob", "stat", &d, "--json"]).await.ok().json();
    assert_eq!(json["holders"], 3);
    assert_eq!(json["length"], LEN);
    assert!(json["piece_length"].as_u64().unwrap() > 0);
    assert_eq!(json["metainfo_id"].as_str().unwrap().len(), 64);

    // ring: the three owners are the origins that hold it.
    let ring = f.ctl(&["ring", &d]).await.ok().stdout;
    assert_eq!(ring.lines().filter(|l| l.starts_with("origin ")).count(), 3);

    // pull through agent-1 (P2P), then from it: the same bytes.
    let agent = f.quic_of("agent-1");
    let out_path = f.dir.path().join("pulled");
    let run = f
        .ctl(&[
            "pull",
            &d,
            "-o",
            out_path.to_str().unwrap(),
            "--agent",
            &agent,
        ])
        .await
        .ok();
    assert!(run.stdout.is_empty(), "quiet when piped: {run:?}");
    assert_eq!(
        std::fs::read(&out_path).unwrap(),
        std::fs::read(&path).unwrap()
    );
    assert!(!f.dir.path().join("pulled.part").exists());

    // pull-report: every byte accounted for, sources named.
    let report = f
        .ctl(&["pull-report", &d, "--agent", &agent])
        .await
        .ok()
        .stdout;
    assert!(
        report.contains("length           3.00 MiB (3145728 bytes)"),
        "{report}"
    );
    assert!(
        report.contains("from origins     3.00 MiB (100.0%)"),
        "{report}"
    );
    assert!(report.contains("pieces retried   0"), "{report}");
    assert!(report.contains("agent-1 (127.0.0.1:"), "{report}");
    let sources: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.starts_with("SOURCE"))
        .skip(1)
        .collect();
    assert!(!sources.is_empty(), "{report}");
    assert!(
        sources.iter().all(|l| l.starts_with("origin-")),
        "sources are named: {report}"
    );
    let json = f
        .ctl(&["pull-report", &d, "--agent", "agent-1", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(json["digest"], d.as_str());
    assert_eq!(json["length"], LEN);
    let moved =
        json["bytes_from_agents"].as_u64().unwrap() + json["bytes_from_origins"].as_u64().unwrap();
    assert_eq!(moved, LEN as u64);

    // blob peers: the tracker knows agent-1 now.
    let peers = f
        .ctl_until(&["blob", "peers", &d], Duration::from_secs(20), |r| {
            r.code == 0 && r.stdout.lines().any(|l| l.starts_with("agent-1 "))
        })
        .await
        .stdout;
    assert!(row(&peers, "agent-1").contains(&agent), "{peers}");
    let json = f.ctl(&["blob", "peers", &d, "--json"]).await.ok().json();
    let peer = &json["peers"].as_array().unwrap()[0];
    assert_eq!(peer["name"], "agent-1");
    assert_eq!(peer["kind"], "agent");

    // blob peers --dht: agent-1 provides the blob it holds; the owning origin's DHT (the
    // default node asked) and another origin's find it.
    let dht = f
        .ctl_until(
            &["blob", "peers", &d, "--dht"],
            Duration::from_secs(20),
            |r| r.code == 0 && r.stdout.lines().any(|l| l.starts_with("agent-1 ")),
        )
        .await
        .stdout;
    assert!(row(&dht, "agent-1").contains(&agent), "{dht}");
    assert!(dht.contains("(its DHT)"), "{dht}");
    let json = f
        .ctl(&["blob", "peers", &d, "--dht", "--node", "origin-2", "--json"])
        .await
        .ok()
        .json();
    let provider = &json["providers"].as_array().unwrap()[0];
    assert_eq!(provider["name"], "agent-1");
    assert_eq!(provider["kind"], "agent");
    assert!(!provider["dht_peer"].as_str().unwrap().is_empty());

    // pull straight from the origins.
    let direct = f.dir.path().join("direct");
    f.ctl(&["pull", &d, "-o", direct.to_str().unwrap()])
        .await
        .ok();
    assert_eq!(
        std::fs::read(&direct).unwrap(),
        std::fs::read(&path).unwrap()
    );

    // writeback: a depth for every origin (drained by now).
    let table = f.ctl(&["writeback"]).await.ok().stdout;
    for origin in ["origin-1", "origin-2", "origin-3"] {
        let mut cells = row(&table, origin).split_whitespace().skip(1);
        let (depth, due) = (cells.next().unwrap(), cells.next().unwrap());
        assert!(depth.parse::<u64>().is_ok(), "{table}");
        assert!(due.parse::<u64>().is_ok(), "{table}");
    }
    assert!(table.contains("total queued: "), "{table}");
    let json = f.ctl(&["writeback", "--json"]).await.ok().json();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["depth"].as_u64().is_some()));
    assert!(
        rows.iter()
            .all(|r| r["due"].as_u64().unwrap() <= r["depth"].as_u64().unwrap())
    );

    // Tags, when the dev cluster has a build-index.
    if f.cluster
        .nodes
        .iter()
        .any(|n| n.roles().build_index.is_some())
    {
        let run = f.ctl(&["tag", "put", "library/app:v1", &d]).await.ok();
        assert!(run.stdout.is_empty(), "quiet when piped: {run:?}");
        let got = f.ctl(&["tag", "get", "library/app:v1"]).await.ok().stdout;
        assert_eq!(got, format!("{d}\n"));
        let json = f
            .ctl(&["tag", "get", "library/app:v1", "--json"])
            .await
            .ok()
            .json();
        assert_eq!(json["digest"], d.as_str());
        assert_eq!(json["repo"], "library/app");
        let tags = f.ctl(&["tag", "ls", "library/app"]).await.ok().stdout;
        assert_eq!(tags, "v1\n");
        let history = f
            .ctl(&["tag", "history", "library/app:v1"])
            .await
            .ok()
            .stdout;
        assert!(row(&history, &d).contains(" ago"), "{history}");
        let repos = f.ctl(&["repos"]).await.ok().stdout;
        assert!(repos.lines().any(|l| l == "library/app"), "{repos}");
        let json = f.ctl(&["replication", "--json"]).await.ok().json();
        assert!(!json.as_array().unwrap().is_empty());
        let table = f.ctl(&["replication"]).await.ok().stdout;
        assert!(table.contains("total pending: "), "{table}");
        // An unknown tag, an unknown repository, a missing digest: exit 5.
        let run = f.ctl(&["tag", "get", "library/app:nope"]).await;
        run.failed_with(exit::NOT_FOUND);
        assert!(
            run.stderr.contains("unknown tag library/app:nope"),
            "{run:?}"
        );
        f.ctl(&["tag", "ls", "library/none"])
            .await
            .failed_with(exit::NOT_FOUND);
        let missing = Digest::sha256_of(b"not pushed").to_string();
        f.ctl(&["tag", "put", "library/app:v2", &missing])
            .await
            .failed_with(exit::NOT_FOUND);
        f.ctl(&["preheat", "library/app:nope"])
            .await
            .failed_with_output(exit::NOT_FOUND);
        // A repository name the build-index rejects: exit 4.
        f.ctl(&["tag", "get", "Library/App:v1"])
            .await
            .failed_with(exit::BAD_ARGUMENT);
    }

    // Pushing again is idempotent and prints the same digest.
    let out = f.ctl(&["push", path.to_str().unwrap()]).await.ok().stdout;
    assert_eq!(out, format!("{d}\n"));

    // preheat by digest: the owners hold it already (a plain blob references nothing).
    let image = format!("default@{d}");
    let json = f.ctl(&["preheat", &image, "--json"]).await.ok().json();
    assert_eq!(json[0]["blobs_held"], 1, "{json}");
    assert_eq!(json[0]["blobs_fetched"], 0, "{json}");
    assert_eq!(json[0]["blobs"][0]["role"], "root", "{json}");
    let text = f.ctl(&["preheat", &image]).await.ok().stdout;
    assert!(text.contains(&format!("{image}: 1 blobs in")), "{text}");
    // --agents: the named agents pull what was warmed through the swarm.
    let json = f
        .ctl(&["preheat", &image, "--agents", "all", "--json"])
        .await
        .ok()
        .json();
    let agents = json[0]["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{json}");
    assert!(
        agents
            .iter()
            .all(|a| a["blobs"] == 1 && a["error"].is_null()),
        "{json}"
    );
    let text = f
        .ctl(&["preheat", &image, "--agents", "agent-2"])
        .await
        .ok()
        .stdout;
    assert!(text.contains("agent agent-2: 1 blobs held"), "{text}");
    f.ctl(&["pull-report", &d, "--agent", "agent-1"]).await.ok();
    // A blob neither the origins nor the backend have: exit 1, after saying which.
    let missing = format!("default@{}", Digest::sha256_of(b"nowhere"));
    let run = f.ctl(&["preheat", &missing]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("FAILED"), "{run:?}");
    assert!(run.stderr.starts_with("krakenctl: "), "{run:?}");

    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_seed_exits_3_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = kraken_transport::quic::tls::dev::DevCa::create(&ca_dir).unwrap();
    ca.write_node_cert("admin").unwrap();
    let p = |name: &str| ca_dir.join(name).to_str().unwrap().to_string();
    let started = Instant::now();
    let run = krakenctl(
        dir.path(),
        &[
            "--seed",
            "127.0.0.1:1",
            "--ca",
            &p("ca.crt"),
            "--cert",
            &p("admin.crt"),
            "--key",
            &p("admin.key"),
            "--timeout",
            "1",
            "members",
        ],
    )
    .await;
    run.failed_with(exit::UNREACHABLE);
    assert!(run.stderr.contains("127.0.0.1:1"), "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_are_checked_before_dialling() {
    let dir = tempfile::tempdir().unwrap();
    let conn = [
        "--seed",
        "127.0.0.1:1",
        "--ca",
        "ca.crt",
        "--cert",
        "a.crt",
        "--key",
        "a.key",
    ];
    let with = |args: &[&'static str]| {
        let mut all = conn.to_vec();
        all.extend_from_slice(args);
        all
    };
    for args in [
        &["blob", "stat", "sha256:zz"][..],
        &["blob", "peers", "md5:00"],
        &["ring", "no-colon"],
        &["tag", "get", "repo:"],
        &["pull", "sha256:0", "-o", "x"],
        &["push", "/no/such/file"],
        &["preheat", "no-reference"],
        &["preheat", "repo:v1", "--platform", "linux"],
    ] {
        krakenctl(dir.path(), &with(args))
            .await
            .failed_with(exit::BAD_ARGUMENT);
    }
    // Nothing to connect with: usage (2), as are clap's own errors.
    krakenctl(dir.path(), &["members"])
        .await
        .failed_with(exit::USAGE);
    let run = krakenctl(dir.path(), &["no-such-command"]).await;
    assert_eq!(run.code, i32::from(exit::USAGE), "{run:?}");
    // The help documents the exit codes.
    let help = krakenctl(dir.path(), &["--help"]).await.ok().stdout;
    assert!(help.contains("Exit codes:"), "{help}");
    assert!(help.contains("6  not available in this cluster"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_dry_run_reports_and_gc_deletes_only_untagged_blobs() {
    let f = Fixture::start().await;
    let (kept_path, kept) = blob_file(f.dir.path(), "kept", 10_000, 1);
    let (gone_path, gone) = blob_file(f.dir.path(), "gone", 20_000, 2);
    for path in [&kept_path, &gone_path] {
        f.ctl(&["push", path.to_str().unwrap()]).await.ok();
    }
    for d in [kept, gone] {
        f.ctl_until(
            &["blob", "stat", &d.to_string()],
            Duration::from_secs(30),
            |r| r.code == 0 && r.stdout.contains("backend       persisted"),
        )
        .await;
    }
    f.ctl(&["tag", "put", "app:v1", &kept.to_string()])
        .await
        .ok();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // A dry run names the untagged blob and its size, and deletes nothing.
    let dry = f
        .ctl(&["gc", "--dry-run", "--grace", "0"])
        .await
        .ok()
        .stdout;
    assert!(row(&dry, &gone.to_string()).contains("19.53 KiB"), "{dry}");
    assert!(!dry.contains(&kept.to_string()), "{dry}");
    assert!(dry.contains("would delete 1 blobs"), "{dry}");
    f.ctl(&["blob", "stat", &gone.to_string()]).await.ok();

    let json = f.ctl(&["gc", "--grace", "0", "--json"]).await.ok().json();
    assert_eq!(json["phase"], "Done", "{json}");
    assert_eq!(json["purged"], 1, "{json}");
    assert_eq!(json["freed_bytes"], 20_000, "{json}");
    assert_eq!(json["planned"][0][0], gone.to_string(), "{json}");
    f.ctl(&["blob", "stat", &gone.to_string()])
        .await
        .failed_with(exit::NOT_FOUND);
    f.ctl(&["blob", "stat", &kept.to_string()]).await.ok();
}

/// Deletes `origin`'s copy of `digest` in the dev cluster (as a lost disk would).
async fn lose_copy(f: &Fixture, origin: &str, digest: &Digest) {
    let node = f.cluster.origins().find(|n| n.name() == origin).unwrap();
    let cas = node.roles().origin.as_ref().unwrap().cas().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        cas.set_pinned(digest, false).unwrap();
        match cas.delete(digest) {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "cannot delete: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_finds_and_fixes_an_under_replicated_blob_and_says_when_all_is_well() {
    let f = Fixture::start().await;
    let (path, digest) = blob_file(f.dir.path(), "blob", 200_000, 7);
    let d = digest.to_string();
    f.ctl(&["push", path.to_str().unwrap()]).await.ok();
    f.ctl_until(&["blob", "stat", &d], Duration::from_secs(30), |r| {
        r.code == 0 && r.stdout.contains("owners hold   3 of 3\n")
    })
    .await;

    // A healthy cluster: nothing to do, exit 0.
    let healthy = f.ctl(&["repair"]).await.ok().stdout;
    assert!(healthy.contains("nothing to repair"), "{healthy}");
    for origin in ["origin-1", "origin-2", "origin-3"] {
        // ORIGIN SCRUBBED CORRUPT RESTORED BLOBS SHORT COPIED FETCHED FAILED STILL-SHORT
        let cells: Vec<&str> = row(&healthy, origin).split_whitespace().collect();
        assert_eq!(cells[1..4], ["1", "0", "0"], "{healthy}");
        assert_eq!(cells[5..10], ["0", "0", "0", "0", "0"], "{healthy}");
    }

    // origin-1's copy rots: repair's scrub finds it, quarantines it and restores it.
    let node = f
        .cluster
        .origins()
        .find(|n| n.name() == "origin-1")
        .unwrap();
    let file = node
        .roles()
        .origin
        .as_ref()
        .unwrap()
        .cas()
        .blob_path(&digest);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1234] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let scrubbed = f.ctl(&["repair", "--json"]).await.ok().json();
    assert_eq!(scrubbed["totals"]["scrub"]["corrupt"], 1, "{scrubbed}");
    assert_eq!(scrubbed["totals"]["scrub"]["restored"], 1, "{scrubbed}");
    assert_eq!(scrubbed["totals"]["still_short"], 0, "{scrubbed}");
    bytes[1234] ^= 0x40;
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "the restored copy is the blob"
    );

    // origin-2 loses its copy: blob stat says so, repair copies it back.
    lose_copy(&f, "origin-2", &digest).await;
    let stat = f.ctl(&["blob", "stat", &d]).await.ok().stdout;
    assert!(
        stat.contains("owners hold   2 of 3 (under-replicated)"),
        "{stat}"
    );
    let json = f.ctl(&["blob", "stat", &d, "--json"]).await.ok().json();
    assert_eq!(json["under_replicated"], true);
    let fixed = f.ctl(&["repair", "--json"]).await.ok().json();
    // Two holders offer it, one copy lands (a pass a late ring change started may race it).
    assert!(fixed["totals"]["copied"].as_u64().unwrap() <= 1, "{fixed}");
    assert_eq!(fixed["totals"]["still_short"], 0, "{fixed}");
    assert!(
        fixed["totals"]["found_short"].as_u64().unwrap() >= 1,
        "{fixed}"
    );
    let stat = f.ctl(&["blob", "stat", &d]).await.ok().stdout;
    assert!(stat.contains("owners hold   3 of 3\n"), "{stat}");

    // The same for one digest.
    lose_copy(&f, "origin-3", &digest).await;
    let one = f.ctl(&["repair", "--digest", &d]).await.ok().stdout;
    assert!(one.contains("0 failed; 0 blobs still short"), "{one}");
    let stat = f.ctl(&["blob", "stat", &d]).await.ok().stdout;
    assert!(stat.contains("owners hold   3 of 3\n"), "{stat}");
    let again = f.ctl(&["repair", "--digest", &d]).await.ok().stdout;
    assert!(again.contains("nothing to repair"), "{again}");

    // members shows what each origin's last pass left short.
    let members = f.ctl(&["members"]).await.ok().stdout;
    assert!(members.contains("UNDER-REPL"), "{members}");
    let cells: Vec<&str> = row(&members, "origin-1").split_whitespace().collect();
    assert_eq!(cells[cells.len() - 2], "0", "{members}");

    // A digest nobody has, not even the backend: exit 5, one line.
    let unknown = Digest::sha256_of(b"never pushed").to_string();
    f.ctl(&["repair", "--digest", &unknown])
        .await
        .failed_with(exit::NOT_FOUND);
    // A bad digest is refused before dialling.
    f.ctl(&["repair", "--digest", "sha256:nope"])
        .await
        .failed_with(exit::BAD_ARGUMENT);
}
