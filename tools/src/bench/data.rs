//! Seeded pseudo-random test data, written fast: a benchmark needs gigabytes of bytes that
//! no compression or deduplication can shortcut, and `/dev/urandom` makes them at a
//! fraction of the speed of a splitmix64 stream. The same seed gives the same bytes.
//!
//! Also gzip streams of such bytes in stored (uncompressed) deflate blocks: registry
//! clients (skopeo) copy a layer typed `tar+gzip` as it is when its bytes start like a gzip
//! stream, but compress one that does not, which for random bytes would measure the
//! client's compressor instead of the registries.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use kraken_storage::{Digest, DigestAlgorithm, DigestHasher};

/// Bytes generated per write call.
const BUF_LEN: usize = 1 << 20;

/// The splitmix64 generator (Steele, Lea and Flood): one 64-bit add and a few multiplies
/// per 8 bytes, well mixed enough that no compressor finds anything in its output.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
    /// Bytes of the last output not handed out yet (low bytes first), and how many.
    spare: u64,
    spare_len: usize,
}

impl SplitMix64 {
    /// A generator whose stream depends only on `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 {
            state: seed,
            spare: 0,
            spare_len: 0,
        }
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0; the modulo bias is below 2^-40 for the small `n` the
    /// harnesses draw).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with the next bytes of the stream: one byte stream however it is cut
    /// into calls.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let from_spare = self.spare_len.min(buf.len());
        for b in &mut buf[..from_spare] {
            *b = self.spare as u8;
            self.spare >>= 8;
        }
        self.spare_len -= from_spare;
        let mut words = buf[from_spare..].chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let z = self.next_u64();
            tail.copy_from_slice(&z.to_le_bytes()[..tail.len()]);
            self.spare = z >> (8 * tail.len());
            self.spare_len = 8 - tail.len();
        }
    }
}

/// Writes one pseudo-random stream of `seed` across `parts` (each a file and its length, in
/// order: the parts of one blob, e.g. upload chunks) and returns the sha256 of the whole
/// stream, hashed as it is written.
pub fn write_random_parts(parts: &[(&Path, u64)], seed: u64) -> io::Result<Digest> {
    let mut rng = SplitMix64::new(seed);
    let mut hasher = DigestHasher::new(DigestAlgorithm::Sha256);
    let mut buf = vec![0u8; BUF_LEN];
    for (path, len) in parts {
        let mut file = BufWriter::with_capacity(BUF_LEN, File::create(path)?);
        let mut left = *len;
        while left > 0 {
            let n = left.min(BUF_LEN as u64) as usize;
            rng.fill(&mut buf[..n]);
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
        file.into_inner().map_err(io::IntoInnerError::into_error)?;
    }
    Ok(hasher.finish())
}

/// Writes `len` pseudo-random bytes of `seed` to `path`; returns their sha256.
pub fn write_random(path: &Path, len: u64, seed: u64) -> io::Result<Digest> {
    write_random_parts(&[(path, len)], seed)
}

/// Reads `path` once from the disk and forgets the bytes. The first read from the disk of
/// a freshly written file costs its reader several times the CPU of later ones (measured
/// on this project's ext4 machine: 1.7 s of system time per GiB against 0.1–0.4 s), so a
/// benchmark whose timed client reads a file it just wrote charges that to whichever
/// system goes first. The file is synced and dropped from the page cache first, so the
/// read really goes to the disk.
pub fn read_once(path: &Path) -> io::Result<()> {
    let mut file = File::open(path)?;
    file.sync_all()?;
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
    io::copy(&mut file, &mut io::sink()).map(|_| ())
}

/// The sha256 of `len` bytes of `path` from `offset` (a ranged read's expected bytes).
pub fn hash_range(path: &Path, offset: u64, len: u64) -> io::Result<Digest> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let (digest, n) = Digest::of_reader(DigestAlgorithm::Sha256, file.take(len))?;
    if n != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} ends before {offset} + {len}", path.display()),
        ));
    }
    Ok(digest)
}

/// A gzip layer written by [`write_stored_gzip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GzipLayer {
    /// sha256 of the gzip stream (the layer's digest in a manifest).
    pub digest: Digest,
    /// Length of the gzip stream.
    pub size: u64,
    /// sha256 of the uncompressed bytes (the layer's `diff_id` in an image config).
    pub diff_id: Digest,
}

/// Longest stored deflate block.
const STORED_BLOCK: usize = 65_535;

/// Writes `len` pseudo-random bytes of `seed` to `path` as one gzip stream made of stored
/// deflate blocks (RFC 1951 § 3.2.4, RFC 1952), hashing both sides in the same pass.
pub fn write_stored_gzip(path: &Path, len: u64, seed: u64) -> io::Result<GzipLayer> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Hashed {
        inner: BufWriter::with_capacity(BUF_LEN, File::create(path)?),
        hasher: DigestHasher::new(DigestAlgorithm::Sha256),
        len: 0,
    };
    let mut plain = DigestHasher::new(DigestAlgorithm::Sha256);
    let mut crc = Crc32::new();
    // Magic, deflate, no flags, no mtime, no extra flags, unknown OS.
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
    // Generated a megabyte at a time, framed in blocks of at most 64 KiB.
    let mut buf = vec![0u8; BUF_LEN];
    let mut left = len;
    loop {
        let n = left.min(BUF_LEN as u64) as usize;
        rng.fill(&mut buf[..n]);
        plain.update(&buf[..n]);
        crc.update(&buf[..n]);
        left -= n as u64;
        let mut blocks = buf[..n].chunks(STORED_BLOCK).peekable();
        if n == 0 {
            write_stored_block(&mut out, &[], true)?;
        }
        while let Some(block) = blocks.next() {
            write_stored_block(&mut out, block, left == 0 && blocks.peek().is_none())?;
        }
        if left == 0 {
            break;
        }
    }
    out.write_all(&crc.finish().to_le_bytes())?;
    // ISIZE is the length modulo 2^32.
    out.write_all(&(len as u32).to_le_bytes())?;
    out.inner
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    Ok(GzipLayer {
        digest: out.hasher.finish(),
        size: out.len,
        diff_id: plain.finish(),
    })
}

/// One stored deflate block: BFINAL in bit 0, BTYPE 00, the rest of the byte padding,
/// then the length and its complement.
fn write_stored_block(out: &mut impl Write, block: &[u8], last: bool) -> io::Result<()> {
    let len = block.len() as u16;
    out.write_all(&[u8::from(last)])?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&(!len).to_le_bytes())?;
    out.write_all(block)
}

/// A writer that hashes and counts what passes through.
struct Hashed<W> {
    inner: W,
    hasher: DigestHasher,
    len: u64,
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// CRC-32 (IEEE 802.3, reflected, as gzip uses it), eight bytes per step ("slicing by
/// 8"): a gigabyte of layers should not wait on a byte-at-a-time loop.
#[derive(Debug, Clone)]
pub struct Crc32 {
    crc: u32,
}

/// The eight lookup tables of slicing-by-8, built at compile time.
const CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

impl Default for Crc32 {
    fn default() -> Self {
        Crc32::new()
    }
}

impl Crc32 {
    /// A fresh checksum.
    pub fn new() -> Crc32 {
        Crc32 { crc: !0 }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        let t = &CRC_TABLES;
        let mut c = self.crc;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let lo = c ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            c = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][w[4] as usize]
                ^ t[2][w[5] as usize]
                ^ t[1][w[6] as usize]
                ^ t[0][w[7] as usize];
        }
        for &b in words.remainder() {
            c = (c >> 8) ^ t[0][((c ^ u32::from(b)) & 0xff) as usize];
        }
        self.crc = c;
    }

    /// The checksum of everything fed.
    pub fn finish(&self) -> u32 {
        !self.crc
    }
}

/// Flips every bit of the byte at each of `offsets` (those below the file's length) of
/// `path`, in place, and syncs it: stored data rotting on disk. The number flipped.
pub fn flip_bytes(path: &Path, offsets: impl IntoIterator<Item = u64>) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = f.metadata()?.len();
    let mut flipped = 0;
    for at in offsets.into_iter().take_while(|&at| at < len) {
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut b)?;
        b[0] ^= 0xff;
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&b)?;
        flipped += 1;
    }
    f.sync_all()?;
    Ok(flipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_check_value() {
        let mut c = Crc32::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xcbf4_3926);
        // Split anywhere, the same checksum (the 8-byte path and the tail agree).
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut whole = Crc32::new();
        whole.update(&data);
        let mut parts = Crc32::new();
        parts.update(&data[..13]);
        parts.update(&data[13..]);
        assert_eq!(whole.finish(), parts.finish());
        let mut bytewise = !0u32;
        for &b in &data {
            bytewise = (bytewise >> 8) ^ CRC_TABLES[0][((bytewise ^ u32::from(b)) & 0xff) as usize];
        }
        assert_eq!(whole.finish(), !bytewise);
    }

    #[test]
    fn parts_are_one_stream_and_seeds_differ() {
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let d1 = write_random(&whole, 100_003, 7).unwrap();
        // Cut off the 8-byte grid: still the same stream.
        let d2 = write_random_parts(&[(&a, 50_001), (&b, 50_002)], 7).unwrap();
        assert_eq!(d1, d2);
        let mut joined = std::fs::read(&a).unwrap();
        joined.extend(std::fs::read(&b).unwrap());
        assert_eq!(joined, std::fs::read(&whole).unwrap());
        assert_eq!(Digest::sha256_of(&joined), d1);
        let other = dir.path().join("other");
        assert_ne!(write_random(&other, 100_003, 8).unwrap(), d1);
        assert_eq!(
            hash_range(&whole, 1000, 5000).unwrap(),
            Digest::sha256_of(&joined[1000..6000])
        );
        assert!(hash_range(&whole, 100_000, 5000).is_err());
    }

    #[test]
    fn stored_gzip_is_a_gzip_stream_of_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0u64, 1, 65_535, 65_536, 200_000] {
            let gz = dir.path().join(format!("layer-{len}.gz"));
            let layer = write_stored_gzip(&gz, len, 3).unwrap();
            let bytes = std::fs::read(&gz).unwrap();
            assert_eq!(layer.size, bytes.len() as u64);
            assert_eq!(layer.digest, Digest::sha256_of(&bytes));
            let plain = dir.path().join(format!("plain-{len}"));
            let want = write_random(&plain, len, 3).unwrap();
            assert_eq!(layer.diff_id, want);
            // gzip itself (always on Debian) must read it back, checksums included.
            let Ok(out) = std::process::Command::new("gzip")
                .arg("-dc")
                .arg(&gz)
                .output()
            else {
                eprintln!("gzip not installed: decoding not checked");
                continue;
            };
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout, std::fs::read(&plain).unwrap());
        }
    }
}
