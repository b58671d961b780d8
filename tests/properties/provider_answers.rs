//! Whatever a provider, a proxy or a man in the middle answers (any status,
//! any body, any `Retry-After`), classifying it never panics, and the wait
//! before the next try is never longer than the retry policy's
//! `max_backoff`.

use std::time::Duration;

use callwarden::domain::RetryPolicy;
use callwarden::providers::{acs, trtc};
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderValue};

fn header_value() -> BoxedStrategy<String> {
    prop_oneof![
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("NaN".to_string()),
        Just("1e30".to_string()),
        Just("99999999999999999999".to_string()),
        Just("Tue, 14 Nov 2023 22:13:30 GMT".to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9eE+.\\-]{0,24}",
        "[ -~]{0,40}",
    ]
    .boxed()
}

proptest! {
    #![proptest_config(super::cases(1024))]

    #[test]
    fn any_answer_is_classified_and_its_wait_capped(
        headers in prop::collection::vec((prop::sample::select(&["retry-after", "retry-after-ms", "x-ms-retry-after-ms"][..]), header_value()), 0..3),
        status in 100u16..600,
        body in prop::collection::vec(any::<u8>(), 0..64),
        attempt in 1u32..64,
        unit in any::<f64>(),
        max_backoff_ms in 1u64..600_000,
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                map.insert(*name, v);
            }
        }
        let wait = acs::retry_after(&map, chrono::Utc::now());
        let _ = acs::classify(status, &body, wait);
        let _ = trtc::classify_response(status, &body);
        let policy = RetryPolicy { max_backoff: Duration::from_millis(max_backoff_ms), ..RetryPolicy::default() };
        let backoff = policy.backoff(attempt, wait, unit);
        prop_assert!(backoff <= policy.max_backoff, "{backoff:?} for {headers:?}");
    }
}
