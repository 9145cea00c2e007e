//! `kraken-bench registry` end to end, tiny: an 8 MiB blob, one round, a two-layer image
//! of 4 MiB layers, against a real docker-registry and a `kraken dev` cluster, every
//! download checked against its digest by the bench. Page caches are left alone: dropping
//! them machine-wide would slow every test running beside this one. Needs `docker-registry`, `curl` and
//! `skopeo` (and the `kraken` binary, built here if missing): prints SKIPPED without them,
//! except under CI (`CI` set), where it must run.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{have, kraken_binary};

/// Processes whose command line names `dir`: what a run left running.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let cmdline = std::fs::read(e.ok()?.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some(cmdline)
        })
        .collect()
}

#[test]
fn a_tiny_registry_run_measures_every_step_and_leaves_nothing() {
    const TEST: &str = "bench_registry";
    if !["docker-registry", "curl", "skopeo"]
        .iter()
        .all(|t| have(TEST, t))
    {
        return;
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_kraken-bench"));
    let kraken = kraken_binary(&bench).expect("the kraken binary, found or built");
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("run");
    let json = root.path().join("report.json");
    let out = Command::new(&bench)
        .args([
            "registry",
            "--mib",
            "8",
            "--rounds",
            "1",
            "--no-drop-caches",
        ])
        .args(["--layers", "2", "--layer-mib", "4", "--json-out"])
        .arg(&json)
        .arg("--work-dir")
        .arg(&work)
        .env("KRAKEN_BIN", &kraken)
        .output()
        .expect("runs kraken-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "registry bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // The table on stdout, the JSON in the file.
    for step in [
        "push-chunked",
        "second-agent",
        "GET ÷ exchange",
        "warm-pull ÷ sendfile-floor",
        "image-pull",
        "kraken ÷ registry",
    ] {
        assert!(stdout.contains(step), "no {step} in\n{stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON file")).expect("JSON");
    let rows: Vec<&str> = report["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["row"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "push",
            "push-chunked",
            "cold-pull",
            "exchange",
            "second-agent",
            "warm-pull",
            "sendfile-floor",
            "range",
            "image-push",
            "image-pull"
        ]
    );
    for m in report["measurements"].as_array().unwrap() {
        let row = m["row"].as_str().unwrap();
        assert!(m["kraken"]["secs"].as_f64().unwrap() > 0.0, "{m}");
        assert!(m["ratio"].as_f64().unwrap() > 0.0, "{m}");
        if row == "second-agent" || row == "exchange" {
            assert!(m["registry"].is_null(), "{m}");
        } else {
            assert!(m["registry"]["secs"].as_f64().unwrap() > 0.0, "{m}");
        }
    }
    assert!(report["warm_over_floor"]["median"].as_f64().unwrap() > 0.0);
    assert_eq!(report["setup"]["blob_bytes"], 8 << 20);
    assert_eq!(report["setup"]["range_bytes"], 4 << 20);
    assert_eq!(report["setup"]["caches_dropped"], false);
    assert!(
        report["notes"][0]
            .as_str()
            .unwrap()
            .contains("--no-drop-caches"),
        "{}",
        report["notes"]
    );
    // Everything it started and wrote is gone.
    assert!(!work.exists(), "{} left behind", work.display());
    let left = processes_under(&work);
    assert!(left.is_empty(), "processes left: {left:?}");
}
