//! The scenarios, one file each; each entry point returns its figures
//! (one run's, or for api_load every run's). `prune_db` builds the prune
//! scenario's database, `flood` the connections scenario's clients.

pub(crate) mod api_load;
pub(crate) mod bulk_insert;
pub(crate) mod connections;
pub(crate) mod drain;
pub(crate) mod failover;
pub(crate) mod flood;
pub(crate) mod lateness;
pub(crate) mod pg_queue;
pub(crate) mod prune;
pub(crate) mod prune_db;
pub(crate) mod registrations;
pub(crate) mod scheduler;
pub(crate) mod startup;
