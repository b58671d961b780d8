//! Load on the HTTP listener: session registrations per second through
//! `POST /v1/sessions`, and signed TRTC webhook events per second through
//! `POST /webhooks/trtc` (entries and exits of distinct users under a
//! budgeted participant policy, so each entry reads and spends its user's
//! budget), while the daemon enforces a steady stream of expiring sessions
//! against the in-process sandbox.
//!
//! ```text
//! cargo run --release --example api_load -- [--seconds 10] [--clients 32] [--runs 3] [--postgres URL]
//! ```
//!
//! With `--postgres postgres://USER@HOST:PORT` (a server the user may
//! create databases on), each run uses a fresh PostgreSQL database there
//! (created, then dropped) instead of a SQLite file.
//!
//! Prints each run's figures and the medians. Everything runs on loopback in
//! one process against a real SQLite file with `synchronous=FULL`, so the
//! load generator shares the machine's cores with the daemon. To tell the two
//! apart, the daemon (with the sandbox) and the load generator run on two
//! separate tokio runtimes whose threads are named `cw-daemon` and `cw-load`;
//! each phase reports the CPU time of each side, read per thread from
//! `/proc/self/task/*/stat`. SQLite's connection threads (`sqlx-sqlite-*`)
//! count as the daemon's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use callwarden::clock::Clock;
use callwarden::config::Config;
use callwarden::sandbox::{
    SANDBOX_SDK_APP_ID, SANDBOX_SECRET_ID, SANDBOX_SECRET_KEY, Sandbox, SandboxOptions,
};
use callwarden::stats::percentile;
use callwarden::store::Store;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

#[path = "bench/clk_tck.rs"]
mod clk_tck;
use clk_tck::clock_ticks_per_second;

const TOKEN: &str = "load-test-token-0123456789";
const CALLBACK_KEY: &str = "loadtest-callback-key";

struct Args {
    seconds: u64,
    clients: usize,
    runs: usize,
    /// A PostgreSQL server to run against instead of SQLite.
    postgres: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { seconds: 10, clients: 32, runs: 3, postgres: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => a.seconds = value.parse()?,
            "--clients" => a.clients = value.parse()?,
            "--runs" => a.runs = value.parse()?,
            "--postgres" => a.postgres = Some(value.trim_end_matches('/').to_string()),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

/// A new, empty database on the PostgreSQL server `server`; its name.
async fn fresh_postgres_database(server: &str) -> anyhow::Result<String> {
    let name = format!("cw_api_load_{}_{}", std::process::id(), chrono::Utc::now().timestamp_millis());
    postgres_admin(server, &format!("CREATE DATABASE {name}")).await?;
    Ok(name)
}

/// Runs `sql` on the server's `postgres` database.
async fn postgres_admin(server: &str, sql: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    sqlx::query(sql).execute(&mut admin).await?;
    admin.close().await?;
    Ok(())
}

fn config(db: &str, sandbox: &str, listen: &str) -> String {
    format!(
        "database: {db}\nlisten: {listen}\napi_token: {TOKEN}\nwebhooks:\n  trtc:\n    callback_key: {CALLBACK_KEY}\n\
         providers:\n  trtc:\n    kind: tencent-trtc\n    sdk_app_id: {SANDBOX_SDK_APP_ID}\n    region: ap-guangzhou\n\
         \x20   secret_id: {SANDBOX_SECRET_ID}\n    secret_key: {SANDBOX_SECRET_KEY}\n    endpoint: {sandbox}\n\
         policies:\n  consultation: {{ provider: trtc, max_duration: 6h, action: dismiss_room }}\n\
         \x20 short: {{ provider: trtc, max_duration: 1s, action: dismiss_room }}\n\
         \x20 chat: {{ provider: trtc, match: {{ room: 'chat-*' }}, scope: participant, max_duration: 6h,\n\
         \x20         budget: {{ per: user, window: day, limit: 60m }}, action: remove_user }}\n",
    )
}

// ---- CPU per side -----------------------------------------------------------------

/// CPU ticks (utime + stime) of this process's threads, summed by side.
fn cpu_by_side() -> HashMap<&'static str, u64> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let side = if comm.starts_with("cw-daemon") || comm.starts_with("sqlx-sqlite") {
            "daemon"
        } else if comm.starts_with("cw-load") {
            "load"
        } else {
            "other"
        };
        *out.entry(side).or_default() += ticks;
    }
    out
}

/// Cores used by each side between two readings. Threads that exited in
/// between are not counted (the runtimes' threads live for the whole run).
fn cores_used(
    before: &HashMap<&'static str, u64>,
    after: &HashMap<&'static str, u64>,
    wall: f64,
) -> HashMap<&'static str, f64> {
    let tck = clock_ticks_per_second();
    ["daemon", "load", "other"]
        .into_iter()
        .map(|side| {
            let d =
                after.get(side).copied().unwrap_or(0).saturating_sub(before.get(side).copied().unwrap_or(0));
            (side, d as f64 / tck / wall)
        })
        .collect()
}

// ---- load ---------------------------------------------------------------------------

/// What one phase measured.
struct Phase {
    /// Requests answered 2xx per second.
    rate: f64,
    errors: u64,
    /// Request latency as the client saw it, microseconds.
    p50_us: i64,
    p99_us: i64,
    daemon_cores: f64,
    load_cores: f64,
    other_cores: f64,
}

impl Phase {
    /// Requests per second of daemon CPU: what the daemon could serve if it
    /// had both cores to itself and scaled perfectly (an upper bound).
    fn per_daemon_core(&self) -> f64 {
        if self.daemon_cores > 0.0 { self.rate / self.daemon_cores } else { 0.0 }
    }
}

/// Runs `clients` tasks on the load runtime sending requests made by `make`
/// for `seconds`.
fn hammer<F>(load: &Runtime, seconds: u64, clients: usize, make: F) -> Phase
where
    F: Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_by_side();
    let start = StdInstant::now();
    let end = start + Duration::from_secs(seconds);
    let latencies = load.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (make, ok, bad, seq) =
                (Arc::clone(&make), Arc::clone(&ok), Arc::clone(&bad), Arc::clone(&seq));
            tasks.spawn(async move {
                let client = reqwest::Client::new();
                let mut lat = Vec::new();
                while StdInstant::now() < end {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let sent = StdInstant::now();
                    match make(&client, n).send().await {
                        Ok(r) if r.status().is_success() => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            lat.push(sent.elapsed().as_micros() as i64);
                        }
                        _ => {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done.unwrap_or_default());
        }
        all
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cores = cores_used(&cpu_before, &cpu_by_side(), elapsed);
    let mut latencies = latencies;
    latencies.sort_unstable();
    Phase {
        rate: ok.load(Ordering::Relaxed) as f64 / elapsed,
        errors: bad.load(Ordering::Relaxed),
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        daemon_cores: cores["daemon"],
        load_cores: cores["load"],
        other_cores: cores["other"],
    }
}

fn print_phase(name: &str, p: &Phase) {
    println!(
        "  {name:<14} {:>7.0}/s (errors {})  latency p50 {:.1} ms p99 {:.1} ms  \
         CPU cores: daemon {:.2}, load generator {:.2}, other {:.2}  -> {:.0}/s per daemon core",
        p.rate,
        p.errors,
        p.p50_us as f64 / 1000.0,
        p.p99_us as f64 / 1000.0,
        p.daemon_cores,
        p.load_cores,
        p.other_cores,
        p.per_daemon_core()
    );
}

struct Server {
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
    sandbox: Sandbox,
    store: Store,
    daemon: tokio::task::JoinHandle<Result<(), callwarden::daemon::DaemonError>>,
    base: String,
    /// The PostgreSQL server and the run's database on it, to drop after.
    postgres: Option<(String, String)>,
}

/// Sandbox, database and daemon, all on the daemon runtime.
async fn start_server(postgres: Option<&str>) -> anyhow::Result<Server> {
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
    let (database, postgres) = match postgres {
        Some(server) => {
            let name = fresh_postgres_database(server).await?;
            (format!("{server}/{name}"), Some((server.to_string(), name)))
        }
        None => (dir.path().join("cw.db").display().to_string(), None),
    };
    std::fs::write(&path, config(&database, &sandbox.url(), &listen))?;
    let config = Arc::new(Config::load(&path)?);
    let store = Store::connect(&config.database).await?;
    let daemon =
        tokio::spawn(callwarden::daemon::serve(config, store.clone(), Clock::system(), shutdown.clone()));
    Ok(Server { _dir: dir, shutdown, sandbox, store, daemon, base: format!("http://{listen}"), postgres })
}

fn one_run(a: &Args, daemon_rt: &Runtime, load: &Runtime) -> anyhow::Result<(Phase, Phase)> {
    let server = daemon_rt.block_on(start_server(a.postgres.as_deref()))?;
    let base = server.base.clone();
    load.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // Background: ten sessions a second expiring, so the daemon enforces
    // while the API is under load.
    let background = {
        let (base, shutdown) = (base.clone(), server.shutdown.clone());
        load.spawn(async move {
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
    let registrations = hammer(load, a.seconds, a.clients, move |c, n| {
        c.post(&url).bearer_auth(TOKEN).json(&serde_json::json!({ "policy": "consultation", "room": n + 1 }))
    });

    let url = format!("{base}/webhooks/trtc");
    let events = hammer(load, a.seconds, a.clients, move |c, n| {
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
    });

    server.shutdown.cancel();
    background.abort();
    daemon_rt.block_on(server.daemon)??;
    let stats = server.sandbox.state.stats();
    print_phase("registrations", &registrations);
    print_phase("webhook events", &events);
    println!("  enforced meanwhile: {} calls, quota errors {}", stats.requests, stats.rate_limited);
    daemon_rt.block_on(server.store.close());
    if let Some((postgres, name)) = &server.postgres {
        daemon_rt.block_on(postgres_admin(postgres, &format!("DROP DATABASE {name} WITH (FORCE)")))?;
    }
    Ok((registrations, events))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn print_medians(name: &str, phases: &[Phase]) {
    let m = |f: fn(&Phase) -> f64| median(phases.iter().map(f).collect());
    println!(
        "median {name:<14} {:>7.0}/s  latency p50 {:.1} ms p99 {:.1} ms  CPU cores: daemon {:.2}, \
         load generator {:.2}  -> {:.0}/s per daemon core",
        m(|p| p.rate),
        m(|p| p.p50_us as f64) / 1000.0,
        m(|p| p.p99_us as f64) / 1000.0,
        m(|p| p.daemon_cores),
        m(|p| p.load_cores),
        m(Phase::per_daemon_core)
    );
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Two runtimes, each with one worker per core, as two processes would have.
    let daemon_rt =
        tokio::runtime::Builder::new_multi_thread().thread_name("cw-daemon").enable_all().build()?;
    let load = tokio::runtime::Builder::new_multi_thread().thread_name("cw-load").enable_all().build()?;
    println!(
        "api_load: {} s per phase, {} concurrent clients, {} runs, {cores} cores \
         (daemon and load generator share them)",
        a.seconds, a.clients, a.runs
    );
    let mut regs = Vec::new();
    let mut events = Vec::new();
    for k in 1..=a.runs.max(1) {
        println!("run {k}:");
        let (r, e) = one_run(&a, &daemon_rt, &load)?;
        regs.push(r);
        events.push(e);
    }
    print_medians("registrations", &regs);
    print_medians("webhook events", &events);
    Ok(())
}
