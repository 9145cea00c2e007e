//! Length-prefixed postcard frames: the unit of every control message on a stream.
//!
//! A frame is a 4-byte big-endian payload length followed by the postcard payload. The
//! length is checked against a hard cap before any buffer is sized by it, so a peer cannot
//! make us allocate more than the cap; [`FrameDecoder`] is sans-IO (push bytes, pull frames)
//! so the same code serves quinn streams, tests and fuzzers.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Default cap on a control frame's payload: large enough for the bitfield of the largest
/// blob (32 KiB) with room to spare, small enough that a hostile peer costs little.
pub const MAX_FRAME_LEN: usize = 256 * 1024;

/// Why bytes are not a valid frame or message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix announces more than the cap.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Announced payload length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: {have} of {need} bytes")]
    Truncated {
        /// Bytes received of the frame (prefix included).
        have: usize,
        /// Bytes the frame needs (prefix included).
        need: usize,
    },
    /// A message kind this node does not know (a newer peer, or garbage).
    #[error("unknown message kind")]
    UnknownKind,
    /// The payload is not a valid message (or a message could not be encoded).
    #[error("malformed message: {0}")]
    Malformed(#[source] postcard::Error),
    /// The payload has bytes after the message.
    #[error("message is followed by {0} unexpected bytes")]
    TrailingBytes(usize),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {got}, this node speaks {expected}")]
    UnsupportedVersion {
        /// The peer's version.
        got: u16,
        /// Ours.
        expected: u16,
    },
    /// A message that is valid on its own but not allowed here (e.g. a second handshake).
    #[error("protocol violation: {0}")]
    Violation(&'static str),
}

/// Encodes `msg` as one frame (prefix + payload).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    // Serialize after a placeholder prefix, then fill it in: one allocation, no copy.
    let mut out = postcard::to_extend(msg, vec![0u8; LEN_PREFIX]).map_err(WireError::Malformed)?;
    let len = out.len() - LEN_PREFIX;
    if len > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // len <= MAX_FRAME_LEN fits in u32.
    out[..LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// A message enum whose encoding starts with its variant index (postcard's varint), so an
/// index past the last known variant can be reported as [`WireError::UnknownKind`] rather
/// than as malformed bytes.
pub trait MessageKind {
    /// Number of variants this build knows.
    const KINDS: u32;
}

/// Decodes one message payload (without its prefix), rejecting trailing bytes. Enums
/// implementing [`MessageKind`] get [`WireError::UnknownKind`] for an unknown variant.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(map_postcard)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Like [`decode_payload`], reporting an unknown variant index as such.
pub fn decode_message<T: DeserializeOwned + MessageKind>(payload: &[u8]) -> Result<T, WireError> {
    // The variant index is a LEB128 varint; one byte covers every index below 128.
    if let Some(&first) = payload.first()
        && first < 0x80
        && u32::from(first) >= T::KINDS
    {
        return Err(WireError::UnknownKind);
    }
    decode_payload(payload)
}

fn map_postcard(e: postcard::Error) -> WireError {
    match e {
        postcard::Error::DeserializeBadEnum => WireError::UnknownKind,
        other => WireError::Malformed(other),
    }
}

/// Reads the payload length from a prefix, checking it against `max`.
pub fn payload_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    Ok(len)
}

/// Sans-IO frame splitter: push received bytes, pull whole payloads.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder accepting payloads of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete payload, `None` if more bytes are needed. An oversized prefix is
    /// an error at once, before its bytes arrive.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let Some(prefix) = self.buf.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let mut p = [0u8; LEN_PREFIX];
        p.copy_from_slice(prefix);
        let len = payload_len(p, self.max)?;
        if self.buf.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let payload = self.buf[LEN_PREFIX..LEN_PREFIX + len].to_vec();
        self.buf.drain(..LEN_PREFIX + len);
        Ok(Some(payload))
    }

    /// The next complete message.
    pub fn next_message<T: DeserializeOwned + MessageKind>(
        &mut self,
    ) -> Result<Option<T>, WireError> {
        self.next_payload()?.map(|p| decode_message(&p)).transpose()
    }

    /// Call at end of stream: an incomplete frame is an error.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = match self.buf.get(..LEN_PREFIX) {
            Some(prefix) => {
                let mut p = [0u8; LEN_PREFIX];
                p.copy_from_slice(prefix);
                LEN_PREFIX + u32::from_be_bytes(p) as usize
            }
            None => LEN_PREFIX,
        };
        Err(WireError::Truncated {
            have: self.buf.len(),
            need,
        })
    }
}
