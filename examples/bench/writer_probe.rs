//! The writer probe: another program's connection to the daemon's database
//! that takes SQLite's write lock again and again (`BEGIN IMMEDIATE`, one
//! row into a scratch table, `COMMIT`, then 10 ms of rest) and times how
//! long each `BEGIN IMMEDIATE` waited. The longest wait is the longest time
//! the daemon (here: its prune) kept any other writer out, measured from
//! outside, as an application writing to the same file would feel it.
//!
//! It retries a refused `BEGIN IMMEDIATE` itself every 0.5 ms instead of
//! leaving the wait to SQLite's busy handler: that handler sleeps in steps
//! of up to 100 ms, which would round every wait up to its next step. The
//! probe gives up (and fails the run) after [`GIVE_UP`], as a 5 s
//! `busy_timeout` would have failed long before. It commits with
//! `synchronous=NORMAL` (no fsync in WAL mode), so that its own holds stay
//! in the tens of microseconds and barely delay the daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant as StdInstant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteSynchronous};

use callwarden::store::sqlite::is_busy;

use crate::figures::Figures;

/// How long one wait may last before the probe reports the database stuck.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(60);
/// Rest between two probe transactions.
const REST: Duration = Duration::from_millis(10);
/// Retry interval of a refused `BEGIN IMMEDIATE`.
const RETRY: Duration = Duration::from_micros(500);

/// One probe transaction: when it began to wait, and how long it waited.
pub(crate) type Wait = (DateTime<Utc>, Duration);

pub(crate) struct WriterProbe {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<anyhow::Result<Vec<Wait>>>,
}

fn options(db: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::ZERO)
        .synchronous(SqliteSynchronous::Normal)
}

impl WriterProbe {
    /// Creates the scratch table; run before the daemon starts, so that no
    /// schema change happens under it.
    pub(crate) async fn prepare(db: &Path) -> anyhow::Result<()> {
        let mut conn = options(db).busy_timeout(Duration::from_secs(5)).connect().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_writer_probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL)",
        )
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Starts probing on a thread of its own (with its own runtime, so the
    /// bench's runtime being busy does not delay the retries).
    pub(crate) fn start(db: PathBuf) -> WriterProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(probe(db, flag))
        });
        WriterProbe { stop, handle }
    }

    pub(crate) fn finish(self) -> anyhow::Result<Vec<Wait>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().map_err(|_| anyhow::anyhow!("the writer probe panicked"))?
    }
}

async fn probe(db: PathBuf, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<Wait>> {
    let mut conn = options(&db).connect().await.context("the writer probe cannot open the database")?;
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let at = Utc::now();
        let started = StdInstant::now();
        loop {
            match sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await {
                Ok(_) => break,
                Err(e) if is_busy(&e) => {
                    if started.elapsed() > GIVE_UP {
                        bail!("the writer probe waited {GIVE_UP:?} for the write lock");
                    }
                    std::thread::sleep(RETRY);
                }
                Err(e) => return Err(e).context("the writer probe's BEGIN IMMEDIATE failed"),
            }
        }
        let waited = started.elapsed();
        sqlx::query("INSERT INTO bench_writer_probe (at) VALUES (?)")
            .bind(at.to_rfc3339())
            .execute(&mut conn)
            .await?;
        sqlx::query("COMMIT").execute(&mut conn).await?;
        out.push((at, waited));
        std::thread::sleep(REST);
    }
    Ok(out)
}

/// The waits that began in `[from, to]`: how many, p50/p99/max, and how
/// many exceeded 50 ms.
pub(crate) fn wait_figures(
    f: &mut Figures,
    label: &str,
    waits: &[Wait],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) {
    let mut us: Vec<i64> =
        waits.iter().filter(|(at, _)| *at >= from && *at <= to).map(|(_, d)| d.as_micros() as i64).collect();
    us.sort_unstable();
    f.add(format!("{label}: probe transactions"), us.len() as f64, "");
    f.add_dist_us(&format!("{label}: wait for the write lock"), &us);
    f.add(format!("{label}: waits over 50 ms"), us.iter().filter(|v| **v > 50_000).count() as f64, "");
}
