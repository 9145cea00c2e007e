//! The client both systems are measured with: one `curl` process per HTTP request (the
//! same binary, the same options for both), and the Docker Registry v2 push and pull
//! sequences built from them. Each request's time is curl's own `time_total`; its CPU
//! is read from this process's reaped-children counters around it. Timed downloads go to
//! `/dev/null` (curl counts their bytes): hashing them on the way would make the client,
//! not the server, the limit of a fast download. Their bytes are checked by an untimed
//! `GET` of the same URL, whose body goes to a pipe and is hashed here as it arrives.
//!
//! Also a few lines of plain HTTP/1.1 over a TCP socket for the bench's own polling
//! (readiness, `/metrics`), which must not show up as client work.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use kraken_storage::{Digest, DigestAlgorithm};

use super::janitor::Tracked;
use crate::bench::procs::reaped_children_cpu;

/// What one or more requests cost the client.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClientCost {
    /// Sum of curl's `time_total`, seconds.
    pub secs: f64,
    /// curl's CPU seconds (user + system).
    pub cpu_s: f64,
    /// Seconds to the first byte of the response body (downloads only).
    pub ttfb_s: Option<f64>,
    /// Bytes of response bodies curl received.
    pub downloaded: u64,
}

impl ClientCost {
    fn add(&mut self, other: ClientCost) {
        self.secs += other.secs;
        self.cpu_s += other.cpu_s;
        self.ttfb_s = self.ttfb_s.or(other.ttfb_s);
        self.downloaded += other.downloaded;
    }
}

/// One finished curl request.
struct Answer {
    cost: ClientCost,
    /// Response headers (`-D -`), for requests that send a body elsewhere.
    headers: String,
}

/// Marks curl's `--write-out` line on stderr, after any error message.
const WRITE_OUT: &str =
    "%{stderr}\n@@ %{http_code} %{time_total} %{time_starttransfer} %{size_download}\n";

/// How long one request may take: generous, only so that a stuck server fails the run.
fn max_time(bytes: u64) -> String {
    (120 + (bytes >> 23)).to_string()
}

/// Where curl runs: in this process's network namespace, or in a named one (`ip netns
/// exec NS curl …`: `ip` execs curl, so the child is curl itself and its CPU time counts
/// the same).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Site<'a> {
    /// Here.
    #[default]
    Here,
    /// Inside this network namespace.
    Netns(&'a str),
}

impl Site<'_> {
    /// `program` as a command run at this site.
    pub fn command(self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self {
            Site::Here => Command::new(program),
            Site::Netns(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(program);
                cmd
            }
        }
    }
}

/// Runs curl at `site` with `args` (after the common options); `body` consumes its stdout.
fn curl<T>(
    site: Site<'_>,
    args: Vec<OsString>,
    bytes: u64,
    body: impl FnOnce(&mut dyn Read) -> std::io::Result<T>,
) -> anyhow::Result<(T, ClientCost)> {
    let cpu0 = reaped_children_cpu();
    let mut cmd = site.command("curl");
    cmd.args(["-sS", "--fail", "--connect-timeout", "10", "--max-time"])
        .arg(max_time(bytes))
        // No `Expect: 100-continue` round trip before an upload body, for either system.
        .args(["-H", "Expect:", "-w", WRITE_OUT])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Tracked::spawn(&mut cmd)?;
    let child = proc.child_mut();
    let mut stdout = child.stdout.take().context("curl has no stdout")?;
    let mut stderr = child.stderr.take().context("curl has no stderr")?;
    let got = body(&mut stdout);
    // Whatever the consumer left unread, so curl can finish.
    let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    let status = proc.wait()?;
    let cpu_s = reaped_children_cpu() - cpu0;
    let what = args.last().map(|a| a.to_string_lossy()).unwrap_or_default();
    let tail = err.lines().rev().find_map(|l| l.strip_prefix("@@ "));
    let fields: Vec<&str> = tail.unwrap_or_default().split(' ').collect();
    if !status.success() {
        let why: Vec<&str> = err.lines().filter(|l| !l.starts_with("@@ ")).collect();
        bail!("curl {what}: {}", why.join(" ").trim());
    }
    let got = got.with_context(|| format!("reading the answer of {what}"))?;
    let [code, total, first, size] = fields[..] else {
        bail!("curl {what} printed no timing: {err:?}");
    };
    let secs: f64 = total.parse().context("time_total")?;
    let first: f64 = first.parse().context("time_starttransfer")?;
    let cost = ClientCost {
        secs,
        cpu_s,
        ttfb_s: (code == "200" || code == "206").then_some(first),
        downloaded: size.parse().context("size_download")?,
    };
    Ok((got, cost))
}

/// A request whose response body is discarded; its headers are kept.
fn request(site: Site<'_>, args: Vec<OsString>, bytes: u64) -> anyhow::Result<Answer> {
    let mut all = os(&["-D", "-", "-o", "/dev/null"]);
    all.extend(args);
    let (headers, cost) = curl(site, all, bytes, |out| {
        let mut s = String::new();
        out.read_to_string(&mut s)?;
        Ok(s)
    })?;
    Ok(Answer { cost, headers })
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// The last `Location` header in `headers`, made absolute against `base`.
fn location(headers: &str, base: &str) -> anyhow::Result<String> {
    let loc = headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.trim().to_string())
        .next_back()
        .with_context(|| format!("no Location in {headers:?}"))?;
    if loc.starts_with("http://") || loc.starts_with("https://") {
        Ok(loc)
    } else {
        Ok(format!("{}{loc}", base.trim_end_matches('/')))
    }
}

/// `url` with `digest` added to its query.
fn with_digest(url: &str, digest: &Digest) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

/// `POST /v2/<repo>/blobs/uploads/`: the new session's absolute location.
fn start_upload(site: Site<'_>, base: &str, repo: &str) -> anyhow::Result<(String, ClientCost)> {
    let url = format!("{base}/v2/{repo}/blobs/uploads/");
    let a = request(
        site,
        os(&["-X", "POST", "-H", "Content-Length: 0", url.as_str()]),
        0,
    )?;
    Ok((location(&a.headers, base)?, a.cost))
}

fn octet_stream() -> Vec<OsString> {
    os(&["-H", "Content-Type: application/octet-stream"])
}

/// A monolithic push: `POST`, then `PUT <location>?digest=` with the whole file.
pub fn push_monolithic(
    base: &str,
    repo: &str,
    file: &Path,
    digest: &Digest,
) -> anyhow::Result<ClientCost> {
    push_monolithic_at(Site::Here, base, repo, file, digest)
}

/// [`push_monolithic`] with curl running at `site`.
pub fn push_monolithic_at(
    site: Site<'_>,
    base: &str,
    repo: &str,
    file: &Path,
    digest: &Digest,
) -> anyhow::Result<ClientCost> {
    let (loc, mut cost) = start_upload(site, base, repo)?;
    let len = file.metadata()?.len();
    let mut args = octet_stream();
    args.extend([OsString::from("-T"), file.into()]);
    args.push(with_digest(&loc, digest).into());
    cost.add(request(site, args, len)?.cost);
    Ok(cost)
}

/// A chunked push: `POST`, one `PATCH` per part with its `Content-Range`, each to the
/// location the previous answer named, then `PUT ?digest=` without a body.
pub fn push_chunked(
    base: &str,
    repo: &str,
    parts: &[&Path],
    digest: &Digest,
) -> anyhow::Result<ClientCost> {
    let (mut loc, mut cost) = start_upload(Site::Here, base, repo)?;
    let mut offset = 0u64;
    for part in parts {
        let len = part.metadata()?.len();
        let mut args = octet_stream();
        let range = format!("Content-Range: {offset}-{}", offset + len - 1);
        args.extend(os(&["-X", "PATCH", "-H", &range, "-T"]));
        args.push(part.into());
        args.push(loc.clone().into());
        let a = request(Site::Here, args, len)?;
        cost.add(a.cost);
        loc = location(&a.headers, base)?;
        offset += len;
    }
    let put = with_digest(&loc, digest);
    let a = request(
        Site::Here,
        os(&["-X", "PUT", "-H", "Content-Length: 0", put.as_str()]),
        0,
    )?;
    cost.add(a.cost);
    Ok(cost)
}

/// `GET` of a blob, following redirects, optionally of the inclusive byte range
/// `first..=last`: the sha256 and length of what came.
pub fn get_blob(
    url: &str,
    range: Option<(u64, u64)>,
    expect_len: u64,
) -> anyhow::Result<(Digest, u64, ClientCost)> {
    let mut args = os(&["-L", "-o", "-"]);
    if let Some((first, last)) = range {
        args.extend(os(&["-r", &format!("{first}-{last}")]));
    }
    args.push(url.into());
    let ((digest, len), cost) = curl(Site::Here, args, expect_len, |out| {
        Digest::of_reader(DigestAlgorithm::Sha256, out)
    })?;
    Ok((digest, len, cost))
}

/// A timed `GET` of a blob (following redirects, optionally of the inclusive byte range
/// `first..=last`) into `/dev/null`: its cost, or an error if it was not `want_len` bytes.
/// Check the bytes with [`get_checked`], untimed.
pub fn get_timed(
    url: &str,
    range: Option<(u64, u64)>,
    want_len: u64,
) -> anyhow::Result<ClientCost> {
    let mut args = os(&["-L", "-o", "/dev/null"]);
    if let Some((first, last)) = range {
        args.extend(os(&["-r", &format!("{first}-{last}")]));
    }
    args.push(url.into());
    let ((), cost) = curl(Site::Here, args, want_len, |_| Ok(()))?;
    if cost.downloaded != want_len {
        bail!("GET {url}: {} bytes, expected {want_len}", cost.downloaded);
    }
    Ok(cost)
}

/// `GET` of a blob whose bytes must hash to `want`: its cost, or an error naming what came.
pub fn get_checked(
    url: &str,
    range: Option<(u64, u64)>,
    want: &Digest,
    want_len: u64,
) -> anyhow::Result<ClientCost> {
    let (got, len, cost) = get_blob(url, range, want_len)?;
    if got != *want || len != want_len {
        bail!("GET {url}: {len} bytes hashing to {got}, expected {want_len} bytes of {want}");
    }
    Ok(cost)
}

/// A plain HTTP/1.1 `GET path` to `addr`: the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    // One write: `write!` would send the request in pieces.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

/// The payload of a chunked body (enough for small text answers).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_made_absolute_and_take_the_digest() {
        let base = "http://127.0.0.1:5000";
        let h = "HTTP/1.1 202 Accepted\r\nlocation: /v2/a/blobs/uploads/x\r\n\r\n";
        let loc = location(h, base).unwrap();
        assert_eq!(loc, "http://127.0.0.1:5000/v2/a/blobs/uploads/x");
        let h = "HTTP/1.1 202 Accepted\r\nLocation: http://h:1/v2/a/blobs/uploads/y?_state=s\r\n";
        let loc = location(h, base).unwrap();
        assert_eq!(loc, "http://h:1/v2/a/blobs/uploads/y?_state=s");
        let d = Digest::sha256_of(b"x");
        assert_eq!(with_digest(&loc, &d), format!("{loc}&digest={d}"));
        assert!(with_digest("http://h/u", &d).ends_with(&format!("/u?digest={d}")));
        assert!(location("HTTP/1.1 200 OK\r\n", base).is_err());
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
        assert_eq!(dechunk("zz\r\n"), "");
    }

    #[test]
    fn http_get_reads_a_plain_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got.starts_with(b"GET /metrics HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
        });
        assert_eq!(http_get(addr, "/metrics").unwrap(), (200, "hello".into()));
        server.join().unwrap();
    }
}
