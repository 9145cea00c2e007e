//! Memory a VM hands back to its host, and why cold reads depend on it.
//!
//! A VM whose balloon device reports free pages (virtio-balloon free page reporting)
//! tells its host, shortly after, which pages its kernel freed; the host takes them back,
//! and the next touch of each costs a fault on the host. Dropping page caches frees a
//! GiB or more at once, so the cold read that follows fills the page cache with pages the
//! host may or may not have taken back yet. Measured on the development VM: a cold 1 GiB
//! read took 0.7 s into pages not yet reported and 3.3 s (3.2 s of it in the kernel) into
//! pages reported during a 5 s pause. Which system of a round gets which pages depends on
//! its place in the round, so the cold rows' ratios do too. `--hold-freed-memory` stops
//! the reporting for the run (and restores it after): every cold read then costs what it
//! costs on a machine that keeps its memory.

use std::path::Path;

use super::janitor::ChangedSetting;

/// The kernel's page reporting setting: free blocks of at least 2^order pages are reported.
const ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
/// Where a virtio balloon driver lists the devices it drives.
const BALLOON: &str = "/sys/bus/virtio/drivers/virtio_balloon";
/// The buddy allocator's largest block order on x86-64: a setting above it reports
/// nothing. (The kernel takes at most one more than its own largest order.)
const MAX_ORDER: u32 = 10;

/// Whether this machine reports freed pages to a host: a virtio balloon is bound and the
/// kernel reports free blocks of some order it can form.
pub fn reporting() -> bool {
    let bound = std::fs::read_dir(BALLOON)
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("virtio"))
        })
        .unwrap_or(false);
    let order = std::fs::read_to_string(ORDER)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    bound && order.is_some_and(|o| o <= MAX_ORDER)
}

/// Stops the reporting until the guard drops (or the run is interrupted): the highest
/// order the kernel takes, one above its largest block, which no free block reaches.
pub fn hold() -> anyhow::Result<ChangedSetting> {
    let mut refused = None;
    for order in (MAX_ORDER + 1..=MAX_ORDER + 4).rev() {
        match ChangedSetting::set(Path::new(ORDER), &order.to_string()) {
            Ok(held) => return Ok(held),
            Err(e) => refused = Some(e),
        }
    }
    Err(refused.expect("at least one order tried"))
}

/// The report's note when the reporting stays on.
pub const NOTE: &str = "this VM hands freed memory back to its host (virtio-balloon free page \
    reporting): a cold read into pages the host took back costs up to ~3 s more per GiB, and \
    which system of a round gets them depends on its place; --hold-freed-memory stops the \
    reporting for the run";
