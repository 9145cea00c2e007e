//! What the benchmark tests share: the `kraken` binary the harness starts, and how a
//! missing tool is handled (SKIPPED here, a failure under CI).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `kraken` binary next to `bench` (`target/<profile>/`), built in the same profile
/// if missing.
pub(crate) fn kraken_binary(bench: &Path) -> Option<PathBuf> {
    let dir = bench.parent()?;
    let path = dir.join("kraken");
    if path.is_file() {
        return Some(path);
    }
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "kraken-node", "--bin", "kraken"]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let ok = cmd.status().is_ok_and(|s| s.success());
    (ok && path.is_file()).then_some(path)
}

/// Whether `tool` is on PATH. Under CI (`CI` set) a missing tool fails the test; elsewhere
/// the test prints SKIPPED and passes.
pub(crate) fn have(test: &str, tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} must run under CI, but {tool} is not installed"
        );
        eprintln!("SKIPPED {test}: {tool} is not installed");
    }
    found
}
