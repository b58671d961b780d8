//! The baseline the benchmarks compare callwarden with: what a user would
//! write without it. Every second it selects the sessions whose deadline has
//! passed from callwarden's own SQLite schema, calls TRTC for each one in
//! turn (the same TC3-signed request, built with the crate's public signing
//! functions and sent with reqwest), and marks the row done.
//!
//! ```text
//! cargo run --release --example baseline_poller -- --database cw.db --endpoint http://127.0.0.1:PORT [--rate 20]
//! ```
//!
//! What it does, deliberately plainly:
//! - one loop: `SELECT … WHERE state = 'active' AND deadline <= now` every
//!   `--poll-ms` (1,000 ms; a tokio interval that delays, not bursts, when a
//!   pass overruns), then the due rows one after another in deadline order;
//! - a fixed-rate throttle: after each call it sleeps `1 / --rate` seconds
//!   (20/s, the published quota; `--rate 0` sends as fast as it can). Calls
//!   are sequential, so a call's own time adds to the gap: it never exceeds
//!   the quota, and runs a little below it;
//! - an answer of success or "room gone" marks the row `enforced` or
//!   `already_ended` (one autocommitted `UPDATE`, `synchronous=FULL` like the
//!   daemon); a retryable answer (quota, 5xx, timeout) leaves the row active
//!   for the next pass; anything else marks it `failed`;
//! - no audit log, no claim, no crash recovery, no retry backoff.
//!
//! It logs "baseline running" once connected, and its counts at SIGTERM.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteSynchronous};

use callwarden::domain::{Action, Room, RoomKind, UserId};
use callwarden::providers::trtc::{self, Tc3Input};
use callwarden::providers::{Classified, Target};
use callwarden::sandbox::{SANDBOX_SDK_APP_ID, SANDBOX_SECRET_ID, SANDBOX_SECRET_KEY};

#[derive(Parser)]
#[command(about = "naive poll-and-call baseline for the callwarden benchmarks")]
struct Args {
    /// A database with callwarden's schema (the bench fills it).
    #[arg(long)]
    database: std::path::PathBuf,
    /// The TRTC API endpoint (the sandbox, or the bench's tap in front of it).
    #[arg(long)]
    endpoint: String,
    /// Calls per second; 0 for no throttle.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    #[arg(long, default_value_t = SANDBOX_SDK_APP_ID)]
    sdk_app_id: u64,
    #[arg(long, default_value = SANDBOX_SECRET_ID)]
    secret_id: String,
    #[arg(long, default_value = SANDBOX_SECRET_KEY)]
    secret_key: String,
    #[arg(long, default_value = "ap-guangzhou")]
    region: String,
}

#[derive(Default, Debug)]
struct Counts {
    polls: u64,
    calls: u64,
    enforced: u64,
    quota_errors: u64,
    other_retryable: u64,
    failed: u64,
}

/// One signed TRTC call, as the provider documents it.
async fn call(
    http: &reqwest::Client,
    args: &Args,
    host: &str,
    target: &Target,
) -> anyhow::Result<(Classified, u16)> {
    let action = trtc::api_action(target.action, &target.room).context("no TRTC action for this room")?;
    let body = trtc::request_body(args.sdk_app_id, target);
    let timestamp = chrono::Utc::now().timestamp();
    let input = Tc3Input {
        host,
        service: trtc::SERVICE,
        content_type: trtc::CONTENT_TYPE,
        signed_action: None,
        timestamp,
        body: &body,
    };
    let auth = trtc::authorization(&args.secret_id, &args.secret_key, &input);
    let response = http
        .post(&args.endpoint)
        .header("Content-Type", trtc::CONTENT_TYPE)
        .header("X-TC-Action", action)
        .header("X-TC-Version", trtc::VERSION)
        .header("X-TC-Timestamp", timestamp.to_string())
        .header("X-TC-Region", &args.region)
        .header("Authorization", auth)
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((trtc::classify_response(status, &bytes).0, status))
}

/// One pass: every due row, in deadline order, one call each.
async fn pass(
    db: &sqlx::SqlitePool,
    http: &reqwest::Client,
    args: &Args,
    host: &str,
    counts: &mut Counts,
) -> anyhow::Result<()> {
    let due = sqlx::query(
        "SELECT id, room_id, room_kind, user_id FROM sessions \
         WHERE state = 'active' AND deadline <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now') ORDER BY deadline",
    )
    .fetch_all(db)
    .await?;
    counts.polls += 1;
    for row in due {
        let id: String = row.get("id");
        let kind = RoomKind::from_str(row.get::<&str, _>("room_kind"))?;
        let room = Room::parse(kind, row.get::<&str, _>("room_id"))?;
        let user: Option<String> = row.get("user_id");
        let target = match user {
            Some(u) => Target { action: Action::RemoveUser, room, users: vec![UserId::parse(&u)?] },
            None => Target { action: Action::DismissRoom, room, users: vec![] },
        };
        counts.calls += 1;
        let new_state = match call(http, args, host, &target).await {
            Ok((Classified::Success, _)) => Some("enforced"),
            Ok((Classified::AlreadyEnded { .. }, _)) => Some("already_ended"),
            Ok((Classified::Retryable { code, .. }, status)) => {
                if status == 429 || code.starts_with("RequestLimitExceeded") {
                    counts.quota_errors += 1;
                } else {
                    counts.other_retryable += 1;
                }
                None
            }
            Ok((Classified::Fatal { .. }, _)) => Some("failed"),
            Err(e) => {
                eprintln!("baseline: call for {id}: {e:#}");
                counts.other_retryable += 1;
                None
            }
        };
        if let Some(state) = new_state {
            if state == "failed" {
                counts.failed += 1;
            } else {
                counts.enforced += 1;
            }
            sqlx::query(
                "UPDATE sessions SET state = ?, attempts = attempts + 1, \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
            )
            .bind(state)
            .bind(&id)
            .execute(db)
            .await?;
        }
        if args.rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(1.0 / f64::from(args.rate))).await;
        }
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(&args.endpoint).context("--endpoint is not a URL")?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => anyhow::bail!("--endpoint has no host"),
    };
    let options = SqliteConnectOptions::new()
        .filename(&args.database)
        .busy_timeout(Duration::from_secs(5))
        .synchronous(SqliteSynchronous::Full);
    let db = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open {}", args.database.display()))?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(args.poll_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counts = Counts::default();
    eprintln!("baseline running");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        // SIGTERM also stops a pass between two statements, so a long drain
        // can be cut short.
        tokio::select! {
            r = pass(&db, &http, &args, &host, &mut counts) => {
                if let Err(e) = r {
                    eprintln!("baseline: pass failed: {e:#}");
                }
            }
            _ = term.recv() => break,
        }
    }
    db.close().await;
    eprintln!("baseline stopped: {counts:?}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}
