//! The harness: the real `callwarden` binary as child processes (a sandbox and
//! a daemon), a config file and a database in a tempdir per test, and helpers
//! that read outcomes from the SQLite file and the sandbox's control API.
//!
//! Child processes are killed when their guard drops. Their logs (stderr) are
//! captured, and echoed only when `TEST_LOG` is set.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant as StdInstant};

use callwarden::sandbox::{
    Fault, RequestRecord, SANDBOX_ACS_ACCESS_KEY, SANDBOX_SDK_APP_ID, SANDBOX_SECRET_ID, SANDBOX_SECRET_KEY,
    Stats,
};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

pub const BIN: &str = env!("CARGO_BIN_EXE_callwarden");

/// Session states after which nothing more happens.
pub const FINAL_STATES: [&str; 4] = ["enforced", "already_ended", "failed", "cancelled"];
/// Audit events that settle an enforcement.
pub const FINAL_EVENTS: [&str; 3] = ["enforced", "already_ended", "failed"];

/// Generous bounds for "eventually": they only matter when something is broken.
pub const SHORT: Duration = Duration::from_secs(20);
pub const LONG: Duration = Duration::from_secs(60);

fn show_logs() -> bool {
    std::env::var_os("TEST_LOG").is_some()
}

// ---- waiting -----------------------------------------------------------------

/// Polls `probe` until it yields a value; panics after `timeout`, naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = StdInstant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it is true; panics after `timeout`, naming `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await;
}

/// Sleeps until the wall clock reads `at_ms` (for "nothing happened before X").
pub async fn wait_for_wall_clock(at_ms: i64) {
    let remaining = at_ms - now_ms();
    if remaining > 0 {
        tokio::time::sleep(Duration::from_millis(remaining as u64 + 1)).await;
    }
    assert!(now_ms() >= at_ms);
}

// ---- time ----------------------------------------------------------------------

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Milliseconds since the epoch of a time column (`YYYY-MM-DDTHH:MM:SS.sssZ`).
pub fn ms_of(text: &str) -> i64 {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

/// The canonical text form the database uses.
pub fn text_of(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().expect("a valid time").to_rfc3339_opts(SecondsFormat::Millis, true)
}

// ---- child processes -------------------------------------------------------------

/// A child process killed (SIGKILL) and reaped on drop, with its stderr captured.
struct ChildGuard {
    child: Child,
    logs: Arc<Mutex<String>>,
}

impl ChildGuard {
    fn spawn<S: AsRef<OsStr>>(label: &str, args: &[S], stdout: Stdio) -> ChildGuard {
        let mut child = callwarden_command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} ({label}): {e}"));
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sink, prefix) = (Arc::clone(&logs), format!("[{label} {}]", child.id()));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if show_logs() {
                    eprintln!("{prefix} {line}");
                }
                let mut logs = sink.lock().unwrap_or_else(|e| e.into_inner());
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        ChildGuard { child, logs }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The binary with a clean environment: no inherited config path or sandbox
/// credentials, info logs without colours.
fn callwarden_command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("CALLWARDEN_CONFIG")
        .env_remove("CALLWARDEN_SANDBOX_SECRET_ID")
        .env_remove("CALLWARDEN_SANDBOX_SECRET_KEY")
        .env_remove("CALLWARDEN_SANDBOX_ACS_ACCESS_KEY")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

/// What a finished CLI command left behind.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with the whole output unless the command exited 0.
    pub fn expect_ok(self, what: &str) -> CliOutput {
        assert!(self.ok(), "{what} failed: {self:#?}");
        self
    }
}

/// Runs `callwarden --config CONFIG ARGS...` to completion.
pub async fn run_cli<S: AsRef<OsStr>>(config: &Path, args: &[S]) -> CliOutput {
    let mut cmd = tokio::process::Command::from(callwarden_command());
    cmd.arg("--config").arg(config).args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(LONG, cmd.output())
        .await
        .expect("the command finished in time")
        .expect("the command starts");
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---- the sandbox ---------------------------------------------------------------

/// `callwarden sandbox` on a free loopback port.
pub struct Sandbox {
    /// Held so the sandbox lives as long as the test.
    _process: ChildGuard,
    pub url: String,
    http: reqwest::Client,
}

impl Sandbox {
    pub fn start() -> Sandbox {
        let mut process =
            ChildGuard::spawn("sandbox", &["sandbox", "--listen", "127.0.0.1:0"], Stdio::piped());
        let stdout = process.child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            let _ = reader.read_to_end(&mut Vec::new());
        });
        let first = rx.recv_timeout(SHORT).unwrap_or_default();
        let url = first
            .trim()
            .strip_prefix("sandbox listening on ")
            .unwrap_or_else(|| panic!("unexpected first sandbox line {first:?}; logs:\n{}", process.logs()))
            .to_string();
        Sandbox { _process: process, url, http: reqwest::Client::new() }
    }

    pub async fn stats(&self) -> Stats {
        self.get("/_sandbox/stats").await
    }

    /// Every request the sandbox answered, in arrival order.
    pub async fn requests(&self) -> Vec<RequestRecord> {
        self.get("/_sandbox/requests").await
    }

    /// Requests to one of the TRTC actions (leaves out clock probes).
    pub async fn api_requests(&self) -> Vec<RequestRecord> {
        let mut requests = self.requests().await;
        requests.retain(|r| callwarden::providers::trtc::ACTIONS.contains(&r.action.as_str()));
        requests
    }

    /// Requests whose parameters named `room` (numeric or string).
    pub async fn requests_for(&self, room: &str) -> Vec<RequestRecord> {
        let mut requests = self.api_requests().await;
        requests.retain(|r| r.room.as_deref() == Some(room));
        requests
    }

    pub async fn inject(&self, fault: Fault) {
        let response =
            self.http.post(format!("{}/_sandbox/faults", self.url)).json(&fault).send().await.unwrap();
        assert!(response.status().is_success(), "fault {fault:?} refused: {}", response.status());
    }

    /// Ends a room as if everyone left: `json!(1234)` or `json!("abc")`.
    pub async fn end_room(&self, room: serde_json::Value) {
        let response = self
            .http
            .post(format!("{}/_sandbox/rooms/dismiss", self.url))
            .json(&serde_json::json!({ "room": room }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "room {room} not dismissed: {}", response.status());
    }

    /// Requests to one of the ACS actions (`RemoveParticipant`, `TerminateCall`).
    pub async fn acs_requests(&self) -> Vec<RequestRecord> {
        let mut requests = self.requests().await;
        requests.retain(|r| callwarden::providers::acs::ACTIONS.contains(&r.action.as_str()));
        requests
    }

    /// ACS requests for one call connection, in arrival order.
    pub async fn acs_requests_for(&self, call: &str) -> Vec<RequestRecord> {
        let mut requests = self.acs_requests().await;
        requests.retain(|r| r.room.as_deref() == Some(call));
        requests
    }

    /// Ends an ACS call as if everyone hung up.
    pub async fn end_call(&self, call: &str) {
        let response = self
            .http
            .post(format!("{}/_sandbox/rooms/dismiss", self.url))
            .json(&serde_json::json!({ "call": call }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "call {call} not ended: {}", response.status());
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
    }

    /// Relates the sandbox's `at_ms` (since its start) to the wall clock, with
    /// an unsigned request whose wall time the test brackets.
    pub async fn clock(&self) -> SandboxClock {
        let mut best: Option<(i64, SandboxClock)> = None;
        for _ in 0..3 {
            let before = now_ms();
            let _ = self.http.post(format!("{}/", self.url)).body("{}").send().await.unwrap();
            let after = now_ms();
            let probe = self
                .requests()
                .await
                .into_iter()
                .rev()
                .find(|r| r.action == "?")
                .expect("the probe is logged");
            // The probe was recorded at a wall time in [before, after], when the
            // sandbox's elapsed time was in [at_ms, at_ms + 1).
            let clock = SandboxClock { start_at_most: after - probe.at_ms as i64 };
            if best.as_ref().is_none_or(|(spread, _)| after - before < *spread) {
                best = Some((after - before, clock));
            }
        }
        best.expect("three probes").1
    }
}

/// The latest wall time the sandbox can have started at.
#[derive(Debug, Clone, Copy)]
pub struct SandboxClock {
    start_at_most: i64,
}

impl SandboxClock {
    /// The latest wall time (ms) at which the sandbox can have logged `r`:
    /// if this is before a deadline, the request certainly arrived early.
    pub fn latest_wall_ms(&self, r: &RequestRecord) -> i64 {
        self.start_at_most + r.at_ms as i64 + 1
    }
}

// ---- the daemon --------------------------------------------------------------------

/// `callwarden --config PATH run`.
pub struct Daemon {
    process: ChildGuard,
}

impl Daemon {
    /// Starts the daemon and waits until it says it is running.
    pub async fn start(config: &Path) -> Daemon {
        let args = [OsStr::new("--config"), config.as_os_str(), OsStr::new("run")];
        let mut process = ChildGuard::spawn("daemon", &args, Stdio::null());
        let start = StdInstant::now();
        while !process.logs().contains("callwarden running") {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("the daemon exited at start ({status}); logs:\n{}", process.logs());
            }
            assert!(start.elapsed() < SHORT, "the daemon did not start; logs:\n{}", process.logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Daemon { process }
    }

    /// Asks the daemon to stop, as systemd would.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.process.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Asks the daemon to reload its configuration, as `systemctl reload` would.
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.process.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -HUP failed");
    }

    /// Kills the daemon without warning (SIGKILL), as a crash or OOM would.
    pub fn crash(&mut self) {
        self.process.child.kill().expect("SIGKILL is delivered");
        self.process.child.wait().expect("the daemon is reaped");
    }

    /// Waits for the daemon to exit on its own; panics after `timeout`.
    pub async fn exit_status(&mut self, timeout: Duration) -> ExitStatus {
        let start = StdInstant::now();
        loop {
            if let Some(status) = self.process.child.try_wait().expect("waitpid works") {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "the daemon still runs {timeout:?} after being told to stop; logs:\n{}",
                self.process.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

// ---- configuration ---------------------------------------------------------------

/// The configuration every test starts from; `secret_key` is what the daemon
/// signs with.
pub fn config_text(database: &Path, endpoint: &str, secret_key: &str) -> String {
    format!(
        "\
database: {database}
providers:
  trtc:
    kind: tencent-trtc
    sdk_app_id: {SANDBOX_SDK_APP_ID}
    region: ap-guangzhou
    secret_id: {SANDBOX_SECRET_ID}
    secret_key: {secret_key}
    endpoint: {endpoint}
    max_requests_per_second: 19
    retry: {{ max_attempts: 4, initial_backoff: 100ms, max_backoff: 1s }}
policies:
  consultation:
    provider: trtc
    max_duration: 30m
    action: dismiss_room
  paid-chat:
    provider: trtc
    max_duration: 20m
    action: remove_user
",
        database = database.display()
    )
}

/// [`config_text`]'s TRTC provider and policies, plus an ACS provider named
/// `acs` that signs with `access_key` (base64), and two ACS policies:
/// `acs-consultation` (terminate_call) and `acs-paid-chat` (remove_participant).
pub fn acs_config_text(database: &Path, endpoint: &str, access_key: &str) -> String {
    format!(
        "\
database: {database}
providers:
  trtc:
    kind: tencent-trtc
    sdk_app_id: {SANDBOX_SDK_APP_ID}
    region: ap-guangzhou
    secret_id: {SANDBOX_SECRET_ID}
    secret_key: {SANDBOX_SECRET_KEY}
    endpoint: {endpoint}
    max_requests_per_second: 19
    retry: {{ max_attempts: 4, initial_backoff: 100ms, max_backoff: 1s }}
  acs:
    kind: azure-acs
    endpoint: {endpoint}
    access_key: \"{access_key}\"
    api_version: 2024-09-15
    max_requests_per_second: 19
    retry: {{ max_attempts: 5, initial_backoff: 100ms, max_backoff: 1s }}
policies:
  consultation:
    provider: trtc
    max_duration: 30m
    action: dismiss_room
  paid-chat:
    provider: trtc
    max_duration: 20m
    action: remove_user
  acs-consultation:
    provider: acs
    max_duration: 30m
    action: terminate_call
  acs-paid-chat:
    provider: acs
    max_duration: 20m
    action: remove_participant
",
        database = database.display()
    )
}

// ---- database rows ------------------------------------------------------------------

/// A `sessions` row, every column a test may look at.
#[derive(Debug, Clone, sqlx::FromRow)]
#[allow(dead_code)]
pub struct SessionRow {
    pub id: String,
    pub policy: String,
    pub provider: Option<String>,
    pub room_id: String,
    pub room_kind: String,
    pub user_id: Option<String>,
    pub started_at: String,
    pub deadline: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub extended_ms: i64,
    pub detail: Option<String>,
}

impl SessionRow {
    pub fn deadline_ms(&self) -> i64 {
        ms_of(self.deadline.as_deref().unwrap_or_else(|| panic!("session {} has no deadline", self.id)))
    }
}

/// An `audit_log` row.
#[derive(Debug, Clone, sqlx::FromRow)]
#[allow(dead_code)]
pub struct AuditRow {
    pub id: i64,
    pub at: String,
    pub session_id: Option<String>,
    pub event: String,
    pub provider: Option<String>,
    pub action: Option<String>,
    pub attempt: Option<i64>,
    pub outcome: Option<String>,
    pub http_status: Option<i64>,
    pub provider_request_id: Option<String>,
    pub error_code: Option<String>,
    pub detail: Option<String>,
    pub latency_ms: Option<i64>,
    pub lateness_ms: Option<i64>,
}

/// A row to insert with plain SQL, as another program would.
#[derive(Debug, Clone, Default)]
pub struct SqlSession {
    pub policy: String,
    pub room_id: String,
    pub room_kind: String,
    pub user_id: Option<String>,
    /// Left to the column default when `None`.
    pub started_at: Option<String>,
    pub deadline: Option<String>,
}

impl SqlSession {
    pub fn dismiss(room: u32, deadline_ms: i64) -> SqlSession {
        SqlSession {
            policy: "consultation".into(),
            room_id: room.to_string(),
            room_kind: "numeric".into(),
            deadline: Some(text_of(deadline_ms)),
            ..SqlSession::default()
        }
    }
}

/// Where a `session start` aims.
#[derive(Debug, Clone, Copy)]
pub enum RoomArg<'a> {
    Num(u32),
    Str(&'a str),
}

// ---- the harness ----------------------------------------------------------------------

/// One test's world: tempdir, config, database, sandbox.
pub struct Harness {
    /// Held so the files live as long as the test.
    _dir: tempfile::TempDir,
    pub config: PathBuf,
    pub db_path: PathBuf,
    pub sandbox: Sandbox,
    pool: tokio::sync::OnceCell<SqlitePool>,
}

impl Harness {
    /// A sandbox and a config whose credentials it accepts.
    pub async fn new() -> Harness {
        Harness::signing_with(SANDBOX_SECRET_KEY).await
    }

    /// A sandbox and a config that signs with `secret_key`.
    pub async fn signing_with(secret_key: &str) -> Harness {
        Harness::with_config(|db, url| config_text(db, url, secret_key)).await
    }

    /// A sandbox and a config with an ACS provider whose key it accepts
    /// ([`acs_config_text`]).
    pub async fn acs() -> Harness {
        Harness::acs_signing_with(SANDBOX_ACS_ACCESS_KEY).await
    }

    /// A sandbox and a config whose ACS provider signs with `access_key`.
    pub async fn acs_signing_with(access_key: &str) -> Harness {
        Harness::with_config(|db, url| acs_config_text(db, url, access_key)).await
    }

    pub async fn start_daemon(&self) -> Daemon {
        Daemon::start(&self.config).await
    }

    pub async fn cli<S: AsRef<OsStr>>(&self, args: &[S]) -> CliOutput {
        run_cli(&self.config, args).await
    }

    /// `session start`; returns the new ids (one per user).
    pub async fn start_session(
        &self,
        policy: &str,
        room: RoomArg<'_>,
        users: &[&str],
        limit: Option<&str>,
    ) -> Vec<String> {
        let mut args: Vec<String> = vec!["session".into(), "start".into(), "--policy".into(), policy.into()];
        match room {
            RoomArg::Num(n) => args.extend(["--room".into(), n.to_string()]),
            RoomArg::Str(s) => args.extend(["--str-room".into(), s.to_string()]),
        }
        for u in users {
            args.extend(["--user".into(), u.to_string()]);
        }
        if let Some(limit) = limit {
            args.extend(["--limit".into(), limit.into()]);
        }
        let out = self.cli(&args).await.expect_ok("session start");
        let ids: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        assert_eq!(ids.len(), users.len().max(1), "one id per user: {out:?}");
        ids
    }

    /// `session start --call CALL [--participant RAW_ID]...`; returns the new
    /// ids (one per participant).
    pub async fn start_acs_session(
        &self,
        policy: &str,
        call: &str,
        participants: &[&str],
        limit: Option<&str>,
    ) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "session".into(),
            "start".into(),
            "--policy".into(),
            policy.into(),
            "--call".into(),
            call.into(),
        ];
        for p in participants {
            args.extend(["--participant".into(), p.to_string()]);
        }
        if let Some(limit) = limit {
            args.extend(["--limit".into(), limit.into()]);
        }
        let out = self.cli(&args).await.expect_ok("session start --call");
        let ids: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        assert_eq!(ids.len(), participants.len().max(1), "one id per participant: {out:?}");
        ids
    }

    /// The database, created and migrated by the CLI if nothing opened it yet.
    pub async fn db(&self) -> &SqlitePool {
        self.pool
            .get_or_init(|| async {
                if !self.db_path.exists() {
                    self.cli(&["session", "list"]).await.expect_ok("session list (creates the database)");
                }
                let options = SqliteConnectOptions::new()
                    .filename(&self.db_path)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true);
                SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await
                    .expect("the database opens")
            })
            .await
    }

    pub async fn session(&self, id: &str) -> SessionRow {
        sqlx::query_as("SELECT * FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(self.db().await)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no session {id}"))
    }

    pub async fn sessions(&self) -> Vec<SessionRow> {
        sqlx::query_as("SELECT * FROM sessions ORDER BY deadline, id")
            .fetch_all(self.db().await)
            .await
            .unwrap()
    }

    pub async fn audit(&self) -> Vec<AuditRow> {
        sqlx::query_as("SELECT * FROM audit_log ORDER BY id").fetch_all(self.db().await).await.unwrap()
    }

    pub async fn audit_of(&self, id: &str) -> Vec<AuditRow> {
        sqlx::query_as("SELECT * FROM audit_log WHERE session_id = ? ORDER BY id")
            .bind(id)
            .fetch_all(self.db().await)
            .await
            .unwrap()
    }

    /// A session's stored ACS repeatability pair: `(repeatability_id, first_sent_at)`.
    pub async fn repeatability_of(&self, id: &str) -> (Option<String>, Option<String>) {
        sqlx::query_as("SELECT repeatability_id, first_sent_at FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(self.db().await)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no session {id}"))
    }

    /// Session count per state.
    pub async fn state_counts(&self) -> BTreeMap<String, i64> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT state, COUNT(*) FROM sessions GROUP BY state")
            .fetch_all(self.db().await)
            .await
            .unwrap();
        rows.into_iter().collect()
    }

    /// Waits until every one of `ids` is in a final state; returns their rows.
    pub async fn wait_until_settled(&self, ids: &[String], timeout: Duration) -> Vec<SessionRow> {
        let what = format!("{} sessions to settle", ids.len());
        wait_for(&what, timeout, || async {
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                let row = self.session(id).await;
                if !FINAL_STATES.contains(&row.state.as_str()) {
                    return None;
                }
                rows.push(row);
            }
            Some(rows)
        })
        .await
    }

    /// Waits until `id` is in `state`; panics if it settles in another state.
    pub async fn wait_for_state(&self, id: &str, state: &str, timeout: Duration) -> SessionRow {
        let row = wait_for(&format!("session {id} to become {state}"), timeout, || async {
            let row = self.session(id).await;
            (row.state == state || FINAL_STATES.contains(&row.state.as_str())).then_some(row)
        })
        .await;
        assert_eq!(row.state, state, "session {id} settled otherwise: {row:#?}");
        row
    }

    /// Inserts rows with plain SQL in one transaction; returns their ids.
    pub async fn insert_sql(&self, rows: &[SqlSession]) -> Result<Vec<String>, sqlx::Error> {
        let mut tx = self.db().await.begin().await?;
        let mut ids = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = sqlx::query_scalar(
                "INSERT INTO sessions (policy, room_id, room_kind, user_id, started_at, deadline) \
                 VALUES (?, ?, ?, ?, COALESCE(?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), ?) RETURNING id",
            )
            .bind(&r.policy)
            .bind(&r.room_id)
            .bind(&r.room_kind)
            .bind(&r.user_id)
            .bind(&r.started_at)
            .bind(&r.deadline)
            .fetch_one(&mut *tx)
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Registers one dismiss_room session per room, all due at `deadline_ms`.
    pub async fn insert_burst(&self, rooms: std::ops::Range<u32>, deadline_ms: i64) -> Vec<String> {
        let rows: Vec<_> = rooms.map(|room| SqlSession::dismiss(room, deadline_ms)).collect();
        self.insert_sql(&rows).await.expect("the burst is inserted")
    }

    /// Never early: every provider answer recorded in the audit log says the
    /// call left at or after its session's deadline, and (when a sandbox clock
    /// is given) the sandbox saw no request for a room before the deadline of
    /// the sessions enforced in it.
    pub async fn assert_never_early(&self, clock: Option<SandboxClock>) {
        let audit = self.audit().await;
        let early: Vec<_> = audit.iter().filter(|a| a.lateness_ms.is_some_and(|l| l < 0)).collect();
        assert!(early.is_empty(), "calls recorded as early: {early:#?}");
        let Some(clock) = clock else { return };
        let requests = self.sandbox.api_requests().await;
        let mut deadlines: HashMap<(String, bool), i64> = HashMap::new();
        for s in self.sessions().await {
            let Some(deadline) = s.deadline.as_deref().map(ms_of) else { continue };
            let key = (s.room_id.clone(), s.room_kind == "string");
            let earliest = deadlines.entry(key).or_insert(deadline);
            *earliest = (*earliest).min(deadline);
        }
        for r in &requests {
            let Some(room) = &r.room else { continue };
            let key = (room.clone(), r.action.ends_with("ByStrRoomId"));
            let Some(deadline) = deadlines.get(&key) else { continue };
            let latest = clock.latest_wall_ms(r);
            assert!(
                latest >= *deadline,
                "the sandbox saw {} for room {room} at the latest {} but its deadline is {}",
                r.action,
                text_of(latest),
                text_of(*deadline)
            );
        }
    }

    /// [`Harness::assert_never_early`] for ACS: no audit row recorded an early
    /// call, and the sandbox saw no ACS request for a call before the
    /// earliest deadline of the sessions in it.
    pub async fn assert_acs_never_early(&self, clock: SandboxClock) {
        self.assert_never_early(None).await;
        let mut deadlines: HashMap<String, i64> = HashMap::new();
        for s in self.sessions().await {
            let Some(deadline) = s.deadline.as_deref().map(ms_of) else { continue };
            if s.room_kind == "call" {
                let earliest = deadlines.entry(s.room_id.clone()).or_insert(deadline);
                *earliest = (*earliest).min(deadline);
            }
        }
        for r in self.sandbox.acs_requests().await {
            let Some(call) = &r.room else { continue };
            let Some(deadline) = deadlines.get(call) else { continue };
            let latest = clock.latest_wall_ms(&r);
            assert!(
                latest >= *deadline,
                "the sandbox saw {} for call {call} at the latest {} but its deadline is {}",
                r.action,
                text_of(latest),
                text_of(*deadline)
            );
        }
    }
}

// ---- the HTTP listener: config, client, schema, metrics -------------------------------

/// The session API's bearer token in [`http_config_text`] configs.
pub const API_TOKEN: &str = "test-api-token-0123456789abcdef";
/// The TRTC callback key in [`http_config_text`] configs.
pub const TRTC_CALLBACK_KEY: &str = "TestCallbackKey0123";
/// The ACS callback secret (`?token=`) in [`http_config_text`] configs.
pub const ACS_WEBHOOK_SECRET: &str = "acs-webhook-secret-0123";

/// What the HTTP listener of a test daemon serves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Listener {
    /// Serve the session API (`api_token`).
    pub api: bool,
    /// Take TRTC callbacks (`webhooks.trtc.callback_key`).
    pub trtc: bool,
    /// Take ACS callbacks (`webhooks.acs.secret`).
    pub acs: bool,
}

impl Listener {
    pub const ALL: Listener = Listener { api: true, trtc: true, acs: true };
}

/// [`acs_config_text`] (TRTC and ACS providers on the sandbox, the four
/// policies without `match`) plus `listen` on a port the system picks
/// (read it with [`Daemon::http_url`]), the keys `listener` asks for, and
/// `extra_policies` (YAML lines indented as entries under `policies:`),
/// which come after the four in file order.
pub fn http_config_text(database: &Path, endpoint: &str, listener: Listener, extra_policies: &str) -> String {
    let mut text = acs_config_text(database, endpoint, SANDBOX_ACS_ACCESS_KEY);
    text.push_str(extra_policies);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("listen: 127.0.0.1:0\n");
    if listener.api {
        text.push_str(&format!("api_token: {API_TOKEN}\n"));
    }
    if listener.trtc || listener.acs {
        text.push_str("webhooks:\n");
    }
    if listener.trtc {
        text.push_str(&format!("  trtc:\n    callback_key: {TRTC_CALLBACK_KEY}\n"));
    }
    if listener.acs {
        text.push_str(&format!("  acs:\n    secret: {ACS_WEBHOOK_SECRET}\n"));
    }
    text
}

impl Harness {
    /// A sandbox and the config `make(database, sandbox_url)` writes.
    pub async fn with_config(make: impl FnOnce(&Path, &str) -> String) -> Harness {
        let dir = tempfile::tempdir().expect("a tempdir");
        let sandbox = Sandbox::start();
        let db_path = dir.path().join("cw.db");
        let config = dir.path().join("callwarden.yaml");
        std::fs::write(&config, make(&db_path, &sandbox.url)).unwrap();
        Harness { _dir: dir, config, db_path, sandbox, pool: tokio::sync::OnceCell::new() }
    }

    /// A sandbox and an [`http_config_text`] config.
    pub async fn http(listener: Listener, extra_policies: &str) -> Harness {
        Harness::with_config(|db, url| http_config_text(db, url, listener, extra_policies)).await
    }

    /// Row counts of `sessions` and `audit_log`.
    pub async fn row_counts(&self) -> (i64, i64) {
        let db = self.db().await;
        let sessions = sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(db).await.unwrap();
        let audit = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log").fetch_one(db).await.unwrap();
        (sessions, audit)
    }
}

impl Daemon {
    /// `http://ADDR` of the daemon's listener, from its `http listening` log line.
    pub async fn http_url(&self) -> String {
        wait_for("the daemon's `http listening` log line", SHORT, || async {
            let logs = self.logs();
            let line = logs.lines().find(|l| l.contains("http listening"))?;
            let addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr="))?;
            Some(format!("http://{}", addr.trim_matches('"')))
        })
        .await
    }
}

/// An HTTP answer: status, headers, body text, and the body as JSON
/// (`Null` when it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: serde_json::Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Panics with the whole answer unless the status is `status`.
    #[track_caller]
    pub fn expect(&self, status: u16, what: &str) -> &Reply {
        assert_eq!(self.status, status, "{what}: {self:#?}");
        self
    }
}

/// A small client for the daemon's listener.
#[derive(Debug, Clone)]
pub struct Client {
    pub base: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client that sends [`API_TOKEN`].
    pub fn new(base: &str) -> Client {
        Client { base: base.to_string(), token: Some(API_TOKEN.to_string()), http: reqwest::Client::new() }
    }

    /// The same listener, another (or no) bearer token.
    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client { token: token.map(str::to_string), ..self.clone() }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).timeout(Duration::from_secs(15));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    pub async fn send(request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("the daemon answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Reply { status, headers, text, json }
    }

    pub async fn get(&self, path: &str) -> Reply {
        Client::send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        Client::send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    /// POSTs `body` as it is, labelled JSON.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let request = self
            .request(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        Client::send(request).await
    }
}

/// docs/openapi.json, as served and as documented.
pub fn openapi_document() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Validates JSON values against a schema in docs/openapi.json.
pub struct SchemaCheck {
    validator: jsonschema::Validator,
    name: String,
}

impl SchemaCheck {
    /// `pointer` is a JSON pointer into the OpenAPI document, like
    /// `/components/schemas/Session`. The validator's root is the whole
    /// document with a `$ref` to it, so the schema's own refs resolve.
    pub fn new(pointer: &str) -> SchemaCheck {
        let mut root = openapi_document();
        assert!(root.pointer(pointer).is_some(), "docs/openapi.json has nothing at {pointer}");
        root.as_object_mut().unwrap().insert("$ref".into(), serde_json::Value::String(format!("#{pointer}")));
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the schema at {pointer} does not build: {e}"));
        SchemaCheck { validator, name: pointer.to_string() }
    }

    pub fn session() -> SchemaCheck {
        SchemaCheck::new("/components/schemas/Session")
    }

    pub fn error() -> SchemaCheck {
        SchemaCheck::new("/components/schemas/Error")
    }

    /// The 200 answer of `GET /v1/sessions`.
    pub fn session_list() -> SchemaCheck {
        SchemaCheck::new("/paths/~1v1~1sessions/get/responses/200/content/application~1json/schema")
    }

    /// Panics, listing every violation, unless `value` fits.
    #[track_caller]
    pub fn check(&self, value: &serde_json::Value, what: &str) {
        let errors: Vec<String> =
            self.validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{what} does not fit {}: {errors:#?}\n{value:#}", self.name);
    }

    /// True when `value` fits (for checks that must be able to fail).
    pub fn fits(&self, value: &serde_json::Value) -> bool {
        self.validator.is_valid(value)
    }
}

/// One sample of a Prometheus text exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (comments skipped; label values
/// without escaped quotes, which is all the daemon writes).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad metrics value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) =
                            pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (k.trim().to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        samples.push(Sample { name, labels, value });
    }
    samples
}

/// The sum of the samples named `name` whose labels include `labels`.
pub fn metric_sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

// ---- reliability: faults, kills and the invariants they must keep -------------------
// (used by kill_loop.rs, provider_faults.rs and db_faults.rs)

/// A provider's `retry:` and `request_timeout:` in a fault test's config.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub initial_ms: u64,
    pub max_ms: u64,
    pub timeout_ms: u64,
}

impl Retry {
    /// The shortest time a session can spend in backoff before its last
    /// attempt: each wait is jittered down to half its ceiling at worst. A
    /// fault that lasts longer than this can exhaust the attempts.
    pub fn min_retry_span_ms(&self) -> u64 {
        (1..self.max_attempts)
            .map(|n| (self.initial_ms.saturating_mul(1 << (n - 1).min(20))).min(self.max_ms) / 2)
            .sum()
    }
}

/// [`http_config_text`]'s providers and policies (listener on, no API or
/// webhooks), with both providers' retry policy and request timeout
/// replaced by `retry`.
pub fn fault_config_text(database: &Path, endpoint: &str, retry: Retry) -> String {
    let text = http_config_text(database, endpoint, Listener::default(), "");
    let Retry { max_attempts, initial_ms, max_ms, timeout_ms } = retry;
    let replacement = format!(
        "retry: {{ max_attempts: {max_attempts}, initial_backoff: {initial_ms}ms, max_backoff: {max_ms}ms }}\n    \
         request_timeout: {timeout_ms}ms"
    );
    let mut out = String::new();
    for line in text.lines() {
        match line.trim_start().strip_prefix("retry: ") {
            Some(_) => out.push_str(&format!("    {replacement}\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert_eq!(out.matches("request_timeout").count(), 2, "both providers got the retry policy:\n{out}");
    out
}

/// Answers per target (room or call, plus the participant for a removal),
/// in arrival order.
pub fn answers_by_target(requests: &[RequestRecord]) -> HashMap<String, Vec<String>> {
    let mut by_target: HashMap<String, Vec<String>> = HashMap::new();
    for r in requests {
        let Some(room) = &r.room else { continue };
        let key = if r.users.is_empty() { room.clone() } else { format!("{room}/{}", r.users.join(",")) };
        by_target.entry(key).or_default().push(r.answer.clone());
    }
    by_target
}

/// Requests that named a room, sorted by when the sandbox saw them.
pub fn by_arrival(mut requests: Vec<RequestRecord>) -> Vec<RequestRecord> {
    requests.retain(|r| r.room.is_some());
    requests.sort_by_key(|r| r.at_ms);
    requests
}

impl Harness {
    /// Every one of `ids` settled `enforced` or `already_ended`, with exactly
    /// one settling audit event; `already_ended` only where a crash left an
    /// earlier call unrecorded (a `recovered` event) or `allow_already_ended`.
    pub async fn assert_settled_once(&self, ids: &[String], allow_already_ended: bool) {
        let audit = self.audit().await;
        let mut by_session: HashMap<&str, Vec<&AuditRow>> = HashMap::new();
        for a in &audit {
            if let Some(id) = &a.session_id {
                by_session.entry(id.as_str()).or_default().push(a);
            }
        }
        for row in self.sessions().await.iter().filter(|s| ids.contains(&s.id)) {
            let events = by_session.get(row.id.as_str()).cloned().unwrap_or_default();
            let finals: Vec<&str> =
                events.iter().map(|a| a.event.as_str()).filter(|e| FINAL_EVENTS.contains(e)).collect();
            assert_eq!(finals.len(), 1, "session {} settled {finals:?}: {row:#?}", row.id);
            assert_eq!(finals[0], row.state, "{row:#?}");
            match row.state.as_str() {
                "enforced" => {}
                "already_ended" => assert!(
                    allow_already_ended || events.iter().any(|a| a.event == "recovered"),
                    "{} ended already without an interrupted earlier call: {:?}",
                    row.id,
                    events.iter().map(|a| &a.event).collect::<Vec<_>>()
                ),
                _ => panic!("session {} is {}: {row:#?}", row.id, row.state),
            }
            // Record, then call: every call (attempt) has its row.
            let attempt_rows = events.iter().filter(|a| a.event == "attempt").count() as i64;
            assert!(attempt_rows >= row.attempts, "{}: {attempt_rows} attempt rows, {row:#?}", row.id);
        }
    }

    /// `PRAGMA integrity_check` is `ok`, nothing is left `enforcing`, and
    /// `callwarden audit verify` accepts the hash chain.
    pub async fn assert_database_whole(&self) {
        let check: String =
            sqlx::query_scalar("PRAGMA integrity_check").fetch_one(self.db().await).await.unwrap();
        assert_eq!(check, "ok");
        let counts = self.state_counts().await;
        assert_eq!(counts.get("enforcing"), None, "{counts:?}");
        self.cli(&["audit", "verify"]).await.expect_ok("audit verify");
    }

    /// Per-session attempts never exceed `max_attempts`; returns the largest.
    pub async fn assert_attempts_at_most(&self, max_attempts: u32) -> i64 {
        let most = self.sessions().await.iter().map(|s| s.attempts).max().unwrap_or(0);
        for s in self.sessions().await {
            assert!(s.attempts <= i64::from(max_attempts), "{s:#?}");
        }
        most
    }

    /// The sandbox never saw more than `quota` calls of one action in a
    /// sliding second, and never had to refuse one for the quota. (The pacer
    /// spaces calls when they are sent; arrival jitter, such as a new
    /// connection while others hang, can put one more than the configured
    /// rate of 19 into a sliding second, which is why the rate stays below
    /// the provider's 20.)
    pub async fn assert_quota_kept(&self, quota: u32) {
        let stats = self.sandbox.stats().await;
        assert_eq!(stats.rate_limited, 0, "{stats:#?}");
        for (action, max) in &stats.max_per_second_by_action {
            assert!(*max <= quota, "{action}: {max} in one second: {stats:#?}");
        }
    }
}

/// A seed from `CALLWARDEN_TEST_SEED`, or a fresh one; printed either way
/// so a failing run can be repeated.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("CALLWARDEN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (repeat with CALLWARDEN_TEST_SEED={seed})");
    seed
}

impl Daemon {
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.child.try_wait(), Ok(None))
    }
}

impl Harness {
    /// A sandbox and the config `make(database, sandbox_url)` writes, with
    /// the database at `database` (a path outside the tempdir, such as a
    /// small filesystem mounted for a test).
    pub async fn with_database(database: &Path, make: impl FnOnce(&Path, &str) -> String) -> Harness {
        let dir = tempfile::tempdir().expect("a tempdir");
        let sandbox = Sandbox::start();
        let config = dir.path().join("callwarden.yaml");
        std::fs::write(&config, make(database, &sandbox.url)).unwrap();
        Harness {
            _dir: dir,
            config,
            db_path: database.to_path_buf(),
            sandbox,
            pool: tokio::sync::OnceCell::new(),
        }
    }
}
