//! Scenario 9, connections: `--idle` idle TCP connections and `--slow`
//! slow-loris clients on the daemon's listener for `--secs` seconds (each
//! reconnecting when closed), while sessions fall due at 10 a second. Are
//! the sessions enforced on time, do provider calls ever fail for lack of
//! file descriptors, what does the daemon accept and hold, and does a normal
//! request still get an answer?

use std::time::{Duration, Instant as StdInstant};

use anyhow::bail;

use callwarden::clock::Clock;
use callwarden::domain::Instant;
use callwarden::http::listener::{HEADER_READ_TIMEOUT, max_connections};

use crate::args::{ConnectionsArgs, ProviderKind};
use crate::daemon_process::DaemonProcess;
use crate::due::Due;
use crate::figures::Figures;
use crate::monitors::{FsyncMonitor, WakeMonitor, fsync_figures, wake_figures};
use crate::rig::{Rig, first_answers, insert_all, tap_lateness, wait_seen};
use crate::scenarios::flood::{
    Counters, Flood, accept_queue, healthz, held_connections, listen_backlog, listen_overflows,
};

/// The longest a `GET /healthz` is waited for.
const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn connections(args: &ConnectionsArgs) -> anyhow::Result<Figures> {
    // The flood's sockets are this process's: raise its own limit first.
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    let needed = (args.idle + args.slow + 1000) as u64;
    if limit < needed {
        bail!("the open file limit is {limit}, and the flood needs about {needed}: raise the hard limit");
    }
    let clock = Clock::system();
    let rig = Rig::with(19, ProviderKind::Trtc, "listen: 127.0.0.1:0\n", None).await?;
    let now = clock.now();
    // The flood starts 3 s after the first deadline and lasts `secs`.
    let first = Instant::from_millis(now.millis() + 5000);
    let due = Due::new(first, args.secs + 8.0, 1_000_000, now)?;
    insert_all(&rig.store, &due.sessions, 1000).await?;
    let monitor = FsyncMonitor::start(rig.dir.path())?;
    let wakes = WakeMonitor::start();
    let daemon = DaemonProcess::start(&rig.config_path, rig.dir.path()).await?;
    let addr = daemon.http_addr().await?;
    let fds_before = daemon.open_fds();
    let mut quiet_us = Vec::new();
    for _ in 0..5 {
        if let Ok(d) = healthz(addr, HEALTHZ_TIMEOUT).await {
            quiet_us.push(d.as_micros() as i64);
        }
    }
    quiet_us.sort_unstable();
    clock.sleep_until(Instant::from_millis(first.millis() + 3000)).await;

    let overflows_before = listen_overflows();
    let flood_start = clock.now();
    let flood = Flood::start(addr, args.idle, args.slow, Duration::from_secs_f64(args.slow_every));
    let started = StdInstant::now();
    let (mut max_fds, mut max_held, mut max_queue, mut max_open) = (0, 0, 0, 0.0f64);
    let backlog = listen_backlog(addr);
    let mut probes = tokio::task::JoinSet::new();
    while started.elapsed().as_secs_f64() < args.secs {
        probes.spawn(healthz(addr, HEALTHZ_TIMEOUT));
        tokio::time::sleep(Duration::from_secs(1)).await;
        max_fds = max_fds.max(daemon.open_fds());
        max_held = max_held.max(held_connections(daemon.pid, addr));
        max_queue = max_queue.max(accept_queue(addr).unwrap_or(0));
        max_open = max_open.max(Counters::get(&flood.counters.open));
    }
    let flood_end = clock.now();
    let (fds_end, held_end) = (daemon.open_fds(), held_connections(daemon.pid, addr));
    let (connecting, open) = (Counters::get(&flood.counters.connecting), Counters::get(&flood.counters.open));
    // The probes still waiting are answered (or time out) under the flood.
    let mut answered_us = Vec::new();
    let mut failed: std::collections::BTreeMap<&str, usize> = Default::default();
    while let Some(result) = probes.join_next().await {
        match result? {
            Ok(d) => answered_us.push(d.as_micros() as i64),
            Err(why) => *failed.entry(why).or_default() += 1,
        }
    }
    answered_us.sort_unstable();
    let counters = flood.stop().await;
    let overflows = listen_overflows().zip(overflows_before).map(|(a, b)| a.saturating_sub(b));

    let last = due.sessions.last().map_or(first, |s| s.deadline);
    let rooms: Vec<&String> = due.deadline_of_room.keys().collect();
    let seen =
        wait_seen(&rig.tap, &rooms, Instant::from_millis(last.millis() + 500), Duration::from_secs(60)).await;
    let fsyncs = monitor.finish();
    let wakes = wakes.finish();
    let stopped = daemon.stop().await?;
    stopped.save_log("connections");
    seen?;

    let mut f = Figures::default();
    f.add("idle connections (clients)", args.idle as f64, "");
    f.add("slow-loris clients (one byte every few s)", args.slow as f64, "");
    f.add("flood duration", flood_end.millis_since(flood_start) as f64 / 1000.0, "s");
    f.add("daemon: max_connections (its limit)", max_connections() as f64, "");
    f.add("daemon: header read timeout", HEADER_READ_TIMEOUT.as_secs_f64(), "s");
    f.add("clients: handshakes completed", Counters::get(&counters.connected), "");
    f.add("clients: connections closed by the daemon", Counters::get(&counters.closed_by_daemon), "");
    f.add("clients: connections open at the end of the flood", open, "");
    f.add("clients: most connections open at once", max_open, "");
    f.add("clients: still waiting to connect at the end (SYN unanswered)", connecting, "");
    f.add("clients: connect errors", Counters::get(&counters.connect_errors), "");
    f.add("clients: of the handshakes, slow-loris ones", Counters::get(&counters.slow_connected), "");
    f.add("slow-loris bytes sent", Counters::get(&counters.slow_bytes), "");
    if let Some(backlog) = backlog {
        f.add("listener: accept queue capacity (listen backlog, ss)", backlog as f64, "");
    }
    f.add("listener: longest accept queue", max_queue as f64, "");
    if let Some(n) = overflows {
        f.add("kernel: handshakes dropped, accept queue full (TcpExt ListenOverflows)", n as f64, "");
    }
    f.add("daemon: open fds before the flood", fds_before as f64, "");
    f.add("daemon: most open fds during the flood", max_fds as f64, "");
    f.add("daemon: open fds at the end of the flood", fds_end as f64, "");
    f.add("daemon: most client connections held", max_held as f64, "");
    f.add("daemon: client connections held at the end of the flood", held_end as f64, "");
    f.add("daemon: log lines with EMFILE/ENFILE", stopped.fd_errors() as f64, "");
    f.add_dist_us("GET /healthz before the flood", &quiet_us);
    let sent = answered_us.len() + failed.values().sum::<usize>();
    f.add("GET /healthz during the flood: sent (one a second)", sent as f64, "");
    f.add("GET /healthz during the flood: answered 200", answered_us.len() as f64, "");
    for (why, n) in &failed {
        f.add(format!("GET /healthz during the flood: {why}"), *n as f64, "");
    }
    f.add_dist_us("GET /healthz during the flood, answered", &answered_us);
    let lateness = tap_lateness(&rig.tap, &due.deadline_of_room);
    let (from, to) = (flood_start, flood_end);
    due.figures(&mut f, "due during the flood", &lateness, from, to);
    let mut answers = first_answers(&rig.store).await?;
    let ids = due.ids_in(first, Instant::LATEST);
    answers.retain(|id, _| ids.contains(id));
    let failed_calls = answers.values().filter(|r| r.event != "enforced").count();
    f.add("first answers other than enforced (all due sessions)", failed_calls as f64, "");
    f.add("sandbox rate_limited", rig.sandbox.state.stats().rate_limited as f64, "");
    stopped.figures(&mut f, flood_start.to_datetime(), flood_end.to_datetime());
    fsync_figures(&mut f, &fsyncs);
    wake_figures(&mut f, &wakes);
    rig.stop_store().await;
    Ok(f)
}
