//! The `Download` RPC's client: the bytes of a blob (or a range of it) from one node.
//!
//! Every caller reads through [`Download`], so every download is counted against the
//! length its node announced, gives up when the node stalls for [`IDLE_TIMEOUT`], and —
//! whenever the whole blob is read — is checked against its digest. The check happens
//! before the last bytes are handed out, so a caller that streams them on (the registry
//! proxy) never passes on a whole blob that is wrong: its stream fails instead. A range
//! that is not the whole blob cannot be checked against the digest; its bytes are counted.
//!
//! Which node to ask, and what to do when one fails, stays with the callers (the node's
//! origin fetches, `krakenctl pull`, the registry proxy): [`DownloadError::not_held`]
//! tells them when another node may do better.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use kraken_storage::{Digest, DigestHasher};
use kraken_transport::quic::RequestBody;
use quinn::RecvStream;
use tokio::io::AsyncWriteExt;

use crate::cluster::{CallError, Cluster};
use crate::proto::{ErrorKind, RemoteError, Request, Response};

/// Longest a download waits for its next bytes before giving up on the node.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes handed out at once (what a streaming caller buffers per chunk).
const CHUNK_LEN: usize = 256 * 1024;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The call failed, or the node answered with an error (`NotFound` if it lacks the
    /// blob). Boxed: the other variants are much smaller.
    #[error(transparent)]
    Call(Box<CallError>),
    /// The node offers a different number of bytes than were asked for.
    #[error("{addr} offered {len} bytes of {digest} where {wanted} were asked for")]
    Offered {
        /// The node.
        addr: SocketAddr,
        /// The blob.
        digest: Digest,
        /// Bytes it offered.
        len: u64,
        /// Bytes asked for.
        wanted: u64,
    },
    /// The node sent nothing for [`IDLE_TIMEOUT`].
    #[error("download of {digest} from {addr} stalled for {after:?}")]
    Stalled {
        /// The node.
        addr: SocketAddr,
        /// The blob.
        digest: Digest,
        /// How long it was quiet.
        after: Duration,
    },
    /// The stream broke.
    #[error("download of {digest} from {addr} broke: {source}")]
    Read {
        /// The node.
        addr: SocketAddr,
        /// The blob.
        digest: Digest,
        /// Why.
        source: quinn::ReadError,
    },
    /// The stream ended before the announced length.
    #[error("download of {digest} from {addr} ended after {got} of {len} bytes")]
    Short {
        /// The node.
        addr: SocketAddr,
        /// The blob.
        digest: Digest,
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        len: u64,
    },
    /// The stream went on past the announced length.
    #[error("{addr} sent more than the {len} bytes of {digest} it announced")]
    Long {
        /// The node.
        addr: SocketAddr,
        /// The blob.
        digest: Digest,
        /// Bytes announced.
        len: u64,
    },
    /// The whole blob arrived and does not hash to its digest.
    #[error("the bytes from {addr} hash to {actual}, not {expected}")]
    Mismatch {
        /// The node.
        addr: SocketAddr,
        /// The digest asked for.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The local file the bytes go to could not be written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl From<CallError> for DownloadError {
    fn from(e: CallError) -> Self {
        DownloadError::Call(Box::new(e))
    }
}

impl DownloadError {
    /// The node's error answer, if it gave one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            DownloadError::Call(e) => e.remote(),
            _ => None,
        }
    }

    /// The node does not hold the blob (`NotFound`) or does not serve it (`WrongNode`):
    /// another node may.
    pub fn not_held(&self) -> bool {
        self.remote()
            .is_some_and(|r| matches!(r.kind, ErrorKind::NotFound | ErrorKind::WrongNode))
    }
}

/// One `Download` call whose bytes are being read. See the module docs.
pub struct Download {
    addr: SocketAddr,
    digest: Digest,
    recv: RecvStream,
    len: u64,
    total: u64,
    got: u64,
    /// Set while the whole blob is being read; taken when the digest is checked.
    hasher: Option<DigestHasher>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("addr", &self.addr)
            .field("digest", &self.digest)
            .field("got", &self.got)
            .field("len", &self.len)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl Download {
    /// Asks the node at `addr` for `range` of `digest` (`None`: the whole blob). The answer
    /// must come within the cluster's call timeout and offer exactly the bytes asked for.
    /// An empty range asks for nothing a node can send: callers skip the call.
    pub async fn open(
        cluster: &Cluster,
        addr: SocketAddr,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Self, DownloadError> {
        let (offset, wanted) = match &range {
            Some(r) => (r.start, Some(r.end.saturating_sub(r.start))),
            None => (0, None),
        };
        let request = Request::Download {
            digest: *digest,
            offset,
            // 0 asks for everything from `offset`.
            len: wanted.unwrap_or(0),
        };
        let limit = cluster.call_timeout;
        let call = cluster.call_stream(addr, &request, RequestBody::None);
        let (response, recv) = tokio::time::timeout(limit, call)
            .await
            .map_err(|_| CallError::Timeout { addr, after: limit })??;
        let (len, total) = match response {
            Response::Content { len, total } => (len, total),
            other => return Err(CallError::unexpected(addr, other).into()),
        };
        let wanted = wanted.unwrap_or(total);
        if len != wanted {
            return Err(DownloadError::Offered {
                addr,
                digest: *digest,
                len,
                wanted,
            });
        }
        let whole = offset == 0 && len == total;
        Ok(Download {
            addr,
            digest: *digest,
            recv,
            len,
            total,
            got: 0,
            hasher: whole.then(|| digest.hasher()),
        })
    }

    /// Bytes this download delivers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it delivers nothing (an empty blob).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The blob's whole length.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The node it comes from.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next bytes, or `None` once every announced byte arrived and the stream ended.
    /// Reading the whole blob, the bytes that complete it are returned only once they
    /// hash to the digest.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, DownloadError> {
        let (addr, digest) = (self.addr, self.digest);
        let chunk =
            match tokio::time::timeout(IDLE_TIMEOUT, self.recv.read_chunk(CHUNK_LEN, true)).await {
                Err(_) => {
                    return Err(DownloadError::Stalled {
                        addr,
                        digest,
                        after: IDLE_TIMEOUT,
                    });
                }
                Ok(Err(source)) => {
                    return Err(DownloadError::Read {
                        addr,
                        digest,
                        source,
                    });
                }
                Ok(Ok(chunk)) => chunk,
            };
        let Some(chunk) = chunk else {
            if self.got != self.len {
                return Err(DownloadError::Short {
                    addr,
                    digest,
                    got: self.got,
                    len: self.len,
                });
            }
            // An empty blob completes here, without a chunk.
            self.check_digest()?;
            return Ok(None);
        };
        self.got += chunk.bytes.len() as u64;
        if self.got > self.len {
            return Err(DownloadError::Long {
                addr,
                digest,
                len: self.len,
            });
        }
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&chunk.bytes);
        }
        if self.got == self.len {
            self.check_digest()?;
        }
        Ok(Some(chunk.bytes))
    }

    /// Compares the hash of the whole blob with its digest, once.
    fn check_digest(&mut self) -> Result<(), DownloadError> {
        let Some(hasher) = self.hasher.take() else {
            return Ok(());
        };
        let actual = hasher.finish();
        if actual != self.digest {
            return Err(DownloadError::Mismatch {
                addr: self.addr,
                expected: self.digest,
                actual,
            });
        }
        Ok(())
    }

    /// Every byte, in memory. Callers check [`Self::len`] against what they can hold first.
    pub async fn into_vec(mut self) -> Result<Vec<u8>, DownloadError> {
        // At most what the caller accepted (see above).
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        while let Some(chunk) = self.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Every byte into `path` (created or truncated) and onto the disk; returns the length.
    /// `progress` is told each chunk's size as it is written. If anything fails, `path` is
    /// removed: a file that is there afterwards is whole (and checked, for a whole blob).
    pub async fn save(
        mut self,
        path: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, DownloadError> {
        let file_error = |source| DownloadError::File {
            path: path.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::create(path).await.map_err(file_error)?;
        let result = async {
            while let Some(chunk) = self.next_chunk().await? {
                file.write_all(&chunk).await.map_err(file_error)?;
                progress(chunk.len() as u64);
            }
            file.flush().await.map_err(file_error)?;
            file.sync_all().await.map_err(file_error)
        }
        .await;
        if result.is_err() {
            drop(file);
            let _ = tokio::fs::remove_file(path).await;
        }
        result.map(|()| self.len)
    }

    /// The bytes as a stream, for passing them on as they arrive; it ends with the first
    /// error (see [`Self::next_chunk`]).
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, DownloadError>> + Send + 'static {
        futures::stream::try_unfold(self, |mut download| async move {
            Ok(download.next_chunk().await?.map(|chunk| (chunk, download)))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures::StreamExt;
    use kraken_membership::Role;

    use super::*;
    use crate::testing::node;

    /// A node that holds `blob` under `digest`, or claims to: it sends `blob` whatever it
    /// hashes to, announcing `announced` bytes of the blob (its real length if `None`).
    fn origin(
        digest: Digest,
        blob: &'static [u8],
        announced: Option<u64>,
    ) -> crate::testing::TestNode {
        node(&[Role::Origin], move |request| match request {
            Request::Download {
                digest: d,
                offset,
                len,
            } if *d == digest => {
                let start = *offset as usize;
                let end = match *len {
                    0 => blob.len(),
                    len => (start + len as usize).min(blob.len()),
                };
                let body = Bytes::from_static(&blob[start..end]);
                let len = announced.unwrap_or(body.len() as u64);
                let total = blob.len() as u64;
                (Response::Content { len, total }, body)
            }
            _ => (
                Response::Error(RemoteError::new(ErrorKind::NotFound, "no such blob")),
                Bytes::new(),
            ),
        })
    }

    const BLOB: &[u8] = b"a blob of a few bytes";

    #[tokio::test]
    async fn a_whole_blob_arrives_checked_in_memory_on_disk_and_as_a_stream() {
        let digest = Digest::sha256_of(BLOB);
        let n = origin(digest, BLOB, None);
        let open = || Download::open(&n.cluster, n.addr, &digest, None);
        let download = open().await.unwrap();
        assert_eq!((download.len(), download.total()), (21, 21));
        assert_eq!(download.into_vec().await.unwrap(), BLOB);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut seen = 0;
        let saved = open().await.unwrap().save(&path, |n| seen += n).await;
        assert_eq!((saved.unwrap(), seen), (21, 21));
        assert_eq!(std::fs::read(&path).unwrap(), BLOB);

        let chunks: Vec<_> = open().await.unwrap().into_stream().collect().await;
        let bytes: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap()).collect();
        assert_eq!(bytes, BLOB);
    }

    #[tokio::test]
    async fn wrong_bytes_are_never_handed_out_whole() {
        let digest = Digest::sha256_of(b"what was asked for...");
        let n = origin(digest, BLOB, None);
        let open = || Download::open(&n.cluster, n.addr, &digest, None);
        let e = open().await.unwrap().into_vec().await.unwrap_err();
        assert!(matches!(e, DownloadError::Mismatch { .. }), "{e}");

        // The stream fails instead of yielding the bytes that complete the blob.
        let items: Vec<_> = open().await.unwrap().into_stream().collect().await;
        let handed: usize = items.iter().flatten().map(Bytes::len).sum();
        assert!(handed < BLOB.len());
        assert!(matches!(
            items.last(),
            Some(Err(DownloadError::Mismatch { .. }))
        ));

        // Nothing is left on disk.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let e = open().await.unwrap().save(&path, |_| {}).await.unwrap_err();
        assert!(matches!(e, DownloadError::Mismatch { .. }), "{e}");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn the_length_announced_is_the_length_sent() {
        let digest = Digest::sha256_of(BLOB);
        // Announces more than it sends: short.
        let n = origin(digest, BLOB, Some(30));
        let e = Download::open(&n.cluster, n.addr, &digest, Some(0..30)).await;
        let e = e.unwrap().into_vec().await.unwrap_err();
        assert!(
            matches!(
                e,
                DownloadError::Short {
                    got: 21,
                    len: 30,
                    ..
                }
            ),
            "{e}"
        );
        // Offers other than asked: refused before any byte is read.
        let e = Download::open(&n.cluster, n.addr, &digest, None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                DownloadError::Offered {
                    len: 30,
                    wanted: 21,
                    ..
                }
            ),
            "{e}"
        );
        // Sends more than it announces: long.
        let n = node(&[Role::Origin], |_| {
            let answer = Response::Content { len: 5, total: 21 };
            (answer, Bytes::from_static(BLOB))
        });
        let e = Download::open(&n.cluster, n.addr, &digest, Some(0..5)).await;
        let e = e.unwrap().into_vec().await.unwrap_err();
        assert!(matches!(e, DownloadError::Long { len: 5, .. }), "{e}");
    }

    #[tokio::test]
    async fn ranges_and_empty_blobs() {
        let digest = Digest::sha256_of(BLOB);
        let n = origin(digest, BLOB, None);
        let d = Download::open(&n.cluster, n.addr, &digest, Some(2..6))
            .await
            .unwrap();
        assert_eq!((d.len(), d.total()), (4, 21));
        assert_eq!(d.into_vec().await.unwrap(), &BLOB[2..6]);

        let empty = Digest::sha256_of(b"");
        let n = origin(empty, b"", None);
        let d = Download::open(&n.cluster, n.addr, &empty, None)
            .await
            .unwrap();
        assert!(d.is_empty());
        assert_eq!(d.into_vec().await.unwrap(), b"");
        // An empty answer is checked too.
        let n = origin(digest, b"", None);
        let d = Download::open(&n.cluster, n.addr, &digest, None)
            .await
            .unwrap();
        let e = d.into_vec().await.unwrap_err();
        assert!(matches!(e, DownloadError::Mismatch { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_node_without_the_blob_says_so() {
        let n = origin(Digest::sha256_of(BLOB), BLOB, None);
        let other = Digest::sha256_of(b"other");
        let e = Download::open(&n.cluster, n.addr, &other, None)
            .await
            .unwrap_err();
        assert!(e.not_held(), "{e}");
        assert_eq!(e.remote().map(|r| r.kind), Some(ErrorKind::NotFound));
    }
}
