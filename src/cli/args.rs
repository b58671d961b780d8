//! The command line's arguments (clap): commands, their flags, and how each
//! flag's text is parsed.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

use super::Failure;
use super::output::OutputFormat;
use crate::config;
use crate::domain::{Instant, SessionState, parse_duration};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "callwarden", version, about = "Enforces time limits on real-time calls")]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "CALLWARDEN_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// How log lines look (on stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: enforce every deadline in the database until stopped.
    Run,
    /// Validate the configuration and print the resolved providers and policies.
    Check,
    /// Register, end, extend and list sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Show the audit log, newest last (or `audit verify` its hash chain).
    Audit(AuditArgs),
    /// Show how much of each budget a user has used in the current window.
    Budget(BudgetArgs),
    /// Write a consistent copy of the live database to PATH (safe while the daemon runs).
    Backup { path: PathBuf },
    /// Move the database: copy a SQLite deployment into PostgreSQL.
    #[command(subcommand)]
    Db(DbCommand),
    /// Serve a local stand-in for the TRTC and ACS APIs (for tests and trying things out).
    Sandbox(SandboxArgs),
    /// Run the daemon against an in-process sandbox with a realistic load and summarise.
    Demo(DemoArgs),
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy the configured SQLite database whole (sessions, the audit log and its chain, checkpoints,
    /// notifications, webhook history) into an empty PostgreSQL database, then verify the copy's chain.
    /// Stop the daemon first.
    Copy {
        /// The target, postgres://USER@HOST/DATABASE (password in the URL or PGPASSWORD).
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Register a session; prints its id (one per --user) on stdout.
    Start(StartArgs),
    /// The call finished by itself: cancel enforcement.
    End { id: String },
    /// Move a session's deadline later.
    Extend {
        id: String,
        /// How much later, e.g. 5m.
        #[arg(long, value_parser = parse_duration)]
        by: Duration,
    },
    /// List sessions, earliest deadline first.
    List {
        #[arg(long, value_parser = parse_state)]
        state: Option<SessionState>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which_room").required(true).args(["room", "str_room", "call"])))]
pub struct StartArgs {
    /// The policy in the configuration.
    #[arg(long)]
    pub policy: String,
    /// A numeric room id (1..4294967294).
    #[arg(long)]
    pub room: Option<String>,
    /// A string room id (a different namespace from numeric rooms).
    #[arg(long = "str-room")]
    pub str_room: Option<String>,
    /// An ACS call connection id.
    #[arg(long)]
    pub call: Option<String>,
    /// A TRTC user to limit; repeat for several (one session each).
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// An ACS participant's raw id (8:acs:..., +15551234567, 8:orgid:...); repeat for several.
    #[arg(long = "participant")]
    pub participants: Vec<String>,
    /// The time limit; default the policy's max_duration, and at most that.
    #[arg(long, value_parser = parse_duration)]
    pub limit: Option<Duration>,
    /// When the call started (RFC 3339); default now.
    #[arg(long)]
    pub started_at: Option<String>,
}

#[derive(Debug, Args)]
pub struct BudgetArgs {
    /// The user (TRTC user id or ACS raw id).
    pub user: String,
    /// Only this policy; default every policy with a budget.
    #[arg(long)]
    pub policy: Option<String>,
    /// Where the user stood at this instant (RFC 3339); default now.
    #[arg(long)]
    pub at: Option<String>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    #[arg(long)]
    pub session: Option<String>,
    /// Rows of sessions in this room or call.
    #[arg(long)]
    pub room: Option<String>,
    /// Rows of this user's (or ACS participant's) sessions.
    #[arg(long)]
    pub user: Option<String>,
    /// Rows of this provider (its name in the config).
    #[arg(long)]
    pub provider: Option<String>,
    /// Only these outcomes (success, already_ended, retryable, fatal); repeatable.
    #[arg(long = "outcome")]
    pub outcomes: Vec<String>,
    /// Only these events (enforced, failed, attempt, ...); repeatable.
    #[arg(long = "event")]
    pub events: Vec<String>,
    #[command(flatten)]
    pub range: TimeRange,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// At most this many rows (the newest).
    #[arg(long)]
    pub limit: Option<u32>,
}

/// A time range: `--since 1h`, or `--from`/`--until` instants (RFC 3339).
#[derive(Debug, Args)]
pub struct TimeRange {
    /// From this far back, e.g. 1h or 7d.
    #[arg(long, value_parser = parse_duration, conflicts_with = "from")]
    pub since: Option<Duration>,
    /// From this instant (inclusive), e.g. 2026-11-20T00:00:00Z.
    #[arg(long)]
    pub from: Option<String>,
    /// Until this instant (exclusive).
    #[arg(long)]
    pub until: Option<String>,
}

impl TimeRange {
    pub(super) fn resolve(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(Option<Instant>, Option<Instant>), Failure> {
        let parse = |flag: &str, s: &Option<String>| {
            s.as_deref()
                .map(Instant::parse)
                .transpose()
                .map_err(|e| Failure::Other(anyhow::anyhow!("{flag}: {e}")))
        };
        let since = match self.since {
            // Further back than chrono can count is "from the beginning".
            Some(d) => Some(
                chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|d| now.checked_sub_signed(d))
                    .map_or(Instant::EARLIEST, |t| Instant::floor(t).max(Instant::EARLIEST)),
            ),
            None => parse("--from", &self.from)?,
        };
        Ok((since, parse("--until", &self.until)?))
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the audit log's hash chain; exit 1 naming the first altered,
    /// deleted or inserted row.
    Verify,
    /// Counts per event, outcome and error code, and lateness percentiles,
    /// over a time range (default: the last 24 hours).
    Summary {
        #[command(flatten)]
        range: TimeRange,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    #[arg(long, default_value = "127.0.0.1:8721")]
    pub listen: String,
    #[arg(long, env = "CALLWARDEN_SANDBOX_SECRET_ID", default_value = crate::sandbox::SANDBOX_SECRET_ID)]
    pub secret_id: String,
    #[arg(long, env = "CALLWARDEN_SANDBOX_SECRET_KEY", default_value = crate::sandbox::SANDBOX_SECRET_KEY, hide_default_value = true)]
    pub secret_key: String,
    #[arg(long, default_value_t = crate::sandbox::SANDBOX_SDK_APP_ID)]
    pub sdk_app_id: u64,
    /// The ACS access key (base64) requests must be signed with.
    #[arg(long, env = "CALLWARDEN_SANDBOX_ACS_ACCESS_KEY", default_value = crate::sandbox::SANDBOX_ACS_ACCESS_KEY, hide_default_value = true)]
    pub acs_access_key: String,
    /// The ACS resource id the sandbox's signed callbacks name as their
    /// audience (`webhooks.acs.jwt_audience`). Call events go to each
    /// call's callback URI, given at `POST /_sandbox/acs/calls`.
    #[arg(long, default_value = crate::sandbox::acs_calls::SANDBOX_ACS_RESOURCE_ID)]
    pub acs_resource_id: String,
    /// How long the Microsoft Entra tokens the sandbox issues live.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3599s")]
    pub entra_token_lifetime: std::time::Duration,
    /// Requests per sliding second per action before RequestLimitExceeded.
    #[arg(long, default_value_t = crate::sandbox::SANDBOX_QUOTA)]
    pub quota: u32,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Which provider's sandbox to enforce against.
    #[arg(long, value_enum, default_value_t = crate::demo::DemoProvider::Trtc)]
    pub provider: crate::demo::DemoProvider,
    /// Sessions ending one after another over the first seconds.
    #[arg(long, default_value_t = 40)]
    pub spread: u32,
    /// Sessions that all expire in the same instant.
    #[arg(long, default_value_t = 250)]
    pub burst: u32,
    /// An empty PostgreSQL database (postgres://…) for the daemons to
    /// share, instead of a new SQLite file; TRTC only.
    #[arg(long)]
    pub database: Option<String>,
    /// Daemons sharing --database, as child processes; with two or more,
    /// the leader is killed during the burst.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub instances: u32,
}

fn parse_state(s: &str) -> Result<SessionState, String> {
    s.parse().map_err(|e| format!("{e}"))
}
