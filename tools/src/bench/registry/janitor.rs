//! Nothing outlives the benchmark: every process it starts and every directory it makes
//! is on one list while it exists. Owners clean up on drop (an error or a panic unwinds
//! through them); on SIGINT or SIGTERM a watcher thread stops the listed processes, removes
//! the listed directories, writes back the listed settings and exits, since unwinding does
//! not happen on a signal.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::Context;

/// What exists now and must not outlive the run.
#[derive(Default)]
struct Listed {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
    /// Settings changed for the run: the file and the value to write back.
    settings: Vec<(PathBuf, String)>,
}

static LISTED: Mutex<Listed> = Mutex::new(Listed {
    pids: Vec::new(),
    dirs: Vec::new(),
    settings: Vec::new(),
});

fn listed() -> std::sync::MutexGuard<'static, Listed> {
    // A panic while holding it leaves the lists as valid as before.
    LISTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the thread that cleans up and exits on SIGINT or SIGTERM (once per process).
pub fn watch_signals() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            else {
                return;
            };
            let code = rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return None;
                };
                tokio::select! {
                    _ = int.recv() => Some(130),
                    _ = term.recv() => Some(143),
                }
            });
            if let Some(code) = code {
                eprintln!("kraken-bench: interrupted, cleaning up");
                clean_all();
                std::process::exit(code);
            }
        });
    });
}

/// Stops every listed process, removes every listed directory and writes back every
/// listed setting.
fn clean_all() {
    let Listed {
        pids,
        dirs,
        settings,
    } = std::mem::take(&mut *listed());
    for (file, value) in settings.iter().rev() {
        let _ = std::fs::write(file, value);
    }
    for pid in pids.iter().rev() {
        signal(*pid, "TERM");
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && pids.iter().any(|&p| running(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in &pids {
        if running(pid) {
            signal(pid, "KILL");
        }
    }
    for dir in dirs.iter().rev() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Whether `pid` is alive (a zombie, exited but not yet reaped, is not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s[s.rfind(')')? + 1..]
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// A child process on the list, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Tracked {
    child: Option<Child>,
    pid: u32,
}

impl Tracked {
    /// Starts `cmd` and lists it.
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Tracked> {
        let mut guard = listed();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        let pid = child.id();
        guard.pids.push(pid);
        Ok(Tracked {
            child: Some(child),
            pid,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child, to take its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("present until dropped")
    }

    /// Waits for it to exit (and unlists it).
    pub fn wait(mut self) -> std::io::Result<ExitStatus> {
        let status = self.child_mut().wait();
        self.unlist();
        status
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child_mut().try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, then SIGKILL after the grace period.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !matches!(child.try_wait(), Ok(Some(_))) {
            signal(self.pid, "TERM");
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.unlist();
    }

    fn unlist(&self) {
        listed().pids.retain(|&p| p != self.pid);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A directory on the list, removed (with its contents) when dropped unless kept.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    /// Creates `path` (it must not exist yet: a run never removes what it did not make).
    pub fn create(path: PathBuf, keep: bool) -> anyhow::Result<ScratchDir> {
        let mut guard = listed();
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))?;
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        if !keep {
            guard.dirs.push(path.clone());
        }
        Ok(ScratchDir { path, keep })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kraken-bench: kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
        listed().dirs.retain(|d| d != &self.path);
    }
}

/// A kernel setting changed for the run, written back to what it was when dropped.
#[derive(Debug)]
pub struct ChangedSetting {
    file: PathBuf,
    was: String,
}

impl ChangedSetting {
    /// Writes `value` into `file` (a `/sys` or `/proc` setting) and lists the old value.
    pub fn set(file: &Path, value: &str) -> anyhow::Result<ChangedSetting> {
        let was = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .trim()
            .to_string();
        let mut guard = listed();
        std::fs::write(file, value).with_context(|| format!("cannot write {}", file.display()))?;
        guard.settings.push((file.to_path_buf(), was.clone()));
        Ok(ChangedSetting {
            file: file.to_path_buf(),
            was,
        })
    }
}

impl Drop for ChangedSetting {
    fn drop(&mut self) {
        let mut guard = listed();
        if let Err(e) = std::fs::write(&self.file, &self.was) {
            eprintln!(
                "kraken-bench: cannot write {} back to {} ({e})",
                self.file.display(),
                self.was
            );
        }
        guard.settings.retain(|(f, _)| f != &self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_processes_and_dirs_are_gone_and_unlisted() {
        let root = tempfile::tempdir().unwrap();
        let dir = ScratchDir::create(root.path().join("scratch"), false).unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        assert!(ScratchDir::create(root.path().join("scratch"), false).is_err());
        let mut sleeper = Tracked::spawn(Command::new("sleep").arg("60")).unwrap();
        let pid = sleeper.pid();
        assert!(running(pid) && !sleeper.exited());
        assert!(listed().pids.contains(&pid));
        let path = dir.path().to_path_buf();
        drop(sleeper);
        drop(dir);
        assert!(!running(pid));
        assert!(!path.exists());
        assert!(!listed().pids.contains(&pid));
        assert!(!listed().dirs.contains(&path));
        let done = Tracked::spawn(&mut Command::new("true")).unwrap();
        assert!(done.wait().unwrap().success());
    }

    #[test]
    fn a_changed_setting_is_listed_until_written_back() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("page_reporting_order");
        std::fs::write(&file, "9\n").unwrap();
        let held = ChangedSetting::set(&file, "11").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "11");
        assert!(
            listed()
                .settings
                .iter()
                .any(|(f, was)| f == &file && was == "9")
        );
        drop(held);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "9");
        assert!(!listed().settings.iter().any(|(f, _)| f == &file));
        // A setting that cannot be read is not changed, nor listed.
        let missing = root.path().join("missing");
        assert!(ChangedSetting::set(&missing, "11").is_err());
        assert!(!missing.exists());
    }
}
