//! The local CAS end to end on real files: ingest, partial downloads, readers, eviction,
//! the startup sweep, and the errors of bad input.
#![cfg(feature = "local")]
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{self, Read};
use std::time::{Duration, SystemTime};

use kraken_storage::cas::{BlobState, Cas, CasConfig, CasError};
use kraken_storage::{Digest, DigestAlgorithm, Metainfo, PieceIndex, PieceLengthTable};

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// 64 KiB pieces keep the tests small while still having many pieces.
fn small_pieces() -> PieceLengthTable {
    PieceLengthTable::uniform(64 * 1024)
}

fn config(dir: &std::path::Path) -> CasConfig {
    CasConfig {
        piece_lengths: small_pieces(),
        ..CasConfig::at(dir)
    }
}

fn tmp_files(dir: &std::path::Path) -> usize {
    fs::read_dir(dir.join("tmp")).unwrap().count()
}

#[test]
fn ingest_then_read_whole_ranges_and_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let blob = data(1_000_000, 1);
    let digest = Digest::sha256_of(&blob);

    let got = cas
        .ingest(&digest, Some(blob.len() as u64), &blob[..])
        .unwrap();
    assert!(!got.already_present);
    assert_eq!(got.info.state, BlobState::Complete);
    assert_eq!(
        got.metainfo,
        Metainfo::from_bytes(&blob, &small_pieces()).unwrap()
    );
    assert_eq!(
        cas.metainfo(&digest).unwrap().unwrap().id(),
        got.metainfo.id()
    );
    assert!(cas.contains(&digest).unwrap());
    assert_eq!(cas.used_bytes(), blob.len() as u64);
    let hex = digest.hex();
    assert!(
        dir.path()
            .join("blobs")
            .join(&hex[..2])
            .join(&hex)
            .is_file()
    );

    let r = cas.reader(&digest).unwrap();
    assert_eq!(r.len(), blob.len() as u64);
    assert_eq!(r.read_all().unwrap(), blob);
    assert_eq!(r.read_range(10..20).unwrap(), &blob[10..20]);
    assert_eq!(r.read_range(999_990..1_000_000).unwrap(), &blob[999_990..]);
    assert!(matches!(
        r.read_range(999_990..1_000_001),
        Err(CasError::BadRange { .. })
    ));
    let last = r.metainfo().piece_count() - 1;
    let piece = r.read_piece(PieceIndex(last)).unwrap();
    r.metainfo().verify_piece(PieceIndex(last), &piece).unwrap();
    assert!(r.read_piece(PieceIndex(last + 1)).is_err());

    // Zero-copy path, to a Vec and to a file.
    let mut out = Vec::new();
    assert_eq!(r.copy_range_to(100..300_100, &mut out).unwrap(), 300_000);
    assert_eq!(out, &blob[100..300_100]);
    let mut file = tempfile::tempfile().unwrap();
    r.copy_range_to(0..blob.len() as u64, &mut file).unwrap();
    let mut back = Vec::new();
    io::Seek::rewind(&mut file).unwrap();
    file.read_to_end(&mut back).unwrap();
    assert_eq!(back, blob);
}

/// Hands out its bytes at most `step` at a time, as a network body does.
struct Dribble<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

#[test]
fn ingest_lands_every_byte_past_the_page_cache_or_through_it() {
    // Several 1 MiB write buffers, each filled by many short reads, and a tail that is
    // not a multiple of the direct-I/O block.
    let blob = data(3 * 1024 * 1024 + 1234, 9);
    let digest = Digest::sha256_of(&blob);
    for direct_writes in [true, false] {
        for length in [Some(blob.len() as u64), None] {
            let dir = tempfile::tempdir().unwrap();
            let cas = Cas::open(CasConfig {
                direct_writes,
                ..config(dir.path())
            })
            .unwrap();
            let source = Dribble {
                bytes: &blob,
                step: 7_000,
            };
            let got = cas.ingest(&digest, length, source).unwrap();
            let case = format!("direct {direct_writes}, length {length:?}");
            assert_eq!(
                got.metainfo,
                Metainfo::from_bytes(&blob, &small_pieces()).unwrap(),
                "{case}"
            );
            let back = cas.reader(&digest).unwrap().read_all().unwrap();
            assert!(back == blob, "{case}");
            assert_eq!(tmp_files(dir.path()), 0, "{case}");
        }
    }
}

#[test]
fn ingest_without_length_hashes_pieces_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let blob = data(300_001, 2);
    let digest = Digest::sha256_of(&blob);
    let got = cas.ingest(&digest, None, &blob[..]).unwrap();
    assert_eq!(
        got.metainfo,
        Metainfo::from_bytes(&blob, &small_pieces()).unwrap()
    );
    assert_eq!(cas.reader(&digest).unwrap().read_all().unwrap(), blob);
}

#[test]
fn second_ingest_does_not_read_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let blob = data(1000, 3);
    let digest = Digest::sha256_of(&blob);
    cas.ingest(&digest, Some(1000), &blob[..]).unwrap();
    let got = cas.ingest(&digest, Some(1000), FailingReader(0)).unwrap();
    assert!(got.already_present);
}

/// sha512 blobs live beside sha256 ones: ingested and checked with sha512 (chaining
/// states included), downloaded piece by piece with each piece checked against the sha512
/// chain, at their own path and key, and still there after a restart.
#[test]
fn sha512_blobs_ingest_download_and_reopen_beside_sha256_ones() {
    const SHA512: DigestAlgorithm = DigestAlgorithm::Sha512;
    let dir = tempfile::tempdir().unwrap();
    let blob = data(1_000_000, 12);
    let d256 = Digest::sha256_of(&blob);
    let d512 = Digest::of(SHA512, &blob);
    {
        let cas = Cas::open(config(dir.path())).unwrap();
        cas.ingest(&d256, Some(blob.len() as u64), &blob[..])
            .unwrap();
        let got = cas
            .ingest(&d512, Some(blob.len() as u64), &blob[..])
            .unwrap();
        let want = Metainfo::from_bytes_as(SHA512, &blob, &small_pieces()).unwrap();
        assert_eq!(got.metainfo, want);
        assert!(got.metainfo.has_chain() && got.metainfo.chain().len() == 15);
        // Unknown length: the second pass computes the same sha512 chain.
        let other = data(300_000, 13);
        let d = Digest::of(SHA512, &other);
        let got = cas.ingest(&d, None, &other[..]).unwrap();
        assert_eq!(
            got.metainfo,
            Metainfo::from_bytes_as(SHA512, &other, &small_pieces()).unwrap()
        );
        // A sha512 digest of other bytes stores nothing.
        let wrong = Digest::of(SHA512, b"not these bytes");
        let err = cas
            .ingest(&wrong, Some(blob.len() as u64), &blob[..])
            .unwrap_err();
        assert!(matches!(err, CasError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&d512.to_string()), "{err}");
        assert!(!cas.contains(&wrong).unwrap());
        // Both blobs, each at its own path.
        for d in [d256, d512] {
            let path = cas.blob_path(&d);
            assert!(path.is_file() && path.ends_with(d.hex()), "{path:?}");
        }
        assert_ne!(cas.blob_path(&d256), cas.blob_path(&d512));
    }
    let cas = Cas::open(config(dir.path())).unwrap();
    assert_eq!(cas.startup_sweep(), &Default::default());
    for d in [d256, d512] {
        assert_eq!(cas.reader(&d).unwrap().read_all().unwrap(), blob);
        assert_eq!(cas.metainfo(&d).unwrap().unwrap().digest(), &d);
    }

    // A download of a sha512 blob: a corrupted piece is refused, good ones pass the chain.
    let dl = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dl.path())).unwrap();
    let meta = Metainfo::from_bytes_as(SHA512, &blob, &small_pieces()).unwrap();
    let mut p = cas.start_partial(&meta).unwrap();
    let piece = |i: u32| {
        let r = meta.piece_range(PieceIndex(i)).unwrap();
        &blob[r.start as usize..r.end as usize]
    };
    let mut bad = piece(4).to_vec();
    bad[9] ^= 1;
    assert!(matches!(
        p.write_piece(PieceIndex(4), &bad),
        Err(CasError::Piece(_))
    ));
    for i in (0..meta.piece_count()).rev() {
        assert!(p.write_piece(PieceIndex(i), piece(i)).unwrap());
    }
    p.commit().unwrap();
    assert_eq!(cas.reader(&d512).unwrap().read_all().unwrap(), blob);
}

#[test]
fn digest_mismatch_names_both_digests_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let blob = data(200_000, 4);
    let wrong = Digest::sha256_of(b"something else");
    let err = cas.ingest(&wrong, Some(200_000), &blob[..]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&wrong.to_string()), "{msg}");
    assert!(msg.contains(&Digest::sha256_of(&blob).to_string()), "{msg}");
    assert!(!cas.contains(&wrong).unwrap());
    assert!(cas.list().unwrap().is_empty());
    assert_eq!(tmp_files(dir.path()), 0);
    assert_eq!(cas.used_bytes(), 0);
}

#[test]
fn length_mismatch_short_or_long_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let blob = data(100_000, 5);
    let digest = Digest::sha256_of(&blob);
    for claimed in [99_999u64, 100_001] {
        let err = cas.ingest(&digest, Some(claimed), &blob[..]).unwrap_err();
        assert!(matches!(err, CasError::LengthMismatch { .. }), "{err}");
    }
    assert!(!cas.contains(&digest).unwrap());
    assert_eq!(tmp_files(dir.path()), 0);
}

/// Yields `n` bytes, then fails like a dropped connection.
struct FailingReader(usize);

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer went away",
            ));
        }
        let n = self.0.min(buf.len());
        buf[..n].fill(7);
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn truncated_upload_is_an_error_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let digest = Digest::sha256_of(b"whatever");
    let err = cas
        .ingest(&digest, Some(5_000_000), FailingReader(3_000_000))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CasError::Source {
                read: 3_000_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("peer went away"));
    assert_eq!(tmp_files(dir.path()), 0);
    assert_eq!(cas.used_bytes(), 0);
}

#[test]
fn partial_download_in_any_order_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let blob = data(1_000_000, 6);
    let meta = Metainfo::from_bytes(&blob, &small_pieces()).unwrap();
    let digest = *meta.digest();
    let piece = |i: u32| {
        let r = meta.piece_range(PieceIndex(i)).unwrap();
        &blob[r.start as usize..r.end as usize]
    };
    let n = meta.piece_count();
    assert_eq!(n, 16);
    {
        let cas = Cas::open(config(dir.path())).unwrap();
        let mut p = cas.start_partial(&meta).unwrap();
        // A second writer for the same blob is refused.
        assert!(matches!(cas.start_partial(&meta), Err(CasError::Busy(_))));
        // Bad bytes are rejected and not recorded.
        let mut bad = piece(3).to_vec();
        bad[0] ^= 0xff;
        assert!(matches!(
            p.write_piece(PieceIndex(3), &bad),
            Err(CasError::Piece(_))
        ));
        assert!(!p.bitfield().get(PieceIndex(3)));
        for i in [15, 3, 8, 0, 1] {
            assert!(p.write_piece(PieceIndex(i), piece(i)).unwrap());
        }
        assert!(
            !p.write_piece(PieceIndex(3), piece(3)).unwrap(),
            "duplicate"
        );
        assert_eq!(p.read_piece(PieceIndex(8)).unwrap(), piece(8));
        assert!(matches!(
            p.read_piece(PieceIndex(9)),
            Err(CasError::MissingPiece { .. })
        ));
        assert!(!cas.contains(&digest).unwrap());
        assert!(
            cas.reader(&digest).is_err(),
            "partial blobs are not readable"
        );
        assert!(matches!(cas.start_partial(&meta), Err(CasError::Busy(_))));
        let info = cas.info(&digest).unwrap().unwrap();
        assert_eq!(info.state, BlobState::Partial);
        p.flush().unwrap();
        // Dropping the store and the writer is a clean "restart".
    }
    let cas = Cas::open(config(dir.path())).unwrap();
    assert_eq!(cas.startup_sweep(), &Default::default());
    let mut p = cas.start_partial(&meta).unwrap();
    assert_eq!(p.bitfield().count_ones(), 5);
    for i in p.bitfield().missing().collect::<Vec<_>>().into_iter().rev() {
        p.write_piece(i, piece(i.0)).unwrap();
    }
    assert!(p.is_complete());
    let info = p.commit().unwrap();
    assert_eq!(info.state, BlobState::Complete);
    assert_eq!(cas.reader(&digest).unwrap().read_all().unwrap(), blob);
    assert!(matches!(
        cas.start_partial(&meta),
        Err(CasError::AlreadyExists(_))
    ));
    assert_eq!(cas.used_bytes(), blob.len() as u64);
    assert_eq!(fs::read_dir(dir.path().join("partial")).unwrap().count(), 0);
}

#[test]
fn incomplete_partial_cannot_commit_and_abort_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let blob = data(200_000, 7);
    let meta = Metainfo::from_bytes(&blob, &small_pieces()).unwrap();
    let mut p = cas.start_partial(&meta).unwrap();
    p.write_piece(PieceIndex(0), &blob[..65536]).unwrap();
    let err = p.commit().unwrap_err();
    assert!(err.to_string().contains("1 of 4 pieces"), "{err}");
    let p = cas.start_partial(&meta).unwrap();
    assert_eq!(p.bitfield().count_ones(), 1, "drop kept the progress");
    p.abort().unwrap();
    assert!(cas.info(meta.digest()).unwrap().is_none());
    assert_eq!(cas.used_bytes(), 0);
}

#[test]
fn lying_metainfo_is_caught_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let blob = data(100_000, 8);
    let honest = Metainfo::from_bytes(&blob, &small_pieces()).unwrap();
    // Piece hashes of `blob` under the digest of other bytes.
    let liar = Metainfo::new(
        Digest::sha256_of(b"other"),
        honest.length(),
        honest.piece_length(),
        honest.piece_hashes().to_vec(),
    )
    .unwrap();
    let mut p = cas.start_partial(&liar).unwrap();
    p.write_piece(PieceIndex(0), &blob[..65536]).unwrap();
    p.write_piece(PieceIndex(1), &blob[65536..]).unwrap();
    assert!(matches!(p.commit(), Err(CasError::DigestMismatch { .. })));
    assert!(cas.info(liar.digest()).unwrap().is_none());
}

/// The honest metainfo of `blob`, and one with `blob`'s piece hashes under the digest (and
/// with the sha256 chaining states) of other bytes of the same length.
fn lying_metainfo(blob: &[u8]) -> (Metainfo, Metainfo) {
    let honest = Metainfo::from_bytes(blob, &small_pieces()).unwrap();
    let named = Metainfo::from_bytes(&data(blob.len(), 9), &small_pieces()).unwrap();
    let liar = Metainfo::new(
        *named.digest(),
        honest.length(),
        honest.piece_length(),
        honest.piece_hashes().to_vec(),
    )
    .unwrap()
    .with_chain(named.chain().to_vec())
    .unwrap();
    (honest, liar)
}

#[test]
fn lying_metainfo_with_a_chain_is_caught_at_the_first_piece() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let blob = data(200_000, 8);
    let (honest, liar) = lying_metainfo(&blob);
    assert!(honest.has_chain() && liar.has_chain());
    assert_eq!(liar.piece_hashes(), honest.piece_hashes());
    assert_ne!(liar.digest(), honest.digest());

    let mut p = cas.start_partial(&liar).unwrap();
    // Streamed or whole, each piece matches its BLAKE3 hash and is refused for the chain.
    let mut w = p.piece_writer(PieceIndex(1)).unwrap();
    w.write(&blob[65536..131072]).unwrap();
    let err = w.finish().unwrap_err();
    assert!(
        matches!(
            err,
            CasError::Piece(kraken_storage::PieceError::ChainMismatch { .. })
        ),
        "{err}"
    );
    assert!(matches!(
        p.write_piece(PieceIndex(0), &blob[..65536]),
        Err(CasError::Piece(
            kraken_storage::PieceError::ChainMismatch { .. }
        ))
    ));
    assert_eq!(p.bitfield().count_ones(), 0);
    drop(p);
    assert!(
        cas.info(liar.digest())
            .unwrap()
            .is_none_or(|i| i.state != BlobState::Complete)
    );
}

#[test]
fn pieces_resumed_unchecked_are_checked_against_the_chain_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let blob = data(200_000, 8);
    let (honest, liar) = lying_metainfo(&blob);
    let unchecked = CasConfig {
        verify_digest_on_commit: false,
        ..config(dir.path())
    };
    let write_all = |cas: &Cas, meta: &Metainfo, bytes: &[u8]| {
        let mut p = cas.start_partial(meta).unwrap();
        for i in 0..meta.piece_count() {
            let r = meta.piece_range(PieceIndex(i)).unwrap();
            p.write_piece(PieceIndex(i), &bytes[r.start as usize..r.end as usize])
                .unwrap();
        }
        p.flush().unwrap();
    };
    // Stored while the check was off, then resumed (a restart) with it on: the liar's
    // pieces were never chain-checked, so commit reads them back and refuses them.
    write_all(&Cas::open(unchecked.clone()).unwrap(), &liar, &blob);
    let cas = Cas::open(config(dir.path())).unwrap();
    let p = cas.start_partial(&liar).unwrap();
    assert!(p.is_complete(), "resumed");
    assert!(matches!(
        p.commit(),
        Err(CasError::Piece(
            kraken_storage::PieceError::ChainMismatch { .. }
        ))
    ));
    assert!(cas.reader(liar.digest()).is_err());
    drop(cas);
    // The same with honest pieces commits: each is read back and passes.
    write_all(&Cas::open(unchecked).unwrap(), &honest, &blob);
    let cas = Cas::open(config(dir.path())).unwrap();
    let p = cas.start_partial(&honest).unwrap();
    assert!(p.is_complete(), "resumed");
    p.commit().unwrap();
    assert_eq!(
        cas.reader(honest.digest()).unwrap().read_all().unwrap(),
        blob
    );
}

#[test]
fn different_metainfo_for_same_digest_restarts_the_download() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let blob = data(200_000, 9);
    let meta = Metainfo::from_bytes(&blob, &small_pieces()).unwrap();
    let mut p = cas.start_partial(&meta).unwrap();
    p.write_piece(PieceIndex(0), &blob[..65536]).unwrap();
    drop(p);
    let bigger_pieces = PieceLengthTable::uniform(128 * 1024);
    let other = Metainfo::from_bytes(&blob, &bigger_pieces).unwrap();
    let p = cas.start_partial(&other).unwrap();
    assert_eq!(p.bitfield().count_ones(), 0);
    assert_eq!(cas.used_bytes(), blob.len() as u64);
}

fn ingest(cas: &Cas, seed: u64, len: usize) -> Digest {
    let blob = data(len, seed);
    let digest = Digest::sha256_of(&blob);
    cas.ingest(&digest, Some(len as u64), &blob[..]).unwrap();
    digest
}

#[test]
fn quota_evicts_least_recently_used_but_never_pinned_or_open_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(CasConfig {
        capacity_bytes: 1_000_000,
        high_water: 1.0,
        low_water: 1.0,
        tti: None,
        ..config(dir.path())
    })
    .unwrap();
    let a = ingest(&cas, 10, 300_000);
    std::thread::sleep(Duration::from_millis(5)); // distinct access times (ms resolution)
    let b = ingest(&cas, 11, 300_000);
    std::thread::sleep(Duration::from_millis(5));
    let c = ingest(&cas, 12, 300_000);
    cas.set_pinned(&a, true).unwrap();
    let reader = cas.reader(&b).unwrap();

    // 900 KB used; 300 KB more needs 200 KB freed. a is pinned, b is open: c goes.
    let d = ingest(&cas, 13, 300_000);
    assert!(!cas.contains(&c).unwrap());
    assert!(cas.contains(&a).unwrap() && cas.contains(&b).unwrap() && cas.contains(&d).unwrap());

    // Nothing evictable is left: a clear error, and nothing stored.
    cas.set_pinned(&d, true).unwrap();
    let blob = data(300_000, 14);
    let err = cas
        .ingest(&Digest::sha256_of(&blob), Some(300_000), &blob[..])
        .unwrap_err();
    assert!(
        matches!(
            err,
            CasError::NoSpace {
                needed: 300_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(cas.delete(&a), Err(CasError::Pinned(_))));
    assert!(matches!(cas.delete(&b), Err(CasError::Busy(_))));

    drop(reader);
    cas.set_pinned(&a, false).unwrap();
    cas.delete(&b).unwrap();
    assert_eq!(cas.used_bytes(), 600_000);
}

#[test]
fn idle_and_expired_blobs_go_and_aggressive_mode_frees_to_low_water() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(CasConfig {
        capacity_bytes: 1_000_000,
        tti: Some(Duration::from_secs(3600)),
        aggressive_tti: Some(Duration::from_secs(60)),
        ttl: Some(Duration::from_secs(10 * 3600)),
        high_water: 0.8,
        low_water: 0.5,
        ..config(dir.path())
    })
    .unwrap();
    let a = ingest(&cas, 20, 200_000);
    let b = ingest(&cas, 21, 200_000);
    let now = SystemTime::now();
    // Fresh blobs under the high-water mark stay.
    assert!(cas.evict_at(now).unwrap().evicted.is_empty());
    // Reading b keeps it young; a idles past the hour.
    cas.reader(&b).unwrap();
    let report = cas.evict_at(now + Duration::from_secs(3000)).unwrap();
    assert!(report.evicted.is_empty());
    let c = ingest(&cas, 22, 300_000);
    let d = ingest(&cas, 23, 200_000);
    // 900 KB > 80%: aggressive. Everything idle > 60 s goes, then LRU down to 500 KB.
    let report = cas.evict_at(now + Duration::from_secs(30)).unwrap();
    assert!(report.aggressive);
    assert!(cas.used_bytes() <= 500_000, "{report:?}");
    assert_eq!(report.evicted[0], a, "least recently used first");
    // ttl removes even busy-but-old blobs.
    let left: Vec<_> = cas.list().unwrap().into_iter().map(|i| i.digest).collect();
    assert!(!left.is_empty());
    let report = cas.evict_at(now + Duration::from_secs(11 * 3600)).unwrap();
    assert_eq!(report.evicted.len(), left.len());
    for x in [a, b, c, d] {
        assert!(!cas.contains(&x).unwrap());
    }
}

#[test]
fn startup_sweep_removes_temp_orphan_and_dangling_entries() {
    let dir = tempfile::tempdir().unwrap();
    let keep;
    let gone;
    {
        let cas = Cas::open(config(dir.path())).unwrap();
        keep = ingest(&cas, 30, 100_000);
        gone = ingest(&cas, 31, 100_000);
        fs::remove_file(cas.blob_path(&gone)).unwrap();
    }
    fs::write(dir.path().join("tmp/abc.1.1"), b"half a blob").unwrap();
    fs::create_dir_all(dir.path().join("blobs/ff")).unwrap();
    fs::write(
        dir.path().join("blobs/ff/ffff"),
        b"renamed but not recorded",
    )
    .unwrap();
    fs::write(dir.path().join("partial/eeee"), b"unknown partial").unwrap();

    let cas = Cas::open(config(dir.path())).unwrap();
    let sweep = cas.startup_sweep();
    assert_eq!(sweep.temp_files, 1);
    assert_eq!(sweep.orphan_files, 2);
    assert_eq!(sweep.dangling_records, 1);
    assert_eq!(tmp_files(dir.path()), 0);
    assert!(cas.contains(&keep).unwrap());
    assert!(cas.info(&gone).unwrap().is_none());
    assert_eq!(cas.used_bytes(), 100_000);
}

#[test]
fn truncated_blob_file_is_not_served_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = {
        let cas = Cas::open(config(dir.path())).unwrap();
        let d = ingest(&cas, 40, 100_000);
        fs::OpenOptions::new()
            .write(true)
            .open(cas.blob_path(&d))
            .unwrap()
            .set_len(50_000)
            .unwrap();
        d
    };
    let cas = Cas::open(config(dir.path())).unwrap();
    assert!(!cas.contains(&d).unwrap());
    assert!(matches!(cas.reader(&d), Err(CasError::NotFound(_))));
}

#[test]
fn access_times_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (d, seen) = {
        let cas = Cas::open(config(dir.path())).unwrap();
        let d = ingest(&cas, 50, 1000);
        std::thread::sleep(Duration::from_millis(20));
        cas.reader(&d).unwrap();
        (d, cas.info(&d).unwrap().unwrap().last_access)
    };
    let cas = Cas::open(config(dir.path())).unwrap();
    let info = cas.info(&d).unwrap().unwrap();
    assert_eq!(info.last_access, seen);
    assert!(info.last_access > info.created);
}

#[test]
fn flags_persist_and_bad_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cas = Cas::open(config(dir.path())).unwrap();
        let d = ingest(&cas, 60, 1000);
        cas.set_pinned(&d, true).unwrap();
        cas.set_persisted(&d, true).unwrap();
        assert!(matches!(
            cas.set_pinned(&Digest::sha256_of(b"nope"), true),
            Err(CasError::NotFound(_))
        ));
    }
    let cas = Cas::open(config(dir.path())).unwrap();
    let info = &cas.list().unwrap()[0];
    assert!(info.pinned && info.persisted);

    for (bad, want) in [
        (
            CasConfig {
                capacity_bytes: 0,
                ..config(dir.path())
            },
            "capacity_bytes",
        ),
        (
            CasConfig {
                low_water: 0.95,
                ..config(dir.path())
            },
            "low_water",
        ),
        (
            CasConfig {
                flush_every_pieces: 0,
                ..config(dir.path())
            },
            "flush_every_pieces",
        ),
    ] {
        let err = Cas::open(bad).err().unwrap().to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn root_that_is_a_file_is_a_clear_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = Cas::open(CasConfig::at(file.path())).err().unwrap();
    assert!(
        matches!(
            err,
            CasError::Io {
                op: "create directory",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn concurrent_ingests_of_the_same_blob_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let blob = data(2_000_000, 70);
    let digest = Digest::sha256_of(&blob);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                cas.ingest(&digest, Some(blob.len() as u64), &blob[..])
                    .unwrap()
            });
        }
    });
    assert_eq!(cas.list().unwrap().len(), 1);
    assert_eq!(cas.used_bytes(), blob.len() as u64);
    assert_eq!(tmp_files(dir.path()), 0);
    assert_eq!(cas.reader(&digest).unwrap().read_all().unwrap(), blob);
}

#[test]
fn absurd_or_unbounded_lengths_are_refused_by_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(CasConfig {
        capacity_bytes: 1_000_000,
        ..config(dir.path())
    })
    .unwrap();
    let digest = Digest::sha256_of(b"x");
    // A hostile Content-Length must not overflow the quota arithmetic.
    let err = cas
        .ingest(&digest, Some(u64::MAX - 5), &b"x"[..])
        .unwrap_err();
    assert!(matches!(err, CasError::NoSpace { .. }), "{err}");
    // A stream of unknown length stops as soon as it cannot fit.
    let err = cas.ingest(&digest, None, io::repeat(1)).unwrap_err();
    assert!(matches!(err, CasError::NoSpace { .. }), "{err}");
    assert_eq!(tmp_files(dir.path()), 0);
    // The store is still usable.
    ingest(&cas, 90, 500_000);
    assert_eq!(cas.used_bytes(), 500_000);
}

#[test]
fn ingest_pinned_is_pinned_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(CasConfig {
        capacity_bytes: 1_000_000,
        high_water: 1.0,
        low_water: 1.0,
        ..config(dir.path())
    })
    .unwrap();
    let blob = data(600_000, 91);
    let d = Digest::sha256_of(&blob);
    assert!(
        cas.ingest_pinned(&d, Some(600_000), &blob[..])
            .unwrap()
            .info
            .pinned
    );
    let other = data(600_000, 92);
    let err = cas
        .ingest(&Digest::sha256_of(&other), Some(600_000), &other[..])
        .unwrap_err();
    assert!(matches!(err, CasError::NoSpace { .. }), "{err}");
    assert!(cas.contains(&d).unwrap());
    // Pinning an already present blob pins it too.
    cas.set_pinned(&d, false).unwrap();
    assert!(
        cas.ingest_pinned(&d, Some(600_000), &blob[..])
            .unwrap()
            .info
            .pinned
    );
    assert!(cas.info(&d).unwrap().unwrap().pinned);
}

#[test]
fn piece_writer_streams_into_place_and_only_verified_pieces_count() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let blob = data(200_000, 93);
    let meta = Metainfo::from_bytes(&blob, &small_pieces()).unwrap();
    let mut p = cas.start_partial(&meta).unwrap();
    let piece = |i: u32| {
        let r = meta.piece_range(PieceIndex(i)).unwrap();
        &blob[r.start as usize..r.end as usize]
    };

    // A corrupt copy is written, then rejected at finish: the bit stays clear.
    let mut w = p.piece_writer(PieceIndex(1)).unwrap();
    let mut bad = piece(1).to_vec();
    bad[100] ^= 1;
    for chunk in bad.chunks(10_000) {
        w.write(chunk).unwrap();
    }
    assert!(matches!(w.finish(), Err(CasError::Piece(_))));
    assert!(!p.bitfield().get(PieceIndex(1)));
    // Too many bytes, or too few, are errors too.
    let mut w = p.piece_writer(PieceIndex(3)).unwrap();
    assert!(w.write(&vec![0; 70_000]).is_err());
    let w = p.piece_writer(PieceIndex(3)).unwrap();
    assert!(w.finish().is_err());

    for i in 0..meta.piece_count() {
        let mut w = p.piece_writer(PieceIndex(i)).unwrap();
        for chunk in piece(i).chunks(7_000) {
            w.write(chunk).unwrap();
        }
        assert!(p.mark_stored(w.finish().unwrap()).unwrap());
    }
    p.commit().unwrap();
    assert_eq!(cas.reader(meta.digest()).unwrap().read_all().unwrap(), blob);
}

#[test]
fn flush_jobs_run_anywhere_and_an_older_one_never_undoes_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let blob = data(10 * 64 * 1024, 41);
    let meta = Metainfo::from_bytes(&blob, &small_pieces()).unwrap();
    let piece = |i: u32| {
        let r = meta.piece_range(PieceIndex(i)).unwrap();
        &blob[r.start as usize..r.end as usize]
    };
    let store = |p: &mut kraken_storage::cas::PartialBlob, i: u32| {
        let mut w = p.piece_writer(PieceIndex(i)).unwrap();
        w.write(piece(i)).unwrap();
        assert!(p.record_stored(w.finish().unwrap()));
    };
    let config = || CasConfig {
        flush_every_pieces: 2,
        ..config(dir.path())
    };
    {
        let cas = Cas::open(config()).unwrap();
        let mut p = cas.start_partial(&meta).unwrap();
        store(&mut p, 0);
        assert!(!p.flush_due());
        store(&mut p, 1);
        assert!(p.flush_due(), "recording never flushes by itself");
        let older = p.flush_job().unwrap().unwrap();
        assert!(!p.flush_due());
        store(&mut p, 2);
        store(&mut p, 3);
        let newer = p.flush_job().unwrap().unwrap();
        assert!(p.flush_job().unwrap().is_none(), "nothing left to flush");
        // The newer job finishes first, on another thread; the older one, late, must not
        // take pieces 2 and 3 back.
        std::thread::spawn(move || newer.run())
            .join()
            .unwrap()
            .unwrap();
        older.run().unwrap();
        // Nothing is unflushed, so dropping the handle writes nothing either.
    }
    let cas = Cas::open(config()).unwrap();
    let p = cas.start_partial(&meta).unwrap();
    let have: Vec<u32> = (0..10)
        .filter(|&i| p.bitfield().get(PieceIndex(i)))
        .collect();
    assert_eq!(have, [0, 1, 2, 3]);
}

#[test]
fn list_page_walks_every_blob_in_digest_order_with_fresh_access_times() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(config(dir.path())).unwrap();
    let mut digests: Vec<Digest> = (0..5u64)
        .map(|i| {
            let blob = data(1000 + i as usize, 100 + i);
            let digest = Digest::sha256_of(&blob);
            cas.ingest(&digest, None, &blob[..]).unwrap();
            digest
        })
        .collect();
    digests.sort_by_key(Digest::to_string);

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = cas.list_page(after.as_ref(), 2).unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|i| i.digest);
        seen.extend(page.into_iter().map(|i| i.digest));
    }
    assert_eq!(seen, digests);

    // A touch is seen by the next page before it is flushed.
    let before = cas.list_page(None, 1).unwrap()[0].last_access;
    std::thread::sleep(Duration::from_millis(5));
    cas.touch(&digests[0]);
    let after_touch = cas.list_page(None, 1).unwrap()[0].last_access;
    assert!(after_touch > before, "{after_touch:?} > {before:?}");
}
