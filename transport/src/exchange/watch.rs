//! [`BlobWatch`]: a view of one blob's download, to stream the blob before it is complete.

use std::sync::Arc;

use bytes::Bytes;
use kraken_storage::cas::{BlobReader, CasError, PieceSource};
use kraken_storage::{Bitfield, Digest, Metainfo, PieceError, PieceIndex};
use tokio::sync::watch;

use super::window::{StreamMemory, Streaming};
use super::{BlobHandle, DoneState, ExchangeError, StopReason};
use crate::swarm::SwarmStats;

/// A view of one blob's download, to stream the blob before it is complete.
///
/// It follows the set of pieces that are verified (against the metainfo) and
/// stored, as the blob task marks them, and the task's [`DoneState`]; it reads any stored
/// piece through its own file descriptor, which stays valid when the finished download is
/// renamed into the CAS. Cheap to clone; a watch does not keep the download going or
/// stop it. Made by [`PieceExchange::start_download`] and [`PieceExchange::watch`].
///
/// Bytes read through a watch are each piece's verified bytes; the whole blob's digest
/// is checked only at the commit, whose outcome [`BlobWatch::finished`] reports.
///
/// [`PieceExchange::start_download`]: super::PieceExchange::start_download
/// [`PieceExchange::watch`]: super::PieceExchange::watch
#[derive(Clone)]
pub struct BlobWatch {
    digest: Digest,
    metainfo: Arc<Metainfo>,
    pieces: watch::Receiver<Arc<Bitfield>>,
    done: watch::Receiver<DoneState>,
    source: Arc<PieceSource>,
    /// The blob's streaming readers (watches of a running task).
    pub(super) streaming: Option<Arc<Streaming>>,
    /// Keeps a complete blob from eviction while watched (watches made without a task).
    _pin: Option<Arc<BlobReader>>,
    /// The exchange's budget for large chunks read from the CAS (see `stream`).
    pub(super) read_memory: StreamMemory,
}

impl std::fmt::Debug for BlobWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWatch")
            .field("digest", &self.digest)
            .field("have", &self.pieces.borrow().count_ones())
            .field("pieces", &self.metainfo.piece_count())
            .field("done", &*self.done.borrow())
            .finish_non_exhaustive()
    }
}

impl BlobWatch {
    /// A watch on a running blob task.
    pub(super) fn of(h: BlobHandle, read_memory: StreamMemory) -> Self {
        BlobWatch {
            digest: *h.metainfo.digest(),
            metainfo: h.metainfo,
            pieces: h.pieces,
            done: h.done,
            source: h.source,
            streaming: Some(h.streaming),
            _pin: None,
            read_memory,
        }
    }

    /// A watch on a blob complete in the CAS, with no task: every piece present, the
    /// download done. It holds `reader`, which keeps the blob from eviction meanwhile.
    pub(super) fn of_complete(
        digest: Digest,
        reader: BlobReader,
        read_memory: StreamMemory,
    ) -> Result<Self, CasError> {
        let source = Arc::new(reader.piece_source()?);
        let metainfo = reader.metainfo().clone();
        // The senders go at once: the receivers keep the final values.
        let (_, pieces) = watch::channel(Arc::new(Bitfield::full(metainfo.piece_count())));
        let (_, done) = watch::channel(Some(Ok(SwarmStats::default())));
        Ok(BlobWatch {
            digest,
            metainfo,
            pieces,
            done,
            source,
            streaming: None,
            _pin: Some(Arc::new(reader)),
            read_memory,
        })
    }

    /// The blob.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The blob's metainfo: its length, piece length and piece hashes.
    pub fn metainfo(&self) -> &Arc<Metainfo> {
        &self.metainfo
    }

    /// The pieces verified and stored so far (a snapshot).
    pub fn have(&self) -> Arc<Bitfield> {
        self.pieces.borrow().clone()
    }

    /// A receiver of the stored pieces, updated each time one is stored; await its
    /// `changed()` to follow the download. It closes when the blob task ends.
    pub fn pieces(&self) -> watch::Receiver<Arc<Bitfield>> {
        self.pieces.clone()
    }

    /// A receiver of the blob task's [`DoneState`].
    pub fn done(&self) -> watch::Receiver<DoneState> {
        self.done.clone()
    }

    /// The blob task's [`DoneState`] now.
    pub fn outcome(&self) -> DoneState {
        self.done.borrow().clone()
    }

    /// Waits until the download is complete and committed; the swarm's totals then (all
    /// zero for a blob that was already complete), or why it stopped.
    pub async fn finished(&mut self) -> Result<SwarmStats, ExchangeError> {
        let result = match self.done.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(Err(StopReason::Ended)),
            Err(_) => Err(StopReason::Ended),
        };
        result.map_err(|reason| self.stopped(reason))
    }

    /// Waits until piece `index` is verified and stored; fails if the download stops
    /// first, or at once for an index the blob does not have.
    pub async fn wait_piece(&mut self, index: PieceIndex) -> Result<(), ExchangeError> {
        self.check_index(index)?;
        loop {
            self.pieces.borrow_and_update();
            self.done.borrow_and_update();
            if self.is_stored(index) {
                return Ok(());
            }
            if let Some(Err(reason)) = &*self.done.borrow() {
                return Err(self.stopped(reason.clone()));
            }
            let open = tokio::select! {
                r = self.pieces.changed() => r.is_ok(),
                r = self.done.changed() => r.is_ok(),
            };
            if !open {
                // The task is gone: whatever it left is final.
                if self.is_stored(index) {
                    return Ok(());
                }
                let reason = match &*self.done.borrow() {
                    Some(Err(reason)) => reason.clone(),
                    _ => StopReason::EndedBefore(index),
                };
                return Err(self.stopped(reason));
            }
        }
    }

    /// Reads piece `index`, verified and stored (see [`BlobWatch::wait_piece`]), on the
    /// blocking pool. A piece not stored yet is `CasError::MissingPiece`.
    pub async fn read_piece(&self, index: PieceIndex) -> Result<Bytes, ExchangeError> {
        self.read_piece_part(index, 0..u64::MAX).await
    }

    /// Reads bytes `part` of piece `index` (offsets within the piece, cut at its end), as
    /// [`BlobWatch::read_piece`] does the whole piece.
    pub async fn read_piece_part(
        &self,
        index: PieceIndex,
        part: std::ops::Range<u64>,
    ) -> Result<Bytes, ExchangeError> {
        self.check_index(index)?;
        if !self.is_stored(index) {
            return Err(CasError::MissingPiece {
                digest: self.digest,
                index,
            }
            .into());
        }
        let source = self.source.clone();
        Ok(tokio::task::spawn_blocking(move || source.read_piece_part(index, part)).await??)
    }

    /// True once the piece is stored: marked by the blob task, or the blob is complete.
    fn is_stored(&self, index: PieceIndex) -> bool {
        self.pieces.borrow().get(index) || matches!(&*self.done.borrow(), Some(Ok(_)))
    }

    fn check_index(&self, index: PieceIndex) -> Result<(), ExchangeError> {
        let count = self.metainfo.piece_count();
        if index.0 >= count {
            return Err(CasError::Piece(PieceError::OutOfRange { index, count }).into());
        }
        Ok(())
    }

    fn stopped(&self, reason: StopReason) -> ExchangeError {
        ExchangeError::Stopped {
            digest: self.digest,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use kraken_storage::PieceLengthTable;
    use kraken_storage::cas::{Cas, CasConfig};

    use super::*;

    const PIECE: usize = 16 * 1024;

    /// Four pieces of distinct bytes.
    fn blob() -> Vec<u8> {
        (0..4 * PIECE).map(|i| (i / PIECE) as u8 + 1).collect()
    }

    fn cas(dir: &tempfile::TempDir) -> Cas {
        Cas::open(CasConfig {
            piece_lengths: PieceLengthTable::uniform(PIECE as u32),
            ..CasConfig::at(dir.path())
        })
        .unwrap()
    }

    /// A watch on a download of [`blob`] with no piece yet, and the task's ends of it.
    fn download(
        cas: &Cas,
    ) -> (
        BlobWatch,
        watch::Sender<Arc<Bitfield>>,
        watch::Sender<DoneState>,
    ) {
        let table = PieceLengthTable::uniform(PIECE as u32);
        let metainfo = Arc::new(Metainfo::from_bytes(&blob(), &table).unwrap());
        let partial = cas.start_partial(&metainfo).unwrap();
        let (pieces_tx, pieces) = watch::channel(Arc::new(Bitfield::new(4)));
        let (done_tx, done) = watch::channel(None);
        let watch = BlobWatch {
            digest: *metainfo.digest(),
            source: Arc::new(partial.piece_source().unwrap()),
            metainfo,
            pieces,
            done,
            streaming: None,
            _pin: None,
            read_memory: StreamMemory::new(0),
        };
        (watch, pieces_tx, done_tx)
    }

    fn reason(e: ExchangeError) -> StopReason {
        match e {
            ExchangeError::Stopped { reason, .. } => reason,
            other => panic!("not a stop: {other}"),
        }
    }

    #[tokio::test]
    async fn a_complete_blob_is_watched_done_and_read_piece_by_piece() {
        let dir = tempfile::tempdir().unwrap();
        let cas = cas(&dir);
        let data = blob();
        let digest = Digest::sha256_of(&data);
        cas.ingest(&digest, Some(data.len() as u64), &data[..])
            .unwrap();
        let reader = cas.reader(&digest).unwrap();
        let mut w = BlobWatch::of_complete(digest, reader, StreamMemory::new(0)).unwrap();
        assert_eq!(w.have().count_ones(), 4);
        assert!(matches!(w.outcome(), Some(Ok(_))));
        assert_eq!(w.finished().await.unwrap(), SwarmStats::default());
        w.wait_piece(PieceIndex(2)).await.unwrap();
        let piece = w.read_piece(PieceIndex(2)).await.unwrap();
        assert_eq!(&piece[..], &data[2 * PIECE..3 * PIECE]);
    }

    #[tokio::test]
    async fn an_index_past_the_end_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _pieces, _done) = download(&cas(&dir));
        let out_of_range = |r: Result<_, ExchangeError>| {
            matches!(
                r,
                Err(ExchangeError::Cas(CasError::Piece(
                    PieceError::OutOfRange { count: 4, .. }
                )))
            )
        };
        assert!(out_of_range(w.wait_piece(PieceIndex(4)).await));
        assert!(out_of_range(w.read_piece(PieceIndex(9)).await.map(|_| ())));
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_its_piece_is_stored_and_fails_with_the_tasks_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (w, pieces, done) = download(&cas(&dir));
        // Not stored yet: nothing to read.
        assert!(matches!(
            w.read_piece(PieceIndex(1)).await,
            Err(ExchangeError::Cas(CasError::MissingPiece { .. }))
        ));
        let mut waiter = w.clone();
        let waiting = tokio::spawn(async move { waiter.wait_piece(PieceIndex(1)).await });
        tokio::task::yield_now().await;
        pieces.send_modify(|b| {
            Arc::make_mut(b).set(PieceIndex(1));
        });
        waiting.await.unwrap().unwrap();
        assert_eq!(w.have().count_ones(), 1);

        let mut waiter = w.clone();
        let waiting = tokio::spawn(async move { waiter.wait_piece(PieceIndex(3)).await });
        tokio::task::yield_now().await;
        done.send_replace(Some(Err(StopReason::Closed)));
        let got = waiting.await.unwrap().unwrap_err();
        assert!(matches!(reason(got), StopReason::Closed));
        let mut w = w;
        assert!(matches!(
            reason(w.finished().await.unwrap_err()),
            StopReason::Closed
        ));
    }

    #[tokio::test]
    async fn a_task_that_ends_without_a_word_leaves_its_watchers_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, pieces, done) = download(&cas(&dir));
        drop((pieces, done));
        let got = w.wait_piece(PieceIndex(2)).await.unwrap_err();
        assert!(matches!(
            reason(got),
            StopReason::EndedBefore(PieceIndex(2))
        ));
        assert!(matches!(
            reason(w.finished().await.unwrap_err()),
            StopReason::Ended
        ));
    }
}
