//! The `kraken/1` wire format: framing ([`frame`]) and messages ([`messages`]).
//!
//! Everything here is pure and decodes untrusted bytes without panicking or allocating
//! by an unchecked length; the fuzz targets in the workspace's `fuzz/` and the property
//! tests exercise every decoder.

pub mod frame;
pub mod messages;

pub use frame::{
    FrameDecoder, LEN_PREFIX, MAX_FRAME_LEN, MessageKind, WireError, decode_message,
    decode_payload, encode_frame, payload_len,
};
pub use messages::{ALPN, PROTOCOL_VERSION, PeerId, PeerMessage, PieceHeader, StreamHeader};
