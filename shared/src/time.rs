//! Wall-clock time as Unix milliseconds, the unit every timestamp is stored in, and its
//! RFC 3339 rendering (`2026-11-23T08:00:00.123Z`) used on the wire.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch, now. Read off `SystemTime`: chrono's `Utc::now()`
/// works out a calendar date first, and the gateway asks once per frame it writes.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Renders stored milliseconds as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 timestamp (any offset) into Unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_the_same_instant_chrono_reads() {
        let before = Utc::now().timestamp_millis();
        let now = now_ms();
        let after = Utc::now().timestamp_millis();
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
    }

    #[test]
    fn rfc3339_round_trips_with_milliseconds() {
        let ms = 1_795_420_800_123;
        let text = rfc3339(ms);
        assert_eq!(text, "2026-11-23T08:00:00.123Z");
        assert_eq!(parse_rfc3339(&text), Some(ms));
        assert_eq!(parse_rfc3339("2026-11-23T09:00:00.123+01:00"), Some(ms));
        assert_eq!(parse_rfc3339("tomorrow"), None);
    }
}
