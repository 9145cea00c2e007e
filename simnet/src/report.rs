//! Results: completion-time distribution, link use, origin egress, bytes by kind, each
//! compared with the Kumar & Ross lower bound; as JSON, a readable summary, or an SVG CDF.
//!
//! **The bound.** For one file of `F` bytes, a server (here: all origins together) of
//! upload `u_s`, and `N` downloaders with uploads `u_i` and downloads `d_i`, no schedule
//! finishes every downloader before
//!
//! ```text
//! T_min = max(F / u_s, F / d_min, N·F / (u_s + Σ u_i))
//! ```
//!
//! (Kumar & Ross, "Peer-assisted file distribution: the minimum distribution time", 2006).
//! `u_s` counts every origin alive at the start; `Σ u_i` counts honest agents only (a
//! corrupt agent's uploads are worthless); `N` and `d_min` count every agent. The bound
//! assumes everyone starts at time 0; with staggered arrivals, per-agent times (from the
//! agent's own arrival) are still compared with it, which is only indicative.

use serde::{Deserialize, Serialize};

use crate::net::{NANOS_PER_SEC, Nanos};
use crate::scenario::Scenario;
use crate::sim::{Counters, HostRecord};
use kraken_transport::swarm::PeerKind;

/// The Kumar & Ross lower bound and its three terms, seconds.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Bound {
    /// `max` of the three terms.
    pub t_min_s: f64,
    /// `F / u_s`: the origins must send one copy.
    pub origin_term_s: f64,
    /// `F / d_min`: the slowest downlink must take one copy.
    pub download_term_s: f64,
    /// `N·F / (u_s + Σu_i)`: all uploads together must move N copies.
    pub aggregate_term_s: f64,
}

impl Bound {
    /// The bound for a file of `f` bytes (capacities in bytes/s).
    pub fn compute(f: f64, u_s: f64, d_min: f64, n: usize, sum_u: f64) -> Bound {
        let origin_term_s = f / u_s;
        let download_term_s = f / d_min;
        let aggregate_term_s = n as f64 * f / (u_s + sum_u);
        Bound {
            t_min_s: origin_term_s.max(download_term_s).max(aggregate_term_s),
            origin_term_s,
            download_term_s,
            aggregate_term_s,
        }
    }
}

/// Summary of a distribution.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    /// How many values.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Dist {
    /// Nearest-rank percentiles of `values` (sorted here).
    pub fn of(mut values: Vec<f64>) -> Dist {
        if values.is_empty() {
            return Dist::default();
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let at = |p: f64| values[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Dist {
            n,
            min: values[0],
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: values[n - 1],
            mean: values.iter().sum::<f64>() / n as f64,
        }
    }

    /// Each figure divided by `by` (`n` kept).
    pub fn scaled(&self, by: f64) -> Dist {
        Dist {
            n: self.n,
            min: self.min / by,
            p50: self.p50 / by,
            p90: self.p90 / by,
            p99: self.p99 / by,
            max: self.max / by,
            mean: self.mean / by,
        }
    }
}

/// Bytes moved, by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Bytes {
    /// Sent by origins (finished transfers).
    pub uploaded_by_origins: u64,
    /// Sent by agents (finished transfers).
    pub uploaded_by_agents: u64,
    /// Stored by receivers, sent by origins.
    pub useful_from_origins: u64,
    /// Stored by receivers, sent by agents.
    pub useful_from_agents: u64,
    /// Delivered but already held (endgame duplicates).
    pub duplicate: u64,
    /// Delivered corrupt.
    pub corrupt: u64,
    /// Cut off mid-transfer or delivered after the session closed.
    pub lost: u64,
}

/// One origin's part.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OriginReport {
    /// Which origin.
    pub index: usize,
    /// Bytes it sent.
    pub bytes_up: u64,
    /// The same, in copies of the blob.
    pub egress_blobs: f64,
    /// When its last upload finished, seconds.
    pub last_upload_end_s: Option<f64>,
    /// When it died, seconds.
    pub died_s: Option<f64>,
}

/// Happenings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventCounts {
    /// Events handled by the simulator.
    pub events: u64,
    /// Handouts served by the tracker.
    pub handouts: u64,
    /// Announces lost to tracker outages.
    pub failed_announces: u64,
    /// DHT provider lookups (`discovery = "dht"`).
    pub dht_lookups: u64,
    /// DHT provider records stored.
    pub dht_provides: u64,
    /// Requests that timed out.
    pub request_timeouts: u64,
    /// Peers blacklisted.
    pub blacklistings: u64,
    /// Sessions opened.
    pub connections: u64,
    /// Sessions closed by a swarm.
    pub disconnects: u64,
    /// Of which refused at once by the target (connection limit).
    pub refused: u64,
}

/// Everything a run produced. Deterministic: no wall-clock figures in here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// How agents found peers: `"tracker"` or `"dht"`.
    pub discovery: &'static str,
    /// The seed of this run.
    pub seed: u64,
    /// Agents in the scenario.
    pub agents: usize,
    /// Origins in the scenario.
    pub origins: usize,
    /// Blob length.
    pub blob_bytes: u64,
    /// Piece length.
    pub piece_length: u32,
    /// Honest agents that completed.
    pub completed: usize,
    /// Honest agents alive and unfinished when the run stopped.
    pub unfinished: usize,
    /// Agents that died (churn).
    pub died: usize,
    /// Virtual time when the run stopped, seconds.
    pub virtual_time_s: f64,
    /// The Kumar & Ross bound.
    pub bound: Bound,
    /// Completion time of each honest agent from its arrival, seconds.
    pub completion_s: Dist,
    /// The same divided by `T_min`.
    pub completion_over_bound: Dist,
    /// Each honest agent's mean download rate (`F / completion time`) over its downlink
    /// capacity.
    pub download_fraction_of_capacity: Dist,
    /// The same rate over the bound's rate `F / T_min`: 1.0 means as fast as possible.
    pub download_rate_over_bound: Dist,
    /// Bytes the origins sent.
    pub origin_egress_bytes: u64,
    /// The same in copies of the blob (the bound is 1.0).
    pub origin_egress_blobs: f64,
    /// Bytes by kind.
    pub bytes: Bytes,
    /// Per origin.
    pub per_origin: Vec<OriginReport>,
    /// Counts of things that happened.
    pub counts: EventCounts,
    /// Completion CDF: `[seconds, fraction of honest agents done]` at every 1%.
    pub cdf: Vec<[f64; 2]>,
}

fn s(t: Nanos) -> f64 {
    t as f64 / NANOS_PER_SEC
}

/// Assembles the report of a finished run.
pub fn build(
    scenario: &Scenario,
    seed: u64,
    end: Nanos,
    hosts: &[HostRecord],
    c: &Counters,
) -> Report {
    let f = scenario.blob.size_bytes as f64;
    let agents: Vec<&HostRecord> = hosts.iter().filter(|h| h.kind == PeerKind::Agent).collect();
    let origins: Vec<&HostRecord> = hosts
        .iter()
        .filter(|h| h.kind == PeerKind::Origin)
        .collect();
    let u_s: f64 = origins.iter().map(|h| h.upload_capacity).sum();
    let d_min = agents
        .iter()
        .map(|h| h.download_capacity)
        .fold(f64::INFINITY, f64::min);
    let sum_u: f64 = agents
        .iter()
        .filter(|h| !h.corrupt)
        .map(|h| h.upload_capacity)
        .sum();
    let bound = Bound::compute(f, u_s, d_min, agents.len(), sum_u);

    let honest: Vec<&&HostRecord> = agents.iter().filter(|h| !h.corrupt).collect();
    let mut times = Vec::new();
    let mut fractions = Vec::new();
    for h in &honest {
        if let (Some(a), Some(done)) = (h.arrived, h.completed) {
            let t = s(done - a);
            times.push(t);
            if t > 0.0 {
                fractions.push(f / t / h.download_capacity);
            }
        }
    }
    let completed = times.len();
    let unfinished = honest
        .iter()
        .filter(|h| h.completed.is_none() && h.died.is_none())
        .count();
    let died = agents.iter().filter(|h| h.died.is_some()).count();
    let completion_s = Dist::of(times.clone());
    let rate_over_bound: Vec<f64> = times
        .iter()
        .filter(|t| **t > 0.0)
        .map(|t| bound.t_min_s / t)
        .collect();
    times.sort_by(f64::total_cmp);
    let cdf = if times.is_empty() {
        Vec::new()
    } else {
        (1..=100)
            .map(|p| {
                let k = ((p as f64 / 100.0) * times.len() as f64).ceil() as usize;
                let k = k.clamp(1, times.len());
                [times[k - 1], k as f64 / honest.len().max(1) as f64]
            })
            .collect()
    };
    let uploaded_by_origins: u64 = origins.iter().map(|h| h.bytes_up).sum();
    let uploaded_by_agents: u64 = agents.iter().map(|h| h.bytes_up).sum();
    Report {
        scenario: scenario.name.clone(),
        discovery: scenario.discovery.as_str(),
        seed,
        agents: agents.len(),
        origins: origins.len(),
        blob_bytes: scenario.blob.size_bytes,
        piece_length: scenario.blob.piece_length,
        completed,
        unfinished,
        died,
        virtual_time_s: s(end),
        completion_over_bound: completion_s.scaled(bound.t_min_s),
        completion_s,
        download_fraction_of_capacity: Dist::of(fractions),
        download_rate_over_bound: Dist::of(rate_over_bound),
        origin_egress_bytes: uploaded_by_origins,
        origin_egress_blobs: uploaded_by_origins as f64 / f,
        bytes: Bytes {
            uploaded_by_origins,
            uploaded_by_agents,
            useful_from_origins: c.useful_from_origins,
            useful_from_agents: c.useful_from_agents,
            duplicate: c.duplicate_bytes,
            corrupt: c.corrupt_bytes,
            lost: c.lost_bytes,
        },
        per_origin: origins
            .iter()
            .enumerate()
            .map(|(i, h)| OriginReport {
                index: i,
                bytes_up: h.bytes_up,
                egress_blobs: h.bytes_up as f64 / f,
                last_upload_end_s: h.last_upload_end.map(s),
                died_s: h.died.map(s),
            })
            .collect(),
        counts: EventCounts {
            events: c.events,
            handouts: c.handouts,
            failed_announces: c.failed_announces,
            dht_lookups: c.dht_lookups,
            dht_provides: c.dht_provides,
            request_timeouts: c.request_timeouts,
            blacklistings: c.blacklistings,
            connections: c.connections,
            disconnects: c.disconnects,
            refused: c.refused,
        },
        cdf,
        bound,
    }
}

impl Report {
    /// Pretty JSON (deterministic for a given scenario and seed).
    pub fn to_json(&self) -> String {
        // Serializing plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A readable summary.
    pub fn summary(&self) -> String {
        let gb = |b: u64| b as f64 / 1e9;
        let c = &self.completion_s;
        let r = &self.completion_over_bound;
        let d = &self.download_fraction_of_capacity;
        let b = &self.bound;
        let mut out = String::new();
        let mut line = |l: String| {
            out.push_str(&l);
            out.push('\n');
        };
        line(format!(
            "scenario {}  seed {}  agents {}  origins {}  blob {:.3} GB in {} pieces of {} B",
            self.scenario,
            self.seed,
            self.agents,
            self.origins,
            gb(self.blob_bytes),
            self.blob_bytes.div_ceil(u64::from(self.piece_length)),
            self.piece_length
        ));
        line(format!(
            "completed {}  unfinished {}  died {}  virtual time {:.3} s",
            self.completed, self.unfinished, self.died, self.virtual_time_s
        ));
        line(format!(
            "T_min {:.3} s  (F/u_s {:.3}  F/d_min {:.3}  N·F/(u_s+Σu) {:.3})",
            b.t_min_s, b.origin_term_s, b.download_term_s, b.aggregate_term_s
        ));
        line(format!(
            "completion s      p50 {:8.3}  p90 {:8.3}  p99 {:8.3}  max {:8.3}",
            c.p50, c.p90, c.p99, c.max
        ));
        line(format!(
            "  / T_min         p50 {:8.3}  p90 {:8.3}  p99 {:8.3}  max {:8.3}",
            r.p50, r.p90, r.p99, r.max
        ));
        line(format!(
            "download rate / capacity  min {:.3}  p50 {:.3}  mean {:.3}  max {:.3}",
            d.min, d.p50, d.mean, d.max
        ));
        line(format!(
            "origin egress {:.3} GB = {:.3} × blob",
            gb(self.origin_egress_bytes),
            self.origin_egress_blobs
        ));
        let by = &self.bytes;
        line(format!(
            "bytes GB: useful from origins {:.3}, from agents {:.3}; duplicate {:.3}, corrupt {:.3}, lost {:.3}",
            gb(by.useful_from_origins),
            gb(by.useful_from_agents),
            gb(by.duplicate),
            gb(by.corrupt),
            gb(by.lost)
        ));
        for o in &self.per_origin {
            line(format!(
                "  origin {}: {:.3} × blob, last upload end {}, died {}",
                o.index,
                o.egress_blobs,
                o.last_upload_end_s
                    .map_or("-".into(), |t| format!("{t:.3} s")),
                o.died_s.map_or("-".into(), |t| format!("{t:.3} s"))
            ));
        }
        let k = &self.counts;
        line(format!(
            "events {}  handouts {}  failed announces {}  timeouts {}  blacklistings {}  sessions {} (closed {}, refused {})",
            k.events,
            k.handouts,
            k.failed_announces,
            k.request_timeouts,
            k.blacklistings,
            k.connections,
            k.disconnects,
            k.refused
        ));
        if self.discovery != "tracker" {
            line(format!(
                "discovery {}  lookups {}  provides {}",
                self.discovery, k.dht_lookups, k.dht_provides
            ));
        }
        out
    }

    /// The completion CDF as a self-contained SVG, with `T_min` marked.
    pub fn svg_cdf(&self) -> String {
        let title = format!(
            "{} — completion CDF, {} agents, seed {}",
            self.scenario, self.agents, self.seed
        );
        svg_cdfs(&title, &[("simnet", &self.cdf)], self.bound.t_min_s)
    }
}

/// Completion CDFs (`[seconds, fraction]` points, in order) as one self-contained SVG,
/// each series in its own colour with a legend, and `T_min` marked.
pub fn svg_cdfs(title: &str, series: &[(&str, &[[f64; 2]])], t_min_s: f64) -> String {
    const COLOURS: [&str; 4] = ["steelblue", "darkorange", "seagreen", "purple"];
    let (w, h, m) = (640.0, 400.0, 50.0);
    let tmax = series
        .iter()
        .filter_map(|(_, cdf)| cdf.last().map(|p| p[0]))
        .fold(t_min_s, f64::max)
        .max(1e-9)
        * 1.05;
    let x = |t: f64| m + t / tmax * (w - 2.0 * m);
    let y = |f: f64| h - m - f * (h - 2.0 * m);
    let title = title.replace('&', "&amp;").replace('<', "&lt;");
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{m}\" y=\"20\">{title}</text>\n\
         <line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{m}\" y1=\"{b}\" x2=\"{m}\" y2=\"{m}\" stroke=\"black\"/>\n",
        b = h - m,
        r = w - m
    );
    for i in 0..=4 {
        let t = tmax * f64::from(i) / 4.0;
        let f = f64::from(i) / 4.0;
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.1}s</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{f:.2}</text>\n",
            x(t),
            h - m + 16.0,
            m - 4.0,
            y(f) + 4.0
        ));
    }
    let tx = x(t_min_s);
    svg.push_str(&format!(
        "<line x1=\"{tx:.2}\" y1=\"{:.2}\" x2=\"{tx:.2}\" y2=\"{m}\" stroke=\"red\" \
         stroke-dasharray=\"4 3\"/>\n<text x=\"{:.2}\" y=\"{:.2}\" fill=\"red\">T_min</text>\n",
        h - m,
        tx + 3.0,
        m + 12.0
    ));
    for (k, (name, cdf)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let mut pts = format!("{:.2},{:.2}", x(0.0), y(0.0));
        for p in cdf.iter() {
            pts.push_str(&format!(" {:.2},{:.2}", x(p[0]), y(p[1])));
        }
        // Bottom right: CDFs rise to the left of it.
        let ly = h - m - 14.0 - 16.0 * (series.len() - 1 - k) as f64;
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{pts}\"/>\n\
             <line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{name}</text>\n",
            w - m - 150.0,
            w - m - 130.0,
            w - m - 125.0,
            ly + 4.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_takes_the_largest_term() {
        // 1 GB, origins 1 GB/s, slowest downlink 0.5 GB/s, 100 agents at 0.1 GB/s up:
        // terms 1 s, 2 s, 100/(1+10) = 9.09 s.
        let b = Bound::compute(1e9, 1e9, 0.5e9, 100, 100.0 * 0.1e9);
        assert!((b.origin_term_s - 1.0).abs() < 1e-12);
        assert!((b.download_term_s - 2.0).abs() < 1e-12);
        assert!((b.aggregate_term_s - 100.0 / 11.0).abs() < 1e-12);
        assert_eq!(b.t_min_s, b.aggregate_term_s);
        // One agent: the slower of origin and downlink.
        let one = Bound::compute(1e9, 1e9, 0.5e9, 1, 0.5e9);
        assert!((one.t_min_s - 2.0).abs() < 1e-12);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let d = Dist::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (d.p50, d.p90, d.p99, d.max, d.min),
            (50.0, 90.0, 99.0, 100.0, 1.0)
        );
        assert_eq!(Dist::of(vec![]).n, 0);
    }
}
