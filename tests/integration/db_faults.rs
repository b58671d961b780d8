//! Database faults while the daemon enforces a burst: another program holds
//! the write lock, or the disk fills up. The daemon keeps running and keeps
//! what it has (calls already recorded as attempts still go out; their
//! answers wait in memory), reports the fault (`/readyz` 503 naming the
//! error, `callwarden_store_errors_total`), and once the fault clears
//! records everything: each session settled once, no room called twice, the
//! file intact (`PRAGMA integrity_check`) and the audit chain whole
//! (`callwarden audit verify`).
//!
//! The full disk is real: the database lives on a small tmpfs that the test
//! mounts and fills. Mounting needs CAP_SYS_ADMIN (root on CI); without it
//! that test prints why and passes without running. A read-only remount
//! is not possible while the daemon holds the file open for writing (the
//! kernel answers EBUSY), so it is not tested here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use crate::helpers::{
    Client, Daemon, Harness, LONG, Reply, Retry, SHORT, SqlSession, fault_config_text, metric_sum, now_ms,
    parse_metrics, wait_for, wait_until,
};

const RETRY: Retry = Retry { max_attempts: 4, initial_ms: 100, max_ms: 1_000, timeout_ms: 2_000 };

async fn readyz(client: &Client) -> Reply {
    client.get("/readyz").await
}

async fn store_errors(client: &Client) -> f64 {
    metric_sum(&parse_metrics(&client.get("/metrics").await.text), "callwarden_store_errors_total", &[])
}

/// 60 rooms due together, 1.5 s from now: three seconds of calls at 19/s.
async fn burst(h: &Harness, first: u32) -> Vec<String> {
    let deadline = now_ms() + 1_500;
    let rows: Vec<_> = (first..first + 60).map(|room| SqlSession::dismiss(room, deadline)).collect();
    h.insert_sql(&rows).await.unwrap()
}

async fn wait_for_calls(h: &Harness, n: usize) {
    wait_until(&format!("{n} calls"), LONG, || async { h.sandbox.api_requests().await.len() >= n }).await;
}

/// Waits until `/readyz` reports the fault; returns its body.
async fn wait_until_reported(client: &Client) -> String {
    wait_for("/readyz to report the database fault", SHORT, || async {
        let reply = readyz(client).await;
        (reply.status == 503).then_some(reply.text)
    })
    .await
}

/// After the fault: all enforced once, each room dismissed by exactly one
/// request, ready again, the file and the audit chain whole.
async fn assert_recovered(h: &Harness, daemon: &mut Daemon, client: &Client, ids: &[String], first: u32) {
    for row in h.wait_until_settled(ids, LONG).await {
        assert_eq!(row.state, "enforced", "{row:#?}");
    }
    assert!(daemon.is_running(), "the daemon died of the fault; logs:\n{}", daemon.logs());
    h.assert_settled_once(ids, false).await;
    h.assert_never_early(None).await;
    let requests = h.sandbox.api_requests().await;
    for room in first..first + 60 {
        let answers: Vec<&str> = requests
            .iter()
            .filter(|r| r.room.as_deref() == Some(room.to_string().as_str()))
            .map(|r| r.answer.as_str())
            .collect();
        assert_eq!(answers, ["success"], "room {room}: a call repeated or missing");
    }
    wait_until("/readyz to recover", SHORT, || async { readyz(client).await.status == 200 }).await;
    h.assert_database_whole().await;
}

#[tokio::test]
async fn a_database_locked_by_another_writer_is_reported_and_enforcement_resumes_when_it_is_released() {
    let h = Harness::with_config(|db, url| fault_config_text(db, url, RETRY)).await;
    let mut daemon = h.start_daemon().await;
    let client = Client::new(&daemon.http_url().await).with_token(None);
    readyz(&client).await.expect(200, "ready before the fault");
    let ids = burst(&h, 60_000).await;
    wait_for_calls(&h, 10).await;

    // Another program takes the write lock and keeps it.
    let options = SqliteConnectOptions::new().filename(&h.db_path).busy_timeout(Duration::from_secs(10));
    let mut holder = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut holder).await.unwrap();
    let calls_at_lock = h.sandbox.api_requests().await.len();

    let reported = wait_until_reported(&client).await;
    assert!(reported.contains("locked"), "{reported:?}");
    assert!(store_errors(&client).await >= 1.0);
    // Nothing settles while the lock is held, but calls already recorded as
    // attempts still go out: the daemon keeps what it has.
    let settled_while_locked = h.state_counts().await.get("enforced").copied().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.state_counts().await.get("enforced").copied().unwrap_or(0), settled_while_locked);
    assert!(h.sandbox.api_requests().await.len() > calls_at_lock, "no call went out during the lock");
    assert!(daemon.logs().contains("database is locked"), "the lock is not in the log");

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    assert_recovered(&h, &mut daemon, &client, &ids, 60_000).await;
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a `size` tmpfs; `Err` (why) when this process may not mount.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount(8): {e}"))?;
        if out.status.success() {
            return Ok(Tmpfs { _dir: dir, path });
        }
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let denied = ["permission denied", "not permitted", "must be superuser", "only root"]
            .iter()
            .any(|s| stderr.to_lowercase().contains(s));
        assert!(denied, "mount failed for a reason other than privilege: {stderr}");
        Err(stderr.trim().to_string())
    }

    /// Writes zeros to `name` until the filesystem is full.
    fn fill(&self, name: &str) -> PathBuf {
        let filler = self.path.join(name);
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // The last partial page, byte by byte.
        while file.write(&[0]).is_ok_and(|n| n == 1) {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Empties the WAL into the database file and truncates it, so the next
/// write has to allocate space (rather than reuse the WAL's old pages).
async fn truncate_wal(h: &Harness) {
    wait_until("a TRUNCATE checkpoint", SHORT, || async {
        let (busy, _, _): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(h.db().await).await.unwrap();
        busy == 0
    })
    .await;
}

fn wal_of(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

#[tokio::test]
async fn a_full_disk_is_reported_and_enforcement_resumes_when_space_returns() {
    let tmpfs = match Tmpfs::mount("16m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_is_reported_...: this process may not mount a tmpfs ({why})");
            return;
        }
    };
    let db = tmpfs.path.join("cw.db");
    let h = Harness::with_database(&db, |db, url| fault_config_text(db, url, RETRY)).await;
    let mut daemon = h.start_daemon().await;
    let client = Client::new(&daemon.http_url().await).with_token(None);
    let ids = burst(&h, 61_000).await;
    wait_for_calls(&h, 10).await;

    truncate_wal(&h).await;
    let filler = tmpfs.fill("filler");
    let reported = wait_until_reported(&client).await;
    assert!(reported.contains("full"), "{reported:?}");
    assert!(store_errors(&client).await >= 1.0);
    let unsettled = h.sessions().await.iter().filter(|s| s.state != "enforced").count();
    assert!(unsettled > 0, "the disk filled after the burst was recorded");
    eprintln!(
        "disk full: {unsettled} sessions unsettled; WAL {} bytes",
        std::fs::metadata(wal_of(&db)).unwrap().len()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    std::fs::remove_file(&filler).unwrap();
    assert_recovered(&h, &mut daemon, &client, &ids, 61_000).await;
}
