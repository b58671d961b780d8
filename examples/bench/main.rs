//! callwarden's benchmarks. See BENCHMARKS.md for what each figure means and
//! the results on the reference machine.
//!
//! ```text
//! cargo run --release --example bench -- lateness  [--sessions 1000] [--spread-secs 100] [--provider acs]
//! cargo run --release --example bench -- scheduler [--sessions 100000] [--spread-secs 100]
//! cargo run --release --example bench -- drain     [--sessions 2000] [--provider acs]
//! cargo run --release --example bench -- startup   [--sessions 1000000]
//! cargo run --release --example bench -- all       (every scenario at full size)
//! ```
//!
//! `--provider acs` runs lateness and drain against the sandbox's ACS Call
//! Automation API (terminate_call / remove_participant on `Room::Call`s)
//! instead of TRTC; the default is `trtc`.
//!
//! Every scenario takes `--runs N`: it runs N times, prints each run's
//! figures, then the median of each figure over the runs.
//!
//! Timing sources:
//! - deadlines are whole milliseconds of the system clock (UTC), as stored;
//! - "the call left" is measured by a TCP tap placed between the daemon and
//!   the sandbox: the wall-clock time (`Utc::now()`, microsecond resolution)
//!   at which the first bytes of each HTTP request arrive at the tap over
//!   loopback. The audit log's `lateness_ms` (whole milliseconds, floored) is
//!   reported too.

mod args;
mod figures;
mod monitors;
mod report;
mod rig;
mod tap;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use callwarden::clock::Clock;
use callwarden::daemon::MAX_IN_FLIGHT;
use callwarden::demo::percentile;
use callwarden::domain::{Instant, SessionState};
use callwarden::enforce::Claimed;
use callwarden::sandbox::SANDBOX_QUOTA;
use callwarden::scheduler::{CLAIM_LEAD, Scheduler, watch_changes};
use callwarden::store::{AuditEntry, AuditFilter, NewSession, Store};

use args::{
    Cli, DrainArgs, LatenessArgs, ProviderKind, RegistrationsArgs, Scenario, SchedulerArgs, StartupArgs,
    System,
};
use figures::{Figures, Runs, medians, micros_after, out};
use monitors::{
    FsyncMonitor, WakeMonitor, claim_reach, claim_reach_ms, cpu_ticks, fsync_figures, mb, proc_memory_kb,
    stalled, wake_figures,
};
use rig::{
    BASELINE_RATE, Measured, Rig, bench_session, commit_probe, dismiss, first_answers, insert_all,
    sibling_binary, stop_baseline, wait_seen, wait_settled, write_config,
};

/// The baseline's lateness, from its own tap: the same measure as callwarden's.
fn baseline_lateness_figures(f: &mut Figures, rig: &Rig, deadline_of_room: &HashMap<String, Instant>) {
    let mut first_seen: HashMap<String, DateTime<Utc>> = HashMap::new();
    for s in rig.tap.seen() {
        first_seen.entry(s.room).or_insert(s.at);
    }
    let mut us: Vec<i64> = deadline_of_room
        .iter()
        .filter_map(|(room, deadline)| first_seen.get(room).map(|at| micros_after(*at, *deadline)))
        .collect();
    us.sort_unstable();
    let stats = rig.sandbox.state.stats();
    f.add("baseline: calls seen by the tap", us.len() as f64, "");
    f.add_dist_us("baseline: lateness (tap arrival - deadline)", &us);
    f.add("baseline: early calls (tap arrival < deadline)", us.iter().filter(|v| **v < 0).count() as f64, "");
    f.add("baseline: sandbox rate_limited", stats.rate_limited as f64, "");
    f.add("baseline: sandbox max_per_second", f64::from(stats.max_per_second), "req");
}

// ---- 1. lateness ----------------------------------------------------------------

async fn lateness(args: &LatenessArgs) -> anyhow::Result<Figures> {
    if args.system.baseline() && args.provider != ProviderKind::Trtc {
        bail!("the baseline poller speaks TRTC only");
    }
    let clock = Clock::system();
    let now = clock.now();
    let n = args.sessions.max(1);
    let spread_ms = (args.spread_secs * 1000.0) as i64;
    let measure_ms = args.measure_secs.map_or(spread_ms, |s| ((s * 1000.0) as i64).min(spread_ms));
    let systems = usize::from(args.system.callwarden()) + usize::from(args.system.baseline());
    // Time for the probe, the inserts (each system has its own database;
    // they run at 8,000-20,000 sessions/s here) and the starts before the
    // first deadline.
    let lead_ms = 2500 + systems as i64 * (n as i64) * 3 / 20;
    let first = Instant::from_millis(now.millis() + lead_ms);
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        let deadline = Instant::from_millis(first.millis() + i as i64 * spread_ms / n as i64);
        let room = 1_000_000 + i as u32;
        let kick = args.remove_user_every > 0 && i % args.remove_user_every == args.remove_user_every - 1;
        sessions.push(bench_session(args.provider, room, i, kick, deadline, now)?);
    }
    // Only the sessions due in the first `measure_ms` are measured; the rest
    // stay queued behind them, so the queue holds all `n` throughout.
    let measured_until = Instant::from_millis(first.millis() + measure_ms);
    let measured: Vec<&NewSession> = sessions.iter().filter(|s| s.deadline <= measured_until).collect();
    let last_deadline = measured.last().map_or(first, |s| s.deadline);
    let deadline_of_room: HashMap<String, Instant> =
        measured.iter().map(|s| (s.room.id_text(), s.deadline)).collect();
    let session_room: HashMap<String, (String, Instant)> =
        measured.iter().map(|s| (s.id.to_string(), (s.room.id_text(), s.deadline))).collect();

    let rig = Rig::new(19, args.provider).await?;
    let probe_us = commit_probe(rig.dir.path(), 100).await?;
    let base_rig = if args.system.baseline() { Some(Rig::new(19, args.provider).await?) } else { None };
    if args.system.callwarden() {
        insert_all(&rig.store, &sessions, 1000).await?;
    }
    if let Some(b) = &base_rig {
        insert_all(&b.store, &sessions, 1000).await?;
    }
    let margin = first.millis_since(clock.now());
    if margin < 1000 {
        eprintln!("warning: only {margin} ms between the end of the insert and the first deadline");
    }
    let Measured { monitor, wakes, daemon, mut baseline } =
        Measured::start(&rig, base_rig.as_ref(), args.system)?;
    let timeout = Duration::from_millis((lead_ms + measure_ms) as u64) + Duration::from_secs(120);
    let rooms: Vec<&String> = deadline_of_room.keys().collect();
    if args.system.callwarden() {
        wait_seen(&rig.tap, &rooms, last_deadline, timeout).await?;
    }
    if let Some(b) = &base_rig {
        wait_seen(&b.tap, &rooms, last_deadline, timeout).await?;
    }
    let fsyncs = monitor.finish();
    let wakes = wakes.finish();
    if let Some(child) = baseline.take() {
        stop_baseline(child).await?;
    }

    let mut f = Figures::default();
    f.add("sessions in the queue", n as f64, "");
    f.add("sessions measured (due in the first window)", measured.len() as f64, "");
    f.add("deadlines per second", n as f64 / args.spread_secs.max(0.001), "");
    if let Some(b) = base_rig {
        baseline_lateness_figures(&mut f, &b, &deadline_of_room);
        b.stop_store().await;
    }
    let Some(daemon) = daemon else {
        fsync_figures(&mut f, &fsyncs);
        wake_figures(&mut f, &wakes);
        rig.stop_store().await;
        return Ok(f);
    };

    // Fine: the tap's arrival time of the first request for each room.
    let mut first_seen: HashMap<String, DateTime<Utc>> = HashMap::new();
    let seen = rig.tap.seen();
    let end_action = args.provider.end_action();
    let dismiss_calls = seen.iter().filter(|s| s.action == end_action).count();
    for s in seen {
        first_seen.entry(s.room).or_insert(s.at);
    }
    let mut fine_us: Vec<i64> = deadline_of_room
        .iter()
        .filter_map(|(room, deadline)| first_seen.get(room).map(|at| micros_after(*at, *deadline)))
        .collect();
    fine_us.sort_unstable();
    // Coarse: the audit log's lateness_ms of each session's first answer.
    let mut answers = first_answers(&rig.store).await?;
    answers.retain(|id, _| session_room.contains_key(id));
    let mut audit_ms: Vec<i64> = answers.values().filter_map(|r| r.lateness_ms).collect();
    audit_ms.sort_unstable();
    let not_enforced = answers.values().filter(|r| r.event != "enforced").count();
    let stats = rig.sandbox.state.stats();
    // Where the time goes: the first attempt row's `at` is the clock reading
    // taken just before enforcement writes the attempt (after the claim).
    let attempts =
        rig.store.audit(&AuditFilter { events: vec!["attempt".into()], ..AuditFilter::default() }).await?;
    let mut attempt_at: HashMap<String, Instant> = HashMap::new();
    for row in &attempts {
        if let (Some(id), Ok(at)) = (row.session_id.clone(), Instant::parse(&row.at)) {
            attempt_at.entry(id).or_insert(at);
        }
    }
    let mut to_attempt_ms = Vec::new();
    let mut attempt_to_call_us = Vec::new();
    let (mut late, mut late_claimed_late, mut late_during_stall) = (0usize, 0usize, 0usize);
    let mut late_cpu = 0usize;
    for (id, at) in &attempt_at {
        let Some((room, deadline)) = session_room.get(id) else { continue };
        to_attempt_ms.push(at.millis_since(*deadline));
        if let Some(left) = first_seen.get(room) {
            attempt_to_call_us.push(micros_after(*left, *at));
            if micros_after(*left, *deadline) > 10_000 {
                late += 1;
                if at.millis_since(*deadline) > -5 {
                    late_claimed_late += 1;
                }
                let from = deadline.to_datetime() - claim_reach();
                if stalled(&fsyncs, from, *left, Duration::from_millis(10)) {
                    late_during_stall += 1;
                }
                let around = deadline.to_datetime() - chrono::Duration::milliseconds(10);
                if stalled(&wakes.1, around, *left, Duration::from_millis(5)) {
                    late_cpu += 1;
                }
            }
        }
    }
    to_attempt_ms.sort_unstable();
    attempt_to_call_us.sort_unstable();

    f.add("calls seen by the tap", fine_us.len() as f64, "");
    f.add(format!("  of which {end_action}"), dismiss_calls as f64, "");
    f.add_dist_us("lateness (tap arrival - deadline)", &fine_us);
    f.add("early calls (tap arrival < deadline)", fine_us.iter().filter(|v| **v < 0).count() as f64, "");
    f.add_dist_ms("lateness (audit lateness_ms)", &audit_ms);
    f.add("first answers other than enforced", not_enforced as f64, "");
    f.add_dist_ms("breakdown: attempt write begins - deadline", &to_attempt_ms);
    f.add_dist_us("breakdown: call leaves - attempt write begins", &attempt_to_call_us);
    f.add("calls later than 10 ms", late as f64, "");
    f.add("  of which the attempt write began < 5 ms before the deadline", late_claimed_late as f64, "");
    f.add(
        format!("  of which an fsync > 10 ms overlapped [deadline - {} ms, call]", claim_reach_ms()),
        late_during_stall as f64,
        "",
    );
    f.add("  of which a 1 ms sleep woke > 5 ms late in [deadline - 10 ms, call]", late_cpu as f64, "");
    fsync_figures(&mut f, &fsyncs);
    wake_figures(&mut f, &wakes);
    f.add_dist_us("probe before the run: one-session SQLite commit", &probe_us);
    f.add("sandbox rate_limited", stats.rate_limited as f64, "");
    f.add("sandbox max_per_second", f64::from(stats.max_per_second), "req");
    rig.stop(daemon).await?;
    Ok(f)
}

// ---- 2. scheduler ---------------------------------------------------------------

/// What the consumer saw of one session.
struct Handover {
    deadline: Instant,
    handed_over: DateTime<Utc>,
    released: DateTime<Utc>,
}

async fn scheduler(args: &SchedulerArgs) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("callwarden.db");
    let (_, config) = write_config(dir.path(), &db, "http://127.0.0.1:9", 19, ProviderKind::Trtc)?;
    let probe_us = commit_probe(dir.path(), 100).await?;
    let store = Store::open(&config.database).await?;
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

// ---- 3. drain -------------------------------------------------------------------

async fn drain(args: &DrainArgs) -> anyhow::Result<Figures> {
    if args.system.baseline() && args.provider != ProviderKind::Trtc {
        bail!("the baseline poller speaks TRTC only");
    }
    let clock = Clock::system();
    let n = args.sessions.max(1);
    let now = clock.now();
    let systems = usize::from(args.system.callwarden()) + usize::from(args.system.baseline());
    let lead_ms = 3000 + systems as i64 * (n as i64) * 3 / 20;
    let deadline = Instant::from_millis(now.millis() + lead_ms);
    // TRTC: one DismissRoom per room; ACS: one participants:remove per call.
    let kick = args.provider == ProviderKind::Acs;
    let sessions = (0..n)
        .map(|i| bench_session(args.provider, 2_000_000 + i as u32, i, kick, deadline, now))
        .collect::<anyhow::Result<Vec<NewSession>>>()?;
    let rig = Rig::new(args.rate, args.provider).await?;
    let probe_us = commit_probe(rig.dir.path(), 100).await?;
    let base_rig =
        if args.system.baseline() { Some(Rig::new(args.rate, args.provider).await?) } else { None };
    if args.system.callwarden() {
        insert_all(&rig.store, &sessions, 1000).await?;
    }
    if let Some(b) = &base_rig {
        insert_all(&b.store, &sessions, 1000).await?;
    }
    drop(sessions);
    let margin = deadline.millis_since(clock.now());
    if margin < 200 {
        eprintln!("warning: only {margin} ms between the end of the insert and the deadline");
    }
    let Measured { monitor, wakes, daemon, mut baseline } =
        Measured::start(&rig, base_rig.as_ref(), args.system)?;
    let quota = f64::from(SANDBOX_QUOTA);
    let floor = n as f64 / quota;
    let slowest = f64::from(args.rate.clamp(1, BASELINE_RATE));
    let timeout =
        Duration::from_secs_f64(n as f64 / slowest * 1.5 + 60.0) + Duration::from_millis(lead_ms as u64);
    let (cw, bl) = tokio::join!(
        async {
            if args.system.callwarden() { wait_settled(&rig.store, deadline, timeout).await } else { Ok(()) }
        },
        async {
            match &base_rig {
                Some(b) => wait_settled(&b.store, deadline, timeout).await,
                None => Ok(()),
            }
        }
    );
    cw.context("callwarden")?;
    bl.context("baseline")?;
    let fsyncs = monitor.finish();
    let wakes = wakes.finish();
    if let Some(child) = baseline.take() {
        stop_baseline(child).await?;
    }

    let mut f = Figures::default();
    f.add("sessions", n as f64, "");
    f.add("daemon rate (max_requests_per_second)", f64::from(args.rate), "req/s");
    f.add("baseline rate (fixed throttle)", f64::from(BASELINE_RATE), "req/s");
    f.add("floor: sessions / quota 20", floor, "s");
    f.add("floor: sessions / daemon rate", n as f64 / f64::from(args.rate.max(1)), "s");
    if let Some(b) = base_rig {
        drain_figures(&mut f, "baseline: ", &b, deadline, n, BASELINE_RATE);
        b.stop_store().await;
    }
    let Some(daemon) = daemon else {
        fsync_figures(&mut f, &fsyncs);
        wake_figures(&mut f, &wakes);
        rig.stop_store().await;
        return Ok(f);
    };
    drain_figures(&mut f, "", &rig, deadline, n, args.rate);
    let answers = first_answers(&rig.store).await?;
    let last_recorded_ms = answers
        .values()
        .filter_map(|r| Instant::parse(&r.at).ok())
        .map(|at| at.millis_since(deadline))
        .max()
        .unwrap_or(0);
    let enforced = answers.values().filter(|r| r.event == "enforced").count();
    f.add("drain: deadline -> last outcome recorded", last_recorded_ms as f64 / 1000.0, "s");
    f.add("sessions enforced on the first call", enforced as f64, "");
    f.add_dist_us("probe before the run: one-session SQLite commit", &probe_us);
    fsync_figures(&mut f, &fsyncs);
    wake_figures(&mut f, &wakes);
    rig.stop(daemon).await?;
    Ok(f)
}

/// Drain figures of one system, from its tap and its sandbox; names start with `prefix`.
fn drain_figures(f: &mut Figures, prefix: &str, rig: &Rig, deadline: Instant, n: usize, rate: u32) {
    let seen = rig.tap.seen();
    let mut arrivals: Vec<i64> = seen.iter().map(|s| micros_after(s.at, deadline)).collect();
    arrivals.sort_unstable();
    let first_us = arrivals.first().copied().unwrap_or(0);
    let last_us = arrivals.last().copied().unwrap_or(0);
    // Closest two consecutive calls, and the most calls the tap saw in any sliding second.
    let min_gap_us = arrivals.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(0);
    let mut most_in_a_second = 0usize;
    let mut lo = 0;
    for hi in 0..arrivals.len() {
        while arrivals[hi] - arrivals[lo] >= 1_000_000 {
            lo += 1;
        }
        most_in_a_second = most_in_a_second.max(hi - lo + 1);
    }
    let stats = rig.sandbox.state.stats();
    let drain_s = last_us as f64 / 1e6;
    let rate = f64::from(rate.max(1));
    f.add(format!("{prefix}calls seen by the tap"), seen.len() as f64, "");
    f.add(format!("{prefix}first call after deadline"), first_us as f64 / 1000.0, "ms");
    f.add(format!("{prefix}drain: deadline -> last call leaves"), drain_s, "s");
    f.add(format!("{prefix}ratio drain / floor (sessions / quota 20)"), drain_s / (n as f64 / 20.0), "");
    f.add(format!("{prefix}ratio drain / (sessions / own rate)"), drain_s / (n as f64 / rate), "");
    f.add(
        format!("{prefix}ratio drain / ((sessions - 1) / own rate) (GCRA ideal)"),
        drain_s / ((n as f64 - 1.0) / rate),
        "",
    );
    f.add(format!("{prefix}closest two calls (tap)"), min_gap_us as f64 / 1000.0, "ms");
    f.add(format!("{prefix}most calls in a sliding second (tap)"), most_in_a_second as f64, "req");
    f.add(format!("{prefix}sandbox requests"), stats.requests as f64, "");
    f.add(format!("{prefix}sandbox rate_limited"), stats.rate_limited as f64, "");
    f.add(format!("{prefix}sandbox max_per_second"), f64::from(stats.max_per_second), "req");
}

// ---- 4. startup -----------------------------------------------------------------

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"))
}

/// When run by `cargo run`, builds what the scenarios start as processes:
/// the daemon, the baseline and `api_load`, in the same (release) profile.
fn build_companions() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else { return Ok(()) };
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--bin", "callwarden"])
        .args(["--example", "baseline_poller", "--example", "api_load"])
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build --release of the daemon and the bench examples failed");
    }
    Ok(())
}

/// The release binary: the one next to this example (`build_companions` rebuilt it when run by cargo).
fn release_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    // target/release/examples/bench -> target/release/callwarden
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("callwarden"))
        .context("cannot locate the release directory")?;
    if !bin.exists() {
        bail!("{} not found; build it with cargo build --release, or pass --binary", bin.display());
    }
    Ok(bin)
}

/// The database with `n` active sessions, far in the future; filled once and kept.
async fn startup_database(n: usize, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(cache_dir)?;
    let db = cache_dir.join(format!("startup-{n}.db"));
    let marker = cache_dir.join(format!("startup-{n}.done"));
    if marker.exists() && db.exists() {
        // The cache is keyed by the session count only: bring a file filled
        // at an older schema up to date here, so no measured start includes
        // a migration.
        let started = StdInstant::now();
        Store::open(&db).await?.close().await;
        let took = started.elapsed().as_secs_f64();
        if took > 1.0 {
            eprintln!("migrated the cached {} in {took:.1} s", db.display());
        }
        return Ok(db);
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    eprintln!("filling {} with {n} sessions (once; cached afterwards)", db.display());
    let store = Store::open(&db).await?;
    let base = Instant::parse("2099-01-01T00:00:00Z")?;
    let now = Clock::system().now();
    let started = StdInstant::now();
    let batch = 20_000;
    let mut i = 0;
    while i < n {
        let chunk: Vec<NewSession> = (i..(i + batch).min(n))
            .map(|k| {
                dismiss(1 + (k % 4_000_000_000) as u32, Instant::from_millis(base.millis() + k as i64), now)
            })
            .collect();
        store.insert_sessions(&chunk, Clock::system().now(), "bench").await?;
        i += chunk.len();
        if i % 200_000 == 0 {
            eprintln!("  {i} sessions in {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    store.close().await;
    std::fs::write(&marker, format!("{n} sessions, filled in {:.1} s\n", started.elapsed().as_secs_f64()))?;
    Ok(db)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What one start of a long-running process showed.
struct ProcessRun {
    startup: Duration,
    rss_kb: u64,
    hwm_kb: u64,
    rss_end_kb: u64,
    hwm_end_kb: u64,
    idle_wall: f64,
    cpu_pct: f64,
    stop: Duration,
    success: bool,
    warnings: usize,
}

/// Spawns `cmd`, times it to the first stderr line containing `ready`, lets
/// it settle, reads its memory, measures its CPU over an idle window, then
/// stops it with SIGTERM.
async fn measure_process(
    mut cmd: Command,
    ready: &'static str,
    args: &StartupArgs,
) -> anyhow::Result<ProcessRun> {
    let spawned = StdInstant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the process under test")?;
    let pid = child.id();
    let stderr = child.stderr.take().context("no stderr")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(ready) {
                let _ = ready_tx.send(spawned.elapsed());
            }
            lines.push(line);
        }
        lines
    });
    let waited = tokio::task::spawn_blocking(move || ready_rx.recv_timeout(Duration::from_secs(120))).await?;
    let Ok(startup) = waited else {
        let _ = child.kill();
        let _ = child.wait();
        let lines = reader.join().unwrap_or_default();
        bail!("the process did not report {ready:?} within 120 s; its log:\n{}", lines.join("\n"));
    };
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let (rss_kb, hwm_kb) = proc_memory_kb(&pid.to_string())?;
    let ticks_before = cpu_ticks(pid)?;
    let idle_started = StdInstant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
    let ticks_after = cpu_ticks(pid)?;
    let idle_wall = idle_started.elapsed().as_secs_f64();
    let (rss_end_kb, hwm_end_kb) = proc_memory_kb(&pid.to_string())?;
    let cpu_pct = (ticks_after - ticks_before) as f64 / clock_ticks_per_second() / idle_wall * 100.0;

    let stop_started = StdInstant::now();
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let stopped = tokio::task::spawn_blocking(move || child.wait()).await??;
    let stop = stop_started.elapsed();
    let lines = reader.join().unwrap_or_default();
    let warnings = lines.iter().filter(|l| l.contains("ERROR") || l.contains("WARN")).count();
    Ok(ProcessRun {
        startup,
        rss_kb,
        hwm_kb,
        rss_end_kb,
        hwm_end_kb,
        idle_wall,
        cpu_pct,
        stop,
        success: stopped.success(),
        warnings,
    })
}

async fn startup(args: &StartupArgs, binary: &Path, db: &Path) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let (config_path, _) = write_config(dir.path(), db, "http://127.0.0.1:9", 19, ProviderKind::Trtc)?;
    let db_mb = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;

    let mut cmd = Command::new(binary);
    cmd.arg("--config").arg(&config_path).arg("run").env("RUST_LOG", "info");
    let d = measure_process(cmd, "callwarden running", args).await?;

    let mut f = Figures::default();
    f.add("active sessions in the database", args.sessions as f64, "");
    f.add("database file", db_mb, "MB");
    f.add("startup: spawn -> \"callwarden running\"", d.startup.as_secs_f64() * 1000.0, "ms");
    f.add(format!("VmRSS after {:.0} s", args.settle_secs), mb(d.rss_kb), "MB");
    f.add(format!("VmHWM after {:.0} s", args.settle_secs), mb(d.hwm_kb), "MB");
    f.add("VmRSS at the end of the idle window", mb(d.rss_end_kb), "MB");
    f.add("VmHWM at the end of the idle window", mb(d.hwm_end_kb), "MB");
    f.add(format!("idle CPU over {:.0} s (% of one core)", d.idle_wall), d.cpu_pct, "%");
    f.add("stop: SIGTERM -> exit", d.stop.as_secs_f64() * 1000.0, "ms");
    f.add("exit status success", if d.success { 1.0 } else { 0.0 }, "");
    f.add("warnings and errors logged", d.warnings as f64, "");

    if args.baseline {
        // The baseline over the same database: its first poll finds nothing due.
        let mut cmd = Command::new(sibling_binary("baseline_poller")?);
        cmd.arg("--database").arg(db).arg("--endpoint").arg("http://127.0.0.1:9");
        let b = measure_process(cmd, "baseline running", args).await?;
        f.add("baseline: startup: spawn -> \"baseline running\"", b.startup.as_secs_f64() * 1000.0, "ms");
        f.add(format!("baseline: VmRSS after {:.0} s", args.settle_secs), mb(b.rss_kb), "MB");
        f.add("baseline: VmRSS at the end of the idle window", mb(b.rss_end_kb), "MB");
        f.add("baseline: VmHWM at the end of the idle window", mb(b.hwm_end_kb), "MB");
        f.add(format!("baseline: idle CPU over {:.0} s (% of one core)", b.idle_wall), b.cpu_pct, "%");
    }
    Ok(f)
}

// ---- 5. registrations through plain SQL -------------------------------------------

/// The plain-SQL insert a user's application would run: policy and room
/// only; the daemon adopts the row (provider, deadline = start + max_duration).
const SQL_INSERT: &str = "INSERT INTO sessions (policy, room_id, room_kind) VALUES ('end', ?, 'numeric')";

async fn registrations(args: &RegistrationsArgs) -> anyhow::Result<Figures> {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteSynchronous};
    let rig = Rig::new(19, ProviderKind::Trtc).await?;
    let daemon = rig.start_daemon();
    // The application's own connection, as durable as the daemon's.
    let app = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&rig.config.database)
                .busy_timeout(Duration::from_secs(5))
                .synchronous(SqliteSynchronous::Full),
        )
        .await?;
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

// ---- 6. the session API (examples/api_load) -----------------------------------------

/// Runs `api_load` as its own process and reads its per-run lines back.
fn api_load(seconds: u64, runs: usize) -> anyhow::Result<Runs> {
    let bin = sibling_binary("api_load")?;
    let out = Command::new(&bin)
        .args(["--seconds", &seconds.to_string(), "--runs", &runs.max(1).to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprint!("{text}");
    if !out.status.success() {
        bail!("api_load failed: {}", out.status);
    }
    let mut all = Vec::new();
    for line in text.lines() {
        if line.starts_with("run ") {
            all.push(Figures::default());
        }
        let Some(f) = all.last_mut() else { continue };
        for (label, name) in
            [("  registrations", "API registrations"), ("  webhook events", "TRTC webhook events")]
        {
            if let Some(rest) = line.strip_prefix(label) {
                let rate = rest.split_whitespace().next().and_then(|t| t.trim_end_matches("/s").parse().ok());
                f.add(format!("{name}/s"), rate.context("api_load: no rate")?, "/s");
                f.add(format!("{name}: errors"), number_after(rest, "(errors ").unwrap_or(-1.0), "");
                f.add(format!("{name}: latency p50"), number_after(rest, "p50 ").unwrap_or(-1.0), "ms");
                f.add(format!("{name}: latency p99"), number_after(rest, "p99 ").unwrap_or(-1.0), "ms");
                f.add(
                    format!("{name}: daemon CPU (cores)"),
                    number_after(rest, "daemon ").unwrap_or(-1.0),
                    "",
                );
                f.add(
                    format!("{name}: load generator CPU (cores)"),
                    number_after(rest, "load generator ").unwrap_or(-1.0),
                    "",
                );
            }
        }
        if let Some(rest) = line.strip_prefix("  enforced meanwhile: ") {
            f.add("enforcement calls meanwhile", number_after(rest, "").unwrap_or(-1.0), "");
            f.add("quota errors meanwhile", number_after(rest, "quota errors ").unwrap_or(-1.0), "");
        }
    }
    if all.is_empty() {
        bail!("api_load printed no runs");
    }
    for (k, f) in all.iter().enumerate() {
        f.print(&format!("[api run {}/{}]", k + 1, all.len()));
    }
    Ok(Runs { median: medians(&all), runs: all })
}

/// The number that follows `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    digits.parse().ok()
}

// ---- driver ---------------------------------------------------------------------

async fn repeat<F, Fut>(name: &str, runs: usize, mut run: F) -> anyhow::Result<Runs>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Figures>>,
{
    let runs = runs.max(1);
    let mut all = Vec::with_capacity(runs);
    for k in 1..=runs {
        let started = StdInstant::now();
        let f = run().await.with_context(|| format!("{name} run {k}"))?;
        f.print(&format!("[{name} run {k}/{runs}] ({:.1} s)", started.elapsed().as_secs_f64()));
        all.push(f);
    }
    let median = medians(&all);
    if runs > 1 {
        median.print(&format!("== {name}: median of {runs} runs =="));
    }
    Ok(Runs { runs: all, median })
}

fn startup_cache(args: &StartupArgs) -> PathBuf {
    args.cache_dir.clone().unwrap_or_else(|| target_dir().join("bench-cache"))
}

async fn run_startup(args: &StartupArgs, runs: usize) -> anyhow::Result<Runs> {
    let binary = release_binary(args.binary.as_deref())?;
    let db = startup_database(args.sessions, &startup_cache(args)).await?;
    repeat("startup", runs, || startup(args, &binary, &db)).await
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let runs = cli.runs;
    build_companions()?;
    match cli.scenario {
        Scenario::Lateness(a) => {
            let name = format!("lateness ({})", a.provider.name());
            drop(repeat(&name, runs, || lateness(&a)).await?)
        }
        Scenario::Scheduler(a) => drop(repeat("scheduler", runs, || scheduler(&a)).await?),
        Scenario::Drain(a) => {
            let name = format!("drain ({})", a.provider.name());
            drop(repeat(&name, runs, || drain(&a)).await?)
        }
        Scenario::Startup(a) => drop(run_startup(&a, runs).await?),
        Scenario::Registrations(a) => drop(repeat("registrations", runs, || registrations(&a)).await?),
        Scenario::Report(a) => report::run(&a, runs).await?,
        Scenario::All(all) => {
            let l = LatenessArgs {
                sessions: 1000,
                spread_secs: 100.0,
                measure_secs: None,
                system: System::Callwarden,
                remove_user_every: 10,
                provider: ProviderKind::Trtc,
            };
            let s = SchedulerArgs { sessions: 100_000, spread_secs: 100.0 };
            let d = DrainArgs {
                sessions: 2000,
                rate: 19,
                provider: ProviderKind::Trtc,
                system: System::Callwarden,
            };
            let st = StartupArgs {
                sessions: 1_000_000,
                cache_dir: all.cache_dir,
                binary: None,
                settle_secs: 3.0,
                idle_secs: 10.0,
                baseline: false,
            };
            let results = [
                ("lateness", repeat("lateness", runs, || lateness(&l)).await?),
                ("scheduler", repeat("scheduler", runs, || scheduler(&s)).await?),
                ("drain", repeat("drain", runs, || drain(&d)).await?),
                ("startup", run_startup(&st, runs).await?),
            ];
            out(&format!("\n==== summary ({runs} run(s) each; medians when more than one) ===="));
            for (name, r) in &results {
                r.median.print(&format!("{name}:"));
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    callwarden::telemetry::init(callwarden::telemetry::LogFormat::Human, "warn");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}
