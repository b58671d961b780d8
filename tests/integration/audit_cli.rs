//! The audit log's tamper evidence and the backup command, through the real
//! binary: `audit verify` passes on an honest log and names the first row
//! that was edited, deleted or inserted with plain SQL; `backup` copies the
//! live database.

use std::path::Path;

use callwarden::sandbox::SANDBOX_SECRET_KEY;
use sqlx::Connection;

use crate::helpers::{NOWHERE, Workdir, config_text};

/// A database with a few sessions, registered, extended and ended: a dozen
/// chained audit rows.
async fn honest_log() -> Workdir {
    let dir = Workdir::standard();
    for room in ["1", "2", "3", "4"] {
        let out = dir.cli(&["session", "start", "--policy", "consultation", "--room", room]).await;
        assert!(out.ok(), "{}", out.stderr);
        let id = out.stdout.trim().to_string();
        assert!(dir.cli(&["session", "extend", &id, "--by", "1m"]).await.ok());
        assert!(dir.cli(&["session", "end", &id]).await.ok());
    }
    dir
}

async fn verify(dir: &Workdir) -> (bool, String) {
    let out = dir.cli(&["audit", "verify"]).await;
    let text = format!("{}{}", out.stdout, out.stderr);
    (out.ok(), text)
}

async fn connect(db: &Path) -> sqlx::SqliteConnection {
    let url = format!("sqlite://{}", db.display());
    sqlx::SqliteConnection::connect(&url).await.unwrap()
}

/// Runs SQL as a tamperer would: the append-only triggers dropped first.
async fn tamper(dir: &Workdir, sql: &str) {
    let mut conn = connect(&dir.db_path).await;
    sqlx::query("DROP TRIGGER IF EXISTS audit_log_is_append_only_update").execute(&mut conn).await.unwrap();
    sqlx::query("DROP TRIGGER IF EXISTS audit_log_is_append_only_delete").execute(&mut conn).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn an_honest_log_verifies() {
    let dir = honest_log().await;
    let (ok, text) = verify(&dir).await;
    assert!(ok, "{text}");
    assert!(text.contains("audit log intact: 12 rows chained"), "{text}");
    assert!(text.contains("head: row 12 hash "), "{text}");
}

#[tokio::test]
async fn an_edited_row_is_found() {
    let dir = honest_log().await;
    tamper(&dir, "UPDATE audit_log SET detail = 'nothing to see' WHERE id = 5").await;
    let (ok, text) = verify(&dir).await;
    assert!(!ok, "{text}");
    assert!(text.contains("broken at row 5") && text.contains("edited"), "{text}");
}

#[tokio::test]
async fn a_deleted_row_is_found() {
    let dir = honest_log().await;
    tamper(&dir, "DELETE FROM audit_log WHERE id = 7").await;
    let (ok, text) = verify(&dir).await;
    assert!(!ok, "{text}");
    assert!(text.contains("broken at row 8") && text.contains("rows 7 to 7 are missing"), "{text}");
}

#[tokio::test]
async fn an_inserted_row_is_found() {
    let dir = honest_log().await;
    // An inserted row, even one that copies a neighbour's hash, breaks the chain.
    tamper(
        &dir,
        "INSERT INTO audit_log (id, at, event, prev_hash, hash) \
         SELECT 100, at, 'enforced', prev_hash, hash FROM audit_log WHERE id = 12",
    )
    .await;
    let (ok, text) = verify(&dir).await;
    assert!(!ok, "{text}");
    assert!(text.contains("broken at row 100"), "{text}");
}

#[tokio::test]
async fn a_rewritten_chain_from_a_row_on_is_still_caught_at_that_row() {
    let dir = honest_log().await;
    // Editing a row and recomputing its hash (without the next row's link)
    // moves the break to the next row.
    tamper(&dir, "UPDATE audit_log SET detail = 'x', hash = 'forged' WHERE id = 3").await;
    let (ok, text) = verify(&dir).await;
    assert!(!ok, "{text}");
    assert!(text.contains("broken at row 3"), "{text}");
}

#[tokio::test]
async fn backup_copies_the_live_database_and_refuses_to_overwrite() {
    let dir = honest_log().await;
    let copy = dir.path().join("copy.db");
    let out = dir.cli(&["backup", copy.to_str().unwrap()]).await;
    assert!(out.ok(), "{}", out.stderr);
    let mut conn = connect(&copy).await;
    let sessions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sessions").fetch_one(&mut conn).await.unwrap();
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&mut conn).await.unwrap();
    assert_eq!((sessions, audit), (4, 12));
    let again = dir.cli(&["backup", copy.to_str().unwrap()]).await;
    assert!(!again.ok());
    assert!(again.stderr.contains("exists"));
}

#[tokio::test]
async fn audit_filters_csv_and_summary_answer_operators_questions() {
    let dir = honest_log().await;
    let text = async |args: &[&str]| {
        let out = dir.cli(args).await;
        assert!(out.ok(), "{args:?}: {}", out.stderr);
        out.stdout
    };
    let csv = text(&["audit", "--event", "cancelled", "--format", "csv"]).await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "a header and four rows: {csv}");
    assert!(lines[0].starts_with("id,at,session_id,event,"), "{csv}");
    assert!(lines[1..].iter().all(|l| l.contains(",cancelled,")), "{csv}");

    let room = text(&["audit", "--room", "2", "--format", "json"]).await;
    assert_eq!(room.lines().count(), 3, "registered, extended, cancelled: {room}");
    assert_eq!(
        text(&["audit", "--room", "2", "--event", "extended", "--format", "json"]).await.lines().count(),
        1
    );
    assert_eq!(text(&["audit", "--outcome", "success", "--format", "json"]).await.lines().count(), 0);
    assert_eq!(
        text(&["audit", "--until", "2000-01-01T00:00:00Z", "--format", "json"]).await.lines().count(),
        0
    );

    let summary: serde_json::Value =
        serde_json::from_str(&text(&["audit", "summary", "--format", "json"]).await).unwrap();
    assert_eq!(summary["events"]["registered"], 4, "{summary}");
    assert_eq!(summary["events"]["extended"], 4, "{summary}");
    assert_eq!(summary["events"]["cancelled"], 4, "{summary}");
    let table = text(&["audit", "summary", "--since", "1h"]).await;
    assert!(table.contains("registered") && table.contains("first-call lateness"), "{table}");
}

const RETENTION: &str = "\
retention:
  sessions: 30d
  audit: 30d
  checkpoint_key: test-checkpoint-key
";

#[tokio::test]
async fn retention_prunes_behind_a_signed_checkpoint_and_verification_still_holds() {
    use callwarden::clock::Clock;
    use callwarden::domain::session::NewSession;
    use callwarden::domain::{Instant, Room, SessionId};
    use callwarden::store::Store;

    let dir =
        Workdir::with_config(|db| format!("{}{RETENTION}", config_text(db, NOWHERE, SANDBOX_SECRET_KEY)));
    let config = callwarden::config::Config::load(&dir.config).unwrap();
    let store = Store::connect(&config.database).await.unwrap();
    // Two months ago: sessions registered and ended. Yesterday: more.
    let session = |room: u32, at: Instant| NewSession {
        id: SessionId::new(),
        policy: "consultation".into(),
        provider: "trtc".into(),
        room: Room::Numeric(room),
        user: None,
        started_at: at,
        deadline: at.saturating_add(std::time::Duration::from_secs(60)),
        grace: std::time::Duration::ZERO,
        warn_before: Vec::new(),
        note: None,
    };
    let now = Instant::parse("2026-06-01T12:00:00Z").unwrap();
    let old = Instant::parse("2026-04-01T12:00:00Z").unwrap();
    let recent = Instant::parse("2026-05-31T12:00:00Z").unwrap();
    for (room, at) in [(1, old), (2, old), (3, recent)] {
        let s = session(room, at);
        store.insert_sessions(std::slice::from_ref(&s), at, "test").await.unwrap();
        store.end_session(s.id, at, "test").await.unwrap();
    }
    callwarden::retention::prune_once(&store, &Clock::manual(now), &config.retention).await.unwrap();
    let counts = store.state_counts().await.unwrap();
    assert_eq!(counts, vec![("cancelled".to_string(), 1)], "the two old sessions are gone");
    let cp = store.audit_checkpoint().await.unwrap().expect("a checkpoint");
    assert_eq!((cp.last_id, cp.rows_pruned), (4, 4), "two registered and two cancelled rows pruned");
    store.close().await;

    let (ok, text) = verify(&dir).await;
    assert!(ok, "{text}");
    assert!(text.contains("signed and valid") && text.contains("audit log intact: 3 rows chained"), "{text}");

    // A forged checkpoint (pruning more history than was really pruned) is caught.
    let mut conn = connect(&dir.db_path).await;
    sqlx::query("UPDATE audit_checkpoints SET rows_pruned = 3").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let (ok, text) = verify(&dir).await;
    assert!(!ok && text.contains("signature"), "{text}");
}

#[tokio::test]
async fn audit_rows_cannot_be_deleted_outside_a_checkpoint() {
    let dir = honest_log().await;
    let mut conn = connect(&dir.db_path).await;
    let refused = sqlx::query("DELETE FROM audit_log WHERE id = 1").execute(&mut conn).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("append-only")));
    let refused = sqlx::query("UPDATE audit_log SET detail = 'x' WHERE id = 1").execute(&mut conn).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("append-only")));
}

#[tokio::test]
async fn a_deleted_first_row_without_a_checkpoint_is_found() {
    let dir = honest_log().await;
    tamper(&dir, "DELETE FROM audit_log WHERE id <= 2").await;
    let (ok, text) = verify(&dir).await;
    assert!(!ok, "{text}");
    assert!(text.contains("rows 1 to 2 are missing and no retention checkpoint"), "{text}");
}

/// An honest log with a checkpoint key, whose head the daemon's task has
/// signed (as it does every few minutes and at shutdown).
async fn headed_log() -> Workdir {
    let dir = honest_log().await;
    let text = std::fs::read_to_string(&dir.config).unwrap();
    std::fs::write(&dir.config, format!("{text}retention:\n  checkpoint_key: test-checkpoint-key\n"))
        .unwrap();
    let config = callwarden::config::Config::load(&dir.config).unwrap();
    let store = callwarden::store::Store::connect(&config.database).await.unwrap();
    let key = config.retention.checkpoint_key.clone().unwrap();
    let clock = callwarden::clock::Clock::system();
    let head = callwarden::retention::record_head(&store, &clock, &key).await.unwrap().expect("a head");
    assert_eq!(head.last_id, 12);
    assert!(callwarden::retention::record_head(&store, &clock, &key).await.unwrap().is_none(), "nothing new");
    store.close().await;
    dir
}

#[tokio::test]
async fn a_signed_head_catches_a_cut_off_tail_and_a_rewritten_chain() {
    let dir = headed_log().await;
    let (ok, text) = verify(&dir).await;
    assert!(ok && text.contains("1 signed heads"), "{text}");

    // The last rows deleted: nothing inside the chain shows it, the head does.
    tamper(&dir, "DELETE FROM audit_log WHERE id >= 11").await;
    let (ok, text) = verify(&dir).await;
    assert!(!ok && text.contains("cut off the end"), "{text}");

    // Every row rewritten with recomputed hashes: the chain holds, the head does not.
    let dir = headed_log().await;
    let mut conn = connect(&dir.db_path).await;
    sqlx::query("DROP TRIGGER IF EXISTS audit_log_is_append_only_update").execute(&mut conn).await.unwrap();
    let rows = sqlx::query("SELECT * FROM audit_log ORDER BY id").fetch_all(&mut conn).await.unwrap();
    let mut prev = String::new();
    for row in &rows {
        let mut record = callwarden::store::sqlite::audit_record(row).unwrap();
        if record.id == 2 {
            record.detail = Some("nothing to see".into());
        }
        let hash = callwarden::domain::audit::chain_hash(&prev, &record);
        sqlx::query("UPDATE audit_log SET detail = ?, prev_hash = ?, hash = ? WHERE id = ?")
            .bind(&record.detail)
            .bind(&prev)
            .bind(&hash)
            .bind(record.id)
            .execute(&mut conn)
            .await
            .unwrap();
        prev = hash;
    }
    conn.close().await.unwrap();
    let (ok, text) = verify(&dir).await;
    assert!(!ok && text.contains("broken at row 12") && text.contains("rewritten"), "{text}");

    // A forged head is caught by its signature.
    let dir = headed_log().await;
    tamper(&dir, "UPDATE audit_heads SET last_id = 11").await;
    let (ok, text) = verify(&dir).await;
    assert!(!ok && text.contains("wrong signature"), "{text}");
}
