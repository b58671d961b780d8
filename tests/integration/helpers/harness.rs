//! The harness: one test's world (tempdir, config, database, sandbox) and
//! what a test does with it: start the daemon, run the CLI, read and write
//! rows, wait for outcomes and check the invariants.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use callwarden::sandbox::{SANDBOX_ACS_ACCESS_KEY, SANDBOX_SECRET_KEY};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use super::configs::{Listener, acs_config_text, config_text, http_config_text};
use super::daemon::Daemon;
use super::invariants::{
    assert_each_settled_once, assert_no_early_acs_request, assert_no_early_audit_row,
    assert_no_early_trtc_request,
};
use super::process::{CliOutput, run_cli};
use super::rows::{self, AuditRow, FINAL_STATES, SessionRow, SqlSession};
use super::sandbox::{Sandbox, SandboxClock};
use super::wait::wait_for;

/// Where a `session start` aims.
#[derive(Debug, Clone, Copy)]
pub enum RoomArg<'a> {
    Num(u32),
    Str(&'a str),
}

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

    /// A sandbox and the config `make(database, sandbox_url)` writes.
    pub async fn with_config(make: impl FnOnce(&Path, &str) -> String) -> Harness {
        Harness::with_sandbox(Sandbox::start(), make).await
    }

    /// The config `make(database, sandbox_url)` writes, against `sandbox`.
    pub async fn with_sandbox(sandbox: Sandbox, make: impl FnOnce(&Path, &str) -> String) -> Harness {
        let dir = tempfile::tempdir().expect("a tempdir");
        let db_path = dir.path().join("cw.db");
        let config = dir.path().join("callwarden.yaml");
        std::fs::write(&config, make(&db_path, &sandbox.url)).unwrap();
        Harness { _dir: dir, config, db_path, sandbox, pool: tokio::sync::OnceCell::new() }
    }

    /// A sandbox and an [`http_config_text`] config.
    pub async fn http(listener: Listener, extra_policies: &str) -> Harness {
        Harness::with_config(|db, url| http_config_text(db, url, listener, extra_policies)).await
    }

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

    /// The database, created and migrated if nothing opened it yet.
    pub async fn db(&self) -> &SqlitePool {
        self.pool
            .get_or_init(|| async {
                if !self.db_path.exists() {
                    // Created and migrated as the daemon would (reading
                    // commands of the CLI never create or migrate it).
                    callwarden::store::Store::open(&self.db_path)
                        .await
                        .expect("the database is created")
                        .close()
                        .await;
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
        rows::session(self.db().await, id).await
    }

    pub async fn sessions(&self) -> Vec<SessionRow> {
        rows::sessions(self.db().await).await
    }

    pub async fn audit(&self) -> Vec<AuditRow> {
        rows::audit(self.db().await).await
    }

    pub async fn audit_of(&self, id: &str) -> Vec<AuditRow> {
        rows::audit_of(self.db().await, id).await
    }

    /// A session's stored ACS repeatability pair: `(repeatability_id, first_sent_at)`.
    pub async fn repeatability_of(&self, id: &str) -> (Option<String>, Option<String>) {
        rows::repeatability_of(self.db().await, id).await
    }

    /// Session count per state.
    pub async fn state_counts(&self) -> BTreeMap<String, i64> {
        rows::state_counts(self.db().await).await
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
    pub async fn insert_sql(&self, sessions: &[SqlSession]) -> Result<Vec<String>, sqlx::Error> {
        rows::insert(self.db().await, sessions).await
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
        assert_no_early_audit_row(&self.audit().await);
        let Some(clock) = clock else { return };
        let requests = self.sandbox.api_requests().await;
        assert_no_early_trtc_request(&self.sessions().await, &requests, clock);
    }

    /// [`Harness::assert_never_early`] for ACS: no audit row recorded an early
    /// call, and the sandbox saw no ACS request for a call before the
    /// earliest deadline of the sessions in it.
    pub async fn assert_acs_never_early(&self, clock: SandboxClock) {
        self.assert_never_early(None).await;
        let sessions = self.sessions().await;
        assert_no_early_acs_request(&sessions, &self.sandbox.acs_requests().await, clock);
    }

    /// Row counts of `sessions` and `audit_log`.
    pub async fn row_counts(&self) -> (i64, i64) {
        rows::row_counts(self.db().await).await
    }

    /// Every one of `ids` settled `enforced` or `already_ended`, with exactly
    /// one settling audit event; `already_ended` only where a crash left an
    /// earlier call unrecorded (a `recovered` event) or `allow_already_ended`.
    pub async fn assert_settled_once(&self, ids: &[String], allow_already_ended: bool) {
        let audit = self.audit().await;
        assert_each_settled_once(&audit, &self.sessions().await, ids, allow_already_ended);
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
