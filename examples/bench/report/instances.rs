//! The report's part for issue 14 (several instances on PostgreSQL): the
//! failover scenario (three daemons on a throwaway cluster, the leader
//! killed and stopped again and again), its rows in the targets table, its
//! command and its section.

use std::fmt::Write as _;

use super::table::{Check, all_figures, row};
use crate::args::FailoverArgs;
use crate::figures::Runs;
use crate::repeat;
use crate::scenarios::failover::failover;

/// The failover scenario's size in one report.
pub(crate) struct Instances {
    failover: FailoverArgs,
}

impl Instances {
    pub(crate) fn new(quick: bool) -> Instances {
        let n = if quick { 2 } else { 10 };
        Instances { failover: FailoverArgs { kills: n, stops: n, cycle_secs: 8.0 } }
    }

    pub(crate) async fn run(&self, runs: usize) -> anyhow::Result<Runs> {
        repeat("failover", runs, || failover(&self.failover)).await
    }

    fn cmd(&self, runs: usize) -> String {
        let f = &self.failover;
        format!(
            "bench failover --kills {} --stops {} --cycle-secs {} --runs {runs}",
            f.kills, f.stops, f.cycle_secs
        )
    }

    pub(crate) fn commands(&self, w: &mut String, runs: usize) {
        let _ = writeln!(w, "{}", self.cmd(runs));
    }

    /// The issue-14 rows of the targets table.
    pub(crate) fn targets(&self, w: &mut String, r: &Runs) {
        let at_most = |t: f64| Some(Box::new(move |v: f64| v <= t) as Check);
        let zero = || Some(Box::new(|v: f64| v == 0.0) as Check);
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
                    r,
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
            row(w, label, "0".into(), r, name, None, "", zero());
        }
        row(
            w,
            "PostgreSQL, 3 instances: connections held per instance",
            "".into(),
            r,
            "connections held per instance, after the run",
            None,
            "",
            None,
        );
    }

    pub(crate) fn sections(&self, w: &mut String, r: &Runs, runs: usize) {
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
            self.cmd(runs),
            f.cycle_secs,
            f.kills,
            f.stops,
        );
        all_figures(w, r);
    }
}
