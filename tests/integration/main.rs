//! Integration tests: the real `callwarden` binary (daemon, CLI, sandbox) as
//! child processes, outcomes read from the SQLite file and the sandbox.
//!
//! Each test has its own tempdir, and its own sandbox and daemon where it
//! needs them, so tests run in parallel. Set `TEST_LOG=1` to see the children's logs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acs;
mod acs_callbacks;
mod audit_cli;
mod cli;
mod clock_restart;
mod config;
mod crash;
mod db_faults;
mod enforcement;
mod entra;
mod hardening;
mod helpers;
mod http;
mod instances;
mod kill_loop;
mod policies;
mod policy_cli;
mod postgres;
mod provider_faults;
mod reconnects;
mod sql;
mod systemd;
mod webhooks;
