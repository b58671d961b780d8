//! `callwarden demo`: the whole system on one machine in about half a minute.
//!
//! Starts an in-process sandbox and the real daemon on a fresh SQLite file,
//! registers a realistic mix of sessions (consultations ending one after
//! another, group chats whose participants are removed in batches, rooms that
//! already closed, a provider hiccup, a bad participant id, calls that end by
//! themselves, and a burst that all expire in the same instant), shows
//! progress, and prints a summary with lateness and the provider rate the
//! sandbox observed. The database and config are left behind for the user to
//! query.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::{Instant, Room, SessionId, UserId};
use crate::sandbox::{Fault, Sandbox, SandboxOptions};
use crate::store::{AuditFilter, NewSession, Store};

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `config/demo.yaml` with its placeholders filled in.
pub fn demo_config(db: &std::path::Path, sandbox_url: &str) -> String {
    include_str!("../config/demo.yaml")
        .replace("{database}", &db.display().to_string())
        .replace("{sandbox_url}", sandbox_url)
}

struct Plan {
    sessions: Vec<NewSession>,
    burst: HashSet<SessionId>,
    /// Sessions whose call "ends by itself" before the deadline.
    to_end: Vec<SessionId>,
}

fn plan(now: Instant, spread: u32, burst: u32) -> Plan {
    let session = |policy: &str, room: Room, user: Option<&str>, deadline: Instant| NewSession {
        id: SessionId::new(),
        policy: policy.to_string(),
        provider: "trtc".to_string(),
        room,
        user: user.map(|u| UserId::parse(u).expect("demo user ids are valid")),
        started_at: now,
        deadline,
    };
    let mut sessions = Vec::new();
    let mut to_end = Vec::new();
    // Consultations and paid chats ending one after another from 2 s to 6 s.
    for i in 0..spread {
        let at =
            now.saturating_add(Duration::from_millis(2000 + u64::from(i) * 4000 / u64::from(spread.max(1))));
        let s = match i % 4 {
            0 => session("consultation", Room::Numeric(10_000 + i), None, at),
            1 => session("consultation", Room::Str(format!("consult-{i}")), None, at),
            2 => session("paid-chat", Room::Numeric(20_000), Some(&format!("patient-{i}")), at),
            _ => session("paid-chat", Room::Str("lounge".into()), Some(&format!("guest-{i}")), at),
        };
        if i % 10 == 5 {
            to_end.push(s.id);
        }
        sessions.push(s);
    }
    // Rooms that closed before their deadline (the sandbox is told below).
    for r in 0..3u32 {
        sessions.push(session(
            "consultation",
            Room::Numeric(30_000 + r),
            None,
            now.saturating_add(Duration::from_millis(3000 + u64::from(r) * 300)),
        ));
    }
    // A provider hiccup (retried) and a bad participant (failed).
    sessions.push(session(
        "consultation",
        Room::Numeric(40_000),
        None,
        now.saturating_add(Duration::from_secs(4)),
    ));
    sessions.push(session(
        "paid-chat",
        Room::Numeric(40_001),
        Some("ghost"),
        now.saturating_add(Duration::from_secs(4)),
    ));
    // The burst: everything at the same instant, 7 s from now. One in ten is
    // a participant of the same big room, removed ten per call.
    let burst_at = now.saturating_add(Duration::from_secs(7));
    let mut burst_ids = HashSet::new();
    for i in 0..burst {
        let s = if i % 10 == 0 {
            session("paid-chat", Room::Numeric(50_000), Some(&format!("viewer-{i}")), burst_at)
        } else {
            session("consultation", Room::Numeric(60_000 + i), None, burst_at)
        };
        burst_ids.insert(s.id);
        sessions.push(s);
    }
    Plan { sessions, burst: burst_ids, to_end }
}

pub async fn run(spread: u32, burst: u32) -> anyhow::Result<()> {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("callwarden-demo-{}", &uuid::Uuid::new_v4().to_string()[..8]));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let db = dir.join("callwarden.db");
    let config_path = dir.join("demo.yaml");

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind loopback")?;
    let sandbox = Sandbox::start(listener, SandboxOptions::default(), shutdown.clone()).await?;
    std::fs::write(&config_path, demo_config(&db, &sandbox.url())).context("cannot write the demo config")?;
    let config = Arc::new(Config::load(&config_path)?);
    let store = Store::open(&config.database).await?;
    let clock = Clock::system();

    println!("callwarden demo");
    println!("  sandbox TRTC API   {} (quota 20 requests/s per action)", sandbox.url());
    println!("  database           {}", db.display());
    println!("  daemon rate        19 requests/s per action\n");

    let daemon =
        tokio::spawn(crate::daemon::run(Arc::clone(&config), store.clone(), clock.clone(), shutdown.clone()));

    let now = clock.now();
    let Plan { sessions, burst: burst_ids, to_end } = plan(now, spread, burst);
    for r in 0..3u32 {
        sandbox.state.close_room(&Room::Numeric(30_000 + r));
    }
    sandbox.state.add_fault(Fault {
        room: Some("40000".into()),
        code: Some("InternalError".into()),
        times: Some(2),
        ..Fault::default()
    });
    sandbox.state.add_fault(Fault {
        room: Some("40001".into()),
        code: Some("InvalidParameter.UserIds".into()),
        message: Some("UserIds contains an unknown user".into()),
        ..Fault::default()
    });
    let total = sessions.len();
    store.insert_sessions(&sessions, now, "registered by the demo").await?;
    println!(
        "registered {total} sessions: {} over the next 2-6 s, {} expiring together at +7 s\n",
        total - burst_ids.len(),
        burst_ids.len()
    );

    let started = StdInstant::now();
    // On a terminal the progress line redraws in place; in a pipe or a CI
    // log it prints a line a second.
    let tty = std::io::stdout().is_terminal();
    let mut last_line = StdInstant::now();
    let mut ended = false;
    let mut burst_done_at = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !ended && started.elapsed() > Duration::from_millis(1000) {
            for id in &to_end {
                store.end_session(*id, clock.now(), "the call ended by itself (demo)").await?;
            }
            ended = true;
        }
        let counts = store.state_counts().await?;
        let count = |state: &str| counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
        let stats = sandbox.state.stats();
        let pending = count("active") + count("enforcing");
        let progress = format!(
            "[{:>5.1}s] waiting {:>4}  enforcing {:>4}  enforced {:>4}  already ended {:>3}  failed {:>2}  cancelled {:>2}  provider calls {:>4}",
            started.elapsed().as_secs_f64(),
            count("active"),
            count("enforcing"),
            count("enforced"),
            count("already_ended"),
            count("failed"),
            count("cancelled"),
            stats.requests,
        );
        if tty {
            print!("\r{progress}  ");
            std::io::stdout().flush().ok();
        } else if last_line.elapsed() >= Duration::from_secs(1) || pending == 0 {
            println!("{progress}");
            last_line = StdInstant::now();
        }
        if burst_done_at.is_none() && started.elapsed() > Duration::from_secs(7) && pending == 0 {
            burst_done_at = Some(started.elapsed());
        }
        if pending == 0 && ended {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("the demo did not finish in 5 minutes; see the log above");
        }
    }
    println!("\n");
    shutdown.cancel();
    daemon.await.context("daemon task panicked")??;

    summarize(&store, &sandbox, &burst_ids, &db, &config_path).await?;
    store.close().await;
    Ok(())
}

async fn summarize(
    store: &Store,
    sandbox: &Sandbox,
    burst_ids: &HashSet<SessionId>,
    db: &std::path::Path,
    config_path: &std::path::Path,
) -> anyhow::Result<()> {
    let counts = store.state_counts().await?;
    // Lateness of each session's first call: what the scheduler and the
    // pacer cost. Later calls are late by the retry backoff, on purpose.
    let answers = store
        .audit(&AuditFilter {
            events: vec!["enforced".into(), "already_ended".into(), "retry".into(), "failed".into()],
            ..AuditFilter::default()
        })
        .await?;
    let mut seen = HashSet::new();
    let mut spread_late = Vec::new();
    let mut burst_late = Vec::new();
    for row in &answers {
        let Some(late) = row.lateness_ms else { continue };
        if !seen.insert(row.session_id.clone()) {
            continue;
        }
        let in_burst = row
            .session_id
            .as_deref()
            .and_then(|id| id.parse::<SessionId>().ok())
            .is_some_and(|id| burst_ids.contains(&id));
        if in_burst {
            burst_late.push(late);
        } else {
            spread_late.push(late);
        }
    }
    spread_late.sort_unstable();
    burst_late.sort_unstable();
    let stats = sandbox.state.stats();

    println!("summary");
    for (state, n) in &counts {
        println!("  {state:<14} {n:>5}");
    }
    let line = |name: &str, v: &[i64]| {
        println!(
            "  lateness, {name:<26} p50 {:>5} ms   p99 {:>5} ms   max {:>5} ms   (n={})",
            percentile(v, 50.0),
            percentile(v, 99.0),
            v.last().copied().unwrap_or(0),
            v.len()
        );
    };
    line("sessions under the quota", &spread_late);
    line("the burst (queued at 19/s)", &burst_late);
    // The burst's floor: its busiest action's calls, one every 1/19 s.
    let busiest = stats.requests_by_action.get("DismissRoom").copied().unwrap_or(0);
    let burst_calls = busiest.saturating_sub(spread_dismiss_calls(&answers, burst_ids));
    if burst_calls > 1 {
        let floor_ms = (burst_calls - 1) as f64 * 1000.0 / 19.0;
        let drained_ms = burst_late.last().copied().unwrap_or(0) as f64;
        println!(
            "  the burst drained in {:.2} s; floor for its {burst_calls} DismissRoom calls at 19/s: {:.2} s (ratio {:.3})",
            drained_ms / 1000.0,
            floor_ms / 1000.0,
            drained_ms / floor_ms
        );
    }
    println!(
        "  provider calls {}; most in any one second: {} (quota 20); RequestLimitExceeded: {}",
        stats.requests, stats.max_per_second, stats.rate_limited
    );
    let mut actions: Vec<_> = stats.max_per_second_by_action.iter().collect();
    actions.sort();
    for (action, max) in actions {
        println!(
            "    {action:<24} calls {:>4}, most in one second {max}",
            stats.requests_by_action.get(action).copied().unwrap_or(0)
        );
    }
    println!("\nthe database stays for you to query:");
    println!("  sqlite3 {} \"SELECT state, count(*) FROM sessions GROUP BY state\"", db.display());
    println!(
        "  sqlite3 {} \"SELECT at, event, action, outcome, error_code, lateness_ms FROM audit_log WHERE event = 'failed'\"",
        db.display()
    );
    println!("  cargo run --release -- --config {} audit --limit 20", config_path.display());
    Ok(())
}

/// DismissRoom calls made for sessions outside the burst.
fn spread_dismiss_calls(answers: &[crate::store::AuditRecord], burst_ids: &HashSet<SessionId>) -> u64 {
    answers
        .iter()
        .filter(|r| r.action.as_deref() == Some("DismissRoom"))
        .filter(|r| {
            !r.session_id
                .as_deref()
                .and_then(|id| id.parse::<SessionId>().ok())
                .is_some_and(|id| burst_ids.contains(&id))
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_demo_config_loads_and_matches_the_sandbox() {
        let text = demo_config(std::path::Path::new("/tmp/demo/cw.db"), "http://127.0.0.1:9");
        let config = Config::parse(std::path::Path::new("config/demo.yaml"), &text).unwrap();
        let crate::config::ProviderSettings::Trtc(t) = &config.providers["trtc"].settings else {
            panic!("a TRTC provider")
        };
        assert_eq!(t.secret_id, crate::sandbox::SANDBOX_SECRET_ID);
        assert_eq!(t.secret_key.expose(), crate::sandbox::SANDBOX_SECRET_KEY);
        assert_eq!(t.sdk_app_id, crate::sandbox::SANDBOX_SDK_APP_ID);
        assert_eq!(t.endpoint, "http://127.0.0.1:9");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 99.0), 7);
    }
}
