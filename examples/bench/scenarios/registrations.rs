//! Scenario 5, registrations: rows inserted through plain SQL as an
//! application would, and the daemon's adoption of them.

use std::time::{Duration, Instant as StdInstant};

use crate::args::{ProviderKind, RegistrationsArgs};
use crate::figures::Figures;
use crate::rig::Rig;

/// The plain-SQL insert a user's application would run: policy and room
/// only; the daemon adopts the row (provider, deadline = start + max_duration).
pub(crate) const SQL_INSERT: &str =
    "INSERT INTO sessions (policy, room_id, room_kind) VALUES ('end', ?, 'numeric')";

pub(crate) async fn registrations(args: &RegistrationsArgs) -> anyhow::Result<Figures> {
    let rig = Rig::new(19, ProviderKind::Trtc).await?;
    let daemon = rig.start_daemon();
    // The application's own connection, as durable as the daemon's.
    let app = rig.app_connection().await?;
    let phase = Duration::from_secs_f64(args.seconds);
    let started = StdInstant::now();
    let mut room = 0u64;
    while started.elapsed() < phase {
        room += 1;
        sqlx::query(SQL_INSERT).bind(room.to_string()).execute(&app).await?;
    }
    let single_rate = room as f64 / started.elapsed().as_secs_f64();
    let batched_started = StdInstant::now();
    let mut batched_rows = 0usize;
    while batched_started.elapsed() < phase {
        let mut tx = app.begin().await?;
        for _ in 0..args.batch.max(1) {
            room += 1;
            sqlx::query(SQL_INSERT).bind(room.to_string()).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        batched_rows += args.batch.max(1);
    }
    let batched_rate = batched_rows as f64 / batched_started.elapsed().as_secs_f64();
    let inserts_done = started.elapsed().as_secs_f64();
    let unadopted = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sessions WHERE state = 'active' AND (provider IS NULL OR deadline IS NULL)",
        )
        .fetch_one(&app)
    };
    let wait_started = StdInstant::now();
    let mut left = unadopted().await?;
    while left > 0 && wait_started.elapsed() < Duration::from_secs_f64(args.adopt_secs) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        left = unadopted().await?;
    }
    let adopted = room as f64 - left as f64;
    let elapsed = started.elapsed().as_secs_f64();
    app.close().await;
    rig.stop(daemon).await?;

    let mut f = Figures::default();
    f.add("plain SQL, one row per transaction: registrations/s", single_rate, "/s");
    f.add("plain SQL, batched transactions: registrations/s", batched_rate, "/s");
    f.add("rows per batched transaction", args.batch as f64, "");
    f.add("rows inserted", room as f64, "");
    f.add("insert phases", inserts_done, "s");
    f.add("rows adopted by the daemon (first insert -> end of wait)", adopted, "");
    f.add("adoption: sessions/s (first insert -> end of wait)", adopted / elapsed, "/s");
    f.add("rows still unadopted at the end", left as f64, "");
    Ok(f)
}
