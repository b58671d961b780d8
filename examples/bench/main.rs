//! callwarden's benchmarks. See BENCHMARKS.md for what each figure means and
//! the results on the reference machine.
//!
//! ```text
//! cargo run --release --example bench -- lateness  [--sessions 1000] [--spread-secs 100] [--provider acs]
//! cargo run --release --example bench -- scheduler [--sessions 100000] [--spread-secs 100]
//! cargo run --release --example bench -- drain     [--sessions 2000] [--provider acs]
//! cargo run --release --example bench -- startup   [--sessions 1000000] [--scrapes 200]
//! cargo run --release --example bench -- bulk_insert [--rows 200000] [--batch 500] [--spread-secs 40]
//! cargo run --release --example bench -- prune     [--sessions 1000000] [--recent-sessions 250000]
//! cargo run --release --example bench -- connections [--idle 5000] [--slow 1000] [--secs 60]
//! cargo run --release --example bench -- failover  [--kills 10] [--stops 10] [--cycle-secs 8]   (PostgreSQL)
//! cargo run --release --example bench -- pg_lateness [--instances 3] [--sessions 10000] [--spread-secs 1000] [--measure-secs 60]
//! cargo run --release --example bench -- pg_drain  [--instances 3] [--sessions 10000] [--kills 2]
//! cargo run --release --example bench -- all       (every scenario at full size)
//! ```
//!
//! `--provider acs` runs lateness and drain against the sandbox's ACS Call
//! Automation API (terminate_call / remove_participant on `Room::Call`s)
//! instead of TRTC; the default is `trtc`.
//!
//! Every scenario takes `--runs N`: it runs N times, prints each run's
//! figures, then the median of each figure over the runs.
//!
//! Timing sources:
//! - deadlines are whole milliseconds of the system clock (UTC), as stored;
//! - "the call left" is measured by a TCP tap placed between the daemon and
//!   the sandbox: the wall-clock time (`Utc::now()`, microsecond resolution)
//!   at which the first bytes of each HTTP request arrive at the tap over
//!   loopback. The audit log's `lateness_ms` (whole milliseconds, floored) is
//!   reported too.
//!
//! This file is the driver: it parses the command line, builds the
//! companion binaries and runs each scenario `--runs` times. The scenarios
//! are in `scenarios/`; what they share is in `args`, `figures`, `rig`,
//! `tap` and `monitors`, and for the hardening scenarios `daemon_process`
//! (the daemon as its own process, with systemd's watchdog), `due` (sessions
//! due at 10/s meanwhile) and `writer_probe`; for the PostgreSQL ones
//! `pg_rig` (several daemons on a throwaway cluster); `report` writes
//! BENCHMARKS.md.

mod args;
mod clk_tck;
mod daemon_process;
mod due;
mod figures;
mod monitors;
#[path = "../../tests/support/pg_cluster.rs"]
mod pg_cluster;
mod pg_rig;
mod report;
mod rig;
mod scenarios;
mod tap;
mod writer_probe;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant as StdInstant;

use anyhow::{Context, bail};
use clap::Parser;

use args::{Cli, DrainArgs, LatenessArgs, ProviderKind, Scenario, SchedulerArgs, StartupArgs, System};
use figures::{Figures, Runs, medians, out};
use scenarios::bulk_insert::bulk_insert;
use scenarios::connections::connections;
use scenarios::drain::drain;
use scenarios::failover::failover;
use scenarios::lateness::lateness;
use scenarios::pg_queue::{pg_drain, pg_lateness};
use scenarios::prune::prune;
use scenarios::registrations::registrations;
use scenarios::scheduler::scheduler;
use scenarios::startup::{release_binary, startup, startup_database, target_dir};

/// When run by `cargo run`, builds what the scenarios start as processes:
/// the daemon, the baseline and `api_load`, in the same (release) profile.
fn build_companions() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else { return Ok(()) };
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--bin", "callwarden"])
        .args(["--example", "baseline_poller", "--example", "api_load"])
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build --release of the daemon and the bench examples failed");
    }
    Ok(())
}

async fn repeat<F, Fut>(name: &str, runs: usize, mut run: F) -> anyhow::Result<Runs>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Figures>>,
{
    let runs = runs.max(1);
    let mut all = Vec::with_capacity(runs);
    for k in 1..=runs {
        let started = StdInstant::now();
        let f = run().await.with_context(|| format!("{name} run {k}"))?;
        f.print(&format!("[{name} run {k}/{runs}] ({:.1} s)", started.elapsed().as_secs_f64()));
        all.push(f);
    }
    let median = medians(&all);
    if runs > 1 {
        median.print(&format!("== {name}: median of {runs} runs =="));
    }
    Ok(Runs { runs: all, median })
}

fn startup_cache(args: &StartupArgs) -> PathBuf {
    args.cache_dir.clone().unwrap_or_else(|| target_dir().join("bench-cache"))
}

async fn run_startup(args: &StartupArgs, runs: usize) -> anyhow::Result<Runs> {
    let binary = release_binary(args.binary.as_deref())?;
    let db = startup_database(args.sessions, &startup_cache(args)).await?;
    repeat("startup", runs, || startup(args, &binary, &db)).await
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let runs = cli.runs;
    build_companions()?;
    match cli.scenario {
        Scenario::Lateness(a) => {
            let name = format!("lateness ({})", a.provider.name());
            drop(repeat(&name, runs, || lateness(&a)).await?)
        }
        Scenario::Scheduler(a) => drop(repeat("scheduler", runs, || scheduler(&a)).await?),
        Scenario::Drain(a) => {
            let name = format!("drain ({})", a.provider.name());
            drop(repeat(&name, runs, || drain(&a)).await?)
        }
        Scenario::Startup(a) => drop(run_startup(&a, runs).await?),
        Scenario::Registrations(a) => drop(repeat("registrations", runs, || registrations(&a)).await?),
        Scenario::BulkInsert(a) => drop(repeat("bulk_insert", runs, || bulk_insert(&a)).await?),
        Scenario::Prune(a) => drop(repeat("prune", runs, || prune(&a)).await?),
        Scenario::Connections(a) => drop(repeat("connections", runs, || connections(&a)).await?),
        Scenario::Failover(a) => drop(repeat("failover", runs, || failover(&a)).await?),
        Scenario::PgLateness(a) => drop(repeat("pg_lateness", runs, || pg_lateness(&a)).await?),
        Scenario::PgDrain(a) => drop(repeat("pg_drain", runs, || pg_drain(&a)).await?),
        Scenario::Report(a) => report::run(&a, runs).await?,
        Scenario::All(all) => {
            let l = LatenessArgs {
                sessions: 1000,
                spread_secs: 100.0,
                measure_secs: None,
                system: System::Callwarden,
                remove_user_every: 10,
                provider: ProviderKind::Trtc,
            };
            let s = SchedulerArgs { sessions: 100_000, spread_secs: 100.0 };
            let d = DrainArgs {
                sessions: 2000,
                rate: 19,
                provider: ProviderKind::Trtc,
                system: System::Callwarden,
            };
            let st = StartupArgs {
                sessions: 1_000_000,
                cache_dir: all.cache_dir,
                binary: None,
                settle_secs: 3.0,
                idle_secs: 10.0,
                baseline: false,
                scrapes: 200,
            };
            let results = [
                ("lateness", repeat("lateness", runs, || lateness(&l)).await?),
                ("scheduler", repeat("scheduler", runs, || scheduler(&s)).await?),
                ("drain", repeat("drain", runs, || drain(&d)).await?),
                ("startup", run_startup(&st, runs).await?),
            ];
            out(&format!("\n==== summary ({runs} run(s) each; medians when more than one) ===="));
            for (name, r) in &results {
                r.median.print(&format!("{name}:"));
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    callwarden::telemetry::init(callwarden::telemetry::LogFormat::Human, "warn");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}
