//! QUIC application error codes of `kraken/1`.
//!
//! Stream codes travel in `RESET_STREAM` / `STOP_SENDING` and close one stream; connection
//! codes travel in `CONNECTION_CLOSE` and end the connection. The two spaces are separate
//! in QUIC, but the numbers here do not overlap so that a code in a log names its meaning
//! without context. Codes are part of the protocol: never renumber, only add.

use quinn::VarInt;

use crate::wire::WireError;

/// Stream: the receiver needs no more bytes (used by `STOP_SENDING` after a complete read).
pub const STREAM_DONE: VarInt = VarInt::from_u32(0);
/// Stream: a frame did not decode (bad postcard, trailing bytes, protocol violation).
pub const MALFORMED: VarInt = VarInt::from_u32(1);
/// Stream: a frame's length prefix exceeded the cap.
pub const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(2);
/// Stream: the stream ended inside a frame or before a required frame.
pub const TRUNCATED: VarInt = VarInt::from_u32(3);
/// Stream: a message or stream kind this node does not know.
pub const UNKNOWN_KIND: VarInt = VarInt::from_u32(4);
/// Stream: the opener speaks another protocol version.
pub const UNSUPPORTED_VERSION: VarInt = VarInt::from_u32(5);
/// Stream: this node serves no such stream (e.g. sessions on a node without a swarm).
pub const UNSUPPORTED_STREAM: VarInt = VarInt::from_u32(6);
/// Stream: the opener was too slow to send its header and request.
pub const TIMEOUT: VarInt = VarInt::from_u32(7);
/// Stream: a piece did not match the metainfo (wrong blob, index, length or hash).
pub const BAD_PIECE: VarInt = VarInt::from_u32(8);
/// Stream: the handler failed for a reason of its own.
pub const INTERNAL: VarInt = VarInt::from_u32(9);
/// Stream: the request was understood but refused (busy, not found, not allowed).
pub const REFUSED: VarInt = VarInt::from_u32(10);
/// Stream: the sender gave up on the stream before its end (a timeout, a shutdown); what
/// arrived is incomplete, but nothing in it was wrong.
pub const ABANDONED: VarInt = VarInt::from_u32(11);

/// Connection: orderly shutdown of a node or pool.
pub const CONN_SHUTDOWN: VarInt = VarInt::from_u32(0x100);
/// Connection: the peer opened too many bad streams.
pub const CONN_ABUSE: VarInt = VarInt::from_u32(0x101);
/// Connection: the peer's certificate is unusable as a cluster identity.
pub const CONN_BAD_IDENTITY: VarInt = VarInt::from_u32(0x102);
/// Connection: the peer dialed us again, so this older connection is one it lost (it
/// restarted, or timed it out first); the new connection replaces it.
pub const CONN_SUPERSEDED: VarInt = VarInt::from_u32(0x103);

/// The stream code that answers a frame error.
pub fn for_wire_error(e: &WireError) -> VarInt {
    match e {
        WireError::FrameTooLarge { .. } => FRAME_TOO_LARGE,
        WireError::Truncated { .. } => TRUNCATED,
        WireError::UnknownKind => UNKNOWN_KIND,
        WireError::UnsupportedVersion { .. } => UNSUPPORTED_VERSION,
        WireError::Malformed(_) | WireError::TrailingBytes(_) | WireError::Violation(_) => {
            MALFORMED
        }
    }
}

/// A short name for a stream or connection code, for logs and error messages.
pub fn name(code: VarInt) -> &'static str {
    match code.into_inner() {
        0 => "done",
        1 => "malformed",
        2 => "frame too large",
        3 => "truncated",
        4 => "unknown kind",
        5 => "unsupported version",
        6 => "unsupported stream",
        7 => "timeout",
        8 => "bad piece",
        9 => "internal",
        10 => "refused",
        11 => "abandoned",
        0x100 => "shutdown",
        0x101 => "abuse",
        0x102 => "bad identity",
        0x103 => "superseded",
        _ => "unknown code",
    }
}
