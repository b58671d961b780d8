//! `callwarden demo`: the whole system on one machine in about half a minute.
//!
//! Starts an in-process sandbox and the real daemon on a fresh SQLite file,
//! registers a realistic mix of sessions (consultations ending one after
//! another, group chats whose participants are removed in batches, rooms that
//! already closed, a provider hiccup, a bad participant id, calls that end by
//! themselves, and a burst that all expire in the same instant), shows
//! progress, and prints a summary with lateness and the provider rate the
//! sandbox observed. The database and config are left behind for the user to
//! query. With `--database postgres://… --instances N`, [`instances`] runs
//! the same scenario with N daemons sharing the database and kills the
//! leader during the burst.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

mod app;
pub mod instances;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::session::NewSession;
use crate::domain::{Instant, Room, SessionId, UserId};
use crate::sandbox::{Fault, Sandbox, SandboxOptions};
use crate::stats::percentile;
use crate::store::{AuditFilter, Store};

/// Which provider the demo plays against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoProvider {
    Trtc,
    Acs,
}

/// `config/demo.yaml` with its placeholders filled in.
pub fn demo_config(db: &std::path::Path, sandbox_url: &str) -> String {
    include_str!("../config/demo.yaml")
        .replace("{database}", &db.display().to_string())
        .replace("{sandbox_url}", sandbox_url)
}

/// `config/demo-acs.yaml` with its placeholders filled in; `app` is where
/// the demo's stand-in application receives relayed callbacks.
pub fn demo_acs_config(db: &std::path::Path, sandbox_url: &str, listen: &str, app: &str) -> String {
    include_str!("../config/demo-acs.yaml")
        .replace("{database}", &db.display().to_string())
        .replace("{sandbox_url}", sandbox_url)
        .replace("{listen}", listen)
        .replace("{app}", app)
}

/// The token the ACS demo's callbacks carry (config/demo-acs.yaml).
const DEMO_CALLBACK_TOKEN: &str = "demo-callback-token";

struct Plan {
    sessions: Vec<NewSession>,
    burst: HashSet<SessionId>,
    /// Sessions whose call "ends by itself" before the deadline.
    to_end: Vec<SessionId>,
}

fn new_session(
    now: Instant,
    policy: &str,
    provider: &str,
    room: Room,
    user: Option<&str>,
    deadline: Instant,
) -> NewSession {
    NewSession {
        id: SessionId::new(),
        policy: policy.to_string(),
        provider: provider.to_string(),
        room,
        user: user.map(|u| UserId::parse(u).expect("demo user ids are valid")),
        started_at: now,
        deadline,
        grace: Duration::ZERO,
        warn_before: Vec::new(),
        note: None,
    }
}

/// Deadlines from 2 s to 6 s from now, one after another.
fn spread_deadline(now: Instant, i: u32, spread: u32) -> Instant {
    now.saturating_add(Duration::from_millis(2000 + u64::from(i) * 4000 / u64::from(spread.max(1))))
}

fn plan_trtc(now: Instant, spread: u32, burst: u32) -> Plan {
    let session = |policy: &str, room, user: Option<&str>, deadline| {
        new_session(now, policy, "trtc", room, user, deadline)
    };
    let mut sessions = Vec::new();
    let mut to_end = Vec::new();
    // Consultations and paid chats ending one after another from 2 s to 6 s.
    for i in 0..spread {
        let at = spread_deadline(now, i, spread);
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
        let at = now.saturating_add(Duration::from_millis(3000 + u64::from(r) * 300));
        sessions.push(session("consultation", Room::Numeric(30_000 + r), None, at));
    }
    // A provider hiccup (retried) and a bad participant (failed).
    let at = now.saturating_add(Duration::from_secs(4));
    sessions.push(session("consultation", Room::Numeric(40_000), None, at));
    sessions.push(session("paid-chat", Room::Numeric(40_001), Some("ghost"), at));
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

fn plan_acs(now: Instant, spread: u32, burst: u32) -> Plan {
    let session = |policy: &str, call: String, user: Option<&str>, deadline| {
        new_session(now, policy, "acs", Room::Call(call), user, deadline)
    };
    let mut sessions = Vec::new();
    let mut to_end = Vec::new();
    // Consultations (the call is terminated) and paid chats (one participant
    // removed) ending one after another from 2 s to 6 s.
    for i in 0..spread {
        let at = spread_deadline(now, i, spread);
        let s = match i % 3 {
            0 => session("acs-consultation", format!("consult-{i}"), None, at),
            1 => session("acs-paid-chat", "lounge".into(), Some(&format!("8:acs:demo_guest-{i}")), at),
            _ => session("acs-paid-chat", format!("chat-{i}"), Some(&format!("+1555010{i:04}")), at),
        };
        if i % 10 == 5 {
            to_end.push(s.id);
        }
        sessions.push(s);
    }
    // Calls that ended before their deadline (the sandbox is told below).
    for r in 0..3u32 {
        let at = now.saturating_add(Duration::from_millis(3000 + u64::from(r) * 300));
        sessions.push(session("acs-consultation", format!("ended-{r}"), None, at));
    }
    // A provider hiccup (retried under the same repeatability id) and a
    // removal ACS accepts but then reports as failed.
    let at = now.saturating_add(Duration::from_secs(4));
    sessions.push(session("acs-paid-chat", "hiccup".into(), Some("8:acs:demo_patient"), at));
    sessions.push(session("acs-paid-chat", "stubborn".into(), Some("8:orgid:demo-teams-user"), at));
    // The burst: one participant removed from each of many calls at once.
    let burst_at = now.saturating_add(Duration::from_secs(7));
    let mut burst_ids = HashSet::new();
    for i in 0..burst {
        let s =
            session("acs-paid-chat", format!("burst-{i}"), Some(&format!("8:acs:demo_viewer-{i}")), burst_at);
        burst_ids.insert(s.id);
        sessions.push(s);
    }
    Plan { sessions, burst: burst_ids, to_end }
}

/// Tells the sandbox which rooms already ended and which faults to inject.
fn stage(sandbox: &Sandbox, provider: DemoProvider) {
    match provider {
        DemoProvider::Trtc => {
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
        }
        DemoProvider::Acs => {
            for r in 0..3u32 {
                sandbox.state.close_room(&Room::Call(format!("ended-{r}")));
            }
            sandbox.state.add_fault(Fault {
                room: Some("hiccup".into()),
                http_status: Some(503),
                times: Some(2),
                ..Fault::default()
            });
            sandbox.state.add_fault(Fault {
                room: Some("stubborn".into()),
                outcome_event: Some("failed".into()),
                ..Fault::default()
            });
        }
    }
}

pub async fn run(provider: DemoProvider, spread: u32, burst: u32) -> anyhow::Result<()> {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("callwarden-demo-{}", &uuid::Uuid::new_v4().to_string()[..8]));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let db = dir.join("callwarden.db");
    let config_path = dir.join("demo.yaml");

    let shutdown = CancellationToken::new();
    // The ACS demo's webhook listener: a free loopback port, found by binding
    // port 0 and letting it go, so the sandbox can be told where to post.
    let listen = match provider {
        DemoProvider::Trtc => None,
        DemoProvider::Acs => {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind loopback")?;
            Some(probe.local_addr()?.to_string())
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind loopback")?;
    let sandbox = Sandbox::start(listener, SandboxOptions::default(), shutdown.clone()).await?;
    // The ACS demo's application: callwarden relays every callback to it.
    let app = match provider {
        DemoProvider::Trtc => None,
        DemoProvider::Acs => Some(app::start(shutdown.clone()).await.context("cannot start the demo's app")?),
    };
    let config_text = match (&listen, &app) {
        (Some(listen), Some((app_addr, _))) => {
            demo_acs_config(&db, &sandbox.url(), listen, &app_addr.to_string())
        }
        _ => demo_config(&db, &sandbox.url()),
    };
    std::fs::write(&config_path, config_text).context("cannot write the demo config")?;
    let config = Arc::new(Config::load(&config_path)?);
    let store = Store::connect(&config.database).await?;
    let clock = Clock::system();

    let api = match provider {
        DemoProvider::Trtc => "TRTC API",
        DemoProvider::Acs => "ACS API ",
    };
    println!("callwarden demo");
    println!("  sandbox {api}   {} (quota 20 requests/s per action)", sandbox.url());
    if let (Some(listen), Some((app_addr, _))) = (&listen, &app) {
        println!(
            "  webhook listener   http://{listen}/webhooks/acs (each call's callback URI: ACS posts here)"
        );
        println!("  the application    http://{app_addr}/calling/events (callwarden relays every callback)");
    }
    println!("  database           {}", db.display());
    println!("  daemon rate        19 requests/s per action\n");

    let daemon = tokio::spawn(crate::daemon::serve(
        Arc::clone(&config),
        store.clone(),
        clock.clone(),
        shutdown.clone(),
    ));

    let now = clock.now();
    let Plan { sessions, burst: burst_ids, to_end } = match provider {
        DemoProvider::Trtc => plan_trtc(now, spread, burst),
        DemoProvider::Acs => plan_acs(now, spread, burst),
    };
    stage(&sandbox, provider);
    if let Some(listen) = &listen {
        // The application created each call with callwarden's webhook as
        // its callback URI, so ACS's call events reach callwarden (which
        // relays them on).
        let callback = format!("http://{listen}/webhooks/acs?token={DEMO_CALLBACK_TOKEN}");
        let mut calls: Vec<(String, Vec<String>)> = Vec::new();
        for s in &sessions {
            let call = s.room.id_text();
            let user = s.user.iter().map(|u| u.as_str().to_string());
            match calls.iter_mut().find(|(c, _)| *c == call) {
                Some((_, users)) => users.extend(user),
                None => calls.push((call, user.collect())),
            }
        }
        for (call, users) in &calls {
            sandbox.state.create_call(call, &callback, users, true);
        }
    }
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
        let pending = count("active") + count("enforcing") + count("accepted");
        let progress = format!(
            "[{:>5.1}s] waiting {:>4}  enforcing {:>4}  {}enforced {:>4}  already ended {:>3}  failed {:>2}  cancelled {:>2}  provider calls {:>4}",
            started.elapsed().as_secs_f64(),
            count("active"),
            count("enforcing"),
            if provider == DemoProvider::Acs {
                format!("accepted {:>4}  ", count("accepted"))
            } else {
                String::new()
            },
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

    let relayed = app.as_ref().map(|(_, received)| received.as_ref());
    summarize(&store, &sandbox, &burst_ids, relayed, (&db, &config_path)).await?;
    store.close().await;
    Ok(())
}

async fn summarize(
    store: &Store,
    sandbox: &Sandbox,
    burst_ids: &HashSet<SessionId>,
    relayed: Option<&app::Received>,
    (db, config_path): (&std::path::Path, &std::path::Path),
) -> anyhow::Result<()> {
    let counts = store.state_counts().await?;
    // Lateness of each session's first call: what the scheduler and the
    // pacer cost. Later calls are late by the retry backoff, on purpose.
    let answers = store
        .audit(&AuditFilter {
            events: ["accepted", "enforced", "already_ended", "retry", "failed"].map(String::from).to_vec(),
            ..AuditFilter::default()
        })
        .await?;
    let mut seen = HashSet::new();
    let mut spread_late = Vec::new();
    let mut burst_late = Vec::new();
    // The burst's provider calls per API action: one request id per call.
    let mut burst_calls: std::collections::HashMap<&str, HashSet<&str>> = std::collections::HashMap::new();
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
            if let (Some(action), Some(request)) = (row.action.as_deref(), row.provider_request_id.as_deref())
            {
                burst_calls.entry(action).or_default().insert(request);
            }
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
    // The burst's floor: its busiest action's calls, one every 1/19 s
    // (the first goes at once).
    let busiest = burst_calls.iter().map(|(action, ids)| (ids.len(), *action)).max();
    if let Some((calls, action)) = busiest.filter(|(calls, _)| *calls > 1) {
        let floor_ms = (calls - 1) as f64 * 1000.0 / 19.0;
        let drained_ms = burst_late.last().copied().unwrap_or(0) as f64;
        println!(
            "  the burst drained in {:.2} s; floor for its {calls} {action} calls at 19/s: {:.2} s (ratio {:.3})",
            drained_ms / 1000.0,
            floor_ms / 1000.0,
            drained_ms / floor_ms
        );
    }
    println!(
        "  provider calls {}; most in any one second: {} (quota 20); quota errors (RequestLimitExceeded or 429): {}",
        stats.requests, stats.max_per_second, stats.rate_limited
    );
    if stats.participants_removed + stats.calls_terminated > 0 {
        let confirmed = store
            .audit(&AuditFilter { events: vec!["confirmed".into()], ..AuditFilter::default() })
            .await?
            .len();
        println!(
            "  ACS: callbacks delivered {}, confirmed removals {confirmed}; repeated requests answered from ACS's record: {}",
            stats.events_delivered, stats.repeats_replayed
        );
    }
    if let Some(received) = relayed {
        use std::sync::atomic::Ordering;
        println!(
            "  ACS callbacks relayed to the application: {} ({} still carrying ACS's signed token)",
            received.callbacks.load(Ordering::Relaxed),
            received.with_token.load(Ordering::Relaxed)
        );
    }
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
    fn the_shipped_acs_demo_config_loads_and_matches_the_sandbox() {
        let text = demo_acs_config(
            std::path::Path::new("/tmp/demo/cw.db"),
            "http://127.0.0.1:9",
            "127.0.0.1:10",
            "127.0.0.1:11",
        );
        let config = Config::parse(std::path::Path::new("config/demo-acs.yaml"), &text).unwrap();
        let crate::config::ProviderSettings::Acs(a) = &config.providers["acs"].settings else {
            panic!("an ACS provider")
        };
        let crate::config::AcsAuth::AccessKey(key) = &a.auth else {
            panic!("the demo signs with the access key")
        };
        assert_eq!(key.expose(), crate::sandbox::SANDBOX_ACS_ACCESS_KEY);
        assert_eq!(a.endpoint, "http://127.0.0.1:9");
        assert_eq!(config.listen, Some("127.0.0.1:10".parse().unwrap()));
        assert_eq!(
            config.acs_webhook.as_ref().and_then(|w| w.secret.as_ref()).map(|s| s.expose()),
            Some(DEMO_CALLBACK_TOKEN)
        );
    }
}
