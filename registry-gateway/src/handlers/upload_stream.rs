//! Monolithic uploads streamed through: a blob whose whole body comes in one request with
//! a `Content-Length` (`POST ?digest=`, or the `PUT ?digest=` of a session that holds no
//! bytes yet) goes to the cluster while the client is still sending it
//! ([`Registry::put_blob_stream`]), with no copy on the gateway's disk and no hash here:
//! the cluster verifies the digest in the one pass that stores the blob.
//!
//! [`ClientBody`] stands between the request body and the cluster: it counts the bytes,
//! refuses more or fewer than the `Content-Length`, and remembers why the client's body
//! failed, so that an error is blamed on the right side: the client's body
//! (`BLOB_UPLOAD_INVALID`, `SIZE_INVALID`), the content (`DIGEST_INVALID`), or the cluster
//! (`UNAVAILABLE`, with `Retry-After`, when an owner failed mid-body and the client may send
//! it again).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, BodyDataStream};
use axum::http::header::{CONTENT_LENGTH, CONTENT_RANGE};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use kraken_storage::Digest;

use super::Ctx;
use crate::error::ApiError;
use crate::range::parse_chunk_range;
use crate::registry::{Registry, RegistryError};
use crate::server::Gateway;
use crate::uploads::UploadError;

/// The length of a request body that can be streamed through: its `Content-Length`, when
/// there is one and any `Content-Range` says the body is the whole blob. `None` (staged
/// instead) for a chunked transfer encoding, or a range the session checks and refuses.
pub(crate) fn whole_body_length(ctx: &Ctx) -> Option<u64> {
    let len: u64 = ctx.header(CONTENT_LENGTH)?.parse().ok()?;
    match ctx.header(CONTENT_RANGE) {
        None => Some(len),
        Some(v) => {
            let r = parse_chunk_range(v)?;
            (r.start == 0 && r.end - r.start == len).then_some(len)
        }
    }
}

/// How a streamed upload failed.
#[derive(Debug)]
pub(crate) enum StreamFailure {
    /// The client's body broke off or had the wrong length: nothing is stored.
    Body(UploadError),
    /// The cluster refused or failed: nothing is stored.
    Cluster(RegistryError),
}

impl StreamFailure {
    /// Whether the same upload may succeed if sent again (so a session should be kept).
    pub(crate) fn retryable(&self) -> bool {
        !matches!(
            self,
            StreamFailure::Cluster(RegistryError::DigestInvalid(_))
        )
    }
}

/// What became of a body offered to the cluster as a stream.
pub(crate) enum Streamed {
    /// Stored (the bytes received are counted in the upload metrics).
    Stored,
    /// The cluster cannot take a stream (an origin from before the streaming ingest) and
    /// read none of it: here is the body back, to be staged and sent with `put_blob`.
    Declined(Body),
}

/// Streams `body`, of `len` bytes by its `Content-Length`, to the cluster as blob `digest`
/// of `repo`.
pub(crate) async fn stream_blob<R: Registry>(
    gw: &Gateway<R>,
    repo: &str,
    digest: &Digest,
    len: u64,
    body: Body,
) -> Result<Streamed, StreamFailure> {
    let mut body = ClientBody::new(body, len);
    let stored = gw
        .registry
        .put_blob_stream(repo, digest, len, &mut body)
        .await;
    if let Some(e) = body.failure.take() {
        return Err(StreamFailure::Body(e));
    }
    match stored {
        Err(RegistryError::Unsupported(why)) if body.received == 0 => {
            tracing::debug!(why, "the cluster takes no streamed upload; staging it");
            return Ok(Streamed::Declined(Body::from_stream(body.inner)));
        }
        stored => stored.map_err(StreamFailure::Cluster)?,
    }
    // The cluster had the blob and needed no more: read the rest, so that the client
    // hears 201 on a connection it can keep rather than a reset mid-send.
    while let Some(chunk) = body.next().await {
        if chunk.is_err() {
            break;
        }
    }
    gw.config.metrics.add_upload_bytes(body.received);
    Ok(Streamed::Stored)
}

/// A request body as the cluster reads it: exactly `len` bytes, or an error.
pub(crate) struct ClientBody {
    inner: BodyDataStream,
    len: u64,
    received: u64,
    /// Why the body was refused, once it was; the stream then ends.
    failure: Option<UploadError>,
    done: bool,
}

impl ClientBody {
    fn new(body: Body, len: u64) -> Self {
        ClientBody {
            inner: body.into_data_stream(),
            len,
            received: 0,
            failure: None,
            done: false,
        }
    }

    fn refuse(&mut self, e: UploadError) -> Poll<Option<io::Result<Bytes>>> {
        let message = e.to_string();
        self.failure = Some(e);
        self.done = true;
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            message,
        ))))
    }
}

impl Stream for ClientBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.received += chunk.len() as u64;
                if self.received > self.len {
                    let (expected, got) = (self.len, self.received);
                    return self.refuse(UploadError::Length { expected, got });
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => self.refuse(UploadError::Body(e)),
            Poll::Ready(None) if self.received < self.len => {
                let (expected, got) = (self.len, self.received);
                self.refuse(UploadError::Length { expected, got })
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }
}

/// The API error of a failed streamed upload.
pub(crate) fn stream_error(e: StreamFailure, name: &str, id: &str) -> ApiError {
    match e {
        StreamFailure::Body(e) => super::uploads::upload_error(e, name, id),
        StreamFailure::Cluster(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(body: Body, len: u64) -> (Vec<io::Result<Bytes>>, Option<UploadError>) {
        let mut b = ClientBody::new(body, len);
        let mut items = Vec::new();
        while let Some(item) = b.next().await {
            items.push(item);
        }
        (items, b.failure)
    }

    #[tokio::test]
    async fn client_bodies_are_held_to_their_length() {
        let (items, failure) = drain(Body::from("hello"), 5).await;
        assert_eq!(items.len(), 1);
        assert!(failure.is_none());
        let (items, failure) = drain(Body::from("hello"), 4).await;
        assert!(items.last().unwrap().is_err());
        assert!(matches!(
            failure,
            Some(UploadError::Length {
                expected: 4,
                got: 5
            })
        ));
        let (items, failure) = drain(Body::from("hello"), 6).await;
        assert!(items[0].is_ok() && items[1].is_err());
        assert!(matches!(
            failure,
            Some(UploadError::Length {
                expected: 6,
                got: 5
            })
        ));
    }
}
