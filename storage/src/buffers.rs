//! Memory reused for the bytes of pieces: the buffers a seeder reads pieces into, and the
//! batches a piece writer gathers received bytes in.
//!
//! Such a buffer lives until the transport has the peer's acknowledgement, the HTTP stack
//! has written it to a client, or the piece is written, then drops. A fresh buffer each
//! time is memory the allocator maps and hands back to the kernel again: glibc serves a
//! 4 MiB piece with `mmap`, or trims it off its heap once freed, so every byte a seeder
//! sent, and every byte a leecher gathered, was first a page fault and a page the kernel
//! cleared (about 3 µs a page on the development VM). On a cold 1 GiB pull through
//! `kraken dev` those were 90 % (the origins' piece reads) and most of the rest (the agent's
//! write batches) of the process's page faults.
//!
//! [`BufferPool`] keeps buffers the last reference to them has let go of, up to a byte
//! budget, and hands them to the next user of a similar length. Buffers shorter than
//! [`MIN_POOLED`] do not take part: the allocator keeps such sizes in its heap already.
//! A pool nobody took a buffer from for [`IDLE_SWEEP`] frees what it keeps (one thread
//! per process looks), so an idle node holds no more memory than it did without pools.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;

/// Reads shorter than this get a fresh buffer and give nothing back.
pub const MIN_POOLED: usize = 64 * 1024;

/// How often the sweeper looks at every pool; a pool not taken from since its last look
/// frees its kept buffers.
pub const IDLE_SWEEP: Duration = Duration::from_secs(10);

/// A pool of buffers; clones share it.
#[derive(Clone, Debug)]
pub struct BufferPool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Most bytes of capacity kept while unused.
    budget: usize,
    free: Mutex<Free>,
}

#[derive(Debug, Default)]
struct Free {
    buffers: Vec<Vec<u8>>,
    /// Sum of the kept buffers' capacities.
    bytes: usize,
    /// Whether a buffer was taken since the last sweep.
    taken: bool,
}

impl BufferPool {
    /// A pool that keeps up to `budget` bytes of unused buffers.
    pub fn new(budget: usize) -> Self {
        let pool = Self::unswept(budget);
        sweeper().watch(&pool.shared);
        pool
    }

    /// A pool the sweeper does not look at (tests that count what it keeps).
    pub(crate) fn unswept(budget: usize) -> Self {
        BufferPool {
            shared: Arc::new(Shared {
                budget,
                free: Mutex::new(Free::default()),
            }),
        }
    }

    /// A buffer for a read of `len` bytes. Either a kept one whose capacity is `len` to
    /// twice it (so a short read does not hold a piece-sized buffer), already `len` bytes
    /// long with stale contents for the read to overwrite; or a new, empty one with room
    /// for `len`, which the read fills through its spare capacity (neither is zeroed
    /// first, except where a kept buffer grows past what it held before).
    pub fn take(&self, len: usize) -> Vec<u8> {
        if len >= MIN_POOLED {
            let mut free = self.shared.lock();
            free.taken = true;
            let fits = free
                .buffers
                .iter()
                .position(|b| (len..=len.saturating_mul(2)).contains(&b.capacity()));
            if let Some(at) = fits {
                let mut buf = free.buffers.swap_remove(at);
                free.bytes -= buf.capacity();
                drop(free);
                buf.resize(len, 0);
                return buf;
            }
        }
        Vec::with_capacity(len)
    }

    /// `buf`'s bytes, shared; the buffer comes back to the pool when the last clone or
    /// slice of them is dropped.
    pub fn freeze(&self, buf: Vec<u8>) -> Bytes {
        if buf.capacity() < MIN_POOLED {
            return Bytes::from(buf);
        }
        Bytes::from_owner(Lent {
            buf,
            home: Arc::downgrade(&self.shared),
        })
    }

    /// Keeps `buf` for a later [`take`](Self::take), if it is large enough to be worth it
    /// and the budget has room; frees it otherwise.
    pub fn give(&self, buf: Vec<u8>) {
        if buf.capacity() >= MIN_POOLED {
            self.shared.give_back(buf);
        }
    }

    /// Bytes of capacity kept unused right now.
    pub fn kept_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// Frees the kept buffers if none was taken since the last call; returns the bytes
    /// freed. The sweeper calls this every [`IDLE_SWEEP`].
    pub fn sweep_idle(&self) -> usize {
        self.shared.sweep_idle()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        // The kept list is valid after any panic: a buffer is pushed or removed whole.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sweep_idle(&self) -> usize {
        let mut free = self.lock();
        if std::mem::take(&mut free.taken) {
            return 0;
        }
        let freed = std::mem::take(&mut free.bytes);
        let buffers = std::mem::take(&mut free.buffers);
        drop(free);
        drop(buffers);
        freed
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut free = self.lock();
        if free.bytes + buf.capacity() <= self.budget {
            free.bytes += buf.capacity();
            free.buffers.push(buf);
        }
    }
}

/// The process's sweeper: every pool made, looked at every [`IDLE_SWEEP`] by one thread,
/// started with the first pool.
fn sweeper() -> &'static Sweeper {
    static SWEEPER: OnceLock<Sweeper> = OnceLock::new();
    SWEEPER.get_or_init(|| {
        // Without the thread, pools keep up to their budget: more memory, nothing wrong.
        let _ = std::thread::Builder::new()
            .name("buffer-sweeper".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(IDLE_SWEEP);
                    sweeper().sweep();
                }
            });
        Sweeper::default()
    })
}

#[derive(Default)]
struct Sweeper {
    pools: Mutex<Vec<Weak<Shared>>>,
}

impl Sweeper {
    fn watch(&self, shared: &Arc<Shared>) {
        self.lock().push(Arc::downgrade(shared));
    }

    /// Sweeps every live pool and forgets the dropped ones.
    fn sweep(&self) {
        let live: Vec<Arc<Shared>> = {
            let mut pools = self.lock();
            pools.retain(|p| p.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        for pool in live {
            pool.sweep_idle();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Shared>>> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A buffer lent out as [`Bytes`]; dropping it returns it to its pool, if the pool is
/// still there.
struct Lent {
    buf: Vec<u8>,
    home: Weak<Shared>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            home.give_back(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn filled(pool: &BufferPool, len: usize, byte: u8) -> Bytes {
        let mut buf = pool.take(len);
        buf.clear();
        buf.resize(len, byte);
        pool.freeze(buf)
    }

    #[test]
    fn a_buffer_comes_back_when_its_last_slice_is_dropped_and_is_reused() {
        let pool = BufferPool::unswept(8 * MIB);
        let bytes = filled(&pool, 4 * MIB, 7);
        let first = bytes.as_ptr();
        let slice = bytes.slice(MIB..2 * MIB);
        drop(bytes);
        assert_eq!(pool.kept_bytes(), 0, "a slice still holds it");
        assert!(slice.iter().all(|&b| b == 7));
        drop(slice);
        assert_eq!(pool.kept_bytes(), 4 * MIB);

        let again = pool.take(4 * MIB);
        assert_eq!(again.as_ptr(), first, "the same memory is handed out again");
        assert_eq!(again.len(), 4 * MIB, "ready to be read into");
        assert_eq!(pool.kept_bytes(), 0);
        let fresh = pool.take(4 * MIB);
        assert!(fresh.is_empty() && fresh.capacity() >= 4 * MIB);
    }

    #[test]
    fn a_short_read_does_not_take_a_much_larger_buffer() {
        let pool = BufferPool::unswept(8 * MIB);
        drop(filled(&pool, 4 * MIB, 1));
        let small = pool.take(512 * 1024);
        assert!(small.capacity() < 4 * MIB);
        assert_eq!(
            pool.kept_bytes(),
            4 * MIB,
            "the piece buffer stays for a piece"
        );
        let piece = pool.take(3 * MIB);
        assert_eq!(piece.capacity(), 4 * MIB, "within twice the length it fits");
        assert_eq!(piece.len(), 3 * MIB);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_budget() {
        let pool = BufferPool::unswept(8 * MIB);
        let out: Vec<Bytes> = (0..5).map(|i| filled(&pool, 4 * MIB, i)).collect();
        drop(out);
        assert_eq!(
            pool.kept_bytes(),
            8 * MIB,
            "two of five kept, the rest freed"
        );
    }

    #[test]
    fn a_pool_not_taken_from_between_two_sweeps_frees_what_it_keeps() {
        let pool = BufferPool::unswept(8 * MIB);
        drop(filled(&pool, 4 * MIB, 1));
        assert_eq!(
            pool.sweep_idle(),
            0,
            "taken from since the last sweep: kept"
        );
        assert_eq!(pool.kept_bytes(), 4 * MIB);
        assert_eq!(pool.sweep_idle(), 4 * MIB, "idle for a whole sweep: freed");
        assert_eq!(pool.kept_bytes(), 0);

        drop(filled(&pool, 4 * MIB, 2));
        assert_eq!(pool.sweep_idle(), 0);
        assert_eq!(pool.kept_bytes(), 4 * MIB, "busy again: kept again");
    }

    #[test]
    fn the_sweeper_forgets_dropped_pools() {
        let sweeper = Sweeper::default();
        let kept = BufferPool::unswept(MIB);
        let gone = BufferPool::unswept(MIB);
        sweeper.watch(&kept.shared);
        sweeper.watch(&gone.shared);
        drop(gone);
        sweeper.sweep();
        assert_eq!(sweeper.lock().len(), 1);
    }

    #[test]
    fn small_reads_bypass_the_pool_and_bytes_outlive_it() {
        let pool = BufferPool::unswept(8 * MIB);
        drop(filled(&pool, MIN_POOLED - 1, 3));
        assert_eq!(pool.kept_bytes(), 0);

        let bytes = filled(&pool, 2 * MIB, 9);
        drop(pool);
        assert_eq!(
            bytes.len(),
            2 * MIB,
            "the bytes stay valid without their pool"
        );
        assert!(bytes.iter().all(|&b| b == 9));
    }
}
