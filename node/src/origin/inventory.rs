//! What garbage collection asks of an origin: a page of its store's complete blobs
//! ([`Request::ListBlobs`](crate::proto::Request::ListBlobs)), and a touch of the blobs a
//! tag's dependency check found ([`Request::TouchBlobs`](crate::proto::Request::TouchBlobs)):
//! a touched blob counts as used now, so a collection that started earlier keeps it.
//! Listing names each referrer's `subject`, which marking needs to keep referrers.

use std::io::Read;
use std::time::UNIX_EPOCH;

use kraken_registry_gateway::media;
use kraken_storage::Digest;
use kraken_storage::cas::BlobState;

use super::{Origin, internal};
use crate::buildindex::gc::mark::edges;
use crate::proto::{BlobEntry, Response};

/// Largest page of [`Origin::list_blobs`].
pub const MAX_PAGE: u32 = 1000;

impl Origin {
    /// Up to `limit` complete blobs after `after`, ordered by digest.
    pub(super) fn list_blobs(&self, after: Option<&Digest>, limit: u32) -> Response {
        let n = limit.clamp(1, MAX_PAGE) as usize;
        let page = match self.cas().list_page(after, n + 1) {
            Ok(page) => page,
            Err(e) => return Response::Error(internal(e)),
        };
        let next = (page.len() > n).then(|| page[n - 1].digest);
        let blobs = page
            .into_iter()
            .take(n)
            // A partial blob is a download or read-through in progress: never garbage.
            .filter(|info| info.state == BlobState::Complete)
            .map(|info| BlobEntry {
                digest: info.digest,
                length: info.size,
                last_used_ms: info
                    .last_access
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                subject: self.subject_of(&info.digest, info.size),
            })
            .collect();
        Response::Blobs { blobs, next }
    }

    /// The `subject` of a small blob that is a manifest naming one. The file is read
    /// directly, not through a reader, which would count as a use and keep the blob.
    fn subject_of(&self, digest: &Digest, size: u64) -> Option<Digest> {
        if size > media::MAX_MANIFEST_LEN {
            return None;
        }
        let mut file = std::fs::File::open(self.cas().blob_path(digest)).ok()?;
        let mut first = [0u8; 1];
        // Layers and most configs are no JSON object: skip them after one byte.
        if file.read_exact(&mut first).is_err() || first[0] != b'{' {
            return None;
        }
        let mut bytes = vec![b'{'];
        file.read_to_end(&mut bytes).ok()?;
        edges(&bytes)?.subject
    }

    /// Marks the blobs this origin holds as used now.
    pub(super) fn touch_blobs(&self, digests: &[Digest]) -> Response {
        let mut held = 0;
        for digest in digests {
            match self.cas().contains(digest) {
                Ok(true) => {
                    self.cas().touch(digest);
                    held += 1;
                }
                Ok(false) => {}
                Err(e) => return Response::Error(internal(e)),
            }
        }
        Response::Touched { held }
    }
}
