//! Prometheus metrics: what the daemon counts and measures, and the
//! exporter that `/metrics` renders.
//!
//! The recorder is process-wide and installed once, when a daemon with a
//! listener starts; before that the `metrics` macros are no-ops, so the CLI
//! and the tests pay nothing. Names and labels here are the public interface
//! for dashboards and alerts (see the README).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const ENFORCEMENTS: &str = "callwarden_enforcements_total";
pub const PROVIDER_CALL_SECONDS: &str = "callwarden_provider_call_seconds";
pub const LATENESS_SECONDS: &str = "callwarden_enforcement_lateness_seconds";
pub const RATE_LIMIT_WAIT_SECONDS: &str = "callwarden_rate_limiter_wait_seconds";
pub const WEBHOOK_REQUESTS: &str = "callwarden_webhook_requests_total";
/// Fetches of ACS's callback signing keys, by result.
const ACS_JWT_KEYS: &str = "callwarden_acs_jwt_key_fetches_total";
/// ACS callbacks relayed to the application (`webhooks.acs.forward_to`), by result.
const ACS_RELAYS: &str = "callwarden_acs_relays_total";
/// ACS events in an accepted batch that could not be acted on.
const ACS_EVENTS_SKIPPED: &str = "callwarden_acs_events_skipped_total";
pub const API_REQUESTS: &str = "callwarden_api_requests_total";
/// Idle connections the listener closed to make room for a new one.
pub const CONNECTIONS_CLOSED_FOR_ROOM: &str = "callwarden_http_connections_closed_for_room_total";
pub const SESSIONS: &str = "callwarden_sessions";
pub const CONFIG_RELOADS: &str = "callwarden_config_reloads_total";
pub const NOTIFICATIONS: &str = "callwarden_notifications_total";
pub const STORE_ERRORS: &str = "callwarden_store_errors_total";
/// How long write transactions waited to begin: for the daemon's writer
/// connection, then for the database's write lock.
pub const STORE_LOCK_WAIT_SECONDS: &str = "callwarden_store_lock_wait_seconds";
pub const DATABASE_CLOCK_OFFSET_SECONDS: &str = "callwarden_database_clock_offset_seconds";
/// 1 for each bucket this instance leads (PostgreSQL), by bucket.
pub const LEADING: &str = "callwarden_leading";
/// Leases this instance was granted, by bucket.
pub const LEASES_GRANTED: &str = "callwarden_leases_granted_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder (once per process) and returns the handle that
/// renders the text format; `None` if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let seconds =
                [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// How often the recorder folds recorded histogram samples into its
/// buckets. Without it, samples pile up until a scrape, and a daemon nobody
/// scrapes grows without bound.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Runs the recorder's upkeep every [`UPKEEP_EVERY`] until `stop`.
pub async fn upkeep(handle: &'static PrometheusHandle, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            () = stop.cancelled() => return,
        }
    }
}

fn describe() {
    metrics::describe_counter!(ENFORCEMENTS, "Provider answers by provider, API action and outcome");
    metrics::describe_histogram!(PROVIDER_CALL_SECONDS, "Duration of provider HTTP calls");
    metrics::describe_histogram!(LATENESS_SECONDS, "When a provider call left, minus its session's deadline");
    metrics::describe_histogram!(
        RATE_LIMIT_WAIT_SECONDS,
        "Time a call waited for its provider action's rate limit"
    );
    metrics::describe_histogram!(
        STORE_LOCK_WAIT_SECONDS,
        "Time a write transaction waited to begin: for the writer connection, then the database's write lock"
    );
    metrics::describe_counter!(
        CONNECTIONS_CLOSED_FOR_ROOM,
        "Idle connections closed to make room for a new one while every slot was taken"
    );
    metrics::describe_counter!(WEBHOOK_REQUESTS, "Webhook requests by source and result");
    metrics::describe_counter!(ACS_JWT_KEYS, "Fetches of ACS's callback signing keys by result");
    metrics::describe_counter!(ACS_RELAYS, "ACS callbacks relayed to the application by result");
    metrics::describe_counter!(
        ACS_EVENTS_SKIPPED,
        "ACS events in an accepted batch that could not be acted on"
    );
    metrics::describe_counter!(API_REQUESTS, "Session API requests by status class");
    metrics::describe_counter!(CONFIG_RELOADS, "Configuration reloads by result (applied, rejected)");
    metrics::describe_counter!(NOTIFICATIONS, "Notification deliveries by event and result");
    metrics::describe_counter!(
        STORE_ERRORS,
        "Failed database steps (locked, full, read-only) by task; each is retried"
    );
    metrics::describe_gauge!(
        DATABASE_CLOCK_OFFSET_SECONDS,
        "The database server's clock minus the daemon's, last measured (PostgreSQL only)"
    );
    metrics::describe_gauge!(LEADING, "1 for each bucket (provider, or maintenance) this instance leads now");
    metrics::describe_counter!(LEASES_GRANTED, "Leases granted to this instance, by bucket");
    metrics::describe_gauge!(
        SESSIONS,
        "Sessions in the database by state (counts the store keeps as it writes)"
    );
}

/// Records one provider answer.
pub fn provider_answer(
    provider: &str,
    action: &str,
    outcome: &'static str,
    latency: Duration,
    lateness_ms: i64,
) {
    let labels = [("provider", provider.to_string()), ("action", action.to_string())];
    metrics::counter!(
        ENFORCEMENTS,
        &[
            ("provider", provider.to_string()),
            ("action", action.to_string()),
            ("outcome", outcome.to_string())
        ]
    )
    .increment(1);
    metrics::histogram!(PROVIDER_CALL_SECONDS, &labels).record(latency.as_secs_f64());
    metrics::histogram!(LATENESS_SECONDS, &labels).record(lateness_ms.max(0) as f64 / 1000.0);
}

pub fn connections_closed_for_room(n: u64) {
    metrics::counter!(CONNECTIONS_CLOSED_FOR_ROOM).increment(n);
}

pub fn store_lock_wait(waited: Duration) {
    metrics::histogram!(STORE_LOCK_WAIT_SECONDS).record(waited.as_secs_f64());
}

pub fn rate_limit_wait(provider: &str, action: &str, waited: Duration) {
    metrics::histogram!(RATE_LIMIT_WAIT_SECONDS, "provider" => provider.to_string(), "action" => action.to_string())
        .record(waited.as_secs_f64());
}

pub fn webhook(source: &'static str, result: &'static str) {
    metrics::counter!(WEBHOOK_REQUESTS, "source" => source, "result" => result).increment(1);
}

pub fn acs_jwt_keys(result: &'static str) {
    metrics::counter!(ACS_JWT_KEYS, "result" => result).increment(1);
}

pub fn acs_relay(result: &'static str) {
    metrics::counter!(ACS_RELAYS, "result" => result).increment(1);
}

pub fn acs_event_skipped() {
    metrics::counter!(ACS_EVENTS_SKIPPED).increment(1);
}

pub fn api_request(status: u16) {
    let class = match status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(API_REQUESTS, "status" => class).increment(1);
}

pub fn store_error(task: &'static str) {
    metrics::counter!(STORE_ERRORS, "task" => task).increment(1);
}

pub fn database_clock_offset(offset_ms: f64) {
    metrics::gauge!(DATABASE_CLOCK_OFFSET_SECONDS).set(offset_ms / 1000.0);
}

/// Whether this instance leads `bucket` now; `granted`: it just took it.
pub fn leading(bucket: &str, leads: bool, granted: bool) {
    metrics::gauge!(LEADING, "bucket" => bucket.to_string()).set(if leads { 1.0 } else { 0.0 });
    if granted {
        metrics::counter!(LEASES_GRANTED, "bucket" => bucket.to_string()).increment(1);
    }
}

pub fn sessions(state: &str, count: i64) {
    metrics::gauge!(SESSIONS, "state" => state.to_string()).set(count as f64);
}

pub fn config_reload(result: &'static str) {
    metrics::counter!(CONFIG_RELOADS, "result" => result).increment(1);
}

pub fn notification(event: &str, result: &'static str) {
    metrics::counter!(NOTIFICATIONS, "event" => event.to_string(), "result" => result).increment(1);
}
