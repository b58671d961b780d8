//! callwarden: enforces time limits on real-time calls.
//!
//! Sessions (a room, or one participant in it) arrive with a deadline; a
//! durable scheduler keeps every deadline in SQLite and, when one passes,
//! calls the provider's server API to end the call or remove the participant,
//! within the provider's rate limit, retrying what can be retried, and
//! recording every outcome in an audit log.
//!
//! # Layout
//! In reading order:
//! - [`domain`]: ids, rooms, states, instants, durations, retry policy. No I/O.
//! - [`config`]: the YAML file → typed, validated [`config::Config`]; secrets.
//! - [`policy`]: pure decisions: a registration → sessions and deadlines.
//! - [`budget`]: per-user budgets: calendar windows, what is left.
//! - [`store`]: the SQLite database, the only module with SQL; migrations.
//! - [`clock`]: the injectable clock deadlines are compared with; it takes
//!   steps of the host's clock gradually.
//! - [`reload`]: the configuration in force, and hot reload.
//! - [`scheduler`]: what is due next; claims due sessions; adopts SQL inserts.
//! - [`enforce`]: pacing, provider calls, retries, outcome records.
//! - [`notify`]: warnings and outcome events to the app's endpoint.
//! - [`health`]: whether database writes are failing (for `/readyz`).
//! - [`providers`]: signed provider requests and answer classification
//!   ([`providers::trtc`], [`providers::acs`]).
//! - [`http`]: the listener: the session API, provider webhooks, health, metrics.
//! - [`daemon`]: wires the above into the running service; [`service`]:
//!   systemd readiness and watchdog.
//! - [`sandbox`]: a local stand-in for the provider APIs.
//! - [`demo`]: the one-command tour: daemon + sandbox + a realistic load.
//! - [`cli`]: the command line, including the session and audit commands.
//! - [`audit`]: tables and JSON for the audit log and session lists.
//! - [`telemetry`]: logging setup. [`metrics`]: Prometheus metrics.

pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod domain;
pub mod enforce;
pub mod http;
pub mod http_client;
pub mod intake;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod providers;
pub mod reload;
pub mod retention;
pub mod sandbox;
pub mod scheduler;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod telemetry;
