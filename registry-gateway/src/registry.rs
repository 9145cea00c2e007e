//! What the gateway needs from a cluster: the [`Registry`] trait.
//!
//! The gateway speaks HTTP and knows the distribution specification; an implementation
//! knows the cluster. `kraken-node` implements it with QUIC calls: on agents, tags resolve
//! through the build-index and blobs stream from the P2P download; on proxies, blobs go to
//! the origins and tags to the build-index. Manifests are blobs too: the gateway reads and
//! writes their bytes through the same calls and works out their media types itself.
//!
//! Blob writes are not hashed here: the cluster verifies each digest in the one pass that
//! stores the blob ([`Registry::put_blob`], [`Registry::put_blob_stream`]).
//!
//! Every method says what it means by its errors through [`RegistryError`], which the
//! gateway maps onto the specification's error codes and statuses.
//!
//! A blob `GET` is one call, [`Registry::read_blob`], given the client's range as it came
//! ([`ByteRange`]): the implementation finds the blob once and resolves the range against
//! its length once ([`resolve_range`]). `HEAD` asks [`Registry::stat_blob`].

use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use kraken_storage::Digest;

pub use crate::range::ByteRange;

/// A body of bytes arriving over time.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>;

/// An upload's bytes as the client sends them, in order; an error means the client's body
/// broke off.
pub type UploadBody = dyn Stream<Item = std::io::Result<Bytes>> + Send + Unpin;

/// A blob's bytes (or a range of them).
pub struct BlobBody {
    /// The whole blob's length.
    pub total: u64,
    /// The bytes `stream` yields (the whole blob when no range was asked).
    pub range: Range<u64>,
    /// The bytes, in order.
    pub stream: ByteStream,
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody")
            .field("total", &self.total)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// A complete, verified blob on this host's disk, held open: what the zero-copy blob server
/// sends from (see [`Registry::local_blob`]).
///
/// The value keeps whatever `hold` is (the store's reader registration) alive, so the
/// store neither evicts nor deletes the blob until it is dropped.
pub struct LocalBlob {
    file: std::fs::File,
    len: u64,
    _hold: Box<dyn Send>,
}

impl LocalBlob {
    /// A blob whose `len` bytes are `file`'s from offset 0. `file` must not change while
    /// `hold` lives; `hold` is dropped with the value.
    pub fn new(file: std::fs::File, len: u64, hold: impl Send + 'static) -> Self {
        LocalBlob {
            file,
            len,
            _hold: Box::new(hold),
        }
    }

    /// The open file.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// The blob's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for the empty blob.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for LocalBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBlob")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The bytes `range` selects in a blob of `total` bytes (all of them without a range), or
/// [`RegistryError::RangeNotSatisfiable`].
pub fn resolve_range(range: Option<ByteRange>, total: u64) -> Result<Range<u64>, RegistryError> {
    match range {
        None => Ok(0..total),
        Some(r) => r
            .resolve(total)
            .ok_or(RegistryError::RangeNotSatisfiable { total }),
    }
}

/// A page of names (tags or repositories), sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The names.
    pub names: Vec<String>,
    /// Whether more follow after the last one.
    pub more: bool,
}

/// Why a cluster call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No such blob (or manifest, when read as a blob).
    #[error("blob unknown: {0}")]
    BlobUnknown(String),
    /// No such tag (or, for a delete by digest, no such manifest in the repository):
    /// `MANIFEST_UNKNOWN`.
    #[error("manifest unknown: {0}")]
    TagUnknown(String),
    /// No such repository.
    #[error("repository name not known: {0}")]
    NameUnknown(String),
    /// A manifest references blobs or manifests the cluster lacks.
    #[error("manifest references unknown blobs: {0}")]
    ManifestBlobUnknown(String),
    /// Bytes do not match their digest.
    #[error("digest did not match content: {0}")]
    DigestInvalid(String),
    /// The range selects no byte of the blob; the gateway answers 416 with
    /// `Content-Range: bytes */<total>`.
    #[error("range not satisfiable for a {total}-byte blob")]
    RangeNotSatisfiable {
        /// The blob's length.
        total: u64,
    },
    /// The cluster does not support this operation.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The cluster is (partly) unreachable; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The upstream registry the repository mirrors refused the cluster's credentials
    /// (401 `UNAUTHORIZED`, with the upstream's message).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The write is not allowed: the repository mirrors a read-only upstream (403
    /// `DENIED`).
    #[error("denied: {0}")]
    Denied(String),
    /// The upstream registry the repository mirrors rate-limited the cluster (429
    /// `TOOMANYREQUESTS`, with the upstream's message).
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The chunks of an upload as [`Registry::stage_blob`] receives them.
pub type StageChunks = tokio::sync::mpsc::Receiver<Bytes>;

/// Bytes of an upload the cluster holds before their digest is named
/// ([`Registry::stage_blob`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedUpload {
    /// The node holding them.
    pub node: std::net::SocketAddr,
    /// Names them to that node.
    pub token: u64,
    /// How many bytes it holds.
    pub length: u64,
    /// Their sha256 digest, as the node computed it.
    pub digest: Digest,
}

/// The cluster, as the gateway sees it. Implementations are cheap to share (`Arc`).
pub trait Registry: Send + Sync + 'static {
    /// The digest `repo:tag` points at ([`RegistryError::TagUnknown`] if none).
    fn resolve_tag(
        &self,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<Digest, RegistryError>> + Send;

    /// The blob's length ([`RegistryError::BlobUnknown`] if the cluster lacks it).
    fn stat_blob(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<u64, RegistryError>> + Send;

    /// The blob's bytes, or those `range` selects, resolved against the blob's length
    /// with [`resolve_range`] once the blob is found ([`RegistryError::RangeNotSatisfiable`]
    /// when it selects nothing); [`BlobBody::range`] says which bytes follow. Bytes may
    /// start flowing before the cluster has the whole blob locally; every byte is verified
    /// before it is yielded.
    fn read_blob(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> impl Future<Output = Result<BlobBody, RegistryError>> + Send;

    /// Whether this host holds `digest` complete and verified on its own disk: the
    /// registry API's blob `GET` redirects to the blob server only then. Only asks; the
    /// blob server opens the blob with [`Registry::local_blob`] when it sends it. `false`
    /// by default.
    fn holds_local_blob(&self, digest: &Digest) -> impl Future<Output = bool> + Send {
        let _ = digest;
        async { false }
    }

    /// The blob, if this host holds it complete and verified on its own disk (an agent's
    /// store); `None` otherwise, and by default. The blob server calls it once per request
    /// it sends from the file (without checking the bytes again): an implementation may
    /// count each call as a blob served locally.
    fn local_blob(&self, digest: &Digest) -> impl Future<Output = Option<LocalBlob>> + Send {
        let _ = digest;
        async { None }
    }

    /// A page of `repo`'s tags after `after` ([`RegistryError::NameUnknown`] if the
    /// repository is unknown; one whose tags were all deleted has an empty list).
    fn list_tags(
        &self,
        repo: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Page, RegistryError>> + Send;

    /// A page of repository names after `after`.
    fn catalog(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Page, RegistryError>> + Send;

    /// Stores the `len` bytes of the file at `path` as blob `digest` in `repo`'s namespace.
    /// The gateway does not hash them: the cluster verifies the digest and answers
    /// [`RegistryError::DigestInvalid`], having stored nothing, when they do not match.
    /// Durable when this returns `Ok`.
    fn put_blob(
        &self,
        repo: &str,
        digest: &Digest,
        path: &Path,
        len: u64,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Stores blob `digest` of exactly `len` bytes in `repo`'s namespace from `body`, as
    /// the client sends it (a monolithic upload streamed through, with no copy on the
    /// gateway's disk). Verified and durable as [`Registry::put_blob`].
    ///
    /// An implementation takes nothing from `body` until the cluster is ready for it, so
    /// that an error it returns before then leaves `body` whole. `body` may yield fewer or
    /// more bytes than `len`, or fail (the client's upload broke off): then nothing is
    /// stored and the error is anything; the gateway knows why from `body` itself. When the
    /// cluster already holds the blob, `Ok` may come before `body` is read to its end.
    /// [`RegistryError::Unsupported`] before a byte is taken declines the stream: the
    /// gateway stages the body and calls [`Registry::put_blob`] instead.
    fn put_blob_stream(
        &self,
        repo: &str,
        digest: &Digest,
        len: u64,
        body: &mut UploadBody,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Passes the bytes of a chunked upload to `repo` on to the cluster as they arrive,
    /// before the client names their digest: `chunks` yields them in order and ends when
    /// the client has sent its last. `Ok` once the cluster holds all of them durably, as
    /// no blob yet: [`Registry::commit_staged`] names their digest. Any error (and the
    /// default, [`RegistryError::Unsupported`]) costs nothing but time: the gateway keeps
    /// its own copy of every chunk and sends it with [`Registry::put_blob`] instead.
    fn stage_blob(
        &self,
        repo: &str,
        chunks: StageChunks,
    ) -> impl Future<Output = Result<StagedUpload, RegistryError>> + Send {
        let _ = (repo, chunks);
        async {
            Err(RegistryError::Unsupported(
                "the cluster takes no staged uploads".into(),
            ))
        }
    }

    /// Stores the bytes [`Registry::stage_blob`] passed on as blob `digest` of `repo`,
    /// verified and durable as [`Registry::put_blob`]. Any error means nothing of it is
    /// acknowledged: the gateway sends its own copy with [`Registry::put_blob`].
    fn commit_staged(
        &self,
        repo: &str,
        staged: &StagedUpload,
        digest: &Digest,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send {
        let _ = (repo, staged, digest);
        async {
            Err(RegistryError::Unsupported(
                "the cluster takes no staged uploads".into(),
            ))
        }
    }

    /// Points `repo:tag` at `digest`; [`RegistryError::ManifestBlobUnknown`] names what is
    /// missing if the manifest references blobs the cluster lacks.
    fn put_tag(
        &self,
        repo: &str,
        tag: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Removes `repo:tag` ([`RegistryError::Unsupported`] where the cluster keeps tags
    /// forever).
    fn delete_tag(
        &self,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Lists the manifest `referrer` of `repo` among the referrers of `subject` (which need
    /// not exist), described by `descriptor` (a JSON object, as the referrers API lists
    /// it). Durable when this returns `Ok`; listing it again replaces the descriptor.
    fn put_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &str,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// The descriptors (JSON objects) of the referrers of `subject` in `repo`, each once,
    /// sorted by referrer digest; empty when there are none.
    fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
    ) -> impl Future<Output = Result<Vec<String>, RegistryError>> + Send;

    /// Forgets the referrer `referrer` of `subject` in `repo` (`Ok` if it was not listed):
    /// what deleting the referrer manifest does.
    fn delete_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;
    /// Links manifest `digest` (stored already) and every blob and child manifest it
    /// reaches to `repo`: what a manifest `PUT` by digest calls after storing it (a `PUT`
    /// by tag links through [`Registry::put_tag`]). [`RegistryError::ManifestBlobUnknown`]
    /// names what is missing. Nothing by default.
    fn link_manifest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send {
        let _ = (repo, digest);
        async { Ok(()) }
    }

    /// A cross-repository mount: `Ok(true)` when `from` links blob `digest` (it is now
    /// linked to `repo` too: 201), `Ok(false)` when it does not, or `from` does not exist
    /// (the gateway starts an upload session: 202). `Ok(false)` by default.
    fn mount_blob(
        &self,
        repo: &str,
        from: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send {
        let _ = (repo, from, digest);
        async { Ok(false) }
    }

    /// Deletes manifest `digest` from `repo`: the repository's tags pointing at it, its
    /// referrer entry, its link; the manifest leaves the cluster when no repository links
    /// it any more. [`RegistryError::TagUnknown`] (`MANIFEST_UNKNOWN`) when `repo` does not
    /// link it; [`RegistryError::Unsupported`] by default.
    fn delete_manifest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send {
        let _ = (repo, digest);
        async {
            Err(RegistryError::Unsupported(
                "manifests cannot be deleted".into(),
            ))
        }
    }

    /// Deletes blob `digest` from `repo` (its link; the blob leaves the cluster when no
    /// repository links it any more). [`RegistryError::BlobUnknown`] when `repo` does not
    /// link it; [`RegistryError::Unsupported`] by default.
    fn delete_blob(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send {
        let _ = (repo, digest);
        async { Err(RegistryError::Unsupported("blobs cannot be deleted".into())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_resolves_once_against_the_length_or_names_it() {
        assert_eq!(resolve_range(None, 10), Ok(0..10));
        assert_eq!(resolve_range(None, 0), Ok(0..0));
        assert_eq!(resolve_range(Some(ByteRange::Suffix(3)), 10), Ok(7..10));
        assert_eq!(resolve_range(Some(ByteRange::FromTo(2, 4)), 10), Ok(2..5));
        assert_eq!(
            resolve_range(Some(ByteRange::From(10)), 10),
            Err(RegistryError::RangeNotSatisfiable { total: 10 })
        );
    }
}
