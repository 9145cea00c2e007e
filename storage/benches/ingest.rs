//! Ingest throughput against its floor: plain sha256 of the same bytes in memory.
//!
//! `cargo bench -p kraken-storage` ingests a 1 GiB blob (sha256 + BLAKE3 piece hashes +
//! write + fsync + rename + metadata commit), past the page cache (the default) and
//! through it, into each directory, and reports
//! `ratio = time(sha256 in memory) / time(ingest)`. A ratio of 1 means ingest costs no more
//! than the hash the registry protocol forces on us anyway; the target is ≥ 0.8.
//!
//! Environment: `KRAKEN_BENCH_MIB` (blob size, default 1024), `KRAKEN_BENCH_RUNS`
//! (default 3, the best run counts), `KRAKEN_BENCH_DIRS` (colon-separated directories
//! to ingest into; default `/dev/shm` when present, to measure CPU cost, and the system temp
//! dir, to include the disk).
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kraken_storage::cas::{Cas, CasConfig};
use kraken_storage::chain::ChainRecorder;
use kraken_storage::{Digest, DigestAlgorithm, PieceHasher};
use sha2::Digest as _;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn best(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run small then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mib = if quick {
        8
    } else {
        env_or("KRAKEN_BENCH_MIB", 1024)
    };
    let runs = if quick {
        1
    } else {
        env_or("KRAKEN_BENCH_RUNS", 3)
    };
    let len = mib << 20;

    let mut data = vec![0u8; len];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let digest = Digest::sha256_of(&data);

    let sha = best(runs, || {
        let t = Instant::now();
        std::hint::black_box(sha2::Sha256::digest(&data));
        t.elapsed()
    });
    // The same hash recording its chaining state at every 4 MiB piece boundary (what
    // ingest computes now): its cost over plain sha256 is the batching into blocks.
    let chain = best(runs, || {
        let t = Instant::now();
        let mut r = ChainRecorder::new(DigestAlgorithm::Sha256, 4 << 20).unwrap();
        for chunk in data.chunks(1 << 20) {
            r.update(chunk);
        }
        std::hint::black_box(r.finish());
        t.elapsed()
    });
    let blake = best(runs, || {
        let t = Instant::now();
        let mut h = PieceHasher::new(4 << 20);
        h.update(&data);
        std::hint::black_box(h.length());
        t.elapsed()
    });
    println!("blob: {mib} MiB, best of {runs} runs");
    println!(
        "baseline sha256 in memory: {:>8.3} s  {:.2} GB/s",
        sha.as_secs_f64(),
        gbps(len, sha)
    );
    println!(
        "sha256 + chaining states:  {:>8.3} s  {:.2} GB/s",
        chain.as_secs_f64(),
        gbps(len, chain)
    );
    println!(
        "BLAKE3 pieces in memory:   {:>8.3} s  {:.2} GB/s",
        blake.as_secs_f64(),
        gbps(len, blake)
    );

    let dirs: Vec<PathBuf> = match std::env::var("KRAKEN_BENCH_DIRS") {
        Ok(v) => v.split(':').map(PathBuf::from).collect(),
        Err(_) => ["/dev/shm".into(), std::env::temp_dir()]
            .into_iter()
            .filter(|d: &PathBuf| d.is_dir())
            .collect(),
    };
    for dir in dirs {
        // Past the page cache (the default) and through it, one after the other.
        for direct_writes in [true, false] {
            let root = tempfile::tempdir_in(&dir).unwrap();
            let cas = Cas::open(CasConfig {
                direct_writes,
                ..CasConfig::at(root.path())
            })
            .unwrap();
            let ingest = best(runs, || {
                let t = Instant::now();
                cas.ingest(&digest, Some(len as u64), &data[..]).unwrap();
                let took = t.elapsed();
                cas.delete(&digest).unwrap();
                took
            });
            let how = if direct_writes {
                "direct"
            } else {
                "page cache"
            };
            println!(
                "ingest into {:<12} ({how:<10}) {:>8.3} s  {:.2} GB/s  ratio sha256/ingest = {:.2} (target >= 0.8)",
                dir.display(),
                ingest.as_secs_f64(),
                gbps(len, ingest),
                sha.as_secs_f64() / ingest.as_secs_f64()
            );
        }
    }
}
