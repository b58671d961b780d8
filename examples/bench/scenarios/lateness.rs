//! Scenario 1, lateness: daemon + sandbox under the quota, deadlines spread
//! evenly; how late each call leaves, and where the time goes.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;
use chrono::{DateTime, Utc};

use callwarden::clock::Clock;
use callwarden::domain::Instant;
use callwarden::domain::session::NewSession;
use callwarden::store::AuditFilter;

use crate::args::{LatenessArgs, ProviderKind};
use crate::figures::{Figures, micros_after};
use crate::monitors::{claim_reach, claim_reach_ms, fsync_figures, stalled, wake_figures};
use crate::rig::{
    Measured, Rig, bench_session, commit_probe, first_answers, insert_all, stop_baseline, wait_seen,
};

pub(crate) async fn lateness(args: &LatenessArgs) -> anyhow::Result<Figures> {
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
