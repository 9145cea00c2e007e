//! Piece streams: one piece per unidirectional stream, so pieces never block each other.
//!
//! A piece stream is a [`PieceHeader`] frame followed by exactly `header.len` bytes, then
//! the end of the stream. [`recv_piece`] checks the header against the blob's metainfo
//! before it reads a byte of the body (wrong blob, index out of range, wrong length: the
//! stream is stopped at once), reads the body into one buffer of the checked length while
//! hashing it with BLAKE3, and returns the bytes only if the hash matches. Unverified bytes
//! never leave this module.
//!
//! **Send order.** quinn shares a connection round-robin among streams of equal priority,
//! so the pieces queued to one peer would all arrive at the very end of their shared
//! transfer. Each piece stream gets a lower priority than the one opened before it
//! (`piece_priority`): a connection sends its pieces one after another, in the order they
//! were asked for, and each lands (and can be shared onwards, and asked for again by its
//! slot) as soon as its own bytes are through. Session and RPC streams keep quinn's default
//! priority 0, above every piece, so a request or a have never waits behind piece data.

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use kraken_storage::{Digest, Metainfo, PieceError, PieceHash};
use quinn::{RecvStream, VarInt};

use super::codes;
use super::stream::{StreamError, read_frame, write_frame};
use crate::limit::{LIMIT_CHUNK, RateLimiter};
use crate::wire::{PieceHeader, WireError};

/// Cap on a piece header frame's payload (a digest, an index and a length).
pub const MAX_PIECE_HEADER_LEN: usize = 256;

/// Bytes hashed per BLAKE3 update: large enough for its SIMD paths, small enough that the
/// hashing of a piece overlaps its arrival.
const HASH_BATCH: usize = 128 * 1024;

/// Why a piece could not be sent or was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PieceStreamError {
    /// No stream could be opened (the connection is gone).
    #[error("cannot open a piece stream: {0}")]
    Open(#[source] quinn::ConnectionError),
    /// The header names a length other than the bytes given (a bug of the sender).
    #[error("piece header says {header} bytes, {actual} given")]
    LengthMismatch {
        /// `header.len`.
        header: u32,
        /// Bytes given.
        actual: usize,
    },
    /// Reading or writing the stream failed, or the header frame is invalid.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The stream ended before a header.
    #[error("the stream ended before the piece header")]
    NoHeader,
    /// The piece belongs to another blob.
    #[error("piece of {got} arrived for {expected}")]
    WrongBlob {
        /// The blob the metainfo describes.
        expected: Digest,
        /// The blob the header names.
        got: Digest,
    },
    /// The header disagrees with the metainfo (index out of range, wrong length), or the
    /// bytes do not match the piece's hash.
    #[error(transparent)]
    BadPiece(#[from] PieceError),
    /// The stream ended before the whole piece arrived.
    #[error("the stream ended after {have} of {need} piece bytes")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// The piece's length.
        need: usize,
    },
    /// Bytes followed the piece.
    #[error("bytes follow the piece")]
    TrailingBytes,
}

impl PieceStreamError {
    /// Whether the sending peer is at fault (it sent something the metainfo rules out, or
    /// broke the stream format); the swarm blacklists such peers. Connection and local
    /// errors are not the peer's fault.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            PieceStreamError::Stream(e) => e.reply_code().is_some(),
            PieceStreamError::NoHeader
            | PieceStreamError::WrongBlob { .. }
            | PieceStreamError::BadPiece(_)
            | PieceStreamError::Truncated { .. }
            | PieceStreamError::TrailingBytes => true,
            PieceStreamError::Open(_) | PieceStreamError::LengthMismatch { .. } => false,
        }
    }

    /// The stream code a receiver answers this error with.
    fn reply_code(&self) -> VarInt {
        match self {
            PieceStreamError::Stream(e) => e.reply_code().unwrap_or(codes::INTERNAL),
            PieceStreamError::NoHeader | PieceStreamError::Truncated { .. } => codes::TRUNCATED,
            _ => codes::BAD_PIECE,
        }
    }
}

/// The send priority of the next piece stream: -1 for the first, then one lower for each
/// (see the module's § Send order). After 2^30 pieces it wraps back to -1: the pieces in
/// flight at that moment go out in another order, once, which is harmless.
fn piece_priority() -> i32 {
    static OPENED: AtomicU32 = AtomicU32::new(0);
    let n = OPENED.fetch_add(1, Ordering::Relaxed) & PRIORITY_SPAN;
    // `n` is below 2^30: no overflow.
    -1 - n as i32
}

/// Piece priorities run from -1 down to `-1 - PRIORITY_SPAN`.
const PRIORITY_SPAN: u32 = (1 << 30) - 1;

/// Sends one piece on a new unidirectional stream: the header frame, the bytes (without
/// copying them), and the end of the stream. Returns once the peer acknowledged every
/// byte; a peer that refused or rejected the piece stopped the stream, which is
/// `Stream(Stopped { code })`. See
/// [`send_piece_limited`] for the same under a bandwidth limit.
pub async fn send_piece(
    conn: &quinn::Connection,
    header: PieceHeader,
    bytes: Bytes,
) -> Result<(), PieceStreamError> {
    send_piece_limited(conn, header, bytes, None).await
}

/// [`send_piece`] under a bandwidth limit: the bytes go out in chunks of
/// [`LIMIT_CHUNK`], each after `limiter` admitted it (the
/// header frame is not counted). Without a limiter the piece is written in one go, exactly
/// as [`send_piece`] does.
pub async fn send_piece_limited(
    conn: &quinn::Connection,
    header: PieceHeader,
    bytes: Bytes,
    limiter: Option<&RateLimiter>,
) -> Result<(), PieceStreamError> {
    if bytes.len() != header.len as usize {
        return Err(PieceStreamError::LengthMismatch {
            header: header.len,
            actual: bytes.len(),
        });
    }
    let mut guard = Unfinished {
        stream: conn.open_uni().await.map_err(PieceStreamError::Open)?,
        delivered: false,
    };
    let send = &mut guard.stream;
    // Fails only on a stream already closed, which the write below reports.
    let _ = send.set_priority(piece_priority());
    write_frame(send, &header).await?;
    match limiter {
        None => send.write_chunk(bytes).await.map_err(StreamError::from)?,
        Some(limiter) => {
            let mut rest = bytes;
            while !rest.is_empty() {
                let chunk = rest.split_to(rest.len().min(LIMIT_CHUNK));
                limiter.acquire(chunk.len() as u64).await;
                send.write_chunk(chunk).await.map_err(StreamError::from)?;
            }
        }
    }
    send.finish().map_err(|_| StreamError::ClosedStream)?;
    // Sent means received: quinn takes a whole piece into its buffers at once, and a
    // sender that moved on then would have every piece of its queue on the wire at once,
    // sharing the link so thinly that none finishes in time. Waiting for the peer's
    // acknowledgement of every byte is what lets upload slots bound transfers.
    match send.stopped().await {
        Ok(None) => {}
        Ok(Some(code)) if code == codes::STREAM_DONE => {}
        Ok(Some(code)) => return Err(StreamError::Stopped { code }.into()),
        Err(quinn::StoppedError::ConnectionLost(e)) => return Err(StreamError::from(e).into()),
        Err(quinn::StoppedError::ZeroRttRejected) => {
            return Err(StreamError::ZeroRttRejected.into());
        }
    }
    guard.delivered = true;
    Ok(())
}

/// A piece stream being written. If it is dropped before the peer has it all (an error,
/// the caller's timeout, a shutdown) it is reset with [`codes::ABANDONED`]: quinn would
/// finish it, and a finished short piece reads as a truncated one, which is the sender's
/// fault and gets it blacklisted, when it was only given up on.
struct Unfinished {
    stream: quinn::SendStream,
    /// Set once the peer has every byte; a reset after that is meaningless.
    delivered: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.delivered {
            let _ = self.stream.reset(codes::ABANDONED);
        }
    }
}

/// Receives one piece from a stream the peer opened and verifies it against `expected`.
///
/// Returns the header and the piece's bytes only if the header names this blob, an existing
/// index and that piece's exact length, exactly that many bytes arrive and the stream then
/// ends, and their BLAKE3 hash matches the metainfo. On any error the stream is stopped
/// with a code from [`codes`] ([`codes::BAD_PIECE`] for a piece that disagrees with the
/// metainfo) and nothing of the body is returned.
pub async fn recv_piece(
    mut recv: RecvStream,
    expected: &Metainfo,
) -> Result<(PieceHeader, Bytes), PieceStreamError> {
    let result = read_verified(&mut recv, expected).await;
    if let Err(e) = &result {
        let _ = recv.stop(e.reply_code());
    }
    result
}

async fn read_verified(
    recv: &mut RecvStream,
    metainfo: &Metainfo,
) -> Result<(PieceHeader, Bytes), PieceStreamError> {
    let header: PieceHeader = read_frame(recv, MAX_PIECE_HEADER_LEN)
        .await?
        .ok_or(PieceStreamError::NoHeader)?;
    if header.digest != *metainfo.digest() {
        return Err(PieceStreamError::WrongBlob {
            expected: *metainfo.digest(),
            got: header.digest,
        });
    }
    let size = metainfo
        .piece_size(header.index)
        .ok_or(PieceError::OutOfRange {
            index: header.index,
            count: metainfo.piece_count(),
        })?;
    if header.len != size {
        return Err(PieceError::WrongSize {
            index: header.index,
            expected: size,
            actual: header.len as usize,
        }
        .into());
    }

    // `size` comes from the metainfo (at most MAX_PIECE_LENGTH), not from the peer.
    let len = size as usize;
    let mut buf = Vec::with_capacity(len);
    let mut hasher = blake3::Hasher::new();
    let mut hashed = 0;
    while buf.len() < len {
        // Never more than the piece still needs: the buffer cannot grow past `len`.
        match recv
            .read_chunk(len - buf.len(), true)
            .await
            .map_err(StreamError::from)?
        {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None => {
                return Err(PieceStreamError::Truncated {
                    have: buf.len(),
                    need: len,
                });
            }
        }
        if buf.len() - hashed >= HASH_BATCH || buf.len() == len {
            hasher.update(&buf[hashed..]);
            hashed = buf.len();
        }
    }
    let mut probe = [0u8; 1];
    if recv
        .read(&mut probe)
        .await
        .map_err(StreamError::from)?
        .is_some()
    {
        return Err(PieceStreamError::TrailingBytes);
    }
    metainfo.check_piece_hash(header.index, &PieceHash(*hasher.finalize().as_bytes()))?;
    Ok((header, Bytes::from(buf)))
}

impl From<WireError> for PieceStreamError {
    fn from(e: WireError) -> Self {
        PieceStreamError::Stream(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_piece_stream_ranks_below_the_one_before_and_below_control_streams() {
        let first = piece_priority();
        let second = piece_priority();
        let third = piece_priority();
        // Other tests may open piece streams meanwhile: only the order is certain.
        assert!(first > second && second > third, "{first} {second} {third}");
        assert!(first < 0, "session and RPC streams (priority 0) go first");
        assert!(third >= -1 - PRIORITY_SPAN as i32, "no overflow");
    }
}
