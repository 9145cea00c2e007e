//! Calibration: the same setup in the simulator (`simnet SCENARIO --json`), for a side by
//! side comparison of simulated and measured completion times.
//!
//! The scenario mirrors the run: agent and origin counts, every host's rate both ways,
//! blob and piece length, everyone arriving at once, a killed origin at the same moment
//! for `origin-kill`, one corrupt agent for `corrupt-agent`. The links are modelled as
//! rate-limited pipes with 0.1 ms latency (the bridge's); what the simulator misses
//! (CPU limits, QUIC congestion control under `tbf`, the tbf's real rate) shows as the
//! measured/simulated ratio.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use super::cluster::Discovery;
use super::report::Dist;

/// A setup to simulate.
#[derive(Debug, Clone)]
pub struct SimSetup {
    /// Agents.
    pub agents: usize,
    /// Origins.
    pub origins: usize,
    /// Every host's rate, bytes/s.
    pub rate_bytes_per_sec: f64,
    /// Blob length.
    pub blob_bytes: u64,
    /// Piece length.
    pub piece_length: u64,
    /// Kill origin 0 at this second.
    pub kill_origin_at_s: Option<f64>,
    /// Agents serving corrupt pieces.
    pub corrupt_agents: usize,
    /// Agents' upload slots, when the run set them.
    pub upload_slots: Option<usize>,
    /// Origins' upload slots, when the run set them.
    pub origin_upload_slots: Option<usize>,
    /// The run's `--discovery`: `dht` is simulated as DHT discovery (`simnet::dht`);
    /// `tracker`, `both` and `None` as the trackers' handout (simnet has no merged mode).
    pub discovery: Option<Discovery>,
}

/// The scenario TOML for `setup`.
pub fn scenario(setup: &SimSetup) -> String {
    let mb_s = setup.rate_bytes_per_sec / 1e6;
    let mut s = format!(
        "name = \"kraken-bench\"\nseed = 1\ndiscovery = \"{}\"\n\n[blob]\nsize_bytes = {}\npiece_length = {}\n\n\
         [agents]\ncount = {}\nupload_mb_s = {mb_s}\ndownload_mb_s = {mb_s}\n\n\
         [origins]\ncount = {}\nupload_mb_s = {mb_s}\ndownload_mb_s = {mb_s}\n\n\
         [trackers]\ncount = 1\n\n[network]\nlatency_ms = 0.1\nlatency_jitter_ms = 0.05\n\n\
         [arrival]\npattern = \"all-at-once\"\n\n",
        if setup.discovery == Some(Discovery::Dht) {
            "dht"
        } else {
            "tracker"
        },
        setup.blob_bytes,
        setup.piece_length,
        setup.agents,
        setup.origins
    );
    for (table, slots) in [
        ("swarm", setup.upload_slots),
        ("origin_swarm", setup.origin_upload_slots),
    ] {
        if let Some(slots) = slots {
            let _ = writeln!(s, "[{table}]\nupload_slots = {slots}\n");
        }
    }
    let mut faults = String::new();
    if let Some(at) = setup.kill_origin_at_s {
        let _ = writeln!(faults, "kill_origins = [{{ at_s = {at}, origin = 0 }}]");
    }
    if setup.corrupt_agents > 0 {
        let _ = writeln!(
            faults,
            "corrupt_fraction = {}",
            setup.corrupt_agents as f64 / setup.agents as f64
        );
    }
    if !faults.is_empty() {
        s += "[faults]\n";
        s += &faults;
    }
    s
}

/// What simnet made of the setup.
#[derive(Debug, Clone)]
pub struct Simulated {
    /// Completion times.
    pub completion_s: Dist,
    /// Completion CDF, `[seconds, fraction]`.
    pub cdf: Vec<[f64; 2]>,
    /// Origin egress in copies of the blob.
    pub origin_egress_blobs: f64,
}

/// Runs `simnet` on the setup.
pub fn simulate(simnet: &Path, setup: &SimSetup, dir: &Path) -> anyhow::Result<Simulated> {
    let path = dir.join("simnet-scenario.toml");
    std::fs::write(&path, scenario(setup))?;
    let out = Command::new(simnet)
        .arg(&path)
        .arg("--json")
        .output()
        .with_context(|| format!("cannot run {}", simnet.display()))?;
    if !out.status.success() {
        bail!(
            "simnet failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("simnet printed no JSON")?;
    let completion_s = serde_json::from_value(v["completion_s"].clone())
        .context("simnet printed no completion times")?;
    let cdf = serde_json::from_value(v["cdf"].clone()).context("simnet printed no CDF")?;
    Ok(Simulated {
        completion_s,
        cdf,
        origin_egress_blobs: v["origin_egress_blobs"].as_f64().unwrap_or(f64::NAN),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_mirrors_the_setup() {
        let s = scenario(&SimSetup {
            agents: 10,
            origins: 2,
            rate_bytes_per_sec: 12.5e6,
            blob_bytes: 1 << 20,
            piece_length: 1 << 18,
            kill_origin_at_s: Some(3.0),
            corrupt_agents: 0,
            upload_slots: None,
            origin_upload_slots: Some(4),
            discovery: None,
        });
        assert!(s.contains("count = 10\nupload_mb_s = 12.5"));
        assert!(s.contains("kill_origins = [{ at_s = 3, origin = 0 }]"));
        assert!(!s.contains("corrupt_fraction"));
        assert!(s.contains("[origin_swarm]\nupload_slots = 4\n"));
        assert!(!s.contains("[swarm]"));
        assert!(s.contains("\ndiscovery = \"tracker\"\n"));
        // The simulator reads it as the node would run it.
        let parsed = kraken_simnet::Scenario::from_toml(&s).unwrap();
        assert_eq!(parsed.discovery, kraken_simnet::dht::Discovery::Tracker);
    }

    #[test]
    fn dht_runs_are_simulated_with_dht_discovery_and_both_as_tracker() {
        for (mode, want) in [
            (Discovery::Dht, kraken_simnet::dht::Discovery::Dht),
            (Discovery::Both, kraken_simnet::dht::Discovery::Tracker),
            (Discovery::Tracker, kraken_simnet::dht::Discovery::Tracker),
        ] {
            let s = scenario(&SimSetup {
                agents: 10,
                origins: 1,
                rate_bytes_per_sec: 12.5e6,
                blob_bytes: 1 << 20,
                piece_length: 1 << 18,
                kill_origin_at_s: None,
                corrupt_agents: 0,
                upload_slots: None,
                origin_upload_slots: None,
                discovery: Some(mode),
            });
            let parsed = kraken_simnet::Scenario::from_toml(&s).unwrap();
            assert_eq!(parsed.discovery, want, "{mode:?}");
        }
    }
}
