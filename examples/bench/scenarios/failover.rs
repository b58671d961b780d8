//! Issue 14, several instances on PostgreSQL: three daemon processes share
//! a throwaway cluster's database (`tests/support/pg_cluster.rs`), the
//! sandbox behind the tap. A steady stream of deadlines (10 a second) runs
//! while the instance leading the TRTC bucket is killed with SIGKILL
//! `kills` times, then stopped with SIGTERM `stops` times, a fresh instance
//! started in its place each time, so three are always running.
//!
//! The gap of a disruption is when the tap saw the first provider call
//! after it, minus the moment of the signal. Also: whether any room was
//! dismissed twice with success, quota errors, and the lateness of every
//! session's first call (the gaps included).

use std::collections::HashMap;
use std::time::Duration;

use callwarden::clock::Clock;
use callwarden::domain::Instant;

use crate::args::FailoverArgs;
use crate::figures::Figures;
use crate::pg_rig::{Disruption, PgRig, gap_ms};
use crate::rig::{dismiss, insert_all, tap_lateness, wait_settled};

/// Deadlines per second: half the quota, so no backlog hides a gap.
const PER_SECOND: u32 = 10;

pub(crate) async fn failover(args: &FailoverArgs) -> anyhow::Result<Figures> {
    let mut rig = PgRig::start(3, callwarden::config::DEFAULT_REQUESTS_PER_SECOND).await?;
    let disruptions = args.kills + args.stops;
    let cycle = Duration::from_secs_f64(args.cycle_secs);
    let clock = Clock::system();
    let now = clock.now();
    let first = now.saturating_add(Duration::from_secs(3));
    let span_ms = (f64::from(disruptions) * args.cycle_secs + 4.0) * 1000.0;
    let n = (span_ms / 1000.0 * f64::from(PER_SECOND)) as u32;
    let step = 1000 / i64::from(PER_SECOND);
    let sessions: Vec<_> = (0..n)
        .map(|i| dismiss(3_000_000 + i, Instant::from_millis(first.millis() + i64::from(i) * step), now))
        .collect();
    let deadline_of_room: HashMap<String, Instant> =
        sessions.iter().map(|s| (s.room.to_string(), s.deadline)).collect();
    let last_deadline = sessions.last().map_or(first, |s| s.deadline);
    insert_all(&rig.store, &sessions, 1000).await?;
    drop(sessions);

    tokio::time::sleep(first.saturating_add(Duration::from_secs(2)).duration_from(clock.now())).await;
    let mut kills = Vec::new();
    let mut stops = Vec::new();
    for k in 0..disruptions {
        tokio::time::sleep(cycle / 2).await;
        if k < args.kills {
            kills.push(rig.disrupt_leader("trtc", Disruption::Kill).await?);
        } else {
            stops.push(rig.disrupt_leader("trtc", Disruption::Stop).await?);
        }
        tokio::time::sleep(cycle / 2).await;
    }
    let timeout = Duration::from_millis(last_deadline.millis_since(clock.now()).max(0) as u64 + 120_000);
    wait_settled(&rig.store, last_deadline, timeout).await?;

    let seen = rig.tap.seen();
    let mut f = Figures::default();
    for (name, at) in [("kill -9", &kills), ("clean stop", &stops)] {
        let mut gaps: Vec<i64> = at.iter().filter_map(|t| gap_ms(&seen, *t)).collect();
        gaps.sort_unstable();
        f.add(format!("disruptions: {name}"), at.len() as f64, "");
        if !gaps.is_empty() {
            f.add_dist_ms(&format!("failover after {name}: signal -> next call"), &gaps);
        }
    }
    let mut late: Vec<i64> = tap_lateness(&rig.tap, &deadline_of_room).into_values().collect();
    late.sort_unstable();
    f.add_dist_us("lateness of first calls (tap), gaps included", &late);
    let early = late.iter().filter(|l| **l < 0).count();
    f.add("calls before their deadline", early as f64, "");
    let (doubled, dismissed) = rig.dismissals();
    f.add("rooms dismissed twice with success", doubled as f64, "");
    f.add("rooms dismissed", dismissed as f64, "");
    f.add("sessions", f64::from(n), "");
    let stats = rig.sandbox.state.stats();
    f.add("sandbox rate_limited", stats.rate_limited as f64, "");
    f.add("sandbox max_per_second", f64::from(stats.max_per_second), "req");
    f.add("connections held per instance, after the run", rig.connections_per_instance().await?, "");
    rig.stop().await?;
    Ok(f)
}
