//! The duration parser (`domain::parse_duration`, behind every duration in
//! the config, `--limit` and `session extend`), and `config::session_duration`,
//! which bounds a session's length on top of it.

use std::time::Duration;

use callwarden::config::{MAX_SESSION_DURATION, session_duration};
use callwarden::domain::parse_duration;
use proptest::prelude::*;

const UNITS: &[&str] = &[
    "ns", "us", "ms", "s", "sec", "m", "min", "h", "hr", "d", "day", "w", "week", "M", "month", "y", "year",
];

/// Text that looks like a duration more often than not.
fn duration_like() -> impl Strategy<Value = String> {
    let part = ("[0-9]{1,6}", proptest::sample::select(UNITS), "[ ]{0,2}")
        .prop_map(|(n, u, sp)| format!("{n}{u}{sp}"));
    proptest::collection::vec(part, 1..5).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(super::cases(512))]

    #[test]
    fn any_text_parses_to_a_positive_duration_or_an_error_quoting_it(
        text in prop_oneof![any::<String>(), "[0-9a-z .+-]{0,24}", duration_like()]
    ) {
        match parse_duration(&text) {
            Ok(d) => prop_assert!(!d.is_zero(), "{:?} parsed to zero", text),
            Err(e) => prop_assert!(e.contains(&format!("{text:?}")), "{:?} does not name {:?}", e, text),
        }
        // Surrounding whitespace never changes the answer.
        prop_assert_eq!(parse_duration(&format!("  {text}\t")).ok(), parse_duration(&text).ok());
    }

    #[test]
    fn what_humantime_prints_parses_back_exactly(secs in 0u64..=u64::MAX / 2, nanos in 0u32..1_000_000_000) {
        let d = Duration::new(secs, nanos);
        prop_assume!(!d.is_zero());
        let printed = humantime::format_duration(d).to_string();
        prop_assert_eq!(parse_duration(&printed), Ok(d), "printed as {:?}", printed);
    }

    #[test]
    fn session_lengths_are_positive_and_bounded(text in duration_like()) {
        match (session_duration(&text), parse_duration(&text)) {
            (Ok(d), parsed) => {
                prop_assert_eq!(parsed, Ok(d));
                prop_assert!(!d.is_zero() && d <= MAX_SESSION_DURATION, "{:?} → {:?}", text, d);
            }
            (Err(_), Ok(d)) => prop_assert!(d > MAX_SESSION_DURATION, "{:?} ({:?}) refused", text, d),
            (Err(_), Err(_)) => {}
        }
    }

    #[test]
    fn negative_text_is_refused(text in duration_like()) {
        let minus = format!("-{text}");
        prop_assert!(parse_duration(&minus).is_err(), "{:?} parsed", minus);
        let minus = format!("- {text}");
        prop_assert!(parse_duration(&minus).is_err(), "{:?} parsed", minus);
    }

    #[test]
    fn bare_numbers_are_refused(n in any::<u64>(), fraction in proptest::option::of(0u32..1000)) {
        let text = match fraction {
            Some(f) => format!("{n}.{f}"),
            None => n.to_string(),
        };
        prop_assert!(parse_duration(&text).is_err(), "{:?} has no unit but parsed", text);
    }

    #[test]
    fn zero_in_any_unit_is_refused(unit in proptest::sample::select(UNITS), zeros in 1usize..4, repeat in 1usize..4) {
        let text = vec![format!("{}{unit}", "0".repeat(zeros)); repeat].join(" ");
        let e = parse_duration(&text).unwrap_err();
        prop_assert!(e.contains("zero"), "{:?}: {}", text, e);
    }

    #[test]
    fn overflowing_amounts_are_refused(extra in 1u64..1000, unit in proptest::sample::select(&["s", "m", "h", "d", "y"][..])) {
        // u64::MAX seconds in the unit, and more: no Duration holds it.
        let text = format!("{}{extra}{unit}", u64::MAX);
        prop_assert!(parse_duration(&text).is_err(), "{:?} parsed", text);
        let text = format!("{}s {extra}{unit}", u64::MAX);
        prop_assert!(parse_duration(&text).is_err(), "{:?} parsed", text);
    }
}
