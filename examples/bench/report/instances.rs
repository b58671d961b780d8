//! The report's part for issue 14 (several instances on PostgreSQL), each
//! scenario on a throwaway cluster: the failover scenario (three daemons,
//! the leader killed and stopped again and again), lateness with 10,000
//! sessions queued on one instance and on three, a drain of 10,000 with
//! the leader killed twice, and the API load against PostgreSQL. Their
//! rows in the targets table, their commands and their sections.

use std::fmt::Write as _;

use anyhow::anyhow;

use super::table::{Check, all_figures, row, thousands};
use crate::args::{FailoverArgs, PgDrainArgs, PgLatenessArgs};
use crate::figures::Runs;
use crate::pg_cluster;
use crate::repeat;
use crate::scenarios::api_load::api_load;
use crate::scenarios::failover::failover;
use crate::scenarios::pg_queue::{pg_drain, pg_lateness};

/// The scenarios' sizes in one report.
pub(crate) struct Instances {
    failover: FailoverArgs,
    /// One instance, then three.
    lateness: [PgLatenessArgs; 2],
    drain: PgDrainArgs,
    api_seconds: u64,
}

/// Every run of the issue-14 scenarios.
pub(crate) struct InstanceRuns {
    failover: Runs,
    lateness: Vec<Runs>,
    drain: Runs,
    api: Runs,
}

impl Instances {
    pub(crate) fn new(quick: bool, window_secs: f64) -> Instances {
        let n = if quick { 2 } else { 10 };
        // As SQLite's lateness rows: deadlines 100 ms apart, the first
        // window measured, the rest queued behind.
        let (sessions, window) = if quick { (500, 10.0) } else { (10_000, window_secs) };
        let lateness = |instances| PgLatenessArgs {
            instances,
            sessions,
            spread_secs: sessions as f64 / 10.0,
            measure_secs: window,
        };
        Instances {
            failover: FailoverArgs { kills: n, stops: n, cycle_secs: 8.0 },
            lateness: [lateness(1), lateness(3)],
            drain: PgDrainArgs { instances: 3, sessions: if quick { 200 } else { 10_000 }, kills: 2 },
            api_seconds: if quick { 2 } else { 10 },
        }
    }

    pub(crate) async fn run(&self, runs: usize) -> anyhow::Result<InstanceRuns> {
        let failover_runs = repeat("failover", runs, || failover(&self.failover)).await?;
        let mut lateness = Vec::new();
        for l in &self.lateness {
            let name = format!("pg_lateness {} instance(s)", l.instances);
            lateness.push(repeat(&name, runs, || pg_lateness(l)).await?);
        }
        let drain = repeat("pg_drain", runs, || pg_drain(&self.drain)).await?;
        let cluster =
            pg_cluster::Cluster::start().map_err(|e| anyhow!("PostgreSQL cannot run here: {}", e.0))?;
        let api = api_load(self.api_seconds, runs, Some(&cluster.url("")))?;
        drop(cluster);
        Ok(InstanceRuns { failover: failover_runs, lateness, drain, api })
    }

    fn failover_cmd(&self, runs: usize) -> String {
        let f = &self.failover;
        format!(
            "bench failover --kills {} --stops {} --cycle-secs {} --runs {runs}",
            f.kills, f.stops, f.cycle_secs
        )
    }

    fn lateness_cmd(l: &PgLatenessArgs, runs: usize) -> String {
        format!(
            "bench pg_lateness --instances {} --sessions {} --spread-secs {} --measure-secs {} --runs {runs}",
            l.instances, l.sessions, l.spread_secs, l.measure_secs
        )
    }

    fn drain_cmd(&self, runs: usize) -> String {
        let d = &self.drain;
        format!(
            "bench pg_drain --instances {} --sessions {} --kills {} --runs {runs}",
            d.instances, d.sessions, d.kills
        )
    }

    fn api_cmd(&self, runs: usize) -> String {
        format!(
            "api_load --seconds {} --runs {runs} --postgres postgres://postgres@127.0.0.1:PORT (a throwaway cluster)",
            self.api_seconds
        )
    }

    pub(crate) fn commands(&self, w: &mut String, runs: usize) {
        let _ = writeln!(w, "{}", self.failover_cmd(runs));
        for l in &self.lateness {
            let _ = writeln!(w, "{}", Self::lateness_cmd(l, runs));
        }
        let _ = writeln!(w, "{}", self.drain_cmd(runs));
        let _ = writeln!(w, "{}", self.api_cmd(runs));
    }

    /// The issue-14 rows of the targets table.
    pub(crate) fn targets(&self, w: &mut String, r: &InstanceRuns) {
        let at_most = |t: f64| Some(Box::new(move |v: f64| v <= t) as Check);
        let at_least = |t: f64| Some(Box::new(move |v: f64| v >= t) as Check);
        let zero = || Some(Box::new(|v: f64| v == 0.0) as Check);
        for (l, runs) in self.lateness.iter().zip(&r.lateness) {
            let who = match l.instances {
                1 => "1 instance".to_string(),
                n => format!("{n} instances"),
            };
            let queued = format!("{} queued", thousands(l.sessions as f64));
            for stat in ["p50", "p99", "max"] {
                let check = if stat == "p99" { at_most(20.0) } else { None };
                let target = if check.is_some() { "≤ 20 ms".to_string() } else { String::new() };
                row(
                    w,
                    &format!("PostgreSQL, {who}, {queued}: lateness {stat}"),
                    target,
                    runs,
                    &format!("lateness (tap arrival - deadline) {stat}"),
                    None,
                    "ms",
                    check,
                );
            }
            for (label, name) in [
                ("calls before their deadline", "calls before their deadline"),
                ("quota errors (429)", "sandbox rate_limited"),
            ] {
                row(
                    w,
                    &format!("PostgreSQL, {who}, {queued}: {label}"),
                    "0".into(),
                    runs,
                    name,
                    None,
                    "",
                    zero(),
                );
            }
        }
        let d = &self.drain;
        let drain = format!(
            "PostgreSQL, {} instances, drain of {} with the leader killed {}×",
            d.instances,
            thousands(d.sessions as f64),
            d.kills
        );
        row(
            w,
            &format!("{drain}: drain / (floor at the rate + takeover gaps)"),
            "≤ 1.02".into(),
            &r.drain,
            "ratio drain / floor with the takeover gaps",
            None,
            "",
            at_most(1.02),
        );
        row(
            w,
            &format!("{drain}: takeover gap, median"),
            String::new(),
            &r.drain,
            "takeover gap: kill -> next call p50",
            None,
            "ms",
            None,
        );
        for (label, name) in [
            ("rooms dismissed twice with success", "rooms dismissed twice with success"),
            ("quota errors (429)", "sandbox rate_limited"),
        ] {
            row(w, &format!("{drain}: {label}"), "0".into(), &r.drain, name, None, "", zero());
        }
        for (what, bound) in [("kill -9", 5_000.0), ("clean stop", 1_000.0)] {
            for stat in ["min", "p50", "max"] {
                let check = if stat == "max" { at_most(bound) } else { None };
                let target = if check.is_some() { format!("≤ {bound:.0} ms") } else { String::new() };
                row(
                    w,
                    &format!(
                        "PostgreSQL, 3 instances: failover after {what} of the leader, signal → next call {stat}"
                    ),
                    target,
                    &r.failover,
                    &format!("failover after {what}: signal -> next call {stat}"),
                    None,
                    "ms",
                    check,
                );
            }
        }
        for (label, name) in [
            (
                "PostgreSQL, 3 instances: rooms dismissed twice with success",
                "rooms dismissed twice with success",
            ),
            ("PostgreSQL, 3 instances: quota errors (429) across the failovers", "sandbox rate_limited"),
            ("PostgreSQL, 3 instances: calls before their deadline", "calls before their deadline"),
        ] {
            row(w, label, "0".into(), &r.failover, name, None, "", zero());
        }
        row(
            w,
            "PostgreSQL, 3 instances: connections held per instance",
            "".into(),
            &r.failover,
            "connections held per instance, after the run",
            None,
            "",
            None,
        );
        row(
            w,
            "PostgreSQL: API registrations/s",
            "≥ 5,000/s".into(),
            &r.api,
            "API registrations/s",
            None,
            "/s",
            at_least(5_000.0),
        );
        row(
            w,
            "PostgreSQL: API registrations, latency p99",
            String::new(),
            &r.api,
            "API registrations: latency p99",
            None,
            "ms",
            None,
        );
        row(
            w,
            "PostgreSQL: TRTC webhook events/s",
            String::new(),
            &r.api,
            "TRTC webhook events/s",
            None,
            "/s",
            None,
        );
        row(
            w,
            "PostgreSQL: TRTC webhook events, latency p99",
            String::new(),
            &r.api,
            "TRTC webhook events: latency p99",
            None,
            "ms",
            None,
        );
    }

    pub(crate) fn sections(&self, w: &mut String, r: &InstanceRuns, runs: usize) {
        let f = &self.failover;
        let _ = writeln!(
            w,
            "### Failover, three instances on PostgreSQL (issue 14)\n\n`{}`. A throwaway PostgreSQL cluster \
             (`initdb` in a temporary folder, fsync on), the sandbox behind the tap, and three daemons (the \
             release binary, each its own process) with the same configuration. Sessions fall due every 100 ms. \
             Every {} s the instance leading the TRTC bucket (read from the lease rows) is killed with SIGKILL \
             ({} times), then stopped with SIGTERM ({} times), and a fresh instance is started in its place. A \
             failover's figure is when the tap saw the next provider call, minus the signal. Lateness counts \
             every session's first call, the failovers' gaps included.\n",
            self.failover_cmd(runs),
            f.cycle_secs,
            f.kills,
            f.stops,
        );
        all_figures(w, &r.failover);
        for (l, runs_of) in self.lateness.iter().zip(&r.lateness) {
            let _ = writeln!(
                w,
                "\n### Lateness on PostgreSQL, {} instance(s) (issue 14)\n\n`{}`. The same cluster set-up; {} \
                 sessions queued with deadlines 100 ms apart, and the first {} s of them measured as SQLite's \
                 lateness scenario measures them: when the tap saw each room's first call, minus its deadline.\n",
                l.instances,
                Self::lateness_cmd(l, runs),
                thousands(l.sessions as f64),
                l.measure_secs,
            );
            all_figures(w, runs_of);
        }
        let d = &self.drain;
        let _ = writeln!(
            w,
            "\n### Drain on PostgreSQL, {} instances, the leader killed {}× (issue 14)\n\n`{}`. {} sessions \
             due at the same moment, drained at the configured 19 requests/second; the instance leading TRTC is \
             killed with SIGKILL at evenly spaced moments of the drain and replaced by a fresh one. The floor is \
             (sessions − 1) / rate plus each takeover's gap (kill → next call, as the tap saw it).\n",
            d.instances,
            d.kills,
            self.drain_cmd(runs),
            thousands(d.sessions as f64),
        );
        all_figures(w, &r.drain);
        let _ = writeln!(
            w,
            "\n### The API and webhooks on PostgreSQL (issue 14)\n\n`{}`. As the SQLite API scenario, with \
             `database:` a fresh database on a throwaway cluster (fsync on) for each run.\n",
            self.api_cmd(runs),
        );
        all_figures(w, &r.api);
    }
}
