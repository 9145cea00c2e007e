//! Frame I/O on quinn streams: [`write_frame`], [`read_frame`], [`read_message`] and their
//! error, [`StreamError`].
//!
//! Frames are those of [`wire::frame`](crate::wire::frame): a 4-byte big-endian length and a
//! postcard payload. [`read_frame`] checks the length against the caller's cap with
//! [`payload_len`] before it allocates, and tells a clean end of stream (no byte of a new
//! frame) from a truncated frame.

use quinn::{ReadError, ReadExactError, RecvStream, SendStream, VarInt, WriteError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codes;
use crate::wire::{
    LEN_PREFIX, MessageKind, WireError, decode_message, decode_payload, encode_frame, payload_len,
};

/// Why a frame could not be read from or written to a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The bytes are not a valid frame or message (too large, truncated, malformed,
    /// unknown kind, wrong version).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer reset its sending side with this code (see [`codes`]).
    #[error("the peer reset the stream: {} ({code})", codes::name(*code))]
    Reset {
        /// The peer's application error code.
        code: VarInt,
    },
    /// The peer stopped reading with this code (see [`codes`]).
    #[error("the peer stopped the stream: {} ({code})", codes::name(*code))]
    Stopped {
        /// The peer's application error code.
        code: VarInt,
    },
    /// The connection ended.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] quinn::ConnectionError),
    /// The stream was already finished, reset or stopped on this side.
    #[error("the stream is already closed")]
    ClosedStream,
    /// 0-RTT data was rejected by the peer (0-RTT is not used by this crate).
    #[error("0-rtt data was rejected")]
    ZeroRttRejected,
}

impl StreamError {
    /// The stream code to answer this error with when it came from the peer's bytes, or
    /// `None` when the stream is already gone (reset, stopped, connection lost).
    pub fn reply_code(&self) -> Option<VarInt> {
        match self {
            StreamError::Wire(e) => Some(codes::for_wire_error(e)),
            _ => None,
        }
    }
}

impl From<ReadError> for StreamError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Reset(code) => StreamError::Reset { code },
            ReadError::ConnectionLost(e) => StreamError::ConnectionLost(e),
            ReadError::ClosedStream => StreamError::ClosedStream,
            ReadError::ZeroRttRejected => StreamError::ZeroRttRejected,
            // Only unordered reads after ordered ones; this crate reads in order.
            ReadError::IllegalOrderedRead => StreamError::ClosedStream,
        }
    }
}

impl From<WriteError> for StreamError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Stopped(code) => StreamError::Stopped { code },
            WriteError::ConnectionLost(e) => StreamError::ConnectionLost(e),
            WriteError::ClosedStream => StreamError::ClosedStream,
            WriteError::ZeroRttRejected => StreamError::ZeroRttRejected,
        }
    }
}

/// Writes `msg` as one frame.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), StreamError> {
    let frame = encode_frame(msg)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame of at most `max` payload bytes and decodes it.
///
/// `Ok(None)` means the stream ended cleanly before the first byte of a frame. A stream
/// that ends inside a frame is [`WireError::Truncated`]; a length above `max` is
/// [`WireError::FrameTooLarge`], reported before any payload byte is read or allocated.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<T>, StreamError> {
    match read_payload(recv, max).await? {
        Some(payload) => Ok(Some(decode_payload(&payload)?)),
        None => Ok(None),
    }
}

/// [`read_frame`] for protocol enums, reporting a variant this build does not know as
/// [`WireError::UnknownKind`] rather than as malformed bytes.
pub async fn read_message<T: DeserializeOwned + MessageKind>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<T>, StreamError> {
    match read_payload(recv, max).await? {
        Some(payload) => Ok(Some(decode_message(&payload)?)),
        None => Ok(None),
    }
}

/// One frame's payload, its length checked against `max` before allocating.
async fn read_payload(recv: &mut RecvStream, max: usize) -> Result<Option<Vec<u8>>, StreamError> {
    let mut prefix = [0u8; LEN_PREFIX];
    let mut have = 0;
    while have < LEN_PREFIX {
        match recv.read(&mut prefix[have..]).await? {
            Some(n) => have += n,
            None if have == 0 => return Ok(None),
            None => {
                return Err(WireError::Truncated {
                    have,
                    need: LEN_PREFIX,
                }
                .into());
            }
        }
    }
    let len = payload_len(prefix, max)?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.map_err(|e| match e {
        ReadExactError::FinishedEarly(got) => StreamError::Wire(WireError::Truncated {
            have: LEN_PREFIX + got,
            need: LEN_PREFIX + len,
        }),
        ReadExactError::ReadError(e) => e.into(),
    })?;
    Ok(Some(payload))
}

/// Closes both halves of a bidirectional stream with `code` (a `RESET_STREAM` for what we
/// would send, a `STOP_SENDING` for what the peer sends). Already closed halves are fine.
pub fn abort(send: &mut SendStream, recv: &mut RecvStream, code: VarInt) {
    let _ = send.reset(code);
    let _ = recv.stop(code);
}
