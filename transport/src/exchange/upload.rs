//! Uploads: a piece the swarm chose to send is read from storage on the blocking pool
//! and sent on its own stream, given up at the swarm's deadline, so neither a slow disk
//! nor a slow peer holds up the blob task.

use std::time::Instant;

use kraken_storage::cas::{CasError, PieceSource};
use kraken_storage::{Digest, PieceIndex};
use tokio::sync::mpsc;
use tokio::task::JoinError;
use tokio::time::error::Elapsed;

use super::Tracker;
use super::task::{BlobTask, Input, Store};
use crate::limit::RateLimiter;
use crate::quic::{PeerConnection, PieceStreamError, send_piece_limited};
use crate::wire::{PeerId, PieceHeader};

impl<T: Tracker> BlobTask<T> {
    /// Sends piece `index` to `to` in the background, by `deadline`; the outcome comes
    /// back as an input.
    pub(super) fn send_piece(&mut self, to: PeerId, index: PieceIndex, deadline: Instant) {
        let conn = self.sessions.get(&to).map(|s| s.conn.clone());
        let source = self.store.as_ref().map(Store::piece_source);
        let (Some(conn), Some(Ok(source))) = (conn, source) else {
            self.swarm
                .handle_piece_sent(Instant::now(), to, index, false);
            return;
        };
        let upload = Upload {
            conn,
            source,
            digest: self.digest,
            egress: self.ex.inner.config.egress.clone(),
            deadline,
        };
        let tx = self.tx.clone();
        // `run` opens its span here, inside the blob's.
        tokio::spawn(upload.run(to, index, tx));
    }
}

/// Why an upload did not go out (the swarm hears it failed either way).
#[derive(Debug, thiserror::Error)]
enum UploadError {
    /// Reading the piece failed.
    #[error("reading the piece: {0}")]
    Read(#[from] CasError),
    /// The read on the blocking pool panicked or was cancelled.
    #[error("the read task failed: {0}")]
    Join(#[from] JoinError),
    /// The piece stream failed.
    #[error(transparent)]
    Send(#[from] PieceStreamError),
    /// Not sent by the swarm's deadline.
    #[error("not sent by its deadline")]
    Late(#[from] Elapsed),
}

/// One piece on its way to a peer.
struct Upload {
    conn: PeerConnection,
    source: PieceSource,
    digest: Digest,
    egress: Option<RateLimiter>,
    deadline: Instant,
}

impl Upload {
    /// Sends the piece, then tells the blob task whether it went.
    #[tracing::instrument(name = "send", level = "debug", skip_all, fields(peer = %to, %index))]
    async fn run(self, to: PeerId, index: PieceIndex, tx: mpsc::Sender<Input>) {
        let ok = match self.send(index).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "upload failed");
                false
            }
        };
        let _ = tx
            .send(Input::PieceSent {
                peer: to,
                index,
                ok,
            })
            .await;
    }

    async fn send(self, index: PieceIndex) -> Result<(), UploadError> {
        let source = self.source;
        let bytes = tokio::task::spawn_blocking(move || source.read_piece(index)).await??;
        let header = PieceHeader {
            digest: self.digest,
            index,
            len: bytes.len() as u32,
        };
        let egress = self.egress.as_ref();
        let send = send_piece_limited(self.conn.connection(), header, bytes, egress);
        tokio::time::timeout_at(self.deadline.into(), send).await??;
        Ok(())
    }
}
