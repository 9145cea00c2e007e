//! `kraken-bench smoke`: 1 origin + 2 agents on shaped network namespaces, 20 MiB, every
//! copy byte-identical, plus the plain-HTTP baseline. Needs root, `ip` and `tc` (and the
//! `kraken` binary, built here if missing): prints SKIPPED without them, except under CI
//! (`CI` set), where it must run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn kraken_binary(bench: &Path) -> Option<PathBuf> {
    let dir = bench.parent()?;
    let path = dir.join("kraken");
    if path.is_file() {
        return Some(path);
    }
    // Build it in the same profile as this test.
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "kraken-node", "--bin", "kraken"]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let ok = cmd.status().is_ok_and(|s| s.success());
    (ok && path.is_file()).then_some(path)
}

#[test]
fn smoke_run_completes_byte_identical() {
    let ci = std::env::var_os("CI").is_some();
    if let Err(why) = kraken_tools::bench::netns::check_prerequisites() {
        assert!(!ci, "bench smoke must run under CI, but {why}");
        eprintln!("SKIPPED bench_smoke: {why}");
        return;
    }
    if Command::new("python3").arg("-V").output().is_err()
        || Command::new("curl").arg("-V").output().is_err()
    {
        assert!(!ci, "bench smoke needs python3 and curl under CI");
        eprintln!("SKIPPED bench_smoke: python3 or curl is not installed");
        return;
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_kraken-bench"));
    let Some(kraken) = kraken_binary(&bench) else {
        panic!(
            "cannot find or build the kraken binary next to {}",
            bench.display()
        );
    };
    let out = Command::new(&bench)
        .args(["smoke", "--json"])
        .env("KRAKEN_BIN", &kraken)
        .output()
        .expect("runs kraken-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smoke failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("smoke ok"), "{stdout}");
    // Nothing left behind.
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let left = String::from_utf8_lossy(&ns.stdout);
    assert!(
        !left.lines().any(|l| l.starts_with("kbs-")),
        "namespaces left: {left}"
    );
}
