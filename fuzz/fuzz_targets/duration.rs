//! `domain::parse_duration`: never panics; a success is positive and reads
//! back from what humantime prints; a refusal quotes the input.

#![no_main]

use callwarden::domain::parse_duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match parse_duration(text) {
        Ok(d) => {
            assert!(!d.is_zero(), "{text:?} parsed to zero");
            let printed = humantime::format_duration(d).to_string();
            assert_eq!(parse_duration(&printed), Ok(d), "{text:?} printed as {printed:?}");
        }
        Err(e) => assert!(e.contains(&format!("{text:?}")), "{e:?} does not quote {text:?}"),
    }
});
