//! The store's conformance suite: every operation of `callwarden::store::Store`
//! (the `operations!` list in `src/store.rs`, plus `open`, `path`, `health`,
//! `close`, the registrar and the change watcher), exercised through the
//! interface only, with its documented behaviour asserted precisely: states,
//! audit rows, counts, errors.
//!
//! Every test is written once, as `async fn name(db) { … }` inside
//! [`conformance!`], and instantiated once per backend by [`backends!`]: the
//! test `store_conformance::queue::a_claimed_session_is_not_claimed_twice`
//! runs as `…::sqlite` and `…::postgres` (see `store_conformance/backend.rs`
//! for what each backend supplies). `cargo test --test store_conformance
//! sqlite` runs one backend's instances.
//!
//! No SQL appears in the tests: the one behaviour that is about SQL ("rows an
//! app inserts with plain SQL" are adopted, rejected or fail to parse) goes
//! through `Db::insert_plain_row`, which each backend supplies.
//!
//! Time is explicit: every operation takes its `now`, so the tests pass
//! instants (`at(minutes)`) and never sleep.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Instantiates `$test` (an `async fn(Db)`) once per backend, each a
/// `#[tokio::test]` named after the backend, carrying `$attr` (an
/// `#[ignore = "bug: …"]`, say). Adding a backend is one line here.
macro_rules! backends {
    ([$($attr:tt)*] $test:ident) => {
        $($attr)*
        #[tokio::test]
        async fn sqlite() {
            let db = crate::store_conformance::backend::Db::open(crate::store_conformance::backend::Backend::Sqlite);
            $test(db.await.expect("SQLite runs everywhere")).await
        }

        $($attr)*
        #[tokio::test]
        async fn postgres() {
            // None: PostgreSQL is not installed here, and not required.
            let db = crate::store_conformance::backend::Db::open(crate::store_conformance::backend::Backend::Postgres);
            if let Some(db) = db.await {
                $test(db).await
            }
        }
    };
}

/// Declares conformance tests: each `async fn name(db) { … }` becomes a
/// module `name` with one test per backend (see [`backends!`]). Attributes
/// (`#[ignore = "…"]`) apply to every backend's instance.
macro_rules! conformance {
    ($( $(#[$attr:meta])* async fn $name:ident($db:ident) $body:block )*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn test($db: crate::store_conformance::backend::Db) $body

                backends!([$(#[$attr])*] test);
            }
        )*
    };
}

mod store_conformance {
    pub mod backend;
    pub mod support;

    mod audit;
    mod budgets;
    mod contention;
    mod fencing;
    mod handle;
    mod leases;
    mod outbox;
    mod presence;
    mod queue;
    mod registrar;
    mod sessions;
}
