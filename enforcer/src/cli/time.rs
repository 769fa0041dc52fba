//! Times on the command line: `--since`/`--until` in, record times out.

use std::time::{SystemTime, UNIX_EPOCH};

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

/// A record's time as RFC 3339 with milliseconds (UTC); a time RFC 3339 cannot write is
/// shown as its number of milliseconds.
pub fn format(ms: i64) -> String {
    crate::audit::record::rfc3339(ms).unwrap_or_else(|| format!("{ms} ms after the epoch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_rfc3339_cannot_write_is_shown_as_milliseconds() {
        assert_eq!(format(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format(i64::MAX), "9223372036854775807 ms after the epoch");
        assert_eq!(format(-5), "-5 ms after the epoch");
    }
}
