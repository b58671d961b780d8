//! Issue 14's queue figures on PostgreSQL, beside SQLite's lateness and
//! drain scenarios: `instances` daemons on a throwaway cluster (see
//! `pg_rig`), the sandbox behind the tap.
//!
//! - `pg_lateness`: `sessions` queued, deadlines spread evenly (10 a
//!   second in the report, half the quota); how late each first call of
//!   the first `measure_secs` reaches the tap, with one instance and with
//!   three.
//! - `pg_drain`: `sessions` due at the same moment, drained at the
//!   configured rate while the instance leading the TRTC bucket is killed
//!   (SIGKILL) `kills` times, evenly through the drain, each replaced by a
//!   fresh instance. The floor is what the rate allows ((sessions - 1) /
//!   rate, the GCRA ideal) plus the measured takeover gaps (signal → next
//!   call); the drain is compared with it.

use std::collections::HashMap;
use std::time::Duration;

use callwarden::clock::Clock;
use callwarden::config::DEFAULT_REQUESTS_PER_SECOND;
use callwarden::domain::Instant;

use crate::args::{PgDrainArgs, PgLatenessArgs};
use crate::figures::{Figures, micros_after};
use crate::pg_rig::{Disruption, PgRig, gap_ms};
use crate::rig::{dismiss, insert_all, tap_lateness, wait_seen, wait_settled};

/// Time to insert `n` sessions and reach the first deadline: PostgreSQL
/// takes them at several thousand a second here.
fn lead(n: usize) -> Duration {
    Duration::from_millis(3_000 + n as u64 / 2)
}

pub(crate) async fn pg_lateness(args: &PgLatenessArgs) -> anyhow::Result<Figures> {
    let rig = PgRig::start(args.instances.max(1), DEFAULT_REQUESTS_PER_SECOND).await?;
    rig.leader_of("trtc").await?;
    let clock = Clock::system();
    let now = clock.now();
    let n = args.sessions.max(1);
    let spread_ms = (args.spread_secs * 1000.0) as i64;
    let first = now.saturating_add(lead(n));
    let sessions: Vec<_> = (0..n)
        .map(|i| {
            dismiss(
                4_000_000 + i as u32,
                Instant::from_millis(first.millis() + i as i64 * spread_ms / n as i64),
                now,
            )
        })
        .collect();
    // Only the sessions due in the first window are measured; the rest stay
    // queued behind them.
    let measured_until = Instant::from_millis(first.millis() + (args.measure_secs * 1000.0) as i64);
    let deadline_of_room: HashMap<String, Instant> = sessions
        .iter()
        .filter(|s| s.deadline <= measured_until)
        .map(|s| (s.room.to_string(), s.deadline))
        .collect();
    let last_deadline = deadline_of_room.values().copied().max().unwrap_or(first);
    insert_all(&rig.store, &sessions, 1000).await?;
    drop(sessions);
    let margin = first.millis_since(clock.now());
    if margin < 1000 {
        eprintln!("warning: only {margin} ms between the end of the insert and the first deadline");
    }
    let rooms: Vec<&String> = deadline_of_room.keys().collect();
    let timeout = Duration::from_millis(last_deadline.millis_since(clock.now()).max(0) as u64)
        + Duration::from_secs(120);
    wait_seen(&rig.tap, &rooms, last_deadline, timeout).await?;

    let mut late: Vec<i64> = tap_lateness(&rig.tap, &deadline_of_room).into_values().collect();
    late.sort_unstable();
    let mut f = Figures::default();
    f.add("instances", args.instances as f64, "");
    f.add("sessions in the queue", n as f64, "");
    f.add("sessions measured (due in the first window)", deadline_of_room.len() as f64, "");
    f.add("deadlines per second", n as f64 / args.spread_secs.max(0.001), "");
    f.add_dist_us("lateness (tap arrival - deadline)", &late);
    f.add("calls before their deadline", late.iter().filter(|l| **l < 0).count() as f64, "");
    let stats = rig.sandbox.state.stats();
    f.add("sandbox rate_limited", stats.rate_limited as f64, "");
    f.add("sandbox max_per_second", f64::from(stats.max_per_second), "req");
    f.add("connections held per instance, after the run", rig.connections_per_instance().await?, "");
    rig.stop().await?;
    Ok(f)
}

pub(crate) async fn pg_drain(args: &PgDrainArgs) -> anyhow::Result<Figures> {
    let rate = DEFAULT_REQUESTS_PER_SECOND;
    let mut rig = PgRig::start(args.instances.max(1), rate).await?;
    rig.leader_of("trtc").await?;
    let clock = Clock::system();
    let now = clock.now();
    let n = args.sessions.max(1);
    let deadline = now.saturating_add(lead(n));
    let sessions: Vec<_> = (0..n).map(|i| dismiss(5_000_000 + i as u32, deadline, now)).collect();
    insert_all(&rig.store, &sessions, 1000).await?;
    drop(sessions);
    let margin = deadline.millis_since(clock.now());
    if margin < 200 {
        eprintln!("warning: only {margin} ms between the end of the insert and the deadline");
    }
    // The kills, evenly through the drain the rate allows.
    let expected = Duration::from_secs_f64(n as f64 / f64::from(rate));
    let mut kills = Vec::new();
    for k in 1..=args.kills {
        let at = deadline.saturating_add(expected.mul_f64(f64::from(k) / f64::from(args.kills + 1)));
        clock.sleep_until(at).await;
        kills.push(rig.disrupt_leader("trtc", Disruption::Kill).await?);
    }
    let timeout = expected.mul_f64(1.5) + Duration::from_secs(120);
    wait_settled(&rig.store, deadline, timeout).await?;

    let seen = rig.tap.seen();
    let mut arrivals: Vec<i64> = seen.iter().map(|s| micros_after(s.at, deadline)).collect();
    arrivals.sort_unstable();
    let drain_s = arrivals.last().copied().unwrap_or(0) as f64 / 1e6;
    let mut gaps: Vec<i64> = kills.iter().filter_map(|t| gap_ms(&seen, *t)).collect();
    gaps.sort_unstable();
    let gaps_s = gaps.iter().sum::<i64>() as f64 / 1000.0;
    let ideal_s = (n as f64 - 1.0) / f64::from(rate);
    let (doubled, dismissed) = rig.dismissals();
    let stats = rig.sandbox.state.stats();
    let mut f = Figures::default();
    f.add("instances", args.instances as f64, "");
    f.add("sessions", n as f64, "");
    f.add("daemon rate (max_requests_per_second)", f64::from(rate), "req/s");
    f.add("leader killed", kills.len() as f64, "");
    if !gaps.is_empty() {
        f.add_dist_ms("takeover gap: kill -> next call", &gaps);
    }
    f.add("takeover gaps, summed", gaps_s, "s");
    f.add("calls seen by the tap", seen.len() as f64, "");
    f.add("first call after deadline", arrivals.first().copied().unwrap_or(0) as f64 / 1000.0, "ms");
    f.add("drain: deadline -> last call leaves", drain_s, "s");
    f.add("floor: (sessions - 1) / rate + takeover gaps", ideal_s + gaps_s, "s");
    f.add("ratio drain / floor with the takeover gaps", drain_s / (ideal_s + gaps_s).max(0.001), "");
    f.add("rooms dismissed", dismissed as f64, "");
    f.add("rooms dismissed twice with success", doubled as f64, "");
    f.add("sandbox rate_limited", stats.rate_limited as f64, "");
    f.add("sandbox max_per_second", f64::from(stats.max_per_second), "req");
    rig.stop().await?;
    Ok(f)
}
