//! Reading a range of a blob in order while it downloads: [`BlobWatch::read_range`].
//!
//! The reader waits for each piece in turn. While the download runs it holds a place
//! among the blob's readers (see `window`): the swarm asks for the pieces just ahead of it
//! first, and those arrive in memory, so the reader takes them from there as they land;
//! any other piece it reads from the CAS. Every byte it yields belongs to a verified
//! piece.
//!
//! Memory per reader is small and does not grow with the piece length: a piece from
//! memory is shared (every reader yields slices of the same bytes), and a piece from the
//! CAS is read a chunk at a time, each read only when the consumer asks for the next
//! chunk. A chunk is [`READ_CHUNK`] bytes while the exchange's read budget
//! (`ExchangeConfig::read_memory`, over every blob) has room, else [`DISK_CHUNK`]: each
//! read is a hop to a blocking thread and each chunk an HTTP write, which at 32 KiB cost
//! a cold pull about a quarter of its time (measured: docs/performance.md), while a
//! thousand readers at 512 KiB would hold 500 MiB. A reader waiting for a piece holds no
//! buffer at all. With a consumer that bounds what it queues (the registry API's HTTP
//! connections), a thousand readers of one blob cost a few tens of MiB, not a piece each.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;
use futures::Stream;
use kraken_storage::PieceIndex;

use super::window::{ReaderSlot, Reservation};
use super::{BlobWatch, ExchangeError};

/// Bytes read from the CAS at once when a piece is not in memory and the read budget is
/// spent: what one reader then holds of such a piece until its consumer takes it.
pub(crate) const DISK_CHUNK: u64 = 32 * 1024;

/// Bytes read from the CAS at once when a piece is not in memory, while the exchange's
/// read budget has room.
pub(crate) const READ_CHUNK: u64 = 512 * 1024;

/// A chunk read from the CAS with the read budget it takes, given back when its last
/// consumer drops it.
struct BudgetedChunk {
    bytes: Bytes,
    _reservation: Reservation,
}

impl AsRef<[u8]> for BudgetedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Where a [`BlobWatch::read_range`] stream is.
struct RangeReader {
    watch: BlobWatch,
    /// The reader's place among the blob's readers, while the download runs.
    slot: Option<ReaderSlot>,
    range: Range<u64>,
    /// The next piece to read.
    next: u32,
    /// What is left of the piece read last from memory.
    ready: VecDeque<Bytes>,
    /// What is left to read from the CAS of a piece that was not in memory: the piece and
    /// the offsets within it.
    from_disk: Option<(PieceIndex, Range<u64>)>,
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
            from_disk: None,
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
            if let Some((index, left)) = self.from_disk.take() {
                let large = READ_CHUNK.min(left.end - left.start);
                let reservation = self.watch.read_memory.reserve(large);
                let len = match reservation {
                    Some(_) => large,
                    None => DISK_CHUNK.min(left.end - left.start),
                };
                let end = left.start + len;
                let mut chunk = self.watch.read_piece_part(index, left.start..end).await?;
                if let Some(reservation) = reservation {
                    chunk = Bytes::from_owner(BudgetedChunk {
                        bytes: chunk,
                        _reservation: reservation,
                    });
                }
                if end < left.end {
                    self.from_disk = Some((index, end..left.end));
                }
                if !chunk.is_empty() {
                    return Ok(Some(chunk));
                }
                continue;
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
            // The part of the piece inside the range.
            let from = self.range.start.saturating_sub(start);
            let to = (self.range.end - start).min(piece_len);
            self.next += 1;
            let Some(chunks) = kept else {
                self.from_disk = Some((index, from..to));
                continue;
            };
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
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use kraken_storage::cas::{Cas, CasConfig};
    use kraken_storage::{Digest, PieceLengthTable};

    use super::super::window::StreamMemory;
    use super::*;

    /// A complete blob of three and a bit pieces, each piece a few chunks long.
    fn stored(dir: &tempfile::TempDir, piece: usize) -> (Cas, Digest, Vec<u8>) {
        let cas = Cas::open(CasConfig {
            piece_lengths: PieceLengthTable::uniform(piece as u32),
            ..CasConfig::at(dir.path())
        })
        .unwrap();
        let data: Vec<u8> = (0..3 * piece + 77).map(|i| (i % 253) as u8).collect();
        let digest = Digest::sha256_of(&data);
        cas.ingest(&digest, Some(data.len() as u64), &data[..])
            .unwrap();
        (cas, digest, data)
    }

    async fn read(cas: &Cas, digest: Digest, budget: &StreamMemory, r: Range<u64>) -> Vec<Bytes> {
        let w = BlobWatch::of_complete(digest, cas.reader(&digest).unwrap(), budget.clone());
        w.unwrap().read_range(r).try_collect().await.unwrap()
    }

    #[tokio::test]
    async fn with_the_budget_spent_pieces_from_the_cas_stream_in_small_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let piece = 4 * DISK_CHUNK as usize + 1000;
        let (cas, digest, data) = stored(&dir, piece);
        let len = data.len() as u64;
        let spent = StreamMemory::new(0);
        for range in [
            0..len,
            1..len - 1,
            5..6,
            piece as u64 - 3..2 * piece as u64 + 9,
        ] {
            let chunks = read(&cas, digest, &spent, range.clone()).await;
            assert!(
                chunks
                    .iter()
                    .all(|c| !c.is_empty() && c.len() as u64 <= DISK_CHUNK)
            );
            assert!(chunks.concat() == data[range.start as usize..range.end as usize]);
        }
    }

    #[tokio::test]
    async fn large_chunks_take_the_read_budget_until_dropped_and_small_ones_follow() {
        let dir = tempfile::tempdir().unwrap();
        let piece = 2 * READ_CHUNK as usize + 1000;
        let (cas, digest, data) = stored(&dir, piece);
        let len = data.len() as u64;
        // Room for exactly two large chunks.
        let budget = StreamMemory::new(2 * READ_CHUNK);
        let chunks = read(&cas, digest, &budget, 0..len).await;
        assert!(chunks.concat() == data);
        let large = chunks
            .iter()
            .filter(|c| c.len() as u64 > DISK_CHUNK)
            .count();
        assert_eq!(large, 2, "two large chunks while the budget lasts");
        assert!(chunks.iter().all(|c| c.len() as u64 <= READ_CHUNK));
        assert_eq!(budget.used(), 2 * READ_CHUNK, "held while the chunks live");
        drop(chunks);
        assert_eq!(budget.used(), 0, "given back when they are dropped");
        // A consumer that drops each chunk as it goes reads everything in large chunks.
        let w = BlobWatch::of_complete(digest, cas.reader(&digest).unwrap(), budget.clone());
        let mut stream = std::pin::pin!(w.unwrap().read_range(0..len));
        let mut at = 0;
        while let Some(chunk) = stream.try_next().await.unwrap() {
            let left = (piece as u64 - at % piece as u64).min(len - at);
            assert_eq!(chunk.len() as u64, left.min(READ_CHUNK), "at {at}");
            assert!(chunk[..] == data[at as usize..at as usize + chunk.len()]);
            at += chunk.len() as u64;
        }
        assert_eq!(at, len);
        assert_eq!(budget.used(), 0);
    }
}
