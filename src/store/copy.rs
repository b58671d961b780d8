//! `callwarden db copy`: a SQLite deployment's whole database into an
//! empty PostgreSQL database, for an operator who outgrows one machine.
//!
//! Everything is copied as it is, ids and hashes included: sessions, the
//! audit log with its chain, retention checkpoints and signed heads, the
//! notification outbox, the webhook history (`presence`) and the outcome
//! setting. The source is read in one read transaction (a consistent
//! snapshot, even with the CLI writing meanwhile); the target is written
//! in one transaction, so a copy that fails leaves it empty. The target's
//! triggers keep `session_counts` as the rows go in, and its chain tip
//! (the chain '' in `audit_tips`) is set to the last row copied, so appends continue the
//! same chain and `audit verify` passes on the copy.
//!
//! The one place that reads one backend's tables and writes another's.

use sqlx::Row;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{Store, StoreError};
use crate::domain::audit::AuditRecord;

/// Rows read and written per batch.
const BATCH: i64 = 2_000;

/// How many rows of each table were copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub sessions: u64,
    pub audit_rows: u64,
    pub checkpoints: u64,
    pub heads: u64,
    pub notifications: u64,
    pub presence: u64,
}

/// Copies `from` (SQLite) into `to` (PostgreSQL, migrated and empty).
pub async fn copy(from: &Store, to: &Store) -> Result<Copied, StoreError> {
    let (Store::Sqlite(from), Store::Postgres(to)) = (from, to) else {
        return Err(StoreError::CopyUnsupported);
    };
    copy_sqlite_to_postgres(from, to).await
}

async fn copy_sqlite_to_postgres(from: &SqliteStore, to: &PgStore) -> Result<Copied, StoreError> {
    let mut target = to.write_tx().await?;
    let found: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM sessions LIMIT 1) s) \
              + (SELECT count(*) FROM (SELECT 1 FROM audit_log LIMIT 1) a) \
              + (SELECT count(*) FROM (SELECT 1 FROM notifications LIMIT 1) n) \
              + (SELECT count(*) FROM (SELECT 1 FROM presence LIMIT 1) p) \
              + (SELECT count(*) FROM (SELECT 1 FROM audit_checkpoints LIMIT 1) c)",
    )
    .fetch_one(&mut *target)
    .await?;
    if found > 0 {
        return Err(StoreError::CopyTargetNotEmpty(to.location().to_string()));
    }
    // One read transaction: every SELECT below sees the same snapshot.
    let mut source = from.readers().begin().await?;
    let mut copied = Copied::default();

    // Sessions, by id; every column as text, as SQLite keeps it (a failed
    // row of another program's may hold a value of the wrong type).
    let mut after = String::new();
    loop {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM sessions WHERE id > ? ORDER BY id LIMIT ?",
            SESSION_TEXT_COLUMNS.iter().map(|c| as_text(c)).collect::<Vec<_>>().join(", ")
        ))
        .bind(&after)
        .bind(BATCH)
        .fetch_all(&mut *source)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get("id")?;
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
            "INSERT INTO sessions ({}) ",
            SESSION_TEXT_COLUMNS.join(", ")
        ));
        let mut failed = None;
        q.push_values(&rows, |mut b, row| {
            for column in SESSION_TEXT_COLUMNS {
                let value: Option<String> = row.try_get(column).unwrap_or_else(|e| {
                    failed.get_or_insert(e);
                    None
                });
                match session_column_type(column) {
                    Some(cast) => b.push_bind(value).push_unseparated(cast),
                    None => b.push_bind(value),
                };
            }
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        q.build().execute(&mut *target).await?;
        copied.sessions += rows.len() as u64;
    }

    // The audit log, in id order, with its hashes; then the tip.
    let mut after = 0i64;
    let mut tip: Option<(i64, String)> = None;
    loop {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM audit_log WHERE id > ? ORDER BY id LIMIT ?",
            crate::domain::audit::AUDIT_COLUMNS.join(", ")
        ))
        .bind(after)
        .bind(BATCH)
        .fetch_all(&mut *source)
        .await?;
        let records: Vec<AuditRecord> =
            rows.iter().map(super::sqlite::audit_record).collect::<Result<_, sqlx::Error>>()?;
        let Some(last) = records.last() else { break };
        after = last.id;
        tip = Some((last.id, last.hash.clone().unwrap_or_default()));
        super::postgres::insert_audit_records(&mut target, &records).await?;
        copied.audit_rows += records.len() as u64;
    }
    if let Some((id, hash)) = tip {
        // The copy is the chain '' (`db copy` names no chain of its own);
        // the log's ids go on after the last one copied.
        sqlx::query(
            "INSERT INTO audit_tips (chain, last_id, last_hash) VALUES ('', $1, $2) \
             ON CONFLICT (chain) DO UPDATE SET last_id = EXCLUDED.last_id, last_hash = EXCLUDED.last_hash",
        )
        .bind(id)
        .bind(hash)
        .execute(&mut *target)
        .await?;
        sqlx::query("SELECT setval('audit_log_ids', $1)").bind(id).execute(&mut *target).await?;
    }

    for row in sqlx::query(
        "SELECT id, at, last_id, last_hash, rows_pruned, signature FROM audit_checkpoints ORDER BY id",
    )
    .fetch_all(&mut *source)
    .await?
    {
        sqlx::query(
            "INSERT INTO audit_checkpoints (id, at, last_id, last_hash, rows_pruned, signature) \
             OVERRIDING SYSTEM VALUE VALUES ($1, $2::timestamptz, $3, $4, $5, $6)",
        )
        .bind(row.try_get::<i64, _>("id")?)
        .bind(row.try_get::<String, _>("at")?)
        .bind(row.try_get::<i64, _>("last_id")?)
        .bind(row.try_get::<String, _>("last_hash")?)
        .bind(row.try_get::<i64, _>("rows_pruned")?)
        .bind(row.try_get::<Option<String>, _>("signature")?)
        .execute(&mut *target)
        .await?;
        copied.checkpoints += 1;
    }
    for row in sqlx::query("SELECT id, at, last_id, last_hash, signature FROM audit_heads ORDER BY id")
        .fetch_all(&mut *source)
        .await?
    {
        sqlx::query(
            "INSERT INTO audit_heads (id, at, last_id, last_hash, signature) \
             OVERRIDING SYSTEM VALUE VALUES ($1, $2::timestamptz, $3, $4, $5)",
        )
        .bind(row.try_get::<i64, _>("id")?)
        .bind(row.try_get::<String, _>("at")?)
        .bind(row.try_get::<i64, _>("last_id")?)
        .bind(row.try_get::<String, _>("last_hash")?)
        .bind(row.try_get::<String, _>("signature")?)
        .execute(&mut *target)
        .await?;
        copied.heads += 1;
    }

    // The outbox, ids kept (a delivery's id is what receivers dedupe on).
    let mut after = 0i64;
    loop {
        let rows = sqlx::query(
            "SELECT id, delivery_id, session_id, event, warn_before_ms, detail, due_at, state, attempts, \
             last_error, created_at, updated_at FROM notifications WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(BATCH)
        .fetch_all(&mut *source)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get("id")?;
        for row in &rows {
            sqlx::query(
                "INSERT INTO notifications (id, delivery_id, session_id, event, warn_before_ms, detail, due_at, \
                 state, attempts, last_error, created_at, updated_at) OVERRIDING SYSTEM VALUE \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::timestamptz, $8, $9, $10, $11::timestamptz, $12::timestamptz)",
            )
            .bind(row.try_get::<i64, _>("id")?)
            .bind(row.try_get::<String, _>("delivery_id")?)
            .bind(row.try_get::<String, _>("session_id")?)
            .bind(row.try_get::<String, _>("event")?)
            .bind(row.try_get::<Option<i64>, _>("warn_before_ms")?)
            .bind(row.try_get::<Option<String>, _>("detail")?)
            .bind(row.try_get::<String, _>("due_at")?)
            .bind(row.try_get::<String, _>("state")?)
            .bind(row.try_get::<i64, _>("attempts")?)
            .bind(row.try_get::<Option<String>, _>("last_error")?)
            .bind(row.try_get::<String, _>("created_at")?)
            .bind(row.try_get::<String, _>("updated_at")?)
            .execute(&mut *target)
            .await?;
        }
        copied.notifications += rows.len() as u64;
    }

    let rows = sqlx::query(
        "SELECT provider, room_kind, room_id, participant, last_event_ms, last_event FROM presence \
         ORDER BY provider, room_kind, room_id, participant",
    )
    .fetch_all(&mut *source)
    .await?;
    for chunk in rows.chunks(BATCH as usize) {
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO presence (provider, room_kind, room_id, participant, last_event_ms, last_event) ",
        );
        let mut failed = None;
        q.push_values(chunk, |mut b, row| {
            let mut text = |c: &str| -> String {
                row.try_get(c).unwrap_or_else(|e| {
                    failed.get_or_insert(e);
                    String::new()
                })
            };
            let (provider, kind, room, participant) =
                (text("provider"), text("room_kind"), text("room_id"), text("participant"));
            let event = text("last_event");
            let ms: i64 = row.try_get("last_event_ms").unwrap_or_else(|e| {
                failed.get_or_insert(e);
                0
            });
            b.push_bind(provider)
                .push_bind(kind)
                .push_bind(room)
                .push_bind(participant)
                .push_bind(ms)
                .push_bind(event);
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        q.build().execute(&mut *target).await?;
        copied.presence += chunk.len() as u64;
    }

    let outcomes: i64 = sqlx::query_scalar("SELECT outcomes FROM notification_settings WHERE id = 1")
        .fetch_one(&mut *source)
        .await?;
    sqlx::query("UPDATE notification_settings SET outcomes = $1 WHERE id = 1")
        .bind(outcomes != 0)
        .execute(&mut *target)
        .await?;
    // Identity columns go on after the copied ids.
    for table in ["notifications", "audit_checkpoints", "audit_heads"] {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce(max(id), 0) + 1, false) FROM {table}"
        ))
        .execute(&mut *target)
        .await?;
    }
    source.rollback().await?;
    target.commit().await?;
    Ok(copied)
}

/// The columns of `sessions`, all read from SQLite as text.
const SESSION_TEXT_COLUMNS: [&str; 19] = [
    "id",
    "policy",
    "provider",
    "room_id",
    "room_kind",
    "user_id",
    "started_at",
    "deadline",
    "state",
    "attempts",
    "extended_ms",
    "detail",
    "repeatability_id",
    "first_sent_at",
    "idempotency_key",
    "created_at",
    "updated_at",
    "grace_ms",
    "ended_at",
];

/// A SQLite column as text: bytes (a BLOB another program wrote) as hex.
fn as_text(column: &str) -> String {
    format!(
        "CASE typeof({column}) WHEN 'blob' THEN 'x''' || hex({column}) || '''' ELSE CAST({column} AS TEXT) END \
         AS {column}"
    )
}

/// The cast a session column's text needs in PostgreSQL.
fn session_column_type(column: &str) -> Option<&'static str> {
    match column {
        "started_at" | "deadline" | "first_sent_at" | "created_at" | "updated_at" | "ended_at" => {
            Some("::timestamptz")
        }
        "attempts" | "extended_ms" | "grace_ms" => Some("::bigint"),
        _ => None,
    }
}
