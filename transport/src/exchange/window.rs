//! Streaming windows: where a blob's readers are, and the verified pieces held in memory
//! for them.
//!
//! A reader streaming a blob while it downloads (a registry client's `GET`) registers
//! here ([`Streaming::add_reader`]) and moves its cursor as it goes. Each reader has a
//! window: the `window` pieces from the one it waits for, up to the end of its range.
//! The blob task hands the windows to the swarm ([`Swarm::set_streaming`]), which asks for
//! those pieces first; a piece received inside a window is kept in memory as its batches
//! were written ([`PieceWriter::keep_bytes`]), so the reader takes it from there as it
//! lands and never reads back from the disk what was just written there with direct I/O.
//! A piece outside every window (no reader, or one far behind) goes to the disk only, and
//! a reader reads it from the CAS as before.
//!
//! **Memory.** Kept pieces are counted against the exchange's [`StreamMemory`] budget
//! (`ExchangeConfig::stream_memory`, over every blob), reserved when the piece's first
//! byte is taken and given back when the piece leaves the window: when no reader's window
//! holds it any more (every reader moved past it, or left). A piece that finds the
//! budget spent goes to the disk only. A slow reader therefore holds at most its window
//! (at most `stream_window` bytes, and no more than the budget): the download goes on at
//! full speed, and the pieces past the window wait on the disk. On top of the budget each
//! streaming client holds the one piece it is sending.
//!
//! [`Swarm::set_streaming`]: crate::swarm::Swarm::set_streaming
//! [`PieceWriter::keep_bytes`]: kraken_storage::cas::PieceWriter::keep_bytes

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use kraken_storage::PieceIndex;
use tokio::sync::Notify;

use super::ExchangeCounters;

/// The exchange's budget of piece bytes held in memory for readers, over every blob.
/// Cheap to clone: clones share the budget.
#[derive(Debug, Clone)]
pub(super) struct StreamMemory {
    used: Arc<AtomicU64>,
    limit: u64,
}

impl StreamMemory {
    /// A budget of `limit` bytes.
    pub(super) fn new(limit: u64) -> Self {
        StreamMemory {
            used: Arc::default(),
            limit,
        }
    }

    /// Takes `n` bytes of the budget, or `None` if fewer are left.
    pub(super) fn reserve(&self, n: u64) -> Option<Reservation> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .ok()?;
        Some(Reservation {
            used: self.used.clone(),
            n,
        })
    }

    /// Bytes taken now.
    pub(super) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes of a [`StreamMemory`] budget, given back when dropped.
#[derive(Debug)]
pub(super) struct Reservation {
    used: Arc<AtomicU64>,
    n: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// A verified piece's bytes, in order, and the budget they take.
#[derive(Debug)]
pub(super) struct KeptPiece {
    pub(super) chunks: Vec<Bytes>,
    pub(super) _reservation: Reservation,
}

/// One blob's readers and the pieces kept for them. Shared by the blob task, its
/// receivers and its watches.
#[derive(Debug)]
pub(super) struct Streaming {
    state: Mutex<State>,
    /// Wakes the blob task when the readers' windows moved.
    moved: Notify,
    /// Pieces in a reader's window.
    window: u32,
    /// Pieces in the blob.
    count: u32,
    /// The exchange's counters: where streamed pieces came from.
    counters: Arc<ExchangeCounters>,
}

#[derive(Debug, Default)]
struct State {
    /// Each reader's window: from the piece it waits for to the end of its range.
    readers: BTreeMap<u64, Range<u32>>,
    next_id: u64,
    kept: BTreeMap<u32, KeptPiece>,
}

impl State {
    fn in_some_window(&self, index: u32, window: u32) -> bool {
        self.readers
            .values()
            .any(|r| r.start <= index && index < r.end.min(r.start.saturating_add(window)))
    }

    /// Drops the kept pieces no reader's window holds any more.
    fn sweep(&mut self, window: u32) {
        let keep: Vec<u32> = self
            .kept
            .keys()
            .copied()
            .filter(|i| !self.in_some_window(*i, window))
            .collect();
        for i in keep {
            self.kept.remove(&i);
        }
    }
}

impl Streaming {
    /// The readers of a blob of `count` pieces, each with a window of `window` pieces.
    pub(super) fn new(window: u32, count: u32, counters: Arc<ExchangeCounters>) -> Self {
        Streaming {
            state: Mutex::default(),
            moved: Notify::new(),
            window: window.max(1),
            count,
            counters,
        }
    }

    /// Counts a piece a reader streamed, from memory or back from the CAS.
    pub(super) fn count_streamed(&self, from_memory: bool) {
        let c = &self.counters;
        let counter = if from_memory {
            &c.streamed_from_memory
        } else {
            &c.streamed_from_disk
        };
        ExchangeCounters::add(counter, 1);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves when the readers' windows moved since the last time it resolved.
    pub(super) async fn moved(&self) {
        self.moved.notified().await;
    }

    /// A reader that waits for piece `at` and streams up to piece `end` (exclusive).
    pub(super) fn add_reader(self: &Arc<Self>, at: PieceIndex, end: PieceIndex) -> ReaderSlot {
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.readers.insert(id, at.0..end.0.min(self.count));
        drop(st);
        self.moved.notify_one();
        ReaderSlot {
            streaming: self.clone(),
            id,
            at,
        }
    }

    /// The readers' windows, for [`Swarm::set_streaming`](crate::swarm::Swarm::set_streaming).
    pub(super) fn windows(&self) -> Vec<Range<PieceIndex>> {
        self.lock()
            .readers
            .values()
            .map(|r| {
                PieceIndex(r.start)..PieceIndex(r.end.min(r.start.saturating_add(self.window)))
            })
            .filter(|w| w.start < w.end)
            .collect()
    }

    /// Whether piece `index`, about to be received, is in a reader's window and not kept
    /// already: worth keeping in memory.
    pub(super) fn wants(&self, index: PieceIndex) -> bool {
        let st = self.lock();
        !st.kept.contains_key(&index.0) && st.in_some_window(index.0, self.window)
    }

    /// Whether piece `index` lies in a reader's range, at or past the piece it waits for:
    /// a reader will read it, from the CAS if it is not kept.
    pub(super) fn ahead_of_a_reader(&self, index: PieceIndex) -> bool {
        let st = self.lock();
        st.readers.values().any(|r| r.contains(&index.0))
    }

    /// Keeps a verified piece's bytes for the readers whose window holds it; dropped at
    /// once (and its budget given back) if none does any more.
    pub(super) fn keep(&self, index: PieceIndex, piece: KeptPiece) {
        let mut st = self.lock();
        if st.in_some_window(index.0, self.window) {
            st.kept.insert(index.0, piece);
        }
    }

    /// The kept bytes of piece `index`, if it is kept.
    pub(super) fn take(&self, index: PieceIndex) -> Option<Vec<Bytes>> {
        self.lock().kept.get(&index.0).map(|k| k.chunks.clone())
    }

    /// Pieces kept now.
    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.lock().kept.len()
    }

    fn advance(&self, id: u64, at: PieceIndex) {
        let mut st = self.lock();
        if let Some(r) = st.readers.get_mut(&id) {
            r.start = at.0;
        }
        st.sweep(self.window);
        drop(st);
        self.moved.notify_one();
    }

    fn remove(&self, id: u64) {
        let mut st = self.lock();
        st.readers.remove(&id);
        st.sweep(self.window);
        drop(st);
        self.moved.notify_one();
    }
}

/// A reader's place in a [`Streaming`]; it leaves when dropped.
#[derive(Debug)]
pub(super) struct ReaderSlot {
    streaming: Arc<Streaming>,
    id: u64,
    at: PieceIndex,
}

impl ReaderSlot {
    /// The reader now waits for piece `at`: its window moves, and the pieces it left
    /// behind are dropped unless another reader's window holds them.
    pub(super) fn advance(&mut self, at: PieceIndex) {
        if at != self.at {
            self.at = at;
            self.streaming.advance(self.id, at);
        }
    }

    /// The pieces the reader's blob keeps.
    pub(super) fn streaming(&self) -> &Arc<Streaming> {
        &self.streaming
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        self.streaming.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(memory: &StreamMemory, n: u64) -> Option<KeptPiece> {
        Some(KeptPiece {
            chunks: vec![Bytes::from(vec![7u8; n as usize])],
            _reservation: memory.reserve(n)?,
        })
    }

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let memory = StreamMemory::new(10);
        let a = memory.reserve(6).unwrap();
        assert!(memory.clone().reserve(5).is_none(), "over the limit");
        let b = memory.reserve(4).unwrap();
        assert_eq!(memory.used(), 10);
        drop(a);
        assert_eq!(memory.used(), 4);
        drop(b);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn pieces_are_kept_only_inside_a_window_and_leave_behind_the_last_reader() {
        let memory = StreamMemory::new(1 << 20);
        let s = Arc::new(Streaming::new(4, 100, Arc::default()));
        assert!(s.windows().is_empty());
        assert!(!s.wants(PieceIndex(0)), "nobody reads");
        let mut a = s.add_reader(PieceIndex(0), PieceIndex(100));
        let b = s.add_reader(PieceIndex(2), PieceIndex(3));
        assert_eq!(
            s.windows(),
            vec![PieceIndex(0)..PieceIndex(4), PieceIndex(2)..PieceIndex(3)]
        );
        assert!(s.wants(PieceIndex(3)));
        assert!(!s.wants(PieceIndex(4)), "past every window");
        for i in [0, 1, 2, 3, 4] {
            s.keep(PieceIndex(i), piece(&memory, 10).unwrap());
        }
        assert_eq!(s.kept(), 4, "piece 4 is outside every window");
        assert_eq!(memory.used(), 40);
        assert!(!s.wants(PieceIndex(1)), "kept already");
        assert_eq!(s.take(PieceIndex(1)).unwrap()[0].len(), 10);
        // `a` moves to 3: pieces 0 and 1 go, 2 stays for `b`.
        a.advance(PieceIndex(3));
        assert_eq!(s.kept(), 2);
        assert!(s.take(PieceIndex(2)).is_some());
        drop(b);
        assert_eq!(s.kept(), 1);
        assert_eq!(memory.used(), 10);
        drop(a);
        assert_eq!(s.kept(), 0);
        assert_eq!(memory.used(), 0);
        assert!(s.windows().is_empty());
    }
}
