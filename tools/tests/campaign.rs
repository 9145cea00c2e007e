//! `kraken-bench campaign`, short: separate `kraken` processes on loopback and moto, 90 s
//! of pushes and pulls under random kills of every role (origins mid-push), a stopped
//! backend, a full disk and corrupted stored blobs; every invariant must hold, the
//! replica check among them. Needs moto's server
//! (`KRAKEN_MOTO_SERVER`, the workspace's `.venv`, or on PATH) and builds the `kraken`
//! binary if missing: prints SKIPPED without moto, except under CI (`CI` set), where it
//! must run.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{have, kraken_binary};

const TEST: &str = "campaign";

/// moto's server: `KRAKEN_MOTO_SERVER`, the workspace's `.venv`, else `moto_server` on PATH
/// (SKIPPED without it, a failure under CI).
fn moto() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KRAKEN_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    have(TEST, "moto_server").then(|| PathBuf::from("moto_server"))
}

#[test]
fn a_short_campaign_loses_nothing_acknowledged_and_returns_no_wrong_byte() {
    let Some(moto) = moto() else {
        return;
    };
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_kraken-bench"));
    let kraken = kraken_binary(&bench).expect("the kraken binary");
    let work = tempfile::tempdir().expect("temp dir");
    let json = work.path().join("report.json");
    // Short gaps and holds so that 90 s see every kind of fault more than once; a wide
    // bound on the final checks, which only runs long on a loaded machine.
    let out = Command::new(&bench)
        .args(["campaign", "--duration", "90", "--seed", "24"])
        .args(["--fault-gap", "2", "5", "--fault-hold", "2", "6"])
        .args([
            "--max-layer-kib",
            "256",
            "--disk-mib",
            "64",
            "--check-secs",
            "300",
            "--converge-timeout-secs",
            "120",
        ])
        .arg("--work-dir")
        .arg(work.path().join("run"))
        .arg("--json-out")
        .arg(&json)
        .env("KRAKEN_BIN", &kraken)
        .env("KRAKEN_MOTO_SERVER", &moto)
        .output()
        .expect("runs kraken-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the campaign failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("PASSED"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    let w = &report["workload"];
    assert!(w["pushes_acked"].as_u64().unwrap() > 0, "{stdout}");
    assert!(w["pulls_ok"].as_u64().unwrap() > 0, "{stdout}");
    let kills: u64 = report["faults"]["kills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k[1].as_u64().unwrap())
        .sum();
    assert!(kills > 0, "no process was killed:\n{stdout}");
    let origin_kills = report["faults"]["kills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k[0] == "origin")
        .and_then(|k| k[1].as_u64())
        .unwrap();
    let mid_push = report["faults"]["origin_kills_mid_push"].as_u64().unwrap();
    assert!(
        origin_kills == 0 || mid_push > 0,
        "no origin kill landed mid-push:\n{stdout}"
    );
    let held: u64 = report["checks"]["held"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(held > 0, "{stdout}");
    assert!(report["violations"].as_array().unwrap().is_empty());
}
