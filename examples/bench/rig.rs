//! The rig a scenario runs against: config text, session factories and
//! inserts, sandbox + tap + store, the daemon and the baseline process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use callwarden::clock::Clock;
use callwarden::config::Config;
use callwarden::domain::session::NewSession;
use callwarden::domain::{Instant, Room, SessionId, UserId};
use callwarden::sandbox::{
    SANDBOX_ACS_ACCESS_KEY, SANDBOX_SDK_APP_ID, SANDBOX_SECRET_ID, SANDBOX_SECRET_KEY, Sandbox,
    SandboxOptions,
};
use callwarden::store::{AuditFilter, Store};

use crate::args::{ProviderKind, System};
use crate::monitors::{FsyncMonitor, WakeMonitor};
use crate::tap::Tap;

/// The baseline's fixed throttle: the published quota, 20 calls a second.
pub(crate) const BASELINE_RATE: u32 = 20;

fn config_text(db: &Path, endpoint: &str, rate: u32, provider: ProviderKind) -> String {
    if provider == ProviderKind::Acs {
        // No callback_url: a 202/204 settles the session as enforced directly.
        return [
            format!("database: {}", db.display()),
            "providers:".into(),
            "  acs:".into(),
            "    kind: azure-acs".into(),
            format!("    endpoint: {endpoint}"),
            format!("    access_key: {SANDBOX_ACS_ACCESS_KEY}"),
            format!("    max_requests_per_second: {rate}"),
            "policies:".into(),
            "  end:".into(),
            "    provider: acs".into(),
            "    max_duration: 24h".into(),
            "    stale_after: 7d".into(),
            "    action: terminate_call".into(),
            "  kick:".into(),
            "    provider: acs".into(),
            "    max_duration: 24h".into(),
            "    stale_after: 7d".into(),
            "    action: remove_participant".into(),
        ]
        .join("\n")
            + "\n";
    }
    [
        format!("database: {}", db.display()),
        "providers:".into(),
        "  trtc:".into(),
        "    kind: tencent-trtc".into(),
        format!("    sdk_app_id: {SANDBOX_SDK_APP_ID}"),
        "    region: ap-guangzhou".into(),
        format!("    secret_id: {SANDBOX_SECRET_ID}"),
        format!("    secret_key: {SANDBOX_SECRET_KEY}"),
        format!("    endpoint: {endpoint}"),
        format!("    max_requests_per_second: {rate}"),
        "policies:".into(),
        "  end:".into(),
        "    provider: trtc".into(),
        "    max_duration: 24h".into(),
        "    stale_after: 7d".into(),
        "    action: dismiss_room".into(),
        "  kick:".into(),
        "    provider: trtc".into(),
        "    max_duration: 24h".into(),
        "    stale_after: 7d".into(),
        "    action: remove_user".into(),
    ]
    .join("\n")
        + "\n"
}

/// Writes the config next to the database and loads it as the daemon would.
pub(crate) fn write_config(
    dir: &Path,
    db: &Path,
    endpoint: &str,
    rate: u32,
    provider: ProviderKind,
) -> anyhow::Result<(PathBuf, Arc<Config>)> {
    write_config_with(dir, db, endpoint, rate, provider, "")
}

/// [`write_config`] with `extra` top-level YAML appended (`listen:`, `retention:`).
pub(crate) fn write_config_with(
    dir: &Path,
    db: &Path,
    endpoint: &str,
    rate: u32,
    provider: ProviderKind,
    extra: &str,
) -> anyhow::Result<(PathBuf, Arc<Config>)> {
    let path = dir.join("bench.yaml");
    std::fs::write(&path, config_text(db, endpoint, rate, provider) + extra)?;
    let config = Config::load(&path).context("the bench config does not load")?;
    Ok((path, Arc::new(config)))
}

pub(crate) fn dismiss(room: u32, deadline: Instant, now: Instant) -> NewSession {
    NewSession {
        id: SessionId::new(),
        policy: "end".into(),
        provider: "trtc".into(),
        room: Room::Numeric(room),
        user: None,
        started_at: now,
        deadline,
        grace: std::time::Duration::ZERO,
        warn_before: Vec::new(),
        note: None,
    }
}

/// Session `i` of a run against `provider`: the room-wide policy (`end`), or
/// with `kick` the per-user one. TRTC: numeric room `room`, user `user-i`;
/// ACS: call `bench_call-room`, participant `8:acs:bench_user-i`.
pub(crate) fn bench_session(
    provider: ProviderKind,
    room: u32,
    i: usize,
    kick: bool,
    deadline: Instant,
    now: Instant,
) -> anyhow::Result<NewSession> {
    let mut s = dismiss(room, deadline, now);
    if provider == ProviderKind::Acs {
        s.provider = "acs".into();
        s.room = Room::call(&format!("bench_call-{room}"))?;
    }
    if kick {
        s.policy = "kick".into();
        s.user = Some(UserId::parse(&match provider {
            ProviderKind::Trtc => format!("user-{i}"),
            ProviderKind::Acs => format!("8:acs:bench_user-{i}"),
        })?);
    }
    Ok(s)
}

/// Inserts in transactions of `batch` sessions; returns the seconds taken.
pub(crate) async fn insert_all(store: &Store, sessions: &[NewSession], batch: usize) -> anyhow::Result<f64> {
    let started = StdInstant::now();
    for chunk in sessions.chunks(batch.max(1)) {
        store.insert_sessions(chunk, Clock::system().now(), "bench").await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Times `n` one-session commits (two rows, `synchronous=FULL`) into a
/// scratch database in `dir`: what one fsync'd write transaction costs on
/// this disk right now. Microseconds, sorted.
pub(crate) async fn commit_probe(dir: &Path, n: usize) -> anyhow::Result<Vec<i64>> {
    let store = Store::open(&dir.join("probe.db")).await?;
    let now = Clock::system().now();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let s = dismiss(1 + i as u32, now.saturating_add(Duration::from_secs(86_400)), now);
        let started = StdInstant::now();
        store.insert_sessions(&[s], now, "probe").await?;
        out.push(started.elapsed().as_micros() as i64);
    }
    store.close().await;
    out.sort_unstable();
    Ok(out)
}

/// Polls until no session is active or enforcing (after `not_before`), or `timeout`.
pub(crate) async fn wait_settled(
    store: &Store,
    not_before: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = StdInstant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let counts = store.state_counts().await?;
        let pending: i64 =
            counts.iter().filter(|(s, _)| s == "active" || s == "enforcing").map(|(_, n)| *n).sum();
        if pending == 0 && Clock::system().now() >= not_before {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("{pending} sessions still pending after {timeout:?}: {counts:?}");
        }
    }
}

/// What a lateness or drain run starts once its sessions are stored: the
/// disk and CPU monitors, then callwarden and/or the baseline.
pub(crate) struct Measured {
    pub(crate) monitor: FsyncMonitor,
    pub(crate) wakes: WakeMonitor,
    pub(crate) daemon: Option<tokio::task::JoinHandle<Result<(), callwarden::daemon::DaemonError>>>,
    pub(crate) baseline: Option<std::process::Child>,
}

impl Measured {
    pub(crate) fn start(rig: &Rig, base_rig: Option<&Rig>, system: System) -> anyhow::Result<Measured> {
        let monitor = FsyncMonitor::start(rig.dir.path())?;
        let wakes = WakeMonitor::start();
        let daemon = system.callwarden().then(|| rig.start_daemon());
        let baseline = match base_rig {
            Some(b) => Some(b.start_baseline(BASELINE_RATE)?),
            None => None,
        };
        Ok(Measured { monitor, wakes, daemon, baseline })
    }
}

/// Sandbox, tap in front of it, fresh database and config: what the daemon runs against.
pub(crate) struct Rig {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) sandbox: Sandbox,
    pub(crate) tap: Tap,
    pub(crate) store: Store,
    pub(crate) config: Arc<Config>,
    /// The SQLite file the config names.
    pub(crate) db: PathBuf,
    /// The config file, for a daemon started as its own process.
    pub(crate) config_path: PathBuf,
    shutdown: CancellationToken,
}

impl Rig {
    pub(crate) async fn new(rate: u32, provider: ProviderKind) -> anyhow::Result<Rig> {
        Rig::with(rate, provider, "", None).await
    }

    /// A rig whose config has `extra` YAML appended, and whose database
    /// starts as a copy of `seed` (synced to disk before anything is
    /// measured, so its writeback does not land in the run).
    pub(crate) async fn with(
        rate: u32,
        provider: ProviderKind,
        extra: &str,
        seed: Option<&Path>,
    ) -> anyhow::Result<Rig> {
        let dir = tempfile::tempdir()?;
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let sandbox = Sandbox::start(listener, SandboxOptions::default(), shutdown.clone()).await?;
        let tap = Tap::start(sandbox.addr, shutdown.clone()).await?;
        let db = dir.path().join("callwarden.db");
        if let Some(seed) = seed {
            std::fs::copy(seed, &db).with_context(|| format!("cannot copy {}", seed.display()))?;
            std::fs::File::open(&db)?.sync_all()?;
        }
        let (config_path, config) = write_config_with(dir.path(), &db, &tap.url(), rate, provider, extra)?;
        let store = Store::connect(&config.database).await?;
        Ok(Rig { dir, sandbox, tap, store, config, db, config_path, shutdown })
    }

    pub(crate) fn start_daemon(
        &self,
    ) -> tokio::task::JoinHandle<Result<(), callwarden::daemon::DaemonError>> {
        tokio::spawn(callwarden::daemon::serve(
            Arc::clone(&self.config),
            self.store.clone(),
            Clock::system(),
            self.shutdown.clone(),
        ))
    }

    /// Starts `examples/baseline_poller` against this rig's database and tap.
    fn start_baseline(&self, rate: u32) -> anyhow::Result<std::process::Child> {
        let bin = sibling_binary("baseline_poller")?;
        Command::new(&bin)
            .arg("--database")
            .arg(&self.db)
            .arg("--endpoint")
            .arg(self.tap.url())
            .arg("--rate")
            .arg(rate.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))
    }

    /// An application's own connection to the rig's database, as durable
    /// as the daemon's (`synchronous=FULL`), with SQLite's busy handler and
    /// a 5 s busy timeout, as an app would open it.
    pub(crate) async fn app_connection(&self) -> anyhow::Result<sqlx::SqlitePool> {
        use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteSynchronous};
        Ok(SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&self.db)
                    .busy_timeout(std::time::Duration::from_secs(5))
                    .synchronous(SqliteSynchronous::Full),
            )
            .await?)
    }

    /// Stops the rig when no daemon ran on it.
    pub(crate) async fn stop_store(self) {
        self.shutdown.cancel();
        self.store.close().await;
    }

    pub(crate) async fn stop(
        self,
        daemon: tokio::task::JoinHandle<Result<(), callwarden::daemon::DaemonError>>,
    ) -> anyhow::Result<()> {
        self.shutdown.cancel();
        daemon.await??;
        self.store.close().await;
        Ok(())
    }
}

/// SIGTERM, then wait for the baseline to exit (killed after 10 s).
pub(crate) async fn stop_baseline(mut child: std::process::Child) -> anyhow::Result<()> {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let started = StdInstant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            child.kill()?;
            child.wait()?;
            bail!("the baseline did not exit within 10 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the tap has seen a request for every room in `rooms`, and the
/// clock has passed `not_before`.
pub(crate) async fn wait_seen(
    tap: &Tap,
    rooms: &[&String],
    not_before: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = StdInstant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let seen: std::collections::HashSet<String> = tap.seen().into_iter().map(|s| s.room).collect();
        let missing = rooms.iter().filter(|r| !seen.contains(r.as_str())).count();
        if missing == 0 && Clock::system().now() >= not_before {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("{missing} of {} rooms still not called after {timeout:?}", rooms.len());
        }
    }
}

/// A binary built next to this one (`target/release/examples/`), or, for the
/// daemon, one directory up.
pub(crate) fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench binary has no directory")?;
    let bin = dir.join(name);
    if !bin.exists() {
        bail!(
            "{} not found; build it with cargo build --release --example {name} (bench/report.sh does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// How late each room's first call reached the tap (µs after its deadline),
/// for the rooms in `deadline_of_room` that were called.
pub(crate) fn tap_lateness(tap: &Tap, deadline_of_room: &HashMap<String, Instant>) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for s in tap.seen() {
        if let Some(deadline) = deadline_of_room.get(&s.room) {
            out.entry(s.room).or_insert_with(|| crate::figures::micros_after(s.at, *deadline));
        }
    }
    out
}

/// The first answer recorded for each session (enforced, already_ended, retry
/// or failed), keyed by session id.
pub(crate) async fn first_answers(
    store: &Store,
) -> anyhow::Result<HashMap<String, callwarden::domain::audit::AuditRecord>> {
    first_answers_since(store, None).await
}

/// [`first_answers`] among the audit rows written from `since` on (a
/// database with a large history need not be read whole).
pub(crate) async fn first_answers_since(
    store: &Store,
    since: Option<Instant>,
) -> anyhow::Result<HashMap<String, callwarden::domain::audit::AuditRecord>> {
    let rows = store
        .audit(&AuditFilter {
            events: vec!["enforced".into(), "already_ended".into(), "retry".into(), "failed".into()],
            since,
            ..AuditFilter::default()
        })
        .await?;
    let mut first = HashMap::new();
    for row in rows {
        if let Some(id) = row.session_id.clone() {
            first.entry(id).or_insert(row);
        }
    }
    Ok(first)
}
