//! Writes past the page cache: direct I/O where the filesystem takes it, the page cache
//! where it does not.
//!
//! Bytes written once and not read soon (a download's pieces, a push's spill, a pushed
//! blob) cost about as much CPU to copy into fresh page-cache pages as to hash them. A
//! direct write hands an aligned buffer to the disk as it is. A pushed blob is read again
//! soon, by replication and write-back, but each of those is one pass that the disk
//! serves, and an origin holds far more than its page cache. The fsync of a flush or
//! commit covers direct writes as it covers the page cache, so durability is unchanged.
//!
//! Direct I/O wants the buffer, the length and the file offset on multiples of the
//! device's logical block ([`DIRECT_ALIGN`]). [`DirectFile::write_at`] writes the aligned
//! part of a buffer directly and the rest (a short tail) through an ordinary handle of the
//! same file. A filesystem that refuses direct I/O (tmpfs on older kernels, some network
//! and overlay filesystems) refuses it once, and every later write goes through the page
//! cache; a real I/O error is returned as it is.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::buffers::BufferPool;

/// The alignment direct I/O wants of buffers, lengths and offsets: 4 KiB covers devices of
/// 512 and of 4096 bytes.
pub const DIRECT_ALIGN: usize = 4096;

/// A file opened a second time for direct writes, beside the ordinary handle that takes
/// what direct I/O cannot. Positioned writes need no handle of their own, so one is shared.
#[derive(Debug)]
pub struct DirectFile {
    file: File,
    /// Set once a direct write was refused: later writes go through the page cache.
    refused: AtomicBool,
}

impl DirectFile {
    /// Opens `path` for direct writes, or `None` where the filesystem refuses.
    pub fn open(path: &Path) -> Option<DirectFile> {
        let flags = rustix::fs::OFlags::DIRECT.bits();
        match OpenOptions::new()
            .write(true)
            .custom_flags(flags as i32)
            .open(path)
        {
            Ok(file) => Some(DirectFile {
                file,
                refused: AtomicBool::new(false),
            }),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no direct I/O here, writing through the page cache");
                None
            }
        }
    }

    /// Opens the file behind `file` again for direct writes (through `/proc/self/fd`, so
    /// it works for a file with no name), or `None` where that is refused.
    pub fn reopen(file: &File) -> Option<DirectFile> {
        use std::os::fd::AsRawFd;
        Self::open(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())))
    }

    /// The file's name as the kernel knows it (an unnamed file shows its directory), for
    /// the log: asked only when there is something to log.
    fn name(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        let fd = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        std::fs::read_link(&fd).unwrap_or_else(|_| fd.into())
    }

    /// Whether a direct write was refused: every write goes through the page cache now.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// Writes `bytes` at `at`: the aligned part directly when `at` and the buffer allow,
    /// the rest through `fallback` (an ordinary handle of the same file).
    pub fn write_at(&self, fallback: &File, bytes: &[u8], at: u64) -> io::Result<()> {
        let mut rest = bytes;
        if !self.refused() && at.is_multiple_of(DIRECT_ALIGN as u64) {
            let aligned = bytes.len() / DIRECT_ALIGN * DIRECT_ALIGN;
            match self.file.write_all_at(&bytes[..aligned], at) {
                Ok(()) => rest = &bytes[aligned..],
                // The filesystem (or this buffer) does not do direct I/O after all: the
                // page cache takes this write, and every later one.
                Err(e) if refuses_direct_io(&e) => {
                    tracing::debug!(path = %self.name().display(), error = %e, "direct write refused, writing through the page cache");
                    self.refused.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let rest_at = at + (bytes.len() - rest.len()) as u64;
        fallback.write_all_at(rest, rest_at)
    }
}

/// Writes `bytes` at `at` through `direct` when there is one, else through `file`.
pub fn write_at(direct: Option<&DirectFile>, file: &File, bytes: &[u8], at: u64) -> io::Result<()> {
    match direct {
        Some(d) => d.write_at(file, bytes, at),
        None => file.write_all_at(bytes, at),
    }
}

/// Appends to a file from an offset on, in writes of one buffer's size, past the page cache
/// where the filesystem allows. Starting at an unaligned offset (a session's next chunk
/// after an odd-length one), its first write only reaches the next [`DIRECT_ALIGN`]
/// boundary, through the page cache, so that every later one starts aligned.
pub struct DirectAppender<'a> {
    file: &'a File,
    direct: Option<DirectFile>,
    buf: AlignedBuf,
    /// Where `buf`'s first byte goes in the file.
    at: u64,
}

impl<'a> DirectAppender<'a> {
    /// Appends to `file` from `start` on, in writes of `buffer` bytes (a multiple of
    /// [`DIRECT_ALIGN`], so that a full buffer's write stays aligned).
    pub fn new(file: &'a File, start: u64, buffer: usize) -> Self {
        assert!(
            buffer >= DIRECT_ALIGN && buffer.is_multiple_of(DIRECT_ALIGN),
            "an appender's buffer is a positive multiple of {DIRECT_ALIGN}"
        );
        DirectAppender {
            file,
            direct: DirectFile::reopen(file),
            buf: AlignedBuf::new(buffer),
            at: start,
        }
    }

    /// Appends `bytes`: into the buffer, and the buffer to the file each time it is full.
    pub fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let room = self.room();
            let n = self.buf.fill(&bytes[..bytes.len().min(room)]);
            bytes = &bytes[n..];
            if self.room() == 0 {
                self.write_out()?;
            }
        }
        Ok(())
    }

    /// Puts what the buffer holds in the file too (through the page cache: its length is
    /// not aligned), and keeps it: the buffer's next full write covers the same bytes
    /// again, so every direct write stays aligned.
    pub fn flush_keeping(&self) -> io::Result<()> {
        self.file.write_all_at(self.buf.bytes(), self.at)
    }

    /// Writes what the buffer holds (its aligned part directly, the tail through the page
    /// cache): every byte appended is in the file. Not synced: the caller's fsync is.
    pub fn finish(mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.write_out()
    }

    /// Room left before the buffer is written: up to the next aligned offset while `at`
    /// is not on one, else the whole buffer.
    fn room(&self) -> usize {
        let align = DIRECT_ALIGN as u64;
        let head = ((align - self.at % align) % align) as usize;
        let limit = if head == 0 { self.buf.capacity() } else { head };
        limit - self.buf.len()
    }

    fn write_out(&mut self) -> io::Result<()> {
        write_at(self.direct.as_ref(), self.file, self.buf.bytes(), self.at)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Whether a direct write failed because direct I/O is refused (`EINVAL`: alignment or
/// no support; `EOPNOTSUPP`), not because the disk failed.
fn refuses_direct_io(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let code = e.raw_os_error();
    code == Some(Errno::INVAL.raw_os_error()) || code == Some(Errno::OPNOTSUPP.raw_os_error())
}

/// A write buffer that starts on a [`DIRECT_ALIGN`] boundary, of a fixed capacity.
pub struct AlignedBuf {
    /// Padding up to the aligned start, then the buffer's room; allocated once with room
    /// for both and never grown, so the start stays aligned. Its length is how far the
    /// room has been written (and so initialised) at least once: [`fill`](Self::fill)
    /// appends past it without zeroing anything first, [`read_from`](Self::read_from)
    /// zeroes the rest of the room once per buffer, and a cleared buffer reuses it all.
    raw: Vec<u8>,
    /// Where the aligned part of `raw` starts.
    start: usize,
    /// Bytes gathered after `start`.
    len: usize,
    capacity: usize,
    /// Where `raw` goes back to when the buffer (or its bytes) is dropped.
    pool: Option<BufferPool>,
}

impl AlignedBuf {
    /// An empty buffer with room for `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self::with_offset(capacity, 0)
    }

    /// An empty buffer with room for `capacity` bytes, its memory taken from `pool` and
    /// given back to it when the buffer, or the last of its bytes, is dropped.
    pub fn pooled(capacity: usize, pool: &BufferPool) -> Self {
        let raw = pool.take(capacity + DIRECT_ALIGN);
        Self::on(raw, capacity, 0, Some(pool.clone()))
    }

    /// A buffer that starts `offset` bytes past an aligned address (tests: a buffer
    /// direct I/O refuses).
    pub(crate) fn with_offset(capacity: usize, offset: usize) -> Self {
        let raw = Vec::with_capacity(capacity + DIRECT_ALIGN + offset);
        Self::on(raw, capacity, offset, None)
    }

    /// The buffer in `raw`, whose capacity has room for `capacity` bytes past the aligned
    /// start plus `offset`; what `raw` already holds counts as initialised room.
    fn on(mut raw: Vec<u8>, capacity: usize, offset: usize, pool: Option<BufferPool>) -> Self {
        // An unaligned start (never on real allocators) only costs the direct path: the
        // kernel refuses the write and the writer falls back to the page cache.
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN) + offset;
        if raw.len() < start {
            raw.resize(start, 0);
        }
        AlignedBuf {
            raw,
            start,
            len: 0,
            capacity,
            pool,
        }
    }

    /// Bytes gathered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is gathered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most bytes it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether the buffer is full.
    pub fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    /// Copies in as much of `bytes` as fits; returns how much.
    pub fn fill(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.capacity - self.len);
        let at = self.start + self.len;
        let reused = (self.raw.len() - at).min(n);
        self.raw[at..at + reused].copy_from_slice(&bytes[..reused]);
        self.raw.extend_from_slice(&bytes[reused..n]);
        self.len += n;
        n
    }

    /// Reads from `source` once into the free room; returns what `read` returned.
    pub fn read_from(&mut self, source: &mut impl io::Read) -> io::Result<usize> {
        // `read` wants initialised memory: the room is zeroed the first time only.
        self.raw.resize(self.start + self.capacity, 0);
        let at = self.start + self.len;
        let n = source.read(&mut self.raw[at..])?;
        self.len += n;
        Ok(n)
    }

    /// The gathered bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// Forgets the gathered bytes (keeps the allocation, and what of it is initialised).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The gathered bytes, without a copy (the buffer goes with them).
    pub fn into_bytes(mut self) -> Bytes {
        let raw = std::mem::take(&mut self.raw);
        let all = match self.pool.take() {
            Some(pool) => pool.freeze(raw),
            None => Bytes::from(raw),
        };
        all.slice(self.start..self.start + self.len)
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give(std::mem::take(&mut self.raw));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Everything in `file`, read from its current offset (a fresh handle's: the start).
    fn contents(file: &File) -> Vec<u8> {
        let mut back = Vec::new();
        let mut reader = file;
        reader.read_to_end(&mut back).unwrap();
        back
    }

    #[test]
    fn a_pooled_buffer_comes_back_and_gathers_only_what_it_is_given_next() {
        let pool = BufferPool::unswept(1 << 20);
        let mut buf = AlignedBuf::pooled(128 * 1024, &pool);
        assert_eq!(buf.fill(&[7u8; 128 * 1024]), 128 * 1024);
        let memory = buf.bytes().as_ptr();
        let bytes = buf.into_bytes();
        assert_eq!(pool.kept_bytes(), 0, "lent out with its bytes");
        drop(bytes);
        assert!(
            pool.kept_bytes() > 128 * 1024,
            "back once the bytes are dropped"
        );

        let mut again = AlignedBuf::pooled(128 * 1024, &pool);
        assert!(again.is_empty(), "the old bytes are not gathered");
        assert_eq!(again.fill(b"new"), 3);
        assert_eq!(again.bytes(), b"new");
        assert_eq!(
            again.bytes().as_ptr(),
            memory,
            "in the same memory, still aligned"
        );
        let mut source: &[u8] = &[9u8; 200 * 1024];
        assert_eq!(again.read_from(&mut source).unwrap(), 128 * 1024 - 3);
        assert!(again.is_full());
        assert!(again.bytes()[3..].iter().all(|&b| b == 9));
        drop(again);
        assert!(
            pool.kept_bytes() > 128 * 1024,
            "a dropped buffer comes back too"
        );
    }

    #[test]
    fn only_a_refusal_of_direct_io_falls_back_a_failing_disk_fails() {
        use rustix::io::Errno;
        let err = |e: Errno| io::Error::from_raw_os_error(e.raw_os_error());
        assert!(refuses_direct_io(&err(Errno::INVAL)));
        assert!(refuses_direct_io(&err(Errno::OPNOTSUPP)));
        for e in [Errno::NOSPC, Errno::IO, Errno::DQUOT, Errno::ROFS] {
            assert!(!refuses_direct_io(&err(e)), "{e}");
        }
    }

    #[test]
    fn writes_of_every_alignment_land_every_byte_also_in_an_unnamed_file() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * DIRECT_ALIGN + 517)
            .map(|i| (i % 251) as u8)
            .collect();
        for unnamed in [false, true] {
            let file = if unnamed {
                tempfile::tempfile_in(dir.path()).unwrap()
            } else {
                tempfile::NamedTempFile::new_in(dir.path())
                    .unwrap()
                    .into_file()
            };
            let direct = DirectFile::reopen(&file);
            let mut buf = AlignedBuf::new(2 * DIRECT_ALIGN + 100);
            let mut at = 0;
            // A full aligned buffer, then ones of odd lengths at odd offsets.
            for part in [2 * DIRECT_ALIGN + 100, DIRECT_ALIGN - 3, DIRECT_ALIGN + 420] {
                let end = (at + part).min(data.len());
                assert_eq!(buf.fill(&data[at..end]), end - at);
                write_at(direct.as_ref(), &file, buf.bytes(), at as u64).unwrap();
                buf.clear();
                at = end;
            }
            let back = contents(&file);
            assert!(back == data[..at]);
        }
    }

    #[test]
    fn an_appender_from_any_offset_lands_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5 * DIRECT_ALIGN + 1234)
            .map(|i| (i % 251) as u8)
            .collect();
        for start in [0u64, 1, 517, DIRECT_ALIGN as u64, DIRECT_ALIGN as u64 + 9] {
            let file = tempfile::tempfile_in(dir.path()).unwrap();
            let head = vec![7u8; start as usize];
            file.write_all_at(&head, 0).unwrap();
            let mut out = DirectAppender::new(&file, start, 2 * DIRECT_ALIGN);
            for part in data.chunks(1000) {
                out.append(part).unwrap();
            }
            out.finish().unwrap();
            let back = contents(&file);
            assert_eq!(back.len(), head.len() + data.len(), "start {start}");
            assert!(back[..head.len()] == head[..] && back[head.len()..] == data[..]);
        }
    }

    #[test]
    fn a_flushed_appender_holds_its_bytes_and_goes_on_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let file = tempfile::tempfile_in(dir.path()).unwrap();
        let data: Vec<u8> = (0..3 * DIRECT_ALIGN).map(|i| (i % 13) as u8).collect();
        let mut out = DirectAppender::new(&file, 0, DIRECT_ALIGN);
        out.append(&data[..100]).unwrap();
        out.flush_keeping().unwrap();
        assert_eq!(file.metadata().unwrap().len(), 100);
        out.append(&data[100..]).unwrap();
        out.finish().unwrap();
        let back = contents(&file);
        assert!(back == data);
    }

    #[test]
    fn an_aligned_buffer_fills_to_its_capacity_and_hands_its_bytes_over() {
        let mut buf = AlignedBuf::new(10);
        assert_eq!(buf.bytes().as_ptr().align_offset(DIRECT_ALIGN), 0);
        assert_eq!(buf.fill(b"hello, world"), 10);
        assert!(buf.is_full());
        assert_eq!(buf.fill(b"more"), 0);
        assert_eq!(&buf.into_bytes()[..], b"hello, wor");
    }

    #[test]
    fn a_cleared_buffer_reads_and_fills_again_without_stale_bytes() {
        let mut buf = AlignedBuf::new(8);
        let mut source: &[u8] = b"abcdefghij";
        assert_eq!(buf.read_from(&mut source).unwrap(), 8);
        assert!(buf.is_full());
        assert_eq!(buf.read_from(&mut source).unwrap(), 0);
        buf.clear();
        assert_eq!(buf.read_from(&mut source).unwrap(), 2);
        assert_eq!(buf.bytes(), b"ij");
        // Filling over room that a read initialised, and past it after a short read.
        assert_eq!(buf.fill(b"klmnopqrst"), 6);
        assert_eq!(buf.bytes(), b"ijklmnop");
        buf.clear();
        assert_eq!(buf.fill(b"uv"), 2);
        assert_eq!(&buf.into_bytes()[..], b"uv");
    }
}
