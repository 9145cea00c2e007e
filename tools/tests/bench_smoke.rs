//! `kraken-bench smoke`: 1 origin + 2 agents on shaped network namespaces, 20 MiB, every
//! copy byte-identical, plus the plain-HTTP baseline. Needs root, `ip` and `tc` (and the
//! `kraken` binary, built here if missing): prints SKIPPED without them, except under CI
//! (`CI` set), where it must run.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{have, kraken_binary};

#[test]
fn smoke_run_completes_byte_identical() {
    let ci = std::env::var_os("CI").is_some();
    if let Err(why) = kraken_tools::bench::netns::check_prerequisites() {
        assert!(!ci, "bench smoke must run under CI, but {why}");
        eprintln!("SKIPPED bench_smoke: {why}");
        return;
    }
    if !have("bench_smoke", "python3") || !have("bench_smoke", "curl") {
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
