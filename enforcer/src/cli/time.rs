//! Times on the command line: `--since`/`--until` in, record times out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch of `--since`/`--until`: an RFC 3339 time
/// (`2026-11-22T10:00:00Z`) or an age (`15m`, `2h`, `7days`) before now.
pub fn parse(text: &str) -> Result<i64, String> {
    let time = match humantime::parse_rfc3339_weak(text) {
        Ok(time) => time,
        Err(_) => {
            let age = humantime::parse_duration(text).map_err(|_| {
                format!("`{text}` is neither an RFC 3339 time (2026-11-22T10:00:00Z) nor an age (15m, 2h, 7days)")
            })?;
            SystemTime::now()
                .checked_sub(age)
                .ok_or_else(|| format!("`{text}` reaches before the epoch"))?
        }
    };
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    Ok(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

/// A record's time as RFC 3339 with milliseconds (UTC).
pub fn format(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}
