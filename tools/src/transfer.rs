//! `krakenctl push` and `krakenctl pull`: a blob into and out of the cluster.
//!
//! Push hashes the file (sha256, or sha512 with `--algorithm sha512`; with a progress bar
//! on a terminal), then uploads it with `kraken_client`'s resumable `push_file` to the
//! digest's first origin owner that accepts it (the origin replicates to the other owners
//! and queues the write-back). It prints the digest — only the digest when stdout is not a
//! terminal.
//!
//! Pull without `--agent` downloads from the origins (`Download`): owners first, then the
//! other origins; if none holds the blob, the owners are asked for its metainfo, which
//! makes an owner read it through from the backend, and the download is tried again. With
//! `--agent`, the agent first pulls the blob through the swarm (`Pull`), then it is
//! downloaded from that agent. Either way bytes go to `FILE.part`, are checked against the
//! digest and length (`kraken_client::download`, which also gives up on a node that stalls
//! for a minute), and only then renamed to `FILE`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kraken_client::cluster::{CallError, ORIGIN_REPLICAS};
use kraken_client::download::{Download, DownloadError};
use kraken_client::metainfo::{METAINFO_DEADLINE, MetainfoQuery, MetainfoQueryError};
use kraken_client::proto::{ErrorKind, MAX_METAINFO_WAIT, PullReport, Request, Response};
use kraken_client::upload::push_file;
use kraken_membership::Role;
use kraken_storage::{Digest, DigestAlgorithm};
use serde::Serialize;

use crate::cli::OutputMode;
use crate::client::Client;
use crate::error::CtlError;
use crate::output::{bytes, emit, emit_json, millis};
use crate::progress::Progress;

/// Longest an agent may take to pull a blob for `pull --agent`.
pub const AGENT_PULL_TIMEOUT: Duration = Duration::from_secs(3600);

/// Asks the agent at `addr` to pull `digest` through the swarm (if it lacks it); its
/// report of the pull.
pub async fn agent_pull(
    client: &Client,
    addr: std::net::SocketAddr,
    namespace: &str,
    digest: &Digest,
) -> Result<PullReport, CallError> {
    let request = Request::Pull {
        namespace: namespace.to_string(),
        digest: *digest,
    };
    match client
        .cluster()
        .call_within(addr, &request, AGENT_PULL_TIMEOUT)
        .await?
    {
        Response::Pull(r) => Ok(r),
        other => Err(CallError::unexpected(addr, other)),
    }
}

/// A file ready to push: its path, length and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedFile {
    /// The file.
    pub path: PathBuf,
    /// Its length.
    pub length: u64,
    /// Its digest.
    pub digest: Digest,
}

/// Hashes `path` with `algorithm`, with a progress bar on a terminal. An unreadable file is
/// exit 4.
pub async fn hash_file(path: &Path, algorithm: DigestAlgorithm) -> Result<HashedFile, CtlError> {
    let bad = |e: std::io::Error| CtlError::BadArgument(format!("{}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(bad)?;
    if !meta.is_file() {
        return Err(CtlError::BadArgument(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let length = meta.len();
    let progress = Progress::bytes(length, "hashing");
    let owned = path.to_path_buf();
    let bar = progress.bar();
    let (digest, _) = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&owned)?;
        Digest::of_reader(algorithm, bar.wrap_read(file))
    })
    .await
    .map_err(|e| CtlError::Failed(format!("hashing failed: {e}")))?
    .map_err(bad)?;
    progress.finish();
    Ok(HashedFile {
        path: path.to_path_buf(),
        length,
        digest,
    })
}

/// What `push` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushReport {
    /// The blob.
    pub digest: Digest,
    /// Its length.
    pub length: u64,
    /// Bytes sent (less than the length when an earlier upload was resumed).
    pub sent: u64,
    /// The origin that took it.
    pub origin: String,
    /// How long the upload took.
    pub elapsed_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Uploads `file` to its first origin owner that takes it.
pub async fn push_to_owner(
    client: &Client,
    file: &HashedFile,
    namespace: &str,
) -> Result<PushReport, CtlError> {
    let cluster = client.cluster();
    let owners = cluster.owners_of_digest(Role::Origin, &file.digest, ORIGIN_REPLICAS);
    if owners.is_empty() {
        return Err(CtlError::Failed(
            "no live origin in the cluster view".into(),
        ));
    }
    let started = Instant::now();
    let mut last = None;
    for owner in &owners {
        let spinner =
            Progress::spinner(format!("uploading {} to {}", bytes(file.length), owner.id));
        let result = push_file(
            cluster,
            owner.quic_addr,
            namespace,
            &file.digest,
            &file.path,
            file.length,
            false,
            false,
        )
        .await;
        spinner.finish();
        match result {
            Ok(pushed) => {
                return Ok(PushReport {
                    digest: file.digest,
                    length: pushed.length,
                    sent: pushed.sent,
                    origin: owner.id.as_str().to_string(),
                    elapsed_ms: ms(started.elapsed()),
                });
            }
            Err(e) if e.try_next() => last = Some(e),
            Err(e) => return Err(CtlError::from_call(&e)),
        }
    }
    Err(last.map_or_else(
        || CtlError::Failed("no origin took the upload".into()),
        |e| CtlError::from_call(&e),
    ))
}

/// `krakenctl push`.
pub async fn push(
    client: &Client,
    file: &HashedFile,
    namespace: &str,
    mode: OutputMode,
) -> Result<(), CtlError> {
    let report = push_to_owner(client, file, namespace).await?;
    if mode.json {
        emit_json(&report)
    } else if mode.terminal {
        emit(&format!(
            "{}\npushed {} to {} in {}{}\n",
            report.digest,
            bytes(report.length),
            report.origin,
            millis(report.elapsed_ms),
            if report.sent < report.length {
                format!(" (resumed: sent {})", bytes(report.sent))
            } else {
                String::new()
            }
        ))
    } else {
        emit(&format!("{}\n", report.digest))
    }
}

/// What `pull` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullResult {
    /// The blob.
    pub digest: Digest,
    /// Its length.
    pub length: u64,
    /// Where it was written.
    pub path: PathBuf,
    /// The node it was downloaded from.
    pub source: String,
    /// The agent's report of its swarm pull (`--agent` only).
    pub report: Option<PullReport>,
    /// Wall time of the whole command's transfer.
    pub elapsed_ms: u64,
}

fn part_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    output.with_file_name(name)
}

/// Downloads `digest` from `addr` into `output`: the bytes go to `output.part`, are checked
/// against the digest, and only then is it renamed.
async fn download(
    client: &Client,
    addr: SocketAddr,
    name: &str,
    digest: &Digest,
    output: &Path,
) -> Result<u64, DownloadError> {
    let download = Download::open(client.cluster(), addr, digest, None).await?;
    let part = part_path(output);
    let progress = Progress::bytes(download.total(), format!("from {name}"));
    let saved = download.save(&part, |n| progress.inc(n)).await;
    progress.finish();
    let n = saved?;
    if let Err(source) = std::fs::rename(&part, output) {
        let _ = std::fs::remove_file(&part);
        return Err(DownloadError::File {
            path: output.to_path_buf(),
            source,
        });
    }
    Ok(n)
}

/// Asks the owners for the blob's metainfo, so that one reads it through from the backend.
async fn read_through(client: &Client, digest: &Digest, namespace: &str) -> Result<(), CtlError> {
    let spinner = Progress::spinner(format!("reading {digest} through from the backend"));
    let query = MetainfoQuery::origins(
        namespace,
        digest,
        ORIGIN_REPLICAS,
        MAX_METAINFO_WAIT,
        client.timeout(),
    );
    let result = query
        .run(client.cluster(), Instant::now() + METAINFO_DEADLINE)
        .await;
    spinner.finish();
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.remote().is_some_and(|r| r.kind == ErrorKind::NotFound) => {
            Err(CtlError::NotFound(format!(
                "no origin holds {digest}, and the backend has no {namespace}/{digest}"
            )))
        }
        Err(MetainfoQueryError::Call(e)) => Err(CtlError::from_call(&e)),
        Err(e) => Err(CtlError::Failed(e.to_string())),
    }
}

/// Downloads from the origins: owners first, then the rest; then after a read-through.
async fn pull_from_origins(
    client: &Client,
    digest: &Digest,
    output: &Path,
    namespace: &str,
) -> Result<(String, u64), CtlError> {
    let owners = client
        .cluster()
        .owners_of_digest(Role::Origin, digest, ORIGIN_REPLICAS);
    let mut order = owners.clone();
    for m in client.origins() {
        if !order.iter().any(|o| o.id == m.id) {
            order.push(m);
        }
    }
    if order.is_empty() {
        return Err(CtlError::Failed("no origin in the cluster view".into()));
    }
    let mut last_failure = None;
    for round in 0..2 {
        let candidates = if round == 0 { &order } else { &owners };
        for m in candidates {
            match download(client, m.quic_addr, m.id.as_str(), digest, output).await {
                Ok(n) => return Ok((m.id.as_str().to_string(), n)),
                Err(e) if e.not_held() => {}
                Err(e) => last_failure = Some(CtlError::from_download(&e)),
            }
        }
        if round == 0 {
            if let Some(e) = last_failure.take() {
                return Err(e);
            }
            read_through(client, digest, namespace).await?;
        }
    }
    Err(last_failure.unwrap_or_else(|| CtlError::NotFound(format!("no origin holds {digest}"))))
}

/// `krakenctl pull`.
pub async fn pull(
    client: &Client,
    digest: &Digest,
    output: &Path,
    agent: Option<&str>,
    namespace: &str,
    mode: OutputMode,
) -> Result<(), CtlError> {
    let started = Instant::now();
    let (source, length, report) = match agent {
        Some(agent) => {
            let addr = client.node_addr(agent).await?;
            let name = client
                .names_by_addr()
                .get(&addr)
                .cloned()
                .unwrap_or_else(|| addr.to_string());
            let spinner = Progress::spinner(format!("{name} is pulling {digest}"));
            let answer = agent_pull(client, addr, namespace, digest).await;
            spinner.finish();
            let report = answer.map_err(|e| CtlError::from_call(&e))?;
            let n = download(client, addr, &name, digest, output)
                .await
                .map_err(|e| CtlError::from_download(&e))?;
            (name, n, Some(report))
        }
        None => {
            let (name, n) = pull_from_origins(client, digest, output, namespace).await?;
            (name, n, None)
        }
    };
    let result = PullResult {
        digest: *digest,
        length,
        path: output.to_path_buf(),
        source,
        report,
        elapsed_ms: ms(started.elapsed()),
    };
    if mode.json {
        emit_json(&result)
    } else if mode.terminal {
        let via = match &result.report {
            Some(r) => format!(
                " (its swarm pull: {} from agents, {} from origins in {})",
                bytes(r.bytes_from_agents),
                bytes(r.bytes_from_origins),
                millis(r.elapsed_ms)
            ),
            None => String::new(),
        };
        emit(&format!(
            "pulled {} ({}) from {} into {} in {}{via}\n",
            result.digest,
            bytes(result.length),
            result.source,
            result.path.display(),
            millis(result.elapsed_ms)
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_sit_next_to_the_output() {
        assert_eq!(
            part_path(Path::new("/tmp/x/blob.tar")),
            PathBuf::from("/tmp/x/blob.tar.part")
        );
        assert_eq!(part_path(Path::new("out")), PathBuf::from("out.part"));
    }
}
