//! Reading a range of a blob in order while it downloads: [`BlobWatch::read_range`].
//!
//! The reader waits for each piece in turn. While the download runs it holds a place
//! among the blob's readers (see `window`): the swarm asks for the pieces just ahead of it
//! first, and those arrive in memory, so the reader takes them from there as they land;
//! any other piece it reads from the CAS. Every byte it yields belongs to a verified
//! piece.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;
use futures::Stream;
use kraken_storage::PieceIndex;

use super::window::ReaderSlot;
use super::{BlobWatch, ExchangeError};

/// Where a [`BlobWatch::read_range`] stream is.
struct RangeReader {
    watch: BlobWatch,
    /// The reader's place among the blob's readers, while the download runs.
    slot: Option<ReaderSlot>,
    range: Range<u64>,
    /// The next piece to read.
    next: u32,
    /// What is left of the piece read last.
    ready: VecDeque<Bytes>,
}

impl BlobWatch {
    /// The bytes `range` of the blob (which must lie inside it), in order: each piece as
    /// soon as it is verified, from memory when it just arrived for this reader, else from
    /// the CAS. The stream ends with an error if the download stops first. While it lives
    /// and the download runs, the swarm asks for the pieces just ahead of it first.
    pub fn read_range(
        self,
        range: Range<u64>,
    ) -> impl Stream<Item = Result<Bytes, ExchangeError>> + Send + 'static {
        let piece_len = u64::from(self.metainfo().piece_length());
        let first = u32::try_from(range.start / piece_len).unwrap_or(u32::MAX);
        let end = u32::try_from(range.end.div_ceil(piece_len)).unwrap_or(u32::MAX);
        // Registered now, not at the first poll: the swarm should know where this reader
        // is before it asks for its first pieces.
        let slot = match (&self.streaming, self.outcome()) {
            (Some(s), None) if !range.is_empty() => {
                Some(s.add_reader(PieceIndex(first), PieceIndex(end)))
            }
            _ => None,
        };
        let reader = RangeReader {
            watch: self,
            slot,
            range,
            next: first,
            ready: VecDeque::new(),
        };
        futures::stream::try_unfold(reader, |mut r| async move {
            match r.next_chunk().await? {
                Some(chunk) => Ok(Some((chunk, r))),
                None => Ok(None),
            }
        })
    }
}

impl RangeReader {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ExchangeError> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Ok(Some(chunk));
            }
            let piece_len = u64::from(self.watch.metainfo().piece_length());
            let start = u64::from(self.next) * piece_len;
            if start >= self.range.end {
                self.slot = None;
                return Ok(None);
            }
            let index = PieceIndex(self.next);
            if let Some(slot) = self.slot.as_mut() {
                slot.advance(index);
            }
            self.watch.wait_piece(index).await?;
            let kept = self.slot.as_ref().and_then(|s| s.streaming().take(index));
            if let Some(slot) = &self.slot {
                slot.streaming().count_streamed(kept.is_some());
            }
            let chunks = match kept {
                Some(chunks) => chunks,
                None => vec![self.watch.read_piece(index).await?],
            };
            // The part of the piece inside the range.
            let from = self.range.start.saturating_sub(start);
            let to = (self.range.end - start).min(piece_len);
            let mut at = 0u64;
            for chunk in chunks {
                let len = chunk.len() as u64;
                let (a, b) = (from.max(at), to.min(at + len));
                if a < b {
                    self.ready
                        .push_back(chunk.slice((a - at) as usize..(b - at) as usize));
                }
                at += len;
            }
            self.next += 1;
        }
    }
}
