//! Test support: a private moto S3 server on a loopback port, and test data.
//!
//! Each test starts its own [`Moto`]; the process is killed when the value is dropped.

#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kraken_storage::backend::{BackendConfig, S3ServiceConfig, ServiceConfig, default_http_client};

/// The bucket every [`Moto`] creates.
pub const BUCKET: &str = "kraken-test";

/// How long moto may take to answer its first request.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// A running `moto_server`, killed on drop.
pub struct Moto {
    child: Option<Child>,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts moto on a free loopback port and creates [`BUCKET`].
    pub async fn start() -> Moto {
        let mut last_log = String::new();
        // A port taken between our probe and moto's bind makes moto exit; try another.
        for _ in 0..3 {
            let port = free_port();
            match Moto::spawn(port).await {
                Ok(moto) => return moto,
                Err(log) => last_log = log,
            }
        }
        panic!("moto_server did not start; its last output:\n{last_log}");
    }

    /// Kills the server (if running) and starts a fresh, empty one on the same port,
    /// with [`BUCKET`] created again.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            match Moto::spawn(self.port).await {
                Ok(moto) => {
                    *self = moto;
                    return;
                }
                // The old socket may linger for a moment.
                Err(log) if Instant::now() > deadline => {
                    panic!("moto_server did not restart on port {}:\n{log}", self.port)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Kills the server and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: moto stops answering while its sockets stay open (the kernel still
    /// accepts connections), as a hung backend does.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a paused moto answers again.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {sig} failed");
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A raw request for `key` in [`BUCKET`] (see [`Moto::raw`]).
    pub fn object(&self, method: reqwest::Method, key: &str) -> reqwest::RequestBuilder {
        self.raw(method, &format!("{BUCKET}/{key}"))
    }

    /// A raw request to this server, bypassing the backend. moto refuses anonymous
    /// requests to private objects but does not verify signatures, so a well-formed
    /// SigV4 header with a dummy signature is enough.
    pub fn raw(&self, method: reqwest::Method, path_and_query: &str) -> reqwest::RequestBuilder {
        default_http_client()
            .expect("http client")
            .request(method, format!("{}/{path_and_query}", self.endpoint()))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
    }

    /// A backend config for [`BUCKET`] on this server (static dummy credentials).
    pub fn s3_config(&self) -> S3ServiceConfig {
        let mut s3 = S3ServiceConfig::new(BUCKET);
        s3.endpoint = Some(self.endpoint());
        s3.region = Some("us-east-1".into());
        s3.access_key_id = Some("testing".into());
        s3.secret_access_key = Some("testing".into());
        s3
    }

    /// [`Moto::s3_config`] as a whole backend config with default layout and tuning.
    pub fn backend_config(&self) -> BackendConfig {
        BackendConfig::new(ServiceConfig::S3(self.s3_config()))
    }

    /// Spawns moto on `port`, waits until it answers and creates the bucket; on failure
    /// returns moto's output.
    async fn spawn(port: u16) -> Result<Moto, String> {
        let log = tempfile::NamedTempFile::new().expect("create moto log file");
        let out = log.reopen().expect("reopen moto log file");
        let err = log.reopen().expect("reopen moto log file");
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn moto_server");
        let mut moto = Moto {
            child: Some(child),
            port,
            log,
        };
        let http = default_http_client().expect("http client");
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(child) = moto.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                moto.child = None;
                return Err(format!("exited with {status}\n{}", moto.output()));
            }
            if http.get(moto.endpoint()).send().await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer within {STARTUP_DEADLINE:?}\n{}",
                    moto.output()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let resp = http
            .put(format!("{}/{BUCKET}", moto.endpoint()))
            .send()
            .await
            .map_err(|e| format!("create bucket: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("create bucket: {}", resp.status()));
        }
        Ok(moto)
    }

    fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = self.log.reopen() {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port the OS considers free right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    listener.local_addr().expect("probe socket address").port()
}

/// `$KRAKEN_MOTO_SERVER`, else `<workspace>/.venv/bin/moto_server`, else `moto_server` on
/// `PATH`.
fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("KRAKEN_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("moto_server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "moto_server not found: set KRAKEN_MOTO_SERVER, run .ci/run (it creates .venv with \
             moto), or `pip install 'moto[server]'`"
        )
    })
}

/// `len` bytes of deterministic pseudo-random data (xorshift64, seeded).
pub fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
