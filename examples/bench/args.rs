//! The command line: the scenarios clap offers and each one's arguments,
//! with the provider and the system (callwarden, baseline, both) to run.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::report;

#[derive(Parser)]
#[command(about = "callwarden benchmarks (see BENCHMARKS.md)")]
pub(crate) struct Cli {
    /// Run the scenario this many times and report the median of each figure.
    #[arg(long, global = true, default_value_t = 1)]
    pub(crate) runs: usize,
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

#[derive(Subcommand)]
pub(crate) enum Scenario {
    /// End-to-end lateness under the quota: daemon + sandbox, sessions spread evenly.
    Lateness(LatenessArgs),
    /// Scheduler alone: handover time relative to the deadline, and memory.
    Scheduler(SchedulerArgs),
    /// Many sessions with the same deadline, drained at the provider's rate.
    Drain(DrainArgs),
    /// Startup time, RSS and idle CPU of the release binary over a large database.
    Startup(StartupArgs),
    /// Registrations per second through plain SQL inserts, and the daemon's adoption of them.
    Registrations(RegistrationsArgs),
    /// Lateness and the watchdog while an application bulk-inserts plain-SQL rows.
    #[command(name = "bulk_insert", alias = "bulk-insert")]
    BulkInsert(BulkInsertArgs),
    /// The first retention prune over a large backlog: writer holds, duration, lateness.
    Prune(PruneArgs),
    /// Idle and slow-loris connections on the listener: lateness, descriptors, health checks.
    Connections(ConnectionsArgs),
    /// Three instances on PostgreSQL: the gap after killing or stopping the leader.
    Failover(FailoverArgs),
    /// Lateness with a queue on PostgreSQL, one or several instances.
    #[command(name = "pg_lateness", alias = "pg-lateness")]
    PgLateness(PgLatenessArgs),
    /// A drain on PostgreSQL with several instances, the leader killed meanwhile.
    #[command(name = "pg_drain", alias = "pg-drain")]
    PgDrain(PgDrainArgs),
    /// Every scenario of issue 7, callwarden and the baseline side by side,
    /// `--runs` times each: writes BENCHMARKS.md (markdown) to stdout.
    Report(report::ReportArgs),
    /// Every scenario at full size.
    All(AllArgs),
}

#[derive(Args, Clone)]
pub(crate) struct RegistrationsArgs {
    /// Seconds of each phase (one row per transaction, then batched).
    #[arg(long, default_value_t = 5.0)]
    pub(crate) seconds: f64,
    /// Rows per transaction in the batched phase.
    #[arg(long, default_value_t = 500)]
    pub(crate) batch: usize,
    /// Seconds to wait after the inserts for the daemon to adopt the rows.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) adopt_secs: f64,
}

/// Which provider API the daemon enforces against (the sandbox serves both).
#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum ProviderKind {
    /// Tencent TRTC: DismissRoom / RemoveUser on numeric rooms.
    #[default]
    Trtc,
    /// Azure Communication Services: `:terminate` / `participants:remove` on calls.
    Acs,
}

impl ProviderKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ProviderKind::Trtc => "trtc",
            ProviderKind::Acs => "acs",
        }
    }

    /// The API actions of the room-wide and the per-user policy.
    pub(crate) fn end_action(self) -> &'static str {
        match self {
            ProviderKind::Trtc => "DismissRoom",
            ProviderKind::Acs => "TerminateCall",
        }
    }
}

/// What enforces the sessions: callwarden's daemon, the naive poller of
/// `examples/baseline_poller.rs`, or both at once, each against its own
/// sandbox, tap and database (so both see the same machine noise).
#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum System {
    #[default]
    Callwarden,
    Baseline,
    Both,
}

impl System {
    pub(crate) fn callwarden(self) -> bool {
        self != System::Baseline
    }

    pub(crate) fn baseline(self) -> bool {
        self != System::Callwarden
    }
}

#[derive(Args, Clone)]
pub(crate) struct LatenessArgs {
    #[arg(long, default_value_t = 1000)]
    pub(crate) sessions: usize,
    /// Deadlines are spread evenly over this many seconds.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) spread_secs: f64,
    /// Measure only the sessions due in the first this-many seconds; the rest
    /// stay queued (default: all of them).
    #[arg(long)]
    pub(crate) measure_secs: Option<f64>,
    #[arg(long, value_enum, default_value_t = System::Callwarden)]
    pub(crate) system: System,
    /// One session in this many removes a user instead of dismissing a room (0: none).
    #[arg(long, default_value_t = 10)]
    pub(crate) remove_user_every: usize,
    #[arg(long, value_enum, default_value_t = ProviderKind::Trtc)]
    pub(crate) provider: ProviderKind,
}

#[derive(Args, Clone)]
pub(crate) struct SchedulerArgs {
    #[arg(long, default_value_t = 100_000)]
    pub(crate) sessions: usize,
    #[arg(long, default_value_t = 100.0)]
    pub(crate) spread_secs: f64,
}

#[derive(Args, Clone)]
pub(crate) struct DrainArgs {
    #[arg(long, default_value_t = 2000)]
    pub(crate) sessions: usize,
    /// The daemon's configured max_requests_per_second.
    #[arg(long, default_value_t = 19)]
    pub(crate) rate: u32,
    /// TRTC: DismissRoom of distinct rooms; ACS: participants:remove in distinct calls.
    #[arg(long, value_enum, default_value_t = ProviderKind::Trtc)]
    pub(crate) provider: ProviderKind,
    #[arg(long, value_enum, default_value_t = System::Callwarden)]
    pub(crate) system: System,
}

#[derive(Args, Clone)]
pub(crate) struct StartupArgs {
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) sessions: usize,
    /// Where the filled database is kept between runs (default: $CARGO_TARGET_DIR/bench-cache).
    #[arg(long)]
    pub(crate) cache_dir: Option<PathBuf>,
    /// The callwarden binary (default: the release binary next to this example, rebuilt first).
    #[arg(long)]
    pub(crate) binary: Option<PathBuf>,
    /// Seconds to let the daemon settle after "callwarden running" before reading RSS.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) settle_secs: f64,
    /// Seconds over which idle CPU is measured.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) idle_secs: f64,
    /// Also start the baseline poller over the same database and measure it the same way.
    #[arg(long)]
    pub(crate) baseline: bool,
    /// Then start the daemon again with `listen:` and scrape `/metrics` this many times (0: not).
    #[arg(long, default_value_t = 200)]
    pub(crate) scrapes: usize,
}

#[derive(Args, Clone)]
pub(crate) struct BulkInsertArgs {
    /// Plain-SQL rows the application inserts.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) rows: usize,
    /// Rows per application transaction.
    #[arg(long, default_value_t = 500)]
    pub(crate) batch: usize,
    /// Sessions registered beforehand fall due at 10/s for this many
    /// seconds, from the insert's start.
    #[arg(long, default_value_t = 40.0)]
    pub(crate) spread_secs: f64,
    /// Longest wait, after the insert, for the daemon to adopt every row.
    #[arg(long, default_value_t = 180.0)]
    pub(crate) adopt_secs: f64,
}

#[derive(Args, Clone)]
pub(crate) struct PruneArgs {
    /// Settled sessions older than the retention period (two audit rows each).
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) sessions: usize,
    /// Settled sessions inside the retention period, which the prune keeps.
    #[arg(long, default_value_t = 250_000)]
    pub(crate) recent_sessions: usize,
    /// Longest wait for the prune to finish, after it starts (60 s after the daemon).
    #[arg(long, default_value_t = 150.0)]
    pub(crate) max_secs: f64,
    /// Where the database is kept between runs (default: $CARGO_TARGET_DIR/bench-cache).
    #[arg(long)]
    pub(crate) cache_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub(crate) struct ConnectionsArgs {
    /// Clients that connect and send nothing.
    #[arg(long, default_value_t = 5000)]
    pub(crate) idle: usize,
    /// Clients that send a request head one byte at a time and never finish it.
    #[arg(long, default_value_t = 1000)]
    pub(crate) slow: usize,
    /// Seconds between two bytes of a slow client.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) slow_every: f64,
    /// How long the flood lasts.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) secs: f64,
}

#[derive(Args, Clone)]
pub(crate) struct FailoverArgs {
    /// Times the leader is killed with SIGKILL.
    #[arg(long, default_value_t = 10)]
    pub(crate) kills: u32,
    /// Times the leader is then stopped with SIGTERM.
    #[arg(long, default_value_t = 10)]
    pub(crate) stops: u32,
    /// Seconds between two disruptions (each is in the middle of its cycle).
    #[arg(long, default_value_t = 8.0)]
    pub(crate) cycle_secs: f64,
}

#[derive(Args, Clone)]
pub(crate) struct PgLatenessArgs {
    /// Daemons sharing the database.
    #[arg(long, default_value_t = 3)]
    pub(crate) instances: usize,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) sessions: usize,
    /// Deadlines are spread evenly over this many seconds.
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) spread_secs: f64,
    /// Measure only the sessions due in the first this-many seconds; the
    /// rest stay queued.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) measure_secs: f64,
}

#[derive(Args, Clone)]
pub(crate) struct PgDrainArgs {
    /// Daemons sharing the database.
    #[arg(long, default_value_t = 3)]
    pub(crate) instances: usize,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) sessions: usize,
    /// Times the leader is killed (SIGKILL), evenly through the drain.
    #[arg(long, default_value_t = 2)]
    pub(crate) kills: u32,
}

#[derive(Args, Clone)]
pub(crate) struct AllArgs {
    #[arg(long)]
    pub(crate) cache_dir: Option<PathBuf>,
}
