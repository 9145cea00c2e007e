//! Crash safety and hostile filesystems: a child process killed with SIGKILL mid-write,
//! a full disk, a read-only disk.
//!
//! The crash tests re-run this test binary as a child (`--exact crash_child`) with an
//! environment variable saying what to do; the child signals progress by creating a marker
//! file and then blocks until the parent kills it.
#![cfg(feature = "local")]
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kraken_storage::cas::{Cas, CasConfig, CasError};
use kraken_storage::{Digest, Metainfo, PieceIndex, PieceLengthTable};

const ROLE: &str = "KRAKEN_CRASH_CHILD_ROLE";
const DIR: &str = "KRAKEN_CRASH_CHILD_DIR";

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

fn config(dir: &Path) -> CasConfig {
    CasConfig {
        piece_lengths: PieceLengthTable::uniform(64 * 1024),
        flush_every_pieces: 2,
        ..CasConfig::at(dir)
    }
}

fn partial_blob() -> (Vec<u8>, Metainfo) {
    let blob = data(1_000_000, 99);
    let meta = Metainfo::from_bytes(&blob, &config(Path::new("x")).piece_lengths).unwrap();
    (blob, meta)
}

/// Produces `ready_after` bytes, creates `marker`, then stalls forever.
struct StallingReader {
    produced: usize,
    ready_after: usize,
    marker: PathBuf,
}

impl Read for StallingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.produced >= self.ready_after {
            fs::write(&self.marker, b"ready")?;
            loop {
                std::thread::park();
            }
        }
        let n = buf
            .len()
            .min(self.ready_after - self.produced)
            .min(64 * 1024);
        buf[..n].fill(0xab);
        self.produced += n;
        Ok(n)
    }
}

/// The child side; a no-op unless the parent set the role.
#[test]
fn crash_child() {
    let (Ok(role), Ok(dir)) = (std::env::var(ROLE), std::env::var(DIR)) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let cas = Cas::open(config(&dir.join("cas"))).unwrap();
    let marker = dir.join("marker");
    match role.as_str() {
        "ingest" => {
            let reader = StallingReader {
                produced: 0,
                // Several 1 MiB chunks, so the worker has written part of the temp file.
                ready_after: 5 << 20,
                marker,
            };
            let _ = cas.ingest(&Digest::sha256_of(b"never"), Some(10 << 20), reader);
        }
        "partial" => {
            let (blob, meta) = partial_blob();
            let mut p = cas.start_partial(&meta).unwrap();
            for i in 0..7u32 {
                let r = meta.piece_range(PieceIndex(i)).unwrap();
                p.write_piece(PieceIndex(i), &blob[r.start as usize..r.end as usize])
                    .unwrap();
            }
            // Pieces 0..6 are flushed (every 2); piece 6 is written but not yet flushed.
            fs::write(&marker, b"ready").unwrap();
            // Die holding the writer: its Drop must not get a chance to flush.
            loop {
                std::thread::park();
            }
        }
        other => panic!("unknown child role {other}"),
    }
    loop {
        std::thread::park();
    }
}

fn spawn_child(role: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture"])
        .env(ROLE, role)
        .env(DIR, dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for the child's marker; fails if the child exits or 60 s pass.
fn await_marker(child: &mut Child, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("marker").exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("crash child exited early: {status}");
        }
        assert!(Instant::now() < deadline, "crash child never got ready");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_9_mid_ingest_leaves_no_blob_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child("ingest", dir.path());
    await_marker(&mut child, dir.path());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let tmp = dir.path().join("cas/tmp");
    let leftovers = fs::read_dir(&tmp).unwrap().count();
    assert_eq!(
        leftovers, 1,
        "the child died with its temp file half written"
    );
    let cas = Cas::open(config(&dir.path().join("cas"))).unwrap();
    assert_eq!(cas.startup_sweep().temp_files, 1);
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    assert!(cas.list().unwrap().is_empty());
    assert_eq!(cas.used_bytes(), 0);
}

#[test]
fn kill_9_mid_download_resumes_from_flushed_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child("partial", dir.path());
    await_marker(&mut child, dir.path());
    child.kill().unwrap();
    child.wait().unwrap();

    let (blob, meta) = partial_blob();
    let cas = Cas::open(config(&dir.path().join("cas"))).unwrap();
    assert!(
        !cas.contains(meta.digest()).unwrap(),
        "a partial blob is never complete"
    );
    let mut p = cas.start_partial(&meta).unwrap();
    let have: Vec<_> = p.bitfield().ones().collect();
    assert_eq!(have, (0..6).map(PieceIndex).collect::<Vec<_>>());
    // Every piece the bitfield claims really is on disk.
    for i in &have {
        meta.verify_piece(*i, &p.read_piece(*i).unwrap()).unwrap();
    }
    for i in p.bitfield().missing().collect::<Vec<_>>() {
        let r = meta.piece_range(i).unwrap();
        p.write_piece(i, &blob[r.start as usize..r.end as usize])
            .unwrap();
    }
    p.commit().unwrap();
    assert_eq!(cas.reader(meta.digest()).unwrap().read_all().unwrap(), blob);
}

/// A small tmpfs mounted on a temp dir, unmounted on drop. `None` where mounting is not
/// permitted (not root, or no CAP_SYS_ADMIN).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here (needs root); disk-full paths not exercised"
            );
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes `sub` read-only with a read-only bind mount of itself. (Remounting the whole
    /// tmpfs read-only is refused while the database file is open for writing.)
    fn make_read_only(&self, sub: &Path) {
        for args in [&["--bind"][..], &["-o", "remount,bind,ro"][..]] {
            let ok = Command::new("mount")
                .args(args)
                .arg(sub)
                .arg(sub)
                .status()
                .unwrap();
            assert!(ok.success(), "mount {args:?} failed");
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Bind mounts stack on the same point (and below it): unmount until nothing is left.
        for _ in 0..4 {
            let unmounted = Command::new("umount")
                .args(["-R", "-l"])
                .arg(self.dir.path())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !unmounted {
                break;
            }
        }
    }
}

#[test]
fn full_disk_is_an_error_not_a_corrupt_entry() {
    let Some(disk) = SmallDisk::mount("6m") else {
        return;
    };
    let root = disk.path().join("cas");
    let cas = Cas::open(config(&root)).unwrap();

    // The quota is clamped to the disk: a blob bigger than it is refused before a byte is
    // written.
    assert!(cas.capacity_bytes() < 6 << 20, "{:?}", cas.space());
    let big = data(8 << 20, 1);
    let digest = Digest::sha256_of(&big);
    let err = cas
        .ingest(&digest, Some(big.len() as u64), &big[..])
        .unwrap_err();
    assert!(matches!(err, CasError::NoSpace { .. }), "{err}");
    assert!(!cas.contains(&digest).unwrap());
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);

    // A download that runs out of disk (another writer filled it) keeps only the pieces
    // that were written, and its abort gives the space back.
    let blob = data(4 << 20, 3);
    let meta = Metainfo::from_bytes(&blob, &cas.config().piece_lengths).unwrap();
    let mut p = cas.start_partial(&meta).unwrap();
    let piece = |i: u32| {
        let r = meta.piece_range(PieceIndex(i)).unwrap();
        &blob[r.start as usize..r.end as usize]
    };
    let half = meta.piece_count() / 2;
    for i in 0..half {
        p.write_piece(PieceIndex(i), piece(i)).unwrap();
    }
    let ballast = fill(disk.path());
    let mut failed = None;
    for i in half..meta.piece_count() {
        if let Err(e) = p.write_piece(PieceIndex(i), piece(i)) {
            failed = Some((i, e));
            break;
        }
    }
    let (at, err) = failed.expect("the disk is full");
    assert!(err.is_disk_full(), "{err}");
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(!p.bitfield().get(PieceIndex(at)));
    p.abort().unwrap();
    assert_eq!(cas.used_bytes(), 0);
    assert_eq!(fs::read_dir(root.join("partial")).unwrap().count(), 0);

    // The store still works for what fits once the other writer's file is gone.
    fs::remove_file(ballast).unwrap();
    let small = data(100_000, 2);
    let d = Digest::sha256_of(&small);
    cas.ingest(&d, Some(100_000), &small[..]).unwrap();
    assert_eq!(cas.reader(&d).unwrap().read_all().unwrap(), small);
}

#[test]
fn a_metadata_commit_that_fails_on_a_full_disk_does_not_break_the_store() {
    let Some(disk) = SmallDisk::mount("8m") else {
        return;
    };
    let root = disk.path().join("cas");
    // No headroom check before metadata writes and no reserve: the commit itself meets
    // the full disk, which poisons redb's handle ("Previous I/O error occurred").
    let cas = Cas::open(CasConfig {
        metadata_headroom_bytes: 0,
        fs_reserve_bytes: 0,
        disk_full_hold_secs: 0,
        ..config(&root)
    })
    .unwrap();
    let blob = data(200_000, 4);
    let digest = Digest::sha256_of(&blob);
    cas.ingest(&digest, Some(blob.len() as u64), &blob[..])
        .unwrap();

    let ballast = fill(disk.path());
    let mut failed = None;
    for i in 0..500 {
        if let Err(e) = cas.set_pinned(&digest, i % 2 == 0) {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("a metadata commit fails on the full disk");
    assert!(err.is_disk_full(), "{err}");
    // While the disk is still full the store either reopened already or says it cannot
    // store; it never claims it can while its database is down.
    if cas.info(&digest).is_err() {
        assert!(cas.space().cannot_store.is_some(), "{:?}", cas.space());
    }

    // Space comes back: everything works again without reopening the store by hand.
    fs::remove_file(ballast).unwrap();
    let info = cas
        .info(&digest)
        .unwrap()
        .expect("the blob's record survived");
    assert_eq!(info.size, blob.len() as u64);
    assert_eq!(cas.reader(&digest).unwrap().read_all().unwrap(), blob);
    cas.set_pinned(&digest, false).unwrap();
    let space = cas.space();
    assert!(space.metadata_reopens >= 1, "{space:?}");
    assert_eq!(space.cannot_store, None, "{space:?}");

    let other = data(100_000, 5);
    let d = Digest::sha256_of(&other);
    cas.ingest(&d, Some(other.len() as u64), &other[..])
        .unwrap();
    assert_eq!(cas.reader(&d).unwrap().read_all().unwrap(), other);
    cas.set_pinned(&d, true).unwrap();

    let later = std::time::SystemTime::now() + Duration::from_secs(365 * 24 * 3600);
    let report = cas.evict_at(later).unwrap();
    assert!(report.evicted.contains(&digest), "{report:?}");
    assert!(!cas.contains(&digest).unwrap());

    // And the store reopens cleanly afterwards.
    drop(cas);
    let cas = Cas::open(config(&root)).unwrap();
    assert!(cas.contains(&d).unwrap());
    assert!(!cas.contains(&digest).unwrap());
}

/// Fills the file system holding `dir` with a file of zeros; returns the file.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut file = fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while file.write(&chunk).is_ok_and(|n| n > 0) {}
    path
}

#[test]
fn read_only_disk_is_an_error() {
    let Some(ro) = SmallDisk::mount("1m") else {
        return;
    };
    ro.make_read_only(ro.path());
    let err = Cas::open(config(&ro.path().join("cas"))).err().unwrap();
    assert!(err.to_string().contains("Read-only file system"), "{err}");

    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    let root = disk.path().join("cas");
    let cas = Cas::open(config(&root)).unwrap();
    let blob = data(1000, 3);
    let kept = Digest::sha256_of(&blob);
    cas.ingest(&kept, Some(1000), &blob[..]).unwrap();
    disk.make_read_only(&root.join("tmp"));

    let other = data(1000, 4);
    let err = cas
        .ingest(&Digest::sha256_of(&other), Some(1000), &other[..])
        .unwrap_err();
    assert!(err.to_string().contains("Read-only file system"), "{err}");
    assert!(
        matches!(
            err,
            CasError::Io {
                op: "create temp file",
                ..
            }
        ),
        "{err}"
    );
    // What was stored before is still readable.
    assert_eq!(cas.reader(&kept).unwrap().read_all().unwrap(), blob);
}
