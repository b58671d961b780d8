//! The command line: argument definitions and one function per command.
//!
//! Session commands write the database directly (through [`crate::store`]),
//! so they work whether the daemon runs or not; a running daemon notices the
//! change within [`crate::scheduler::CHANGE_POLL`]. Commands print data on
//! stdout and diagnostics on stderr. Exit codes: 0 done, 1 failed or
//! refused, 2 bad configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::audit::{self, OutputFormat};
use crate::clock::Clock;
use crate::config::{self, Config, ConfigError, ProviderSettings};
use crate::domain::{Instant, Room, SessionId, SessionState, UserId, parse_duration};
use crate::policy::Registration;
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::store::{AuditFilter, NewSession, Store, StoreError};
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
    /// Serve a local stand-in for the TRTC and ACS APIs (for tests and trying things out).
    Sandbox(SandboxArgs),
    /// Run the daemon against an in-process sandbox with a realistic load and summarise.
    Demo(DemoArgs),
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
    fn resolve(
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
            Some(d) => Some(Instant::floor(now - chrono::Duration::from_std(d).unwrap_or_default())),
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
    /// Where to post ACS CallDisconnected events after a terminate.
    #[arg(long)]
    pub acs_events_url: Option<String>,
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
}

fn parse_state(s: &str) -> Result<SessionState, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// A command's failure, sorted by exit code.
#[derive(Debug)]
pub enum Failure {
    /// Exit 2: the operator must fix the configuration.
    Config(ConfigError),
    /// Exit 1.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl Failure {
    pub fn report(self) -> ExitCode {
        match self {
            Failure::Config(e) => {
                eprintln!("error: invalid configuration: {e}");
                ExitCode::from(2)
            }
            Failure::Other(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run => run_daemon(&cli.config).await,
        Command::Check => check(&cli.config),
        Command::Session(cmd) => session(&cli.config, cmd).await,
        Command::Audit(args) => audit_command(&cli.config, args).await,
        Command::Budget(args) => budget(&cli.config, args).await,
        Command::Backup { path } => backup(&cli.config, &path).await,
        Command::Sandbox(args) => sandbox(args).await,
        Command::Demo(args) => {
            crate::demo::run(args.provider, args.spread, args.burst).await.map_err(Failure::Other)
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, Failure> {
    let config = Config::load(path)?;
    for warning in &config.warnings {
        tracing::warn!("{}: {warning}", path.display());
    }
    Ok(config)
}

async fn open(config: &Config) -> Result<Store, Failure> {
    Ok(Store::open(&config.database).await.context("cannot open the database")?)
}

async fn run_daemon(path: &std::path::Path) -> Result<(), Failure> {
    let config = Arc::new(load(path)?);
    let store = open(&config).await?;
    let shutdown = CancellationToken::new();
    let clock = Clock::system();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let (live, reloads) = crate::reload::Live::new(config);
    tokio::spawn(crate::reload::watch_config(
        path.to_path_buf(),
        reloads,
        store.clone(),
        clock.clone(),
        shutdown.clone(),
    ));
    crate::daemon::serve(live, store.clone(), clock, shutdown).await.context("daemon failed")?;
    store.close().await;
    Ok(())
}

/// `callwarden budget USER`: each budgeted policy's window, use and rest.
async fn budget(path: &std::path::Path, args: BudgetArgs) -> Result<(), Failure> {
    let config = load(path)?;
    let user = UserId::parse(&args.user)
        .map_err(|e| Failure::Other(anyhow::anyhow!("user {:?}: {e}", args.user)))?;
    let at = match &args.at {
        Some(t) => Instant::parse(t).map_err(|e| Failure::Other(anyhow::anyhow!("--at: {e}")))?,
        None => Clock::system().now(),
    };
    let policies: Vec<&crate::config::Policy> = match &args.policy {
        Some(name) => {
            let p = config
                .policy(name)
                .ok_or_else(|| Failure::Other(anyhow::anyhow!("unknown policy {name:?}")))?;
            if p.budget.is_none() {
                return Err(Failure::Other(anyhow::anyhow!("policy {name:?} has no budget")));
            }
            vec![p]
        }
        None => config.policies.values().filter(|p| p.budget.is_some()).collect(),
    };
    if policies.is_empty() {
        return Err(Failure::Other(anyhow::anyhow!("no policy has a budget")));
    }
    let store = open(&config).await?;
    let mut rows = Vec::new();
    for p in policies {
        let Some(b) = p.budget else { continue };
        let s = store
            .budget_standing(&p.name, b, config.time_zone, &user, at)
            .await
            .context("cannot read the budget")?;
        rows.push(audit::BudgetRow {
            user: user.as_str().to_string(),
            policy: p.name.clone(),
            window: b.window.as_str(),
            time_zone: config.time_zone.name().to_string(),
            window_start: s.window_start.to_string(),
            window_end: s.window_end.to_string(),
            used_ms: crate::domain::duration_millis_ceil(s.used),
            limit_ms: crate::domain::duration_millis_ceil(s.limit),
            remaining_ms: crate::domain::duration_millis_ceil(s.remaining()),
        });
    }
    audit::print_budget(&rows, args.format).context("cannot write the budget")?;
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "stopping");
    shutdown.cancel();
}

fn check(path: &std::path::Path) -> Result<(), Failure> {
    let config = load(path)?;
    println!("configuration {} is valid", config.path.display());
    println!("database: {}", config.database.display());
    for p in config.providers.values() {
        match &p.settings {
            ProviderSettings::Trtc(t) => println!(
                "provider {}: tencent-trtc sdk_app_id={} region={} endpoint={} secret_id={} secret_key={} \
                 max_requests_per_second={} retry={} attempts, {}..{} backoff request_timeout={}",
                p.name,
                t.sdk_app_id,
                t.region,
                t.endpoint,
                mask_id(&t.secret_id),
                t.secret_key,
                p.max_requests_per_second,
                p.retry.max_attempts,
                humantime::format_duration(p.retry.initial_backoff),
                humantime::format_duration(p.retry.max_backoff),
                humantime::format_duration(p.request_timeout),
            ),
            ProviderSettings::Acs(a) => println!(
                "provider {}: azure-acs endpoint={} access_key={} api_version={} callback_url={} \
                 max_requests_per_second={} retry={} attempts, {}..{} backoff request_timeout={}",
                p.name,
                a.endpoint,
                a.access_key,
                a.api_version,
                a.callback_url.as_deref().unwrap_or("(none: outcomes are not confirmed)"),
                p.max_requests_per_second,
                p.retry.max_attempts,
                humantime::format_duration(p.retry.initial_backoff),
                humantime::format_duration(p.retry.max_backoff),
                humantime::format_duration(p.request_timeout),
            ),
        }
    }
    if let Some(n) = &config.notifications {
        // The query may carry a token: show only that there is one.
        let shown = match n.url.split_once('?') {
            Some((base, _)) => format!("{base}?****"),
            None => n.url.clone(),
        };
        println!("notifications: {shown} (secret {})", n.secret);
    }
    println!("time_zone: {}", config.time_zone.name());
    for file in config.sources.iter().skip(1) {
        println!("policy file: {}", file.display());
    }
    for p in config.policies.values() {
        let mut extras = Vec::new();
        if !p.warn_before.is_empty() {
            let points: Vec<String> =
                p.warn_before.iter().map(|w| humantime::format_duration(*w).to_string()).collect();
            extras.push(format!("warn_before {}", points.join(", ")));
        }
        if !p.grace.is_zero() {
            extras.push(format!("grace {}", humantime::format_duration(p.grace)));
        }
        if let Some(m) = p.max_extension {
            extras.push(format!("max_extension {}", humantime::format_duration(m)));
        }
        if let Some(b) = p.budget {
            extras.push(format!("budget {} per user per {}", humantime::format_duration(b.limit), b.window));
        }
        if p.shadow {
            extras.push("mode shadow".into());
        }
        println!(
            "policy {}: provider {}, max_duration {}, action {}{}",
            p.name,
            p.provider,
            humantime::format_duration(p.max_duration),
            p.action.as_str(),
            extras.iter().map(|e| format!(", {e}")).collect::<String>()
        );
    }
    for w in &config.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// Shows enough of a key id to recognise it, not enough to use it.
fn mask_id(id: &str) -> String {
    let shown: String = id.chars().take(4).collect();
    format!("{shown}****")
}

async fn session(path: &std::path::Path, cmd: SessionCommand) -> Result<(), Failure> {
    let config = load(path)?;
    let clock = Clock::system();
    match cmd {
        SessionCommand::Start(args) => {
            let registration = registration(&args)?;
            let store = open(&config).await?;
            let now = clock.now();
            let standings = crate::budget::standings(&store, &config, &registration, now)
                .await
                .context("cannot read the user's budget")?;
            let sessions = new_sessions(&config, &registration, now, &standings)?;
            store
                .insert_sessions(&sessions, clock.now(), "registered by the CLI")
                .await
                .context("cannot register the session")?;
            for s in &sessions {
                println!("{}", s.id);
                eprintln!(
                    "session {} registered: policy {}, room {}{}, deadline {}",
                    s.id,
                    s.policy,
                    s.room,
                    s.user.as_ref().map(|u| format!(", user {u}")).unwrap_or_default(),
                    s.deadline
                );
            }
        }
        SessionCommand::End { id } => {
            let id = parse_id(&id)?;
            let store = open(&config).await?;
            store.end_session(id, clock.now(), "ended with the CLI").await.map_err(refusal)?;
            eprintln!("session {id} ended; it will not be enforced");
        }
        SessionCommand::Extend { id, by } => {
            let id = parse_id(&id)?;
            let store = open(&config).await?;
            let policy = store.session(id).await.map_err(refusal)?.policy;
            let deadline = store
                .extend_session(
                    id,
                    by,
                    config.max_extension(&policy),
                    config.warn_before(&policy),
                    clock.now(),
                )
                .await
                .map_err(refusal)?;
            println!("{deadline}");
        }
        SessionCommand::List { state, format, limit } => {
            let store = open(&config).await?;
            let rows = store.list_sessions(state, limit).await.map_err(refusal)?;
            audit::print_sessions(&rows, format).context("cannot write the list")?;
        }
    }
    Ok(())
}

fn parse_id(id: &str) -> Result<SessionId, Failure> {
    id.parse::<SessionId>().map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))
}

fn refusal(e: StoreError) -> Failure {
    Failure::Other(anyhow::Error::new(e))
}

/// Turns `session start` arguments into a registration, or says why not.
pub fn registration(args: &StartArgs) -> Result<Registration, Failure> {
    let bad = |msg: String| Failure::Other(anyhow::anyhow!(msg));
    let room = match (&args.room, &args.str_room, &args.call) {
        (Some(r), None, None) => Room::numeric(r),
        (None, Some(s), None) => Room::string(s),
        (None, None, Some(c)) => Room::call(c),
        _ => return Err(bad("give exactly one of --room, --str-room and --call".into())),
    }
    .map_err(|e| bad(e.to_string()))?;
    // --user names TRTC users, --participant ACS participants.
    let (users, flag, other) = if room.kind() == crate::domain::RoomKind::Call {
        (&args.participants, "--participant", (!args.users.is_empty()).then_some("--user"))
    } else {
        (&args.users, "--user", (!args.participants.is_empty()).then_some("--participant"))
    };
    if let Some(wrong) = other {
        return Err(bad(format!("{wrong} does not apply to this kind of room; use {flag}")));
    }
    let users = users
        .iter()
        .map(|u| UserId::parse(u).map_err(|e| bad(format!("{flag} {u:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let started_at = match &args.started_at {
        Some(s) => Some(Instant::parse(s).map_err(|e| bad(format!("--started-at: {e}")))?),
        None => None,
    };
    Ok(Registration { policy: args.policy.clone(), room, users, limit: args.limit, started_at })
}

/// The sessions a registration creates, or why not, with the flag to fix.
pub fn new_sessions(
    config: &Config,
    registration: &Registration,
    now: Instant,
    standings: &std::collections::HashMap<UserId, crate::budget::Standing>,
) -> Result<Vec<NewSession>, Failure> {
    let bad = |msg: String| Failure::Other(anyhow::anyhow!(msg));
    crate::policy::register(config, registration, now, standings).map_err(|r| {
        let hint = match r.field {
            "room" => " (use --room or --str-room for TRTC, --call for ACS)",
            "users" => " (--user for TRTC, --participant for ACS)",
            "limit" => " (--limit)",
            _ => "",
        };
        bad(format!("{r}{hint}"))
    })
}

async fn backup(config_path: &std::path::Path, to: &std::path::Path) -> Result<(), Failure> {
    let config = load(config_path)?;
    let store = open(&config).await?;
    store.backup(to).await.with_context(|| format!("cannot back up to {}", to.display()))?;
    eprintln!("backed up {} to {}", config.database.display(), to.display());
    Ok(())
}

async fn verify_audit(store: &Store, config: &Config) -> Result<(), Failure> {
    const PAGE: u32 = 10_000;
    let checkpoint = store.audit_checkpoint().await.map_err(refusal)?;
    if let Some(cp) = &checkpoint {
        match (&config.retention.checkpoint_key, &cp.signature) {
            (Some(key), Some(sig)) if audit::checkpoint_signature(key, cp) == *sig => {
                println!(
                    "retention checkpoint at row {} ({} rows pruned) is signed and valid",
                    cp.last_id, cp.rows_pruned
                )
            }
            (Some(_), _) => {
                return Err(Failure::Other(anyhow::anyhow!(
                    "audit log broken at row {}: the retention checkpoint's signature is missing or wrong (forged?)",
                    cp.last_id
                )));
            }
            (None, Some(_)) => println!(
                "retention checkpoint at row {} is signed, but no retention.checkpoint_key is configured to check it",
                cp.last_id
            ),
            (None, None) => println!("retention checkpoint at row {} is unsigned", cp.last_id),
        }
    }
    let start = checkpoint.map(|cp| (cp.last_id, cp.last_hash));
    let mut after = start.as_ref().map_or(0, |(id, _)| *id);
    let mut check = audit::ChainCheck::new(start);
    let verdict = loop {
        let page = store.audit_page(after, PAGE).await.map_err(refusal)?;
        let Some(last) = page.last() else { break check.finish() };
        after = last.id;
        if let Some(Err(broken)) = page.iter().map(|r| check.push(r)).find(Result::is_err) {
            break broken;
        }
    };
    match verdict {
        audit::Verdict::Intact { checked, unchained, head } => {
            println!(
                "audit log intact: {checked} rows chained{}",
                if unchained > 0 {
                    format!(", {unchained} older rows from before the chain")
                } else {
                    String::new()
                }
            );
            if let Some((id, hash)) = head {
                println!("head: row {id} hash {hash}");
            }
            Ok(())
        }
        audit::Verdict::Broken { id, reason } => {
            Err(Failure::Other(anyhow::anyhow!("audit log broken at row {id}: {reason}")))
        }
    }
}

async fn audit_command(path: &std::path::Path, args: AuditArgs) -> Result<(), Failure> {
    let config = load(path)?;
    let store = open(&config).await?;
    let now = Clock::system().now_datetime();
    match &args.command {
        Some(AuditCommand::Verify) => return verify_audit(&store, &config).await,
        Some(AuditCommand::Summary { range, format }) => {
            let (since, until) = range.resolve(now)?;
            let since = since.unwrap_or(Instant::floor(now - chrono::Duration::hours(24)));
            let until = until.unwrap_or(Instant::ceil(now).saturating_add(Duration::from_millis(1)));
            let summary = store.audit_summary(since, until).await.map_err(refusal)?;
            audit::print_summary(&summary, since, until, *format).context("cannot write the summary")?;
            return Ok(());
        }
        None => {}
    }
    let (since, until) = args.range.resolve(now)?;
    let filter = AuditFilter {
        session: args.session.as_deref().map(parse_id).transpose()?,
        room: args.room.clone(),
        user: args.user.clone(),
        provider: args.provider.clone(),
        outcomes: args.outcomes.clone(),
        events: args.events.clone(),
        since,
        until,
        limit: args.limit,
    };
    let rows = store.audit(&filter).await.map_err(refusal)?;
    audit::print_audit(&rows, args.format).context("cannot write the audit log")?;
    Ok(())
}

async fn sandbox(args: SandboxArgs) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = CancellationToken::new();
    let options = SandboxOptions {
        secret_id: args.secret_id,
        secret_key: args.secret_key,
        sdk_app_id: args.sdk_app_id,
        acs_access_key: args.acs_access_key,
        acs_events_url: args.acs_events_url,
        quota_per_second: args.quota,
    };
    let sandbox =
        Sandbox::start(listener, options, shutdown.clone()).await.context("cannot start the sandbox")?;
    // The first stdout line is the address, for scripts and tests to read.
    println!("sandbox listening on {}", sandbox.url());
    tracing::info!(url = %sandbox.url(), "sandbox ready (TRTC API at POST /, control API under /_sandbox/)");
    stop_on_signal(shutdown.clone()).await;
    shutdown.cancel();
    Ok(())
}
