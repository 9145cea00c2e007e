//! What a campaign did and found: the seed, the timeline of faults, the counts and the
//! violations, as text (and as JSON with `--json-out`).

use std::fmt::Write as _;

use super::faults::{Event, FaultCounts};
use super::invariants::Checks;
use super::workload::Counts;

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CampaignReport {
    /// The RNG seed (rerun with `--seed` to draw the same faults and images).
    pub seed: u64,
    /// Seconds of workload under faults.
    pub duration_s: f64,
    /// Nodes per role, e.g. `origin ×2`.
    pub cluster: String,
    /// Why the disk-full fault did not run, if it did not.
    pub no_disk_fault: Option<String>,
    /// Fault kinds left out (`--without`).
    pub faults_left_out: Vec<String>,
    /// The timeline.
    pub timeline: Vec<Event>,
    /// Fault counts.
    pub faults: FaultCounts,
    /// Workload counts.
    pub workload: Counts,
    /// The final checks.
    pub checks: Checks,
    /// Every violation: wrong bytes during the run, crashes, and failed checks.
    pub violations: Vec<String>,
}

impl CampaignReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The report as text.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "campaign seed {} ({:.0} s under faults)",
            self.seed, self.duration_s
        );
        let _ = writeln!(s, "cluster: {}", self.cluster);
        if let Some(why) = &self.no_disk_fault {
            let _ = writeln!(s, "disk-full fault NOT run: {why}");
        }
        if !self.faults_left_out.is_empty() {
            let _ = writeln!(s, "faults left out: {}", self.faults_left_out.join(", "));
        }
        let _ = writeln!(s, "\ntimeline:");
        for e in &self.timeline {
            let _ = writeln!(s, "  {:7.1} s  {}", e.at_s, e.what);
        }
        let f = &self.faults;
        let kills: Vec<String> = f.kills.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = writeln!(s, "\nfaults:");
        let _ = writeln!(s, "  kills: {}", kills.join(", "));
        let _ = writeln!(
            s,
            "  origin kills mid-push {}, disk full {}, backend down {}, corrupt (agent) {}, \
             corrupt origin {}, transient origins {}, failed restarts {}",
            f.origin_kills_mid_push,
            f.disk_full,
            f.backend_down,
            f.corrupt,
            f.corrupt_origin,
            f.transient_origins,
            f.failed_restarts
        );
        let w = &self.workload;
        let _ = writeln!(s, "\nworkload:");
        let _ = writeln!(
            s,
            "  pushes acked {} ({} bytes), given up {}, latest acked {}",
            w.pushes_acked, w.pushed_bytes, w.pushes_failed, w.latest_acked
        );
        let _ = writeln!(
            s,
            "  pulls ok {} ({} bytes checked), unavailable {}, failed requests retried {}",
            w.pulls_ok, w.pulled_bytes, w.pulls_unavailable, w.requests_failed
        );
        let _ = writeln!(s, "\ninvariant checks ({:.0} s):", self.checks.secs);
        for (what, n) in &self.checks.held {
            let _ = writeln!(s, "  held {n:6}  {what}");
        }
        if self.passed() {
            let _ = writeln!(s, "\nPASSED: every invariant held (seed {})", self.seed);
        } else {
            let _ = writeln!(
                s,
                "\nFAILED: {} violations (seed {}):",
                self.violations.len(),
                self.seed
            );
            for v in self.violations.iter().take(50) {
                let _ = writeln!(s, "  {v}");
            }
            if self.violations.len() > 50 {
                let _ = writeln!(s, "  … and {} more", self.violations.len() - 50);
            }
        }
        s
    }
}
