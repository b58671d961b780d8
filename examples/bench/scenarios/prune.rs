//! Scenario 8, prune: the daemon starts with `retention:` on a database
//! holding a backlog of settled sessions and audit rows older than the
//! periods (see `prune_db`), so its first prune (60 s after start) runs
//! while sessions fall due at 10 a second. How long does the prune keep
//! other writers out (the writer probe), how long does it take, and are the
//! sessions due meanwhile still enforced on time?

use std::process::Command;
use std::time::{Duration, Instant as StdInstant};

use callwarden::clock::Clock;
use callwarden::domain::Instant;
use callwarden::retention::FIRST_PRUNE_AFTER;

use crate::args::{ProviderKind, PruneArgs};
use crate::daemon_process::{DaemonProcess, field};
use crate::due::Due;
use crate::figures::Figures;
use crate::monitors::{FsyncMonitor, WakeMonitor, fsync_figures, wake_figures};
use crate::rig::{Rig, first_answers_since, insert_all, tap_lateness, wait_seen};
use crate::scenarios::prune_db::{RETENTION_DAYS, prune_database};
use crate::scenarios::startup::{release_binary, target_dir};
use crate::writer_probe::{WriterProbe, wait_figures};

const SESSIONS_DONE: &str = "retention: pruned settled sessions";
const AUDIT_DONE: &str = "retention: pruned the audit log";

fn retention_config() -> String {
    format!(
        "retention:\n  sessions: {RETENTION_DAYS}d\n  audit: {RETENTION_DAYS}d\n  \
         checkpoint_key: bench-checkpoint-key-0123456789\n"
    )
}

/// Settled sessions in the database now (the store's per-state counts).
async fn settled(rig: &Rig) -> anyhow::Result<i64> {
    let counts = rig.store.state_counts().await?;
    Ok(counts
        .iter()
        .filter(|(s, _)| !matches!(s.as_str(), "active" | "enforcing" | "accepted"))
        .map(|(_, n)| n)
        .sum())
}

pub(crate) async fn prune(args: &PruneArgs) -> anyhow::Result<Figures> {
    let cache = args.cache_dir.clone().unwrap_or_else(|| target_dir().join("bench-cache"));
    let seed = prune_database(args.sessions, args.recent_sessions, &cache).await?;
    let db_mb = std::fs::metadata(&seed).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let copy_started = StdInstant::now();
    let rig = Rig::with(19, ProviderKind::Trtc, &retention_config(), Some(&seed)).await?;
    let copy_secs = copy_started.elapsed().as_secs_f64();
    WriterProbe::prepare(&rig.db).await?;
    let clock = Clock::system();
    let now = clock.now();
    // Due from 10 s after start (well before the prune) for as long as the
    // prune may take; the run stops a few seconds after the prune ends.
    let first = Instant::from_millis(now.millis() + 10_000);
    let due = Due::new(first, FIRST_PRUNE_AFTER.as_secs_f64() + args.max_secs, 1_000_000, now)?;
    insert_all(&rig.store, &due.sessions, 1000).await?;
    let settled_before = settled(&rig).await?;

    let monitor = FsyncMonitor::start(rig.dir.path())?;
    let wakes = WakeMonitor::start();
    let daemon = DaemonProcess::start(&rig.config_path, rig.dir.path()).await?;
    let probe = WriterProbe::start(rig.db.clone());
    let ready = daemon.ready;
    // The prune task's first tick is FIRST_PRUNE_AFTER after the task is
    // spawned, right after the ready line.
    let prune_start = Instant::floor(daemon.ready).saturating_add(FIRST_PRUNE_AFTER);
    let mut first_drop = None;
    let mut previous = settled_before;
    let limit = Duration::from_secs_f64(FIRST_PRUNE_AFTER.as_secs_f64() + args.max_secs);
    let waited = StdInstant::now();
    let finished = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = settled(&rig).await?;
        if first_drop.is_none() && n < previous {
            first_drop = Some(clock.now());
        }
        previous = n;
        if let Some(line) = daemon.find(AUDIT_DONE) {
            break Some(line);
        }
        if waited.elapsed() > limit {
            break None;
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stop_at = clock.now();
    let wal = format!("{}-wal", rig.db.display());
    let wal_mb = std::fs::metadata(wal).map_or(0, |m| m.len()) as f64 / 1e6;
    let rooms = due.rooms_in(first, Instant::from_millis(stop_at.millis() - 1000));
    let seen = wait_seen(&rig.tap, &rooms, stop_at, Duration::from_secs(30)).await;
    let waits = probe.finish();
    let fsyncs = monitor.finish();
    let wakes = wakes.finish();
    let stopped = daemon.stop().await?;
    stopped.save_log("prune");
    seen?;
    let waits = waits?;
    let settled_after = settled(&rig).await?;

    let sessions_line = stopped.lines.iter().find(|(_, l)| l.contains(SESSIONS_DONE)).cloned();
    let prune_end = finished.as_ref().map_or(stop_at, |(at, _)| Instant::floor(*at));
    let sessions_end = sessions_line.as_ref().map_or(prune_end, |(at, _)| Instant::floor(*at));
    let secs = |from: Instant, to: Instant| to.millis_since(from) as f64 / 1000.0;
    let mut f = Figures::default();
    f.add("old settled sessions (older than the retention period)", args.sessions as f64, "");
    f.add("old audit rows", 2.0 * args.sessions as f64, "");
    f.add("recent settled sessions (kept)", args.recent_sessions as f64, "");
    f.add("database file", db_mb, "MB");
    f.add("copy of the cached database (before the run)", copy_secs, "s");
    f.add("prune finished", if finished.is_some() { 1.0 } else { 0.0 }, "");
    f.add("WAL file at the end of the wait", wal_mb, "MB");
    f.add(
        "prune: start (ready + 60 s) -> audit log pruned, or the end of the wait",
        secs(prune_start, prune_end),
        "s",
    );
    f.add("prune: start -> settled sessions pruned", secs(prune_start, sessions_end), "s");
    f.add(
        "prune: settled sessions pruned -> audit log pruned, or the end of the wait",
        secs(sessions_end, prune_end),
        "s",
    );
    if let Some((_, line)) = &sessions_line {
        f.add("sessions pruned (daemon log)", field(line, "sessions").unwrap_or(0.0), "");
    }
    if let Some((_, line)) = &finished {
        f.add("audit rows pruned (daemon log)", field(line, "rows").unwrap_or(0.0), "");
    }
    if let Some(at) = first_drop {
        f.add("first settled session gone, after the expected start", secs(prune_start, at), "s");
    }
    f.add(
        "settled sessions gone (net of those enforced meanwhile)",
        (settled_before - settled_after) as f64,
        "",
    );
    let dt = Instant::to_datetime;
    wait_figures(&mut f, "before the prune", &waits, ready, dt(prune_start));
    wait_figures(&mut f, "during the prune", &waits, dt(prune_start), dt(prune_end));
    wait_figures(&mut f, "during the sessions phase", &waits, dt(prune_start), dt(sessions_end));
    wait_figures(&mut f, "during the audit phase", &waits, dt(sessions_end), dt(prune_end));
    let lateness = tap_lateness(&rig.tap, &due.deadline_of_room);
    due.figures(&mut f, "due before the prune", &lateness, first, prune_start);
    due.figures(&mut f, "due during the prune", &lateness, prune_start, prune_end);
    due.figures(&mut f, "due during the sessions phase", &lateness, prune_start, sessions_end);
    due.figures(&mut f, "due during the audit phase", &lateness, sessions_end, prune_end);
    let mut answers = first_answers_since(&rig.store, Some(now)).await?;
    let ids = due.ids_in(first, stop_at);
    answers.retain(|id, _| ids.contains(id));
    f.add(
        "first answers other than enforced",
        answers.values().filter(|r| r.event != "enforced").count() as f64,
        "",
    );
    stopped.figures(&mut f, first.to_datetime(), stop_at.to_datetime());
    fsync_figures(&mut f, &fsyncs);
    wake_figures(&mut f, &wakes);
    if finished.is_some() {
        f.add("audit verify after the prune (1 = the chain holds)", verify(&rig.config_path)?, "");
    }
    rig.stop_store().await;
    Ok(f)
}

/// `callwarden audit verify` on the pruned database: 1 when the chain
/// holds from the new checkpoint on, 0 when it reports a break.
fn verify(config: &std::path::Path) -> anyhow::Result<f64> {
    let out =
        Command::new(release_binary(None)?).arg("--config").arg(config).args(["audit", "verify"]).output()?;
    if !out.status.success() {
        eprintln!("audit verify failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(if out.status.success() { 1.0 } else { 0.0 })
}
