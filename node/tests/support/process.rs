//! `kraken` daemons as child processes, for tests that need what only a real process
//! shows: a SIGKILL that closes nothing gracefully, a restart on the same data.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A `kraken <role> --config <file>` child, killed on drop.
pub struct KrakenProcess {
    pub child: Child,
    /// The QUIC address it printed.
    pub quic: SocketAddr,
}

impl KrakenProcess {
    /// Starts it and waits until it prints `ready`; its log goes to `stderr`, filtered by
    /// `KRAKEN_TEST_LOG` when set (a `RUST_LOG` directive; by default warnings, and the
    /// push path's fail-overs).
    pub fn spawn(role: &str, config: &Path, stderr: Stdio) -> KrakenProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kraken"))
            .args([role, "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("KRAKEN_TEST_LOG").unwrap_or("warn,kraken_node::push=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut quic = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(a) = line.strip_prefix("quic ") {
                quic = Some(a.parse().unwrap());
            }
            if line == "ready" {
                break;
            }
        }
        KrakenProcess {
            child,
            quic: quic.unwrap_or_else(|| panic!("{} printed no address", config.display())),
        }
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for KrakenProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
