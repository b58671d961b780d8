//! The long-running commands: `run` (the daemon, with hot reload) and
//! `sandbox`, and the signal handling both stop on.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{Failure, SandboxArgs, load};
use crate::clock::Clock;
use crate::config::Database;
use crate::sandbox::{Sandbox, SandboxOptions};

pub(super) async fn run_daemon(path: &std::path::Path) -> Result<(), Failure> {
    let config = Arc::new(load(path)?);
    // Client connections, provider calls and the database all need file
    // descriptors; take what the hard limit allows (systemd's default soft
    // limit is 1024).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    // Checked before opening: a second daemon must not even migrate the
    // database under the one running (the lock is taken for good in serve).
    drop(crate::store::Store::lock_database(&config.database).await.context("cannot start")?);
    // Named, so that on a database several daemons share its audit rows
    // form a chain of its own, and its leases say who holds them.
    let instance = crate::lead::instance_id();
    let store = crate::store::Store::connect_as(&config.database, Some(&instance))
        .await
        .context("cannot open the database")?;
    let shutdown = CancellationToken::new();
    // The clock goes on from where the last daemon of this boot left it
    // (a restart in the middle of catching up with a clock step).
    let clock_file = clock_file(&config.database);
    let clock = Clock::system_resumed(clock_file.as_deref().and_then(crate::clock::saved::load));
    let saving = clock_file.map(|file| {
        tokio::spawn(crate::clock::saved::save_periodically(clock.clone(), file, shutdown.clone()))
    });
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let (live, reloads) = crate::config::live::Live::new(config);
    tokio::spawn(crate::reload::watch_config(
        path.to_path_buf(),
        reloads,
        store.clone(),
        clock.clone(),
        shutdown.clone(),
    ));
    let served = crate::daemon::serve(live, store.clone(), clock, shutdown.clone()).await;
    // The last reading is written even when the daemon failed.
    shutdown.cancel();
    if let Some(saving) = saving {
        let _ = saving.await;
    }
    served.context("daemon failed")?;
    store.close().await;
    Ok(())
}

/// Where the clock's last reading is kept between runs of one boot: beside
/// a SQLite file; for PostgreSQL, in systemd's `StateDirectory` when the
/// unit has one (else the clock starts afresh, as after a reboot).
fn clock_file(database: &Database) -> Option<std::path::PathBuf> {
    match database {
        Database::Sqlite(path) => Some(crate::clock::saved::path_for(path)),
        Database::Postgres(_) => std::env::var_os("STATE_DIRECTORY")
            .and_then(|dirs| std::env::split_paths(&dirs).next())
            .map(|dir| dir.join("callwarden.clock")),
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "stopping");
    shutdown.cancel();
}

pub(super) async fn sandbox(args: SandboxArgs) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = CancellationToken::new();
    let options = SandboxOptions {
        secret_id: args.secret_id,
        secret_key: args.secret_key,
        sdk_app_id: args.sdk_app_id,
        acs_access_key: args.acs_access_key,
        acs_resource_id: args.acs_resource_id,
        quota_per_second: args.quota,
        entra_token_lifetime: args.entra_token_lifetime,
    };
    let sandbox =
        Sandbox::start(listener, options, shutdown.clone()).await.context("cannot start the sandbox")?;
    // The first stdout line is the address, for scripts and tests to read.
    println!("sandbox listening on {}", sandbox.url());
    tracing::info!(url = %sandbox.url(), "sandbox ready (TRTC API at POST /, control API under /_sandbox/)");
    stop_on_signal(shutdown.clone()).await;
    shutdown.cancel();
    Ok(())
}
