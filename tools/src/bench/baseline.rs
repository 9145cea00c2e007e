//! The baseline a user would run without kraken: one plain HTTP server
//! (`python3 -m http.server`) on host 1 serving the blob file, and every agent host
//! fetching it at once with `curl`.
//!
//! Each client runs as `sh -c 'curl …; cat /proc/$$/stat'`, so the shell's reaped-children
//! CPU fields give curl's CPU time; the server's comes from its own `/proc/<pid>/stat`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::netns::Testnet;
use super::procs::{cpu_secs_of, parse_stat_cpu};
use super::report::HostResult;

/// Port of the HTTP server.
pub const HTTP_PORT: u16 = 8080;

/// What the baseline measured.
#[derive(Debug)]
pub struct BaselineRun {
    /// Per client host.
    pub hosts: Vec<HostResult>,
    /// Bytes the server's host sent.
    pub egress: u64,
    /// CPU seconds of the server and every client.
    pub cpu_s: f64,
}

/// Serves `blob_dir` from host `server` and fetches `name` on every host in `clients`
/// into `out_dir/<host>`; each copy is checked with `verify` and then removed.
pub fn run(
    net: &Testnet,
    server: usize,
    clients: &[usize],
    blob_dir: &Path,
    name: &str,
    out_dir: &Path,
    verify: &dyn Fn(&Path) -> bool,
) -> anyhow::Result<BaselineRun> {
    std::fs::create_dir_all(out_dir)?;
    let addr = net.host_addr(server);
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.host_ns(server),
            "python3",
            "-m",
            "http.server",
        ])
        .arg(HTTP_PORT.to_string())
        .args(["--bind", &addr.to_string(), "--directory"])
        .arg(blob_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start python3 -m http.server")?;
    let result = (|| {
        let url = format!("http://{addr}:{HTTP_PORT}/{name}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &net.ctl_ns(),
                    "curl",
                    "-sfI",
                    "--max-time",
                    "1",
                ])
                .arg(&url)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("the HTTP server on {addr} did not answer");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let tx0 = net.tx_bytes(server)?;
        let cpu0 = cpu_secs_of(child.id()).unwrap_or(0.0);
        let mut procs = Vec::new();
        for &h in clients {
            let out = out_dir.join(format!("h{h}"));
            let script = format!(
                "curl -sS -o '{}' -w '%{{time_total}}\\n' '{url}'; cat /proc/$$/stat",
                out.display()
            );
            let p = Command::new("ip")
                .args(["netns", "exec", &net.host_ns(h), "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("cannot start curl")?;
            procs.push((h, out, p));
        }
        let mut hosts = Vec::new();
        let mut cpu = 0.0;
        for (h, out, p) in procs {
            let o = p.wait_with_output()?;
            let text = String::from_utf8_lossy(&o.stdout);
            let mut lines = text.lines();
            let secs = lines.next().and_then(|l| l.trim().parse::<f64>().ok());
            cpu += lines
                .next()
                .and_then(|l| parse_stat_cpu(l, true))
                .unwrap_or(0.0);
            let verified = verify(&out);
            let _ = std::fs::remove_file(&out);
            let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
            hosts.push(HostResult {
                name: format!("h{h}"),
                secs,
                verified,
                bytes_from_agents: 0,
                bytes_from_origins: 0,
                bad_pieces: 0,
                errors: if err.is_empty() { vec![] } else { vec![err] },
            });
        }
        cpu += cpu_secs_of(child.id()).unwrap_or(0.0) - cpu0;
        let egress = net.tx_bytes(server)?.saturating_sub(tx0);
        Ok(BaselineRun {
            hosts,
            egress,
            cpu_s: cpu,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
