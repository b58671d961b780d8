//! The report's part for issue 12 (hardening): the bulk insert, prune and
//! connections scenarios, their sizes, their rows in the targets table,
//! their commands and their sections.

use std::fmt::Write as _;

use super::table::{Check, all_figures, row, thousands};
use crate::args::{BulkInsertArgs, ConnectionsArgs, PruneArgs};
use crate::figures::Runs;
use crate::repeat;
use crate::scenarios::bulk_insert::bulk_insert;
use crate::scenarios::connections::connections;
use crate::scenarios::prune::prune;
use crate::scenarios::prune_db::RETENTION_DAYS;

/// The sizes of the hardening scenarios in one report.
pub(crate) struct Hardening {
    bulk: BulkInsertArgs,
    prune: PruneArgs,
    connections: ConnectionsArgs,
}

/// Their figures, once run.
pub(crate) struct HardeningRuns {
    bulk: Runs,
    prune: Runs,
    connections: Runs,
}

impl Hardening {
    pub(crate) fn new(quick: bool, cache_dir: Option<std::path::PathBuf>) -> Hardening {
        Hardening {
            bulk: BulkInsertArgs {
                rows: if quick { 20_000 } else { 200_000 },
                batch: 500,
                spread_secs: if quick { 10.0 } else { 40.0 },
                adopt_secs: 180.0,
            },
            prune: PruneArgs {
                sessions: if quick { 20_000 } else { 1_000_000 },
                recent_sessions: if quick { 5_000 } else { 250_000 },
                max_secs: 150.0,
                cache_dir,
            },
            connections: ConnectionsArgs {
                idle: if quick { 500 } else { 5000 },
                slow: if quick { 100 } else { 1000 },
                slow_every: 2.0,
                secs: if quick { 25.0 } else { 60.0 },
            },
        }
    }

    pub(crate) async fn run(&self, runs: usize) -> anyhow::Result<HardeningRuns> {
        Ok(HardeningRuns {
            bulk: repeat("bulk_insert", runs, || bulk_insert(&self.bulk)).await?,
            prune: repeat("prune", runs, || prune(&self.prune)).await?,
            connections: repeat("connections", runs, || connections(&self.connections)).await?,
        })
    }

    fn bulk_cmd(&self, runs: usize) -> String {
        let b = &self.bulk;
        format!(
            "bench bulk_insert --rows {} --batch {} --spread-secs {} --adopt-secs {} --runs {runs}",
            b.rows, b.batch, b.spread_secs, b.adopt_secs
        )
    }

    fn prune_cmd(&self, runs: usize) -> String {
        let p = &self.prune;
        format!(
            "bench prune --sessions {} --recent-sessions {} --max-secs {} --runs {runs}",
            p.sessions, p.recent_sessions, p.max_secs
        )
    }

    fn connections_cmd(&self, runs: usize) -> String {
        let c = &self.connections;
        format!(
            "bench connections --idle {} --slow {} --slow-every {} --secs {} --runs {runs}",
            c.idle, c.slow, c.slow_every, c.secs
        )
    }

    pub(crate) fn commands(&self, w: &mut String, runs: usize) {
        let _ = writeln!(w, "{}", self.bulk_cmd(runs));
        let _ = writeln!(w, "{}", self.prune_cmd(runs));
        let _ = writeln!(w, "{}", self.connections_cmd(runs));
    }

    /// The issue-12 rows of the targets table.
    pub(crate) fn targets(&self, w: &mut String, r: &HardeningRuns) {
        let at_most = |t: f64| Some(Box::new(move |v: f64| v <= t) as Check);
        let zero = || Some(Box::new(|v: f64| v == 0.0) as Check);
        let rows = thousands(self.bulk.rows as f64);
        let during = "due during the insert: lateness (tap arrival - deadline)";
        for (stat, check) in [("p50", None), ("p99", at_most(20.0)), ("max", None)] {
            let target = if check.is_some() { "≤ 20 ms" } else { "" };
            let label =
                format!("bulk insert of {rows} plain-SQL rows: lateness {stat} of sessions due meanwhile");
            row(w, &label, target.into(), &r.bulk, &format!("{during} {stat}"), None, "ms", check);
        }
        row(
            w,
            "bulk insert: application insert rate",
            "".into(),
            &r.bulk,
            "insert: rows/s",
            None,
            "/s",
            None,
        );
        let all = Some(Box::new(|v: f64| v == 1.0) as Check);
        row(
            w,
            &format!("bulk insert: all {rows} rows adopted (1 = yes)"),
            "1".into(),
            &r.bulk,
            "all rows adopted",
            None,
            "",
            all,
        );
        let adopt = "adoption: insert start -> last row adopted";
        row(w, "bulk insert: insert start → last row adopted", "".into(), &r.bulk, adopt, None, "s", None);
        let firings = "watchdog: gaps over WatchdogSec=30 s (firings)";
        row(
            w,
            "bulk insert: watchdog firings (no ping for 30 s)",
            "0".into(),
            &r.bulk,
            firings,
            None,
            "",
            zero(),
        );
        let gap = "watchdog: longest gap between pings while sessions fell due";
        row(w, "bulk insert: longest gap between watchdog pings", "".into(), &r.bulk, gap, None, "ms", None);

        let p = &self.prune;
        let scope = format!(
            "{} sessions + {} audit rows",
            thousands(p.sessions as f64),
            thousands(2.0 * p.sessions as f64)
        );
        let hold = "during the prune: wait for the write lock";
        row(
            w,
            &format!("prune of {scope}: longest writer hold (probe wait max)"),
            "≤ ~50 ms".into(),
            &r.prune,
            &format!("{hold} max"),
            None,
            "ms",
            at_most(50.0),
        );
        row(
            w,
            "prune: writer hold p99 (probe wait)",
            "".into(),
            &r.prune,
            &format!("{hold} p99"),
            None,
            "ms",
            None,
        );
        let finished = Some(Box::new(|v: f64| v == 1.0) as Check);
        let label = format!("prune: finished within {} s of its start (1 = yes)", p.max_secs);
        row(w, &label, "1".into(), &r.prune, "prune finished", None, "", finished);
        let took = "prune: start (ready + 60 s) -> audit log pruned, or the end of the wait";
        row(
            w,
            "prune: duration (start → audit log pruned, or the end of the wait)",
            "".into(),
            &r.prune,
            took,
            None,
            "s",
            None,
        );
        let during = "due during the prune: lateness (tap arrival - deadline)";
        for (stat, check) in [("p50", None), ("p99", at_most(20.0)), ("max", None)] {
            let target = if check.is_some() { "≤ 20 ms" } else { "" };
            let label = format!("prune: lateness {stat} of sessions due during it");
            row(w, &label, target.into(), &r.prune, &format!("{during} {stat}"), None, "ms", check);
        }

        let killed = "daemon stop: killed after TimeoutStopSec=30 s";
        row(
            w,
            "prune: SIGTERM not obeyed within 30 s (1 = killed)",
            "0".into(),
            &r.prune,
            killed,
            None,
            "",
            zero(),
        );
        let firings = "watchdog: gaps over WatchdogSec=30 s (firings)";
        row(w, "prune: watchdog firings", "0".into(), &r.prune, firings, None, "", zero());

        let c = &self.connections;
        let flood = format!(
            "{} idle + {} slow-loris connections",
            thousands(c.idle as f64),
            thousands(c.slow as f64)
        );
        let during = "due during the flood: lateness (tap arrival - deadline)";
        for (stat, check) in [("p50", None), ("p99", at_most(20.0)), ("max", None)] {
            let target = if check.is_some() { "≤ 20 ms" } else { "" };
            let label = format!("{flood}: lateness {stat} of sessions due meanwhile");
            row(w, &label, target.into(), &r.connections, &format!("{during} {stat}"), None, "ms", check);
        }
        let failed = "first answers other than enforced (all due sessions)";
        row(
            w,
            "connections: provider calls not enforced",
            "0".into(),
            &r.connections,
            failed,
            None,
            "",
            zero(),
        );
        let emfile = "daemon: log lines with EMFILE/ENFILE";
        row(
            w,
            "connections: daemon log lines with EMFILE/ENFILE",
            "0".into(),
            &r.connections,
            emfile,
            None,
            "",
            zero(),
        );
        let held = "daemon: most client connections held";
        // 1,024 served, and the one just accepted while it waits for a slot.
        row(
            w,
            "connections: most client connections the daemon held (1,024 served + 1 waiting for a slot)",
            "≤ 1,025".into(),
            &r.connections,
            held,
            None,
            "",
            at_most(1025.0),
        );
        let fds = "daemon: most open fds during the flood";
        row(
            w,
            "connections: the daemon's most open file descriptors",
            "".into(),
            &r.connections,
            fds,
            None,
            "",
            None,
        );
        let answered = "GET /healthz during the flood: answered 200";
        row(
            w,
            "connections: `GET /healthz` answered during the flood (one sent a second)",
            "".into(),
            &r.connections,
            answered,
            None,
            "",
            None,
        );
        let slow = "GET /healthz during the flood, answered p50";
        row(
            w,
            "connections: `GET /healthz` answer time during the flood, p50",
            "".into(),
            &r.connections,
            slow,
            None,
            "ms",
            None,
        );
    }

    /// The sections with every figure of each scenario.
    pub(crate) fn sections(&self, w: &mut String, r: &HardeningRuns, runs: usize) {
        let b = &self.bulk;
        let _ = writeln!(
            w,
            "### Bulk insert (issue 12)\n\n`{}`. The daemon runs as its own process (the release binary, \
             `WATCHDOG_USEC` = 30 s as in the unit, `NOTIFY_SOCKET` a datagram socket read by the bench). \
             {} sessions are registered beforehand, due every 100 ms from the insert's start for {} s; then an \
             application's own connection (`synchronous=FULL`) inserts {rows} rows with `INSERT INTO sessions \
             (policy, room_id, room_kind)` in transactions of {} rows, as fast as it can, and the daemon adopts \
             them. Lateness is split by what was under way at each deadline. The watchdog's longest gap is the \
             longest time between two `WATCHDOG=1` datagrams (the scheduler loop sends one per turn).\n",
            self.bulk_cmd(runs),
            thousands(b.spread_secs * 10.0),
            b.spread_secs,
            b.batch,
            rows = thousands(b.rows as f64),
        );
        all_figures(w, &r.bulk);
        let p = &self.prune;
        let _ = writeln!(
            w,
            "### Prune (issue 12)\n\n`{}`. A cached database holds {} settled sessions and {} audit rows (two \
             per session, hash-chained as the daemon chains them) 100–400 days old, and {} settled sessions \
             (with their audit rows) 1 hour to 2 days old that the prune must keep. A copy of it is synced to \
             disk before each run. The daemon (own process) runs with `retention: {{sessions: {RETENTION_DAYS}d, \
             audit: {RETENTION_DAYS}d, checkpoint_key}}`; its first prune starts 60 s after start, while sessions \
             fall due every 100 ms from 10 s after start. A probe connection takes the write lock every 10 ms \
             (`BEGIN IMMEDIATE`, insert, `COMMIT`) and times each wait: the longest wait during the prune is the \
             longest time the prune kept another writer out. The duration runs from the prune's first tick \
             (ready line + 60 s) to its `pruned the audit log` line. `audit verify` runs on the result.\n",
            self.prune_cmd(runs),
            thousands(p.sessions as f64),
            thousands(2.0 * p.sessions as f64),
            thousands(p.recent_sessions as f64),
        );
        all_figures(w, &r.prune);
        let c = &self.connections;
        let _ = writeln!(
            w,
            "### Connections (issue 12)\n\n`{}`. The daemon (own process, `listen:` on loopback) gets {} clients \
             that connect and send nothing and {} that send a request head one byte every {} s and never finish \
             it, each reconnecting as soon as it is closed, for {} s; sessions fall due every 100 ms meanwhile. \
             Once a second the bench counts the daemon's open file descriptors (/proc/PID/fd), reads the \
             listener's accept queue (/proc/net/tcp) and sends `GET /healthz` on a new connection (answer \
             awaited up to 30 s). The bench raises its own `RLIMIT_NOFILE` to the hard limit first.\n",
            self.connections_cmd(runs),
            thousands(c.idle as f64),
            thousands(c.slow as f64),
            c.slow_every,
            c.secs,
        );
        all_figures(w, &r.connections);
    }
}
