//! Time: the wall clock in milliseconds, and the text form of the database's
//! time columns.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Milliseconds since the epoch of a time column (`YYYY-MM-DDTHH:MM:SS.sssZ`).
pub fn ms_of(text: &str) -> i64 {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

/// The canonical text form the database uses.
pub fn text_of(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().expect("a valid time").to_rfc3339_opts(SecondsFormat::Millis, true)
}
