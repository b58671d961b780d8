//! The prune scenario's database: settled sessions and their audit rows
//! older than the retention periods (the backlog a first prune finds), plus
//! settled sessions inside the periods (which the prune must walk past and
//! keep). Written once with direct SQL, in the schema the daemon migrates
//! to, and cached like the startup scenario's database.
//!
//! Each session has two audit rows (`registered`, then its outcome), so
//! `sessions` old sessions make 2 × `sessions` old audit rows. The rows are
//! chained exactly as the daemon chains them (`domain::audit::chain_hash`),
//! so `callwarden audit verify` holds before and after the prune.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection};

use callwarden::clock::Clock;
use callwarden::domain::Instant;
use callwarden::domain::audit::{AuditRecord, chain_hash};
use callwarden::store::Store;
use callwarden::store::sqlite::insert_audit_records;

/// The retention periods the scenario's daemon runs with.
pub(crate) const RETENTION_DAYS: u64 = 30;
/// Old rows are 100 to 400 days old; recent ones 1 hour to 2 days old when
/// written. A cache older than this is rebuilt, so that no recent row has
/// crossed the retention period meanwhile.
const CACHE_VALID: Duration = Duration::from_secs(20 * 86_400);
const DAY_MS: i64 = 86_400_000;

/// The settled states, and how often each occurs (of 20): mostly enforced,
/// then ended by the app (cancelled), a few already ended or failed.
fn state(i: usize) -> &'static str {
    match i % 20 {
        0..=13 => "enforced",
        14..=18 => "cancelled",
        _ if i % 40 == 19 => "already_ended",
        _ => "failed",
    }
}

/// One settled session: its id, when it started and when it settled.
struct Settled {
    id: String,
    room: u64,
    state: &'static str,
    started: Instant,
    ended: Instant,
}

/// The cached database for `old` old and `recent` recent settled sessions.
pub(crate) async fn prune_database(old: usize, recent: usize, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(cache_dir)?;
    let name = format!("prune-{old}-{recent}");
    let db = cache_dir.join(format!("{name}.db"));
    let marker = cache_dir.join(format!("{name}.done"));
    let now = Clock::system().now();
    let built = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|ms| ms.parse::<i64>().ok()));
    if let Some(built) = built
        && db.exists()
        && now.millis() - built < CACHE_VALID.as_millis() as i64
    {
        // Bring a file filled at an older schema up to date before anything is timed.
        Store::open(&db).await?.close().await;
        return Ok(db);
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let _ = std::fs::remove_file(&marker);
    eprintln!("filling {} with {old} old and {recent} recent settled sessions (once; cached)", db.display());
    let started = StdInstant::now();
    Store::open(&db).await?.close().await;
    let mut conn = SqliteConnectOptions::new()
        .filename(&db)
        .synchronous(SqliteSynchronous::Off)
        .pragma("cache_size", "-262144")
        .connect()
        .await?;
    let old_span = 300 * DAY_MS / old.max(1) as i64;
    let recent_span = (2 * DAY_MS - 3_600_000) / recent.max(1) as i64;
    let sessions = (0..old + recent).map(|i| {
        let started = if i < old {
            now.millis() - 400 * DAY_MS + i as i64 * old_span
        } else {
            now.millis() - 2 * DAY_MS + (i - old) as i64 * recent_span
        };
        Settled {
            id: uuid::Uuid::new_v4().to_string(),
            room: 1 + (i as u64 % 4_000_000_000),
            state: state(i),
            started: Instant::from_millis(started),
            ended: Instant::from_millis(started + 1_800_000),
        }
    });
    let (mut prev_hash, mut audit_id, mut done) = (String::new(), 0i64, 0usize);
    let mut batch = Vec::with_capacity(1000);
    for s in sessions {
        batch.push(s);
        if batch.len() == 1000 {
            write_batch(&mut conn, &batch, &mut prev_hash, &mut audit_id).await?;
            done += batch.len();
            batch.clear();
            if done % 200_000 == 0 {
                eprintln!("  {done} sessions in {:.0} s", started.elapsed().as_secs_f64());
            }
        }
    }
    write_batch(&mut conn, &batch, &mut prev_hash, &mut audit_id).await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await?;
    conn.close().await?;
    std::fs::write(
        &marker,
        format!(
            "{} (filled at this time, in ms; took {:.1} s)\n",
            now.millis(),
            started.elapsed().as_secs_f64()
        ),
    )?;
    Ok(db)
}

/// Inserts sessions and their two audit rows each, chained, in one transaction.
async fn write_batch(
    conn: &mut SqliteConnection,
    batch: &[Settled],
    prev_hash: &mut String,
    audit_id: &mut i64,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut tx = conn.begin().await?;
    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO sessions (id, policy, provider, room_id, room_kind, started_at, deadline, state, attempts, \
         created_at, updated_at, ended_at) ",
    );
    q.push_values(batch, |mut b, s| {
        let (started, ended) = (s.started.to_string(), s.ended.to_string());
        b.push_bind(s.id.clone())
            .push_bind("end")
            .push_bind("trtc")
            .push_bind(s.room.to_string())
            .push_bind("numeric")
            .push_bind(started.clone())
            .push_bind(ended.clone())
            .push_bind(s.state)
            .push_bind(i64::from(s.state != "cancelled"))
            .push_bind(started)
            .push_bind(ended.clone())
            .push_bind(ended);
    });
    q.build().execute(&mut *tx).await.context("cannot insert the prune scenario's sessions")?;
    let mut records = Vec::with_capacity(batch.len() * 2);
    for s in batch {
        let called = s.state != "cancelled";
        for (at, event) in [(s.started, "registered"), (s.ended, s.state)] {
            *audit_id += 1;
            let outcome = event != "registered" && called;
            let mut r = AuditRecord {
                id: *audit_id,
                at: at.to_string(),
                session_id: Some(s.id.clone()),
                event: event.to_string(),
                provider: Some("trtc".into()),
                action: outcome.then(|| "DismissRoom".into()),
                attempt: outcome.then_some(1),
                outcome: outcome.then(|| if s.state == "failed" { "fatal" } else { "success" }.into()),
                http_status: outcome.then_some(200),
                provider_request_id: None,
                error_code: None,
                detail: None,
                latency_ms: outcome.then_some(40),
                lateness_ms: outcome.then_some(2),
                prev_hash: Some(prev_hash.clone()),
                hash: None,
            };
            let hash = chain_hash(prev_hash, &r);
            r.hash = Some(hash.clone());
            *prev_hash = hash;
            records.push(r);
        }
    }
    insert_audit_records(&mut tx, &records).await.context("cannot insert the prune scenario's audit rows")?;
    tx.commit().await?;
    Ok(())
}
