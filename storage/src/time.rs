//! Wall-clock times as milliseconds since the Unix epoch, the form stored in redb.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in ms since the epoch.
pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// `t` in ms since the epoch (0 before it, `u64::MAX` far after).
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` ms after the epoch.
pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
