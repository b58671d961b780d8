//! Rows another program writes with plain SQL, any values in any column
//! (NULL, integers, reals, text, BLOBs, times past the year 9999): the
//! real scheduler adopts each row or fails it on its own, with a `rejected`
//! audit row, never panics, and keeps adopting what comes after.

use std::sync::Arc;
use std::time::Duration;

use callwarden::clock::Clock;
use callwarden::config::Config;
use callwarden::domain::Instant;
use callwarden::scheduler::Scheduler;
use callwarden::store::Store;
use proptest::prelude::*;
use sqlx::Row;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

const CONFIG: &str = "\
database: cw.db
providers:
  trtc: { kind: tencent-trtc, sdk_app_id: 1400000001, region: ap-guangzhou, secret_id: AKID, secret_key: k,
          endpoint: 'http://127.0.0.1:9' }
policies:
  consultation: { provider: trtc, max_duration: 30m, action: dismiss_room }
  paid-chat: { provider: trtc, scope: participant, max_duration: 20m, action: remove_user,
               budget: { per: user, window: day, limit: 60m } }
";

/// One SQLite value, of any storage class.
#[derive(Debug, Clone)]
enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

fn value(texts: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(Value::Int),
        1 => any::<f64>().prop_map(Value::Real),
        4 => prop::sample::select(texts).prop_map(|t| Value::Text(t.to_string())),
        1 => "(?s).{0,12}".prop_map(Value::Text),
        1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::Blob),
    ]
    .boxed()
}

const COLUMNS: [&str; 10] = [
    "policy",
    "room_id",
    "room_kind",
    "user_id",
    "started_at",
    "deadline",
    "grace_ms",
    "attempts",
    "extended_ms",
    "detail",
];

fn row() -> impl Strategy<Value = Vec<Value>> {
    let times: &'static [&'static str] = &[
        "2026-11-29T10:00:00Z",
        "2026-11-29 10:00:00",
        "9999-12-31T23:59:59.999Z",
        "0000-01-01T00:00:00Z",
        "2026-11-29T10:00:00+05:30",
    ];
    (
        value(&["consultation", "paid-chat", "nope"]),
        value(&["1234", "0", "4294967295", "chat-1", ""]),
        value(&["numeric", "string", "call"]),
        value(&["alice", "", "bob\u{0}"]),
        value(times),
        value(times),
        value(&["0", "1000", "-5"]),
        value(&["0", "3"]),
        value(&["0", "60000"]),
        value(&["a reason"]),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, i, j)| vec![a, b, c, d, e, f, g, h, i, j])
}

/// Inserts a row as an app would; `None` when SQLite itself refuses it (a
/// NOT NULL or CHECK constraint).
async fn insert(pool: &sqlx::SqlitePool, values: &[Value]) -> Option<i64> {
    let columns: Vec<&str> =
        COLUMNS.iter().zip(values).filter(|(_, v)| !matches!(v, Value::Null)).map(|(c, _)| *c).collect();
    let marks = vec!["?"; columns.len()].join(", ");
    let sql = format!("INSERT INTO sessions ({}) VALUES ({marks}) RETURNING rowid", columns.join(", "));
    let mut q = sqlx::query_scalar::<_, i64>(&sql);
    for v in values {
        q = match v {
            Value::Null => q,
            Value::Int(i) => q.bind(*i),
            Value::Real(r) => q.bind(*r),
            Value::Text(t) => q.bind(t.clone()),
            Value::Blob(b) => q.bind(b.clone()),
        };
    }
    q.fetch_one(pool).await.ok()
}

/// Whether the scheduler is done with the row: adopted (provider and
/// deadline filled in, or no longer active) or failed with a `rejected` row.
async fn settled(pool: &sqlx::SqlitePool, rowid: i64) -> Result<bool, String> {
    let r = sqlx::query(
        "SELECT state, provider IS NOT NULL AND deadline IS NOT NULL AS adopted, CAST(id AS TEXT) AS id FROM sessions \
         WHERE rowid = ?",
    )
    .bind(rowid)
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    let state: String = r.get("state");
    let id: String = r.get("id");
    if state == "failed" {
        let rejected: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE session_id = ? AND event = 'rejected'")
                .bind(&id)
                .fetch_one(pool)
                .await
                .map_err(|e| e.to_string())?;
        return if rejected == 1 {
            Ok(true)
        } else {
            Err(format!("row {id} failed with {rejected} rejected rows"))
        };
    }
    Ok(state != "active" || r.get::<bool, _>("adopted"))
}

fn run_case(rows: Vec<Vec<Value>>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cw.db");
        let store = Store::open(&path).await.unwrap();
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        let mut inserted = Vec::new();
        for values in &rows {
            if let Some(rowid) = insert(&pool, values).await {
                inserted.push(rowid);
            }
        }
        let config = Arc::new(Config::parse(&dir.path().join("c.yaml"), CONFIG).unwrap());
        let clock = Clock::manual(Instant::parse("2026-11-29T10:00:00Z").unwrap());
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Claimed sessions are taken and dropped: adoption is what is tested.
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let changed = Arc::new(Notify::new());
        let scheduler = Scheduler::new(
            store.clone(),
            clock,
            config,
            Arc::new(Semaphore::new(1024)),
            Arc::clone(&changed),
            tx,
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(scheduler.run(stop.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for rowid in &inserted {
            loop {
                if settled(&pool, *rowid).await.map_err(TestCaseError::fail)? {
                    break;
                }
                prop_assert!(!task.is_finished(), "the scheduler stopped (panicked?)");
                prop_assert!(std::time::Instant::now() < deadline, "row {rowid} was never adopted or failed");
                changed.notify_one();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // And it goes on: a good row inserted now is adopted.
        let good = insert(
            &pool,
            &[Value::Text("consultation".into()), Value::Text("77".into()), Value::Text("numeric".into())],
        )
        .await
        .unwrap();
        changed.notify_one();
        while !settled(&pool, good).await.map_err(TestCaseError::fail)? {
            prop_assert!(std::time::Instant::now() < deadline, "a good row after the others was not adopted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        prop_assert!(!task.is_finished(), "the scheduler stopped (panicked?)");
        stop.cancel();
        let _ = task.await;
        pool.close().await;
        store.close().await;
        Ok(())
    })
}

proptest! {
    #![proptest_config(super::cases(24))]

    #[test]
    fn any_row_written_with_plain_sql_is_adopted_or_failed_alone(rows in prop::collection::vec(row(), 1..12)) {
        run_case(rows)?;
    }
}
