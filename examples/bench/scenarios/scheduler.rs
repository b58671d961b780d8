//! Scenario 2, scheduler: the scheduler alone, with a consumer in place of
//! enforcement; handover time relative to the deadline, and memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use anyhow::bail;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use callwarden::clock::Clock;
use callwarden::daemon::MAX_IN_FLIGHT;
use callwarden::domain::audit::AuditEntry;
use callwarden::domain::session::NewSession;
use callwarden::domain::{Instant, SessionState};
use callwarden::scheduler::Claimed;
use callwarden::scheduler::{CLAIM_LEAD, Scheduler, watch_changes};
use callwarden::stats::percentile;
use callwarden::store::Store;

use crate::args::{ProviderKind, SchedulerArgs};
use crate::figures::{Figures, micros_after};
use crate::monitors::{
    FsyncMonitor, WakeMonitor, claim_reach, claim_reach_ms, fsync_figures, mb, proc_memory_kb, stalled,
    wake_figures,
};
use crate::rig::{commit_probe, dismiss, insert_all, write_config};

/// What the consumer saw of one session.
struct Handover {
    deadline: Instant,
    handed_over: DateTime<Utc>,
    released: DateTime<Utc>,
}

pub(crate) async fn scheduler(args: &SchedulerArgs) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("callwarden.db");
    let (_, config) = write_config(dir.path(), &db, "http://127.0.0.1:9", 19, ProviderKind::Trtc)?;
    let probe_us = commit_probe(dir.path(), 100).await?;
    let store = Store::connect(&config.database).await?;
    let clock = Clock::system();
    let n = args.sessions.max(1);
    let spread_ms = (args.spread_secs * 1000.0) as i64;
    let now = clock.now();
    // The insert runs at 8,000-20,000 sessions/s here; leave room for it.
    let lead_ms = 3000 + (n as i64) * 3 / 20;
    let first = Instant::from_millis(now.millis() + lead_ms);
    let sessions: Vec<NewSession> = (0..n)
        .map(|i| {
            let deadline = Instant::from_millis(first.millis() + i as i64 * spread_ms / n as i64);
            dismiss(1 + (i % 4_000_000_000) as u32, deadline, now)
        })
        .collect();
    let last_deadline = sessions.last().map_or(first, |s| s.deadline);
    let insert_secs = insert_all(&store, &sessions, 5000).await?;
    drop(sessions);
    let margin = first.millis_since(clock.now());
    if margin < 1000 {
        eprintln!("warning: only {margin} ms between the end of the insert and the first deadline");
    }
    let pid = std::process::id().to_string();
    let (rss_before, _) = proc_memory_kb(&pid)?;

    let shutdown = CancellationToken::new();
    let changed = Arc::new(Notify::new());
    let watcher = store.change_watcher().await?;
    let watcher = tokio::spawn(watch_changes(watcher, Arc::clone(&changed), shutdown.clone()));
    let (tx, mut rx) = mpsc::unbounded_channel::<Claimed>();
    let sched = Scheduler::new(
        store.clone(),
        clock.clone(),
        Arc::clone(&config),
        Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        changed,
        tx,
    );
    let monitor = FsyncMonitor::start(dir.path())?;
    let wakes = WakeMonitor::start();
    let sched_started = clock.now();
    let sched_task = tokio::spawn(sched.run(shutdown.clone()));

    // The consumer: notes the handover, then, per batch, waits for each
    // deadline as enforcement does, notes the release, and settles the batch.
    let records = Arc::new(Mutex::new(Vec::<Handover>::with_capacity(n)));
    let settled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let batches = Arc::new(AtomicUsize::new(0));
    let consumer = {
        let (records, settled, done, batches, store) = (
            Arc::clone(&records),
            Arc::clone(&settled),
            Arc::clone(&done),
            Arc::clone(&batches),
            store.clone(),
        );
        tokio::spawn(async move {
            while let Some(Claimed { sessions, permit }) = rx.recv().await {
                let handed_over = Utc::now();
                batches.fetch_add(1, Ordering::Relaxed);
                let (records, settled, done, store, clock) = (
                    Arc::clone(&records),
                    Arc::clone(&settled),
                    Arc::clone(&done),
                    store.clone(),
                    clock.clone(),
                );
                tokio::spawn(async move {
                    let mut mine = Vec::with_capacity(sessions.len());
                    for s in &sessions {
                        while clock.now() < s.deadline {
                            clock.sleep_until(s.deadline).await;
                        }
                        mine.push(Handover { deadline: s.deadline, handed_over, released: Utc::now() });
                    }
                    let now = clock.now();
                    let entries: Vec<AuditEntry> = sessions
                        .iter()
                        .map(|s| AuditEntry {
                            lateness_ms: Some(now.millis_since(s.deadline)),
                            ..AuditEntry::new("enforced", s.id)
                        })
                        .collect();
                    let mut wait = Duration::from_millis(50);
                    while let Err(e) =
                        store.record_outcome(&entries, Some((SessionState::Enforced, None)), now).await
                    {
                        eprintln!("record_outcome: {e}; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                    drop(permit);
                    let count = mine.len();
                    if let Ok(mut r) = records.lock() {
                        r.extend(mine);
                    }
                    settled.fetch_add(count, Ordering::SeqCst);
                    done.notify_one();
                });
            }
        })
    };

    // Memory while it runs.
    let peak_rss = Arc::new(Mutex::new(rss_before));
    let sampler = {
        let (peak, pid, stop) = (Arc::clone(&peak_rss), pid.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                if let (Ok((rss, _)), Ok(mut p)) = (proc_memory_kb(&pid), peak.lock()) {
                    *p = (*p).max(rss);
                }
            }
        })
    };

    let timeout = Duration::from_millis((lead_ms + spread_ms) as u64) + Duration::from_secs(120);
    let started = StdInstant::now();
    while settled.load(Ordering::SeqCst) < n {
        if started.elapsed() > timeout {
            bail!("only {} of {n} sessions settled in {timeout:?}", settled.load(Ordering::SeqCst));
        }
        tokio::select! {
            () = done.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let (rss_after, hwm) = proc_memory_kb(&pid)?;
    shutdown.cancel();
    let fsyncs = monitor.finish();
    let wakes = wakes.finish();
    sched_task.await?;
    consumer.await?;
    watcher.await?;
    sampler.await?;
    let pending = store.state_counts().await?;
    store.close().await;
    let _ = last_deadline;

    let records = records.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
    // Sessions due before the scheduler had run a second (the insert overran
    // its allowance) measure the insert, not the scheduler: leave them out.
    let measured_from = sched_started.saturating_add(Duration::from_secs(1));
    let total_settled = records.len();
    let records: Vec<Handover> = records.into_iter().filter(|r| r.deadline >= measured_from).collect();
    let mut handover_us: Vec<i64> = records.iter().map(|r| micros_after(r.handed_over, r.deadline)).collect();
    handover_us.sort_unstable();
    let mut release_us: Vec<i64> = records.iter().map(|r| micros_after(r.released, r.deadline)).collect();
    release_us.sort_unstable();
    // What a consumer could do at best: release at max(handover, deadline).
    let mut possible_us: Vec<i64> = handover_us.iter().map(|v| (*v).max(0)).collect();
    possible_us.sort_unstable();
    let late_handovers = handover_us.iter().filter(|v| **v > 0).count();
    let late_during_stall = records
        .iter()
        .filter(|r| micros_after(r.handed_over, r.deadline) > 0)
        .filter(|r| {
            let from = r.deadline.to_datetime() - claim_reach();
            stalled(&fsyncs, from, r.handed_over, Duration::from_millis(10))
        })
        .count();
    let peak = peak_rss.lock().map(|p| *p).unwrap_or(0);

    let mut f = Figures::default();
    f.add("sessions", n as f64, "");
    f.add("sessions measured (deadline >= scheduler start + 1 s)", records.len() as f64, "");
    f.add("sessions settled", total_settled as f64, "");
    f.add("insert time", insert_secs, "s");
    let batch_count = batches.load(Ordering::Relaxed);
    f.add("claim batches handed over", batch_count as f64, "");
    f.add("sessions per claim batch (mean)", total_settled as f64 / batch_count.max(1) as f64, "");
    f.add_dist_us("handover - deadline", &handover_us);
    f.add(
        format!(
            "handover lead p50 (claimed CLAIM_LEAD {} ms to CLAIM_LEAD + CLAIM_WINDOW {} ms ahead)",
            CLAIM_LEAD.as_millis(),
            claim_reach_ms()
        ),
        -percentile(&handover_us, 50.0) as f64 / 1000.0,
        "ms",
    );
    f.add("handed over after the deadline", late_handovers as f64, "");
    f.add(
        format!("  of which an fsync > 10 ms overlapped [deadline - {} ms, handover]", claim_reach_ms()),
        late_during_stall as f64,
        "",
    );
    f.add_dist_us("possible release lateness max(handover, deadline) - deadline", &possible_us);
    f.add_dist_us("measured release lateness (consumer sleeps to deadline)", &release_us);
    f.add("RSS before scheduler start", mb(rss_before), "MB");
    f.add("RSS peak during run", mb(peak), "MB");
    f.add("RSS after run", mb(rss_after), "MB");
    f.add("RSS growth (after - before)", mb(rss_after) - mb(rss_before), "MB");
    f.add("VmHWM (whole process)", mb(hwm), "MB");
    let not_enforced: i64 = pending.iter().filter(|(s, _)| s != "enforced").map(|(_, n)| *n).sum();
    f.add("sessions not enforced at the end", not_enforced as f64, "");
    f.add_dist_us("probe before the run: one-session SQLite commit", &probe_us);
    fsync_figures(&mut f, &fsyncs);
    wake_figures(&mut f, &wakes);
    Ok(f)
}
