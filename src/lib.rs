//! callwarden: enforces time limits on real-time calls.
//!
//! Sessions (a room, or one participant in it) arrive with a deadline; a
//! durable scheduler keeps every deadline in the database (SQLite, or
//! PostgreSQL) and, when one passes,
//! calls the provider's server API to end the call or remove the participant,
//! within the provider's rate limit, retrying what can be retried, and
//! recording every outcome in an audit log.
//!
//! # Layout
//! In layers, bottom up (ARCHITECTURE.md explains them; `tests/layers.rs`
//! checks that every import points down):
//! - foundation: [`domain`] (ids, rooms, states, instants; sessions, audit
//!   rows and their hash chain, secrets), [`stats`], [`budget`] (calendar
//!   windows), [`clock`], [`metrics`], [`telemetry`], [`systemd`],
//!   [`http_client`].
//! - configuration: [`config`], the YAML files → a typed, validated
//!   [`config::Config`], and [`config::live`], the configuration in force.
//! - decisions: [`policy`], pure: registrations, presence, adoption.
//! - adapters: [`store`] (the interface; [`store::sqlite`] and
//!   [`store::postgres`] hold the SQL)
//!   and [`providers`] (signed provider requests and answer classification).
//! - services: [`intake`] (registration and presence use cases),
//!   [`skew`] (the database's clock against the daemon's), [`lead`] (which
//!   buckets this instance enforces: leases), [`scheduler`], [`enforce`],
//!   [`notify`], [`retention`], [`reload`].
//! - edges: [`http`] (session API, webhooks, health, metrics), [`sandbox`]
//!   (a local stand-in for the provider APIs), [`daemon`] (the wiring).
//! - applications: [`demo`], [`cli`].

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
pub mod lead;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod providers;
pub mod reload;
pub mod retention;
pub mod sandbox;
pub mod scheduler;
pub mod skew;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod telemetry;
