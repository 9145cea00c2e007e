//! The streams peers open towards the exchange: sessions for a blob
//! ([`PieceExchange::accept_session`]) and pieces we asked for
//! ([`PieceExchange::accept_piece`]), each handed to its blob's task.

use kraken_storage::Digest;
use quinn::RecvStream;
use tokio::sync::mpsc::error::SendError;

use super::task::Input;
use super::{BlobHandle, PieceExchange, Tracker};
use crate::quic::{BiStream, StreamOutcome, codes, read_frame};
use crate::wire::{PeerId, PieceHeader};

/// The most bytes a piece stream's header may take.
const MAX_PIECE_HEADER: usize = 1024;

impl<T: Tracker> PieceExchange<T> {
    /// Serves a session stream a peer opened for `digest` (from the node's
    /// `Service::session`). Seeds complete local blobs on demand.
    pub async fn accept_session(
        &self,
        peer: PeerId,
        digest: Digest,
        stream: BiStream,
    ) -> StreamOutcome {
        let handle = match self.running_or_seeded(&digest) {
            Ok(h) => h,
            Err(code) => {
                stream.reject(code);
                return StreamOutcome::Done;
            }
        };
        let Some(conn) = self.inner.pool.get(&peer) else {
            stream.reject(codes::INTERNAL);
            return StreamOutcome::Done;
        };
        let input = Input::Session {
            peer,
            conn,
            stream,
            outbound: false,
        };
        if let Err(SendError(Input::Session { stream, .. })) = handle.tx.send(input).await {
            stream.reject(codes::REFUSED);
        }
        StreamOutcome::Done
    }

    /// Serves a unidirectional stream a peer opened (from the node's `Service::uni_stream`):
    /// a piece for one of our downloads.
    pub async fn accept_piece(&self, peer: PeerId, mut recv: RecvStream) -> StreamOutcome {
        let header: PieceHeader = match read_frame(&mut recv, MAX_PIECE_HEADER).await {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => {
                let _ = recv.stop(codes::MALFORMED);
                return StreamOutcome::Misbehaved;
            }
        };
        let handle = self.lock().get(&header.digest).cloned();
        match handle {
            Some(h) if header.index.0 < h.metainfo.piece_count() => {
                if let Err(SendError(Input::IncomingPiece { mut recv, .. })) =
                    h.tx.send(Input::IncomingPiece { peer, header, recv }).await
                {
                    let _ = recv.stop(codes::REFUSED);
                }
                StreamOutcome::Done
            }
            Some(_) => {
                let _ = recv.stop(codes::BAD_PIECE);
                StreamOutcome::Misbehaved
            }
            None => {
                let _ = recv.stop(codes::REFUSED);
                StreamOutcome::Done
            }
        }
    }

    /// The blob's running task, or a new one seeding it if it is complete here; else the
    /// code to refuse a session with.
    fn running_or_seeded(&self, digest: &Digest) -> Result<BlobHandle, quinn::VarInt> {
        if let Some(h) = self.running(digest) {
            return Ok(h);
        }
        match self.seed(digest) {
            Ok(()) => self.lock().get(digest).cloned().ok_or(codes::INTERNAL),
            Err(_) => Err(codes::REFUSED),
        }
    }
}
