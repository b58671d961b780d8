//! The daemon: wires store, change watcher, scheduler and enforcement
//! together and runs them until told to stop.
//!
//! [`run`] takes its shutdown signal as an argument, so the binary, the demo,
//! the tests and the benchmarks all run the same daemon in-process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::{Config, ProviderSettings};
use crate::domain::Instant;
use crate::enforce::{Enforcer, ProviderSlot};
use crate::providers::{Provider, acs::AcsClient, trtc::TrtcClient};
use crate::reload::Live;
use crate::scheduler::{Scheduler, watch_changes};
use crate::store::{Store, StoreError};

/// Sessions claimed and not yet settled, at most. Bounds memory and tasks in
/// a burst; the rest wait in the database, in deadline order.
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long shutdown waits for provider calls under way to be answered and
/// recorded; below systemd's default `TimeoutStopSec` of 90 s.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("provider {name}: {reason}")]
    Provider { name: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// One HTTP client for every provider: shared connection pool, a user agent,
/// and a connect timeout (each request also gets its provider's timeout).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("callwarden/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("the TLS back-end is compiled in, so the client builds")
}

pub fn build_providers(config: &Config) -> Result<HashMap<String, ProviderSlot>, DaemonError> {
    let http = http_client();
    let mut slots = HashMap::new();
    for (name, p) in &config.providers {
        let failed = |reason| DaemonError::Provider { name: name.clone(), reason };
        let provider = match &p.settings {
            ProviderSettings::Trtc(t) => {
                Provider::Trtc(TrtcClient::new(http.clone(), t, p.request_timeout).map_err(failed)?)
            }
            ProviderSettings::Acs(a) => {
                let token = config.acs_webhook_secret.as_ref();
                Provider::Acs(AcsClient::new(http.clone(), a, p.request_timeout, token).map_err(failed)?)
            }
        };
        slots.insert(name.clone(), ProviderSlot::new(provider, p.retry, p.max_requests_per_second));
    }
    Ok(slots)
}

/// How often retention runs (also once at start).
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Applies `retention:`: settled sessions and audit rows older than their
/// periods are deleted, the audit log behind a signed checkpoint.
async fn prune_periodically(
    store: Store,
    clock: Clock,
    retention: crate::config::Retention,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = prune_once(&store, &clock, &retention).await {
            tracing::error!(error = %e, "retention pruning failed; it runs again in an hour");
        }
    }
}

pub async fn prune_once(
    store: &Store,
    clock: &Clock,
    retention: &crate::config::Retention,
) -> Result<(), StoreError> {
    let now = clock.now();
    let before = |d: Duration| Instant::from_millis(now.millis() - crate::domain::duration_millis_ceil(d));
    if let Some(keep) = retention.sessions {
        let n = store.prune_sessions(before(keep)).await?;
        if n > 0 {
            tracing::info!(sessions = n, "retention: pruned settled sessions");
        }
    }
    if let Some(keep) = retention.audit {
        let key = retention.checkpoint_key.clone();
        let sign = move |cp: &crate::store::Checkpoint| {
            key.as_ref().map(|k| crate::audit::checkpoint_signature(k, cp))
        };
        if let Some(cp) = store.prune_audit(before(keep), now, sign).await? {
            tracing::info!(rows = cp.rows_pruned, checkpoint = cp.last_id, "retention: pruned the audit log");
        }
    }
    Ok(())
}

/// Runs the daemon with a configuration that does not change; see [`serve`].
pub async fn run(
    config: Arc<Config>,
    store: Store,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    serve(Live::fixed(config), store, clock, shutdown).await
}

/// Runs the daemon until `shutdown` is cancelled, then drains: calls already
/// sent are answered and recorded (within [`SHUTDOWN_GRACE`]); sessions still
/// waiting go back to the queue. Policies and notifications are read from
/// `live` as they change (see `reload`); the rest is fixed at start.
pub async fn serve(
    live: Live,
    store: Store,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let config = live.current();
    let providers = build_providers(&config)?;
    store.set_outcome_notifications(config.notifications.is_some()).await?;
    let requeued = store
        .requeue_interrupted(clock.now(), "enforcement was interrupted by a stop or crash; resuming")
        .await?;
    if requeued > 0 {
        tracing::warn!(requeued, "resuming enforcements that were under way when the daemon last stopped");
    }

    let tasks = TaskTracker::new();
    let changed = Arc::new(Notify::new());
    if let Some(addr) = config.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen { addr, source })?;
        let state = crate::http::AppState {
            store: store.clone(),
            registrar: store.registrar(),
            clock: clock.clone(),
            config: live.clone(),
            budget_lock: Arc::default(),
            api_token: config.api_token.clone(),
            changed: Some(Arc::clone(&changed)),
            acs_secret: config.acs_webhook_secret.clone(),
            trtc_callback_key: config.trtc_callback_key.clone(),
        };
        tasks.spawn(crate::http::serve(listener, state, shutdown.clone()));
    }
    let watcher = store.change_watcher().await?;
    tasks.spawn(watch_changes(watcher, Arc::clone(&changed), shutdown.clone()));

    let (claims_tx, claims_rx) = mpsc::unbounded_channel();
    let enforcer = Enforcer::new(store.clone(), clock.clone(), providers, live.clone(), shutdown.clone());
    tasks.spawn(enforcer.run(claims_rx, SHUTDOWN_GRACE));
    let notifier = crate::notify::Notifier::new(store.clone(), clock.clone(), live.clone());
    tasks.spawn(notifier.run(shutdown.clone()));

    let scheduler = Scheduler::new(
        store.clone(),
        clock.clone(),
        live.clone(),
        Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        changed,
        claims_tx,
    );
    tracing::info!(
        database = %store.path().display(),
        providers = config.providers.len(),
        policies = config.policies.len(),
        "callwarden running"
    );
    if config.retention.sessions.is_some() || config.retention.audit.is_some() {
        tasks.spawn(prune_periodically(
            store.clone(),
            clock.clone(),
            config.retention.clone(),
            shutdown.clone(),
        ));
    }
    crate::service::ready("enforcing deadlines");
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            shutdown.cancelled().await;
            crate::service::stopping();
        });
    }
    // The scheduler owns the only sender; when it returns, enforcement sees
    // the channel close and drains.
    scheduler.run(shutdown).await;
    tasks.close();
    tasks.wait().await;
    tracing::info!("callwarden stopped");
    Ok(())
}
