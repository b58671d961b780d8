//! Load on the HTTP listener: session registrations per second through
//! `POST /v1/sessions`, and signed TRTC webhook events per second through
//! `POST /webhooks/trtc`, while the daemon enforces a steady stream of
//! expiring sessions against the in-process sandbox.
//!
//! ```text
//! cargo run --release --example api_load -- [--seconds 10] [--clients 32] [--runs 3]
//! ```
//!
//! Prints each run's figures and the medians. Everything runs on loopback in
//! one process (daemon, sandbox and clients share the machine's cores, as
//! they would on a small host), against a real SQLite file with
//! `synchronous=FULL`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use callwarden::clock::Clock;
use callwarden::config::Config;
use callwarden::sandbox::{
    SANDBOX_SDK_APP_ID, SANDBOX_SECRET_ID, SANDBOX_SECRET_KEY, Sandbox, SandboxOptions,
};
use callwarden::store::Store;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "load-test-token-0123456789";
const CALLBACK_KEY: &str = "loadtestkey";

struct Args {
    seconds: u64,
    clients: usize,
    runs: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { seconds: 10, clients: 32, runs: 3 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => a.seconds = value.parse()?,
            "--clients" => a.clients = value.parse()?,
            "--runs" => a.runs = value.parse()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

fn config(db: &std::path::Path, sandbox: &str, listen: &str) -> String {
    format!(
        "database: {db}\nlisten: {listen}\napi_token: {TOKEN}\nwebhooks:\n  trtc:\n    callback_key: {CALLBACK_KEY}\n\
         providers:\n  trtc:\n    kind: tencent-trtc\n    sdk_app_id: {SANDBOX_SDK_APP_ID}\n    region: ap-guangzhou\n\
         \x20   secret_id: {SANDBOX_SECRET_ID}\n    secret_key: {SANDBOX_SECRET_KEY}\n    endpoint: {sandbox}\n\
         policies:\n  consultation: {{ provider: trtc, max_duration: 6h, action: dismiss_room }}\n\
         \x20 short: {{ provider: trtc, max_duration: 1s, action: dismiss_room }}\n\
         \x20 chat: {{ provider: trtc, match: {{ room: 'chat-*' }}, max_duration: 6h, action: remove_user }}\n",
        db = db.display()
    )
}

/// Runs `clients` tasks sending requests made by `make` for `seconds`;
/// returns requests answered 2xx per second, and any non-2xx count.
async fn hammer<F>(seconds: u64, clients: usize, make: F) -> (f64, u64)
where
    F: Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let start = StdInstant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (make, ok, bad, seq) = (Arc::clone(&make), Arc::clone(&ok), Arc::clone(&bad), Arc::clone(&seq));
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            while StdInstant::now() < end {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                match make(&client, n).send().await {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    (ok.load(Ordering::Relaxed) as f64 / elapsed, bad.load(Ordering::Relaxed))
}

async fn one_run(a: &Args) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let sandbox = Sandbox::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        SandboxOptions::default(),
        shutdown.clone(),
    )
    .await?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let path = dir.path().join("cw.yaml");
    std::fs::write(&path, config(&dir.path().join("cw.db"), &sandbox.url(), &listen))?;
    let config = Arc::new(Config::load(&path)?);
    let store = Store::open(&config.database).await?;
    let daemon =
        tokio::spawn(callwarden::daemon::run(config, store.clone(), Clock::system(), shutdown.clone()));
    let base = format!("http://{listen}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Background: ten sessions a second expiring, so the daemon enforces
    // while the API is under load.
    let background = {
        let (base, shutdown) = (base.clone(), shutdown.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0u64;
            while !shutdown.is_cancelled() {
                let body = serde_json::json!({ "policy": "short", "room": 4_000_000_000u64 - n });
                let _ =
                    client.post(format!("{base}/v1/sessions")).bearer_auth(TOKEN).json(&body).send().await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let url = format!("{base}/v1/sessions");
    let (registrations, reg_errors) = hammer(a.seconds, a.clients, move |c, n| {
        c.post(&url).bearer_auth(TOKEN).json(&serde_json::json!({ "policy": "consultation", "room": n + 1 }))
    })
    .await;

    let url = format!("{base}/webhooks/trtc");
    let (events, event_errors) = hammer(a.seconds, a.clients, move |c, n| {
        let now = chrono::Utc::now().timestamp_millis();
        let kind = if n % 2 == 0 { 103 } else { 104 };
        let body = format!(
            r#"{{"EventGroupId":1,"EventType":{kind},"CallbackTs":{now},"EventInfo":{{"RoomId":"chat-{}","EventMsTs":{},"UserId":"u{}"}}}}"#,
            n / 2 % 500,
            now + i64::try_from(n % 2).unwrap_or(0),
            n / 2
        );
        let sign = callwarden::providers::trtc::callback_signature(CALLBACK_KEY, body.as_bytes());
        c.post(&url)
            .header("Sign", sign)
            .header("SdkAppId", SANDBOX_SDK_APP_ID.to_string())
            .header("Content-Type", "application/json")
            .body(body)
    })
    .await;

    shutdown.cancel();
    background.abort();
    daemon.await??;
    let stats = sandbox.state.stats();
    println!(
        "  registrations/s {registrations:>8.0} (errors {reg_errors})   webhook events/s {events:>8.0} (errors {event_errors})   \
         enforced meanwhile: {} calls, quota errors {}",
        stats.requests, stats.rate_limited
    );
    store.close().await;
    Ok((registrations, events))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    println!(
        "api_load: {} s per phase, {} concurrent clients, {} runs, {} cores",
        a.seconds,
        a.clients,
        a.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut regs = Vec::new();
    let mut events = Vec::new();
    for _ in 0..a.runs {
        let (r, e) = one_run(&a).await?;
        regs.push(r);
        events.push(e);
    }
    println!("median registrations/s {:.0}   median webhook events/s {:.0}", median(regs), median(events));
    Ok(())
}
