//! The registry benchmark's figures: every measurement (one system, one step, one round),
//! and per step each system's median and range over the rounds and the ratio kraken ÷
//! docker-registry taken round by round (time ratios: below 1, kraken is faster), the
//! form the issue states its targets in. Printed as a table or as JSON.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A row of the report: one step, or one half of the image step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Row {
    /// `POST` + `PUT ?digest=` with the whole blob (kraken: the proxy).
    Push,
    /// `POST` + `PATCH`es with `Content-Range` + `PUT ?digest=` (kraken: the proxy).
    PushChunked,
    /// First `GET` (kraken: agent 1, the blob only on origins).
    ColdPull,
    /// Agent 1's own download of the blob during `cold-pull` (the agent's pull time, from
    /// its metainfo lookup to its commit); the ratio is agent 1's `GET` ÷ this: what the
    /// registry gateway adds to the exchange.
    Exchange,
    /// `GET` on agent 2 right after (compared with the registry's cold `GET`).
    SecondAgent,
    /// `GET` again, both warmed by one untimed `GET` (kraken: agent 1).
    WarmPull,
    /// The same warm `GET` from the bench's bare `sendfile` server (in the `kraken` sample),
    /// against the registry's `warm-pull`: how far zero-copy alone gets on this machine.
    SendfileFloor,
    /// Ranged `GET` from the middle (kraken: agent 1, which holds the blob).
    Range,
    /// `skopeo copy` of the image to the registry (kraken: the proxy).
    ImagePush,
    /// `skopeo copy` of the image from the registry (kraken: agent 1) to a new layout.
    ImagePull,
}

impl Row {
    /// Every row, in the order they are measured and printed.
    pub const ALL: [Row; 10] = [
        Row::Push,
        Row::PushChunked,
        Row::ColdPull,
        Row::Exchange,
        Row::SecondAgent,
        Row::WarmPull,
        Row::SendfileFloor,
        Row::Range,
        Row::ImagePush,
        Row::ImagePull,
    ];

    /// Its name in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Row::Push => "push",
            Row::PushChunked => "push-chunked",
            Row::ColdPull => "cold-pull",
            Row::Exchange => "exchange",
            Row::SecondAgent => "second-agent",
            Row::WarmPull => "warm-pull",
            Row::SendfileFloor => "sendfile-floor",
            Row::Range => "range",
            Row::ImagePush => "image-push",
            Row::ImagePull => "image-pull",
        }
    }
}

/// One system's figures in one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds: the sum of curl's `time_total` over the step's requests (skopeo: its run).
    pub secs: f64,
    /// Seconds to the first body byte of a download.
    pub ttfb_s: Option<f64>,
    /// CPU seconds of the system's server process (docker-registry, or `kraken dev`).
    pub server_cpu_s: f64,
    /// CPU seconds of the client processes (curl, skopeo).
    pub client_cpu_s: f64,
    /// CPU seconds the other system's server used meanwhile (it should be idle).
    pub idle_cpu_s: f64,
}

/// One step of one round: both systems (the registry's absent for `second-agent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Which step.
    pub row: Row,
    /// Round, from 1.
    pub round: usize,
    /// Kraken was measured first this round.
    pub kraken_first: bool,
    /// docker-registry.
    pub registry: Option<Sample>,
    /// kraken.
    pub kraken: Sample,
    /// kraken's time ÷ the registry's (for `second-agent`, ÷ the registry's cold `GET`;
    /// for `exchange`, agent 1's cold `GET` ÷ its download; for `sendfile-floor`, the bare
    /// server's ÷ the registry's warm `GET`).
    pub ratio: Option<f64>,
}

/// Median and range of some values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// How many.
    pub n: usize,
    /// The median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            n,
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// `median [min–max]`, or the value alone when there is one.
    fn show(&self, digits: usize) -> String {
        if self.n == 1 {
            format!("{:.digits$}", self.median)
        } else {
            format!(
                "{:.digits$} [{:.digits$}–{:.digits$}]",
                self.median, self.min, self.max
            )
        }
    }
}

/// A step's figures over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowSummary {
    /// Which step.
    pub row: Row,
    /// docker-registry's seconds.
    pub registry_s: Option<Spread>,
    /// kraken's seconds.
    pub kraken_s: Option<Spread>,
    /// kraken ÷ registry, round by round.
    pub ratio: Option<Spread>,
    /// docker-registry's CPU seconds.
    pub registry_cpu_s: Option<Spread>,
    /// `kraken dev`'s CPU seconds.
    pub kraken_cpu_s: Option<Spread>,
    /// The client's CPU seconds against docker-registry.
    pub registry_client_cpu_s: Option<Spread>,
    /// The client's CPU seconds against kraken.
    pub kraken_client_cpu_s: Option<Spread>,
    /// docker-registry's time to first byte (downloads).
    pub registry_ttfb_s: Option<Spread>,
    /// kraken's time to first byte (downloads).
    pub kraken_ttfb_s: Option<Spread>,
}

impl RowSummary {
    fn of(row: Row, ms: &[&Measurement]) -> RowSummary {
        let reg = || ms.iter().filter_map(|m| m.registry);
        let kr = || ms.iter().map(|m| m.kraken);
        RowSummary {
            row,
            registry_s: Spread::of(reg().map(|s| s.secs)),
            kraken_s: Spread::of(kr().map(|s| s.secs)),
            ratio: Spread::of(ms.iter().filter_map(|m| m.ratio)),
            registry_cpu_s: Spread::of(reg().map(|s| s.server_cpu_s)),
            kraken_cpu_s: Spread::of(kr().map(|s| s.server_cpu_s)),
            registry_client_cpu_s: Spread::of(reg().map(|s| s.client_cpu_s)),
            kraken_client_cpu_s: Spread::of(kr().map(|s| s.client_cpu_s)),
            registry_ttfb_s: Spread::of(reg().filter_map(|s| s.ttfb_s)),
            kraken_ttfb_s: Spread::of(kr().filter_map(|s| s.ttfb_s)),
        }
    }
}

/// What was run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchSetup {
    /// Bytes of each blob.
    pub blob_bytes: u64,
    /// Rounds.
    pub rounds: usize,
    /// `PATCH`es of the chunked push.
    pub chunks: u64,
    /// Bytes of the ranged `GET`.
    pub range_bytes: u64,
    /// Layers of the image.
    pub layers: usize,
    /// Bytes of each layer before its gzip framing.
    pub layer_bytes: u64,
    /// docker-registry's version.
    pub registry_version: String,
    /// The `kraken` binary.
    pub kraken: String,
    /// Page caches were dropped where the steps say (false: not allowed here).
    pub caches_dropped: bool,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryReport {
    /// What was run.
    pub setup: BenchSetup,
    /// Per step, over the rounds.
    pub summary: Vec<RowSummary>,
    /// Every measurement.
    pub measurements: Vec<Measurement>,
    /// kraken's `warm-pull` ÷ `sendfile-floor`, round by round: what the agent adds to the
    /// least a server can do.
    #[serde(default)]
    pub warm_over_floor: Option<Spread>,
    /// Warnings: caches not dropped, a cluster that did not settle in time.
    pub notes: Vec<String>,
}

impl RegistryReport {
    /// Summarizes the measurements.
    pub fn new(
        setup: BenchSetup,
        measurements: Vec<Measurement>,
        notes: Vec<String>,
    ) -> RegistryReport {
        let summary = Row::ALL
            .iter()
            .filter_map(|&row| {
                let ms: Vec<&Measurement> = measurements.iter().filter(|m| m.row == row).collect();
                (!ms.is_empty()).then(|| RowSummary::of(row, &ms))
            })
            .collect();
        let warm_over_floor = Spread::of(measurements.iter().filter_map(|floor| {
            let warm = measurements
                .iter()
                .find(|m| m.row == Row::WarmPull && m.round == floor.round)?;
            (floor.row == Row::SendfileFloor && floor.kraken.secs > 0.0)
                .then(|| warm.kraken.secs / floor.kraken.secs)
        }));
        RegistryReport {
            setup,
            summary,
            measurements,
            warm_over_floor,
            notes,
        }
    }

    /// The table: per step, each system's seconds, the ratio, CPU seconds.
    pub fn table(&self) -> String {
        let s = &self.setup;
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "kraken-bench registry: {:.0} MiB blobs, {} round(s); chunked push in {} PATCHes; \
             range {:.0} MiB; image {} × {:.0} MiB layers",
            mib(s.blob_bytes),
            s.rounds,
            s.chunks,
            mib(s.range_bytes),
            s.layers,
            mib(s.layer_bytes)
        );
        let _ = writeln!(
            out,
            "docker-registry {} vs kraken dev --agents 2 ({}); curl/skopeo as client; \
             page caches {}",
            s.registry_version,
            s.kraken,
            if s.caches_dropped {
                "dropped between steps"
            } else {
                "NOT dropped"
            }
        );
        let _ = writeln!(
            out,
            "seconds: median [min–max] over rounds; ratio: kraken ÷ registry per round \
             (< 1: kraken faster); CPU s: median"
        );
        let _ = writeln!(
            out,
            "\n{:<14} {:<22} {:<22} {:<22} {:>9} {:>9} {:>13}",
            "step",
            "docker-registry s",
            "kraken s",
            "kraken ÷ registry",
            "cpu reg",
            "cpu krkn",
            "cpu client"
        );
        let show = |sp: &Option<Spread>, d: usize| sp.map_or("—".to_string(), |x| x.show(d));
        let med =
            |sp: &Option<Spread>| sp.map_or("—".to_string(), |x| format!("{:.2}", x.median));
        for r in &self.summary {
            let registry = match r.row {
                Row::SecondAgent => "(cold-pull's)".to_string(),
                Row::Exchange => "(GET ÷ exchange)".to_string(),
                _ => show(&r.registry_s, 2),
            };
            let client = format!(
                "{} | {}",
                med(&r.registry_client_cpu_s),
                med(&r.kraken_client_cpu_s)
            );
            let _ = writeln!(
                out,
                "{:<14} {:<22} {:<22} {:<22} {:>9} {:>9} {:>13}",
                r.row.name(),
                registry,
                show(&r.kraken_s, 2),
                show(&r.ratio, 2),
                med(&r.registry_cpu_s),
                med(&r.kraken_cpu_s),
                client
            );
        }
        let ttfb: Vec<String> = self
            .summary
            .iter()
            .filter(|r| r.kraken_ttfb_s.is_some())
            .map(|r| {
                format!(
                    "{} {} | {}",
                    r.row.name(),
                    med(&r.registry_ttfb_s),
                    med(&r.kraken_ttfb_s)
                )
            })
            .collect();
        if let Some(w) = &self.warm_over_floor {
            let _ = writeln!(
                out,
                "\nwarm-pull ÷ sendfile-floor (kraken's warm GET over the bare sendfile \
                 server's): {}",
                w.show(2)
            );
        }
        if !ttfb.is_empty() {
            let _ = writeln!(
                out,
                "\nfirst byte, s (registry | kraken): {}",
                ttfb.join("; ")
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_take_the_true_median() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0]).unwrap().median, 2.5);
        assert!(Spread::of([]).is_none());
        assert_eq!(Spread::of([1.5]).unwrap().show(2), "1.50");
        assert_eq!(Spread::of([1.0, 2.0]).unwrap().show(1), "1.5 [1.0–2.0]");
    }

    fn setup() -> BenchSetup {
        BenchSetup {
            blob_bytes: 1 << 30,
            rounds: 2,
            chunks: 5,
            range_bytes: 100 << 20,
            layers: 10,
            layer_bytes: 100 << 20,
            registry_version: "2.8.2".into(),
            kraken: "kraken".into(),
            caches_dropped: true,
        }
    }

    fn sample(secs: f64) -> Sample {
        Sample {
            secs,
            ttfb_s: Some(0.01),
            server_cpu_s: 1.0,
            client_cpu_s: 0.5,
            idle_cpu_s: 0.0,
        }
    }

    #[test]
    fn the_summary_pairs_rounds_and_prints_every_step() {
        let m = |row, round, reg: Option<f64>, kr: f64| Measurement {
            row,
            round,
            kraken_first: round % 2 == 0,
            registry: reg.map(sample),
            kraken: sample(kr),
            ratio: Some(kr / reg.unwrap_or(2.0)),
        };
        let report = RegistryReport::new(
            setup(),
            vec![
                m(Row::Push, 1, Some(4.0), 8.0),
                m(Row::Push, 2, Some(2.0), 3.0),
                m(Row::SecondAgent, 1, None, 3.0),
            ],
            vec!["a note".into()],
        );
        assert_eq!(report.summary.len(), 2);
        let push = &report.summary[0];
        assert_eq!(push.ratio.unwrap().median, 1.75);
        assert_eq!(push.registry_s.unwrap().median, 3.0);
        assert!(report.summary[1].registry_s.is_none());
        let table = report.table();
        assert!(table.contains("push "), "{table}");
        assert!(table.contains("1.75 [1.50–2.00]"), "{table}");
        assert!(table.contains("second-agent   (cold-pull's)"), "{table}");
        assert!(table.contains("note: a note"), "{table}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["summary"][1]["row"], "second-agent");
        assert!(report.warm_over_floor.is_none());
    }

    #[test]
    fn the_warm_pull_is_set_against_the_floor_of_its_own_round() {
        let m = |row, round, kr: f64| Measurement {
            row,
            round,
            kraken_first: false,
            registry: Some(sample(0.6)),
            kraken: sample(kr),
            ratio: Some(kr / 0.6),
        };
        let measurements = vec![
            m(Row::WarmPull, 1, 0.4),
            m(Row::SendfileFloor, 1, 0.5),
            m(Row::WarmPull, 2, 0.6),
            m(Row::SendfileFloor, 2, 0.4),
        ];
        let report = RegistryReport::new(setup(), measurements, vec![]);
        let w = report.warm_over_floor.unwrap();
        assert_eq!(w.n, 2);
        assert!(
            (w.min - 0.8).abs() < 1e-9 && (w.max - 1.5).abs() < 1e-9,
            "{w:?}"
        );
        let table = report.table();
        assert!(table.contains("sendfile-floor"), "{table}");
        assert!(table.contains("warm-pull ÷ sendfile-floor"), "{table}");
        // Reports written before the floor existed still read.
        let mut json = serde_json::to_value(&report).unwrap();
        json.as_object_mut().unwrap().remove("warm_over_floor");
        let back: RegistryReport = serde_json::from_value(json).unwrap();
        assert!(back.warm_over_floor.is_none());
    }
}
