//! The daemon: wires store, change watcher, scheduler and enforcement
//! together and runs them until told to stop.
//!
//! [`serve`] takes its configuration (live or fixed) and its shutdown signal
//! as arguments, so the binary, the demo, the tests and the benchmarks all
//! run the same daemon in-process. The one-off pieces it starts live in
//! their own modules: `retention`, `notify`, `scheduler`, `enforce`, `http`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::live::Live;
use crate::config::{Config, ProviderSettings};
use crate::enforce::Enforcer;
use crate::enforce::pacer::ProviderSlot;
use crate::lead::Leadership;
use crate::providers::{Provider, acs::AcsClient, trtc::TrtcClient};
use crate::scheduler::{Scheduler, watch_changes};
use crate::skew::ClockOffset;
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

pub fn build_providers(config: &Config) -> Result<HashMap<String, ProviderSlot>, DaemonError> {
    let http = crate::http_client::http_client();
    let mut slots = HashMap::new();
    for (name, p) in &config.providers {
        let failed = |reason| DaemonError::Provider { name: name.clone(), reason };
        let provider = match &p.settings {
            ProviderSettings::Trtc(t) => {
                Provider::Trtc(TrtcClient::new(http.clone(), t, p.request_timeout).map_err(failed)?)
            }
            ProviderSettings::Acs(a) => {
                let token = config.acs_webhook.as_ref().and_then(|w| w.secret.as_ref());
                Provider::Acs(AcsClient::new(http.clone(), a, p.request_timeout, token).map_err(failed)?)
            }
        };
        slots.insert(name.clone(), ProviderSlot::new(provider, p.retry, p.max_requests_per_second));
    }
    Ok(slots)
}

/// Tells the operator at start whether an ACS provider's endpoint, API
/// version and credentials work (see [`AcsClient::probe`]); logs only, the
/// daemon runs either way.
async fn probe_acs(name: String, client: AcsClient) {
    use crate::providers::acs::Probe;
    match client.probe().await {
        Probe::Served => {
            tracing::info!(provider = %name, "ACS answers: endpoint, api_version and credentials work")
        }
        Probe::RouteNotFound(m) => tracing::error!(
            provider = %name,
            answer = %m,
            "ACS does not serve this endpoint path or api_version: every enforcement will fail; fix the provider's endpoint or api_version"
        ),
        Probe::Refused(m) => tracing::error!(
            provider = %name,
            answer = %m,
            "ACS refuses the provider's credentials: every enforcement will fail"
        ),
        Probe::Unreachable(m) => {
            tracing::warn!(provider = %name, error = %m, "ACS cannot be reached at start; enforcement retries as usual")
        }
        Probe::Other(m) => {
            tracing::warn!(provider = %name, answer = %m, "ACS answered the start-up probe unexpectedly")
        }
    }
}

/// Runs the daemon until `shutdown` is cancelled, then drains: calls already
/// sent are answered and recorded (within [`SHUTDOWN_GRACE`]); sessions still
/// waiting go back to the queue. Policies and notifications are read from
/// `config` as it changes (see `reload`); the rest is fixed at start. A
/// plain `Arc<Config>` is a configuration that never changes (the demo, the
/// tests, the benchmarks).
pub async fn serve(
    config: impl Into<Live>,
    store: Store,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let live: Live = config.into();
    let config = live.current();
    let providers = build_providers(&config)?;
    // First of all: be the one daemon on this database (SQLite), and hold
    // the port, before re-queuing anything another daemon may still be
    // sending. A database several daemons share holds nothing here: leases
    // decide who enforces what.
    let instance = store.lock_daemon().await?;
    let listener = match config.listen {
        Some(addr) => {
            Some(crate::http::listener::bind(addr).map_err(|source| DaemonError::Listen { addr, source })?)
        }
        None => None,
    };
    store.set_outcome_notifications(config.notifications.is_some()).await?;
    let changed = Arc::new(Notify::new());
    let shared = store.sqlite_path().is_none();
    let lead = if shared {
        // Each bucket's work left `enforcing` is re-queued by whoever
        // takes its lease next (`Store::take_over`), not here: another
        // instance may be sending it right now.
        // The instance's name, as its audit chain knows it when it has one.
        let holder = store.instance().map_or_else(crate::lead::instance_id, str::to_string);
        Leadership::shared(holder, Arc::clone(&changed))
    } else {
        let requeued = store
            .requeue_interrupted(clock.now(), "enforcement was interrupted by a stop or crash; resuming")
            .await?;
        if requeued > 0 {
            tracing::warn!(
                requeued,
                "resuming enforcements that were under way when the daemon last stopped"
            );
        }
        Leadership::sole()
    };
    let offset = ClockOffset::default();
    // The leases outlive the shutdown signal: calls under way are answered
    // and recorded first, then the leases are given up.
    let leases_stop = CancellationToken::new();
    // Returning early (an error below) gives the leases up too.
    let _leases_stop_on_return = leases_stop.clone().drop_guard();
    let leases = tokio::spawn(crate::lead::keep_leases(
        lead.clone(),
        store.clone(),
        clock.clone(),
        offset.clone(),
        config.providers.keys().cloned().collect(),
        leases_stop.clone(),
    ));

    let tasks = TaskTracker::new();
    for (name, slot) in &providers {
        if let Provider::Acs(client) = &slot.provider {
            tasks.spawn(probe_acs(name.clone(), client.clone()));
        }
    }
    if let Some(listener) = listener {
        let state = crate::http::AppState {
            store: store.clone(),
            registrar: store.registrar(),
            clock: clock.clone(),
            config: live.clone(),
            budget_lock: if shared {
                crate::intake::BudgetLock::across_instances(store.clone())
            } else {
                crate::intake::BudgetLock::default()
            },
            presence: store.presence_writer(),
            api_token: config.api_token.clone(),
            changed: Some(Arc::clone(&changed)),
            acs: config.acs_webhook.as_ref().map(|w| {
                let acs =
                    Arc::new(crate::http::webhooks::AcsCallbacks::new(crate::http_client::http_client(), w));
                let fetching = Arc::clone(&acs);
                tasks.spawn(async move { fetching.prefetch_keys().await });
                acs
            }),
            trtc_callback_keys: config.trtc_callback_keys(),
        };
        tasks.spawn(crate::http::serve(listener, state, shutdown.clone()));
    }
    if config.database_listen {
        let watcher = store.change_watcher().await?;
        tasks.spawn(watch_changes(watcher, Arc::clone(&changed), shutdown.clone()));
    } else {
        tracing::info!(
            "database_listen is off: another instance's or program's new work is found by polling every second"
        );
    }

    let (claims_tx, claims_rx) = mpsc::unbounded_channel();
    let enforcer = Enforcer::new(
        store.clone(),
        clock.clone(),
        providers,
        live.clone(),
        lead.clone(),
        offset.clone(),
        shutdown.clone(),
    );
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
    )
    .led_by(lead.clone());
    tracing::info!(
        instance = %lead.holder(),
        shared,
        database = %store.location(),
        providers = config.providers.len(),
        policies = config.policies.len(),
        "callwarden running"
    );
    // A database with a clock of its own (PostgreSQL): how far it is from ours.
    tasks.spawn(crate::skew::watch(store.clone(), clock.clone(), offset.clone(), shutdown.clone()));
    // Always: webhook history (`presence`) is pruned even without `retention:`.
    {
        tasks.spawn(crate::retention::prune_periodically(
            store.clone(),
            clock.clone(),
            config.retention.clone(),
            lead.clone(),
            shutdown.clone(),
        ));
    }
    let confirming: Vec<(String, Duration)> = config
        .providers
        .values()
        .filter_map(|p| match &p.settings {
            ProviderSettings::Acs(a) if a.callback_url.is_some() => Some((p.name.clone(), a.confirm_within)),
            _ => None,
        })
        .collect();
    if !confirming.is_empty() {
        tasks.spawn(crate::enforce::unconfirmed::settle_periodically(
            store.clone(),
            clock.clone(),
            confirming,
            shutdown.clone(),
        ));
    }
    if let Some(key) = config.retention.checkpoint_key.clone() {
        tasks.spawn(crate::retention::record_heads_periodically(
            store.clone(),
            clock.clone(),
            key,
            shutdown.clone(),
        ));
    }
    {
        // The lock (SQLite) is kept for as long as the daemon runs.
        let shutdown = shutdown.clone();
        tasks.spawn(async move { instance.keep(&shutdown).await });
    }
    crate::systemd::ready("enforcing deadlines");
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            shutdown.cancelled().await;
            crate::systemd::stopping();
        });
    }
    // The scheduler owns the only sender; when it returns, enforcement sees
    // the channel close and drains.
    scheduler.run(shutdown).await;
    tasks.close();
    tasks.wait().await;
    leases_stop.cancel();
    if let Err(e) = leases.await {
        tracing::error!(error = %e, "the lease keeper failed; its leases expire on their own");
    }
    tracing::info!("callwarden stopped");
    Ok(())
}
