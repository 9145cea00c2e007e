//! A filesystem backend that tests take down and bring back, and checks of what it holds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kraken_storage::Digest;
use kraken_storage::backend::{Backend, default_http_client};

use super::fs_backend;

/// A filesystem backend root under `dir`, created (backends check their root at start).
pub fn backend_root(dir: &Path) -> PathBuf {
    let root = dir.join("outage").join("backend");
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// Takes the backend down: its directory is replaced by a regular file, so every write
/// fails (ENOTDIR), as a real outage would fail them.
pub fn take_down(root: &Path) {
    let parent = root.parent().unwrap();
    std::fs::rename(parent, parent.with_extension("away")).unwrap();
    std::fs::write(parent, b"not a directory").unwrap();
}

pub fn bring_back(root: &Path) {
    let parent = root.parent().unwrap();
    std::fs::remove_file(parent).unwrap();
    std::fs::rename(parent.with_extension("away"), parent).unwrap();
}

/// A handle on the filesystem backend at `root`, for looking at what it holds.
pub fn backend_at(root: &Path) -> Backend {
    Backend::new("check", &fs_backend(root), default_http_client().unwrap()).unwrap()
}

/// Waits until the backend at `root` holds `digest`.
pub async fn wait_in_backend(root: &Path, digest: &Digest, limit: Duration) {
    let backend = backend_at(root);
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = backend.stat(digest).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{digest} never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
