//! Property tests for the edges where outside input comes in, and for the
//! scheduler's one promise (issue #7, "Proof under fire"):
//!
//! - `config`: any text, and any mutation of a valid file, is either a
//!   config or an error naming a file of the configuration and a line in
//!   it, and never echoes a secret;
//! - `acs_jwt`: ACS's callback JWT is accepted exactly when ACS could have
//!   sent it (forged, expired, wrong-audience, wrong-issuer, unknown-kid,
//!   `alg: none` and HMAC tokens never pass);
//! - `webhooks`: the TRTC and ACS gates never panic, refuse every body whose
//!   credential is wrong, and give back exactly what a valid signed body says;
//! - `duration`: the duration parser never panics, reads back what humantime
//!   prints, and refuses zero, negative, unitless and overflowing text;
//! - `scheduler`: any interleaving of start, extend, end, clock moves and
//!   crashes settles each session exactly once, never before its deadline,
//!   with at most one effective provider call;
//! - `adoption`: any row written with plain SQL, any value in any column,
//!   is adopted or failed on its own, and the scheduler goes on;
//! - `provider_answers`: any status, body and `Retry-After` is classified
//!   without a panic, and the wait it causes never passes `max_backoff`.
//!
//! The modules live in `tests/properties/`. Case counts are kept small enough for CI; `PROPTEST_CASES=N` overrides
//! them all for a longer run. `fuzz/` has cargo-fuzz targets on the same
//! entry points for coverage-guided runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod properties {
    pub mod acs_jwt;
    pub mod adoption;
    pub mod config;
    pub mod duration;
    pub mod provider_answers;
    pub mod scheduler;
    pub mod webhooks;

    use proptest::test_runner::{Config, FileFailurePersistence};

    /// `default` cases, unless `PROPTEST_CASES` asks for another number.
    /// (Setting `cases` in code would override the variable, which
    /// `Config::default()` reads.) A failing case is saved beside the
    /// module's source, `tests/properties/NAME.proptest-regressions`, and
    /// replayed first on every later run: commit it with the fix.
    pub fn cases(default: u32) -> Config {
        let mut config = Config {
            failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
            ..Config::default()
        };
        if std::env::var_os("PROPTEST_CASES").is_none() {
            config.cases = default;
        }
        config
    }
}
