//! The spill of a streamed push: every chunk of the client's body taken for an owner is
//! also appended to an unnamed, unsynced file in the proxy's uploads directory, so that
//! when that owner fails mid-body the next owner gets the prefix from the file and the rest
//! from the live body, and the client's request lives on.
//!
//! - The file has no name (`O_TMPFILE`, or created and unlinked at once where the file
//!   system lacks it): it is gone when the push ends or the proxy dies, and nothing is left
//!   to sweep. It is never fsynced: it only has to outlive the failure of an owner, not of
//!   the proxy (the client's request dies with the proxy anyway).
//! - A writer thread appends behind a bounded queue of chunks, in 1 MiB writes past the
//!   page cache where the file system allows (direct I/O), so the disk works alongside the
//!   network and memory stays bounded; a disk slower than the owner slows the push to the
//!   disk's pace.
//! - A spill that cannot be written (full disk) does not fail the push: it stops keeping
//!   bytes, and only a later owner failure, which it can then no longer bridge, fails the
//!   upload as it did before spilling existed.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use kraken_storage::direct::DirectAppender;
use tokio::sync::{mpsc, oneshot};

/// Chunks queued for the writer thread (each as large as the HTTP stack hands them over).
const QUEUE: usize = 64;
/// The writer's buffer: one `write` per this many bytes.
const WRITE_BUFFER: usize = 1 << 20;

enum Job {
    Append(Bytes),
    /// Answer once every chunk before it is written (or the first write error).
    Flush(oneshot::Sender<io::Result<()>>),
}

/// The bytes taken so far from one push's body, kept to be sent again.
pub(crate) struct Spill {
    file: Arc<File>,
    jobs: mpsc::Sender<Job>,
    /// Bytes handed to the writer: every byte taken from the body, unless `broken`.
    taken: u64,
    /// Set once a chunk could not be handed over or written: the spill no longer holds
    /// the whole prefix.
    broken: bool,
}

impl Spill {
    /// An empty spill in `dir` (created if missing).
    pub(crate) fn create(dir: &Path) -> io::Result<Spill> {
        std::fs::create_dir_all(dir)?;
        let file = Arc::new(tempfile::tempfile_in(dir)?);
        let (jobs, rx) = mpsc::channel(QUEUE);
        let writing = file.clone();
        std::thread::Builder::new()
            .name("push-spill".into())
            .spawn(move || write_jobs(&writing, rx))?;
        Ok(Spill {
            file,
            jobs,
            taken: 0,
            broken: false,
        })
    }

    /// Appends `chunk` (queued; written behind the caller).
    pub(crate) async fn keep(&mut self, chunk: &Bytes) {
        if self.broken {
            return;
        }
        if self.jobs.send(Job::Append(chunk.clone())).await.is_err() {
            self.broken = true;
            return;
        }
        self.taken += chunk.len() as u64;
    }

    /// Waits until everything kept is in the file; the bytes it holds, or why it does not
    /// hold every byte taken.
    pub(crate) async fn flushed(&mut self) -> io::Result<u64> {
        if self.broken {
            return Err(io::Error::other("the spill missed a chunk"));
        }
        let (tx, rx) = oneshot::channel();
        let answer = match self.jobs.send(Job::Flush(tx)).await {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the spill's writer stopped"))),
            Err(_) => Err(io::Error::other("the spill's writer stopped")),
        };
        if answer.is_err() {
            self.broken = true;
        }
        answer.map(|()| self.taken)
    }

    /// The first `len` bytes kept (call [`Spill::flushed`] first), read on a thread.
    pub(crate) fn prefix(&self, len: u64) -> mpsc::Receiver<io::Result<Bytes>> {
        let file = self.file.clone();
        kraken_client::ingest::read_range(move || Ok(file), 0..len)
    }
}

/// The writer thread: appends chunks in order until the spill is dropped; after the first
/// error it writes nothing more and reports that error to every flush.
fn write_jobs(file: &File, mut jobs: mpsc::Receiver<Job>) {
    // Past the page cache where the file system allows: the spill is read only if an
    // owner fails, and copying every pushed byte into the page cache cost the proxy about
    // a tenth of a push's CPU.
    let mut out = DirectAppender::new(file, 0, WRITE_BUFFER);
    let mut failed: Option<io::ErrorKind> = None;
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::Append(chunk) if failed.is_none() => {
                if let Err(e) = out.append(&chunk) {
                    tracing::warn!(error = %e, "cannot spill a streamed push; it can no longer move to another owner mid-body");
                    failed = Some(e.kind());
                }
            }
            Job::Append(_) => {}
            Job::Flush(done) => {
                let result = match failed {
                    Some(kind) => Err(io::Error::new(kind, "a spill write failed")),
                    None => out.flush_keeping(),
                };
                if let Err(e) = &result {
                    failed.get_or_insert(e.kind());
                }
                let _ = done.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(mut rx: mpsc::Receiver<io::Result<Bytes>>) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn what_is_kept_is_read_back_while_more_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::create(&dir.path().join("uploads")).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (first, rest) = data.split_at(1_234_567);
        for part in first.chunks(100_000) {
            spill.keep(&Bytes::copy_from_slice(part)).await;
        }
        let n = spill.flushed().await.unwrap();
        assert_eq!(n, first.len() as u64);
        assert_eq!(read_all(spill.prefix(n)).await, first);
        for part in rest.chunks(70_000) {
            spill.keep(&Bytes::copy_from_slice(part)).await;
        }
        let n = spill.flushed().await.unwrap();
        assert_eq!(read_all(spill.prefix(n)).await, data);
        assert_eq!(
            std::fs::read_dir(dir.path().join("uploads"))
                .unwrap()
                .count(),
            0,
            "the spill has no name"
        );
    }

    #[tokio::test]
    async fn a_spill_on_a_full_disk_says_so_and_does_not_block() {
        // /dev/full: every write fails with ENOSPC.
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        let (jobs, rx) = mpsc::channel(QUEUE);
        let full = Arc::new(full);
        let writing = full.clone();
        std::thread::spawn(move || write_jobs(&writing, rx));
        let mut spill = Spill {
            file: full,
            jobs,
            taken: 0,
            broken: false,
        };
        for _ in 0..4 {
            spill.keep(&Bytes::from(vec![1u8; WRITE_BUFFER])).await;
        }
        let err = spill.flushed().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(spill.flushed().await.is_err(), "it stays broken");
    }
}
