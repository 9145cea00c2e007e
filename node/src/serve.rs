//! Sending a complete local blob (or a range of it) as an RPC response body: the
//! `Download` request, served by origins (repair, `krakenctl`) and agents (`krakenctl pull`).

use std::io::SeekFrom;

use kraken_storage::Digest;
use kraken_storage::cas::{Cas, CasError};
use kraken_transport::quic::BiStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::proto::{ErrorKind, RemoteError, Response};

/// Chunk size of the body.
const CHUNK: usize = 256 * 1024;

/// Answers `Download { digest, offset, len }` from `cas` on `stream`: a `Content` frame,
/// then the bytes, then the end of the stream.
pub async fn download(cas: &Cas, digest: &Digest, offset: u64, len: u64, stream: &mut BiStream) {
    let reader = match cas.reader(digest) {
        Ok(r) => r,
        Err(CasError::NotFound(_)) => {
            let e = RemoteError::new(ErrorKind::NotFound, format!("{digest} is not held here"));
            let _ = stream.respond(&Response::Error(e)).await;
            let _ = stream.finish();
            return;
        }
        Err(e) => {
            let e = RemoteError::new(ErrorKind::Internal, e.to_string());
            let _ = stream.respond(&Response::Error(e)).await;
            let _ = stream.finish();
            return;
        }
    };
    let total = reader.len();
    if offset > total {
        let e = RemoteError::new(
            ErrorKind::BadRequest,
            format!("offset {offset} is past the end of {digest} ({total} bytes)"),
        );
        let _ = stream.respond(&Response::Error(e)).await;
        let _ = stream.finish();
        return;
    }
    let len = if len == 0 {
        total - offset
    } else {
        len.min(total - offset)
    };
    if stream
        .respond(&Response::Content { len, total })
        .await
        .is_err()
    {
        return;
    }
    let file = match reader.file().try_clone() {
        Ok(f) => f,
        Err(_) => {
            let _ = stream.send.reset(kraken_transport::quic::codes::INTERNAL);
            return;
        }
    };
    let mut file = tokio::fs::File::from_std(file);
    if file.seek(SeekFrom::Start(offset)).await.is_err() {
        let _ = stream.send.reset(kraken_transport::quic::codes::INTERNAL);
        return;
    }
    let mut left = len;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        match file.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => {
                let _ = stream.send.reset(kraken_transport::quic::codes::INTERNAL);
                return;
            }
            Ok(n) => {
                if stream.send.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                left -= n as u64;
            }
        }
    }
    // The reader (and so the blob) stays pinned against eviction until the last byte.
    drop(reader);
    let _ = stream.finish();
}
