//! Wall-clock time as Unix milliseconds, the unit every timestamp is stored in, and its
//! RFC 3339 rendering (`2026-11-23T08:00:00.123Z`) used on the wire.

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
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
    fn rfc3339_round_trips_with_milliseconds() {
        let ms = 1_795_420_800_123;
        let text = rfc3339(ms);
        assert_eq!(text, "2026-11-23T08:00:00.123Z");
        assert_eq!(parse_rfc3339(&text), Some(ms));
        assert_eq!(parse_rfc3339("2026-11-23T09:00:00.123+01:00"), Some(ms));
        assert_eq!(parse_rfc3339("tomorrow"), None);
    }
}
