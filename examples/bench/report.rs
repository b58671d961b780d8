//! `bench report`: every scenario of issue 7, callwarden and the baseline
//! side by side, those of issue 12 (hardening: `hardening`) and of issue
//! 14 (several instances on PostgreSQL: `instances`), each run
//! `--runs` times, written as BENCHMARKS.md to stdout.
//! Every figure in the output comes from this run; the only fixed text is
//! the targets, the explanations, and the hand-written notes file appended
//! verbatim at the end.

mod hardening;
mod instances;
mod machine;
mod table;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use chrono::Utc;
use clap::Args;

use crate::args::{DrainArgs, LatenessArgs, ProviderKind, RegistrationsArgs, StartupArgs, System};
use crate::figures::PRINT_TO_STDERR;
use crate::rig::BASELINE_RATE;
use crate::scenarios::api_load::api_load;
use crate::scenarios::drain::drain;
use crate::scenarios::lateness::lateness;
use crate::scenarios::registrations::{SQL_INSERT, registrations};
use crate::{repeat, run_startup};
use hardening::Hardening;
use instances::Instances;
use machine::{busiest_processes, machine_table};
use table::{Check, all_figures, row, thousands};

#[derive(Args, Clone)]
pub(crate) struct ReportArgs {
    /// Small sizes, to check the whole report end to end in a few minutes.
    #[arg(long)]
    quick: bool,
    /// Hand-written notes, appended verbatim (default: bench/notes.md in the source tree).
    #[arg(long)]
    notes: Option<PathBuf>,
    /// Seconds of deadlines measured in each lateness scenario.
    #[arg(long, default_value_t = 40.0)]
    window_secs: f64,
    /// Where the one-million-session database is kept (default: $CARGO_TARGET_DIR/bench-cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

/// The sizes of one report.
struct Plan {
    lateness: [LatenessArgs; 2],
    drain: DrainArgs,
    registrations: RegistrationsArgs,
    api_seconds: u64,
    startup: StartupArgs,
    hardening: Hardening,
    instances: Instances,
}

impl Plan {
    fn new(a: &ReportArgs) -> Plan {
        // Deadlines 100 ms apart (10/s, half the quota) in both lateness
        // scenarios; only the queue behind the measured window differs.
        let (small, large, window) =
            if a.quick { (500, 5_000, 10.0) } else { (10_000, 100_000, a.window_secs) };
        let lateness = |n: usize| LatenessArgs {
            sessions: n,
            spread_secs: n as f64 / 10.0,
            measure_secs: Some(window),
            system: System::Both,
            remove_user_every: 10,
            provider: ProviderKind::Trtc,
        };
        Plan {
            lateness: [lateness(small), lateness(large)],
            drain: DrainArgs {
                sessions: if a.quick { 200 } else { 10_000 },
                rate: callwarden::config::DEFAULT_REQUESTS_PER_SECOND,
                provider: ProviderKind::Trtc,
                system: System::Both,
            },
            registrations: RegistrationsArgs {
                seconds: if a.quick { 2.0 } else { 5.0 },
                batch: 500,
                adopt_secs: if a.quick { 5.0 } else { 20.0 },
            },
            api_seconds: if a.quick { 2 } else { 10 },
            startup: StartupArgs {
                sessions: if a.quick { 20_000 } else { 1_000_000 },
                cache_dir: a.cache_dir.clone(),
                binary: None,
                settle_secs: if a.quick { 1.0 } else { 3.0 },
                idle_secs: if a.quick { 3.0 } else { 10.0 },
                baseline: true,
                scrapes: if a.quick { 50 } else { 200 },
            },
            hardening: Hardening::new(a.quick, a.cache_dir.clone()),
            instances: Instances::new(a.quick, a.window_secs),
        }
    }
}

fn lateness_cmd(a: &LatenessArgs, runs: usize) -> String {
    format!(
        "bench lateness --sessions {} --spread-secs {} --measure-secs {} --system both --runs {runs}",
        a.sessions,
        a.spread_secs,
        a.measure_secs.unwrap_or(a.spread_secs)
    )
}

pub(crate) async fn run(a: &ReportArgs, runs: usize) -> anyhow::Result<()> {
    PRINT_TO_STDERR.store(true, Ordering::Relaxed);
    let plan = Plan::new(a);
    let started = Utc::now();
    let machine = machine_table();
    let busy_before = busiest_processes();

    let mut lateness_runs = Vec::new();
    for l in &plan.lateness {
        let name = format!("lateness {} sessions", l.sessions);
        lateness_runs.push(repeat(&name, runs, || lateness(l)).await?);
    }
    let drain_runs = repeat("drain", runs, || drain(&plan.drain)).await?;
    let sql_runs = repeat("registrations (SQL)", runs, || registrations(&plan.registrations)).await?;
    let api_runs = api_load(plan.api_seconds, runs, None)?;
    let startup_runs = run_startup(&plan.startup, runs).await?;
    let hard_runs = plan.hardening.run(runs).await?;
    let instance_runs = plan.instances.run(runs).await?;
    let busy_after = busiest_processes();
    let finished = Utc::now();

    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "<!-- Generated by `bench/report.sh` (examples/bench/, `report`). Do not edit by hand: rerun it. \
         Hand-written notes live in bench/notes.md and are appended at the end. -->\n"
    );
    let _ = writeln!(
        w,
        "Every figure below comes from one invocation of `bench/report.sh {runs}`{}, which builds once and \
         runs each scenario {runs} time(s). Tables give the **median** over the runs and then each run's value. \
         callwarden and the baseline (`examples/baseline_poller.rs`: every second, `SELECT` the due sessions, \
         call TRTC for each in turn with a 50 ms sleep after each call, mark the row done) run **at the same \
         time**, each with its own sandbox, tap and SQLite file, so both see the same machine noise.\n",
        if a.quick { " with `--quick` (smoke sizes, not the issue's sizes)" } else { "" }
    );
    let _ = writeln!(w, "## Machine and build\n\n| | |\n|---|---|");
    for (k, v) in &machine {
        let _ = writeln!(w, "| {k} | {v} |");
    }
    let _ = writeln!(
        w,
        "| date | {} to {} UTC ({:.0} min) |",
        started.format("%Y-%m-%d %H:%M"),
        finished.format("%H:%M"),
        (finished - started).num_seconds() as f64 / 60.0
    );
    let _ = writeln!(w, "| busiest processes before | {busy_before} |");
    let _ = writeln!(w, "| busiest processes after | {busy_after} |\n");
    let _ = writeln!(
        w,
        "The machine is shared: other work may have run on the same two cores and disk during the run (see \
         the busiest processes above, and each lateness and drain scenario's fsync and CPU monitors below). \
         The deadline figures are the most sensitive to that.\n"
    );

    // ---- the targets ------------------------------------------------------------
    let _ = writeln!(w, "## Targets (issues 7, 12 and 14) and the baseline\n");
    let _ = writeln!(
        w,
        "\"Ratio\" is baseline ÷ callwarden. Each \"runs\" cell lists callwarden's value in every run.\n"
    );
    let _ =
        writeln!(w, "| Figure | Target | callwarden (median) | runs | baseline (median) | ratio | Met? |");
    let _ = writeln!(w, "|---|---|---|---|---|---|---|");
    for (l, r) in plan.lateness.iter().zip(&lateness_runs) {
        let scope = format!(
            "{} sessions queued, deadlines 10/s, first {:.0} s measured",
            thousands(l.sessions as f64),
            l.measure_secs.unwrap_or(l.spread_secs)
        );
        for (stat, target) in [("p50", None), ("p99", Some(20.0)), ("max", None)] {
            let name = format!("lateness (tap arrival - deadline) {stat}");
            row(
                w,
                &format!("lateness {stat} ({scope})"),
                target.map_or(String::new(), |t| format!("≤ {t} ms")),
                r,
                &name,
                Some(&format!("baseline: {name}")),
                "ms",
                target.map(|t| Box::new(move |v: f64| v <= t) as Check),
            );
        }
        row(
            w,
            &format!("calls before their deadline ({} sessions)", thousands(l.sessions as f64)),
            "0".into(),
            r,
            "early calls (tap arrival < deadline)",
            Some("baseline: early calls (tap arrival < deadline)"),
            "",
            Some(Box::new(|v| v == 0.0)),
        );
        row(
            w,
            &format!("quota errors (429) during lateness, {} sessions", thousands(l.sessions as f64)),
            "0".into(),
            r,
            "sandbox rate_limited",
            Some("baseline: sandbox rate_limited"),
            "",
            Some(Box::new(|v| v == 0.0)),
        );
    }
    let d = &plan.drain;
    row(
        w,
        &format!("drain: {} simultaneous expiries, deadline → last call", thousands(d.sessions as f64)),
        format!("floor {} s", d.sessions as f64 / 20.0),
        &drain_runs,
        "drain: deadline -> last call leaves",
        Some("baseline: drain: deadline -> last call leaves"),
        "s",
        None,
    );
    row(
        w,
        "drain ÷ floor (sessions ÷ 20/s quota)",
        "≤ 1.02".into(),
        &drain_runs,
        "ratio drain / floor (sessions / quota 20)",
        Some("baseline: ratio drain / floor (sessions / quota 20)"),
        "",
        Some(Box::new(|v| v <= 1.02)),
    );
    row(
        w,
        &format!("drain ÷ (sessions ÷ own rate: callwarden {}/s, baseline {BASELINE_RATE}/s)", d.rate),
        "".into(),
        &drain_runs,
        "ratio drain / (sessions / own rate)",
        Some("baseline: ratio drain / (sessions / own rate)"),
        "",
        None,
    );
    row(
        w,
        "quota errors (429) during the drain",
        "0".into(),
        &drain_runs,
        "sandbox rate_limited",
        Some("baseline: sandbox rate_limited"),
        "",
        Some(Box::new(|v| v == 0.0)),
    );
    row(
        w,
        "most calls in one sliding second (sandbox)",
        "≤ 20".into(),
        &drain_runs,
        "sandbox max_per_second",
        Some("baseline: sandbox max_per_second"),
        "",
        Some(Box::new(|v| v <= 20.0)),
    );
    row(
        w,
        "registrations/s through the API (`POST /v1/sessions`, 32 clients)",
        "≥ 5,000/s".into(),
        &api_runs,
        "API registrations/s",
        None,
        "/s",
        Some(Box::new(|v| v >= 5000.0)),
    );
    row(
        w,
        "signed TRTC webhook events/s (`POST /webhooks/trtc`, 32 clients)",
        "≥ 5,000/s".into(),
        &api_runs,
        "TRTC webhook events/s",
        None,
        "/s",
        Some(Box::new(|v| v >= 5000.0)),
    );
    row(
        w,
        "webhook answer time p99 (32 clients)",
        "".into(),
        &api_runs,
        "TRTC webhook events: latency p99",
        None,
        "ms",
        None,
    );
    row(
        w,
        "registrations/s through plain SQL, one row per transaction",
        "".into(),
        &sql_runs,
        "plain SQL, one row per transaction: registrations/s",
        None,
        "/s",
        None,
    );
    row(
        w,
        &format!("registrations/s through plain SQL, {} rows per transaction", plan.registrations.batch),
        "".into(),
        &sql_runs,
        "plain SQL, batched transactions: registrations/s",
        None,
        "/s",
        None,
    );
    row(
        w,
        "plain-SQL rows adopted by the daemon per second",
        "".into(),
        &sql_runs,
        "adoption: sessions/s (first insert -> end of wait)",
        None,
        "/s",
        None,
    );
    let st = &plan.startup;
    let n = thousands(st.sessions as f64);
    row(
        w,
        &format!("startup at {n} active sessions (spawn → ready line)"),
        "< 1 s".into(),
        &startup_runs,
        "startup: spawn -> \"callwarden running\"",
        Some("baseline: startup: spawn -> \"baseline running\""),
        "ms",
        Some(Box::new(|v| v < 1000.0)),
    );
    let rss = format!("VmRSS after {:.0} s", st.settle_secs);
    row(
        w,
        &format!("RSS at {n} active sessions ({:.0} s after start)", st.settle_secs),
        "< 64 MB".into(),
        &startup_runs,
        &rss,
        Some(&format!("baseline: {rss}")),
        "MB",
        Some(Box::new(|v| v < 64.0)),
    );
    row(
        w,
        &format!("RSS at {n} active sessions (end of the idle window)"),
        "< 64 MB".into(),
        &startup_runs,
        "VmRSS at the end of the idle window",
        Some("baseline: VmRSS at the end of the idle window"),
        "MB",
        Some(Box::new(|v| v < 64.0)),
    );
    let idle = format!("idle CPU over {:.0} s (% of one core)", st.idle_secs);
    row(
        w,
        &format!("idle CPU at {n} active sessions (% of one core)"),
        "near 0".into(),
        &startup_runs,
        &idle,
        Some(&format!("baseline: {idle}")),
        "%",
        None,
    );
    for stat in ["p50", "p99"] {
        row(
            w,
            &format!("`GET /metrics` answer time {stat} at {n} active sessions"),
            "".into(),
            &startup_runs,
            &format!("GET /metrics: answer time {stat}"),
            None,
            "ms",
            None,
        );
    }
    plan.hardening.targets(w, &hard_runs);
    plan.instances.targets(w, &instance_runs);
    let _ = writeln!(w);

    // ---- commands ------------------------------------------------------------------
    let _ = writeln!(w, "## Commands\n");
    let _ = writeln!(
        w,
        "The whole file: `bench/report.sh {runs}` (= `cargo build --release` of the daemon and the three \
         examples, then `$CARGO_TARGET_DIR/release/examples/bench report --runs {runs}{} > BENCHMARKS.md`). \
         Each scenario on its own, with the same sizes (prefix each with \
         `cargo run --release --example`):\n",
        if a.quick { " --quick" } else { "" }
    );
    let _ = writeln!(w, "```sh");
    for l in &plan.lateness {
        let _ = writeln!(w, "{}", lateness_cmd(l, runs));
    }
    let _ =
        writeln!(w, "bench drain --sessions {} --rate {} --system both --runs {runs}", d.sessions, d.rate);
    let r = &plan.registrations;
    let _ = writeln!(
        w,
        "bench registrations --seconds {} --batch {} --adopt-secs {} --runs {runs}",
        r.seconds, r.batch, r.adopt_secs
    );
    let _ = writeln!(w, "api_load --seconds {} --runs {runs}", plan.api_seconds);
    let _ = writeln!(
        w,
        "bench startup --sessions {} --settle-secs {} --idle-secs {} --baseline --scrapes {} --runs {runs}",
        st.sessions, st.settle_secs, st.idle_secs, st.scrapes
    );
    plan.hardening.commands(w, runs);
    plan.instances.commands(w, runs);
    let _ = writeln!(w, "```\n");

    // ---- every figure ----------------------------------------------------------------
    let _ = writeln!(w, "## Every figure, by scenario\n");
    for (l, r) in plan.lateness.iter().zip(&lateness_runs) {
        let _ = writeln!(
            w,
            "### Lateness, {} sessions queued\n\n`{}`. Deadlines every {} ms (1 in 10 a RemoveUser, the \
             rest DismissRoom, distinct rooms); the sessions due in the first {:.0} s are measured, the \
             other {} stay queued behind them. Lateness is the tap's arrival time of a room's first call \
             minus its deadline. Figures without \"baseline:\" are callwarden's.\n",
            thousands(l.sessions as f64),
            lateness_cmd(l, runs),
            l.spread_secs * 1000.0 / l.sessions as f64,
            l.measure_secs.unwrap_or(l.spread_secs),
            thousands(l.sessions as f64 - l.measure_secs.unwrap_or(l.spread_secs) * 10.0),
        );
        all_figures(w, r);
    }
    let _ = writeln!(
        w,
        "### Drain\n\n`bench drain --sessions {} --rate {} --system both --runs {runs}`. {} sessions share \
         one deadline, each a DismissRoom of its own room. callwarden runs at its default \
         `max_requests_per_second` ({}); the baseline sleeps 1/{BASELINE_RATE} s after each call. \
         Sandbox quota: 20 per action per sliding second.\n",
        d.sessions,
        d.rate,
        thousands(d.sessions as f64),
        d.rate
    );
    all_figures(w, &drain_runs);
    let _ = writeln!(
        w,
        "### Registrations through plain SQL\n\n`bench registrations --seconds {} --batch {} --adopt-secs {}`. \
         With the daemon running, an application's own connection (`synchronous=FULL`, `busy_timeout` 5 s) \
         runs `{SQL_INSERT}` for {} s one row per transaction, then {} s in transactions of {} rows; then \
         the daemon gets up to {} s to adopt the rows (fill in provider and deadline, one transaction each).\n",
        r.seconds, r.batch, r.adopt_secs, r.seconds, r.seconds, r.batch, r.adopt_secs
    );
    all_figures(w, &sql_runs);
    let _ = writeln!(
        w,
        "### Session API and webhooks\n\n`api_load --seconds {} --runs {runs}`: daemon and load generator \
         in one process on two runtimes sharing the cores, 32 clients, `{} s` per phase, while ten \
         one-second sessions a second are enforced.\n",
        plan.api_seconds, plan.api_seconds
    );
    all_figures(w, &api_runs);
    let _ = writeln!(
        w,
        "### Startup, memory and idle CPU\n\n`bench startup --sessions {} --baseline`: the release daemon \
         over a cached database of {n} active sessions (deadlines in 2099), then the baseline over the same \
         file. Startup is spawn → the ready line on stderr. Then the daemon is started once more over the \
         same file, with `listen:`, and `/metrics` is scraped {} times in a row over one kept-alive \
         connection (the first scrape is also shown on its own).\n",
        st.sessions, st.scrapes
    );
    all_figures(w, &startup_runs);
    plan.hardening.sections(w, &hard_runs, runs);
    plan.instances.sections(w, &instance_runs, runs);

    // ---- notes ------------------------------------------------------------------------
    let notes_path = a
        .notes
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench").join("notes.md"));
    match std::fs::read_to_string(&notes_path) {
        Ok(notes) => {
            let _ = writeln!(
                w,
                "---\n\n<!-- Everything below is copied verbatim from bench/notes.md (hand-written). -->\n"
            );
            let _ = write!(w, "{notes}");
        }
        Err(e) => eprintln!("no notes appended: {}: {e}", notes_path.display()),
    }
    print!("{md}");
    Ok(())
}
