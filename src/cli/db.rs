//! `db copy`: moving a deployment from SQLite to PostgreSQL.

use anyhow::{Context, anyhow};

use super::{DbCommand, Failure, load, open_existing};
use crate::config::{Database, PostgresUrl};
use crate::store::Store;

pub(super) async fn db(config_path: &std::path::Path, cmd: DbCommand) -> Result<(), Failure> {
    match cmd {
        DbCommand::Copy { to } => copy(config_path, &to).await,
    }
}

/// Copies the configured SQLite database into the empty PostgreSQL
/// database at `to`, then verifies the copy's audit chain.
async fn copy(config_path: &std::path::Path, to: &str) -> Result<(), Failure> {
    let config = load(config_path)?;
    if !matches!(config.database, Database::Sqlite(_)) {
        return Err(anyhow!(
            "db copy copies from a SQLite database, and this configuration names {}; for PostgreSQL to \
             PostgreSQL use pg_dump and pg_restore",
            config.database
        )
        .into());
    }
    let target =
        Database::Postgres(PostgresUrl::parse(to, None).map_err(|reason| anyhow!("--to: {reason}"))?);
    // Whatever the daemon wrote after the copy's snapshot would be lost
    // when the configuration moves to the copy.
    let _no_daemon = Store::lock_database(&config.database)
        .await
        .context("stop the daemon before copying (what it writes meanwhile would not be in the copy)")?;
    let source = open_existing(&config, false).await?;
    let copy_to = Store::connect(&target).await.with_context(|| format!("cannot open {target}"))?;
    let copied = crate::store::copy::copy(&source, &copy_to)
        .await
        .with_context(|| format!("cannot copy into {target}; it is left as it was"))?;
    println!(
        "copied {} into {target}: {} sessions, {} audit rows, {} retention checkpoints, {} signed heads, \
         {} notifications, {} webhook history rows",
        config.database,
        copied.sessions,
        copied.audit_rows,
        copied.checkpoints,
        copied.heads,
        copied.notifications,
        copied.presence
    );
    super::audit::verify_audit(&copy_to, &config).await?;
    source.close().await;
    copy_to.close().await;
    println!("next: set `database: {target}` in {} and start the daemon", config_path.display());
    Ok(())
}
