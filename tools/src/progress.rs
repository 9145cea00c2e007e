//! Progress on a terminal, silence in a pipe: byte bars and spinners (indicatif) drawn on
//! stderr only when stderr is a terminal, so scripts see nothing but the result.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress indicator that is hidden when stderr is not a terminal.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// Whether progress is drawn at all (stderr is a terminal).
    pub fn enabled() -> bool {
        std::io::stderr().is_terminal()
    }

    /// A bar over `total` bytes, labelled `message`.
    pub fn bytes(total: u64, message: impl Into<String>) -> Self {
        let bar = if Self::enabled() {
            ProgressBar::new(total)
        } else {
            ProgressBar::hidden()
        };
        let style = ProgressStyle::with_template(
            "{msg:12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(message.into());
        Progress { bar }
    }

    /// A spinner labelled `message`, for work whose size is unknown.
    pub fn spinner(message: impl Into<String>) -> Self {
        let bar = if Self::enabled() {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar }
    }

    /// A handle on the bar, for updating it from another thread.
    pub fn bar(&self) -> ProgressBar {
        self.bar.clone()
    }

    /// `n` more bytes done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Sets the position (bytes done so far).
    pub fn set(&self, n: u64) {
        self.bar.set_position(n);
    }

    /// Replaces the label.
    pub fn message(&self, message: impl Into<String>) {
        self.bar.set_message(message.into());
    }

    /// Removes the indicator from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}
