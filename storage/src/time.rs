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

/// The proleptic Gregorian `(year, month, day)` of `days` days after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month, day)
}

/// The time `ms` ms after the epoch.
pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
