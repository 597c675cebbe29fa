//! Wall-clock helpers. Timestamps are stored as Unix seconds (UTC) everywhere.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch. A clock before 1970 reads as 0 rather than panicking.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 rendering for JSON answers and logs.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
