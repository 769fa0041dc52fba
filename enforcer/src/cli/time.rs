//! Times on the command line: `--since`/`--until` in, record and agent times out.

use jiff::{Span, SpanRelativeTo, Timestamp};

/// What `--since`/`--until` take, for error messages.
const ACCEPTED: &str = "an RFC 3339 time (2026-11-22T10:00:00Z, 2026-11-22T12:00:00+02:00), a date (2026-11-22, midnight UTC) or an age (15m, 2h, 7days, \"1 hour ago\")";

/// Milliseconds since the epoch of `--since`/`--until`: an RFC 3339 time with any offset,
/// a date (midnight UTC), or an age before now (`15m`, `2h 30m`, `7days`, `3 days ago`,
/// or ISO 8601 `PT15M`).
pub fn parse(text: &str) -> Result<i64, String> {
    parse_at(text, Timestamp::now())
}

/// [`parse`], with ages counted back from `now`.
fn parse_at(text: &str, now: Timestamp) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(time) = text.parse::<Timestamp>() {
        return Ok(time.as_millisecond());
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        return jiff::tz::Offset::UTC
            .to_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
            .map(Timestamp::as_millisecond)
            .map_err(|err| format!("`{text}`: {err}"));
    }
    let age: Span = text
        .strip_suffix("ago")
        .unwrap_or(text)
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not {ACCEPTED}"))?;
    let age = age
        .abs()
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|err| format!("`{text}`: {err}"))?;
    now.checked_sub(age)
        .map(Timestamp::as_millisecond)
        .map_err(|_| format!("`{text}` reaches before the earliest time there is"))
}

/// A record's time as RFC 3339 with milliseconds (UTC); a time RFC 3339 cannot write is
/// shown as its number of milliseconds.
pub fn format(ms: i64) -> String {
    crate::audit::record::rfc3339(ms).unwrap_or_else(|| format!("{ms} ms after the epoch"))
}

/// A time in seconds since the epoch (the agent's state) as RFC 3339 in UTC, with how long
/// ago it was: `2026-11-30T08:00:00Z (5m 3s ago)`.
pub fn with_age(seconds: u64) -> String {
    let Ok(time) = i64::try_from(seconds)
        .map_err(drop)
        .and_then(|s| Timestamp::from_second(s).map_err(drop))
    else {
        return format!("{seconds} s after the epoch");
    };
    let elapsed = Timestamp::now().duration_since(time);
    let age = if elapsed.is_negative() {
        "in the future: check this host's clock".to_owned()
    } else {
        // Whole seconds, in the friendly format (`1h 2m 3s`).
        let seconds = jiff::SignedDuration::from_secs(elapsed.as_secs());
        format!("{seconds:#} ago")
    };
    format!("{time} ({age})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_rfc3339_cannot_write_is_shown_as_milliseconds() {
        assert_eq!(format(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(format(i64::MAX), "9223372036854775807 ms after the epoch");
        assert_eq!(format(-5), "-5 ms after the epoch");
    }

    #[test]
    fn times_take_offsets_dates_and_ages() {
        let now: Timestamp = "2026-11-30T08:00:00Z".parse().unwrap();
        let at = |text: &str| parse_at(text, now).map(format);
        assert_eq!(
            at("2026-11-22T10:00:00Z").unwrap(),
            "2026-11-22T10:00:00.000Z"
        );
        assert_eq!(
            at("2026-11-22T12:00:00+02:00").unwrap(),
            "2026-11-22T10:00:00.000Z"
        );
        assert_eq!(
            at("2026-11-22T05:30:00-04:30").unwrap(),
            "2026-11-22T10:00:00.000Z"
        );
        assert_eq!(at("2026-11-22").unwrap(), "2026-11-22T00:00:00.000Z");
        assert_eq!(at("15m").unwrap(), "2026-11-30T07:45:00.000Z");
        assert_eq!(at("2h 30m").unwrap(), "2026-11-30T05:30:00.000Z");
        assert_eq!(at("7days").unwrap(), "2026-11-23T08:00:00.000Z");
        assert_eq!(at("1 hour ago").unwrap(), "2026-11-30T07:00:00.000Z");
        assert_eq!(at("PT15M").unwrap(), "2026-11-30T07:45:00.000Z");
        let refused = at("yesterday-ish").unwrap_err();
        assert!(
            refused.contains("`yesterday-ish` is not an RFC 3339 time"),
            "{refused}"
        );
    }
}
