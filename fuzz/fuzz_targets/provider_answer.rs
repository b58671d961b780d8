//! A provider's answer as it arrives (status, `Retry-After`-style headers,
//! body): classifying it never panics, and the wait it causes never passes
//! the retry policy's `max_backoff`. Input: two bytes of status, one of
//! header choice, then `header value \n body`.

#![no_main]

use std::time::Duration;

use callwarden::domain::RetryPolicy;
use callwarden::providers::{acs, trtc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [s0, s1, which, rest @ ..] = data else { return };
    let status = 100 + u16::from_le_bytes([*s0, *s1]) % 500;
    let name = ["retry-after", "retry-after-ms", "x-ms-retry-after-ms"][usize::from(*which) % 3];
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let (value, body) = rest.split_at(split);
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(value) {
        headers.insert(name, v);
    }
    let wait = acs::retry_after(&headers, chrono_now());
    let _ = acs::classify(status, body, wait);
    let _ = trtc::classify_response(status, body);
    let policy = RetryPolicy { max_backoff: Duration::from_secs(30), ..RetryPolicy::default() };
    for attempt in [1, 5, 40] {
        assert!(policy.backoff(attempt, wait, 0.5) <= policy.max_backoff);
    }
});

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
}
