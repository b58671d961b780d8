//! Scenario 7, bulk insert: an application's own connection inserts
//! `--rows` plain-SQL rows in transactions of `--batch`, as fast as one
//! writer can go, while sessions registered beforehand fall due at 10 a
//! second. Are those still enforced on time, does the daemon adopt every
//! row, and does its scheduler loop keep pinging systemd's watchdog? A
//! writer probe (see `writer_probe`) shows how long a writer that polls the
//! lock every 0.5 ms waits meanwhile.

use std::time::{Duration, Instant as StdInstant};

use callwarden::clock::Clock;
use callwarden::domain::Instant;

use crate::args::{BulkInsertArgs, ProviderKind};
use crate::daemon_process::{DaemonProcess, field};
use crate::due::Due;
use crate::figures::Figures;
use crate::monitors::{FsyncMonitor, WakeMonitor, fsync_figures, wake_figures};
use crate::rig::{Rig, first_answers, insert_all, tap_lateness, wait_seen};
use crate::scenarios::registrations::SQL_INSERT;
use crate::writer_probe::{WriterProbe, wait_figures};

/// The daemon's log line for each adopted slice.
const ADOPTED: &str = "adopted sessions inserted with SQL";

pub(crate) async fn bulk_insert(args: &BulkInsertArgs) -> anyhow::Result<Figures> {
    let clock = Clock::system();
    let rig = Rig::new(19, ProviderKind::Trtc).await?;
    // The insert begins at the first deadline.
    let now = clock.now();
    let first = Instant::from_millis(now.millis() + 3000);
    let due = Due::new(first, args.spread_secs, 1_000_000, now)?;
    insert_all(&rig.store, &due.sessions, 1000).await?;
    WriterProbe::prepare(&rig.db).await?;
    let monitor = FsyncMonitor::start(rig.dir.path())?;
    let wakes = WakeMonitor::start();
    let daemon = DaemonProcess::start(&rig.config_path, rig.dir.path()).await?;
    // The application's own connection, as durable as the daemon's.
    let app = rig.app_connection().await?;
    clock.sleep_until(first).await;
    // An outside writer that retries every 0.5 ms: how long a writer that
    // polls the lock closely waits, next to the daemon's (SQLite's busy
    // handler, which sleeps up to 100 ms between tries).
    let probe = WriterProbe::start(rig.db.clone());

    let insert_started = clock.now();
    let started = StdInstant::now();
    let batch = args.batch.max(1);
    let mut inserted = 0usize;
    while inserted < args.rows {
        let mut tx = app.begin().await?;
        for _ in 0..batch.min(args.rows - inserted) {
            inserted += 1;
            sqlx::query(SQL_INSERT).bind((10_000_000 + inserted).to_string()).execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    let insert_secs = started.elapsed().as_secs_f64();
    let insert_ended = clock.now();

    // Adoption: until no row is left unadopted, or `--adopt-secs`.
    let unadopted = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sessions WHERE state = 'active' AND (provider IS NULL OR deadline IS NULL)",
        )
        .fetch_one(&app)
    };
    let mut left = unadopted().await?;
    while left > 0 && started.elapsed().as_secs_f64() < insert_secs + args.adopt_secs {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = unadopted().await?;
    }
    let refused: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sessions WHERE state = 'failed' AND provider IS NULL")
            .fetch_one(&app)
            .await?;
    app.close().await;
    let waits = probe.finish()?;
    // Every due session called (those due after the adoption too).
    let last = due.sessions.last().map_or(first, |s| s.deadline);
    let rooms: Vec<&String> = due.deadline_of_room.keys().collect();
    let timeout = Duration::from_secs_f64(args.spread_secs + 120.0);
    let seen = wait_seen(&rig.tap, &rooms, Instant::from_millis(last.millis() + 1000), timeout).await;
    let fsyncs = monitor.finish();
    let wakes = wakes.finish();
    let stopped = daemon.stop().await?;
    stopped.save_log("bulk_insert");
    seen?;

    // The adoption's end: the last slice's log line (when it was read).
    let adopted_lines: Vec<_> = stopped.lines.iter().filter(|(_, l)| l.contains(ADOPTED)).collect();
    let adopted_logged: f64 = adopted_lines.iter().filter_map(|(_, l)| field(l, "sessions")).sum();
    let adoption_end = adopted_lines.last().map(|(at, _)| Instant::floor(*at));
    let lateness = tap_lateness(&rig.tap, &due.deadline_of_room);
    let mut answers = first_answers(&rig.store).await?;
    let ids = due.ids_in(first, Instant::LATEST);
    answers.retain(|id, _| ids.contains(id));
    let not_enforced = answers.values().filter(|r| r.event != "enforced").count();

    let mut f = Figures::default();
    f.add("rows inserted with plain SQL", inserted as f64, "");
    f.add("rows per application transaction", batch as f64, "");
    f.add("insert: duration", insert_secs, "s");
    f.add("insert: rows/s", inserted as f64 / insert_secs, "/s");
    f.add("rows adopted (daemon log)", adopted_logged, "");
    f.add("rows refused by the daemon", refused as f64, "");
    f.add("rows still unadopted at the end", left as f64, "");
    f.add("all rows adopted", if left == 0 { 1.0 } else { 0.0 }, "");
    if let Some(end) = adoption_end {
        f.add(
            "adoption: insert start -> last row adopted",
            end.millis_since(insert_started) as f64 / 1000.0,
            "s",
        );
        f.add(
            "adoption: insert end -> last row adopted",
            end.millis_since(insert_ended) as f64 / 1000.0,
            "s",
        );
        let secs = end.millis_since(insert_started) as f64 / 1000.0;
        f.add("adoption: rows/s (insert start -> last row adopted)", adopted_logged / secs.max(0.001), "/s");
    }
    let adoption_end = adoption_end.unwrap_or(insert_ended).max(insert_ended);
    due.figures(&mut f, "due during the insert", &lateness, insert_started, insert_ended);
    due.figures(&mut f, "due after the insert, while adopting", &lateness, insert_ended, adoption_end);
    due.figures(&mut f, "due after the adoption", &lateness, adoption_end, Instant::LATEST);
    f.add("first answers other than enforced", not_enforced as f64, "");
    let (from, to) = (insert_started.to_datetime(), insert_ended.to_datetime());
    wait_figures(&mut f, "writer probe during the insert", &waits, from, to);
    f.add("sandbox rate_limited", rig.sandbox.state.stats().rate_limited as f64, "");
    stopped.figures(&mut f, first.to_datetime(), last.to_datetime());
    fsync_figures(&mut f, &fsyncs);
    wake_figures(&mut f, &wakes);
    rig.stop_store().await;
    Ok(f)
}
