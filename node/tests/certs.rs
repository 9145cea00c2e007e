//! `kraken ca init` and `kraken cert issue` from the outside: a CA and certificates made
//! with the CLI let nodes form a cluster and an admin call them; bad input gets a one-line
//! error and writes nothing.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use kraken_node::client::Cluster;
use kraken_node::config::NodeRole;
use kraken_node::node::Node;
use kraken_node::proto::{Request, Response};
use kraken_transport::quic::tls::ClusterCa;
use kraken_transport::quic::{ConnectionPool, Endpoint, NodeIdentity, PoolConfig, QuicConfig};

const KRAKEN: &str = env!("CARGO_BIN_EXE_kraken");

fn kraken(args: &[&str]) -> Output {
    Command::new(KRAKEN).args(args).output().unwrap()
}

fn ok(args: &[&str]) {
    let out = kraken(args);
    assert!(
        out.status.success(),
        "kraken {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `kraken args`, which must fail with one line on stderr containing `want`.
fn refused(args: &[&str], want: &str) {
    let out = kraken(args);
    assert!(!out.status.success(), "kraken {args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(want), "{want:?} not in {stderr:?}");
}

fn issue(ca: &Path, out: &Path, name: &str, role: &str) {
    ok(&[
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--name",
        name,
        "--role",
        role,
        "--san",
        "127.0.0.1",
        "--days",
        "30",
        "--out",
        out.to_str().unwrap(),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_from_the_cli_form_a_cluster_and_let_an_admin_call_it() {
    let mut t = support::TestCluster::new();
    let ca = t.dir.path().join("cluster-ca");
    let tls = t.dir.path().join("tls");
    ok(&["ca", "init", "--dir", ca.to_str().unwrap(), "--days", "60"]);
    let nodes = [
        ("origin-1", NodeRole::Origin, "origin"),
        ("tracker-1", NodeRole::Tracker, "tracker"),
        ("agent-1", NodeRole::Agent, "agent"),
    ];
    for (name, _, role) in nodes {
        issue(&ca, &tls, name, role);
    }
    issue(&ca, &tls, "admin", "admin");

    // The nodes load what the CLI wrote, as the daemon does.
    let mut started: Vec<Node> = Vec::new();
    for (name, role, _) in nodes {
        let mut c = t.config(name, role);
        c.tls.ca = ca.join("ca.crt");
        c.tls.cert = tls.join(format!("{name}.crt"));
        c.tls.key = tls.join(format!("{name}.key"));
        c.gossip.seeds = started
            .first()
            .and_then(Node::gossip_addr)
            .iter()
            .map(ToString::to_string)
            .collect();
        if role == NodeRole::Agent {
            c.view.seeds = started.iter().map(|n| n.quic_addr().to_string()).collect();
        }
        started.push(Node::start(c).await.unwrap());
    }
    t.nodes = started.into_iter().map(Some).collect();
    t.converge(1).await;

    // An admin certificate calls nodes.
    let identity =
        NodeIdentity::from_pem_files(&tls.join("admin.crt"), &tls.join("admin.key")).unwrap();
    let roots = ClusterCa::from_pem_file(&ca.join("ca.crt")).unwrap();
    let endpoint = Endpoint::bind(
        &QuicConfig::bind_to(SocketAddr::from(([127, 0, 0, 1], 0))),
        &identity,
        &roots,
    )
    .unwrap();
    let pool = ConnectionPool::new(endpoint, PoolConfig::default(), |_| {}).unwrap();
    let view =
        kraken_membership::ClusterView::new(kraken_membership::ClusterId::new("test").unwrap(), [])
            .unwrap();
    let admin = Cluster::new(pool, tokio::sync::watch::channel(view).1);
    for i in 0..t.nodes.len() {
        let r = admin
            .call_within(
                t.node(i).quic_addr(),
                &Request::Ping,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(matches!(r, Response::Pong(_)), "{r:?}");
    }
}

#[test]
fn bad_certificate_commands_get_one_line_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_s = ca.to_str().unwrap();
    let out = dir.path().join("out");
    let out_s = out.to_str().unwrap();
    ok(&["ca", "init", "--dir", ca_s]);
    let ca_cert = std::fs::read(ca.join("ca.crt")).unwrap();
    refused(&["ca", "init", "--dir", ca_s], "a CA already exists in");
    assert_eq!(std::fs::read(ca.join("ca.crt")).unwrap(), ca_cert);
    let issue = |ca: &str, role: &str| {
        [
            "cert", "issue", "--ca", ca, "--name", "node-1", "--role", role, "--out", out_s,
        ]
        .map(str::to_string)
    };
    let args = issue(ca_s, "janitor");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, "unknown role \"janitor\"");
    let missing = dir.path().join("no-ca");
    let args = issue(missing.to_str().unwrap(), "origin");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, "no CA in");
    assert!(!out.exists(), "a refused issue wrote {}", out.display());
    refused(
        &[
            "cert", "issue", "--ca", ca_s, "--name", "a b", "--role", "agent", "--out", out_s,
        ],
        "must be a DNS name",
    );
}
