//! `verify_trtc_callback`: never panics; a body is accepted only with its
//! own `Sign`; with it, the answer is exactly what parsing the body says.

#![no_main]

use callwarden::http::webhooks::{GateRefusal, parse_trtc_event, verify_trtc_callback};
use callwarden::providers::trtc::callback_signature;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "fuzz-callback-key";

fuzz_target!(|input: (&[u8], &str, &str, bool)| {
    let (body, sign, sdk_app_id, signed) = input;
    let right = callback_signature(KEY, body);
    let mut headers = HeaderMap::new();
    let sign = if signed { right.as_str() } else { sign };
    if let Ok(v) = HeaderValue::from_str(sign) {
        headers.insert("sign", v);
    }
    if let Ok(v) = HeaderValue::from_str(sdk_app_id) {
        headers.insert("sdkappid", v);
    }
    let result = verify_trtc_callback(KEY, &headers, body);
    let sent_right = headers.get("sign").is_some_and(|v| v.as_bytes() == right.as_bytes());
    if !sent_right {
        assert_eq!(result, Err(GateRefusal::Unauthorized));
        return;
    }
    match (result, parse_trtc_event(body)) {
        (Ok((event, id)), Ok(parsed)) => {
            assert_eq!(event, parsed);
            assert_eq!(Ok(id), sdk_app_id.trim().parse::<u64>());
        }
        (Err(GateRefusal::Malformed(reason)), Err(parse_error)) => assert_eq!(reason, parse_error),
        // The body parsed; only the SdkAppId header can be missing.
        (Err(GateRefusal::Malformed(_)), Ok(_)) => assert!(sdk_app_id.trim().parse::<u64>().is_err()),
        (other, parsed) => panic!("signed body answered {other:?}; it parses to {parsed:?}"),
    }
});
