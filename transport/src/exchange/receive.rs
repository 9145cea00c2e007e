//! Downloads: a piece stream we asked for is received into the partial blob in batches,
//! each hashed on the runtime's thread and written on the blocking pool, and verified
//! before it counts; what went wrong is told apart by whose fault it was
//! ([`PieceFault`]). A piece inside a streaming reader's window keeps its batches in
//! memory for the reader (see `window`).
//!
//! **One hash per check.** Each byte received is hashed once: along the digest's hash
//! chain when the metainfo has chaining states (version 2, the default) and the store
//! checks the digest, else with the piece's BLAKE3 hash (version 1 metainfo, or
//! `verify_digest_on_commit` off). BLAKE3 on top of the chain used to be a second pass
//! over every byte, and it proved nothing the chain does not: both come from the same
//! metainfo, and a piece that continues the chain is the blob's piece (a second preimage
//! of SHA-256's compression function otherwise), as a piece matching its BLAKE3 hash is.
//! What BLAKE3 added was blame: whether a piece that fails is the sender's doing (bad
//! bytes: blacklist the peer) or the metainfo's (its hashes and chaining states disagree:
//! stop, no peer can help). The writer now asks BLAKE3 only when the chain breaks,
//! reading the piece back then (`PieceWriter::finish`), so blame costs a read per bad
//! piece instead of a hash pass per good one: about 0.25 CPU-s per GiB received, 6 % of
//! the exchange's profile (docs/performance.md). Origins still compute every piece's
//! BLAKE3 hash at ingest; it stays in the metainfo for version 1 readers and for blame.

use std::sync::Arc;
use std::time::Instant;

use bytes::Buf;
use kraken_storage::cas::{CasError, PieceWriter, VerifiedPiece};

use super::window::{KeptPiece, Reservation};
use kraken_storage::{PieceError, PieceIndex};
use quinn::RecvStream;
use tokio::sync::mpsc;

use super::Tracker;
use super::task::{BlobTask, Input, Store};
use crate::limit::{LIMIT_CHUNK, RateLimiter};
use crate::quic::codes;
use crate::swarm::PieceOutcome;
use crate::wire::{PeerId, PieceHeader};

/// Why a piece stream did not yield a verified piece.
#[derive(Debug)]
pub(super) enum PieceFault {
    /// The peer sent bad bytes.
    Peer,
    /// The stream failed, or the download closed; not the peer's fault.
    Other,
    /// Writing to the local store failed (the disk is full, an I/O error): not the peer's
    /// fault, and no peer can help.
    Storage(Arc<CasError>),
    /// The piece matched the metainfo's BLAKE3 hash but not the hash chain of the
    /// blob's digest: the metainfo does not describe this blob, and no peer can help.
    Metainfo(PieceError),
}

impl PieceFault {
    /// A piece error (wrong size, wrong hash) is the peer's doing, except a broken hash
    /// chain, which is the metainfo's; a failed write is our disk's; anything else is
    /// ours too.
    fn of(e: CasError) -> Self {
        match e {
            CasError::Piece(e @ PieceError::ChainMismatch { .. }) => PieceFault::Metainfo(e),
            CasError::Piece(_) => PieceFault::Peer,
            e @ CasError::Io { .. } => PieceFault::Storage(Arc::new(e)),
            _ => PieceFault::Other,
        }
    }
}

/// A verified, stored piece, and its bytes when they were kept for a streaming reader.
#[derive(Debug)]
pub(super) struct Received {
    pub(super) verified: VerifiedPiece,
    pub(super) kept: Option<KeptPiece>,
}

impl<T: Tracker> BlobTask<T> {
    /// A peer opened a piece stream: taken if we asked it for the piece and nobody else is
    /// writing it, refused otherwise (as a bad piece if its length is wrong).
    pub(super) fn on_incoming_piece(
        &mut self,
        peer: PeerId,
        header: PieceHeader,
        recv: RecvStream,
    ) {
        let index = header.index;
        let size = self.metainfo.piece_size(index);
        // Only pieces we asked this peer for, one receiver per piece.
        let wanted = self.swarm.is_requested(&peer, index) && !self.receiving.contains(&index);
        let writer = match self.store.as_ref() {
            Some(Store::Partial(p)) if wanted && size == Some(header.len) => {
                p.piece_writer(index).ok()
            }
            _ => None,
        };
        let Some(mut writer) = writer else {
            self.refuse_piece(peer, header, recv, size == Some(header.len), wanted);
            return;
        };
        // A piece a reader waits for just ahead is kept in memory for it, within budget.
        let keep = if self.streaming.wants(index) {
            self.ex.inner.stream_memory.reserve(u64::from(header.len))
        } else {
            None
        };
        if keep.is_some() {
            writer.keep_bytes();
        } else if self.streaming.ahead_of_a_reader(index) {
            // Outside every window (or past the budget), but a reader gets there soon: a
            // read back from the page cache costs a copy, one from the disk after a direct
            // write a wait per chunk.
            writer.read_soon();
        }
        self.receiving.insert(index);
        // The request stops waiting in the peer's queue; its transfer clock starts now.
        self.swarm.handle_piece_started(Instant::now(), peer, index);
        let receiver = Receiver {
            recv,
            writer,
            len: u64::from(header.len),
            limiter: self.ex.inner.config.ingress.clone(),
            deadline: tokio::time::Instant::now() + self.swarm.piece_timeout(index),
            blob: self.tx.clone(),
            keep,
        };
        // `run` opens its span here, inside the blob's.
        tokio::spawn(receiver.run(peer, index));
    }

    fn refuse_piece(
        &mut self,
        peer: PeerId,
        header: PieceHeader,
        mut recv: RecvStream,
        fits: bool,
        wanted: bool,
    ) {
        let index = header.index;
        let code = if fits {
            codes::REFUSED
        } else {
            codes::BAD_PIECE
        };
        let _ = recv.stop(code);
        tracing::debug!(%peer, %index, wanted, "piece stream refused");
        if !fits {
            let outcome = PieceOutcome::Corrupt;
            self.swarm
                .handle_piece_received(Instant::now(), peer, index, outcome);
        }
    }
}

/// One piece on its way from a peer.
struct Receiver {
    recv: RecvStream,
    writer: PieceWriter,
    len: u64,
    limiter: Option<RateLimiter>,
    /// Too slow counts as the swarm's timeout would, not as a bad piece.
    deadline: tokio::time::Instant,
    /// The blob task's inputs: closed once the task is gone.
    blob: mpsc::Sender<Input>,
    /// The budget for the piece's bytes, when they are kept for a reader.
    keep: Option<Reservation>,
}

impl Receiver {
    /// Receives the piece, then tells the blob task what came of it.
    #[tracing::instrument(name = "receive", level = "debug", skip_all, fields(%peer, %index))]
    async fn run(mut self, peer: PeerId, index: PieceIndex) {
        let started = Instant::now();
        let limiter = self.limiter.as_ref();
        let result = receive_piece(
            &mut self.recv,
            self.writer,
            self.len,
            limiter,
            self.deadline,
            &self.blob,
        )
        .await;
        if matches!(result, Err(PieceFault::Peer)) {
            let _ = self.recv.stop(codes::BAD_PIECE);
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::debug!(secs, ok = result.is_ok(), "piece received");
        let keep = self.keep;
        let result = result.map(|mut verified| {
            let kept = verified
                .take_bytes()
                .zip(keep)
                .map(|(chunks, reservation)| KeptPiece {
                    chunks,
                    _reservation: reservation,
                });
            Received { verified, kept }
        });
        let _ = self
            .blob
            .send(Input::PieceDone {
                peer,
                index,
                result,
            })
            .await;
    }
}

/// Receives exactly `len` bytes of a piece stream into `writer`, expects the end, and
/// verifies the piece. With a limiter, every [`LIMIT_CHUNK`] is admitted by it before it is
/// read. Past `deadline`, or once the blob's task is gone (`blob` closed), the stream is
/// given up (not the peer's fault), but never while a write is under way: once this
/// returns, nothing of the piece is still being written, so another receiver may take the
/// piece over. (A receiver outlived by its partial blob cannot write at all.)
async fn receive_piece(
    recv: &mut RecvStream,
    mut writer: PieceWriter,
    len: u64,
    limiter: Option<&RateLimiter>,
    deadline: tokio::time::Instant,
    blob: &mpsc::Sender<Input>,
) -> Result<VerifiedPiece, PieceFault> {
    // A wait on the peer (or on the limiter), cut short by the deadline or the blob's end.
    async fn wait<F: std::future::Future>(
        deadline: tokio::time::Instant,
        blob: &mpsc::Sender<Input>,
        f: F,
    ) -> Result<F::Output, PieceFault> {
        tokio::select! {
            out = tokio::time::timeout_at(deadline, f) => out.map_err(|_| PieceFault::Other),
            () = blob.closed() => Err(PieceFault::Other),
        }
    }

    let mut got = 0u64;
    // Bytes the limiter admitted and that are not read yet.
    let mut credit = 0usize;
    while got < len {
        let mut max = usize::try_from(len - got).unwrap_or(usize::MAX);
        if let Some(limiter) = limiter {
            if credit == 0 {
                credit = max.min(LIMIT_CHUNK);
                wait(deadline, blob, limiter.acquire(credit as u64)).await?;
            }
            max = max.min(credit);
        }
        // A chunk is taken under quinn's connection lock and copied (into the writer's
        // batch) after it is released; `read` would copy under the lock, holding up the
        // connection's driver and the other pieces' readers (~4 % of the exchange's time).
        let mut bytes = match wait(deadline, blob, recv.read_chunk(max, true)).await? {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => return Err(PieceFault::Peer), // Ended short.
            Err(_) => return Err(PieceFault::Other),
        };
        got += bytes.len() as u64;
        credit = credit.saturating_sub(bytes.len());
        while !bytes.is_empty() {
            let n = writer.gather(&bytes).map_err(PieceFault::of)?;
            bytes.advance(n);
            if writer.batch_full() {
                writer = hash_and_write(writer, |mut w| w.write_batch().map(|()| w)).await?;
            }
        }
    }
    // Anything after the piece is a protocol violation.
    match wait(deadline, blob, recv.read_chunk(1, true)).await? {
        Ok(None) => {}
        Ok(Some(_)) => return Err(PieceFault::Peer),
        Err(_) => return Err(PieceFault::Other),
    }
    hash_and_write(writer, PieceWriter::finish).await
}

/// Hashes what a piece writer gathered on this thread, then runs its disk work (`work`:
/// the batch's write, or the last one's and the check) on the blocking pool: with direct
/// writes that thread waits for the disk, and the runtime's threads must keep driving the
/// connections meanwhile. The hashing stays here because on the pool it had the pool's
/// threads competing with the runtime's for the cores, and the connections' drivers
/// waiting for a time slice: the exchange took about 10 % longer. A batch is about half a
/// millisecond of this thread.
async fn hash_and_write<T: Send + 'static>(
    mut writer: PieceWriter,
    work: fn(PieceWriter) -> Result<T, CasError>,
) -> Result<T, PieceFault> {
    writer.hash_gathered();
    match tokio::task::spawn_blocking(move || work(writer)).await {
        Ok(result) => result.map_err(PieceFault::of),
        Err(_) => Err(PieceFault::Other),
    }
}

#[cfg(test)]
mod tests {
    use kraken_storage::Digest;

    use super::*;

    #[test]
    fn a_bad_piece_is_the_peers_fault_a_broken_chain_the_metainfos_a_failed_write_the_disks() {
        let index = PieceIndex(3);
        let hash = CasError::Piece(PieceError::HashMismatch { index });
        assert!(matches!(PieceFault::of(hash), PieceFault::Peer));
        let short = PieceError::WrongSize {
            index,
            expected: 4,
            actual: 3,
        };
        assert!(matches!(
            PieceFault::of(CasError::Piece(short)),
            PieceFault::Peer
        ));
        let chain = CasError::Piece(PieceError::ChainMismatch { index });
        assert!(matches!(
            PieceFault::of(chain),
            PieceFault::Metainfo(PieceError::ChainMismatch { .. })
        ));
        let disk = CasError::Io {
            op: "write",
            path: "piece".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        assert!(matches!(PieceFault::of(disk), PieceFault::Storage(e) if e.is_disk_full()));
        let closed = CasError::DownloadClosed(Digest::sha256_of(b"x"));
        assert!(matches!(PieceFault::of(closed), PieceFault::Other));
        let missing = CasError::NotFound(Digest::sha256_of(b"x"));
        assert!(matches!(PieceFault::of(missing), PieceFault::Other));
    }
}
