//! A real, small file system for disk-full tests: a tmpfs of a given size (it answers
//! ENOSPC when full), mounted on a temp directory and always unmounted when the guard is
//! dropped, failing test or not.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A mounted tmpfs; unmounted (lazily, so open files do not stop it) on drop.
pub struct SmallFs {
    dir: TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes` on a fresh temp directory. `Err` says why it cannot be
    /// done here (not root, or mounting not permitted): the caller skips and prints it.
    pub fn mount(bytes: u64) -> Result<SmallFs, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not running as root: cannot mount a small file system".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs not permitted here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs { dir })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills it with a file of zeros written until the disk is full; returns the file.
    pub fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.path().join(name);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let chunk = vec![0u8; 64 << 10];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // Whatever a last partial write left: the file system is full now.
        while let Ok(n) = file.write(&[0u8; 512]) {
            if n == 0 {
                break;
            }
        }
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let out = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("could not unmount {}", self.dir.path().display());
        }
    }
}
