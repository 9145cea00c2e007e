//! [`DirLock`]: one process at a time on a directory of state.
//!
//! redb refuses a second open of a database file with "Database already open. Cannot
//! acquire lock.", which names neither the directory nor who holds it. A [`DirLock`] is
//! taken first: an exclusive `flock` on `<dir>/kraken.lock`, with the holder's pid written
//! into the file, so a second process (or a second node in the same process) fails with a
//! message naming the directory and the pid. The lock is the open file's: it goes when the
//! [`DirLock`] is dropped or the process dies (even by SIGKILL), so a restart after a crash
//! never finds a stale lock; the pid left in the file means nothing until it is locked.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside a locked directory.
pub const LOCK_FILE: &str = "kraken.lock";

/// An exclusive hold on a directory; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    _file: File,
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    /// Another process (or another node of this one) holds the directory.
    #[error(
        "data directory {dir} is in use by another kraken process{}; stop it first, or give \
         this node another data directory",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it into the lock file (unknown if it had not yet).
        pid: Option<u32>,
    },
    /// The directory or its lock file could not be created, opened or written.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl DirLock {
    /// Creates `dir` if needed and locks it, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, DirLockError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| DirLockError::Io { op, path, source }
        };
        fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(DirLockError::InUse {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io("lock", &path)(e)),
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(io("write pid to", &path))?;
        Ok(DirLock {
            dir: dir.to_path_buf(),
            _file: file,
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_directory_and_the_holders_pid_and_the_first_drop_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(&err, DirLockError::InUse { pid: Some(p), .. } if *p == pid),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "data directory {} is in use by another kraken process (pid {pid})",
                dir.path().display()
            )),
            "{text}"
        );
        drop(first);
        let again = DirLock::acquire(dir.path()).unwrap();
        assert_eq!(again.dir(), dir.path());
    }

    #[test]
    fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let _lock = DirLock::acquire(&nested).unwrap();
        assert!(nested.join(LOCK_FILE).is_file());
    }
}
