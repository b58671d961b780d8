//! Scenario 3, drain: many sessions with the same deadline, drained at the
//! provider's rate; how close the drain comes to the quota's floor.

use std::time::Duration;

use anyhow::{Context, bail};

use callwarden::clock::Clock;
use callwarden::domain::Instant;
use callwarden::domain::session::NewSession;
use callwarden::sandbox::SANDBOX_QUOTA;

use crate::args::{DrainArgs, ProviderKind};
use crate::figures::{Figures, micros_after};
use crate::monitors::{fsync_figures, wake_figures};
use crate::rig::{
    BASELINE_RATE, Measured, Rig, bench_session, commit_probe, first_answers, insert_all, stop_baseline,
    wait_settled,
};

pub(crate) async fn drain(args: &DrainArgs) -> anyhow::Result<Figures> {
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
