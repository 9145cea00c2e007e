//! The shaped test network: N hosts as network namespaces on one bridge.
//!
//! [`Testnet::up`] makes namespaces `<prefix>-h1..hN` with addresses `<subnet>.1..N/24` on
//! a bridge living in its own namespace `<prefix>-sw`, plus an unshaped control host
//! `<prefix>-ctl` at `<subnet>.250` from which the harness drives the cluster. Nothing is
//! added to the root namespace: every byte stays inside namespaces made here.
//!
//! Each host is limited to the configured rate in both directions with `tc tbf` (this
//! kernel has no `netem`): upload on the host's `eth0`, download on its switch port (the
//! port's egress toward the host). [`Testnet`] tears everything down on drop; [`down_all`]
//! removes whatever a crashed run left behind (the `kraken-bench down` subcommand).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// A link rate in bits per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Bits per second.
    pub bits_per_sec: u64,
}

impl Rate {
    /// Bytes per second.
    pub fn bytes_per_sec(self) -> f64 {
        self.bits_per_sec as f64 / 8.0
    }

    /// The `tc` spelling, e.g. `100mbit`.
    pub fn tc(self) -> String {
        format!("{}kbit", self.bits_per_sec / 1000)
    }

    /// Megabits per second.
    pub fn mbit(self) -> f64 {
        self.bits_per_sec as f64 / 1e6
    }
}

/// Why a rate does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// No `gbit`, `mbit` or `kbit` unit.
    #[error("bad rate {0:?} (want e.g. 100mbit, 800kbit, 1gbit)")]
    NoUnit(String),
    /// The number before the unit is not one.
    #[error("bad rate {rate:?}: {number:?} is not a number")]
    NotANumber {
        /// The rate given.
        rate: String,
        /// Its number part.
        number: String,
    },
    /// Zero, negative, or above 100 Gbit/s.
    #[error("rate {0} is outside (0, 100gbit]")]
    OutOfRange(String),
}

impl std::str::FromStr for Rate {
    type Err = RateError;

    /// `100mbit`, `50Mbit`, `800kbit`, `1gbit` (decimal units, as `tc` reads them).
    fn from_str(s: &str) -> Result<Rate, RateError> {
        let lower = s.trim().to_ascii_lowercase();
        let (num, mult) = if let Some(n) = lower.strip_suffix("gbit") {
            (n, 1_000_000_000.0)
        } else if let Some(n) = lower.strip_suffix("mbit") {
            (n, 1_000_000.0)
        } else if let Some(n) = lower.strip_suffix("kbit") {
            (n, 1_000.0)
        } else {
            return Err(RateError::NoUnit(s.to_string()));
        };
        let n: f64 = num.parse().map_err(|_| RateError::NotANumber {
            rate: s.to_string(),
            number: num.to_string(),
        })?;
        if !(n > 0.0 && n * mult <= 100e9) {
            return Err(RateError::OutOfRange(s.to_string()));
        }
        Ok(Rate {
            bits_per_sec: (n * mult) as u64,
        })
    }
}

/// What network to build.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Namespace name prefix, e.g. `kb`.
    pub prefix: String,
    /// First three octets of the /24, e.g. `[10, 78, 0]`.
    pub subnet: [u8; 3],
    /// Number of shaped hosts (at most 200).
    pub hosts: usize,
    /// Rate limit of every host, both ways; `None` leaves links unshaped.
    pub rate: Option<Rate>,
}

impl Default for NetConfig {
    /// `kb-` namespaces on 10.78.0.0/24, 3 hosts at 100 Mbit/s: the smoke test's network.
    fn default() -> Self {
        NetConfig {
            prefix: "kb".into(),
            subnet: [10, 78, 0],
            hosts: 3,
            rate: Some(Rate {
                bits_per_sec: 100_000_000,
            }),
        }
    }
}

impl NetConfig {
    /// Rejects nonsense.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.hosts == 0 || self.hosts > 200 {
            bail!("hosts must be 1..=200, not {}", self.hosts);
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 6
            || !self.prefix.chars().all(|c| c.is_ascii_lowercase())
        {
            bail!(
                "prefix must be 1-6 lowercase letters, not {:?}",
                self.prefix
            );
        }
        Ok(())
    }
}

/// Runs `ip`/`tc` style commands, failing with their stderr.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A built network; removed on drop.
#[derive(Debug)]
pub struct Testnet {
    config: NetConfig,
    up: bool,
}

/// Address of the control host (last octet).
pub const CTL_HOST: u8 = 250;

impl Testnet {
    /// Builds the network. Anything left by an earlier run with the same prefix is removed
    /// first; a failure half-way removes what was made.
    pub fn up(config: NetConfig) -> anyhow::Result<Testnet> {
        config.validate()?;
        down_all(&config.prefix)?;
        let mut net = Testnet { config, up: true };
        net.build()?;
        Ok(net)
    }

    /// The network `config` would build, not built: names and addresses only, for tests
    /// of what is written about it.
    #[cfg(test)]
    pub(crate) fn planned(config: NetConfig) -> Testnet {
        Testnet { config, up: false }
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let sw = self.switch_ns();
        sh("ip", &["netns", "add", &sw])?;
        sh("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        sh("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        sh("ip", &["-n", &sw, "link", "set", "lo", "up"])?;
        for i in 1..=self.config.hosts {
            let rate = self.config.rate;
            self.attach(&self.host_ns(i), self.host_addr(i), &format!("p{i}"), rate)?;
        }
        self.attach(&self.ctl_ns(), self.ctl_addr(), "ctl", None)?;
        Ok(())
    }

    /// One host: a namespace, a veth pair into the bridge, and the shaping.
    fn attach(
        &self,
        ns: &str,
        addr: Ipv4Addr,
        port: &str,
        rate: Option<Rate>,
    ) -> anyhow::Result<()> {
        let sw = self.switch_ns();
        let p = &self.config.prefix;
        // Created in the root namespace under unique names, moved out at once.
        let host_if = format!("{p}{port}h");
        let sw_if = format!("{p}{port}s");
        sh("ip", &["netns", "add", ns])?;
        sh(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &sw_if,
            ],
        )?;
        sh("ip", &["link", "set", &host_if, "netns", ns])?;
        sh("ip", &["link", "set", &sw_if, "netns", &sw])?;
        sh("ip", &["-n", ns, "link", "set", &host_if, "name", "eth0"])?;
        let cidr = format!("{addr}/24");
        sh("ip", &["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        sh("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        sh("ip", &["-n", &sw, "link", "set", &sw_if, "master", "br0"])?;
        sh("ip", &["-n", &sw, "link", "set", &sw_if, "up"])?;
        if let Some(rate) = rate {
            let r = rate.tc();
            let tbf = [
                "root", "tbf", "rate", &r, "burst", "64kb", "latency", "50ms",
            ];
            let mut up = vec!["netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0"];
            up.extend(tbf);
            sh("ip", &up)?;
            let mut down = vec!["netns", "exec", &sw, "tc", "qdisc", "add", "dev", &sw_if];
            down.extend(tbf);
            sh("ip", &down)?;
        }
        Ok(())
    }

    /// The config it was built with.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Namespace of host `i` (1-based).
    pub fn host_ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.config.prefix)
    }

    /// Address of host `i` (1-based).
    pub fn host_addr(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.config.subnet;
        Ipv4Addr::new(a, b, c, u8::try_from(i).unwrap_or(0))
    }

    /// Namespace of the unshaped control host.
    pub fn ctl_ns(&self) -> String {
        format!("{}-ctl", self.config.prefix)
    }

    /// Address of the control host.
    pub fn ctl_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.config.subnet;
        Ipv4Addr::new(a, b, c, CTL_HOST)
    }

    fn switch_ns(&self) -> String {
        format!("{}-sw", self.config.prefix)
    }

    /// Bytes host `i` has sent on its link so far.
    pub fn tx_bytes(&self, i: usize) -> anyhow::Result<u64> {
        let ns = self.host_ns(i);
        let text = sh(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "cat",
                "/sys/class/net/eth0/statistics/tx_bytes",
            ],
        )?;
        text.trim()
            .parse()
            .with_context(|| format!("bad tx_bytes {text:?} in {ns}"))
    }

    /// Removes the network now (also done on drop).
    pub fn down(&mut self) -> anyhow::Result<()> {
        if self.up {
            self.up = false;
            down_all(&self.config.prefix)?;
        }
        Ok(())
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("kraken-bench: teardown failed: {e:#}");
        }
    }
}

/// Whether `name` is one of ours: `<prefix>-sw`, `<prefix>-ctl` or `<prefix>-h<digits>`.
pub fn is_our_namespace(prefix: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    rest == "sw"
        || rest == "ctl"
        || rest
            .strip_prefix('h')
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
}

/// Kills every process left in our namespaces (by pid, SIGKILL) and deletes the namespaces
/// (their veths and the bridge go with them).
pub fn down_all(prefix: &str) -> anyhow::Result<()> {
    let list = sh("ip", &["netns", "list"])?;
    let ours: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_our_namespace(prefix, n))
        .map(str::to_string)
        .collect();
    for ns in &ours {
        if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
            for pid in pids.split_whitespace() {
                let _ = sh("kill", &["-KILL", pid]);
            }
        }
    }
    let mut last = None;
    for ns in &ours {
        if let Err(e) = sh("ip", &["netns", "del", ns]) {
            last = Some(e);
        }
    }
    last.map_or(Ok(()), Err)
}

/// Whether this process can build networks: root, with `ip` and `tc` on the path. The
/// error says what is missing.
pub fn check_prerequisites() -> anyhow::Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        bail!("not running as root (network namespaces need CAP_SYS_ADMIN)");
    }
    for tool in ["ip", "tc"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            bail!("`{tool}` is not installed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_decimal_units() {
        let r: Rate = "100mbit".parse().unwrap_or(Rate { bits_per_sec: 0 });
        assert_eq!(r.bits_per_sec, 100_000_000);
        assert_eq!(r.tc(), "100000kbit");
        assert!("100".parse::<Rate>().is_err());
        assert!("0mbit".parse::<Rate>().is_err());
        assert_eq!(
            "1.5Gbit".parse::<Rate>().map(|r| r.bits_per_sec),
            Ok(1_500_000_000)
        );
    }

    #[test]
    fn only_our_namespaces_are_touched() {
        assert!(is_our_namespace("kb", "kb-sw"));
        assert!(is_our_namespace("kb", "kb-ctl"));
        assert!(is_our_namespace("kb", "kb-h12"));
        assert!(!is_our_namespace("kb", "kb-h"));
        assert!(!is_our_namespace("kb", "kb-hx"));
        assert!(!is_our_namespace("kb", "p2p-h1"));
        assert!(!is_our_namespace("kb", "kbx-h1"));
    }
}
