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
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use callwarden::clock::Clock;
use callwarden::domain::Instant;
use callwarden::sandbox::{Sandbox, SandboxOptions};
use callwarden::store::Store;

use crate::args::{FailoverArgs, ProviderKind};
use crate::daemon_process::DaemonProcess;
use crate::figures::Figures;
use crate::pg_cluster;
use crate::rig::{dismiss, insert_all, tap_lateness, wait_settled, write_config};
use crate::tap::Tap;

/// Deadlines per second: half the quota, so no backlog hides a gap.
const PER_SECOND: u32 = 10;

pub(crate) async fn failover(args: &FailoverArgs) -> anyhow::Result<Figures> {
    let cluster = pg_cluster::Cluster::start().map_err(|e| anyhow!("PostgreSQL cannot run here: {}", e.0))?;
    let url = cluster.fresh_database().await;
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let sandbox = Sandbox::start(listener, SandboxOptions::default(), shutdown.clone()).await?;
    let tap = Tap::start(sandbox.addr, shutdown.clone()).await?;
    let (config_path, config) = write_config(
        dir.path(),
        Path::new(&url),
        &tap.url(),
        callwarden::config::DEFAULT_REQUESTS_PER_SECOND,
        ProviderKind::Trtc,
    )?;
    let store = Store::connect(&config.database).await?;

    let mut started = 0;
    let mut instance_dir = |dir: &Path| -> anyhow::Result<PathBuf> {
        started += 1;
        let d = dir.join(format!("instance-{started}"));
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(Some(DaemonProcess::start(&config_path, &instance_dir(dir.path())?).await?));
    }

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
    insert_all(&store, &sessions, 1000).await?;
    drop(sessions);

    tokio::time::sleep(first.saturating_add(Duration::from_secs(2)).duration_from(clock.now())).await;
    let mut kills = Vec::new();
    let mut stops = Vec::new();
    for k in 0..disruptions {
        tokio::time::sleep(cycle / 2).await;
        let leader = leader_of(&store, &daemons).await?;
        let daemon = daemons[leader].take().context("the leader is running")?;
        let at = Utc::now();
        if k < args.kills {
            daemon.kill()?;
            kills.push(at);
        } else {
            let stopped = daemon.stop().await?;
            if !stopped.success {
                bail!("an instance stopped with SIGTERM exited unsuccessfully");
            }
            stops.push(at);
        }
        daemons[leader] = Some(DaemonProcess::start(&config_path, &instance_dir(dir.path())?).await?);
        tokio::time::sleep(cycle / 2).await;
    }
    let timeout = Duration::from_millis(last_deadline.millis_since(clock.now()).max(0) as u64 + 120_000);
    wait_settled(&store, last_deadline, timeout).await?;

    let seen = tap.seen();
    let mut f = Figures::default();
    for (name, at) in [("kill -9", &kills), ("clean stop", &stops)] {
        let mut gaps: Vec<i64> = at.iter().filter_map(|t| gap_ms(&seen, *t)).collect();
        gaps.sort_unstable();
        f.add(format!("disruptions: {name}"), at.len() as f64, "");
        if !gaps.is_empty() {
            f.add_dist_ms(&format!("failover after {name}: signal -> next call"), &gaps);
        }
    }
    let mut late: Vec<i64> = tap_lateness(&tap, &deadline_of_room).into_values().collect();
    late.sort_unstable();
    f.add_dist_us("lateness of first calls (tap), gaps included", &late);
    let early = late.iter().filter(|l| **l < 0).count();
    f.add("calls before their deadline", early as f64, "");
    let mut successes: HashMap<String, u32> = HashMap::new();
    for r in sandbox.state.requests() {
        if let (Some(room), "success") = (r.room, r.answer.as_str()) {
            *successes.entry(room).or_default() += 1;
        }
    }
    f.add("rooms dismissed twice with success", successes.values().filter(|&&c| c > 1).count() as f64, "");
    f.add("rooms dismissed", successes.len() as f64, "");
    f.add("sessions", f64::from(n), "");
    let stats = sandbox.state.stats();
    f.add("sandbox rate_limited", stats.rate_limited as f64, "");
    f.add("sandbox max_per_second", f64::from(stats.max_per_second), "req");
    // The bench's own pool is closed first: what remains is the daemons'.
    store.close().await;
    f.add("connections held per instance, after the run", connections_per_instance(&url, 3).await?, "");

    for d in daemons.into_iter().flatten() {
        d.stop().await?;
    }
    shutdown.cancel();
    drop(cluster);
    Ok(f)
}

/// The index of the running daemon that leads the TRTC bucket, by the
/// lease rows (holder = host:pid:random); waits up to 10 s for one.
async fn leader_of(store: &Store, daemons: &[Option<DaemonProcess>]) -> anyhow::Result<usize> {
    let started = std::time::Instant::now();
    loop {
        let mut conn = store.lease_connection().await?.context("a shared database has leases")?;
        let leases = conn.leases().await?;
        conn.close().await;
        let pid = leases
            .iter()
            .find(|(bucket, _, _, expires_in)| bucket == "trtc" && *expires_in > 0)
            .and_then(|(_, holder, _, _)| holder.rsplit(':').nth(1)?.parse::<u32>().ok());
        if let Some(i) =
            pid.and_then(|pid| daemons.iter().position(|d| d.as_ref().is_some_and(|d| d.pid == pid)))
        {
            return Ok(i);
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("no running instance leads the TRTC bucket: {leases:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Milliseconds from `at` to the first request the tap saw after it.
fn gap_ms(seen: &[crate::tap::Seen], at: DateTime<Utc>) -> Option<i64> {
    seen.iter().filter(|s| s.at > at).map(|s| (s.at - at).num_milliseconds()).min()
}

/// Connections the database server has for `instances` daemons, per
/// daemon (application_name callwarden, this database), sampled once.
async fn connections_per_instance(url: &str, instances: u32) -> anyhow::Result<f64> {
    // The count's own connection is not named callwarden.
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'callwarden' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await?;
    Ok(n as f64 / f64::from(instances))
}
