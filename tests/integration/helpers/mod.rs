//! The harness: the real `callwarden` binary as child processes (a sandbox and
//! a daemon), a config file and a database in a tempdir per test, and helpers
//! that read outcomes from the SQLite file and the sandbox's control API.
//!
//! Child processes are killed when their guard drops. Their logs (stderr) are
//! captured, and echoed only when `TEST_LOG` is set.
//!
//! One job per file; everything is re-exported here, so tests import from
//! `crate::helpers` alone.

mod configs;
mod daemon;
mod faults;
mod harness;
mod http;
mod invariants;
#[path = "../../support/pg_cluster.rs"]
pub mod pg_cluster;
mod process;
mod rows;
mod sandbox;
mod time;
mod wait;
mod workdir;

pub use configs::*;
pub use daemon::*;
pub use faults::*;
pub use harness::*;
pub use http::*;
pub use process::*;
pub use rows::*;
// No test names the sandbox's types yet (they reach them through `Harness`),
// but they belong to the harness's surface like everything else here.
#[allow(unused_imports)]
pub use sandbox::*;
pub use time::*;
pub use wait::*;
pub use workdir::*;
