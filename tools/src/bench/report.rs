//! The figures of a run and how they are printed: completion-time distribution, the
//! Kumar & Ross lower bound `T_min = max(F/u_s, F/d_min, N·F/(u_s + Σu_i))` and each
//! figure's ratio to it, origin egress in copies of the blob, CPU seconds per GB moved,
//! the plain-HTTP baseline and the simulator's figure for the same setup.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The Kumar & Ross lower bound, computed by the very code simnet reports with.
pub use kraken_simnet::report::Bound;

/// Nearest-rank completion figures, computed by the very code simnet reports with.
pub use kraken_simnet::Dist;

/// One host's download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostResult {
    /// Node or host name.
    pub name: String,
    /// Seconds to completion; `None` if it did not complete.
    pub secs: Option<f64>,
    /// The stored bytes hash to the digest.
    pub verified: bool,
    /// Bytes from other agents (kraken only).
    pub bytes_from_agents: u64,
    /// Bytes from origins (kraken only).
    pub bytes_from_origins: u64,
    /// Pieces that failed verification (kraken only).
    pub bad_pieces: u64,
    /// Errors seen, retried past or final.
    pub errors: Vec<String>,
}

/// One way of distributing the blob (kraken or the baseline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    /// Per host.
    pub hosts: Vec<HostResult>,
    /// Completion times of those that completed.
    pub completion_s: Dist,
    /// The same over `T_min`.
    pub over_t_min: Dist,
    /// Every host completed with verified bytes.
    pub all_ok: bool,
    /// Bytes the serving host(s) (origins, or the HTTP server) sent on their links.
    pub origin_egress_bytes: u64,
    /// The same in copies of the blob.
    pub origin_egress_blobs: f64,
    /// CPU seconds of every process involved (nodes, or server + clients).
    pub cpu_s: f64,
    /// CPU seconds per GB (10^9 bytes) delivered to hosts.
    pub cpu_s_per_gb: f64,
}

impl PhaseReport {
    /// Summarizes `hosts`.
    pub fn summarize(
        hosts: Vec<HostResult>,
        t_min: f64,
        blob: u64,
        egress: u64,
        cpu_s: f64,
    ) -> PhaseReport {
        let times: Vec<f64> = hosts
            .iter()
            .filter(|h| h.verified)
            .filter_map(|h| h.secs)
            .collect();
        let completion_s = Dist::of(times);
        let moved_gb = (blob as f64 * hosts.len() as f64) / 1e9;
        PhaseReport {
            over_t_min: completion_s.scaled(t_min),
            completion_s,
            all_ok: hosts.iter().all(|h| h.verified && h.secs.is_some()),
            origin_egress_bytes: egress,
            origin_egress_blobs: egress as f64 / blob as f64,
            cpu_s,
            cpu_s_per_gb: if moved_gb > 0.0 {
                cpu_s / moved_gb
            } else {
                0.0
            },
            hosts,
        }
    }
}

/// The simulator's figure for the same setup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimFigure {
    /// Its completion times, seconds.
    pub completion_s: Dist,
    /// Its origin egress in copies of the blob.
    pub origin_egress_blobs: f64,
    /// Measured max completion over simulated max completion.
    pub measured_over_simulated_max: f64,
    /// Measured p50 over simulated p50.
    pub measured_over_simulated_p50: f64,
    /// Its completion CDF, `[seconds, fraction]`.
    #[serde(default)]
    pub cdf: Vec<[f64; 2]>,
}

/// What the upstream registry served, when the blob came from one (`--source upstream`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamFigure {
    /// `docker-registry --version`.
    pub registry_version: String,
    /// Bytes it sent for `GET`s of the blob (its access log).
    pub served_bytes: u64,
    /// The same in copies of the blob.
    pub served_blobs: f64,
}

/// The setup of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// Agents.
    pub agents: usize,
    /// Origins.
    pub origins: usize,
    /// Link rate of every host, both ways, Mbit/s (`None`: unshaped).
    pub rate_mbit: Option<f64>,
    /// Blob length.
    pub blob_bytes: u64,
    /// Piece length the origins used.
    pub piece_length: Option<u64>,
    /// Fault injected.
    pub fault: Option<String>,
    /// `--discovery` (the nodes' `[discovery] mode`); `None`: not set, the node's default
    /// (tracker).
    #[serde(default)]
    pub discovery: Option<String>,
}

/// Pass/fail of the targets; the default (every target failed or not applicable)
/// is what a report holds before [`RunReport::finish`] checks them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// max completion ≤ 1.3 × T_min.
    pub max_within_1_3_t_min: bool,
    /// origin egress ≤ 2 × blob.
    pub origin_egress_within_2x: bool,
    /// ≥ 5× faster than the baseline (max completion), when one ran.
    pub speedup_at_least_5x: Option<bool>,
    /// Simulated and measured max completion within 15%, when simnet ran.
    pub simnet_within_15pct: Option<bool>,
    /// The upstream registry served ≤ 1.1 × blob, when the blob came from one.
    #[serde(default)]
    pub upstream_egress_within_1_1x: Option<bool>,
}

/// Everything a run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// What ran.
    pub setup: Setup,
    /// The bound (nominal link rates).
    pub bound: Bound,
    /// Kraken's distribution.
    pub kraken: PhaseReport,
    /// The plain-HTTP baseline.
    pub baseline: Option<PhaseReport>,
    /// Baseline max completion over kraken max completion.
    pub speedup: Option<f64>,
    /// simnet's figure.
    pub simnet: Option<SimFigure>,
    /// What the upstream registry served, when the blob came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamFigure>,
    /// What the fault run showed, in words.
    pub fault_notes: Vec<String>,
    /// The targets.
    pub targets: Targets,
}

impl PhaseReport {
    /// The completion CDF over all hosts (those that never completed keep it below 1).
    pub fn cdf(&self) -> Vec<[f64; 2]> {
        let mut secs: Vec<f64> = self.hosts.iter().filter_map(|h| h.secs).collect();
        secs.sort_by(f64::total_cmp);
        let n = self.hosts.len().max(1) as f64;
        secs.iter()
            .enumerate()
            .map(|(i, s)| [*s, (i + 1) as f64 / n])
            .collect()
    }
}

impl RunReport {
    /// The completion CDFs of kraken, the baseline and simnet, with `T_min`, as SVG.
    pub fn svg(&self) -> String {
        let s = &self.setup;
        let title = format!(
            "{} origin(s) + {} agents, {} Mbit/s, {} MiB{}",
            s.origins,
            s.agents,
            s.rate_mbit.unwrap_or(0.0),
            s.blob_bytes >> 20,
            s.fault
                .as_ref()
                .map(|f| format!(", fault {f}"))
                .unwrap_or_default()
        );
        let kraken = self.kraken.cdf();
        let baseline = self.baseline.as_ref().map(PhaseReport::cdf);
        let mut series: Vec<(&str, &[[f64; 2]])> = vec![("kraken", &kraken)];
        if let Some(b) = &baseline {
            series.push(("plain HTTP", b));
        }
        if let Some(sim) = &self.simnet {
            series.push(("simnet", &sim.cdf));
        }
        kraken_simnet::report::svg_cdfs(&title, &series, self.bound.t_min_s)
    }

    /// Fills in the speed-up and targets.
    pub fn finish(&mut self) {
        let k = &self.kraken;
        self.speedup = self
            .baseline
            .as_ref()
            .filter(|b| k.completion_s.max > 0.0 && b.completion_s.n > 0)
            .map(|b| b.completion_s.max / k.completion_s.max);
        self.targets = Targets {
            max_within_1_3_t_min: k.all_ok && k.over_t_min.max <= 1.3,
            origin_egress_within_2x: k.origin_egress_blobs <= 2.0,
            speedup_at_least_5x: self.speedup.map(|s| s >= 5.0),
            simnet_within_15pct: self
                .simnet
                .as_ref()
                .map(|s| (s.measured_over_simulated_max - 1.0).abs() <= 0.15),
            upstream_egress_within_1_1x: self.upstream.as_ref().map(|u| u.served_blobs <= 1.1),
        };
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let st = &self.setup;
        let mib = st.blob_bytes as f64 / (1 << 20) as f64;
        let _ = writeln!(
            s,
            "setup: {} origin(s) + {} agents, {} each way, blob {mib:.0} MiB{}{}{}, discovery {}",
            st.origins,
            st.agents,
            st.rate_mbit
                .map_or("unshaped".into(), |r| format!("{r:.0} Mbit/s")),
            st.piece_length
                .map_or(String::new(), |p| format!(", pieces {} KiB", p >> 10)),
            st.fault
                .as_ref()
                .map_or(String::new(), |f| format!(", fault {f}")),
            self.upstream.as_ref().map_or(String::new(), |u| format!(
                ", from an upstream docker-registry {}",
                u.registry_version
            )),
            st.discovery.as_deref().unwrap_or("tracker (default)"),
        );
        let b = &self.bound;
        let _ = writeln!(
            s,
            "T_min = {:.2} s  (F/u_s {:.2}, F/d_min {:.2}, N·F/(u_s+Σu) {:.2})",
            b.t_min_s, b.origin_term_s, b.download_term_s, b.aggregate_term_s
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<10} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>9} {:>8} {:>6}",
            "", "p50 s", "p99 s", "max s", "p50/T", "p99/T", "max/T", "egress×F", "CPU s/GB", "ok"
        );
        let mut row = |name: &str, p: &PhaseReport| {
            let _ = writeln!(
                s,
                "{:<10} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>7.2} {:>7.2} {:>9.2} {:>8.1} {:>6}",
                name,
                p.completion_s.p50,
                p.completion_s.p99,
                p.completion_s.max,
                p.over_t_min.p50,
                p.over_t_min.p99,
                p.over_t_min.max,
                p.origin_egress_blobs,
                p.cpu_s_per_gb,
                if p.all_ok { "all" } else { "NO" }
            );
        };
        row("kraken", &self.kraken);
        if let Some(bl) = &self.baseline {
            row("http", bl);
        }
        if let Some(sim) = &self.simnet {
            let _ = writeln!(
                s,
                "{:<10} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>7.2} {:>7.2} {:>9.2}",
                "simnet",
                sim.completion_s.p50,
                sim.completion_s.p99,
                sim.completion_s.max,
                sim.completion_s.p50 / b.t_min_s,
                sim.completion_s.p99 / b.t_min_s,
                sim.completion_s.max / b.t_min_s,
                sim.origin_egress_blobs
            );
            let _ = writeln!(
                s,
                "measured/simulated: p50 {:.2}, max {:.2}",
                sim.measured_over_simulated_p50, sim.measured_over_simulated_max
            );
        }
        if let Some(x) = self.speedup {
            let _ = writeln!(s, "speed-up over plain HTTP (max completion): {x:.1}×");
        }
        if let Some(u) = &self.upstream {
            let _ = writeln!(
                s,
                "upstream egress: {} bytes = {:.3}×F (GETs of the blob in its access log)",
                u.served_bytes, u.served_blobs
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<10} {:>8} {:>10} {:>10} {:>5} {:>8}",
            "agent", "secs", "from agents", "from origins", "bad", "verified"
        );
        for h in &self.kraken.hosts {
            let _ = writeln!(
                s,
                "{:<10} {:>8} {:>10.1}M {:>10.1}M {:>5} {:>8}",
                h.name,
                h.secs.map_or("-".into(), |t| format!("{t:.2}")),
                h.bytes_from_agents as f64 / (1 << 20) as f64,
                h.bytes_from_origins as f64 / (1 << 20) as f64,
                h.bad_pieces,
                h.verified
            );
        }
        for n in &self.fault_notes {
            let _ = writeln!(s, "fault: {n}");
        }
        let t = &self.targets;
        let yn = |b: bool| if b { "yes" } else { "NO" };
        let _ = write!(
            s,
            "targets: max ≤ 1.3·T_min {}; origin egress ≤ 2×F {}; ≥5× baseline {}; simnet within 15% {}",
            yn(t.max_within_1_3_t_min),
            yn(t.origin_egress_within_2x),
            t.speedup_at_least_5x.map_or("-", yn),
            t.simnet_within_15pct.map_or("-", yn),
        );
        if let Some(ok) = t.upstream_egress_within_1_1x {
            let _ = write!(s, "; upstream egress ≤ 1.1×F {}", yn(ok));
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_takes_the_largest_term() {
        // 1 origin + 10 agents at 12.5 MB/s, 125 MB: the origin term dominates.
        let b = Bound::compute(125e6, 12.5e6, 12.5e6, 10, 125e6);
        assert!((b.t_min_s - 10.0).abs() < 1e-9);
        assert!((b.aggregate_term_s - 125e7 / 137.5e6).abs() < 1e-9);
    }

    #[test]
    fn table_names_the_discovery_mode() {
        let bound = Bound::compute(125e6, 12.5e6, 12.5e6, 10, 125e6);
        let t_min = bound.t_min_s;
        let mut report = RunReport {
            setup: Setup {
                agents: 10,
                origins: 1,
                rate_mbit: Some(100.0),
                blob_bytes: 125_000_000,
                piece_length: None,
                fault: None,
                discovery: Some("dht".into()),
            },
            bound,
            kraken: PhaseReport::summarize(Vec::new(), t_min, 125_000_000, 0, 0.0),
            baseline: None,
            speedup: None,
            simnet: None,
            upstream: None,
            fault_notes: Vec::new(),
            targets: Targets::default(),
        };
        assert!(
            report.table().contains(", discovery dht\n"),
            "{}",
            report.table()
        );
        report.setup.discovery = None;
        assert!(report.table().contains(", discovery tracker (default)\n"));
        // Reports written before the flag read back as "not set".
        let mut json = serde_json::to_value(&report).unwrap();
        json["setup"].as_object_mut().unwrap().remove("discovery");
        let back: RunReport = serde_json::from_value(json).unwrap();
        assert_eq!(back.setup.discovery, None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let d = Dist::of((1..=10).map(f64::from).collect());
        assert_eq!((d.p50, d.p99, d.max), (5.0, 10.0, 10.0));
        assert_eq!(Dist::of(vec![]).n, 0);
    }
}
