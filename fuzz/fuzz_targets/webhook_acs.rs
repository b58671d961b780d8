//! `verify_acs_callback`: never panics on any query and body; a token other
//! than the secret is always refused; with the secret, the answer is
//! exactly what parsing the body says.

#![no_main]

use callwarden::http::webhooks::{GateRefusal, parse_acs_events, verify_acs_callback};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-acs-token";

fn token_query(token: &str) -> String {
    form_urlencoded::Serializer::new(String::new()).append_pair("token", token).finish()
}

fuzz_target!(|input: (&[u8], &str, &str)| {
    let (body, raw_query, token) = input;
    // Anything at all: only must not panic.
    let _ = verify_acs_callback(SECRET, Some(raw_query), body);
    if token != SECRET {
        let refused = verify_acs_callback(SECRET, Some(&token_query(token)), body);
        assert_eq!(refused, Err(GateRefusal::Unauthorized), "token {token:?} accepted");
    }
    let accepted = verify_acs_callback(SECRET, Some(&token_query(SECRET)), body);
    assert_eq!(accepted, parse_acs_events(body).map_err(GateRefusal::Malformed));
});
