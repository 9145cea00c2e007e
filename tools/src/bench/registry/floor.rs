//! The `sendfile-floor` reference: the least a server can do to send a warm blob, so the
//! report can tell what the warm pull's time is made of.
//!
//! One thread in the bench answers every request on its port with a fixed head and the
//! whole of one file, `sendfile(2)` on a blocking socket: no routing, no store, no
//! metrics, no async runtime. It sets up its socket as a careful server does (no Nagle
//! delay, the head corked into the first segment of the body), so that what it leaves
//! out is only work, not tuning. What a warm `GET` costs against it is the kernel's and the
//! client's share; what docker-registry or an agent takes beyond it is theirs. Its CPU is
//! the thread's own, read from `/proc/thread-self/stat` around each request.

use std::fs::File;
use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use anyhow::Context as _;

use crate::bench::procs::this_thread_cpu_secs;

/// Largest request head read before answering.
const MAX_HEAD: usize = 8 << 10;

/// The server; it runs until the bench exits (its thread holds nothing but the file).
pub struct SendfileFloor {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Microseconds of CPU the thread spent in requests so far.
    cpu_us: Arc<AtomicU64>,
    /// Where the next file to serve is handed over.
    files: mpsc::Sender<PathBuf>,
}

impl SendfileFloor {
    /// Binds a loopback port and starts the thread.
    pub fn start() -> anyhow::Result<SendfileFloor> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the sendfile floor")?;
        let base = format!("http://{}", listener.local_addr()?);
        let cpu_us = Arc::new(AtomicU64::new(0));
        let (files, rx) = mpsc::channel();
        let cpu = cpu_us.clone();
        std::thread::Builder::new()
            .name("sendfile-floor".into())
            .spawn(move || serve(&listener, &rx, &cpu))?;
        Ok(SendfileFloor {
            base,
            cpu_us,
            files,
        })
    }

    /// Serves `path` from the next connection on.
    pub fn serve_file(&self, path: &Path) -> anyhow::Result<()> {
        self.files
            .send(path.to_path_buf())
            .context("the sendfile floor's thread is gone")
    }

    /// CPU seconds its thread spent answering requests so far.
    pub fn cpu_secs(&self) -> f64 {
        self.cpu_us.load(Ordering::Relaxed) as f64 / 1e6
    }
}

fn serve(listener: &TcpListener, files: &mpsc::Receiver<PathBuf>, cpu_us: &AtomicU64) {
    let mut file: Option<PathBuf> = None;
    for stream in listener.incoming() {
        while let Ok(next) = files.try_recv() {
            file = Some(next);
        }
        let (Ok(stream), Some(path)) = (stream, &file) else {
            continue;
        };
        let thread_cpu = || this_thread_cpu_secs().unwrap_or(0.0);
        let before = thread_cpu();
        // A failed request shows up as curl's error; nothing to report here.
        let _ = answer(stream, path);
        let spent = (thread_cpu() - before).max(0.0);
        cpu_us.fetch_add((spent * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Reads a request head, then sends the head of a `200` and the whole file.
fn answer(mut stream: TcpStream, path: &Path) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    stream.set_nodelay(true)?;
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    let mut sent = 0;
    while sent < head.len() {
        let flags = rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::MORE;
        sent += rustix::net::send(&stream, &head.as_bytes()[sent..], flags)?;
    }
    let mut pos = 0u64;
    while pos < len {
        // Blocking: the kernel waits for room inside the call, one call per send buffer.
        let want = usize::try_from(len - pos)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        if rustix::fs::sendfile(&stream, &file, Some(&mut pos), want)? == 0 {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn serves_the_whole_file_to_any_get() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let floor = SendfileFloor::start().unwrap();
        floor.serve_file(&path).unwrap();
        let addr = floor.base.trim_start_matches("http://");
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\nConnection: close\r\n\r\n";
        assert_eq!(&got[..head.len()], head);
        assert!(got[head.len()..] == data[..]);
    }
}
