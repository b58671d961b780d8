//! The command line: one function per command, each in the file of its
//! family (`args` defines them, `output` prints what they read).
//!
//! Session commands write the database directly (through [`crate::store`]),
//! so they work whether the daemon runs or not; a running daemon notices the
//! change within [`crate::scheduler::CHANGE_POLL`]. Commands print data on
//! stdout and diagnostics on stderr. Exit codes: 0 done, 1 failed or
//! refused, 2 bad configuration or usage.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::{Config, ConfigError};
use crate::domain::SessionId;
use crate::store::{Store, StoreError};

mod args;
mod audit;
mod check;
mod db;
pub mod output;
mod serve;
mod session;

pub use args::*;

/// A command's failure, sorted by exit code.
#[derive(Debug)]
pub enum Failure {
    /// Exit 2: the operator must fix the configuration.
    Config(ConfigError),
    /// Exit 1.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl Failure {
    pub fn report(self) -> ExitCode {
        match self {
            Failure::Config(e) => {
                eprintln!("error: invalid configuration: {e}");
                ExitCode::from(2)
            }
            Failure::Other(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run => serve::run_daemon(&cli.config).await,
        Command::Check => check::check(&cli.config),
        Command::Session(cmd) => session::session(&cli.config, cmd).await,
        Command::Audit(args) => audit::audit_command(&cli.config, args).await,
        Command::Budget(args) => session::budget(&cli.config, args).await,
        Command::Backup { path } => audit::backup(&cli.config, &path).await,
        Command::Db(cmd) => db::db(&cli.config, cmd).await,
        Command::Sandbox(args) => serve::sandbox(args).await,
        Command::Demo(args) => match (&args.database, args.provider) {
            (Some(url), crate::demo::DemoProvider::Trtc) => {
                crate::demo::instances::run(url, args.instances, args.spread, args.burst).await
            }
            (Some(_), crate::demo::DemoProvider::Acs) => {
                Err(anyhow::anyhow!("the demo on PostgreSQL (--database) plays against TRTC only"))
            }
            (None, _) if args.instances > 1 => Err(anyhow::anyhow!(
                "--instances needs --database postgres://… (an empty database they share)"
            )),
            (None, provider) => crate::demo::run(provider, args.spread, args.burst).await,
        }
        .map_err(Failure::Other),
    }
}

fn load(path: &std::path::Path) -> Result<Config, Failure> {
    let config = Config::load(path)?;
    for warning in &config.warnings {
        tracing::warn!("{}: {warning}", path.display());
    }
    Ok(config)
}

async fn open(config: &Config) -> Result<Store, Failure> {
    Ok(Store::connect(&config.database).await.context("cannot open the database")?)
}

/// For commands that only read: the database must exist and have this
/// build's schema (`backup`: or an older one); nothing is migrated.
async fn open_existing(config: &Config, older_ok: bool) -> Result<Store, Failure> {
    Ok(Store::connect_existing(&config.database, older_ok).await.context("cannot open the database")?)
}

fn parse_id(id: &str) -> Result<SessionId, Failure> {
    id.parse::<SessionId>().map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))
}

fn refusal(e: StoreError) -> Failure {
    Failure::Other(anyhow::Error::new(e))
}
