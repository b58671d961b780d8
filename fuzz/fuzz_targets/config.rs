//! `Config::parse`: never panics; every refusal names the file and a line
//! of it; a marker written only as the value of secret keys never shows in
//! an error.

#![no_main]

use std::path::Path;

use callwarden::config::Config;
use libfuzzer_sys::fuzz_target;

/// In the seed corpus and the dictionary (see run.sh), so the fuzzer keeps
/// and moves it around.
const MARKER: &str = "FuzzSecretMarker0123";
const SECRET_KEYS: [&str; 6] =
    ["secret_key", "access_key", "api_token", "callback_key", "secret", "checkpoint_key"];

/// Lines as YAML counts them: CR LF, LF, a lone CR, NEL, LS and PS each
/// end one (serde_yaml reports positions by that count).
fn yaml_lines(text: &str) -> usize {
    1 + text
        .replace("\r\n", "\n")
        .chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count()
}

fuzz_target!(|text: &str| {
    // Nowhere: `*_file` keys then read nothing real.
    let path = Path::new("/nonexistent-callwarden-fuzz/cw.yaml");
    let Err(e) = Config::parse(path, text) else { return };
    assert_eq!(e.file, path, "{e}");
    let line = e.line.unwrap_or_else(|| panic!("no line in {e:?}"));
    assert!((1..=yaml_lines(text) + 1).contains(&line), "line {line} is outside the file: {e}");
    // Only when every marker sits right after a secret key is it a secret.
    let markers = text.matches(MARKER).count();
    let as_secret: usize = SECRET_KEYS.iter().map(|k| text.matches(&format!("{k}: {MARKER}")).count()).sum();
    if markers > 0 && markers == as_secret {
        assert!(!format!("{e} {e:?}").contains(MARKER), "a secret in an error: {e}");
    }
});
