//! `kraken-bench smoke`: 1 origin + 2 agents on shaped network namespaces, 20 MiB, every
//! copy byte-identical, plus the plain-HTTP baseline; and the same cluster with the blob
//! read through from an upstream docker-registry (`run --source upstream`). Needs root,
//! `ip` and `tc` (and the `kraken` binary, built here if missing): prints SKIPPED without
//! them, except under CI (`CI` set), where it must run.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{have, kraken_binary};

/// The bench and kraken binaries, or `None` (SKIPPED) where the namespaces or `tools`
/// cannot be had.
fn binaries(test: &str, tools: &[&str]) -> Option<(PathBuf, PathBuf)> {
    if let Err(why) = kraken_tools::bench::netns::check_prerequisites() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} must run under CI, but {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    if !tools.iter().all(|t| have(test, t)) {
        return None;
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_kraken-bench"));
    let Some(kraken) = kraken_binary(&bench) else {
        panic!(
            "cannot find or build the kraken binary next to {}",
            bench.display()
        );
    };
    Some((bench, kraken))
}

/// Runs `bench args`; its stdout, or a panic with both outputs.
fn bench_run(bench: &Path, kraken: &Path, args: &[&str]) -> String {
    let out = Command::new(bench)
        .args(args)
        .env("KRAKEN_BIN", kraken)
        .output()
        .expect("runs kraken-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// No namespace with `prefix` is left.
fn assert_no_namespaces(prefix: &str) {
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let left = String::from_utf8_lossy(&ns.stdout);
    assert!(
        !left.lines().any(|l| l.starts_with(prefix)),
        "namespaces left: {left}"
    );
}

#[test]
fn smoke_run_completes_byte_identical() {
    let Some((bench, kraken)) = binaries("bench_smoke", &["python3", "curl"]) else {
        return;
    };
    let stdout = bench_run(&bench, &kraken, &["smoke", "--json"]);
    assert!(stdout.contains("smoke ok"), "{stdout}");
    assert_no_namespaces("kbs-");
}

/// The blob comes from an upstream registry on the origin's host: every copy verified, and
/// the upstream served it about once (its access log), however many agents pulled.
#[test]
fn upstream_run_reads_the_blob_through_once() {
    let test = "bench_smoke upstream";
    let Some((bench, kraken)) = binaries(test, &["curl", "docker-registry"]) else {
        return;
    };
    let args = [
        "run",
        "--agents",
        "3",
        "--size-mib",
        "20",
        "--source",
        "upstream",
        "--no-baseline",
        "--no-simnet",
        "--prefix",
        "kbu",
        "--json",
    ];
    let stdout = bench_run(&bench, &kraken, &args);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["kraken"]["all_ok"], true, "{stdout}");
    let served = report["upstream"]["served_blobs"]
        .as_f64()
        .expect("served_blobs");
    assert!(
        (1.0..=1.1).contains(&served),
        "upstream served {served}× the blob: {stdout}"
    );
    assert_eq!(
        report["targets"]["upstream_egress_within_1_1x"], true,
        "{stdout}"
    );
    assert_no_namespaces("kbu-");
}
