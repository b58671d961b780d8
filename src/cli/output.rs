//! Output for people and programs: aligned tables, CSV and JSON lines for
//! the audit log, session lists, budgets and the audit summary. Reading rows
//! is the store's job; this module does no I/O beyond printing.

use std::io::{self, Write};

use crate::domain::audit::{AUDIT_COLUMNS, AuditRecord};
use crate::domain::session::SessionRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

fn audit_csv_row(r: &AuditRecord) -> [String; 16] {
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    let n = |v: &Option<i64>| v.map(|x| x.to_string()).unwrap_or_default();
    [
        r.id.to_string(),
        r.at.clone(),
        o(&r.session_id),
        r.event.clone(),
        o(&r.provider),
        o(&r.action),
        n(&r.attempt),
        o(&r.outcome),
        n(&r.http_status),
        o(&r.provider_request_id),
        o(&r.error_code),
        o(&r.detail),
        n(&r.latency_ms),
        n(&r.lateness_ms),
        o(&r.prev_hash),
        o(&r.hash),
    ]
}

/// Prints `audit summary`.
pub fn print_summary(
    s: &crate::store::AuditSummary,
    since: crate::domain::Instant,
    until: crate::domain::Instant,
    format: OutputFormat,
) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let late = &s.first_call_lateness_ms;
    let pct = |p: f64| crate::stats::percentile(late, p);
    match format {
        OutputFormat::Json => {
            let value = serde_json::json!({
                "from": since.to_string(),
                "until": until.to_string(),
                "events": s.events.iter().map(|(k, n)| (k.clone(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
                "outcomes": s.outcomes.iter().map(|(k, n)| (k.clone(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
                "error_codes": s.error_codes.iter().map(|(k, n)| (k.clone(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
                "first_call_lateness_ms": {
                    "count": late.len(), "p50": pct(50.0), "p99": pct(99.0), "max": late.last().copied().unwrap_or(0)
                },
            });
            writeln!(out, "{value}")?;
        }
        OutputFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            w.write_record(["kind", "key", "count"]).map_err(io::Error::other)?;
            for (kind, rows) in
                [("event", &s.events), ("outcome", &s.outcomes), ("error_code", &s.error_codes)]
            {
                for (k, n) in rows {
                    w.write_record([kind, k, &n.to_string()]).map_err(io::Error::other)?;
                }
            }
            for (name, v) in
                [("p50", pct(50.0)), ("p99", pct(99.0)), ("max", late.last().copied().unwrap_or(0))]
            {
                w.write_record(["first_call_lateness_ms", name, &v.to_string()]).map_err(io::Error::other)?;
            }
            w.flush()?;
        }
        OutputFormat::Table => {
            writeln!(out, "audit summary from {since} until {until}")?;
            for (title, rows) in
                [("events", &s.events), ("outcomes", &s.outcomes), ("error codes", &s.error_codes)]
            {
                writeln!(out, "\n{title}")?;
                if rows.is_empty() {
                    writeln!(out, "  (none)")?;
                }
                for (k, n) in rows {
                    writeln!(out, "  {k:<40} {n:>8}")?;
                }
            }
            writeln!(
                out,
                "\nfirst-call lateness over {} sessions: p50 {} ms, p99 {} ms, max {} ms",
                late.len(),
                pct(50.0),
                pct(99.0),
                late.last().copied().unwrap_or(0)
            )?;
        }
    }
    out.flush()
}

fn cell(v: &Option<impl ToString>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_else(|| "-".into())
}

/// Writes rows as columns padded to their widest cell.
fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i == last { c.to_string() } else { format!("{c:<w$}", w = widths[i]) })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

pub fn print_audit(rows: &[AuditRecord], format: OutputFormat) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match format {
        OutputFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            w.write_record(AUDIT_COLUMNS).map_err(io::Error::other)?;
            for r in rows {
                w.write_record(audit_csv_row(r)).map_err(io::Error::other)?;
            }
            w.flush()?;
        }
        OutputFormat::Json => {
            for r in rows {
                writeln!(out, "{}", serde_json::to_string(r).map_err(io::Error::other)?)?;
            }
        }
        OutputFormat::Table => {
            let header = [
                "at", "session", "event", "provider", "action", "try", "outcome", "http", "error", "late_ms",
                "detail",
            ];
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.at.clone(),
                        cell(&r.session_id),
                        r.event.clone(),
                        cell(&r.provider),
                        cell(&r.action),
                        cell(&r.attempt),
                        cell(&r.outcome),
                        cell(&r.http_status),
                        cell(&r.error_code),
                        cell(&r.lateness_ms),
                        cell(&r.detail),
                    ]
                })
                .collect();
            table(&mut out, &header, &rows)?;
        }
    }
    out.flush()
}

pub fn print_sessions(rows: &[SessionRecord], format: OutputFormat) -> io::Result<()> {
    let header = ["id", "state", "policy", "room", "user", "deadline", "attempts", "detail"];
    print_rows(rows, format, &header, |r| {
        vec![
            r.id.clone(),
            r.state.clone(),
            r.policy.clone(),
            if r.room_kind == "string" { format!("{:?}", r.room_id) } else { r.room_id.clone() },
            cell(&r.user_id),
            cell(&r.deadline),
            r.attempts.to_string(),
            cell(&r.detail),
        ]
    })
}

/// One line of `callwarden budget USER`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BudgetRow {
    pub user: String,
    pub policy: String,
    pub window: &'static str,
    pub time_zone: String,
    pub window_start: String,
    pub window_end: String,
    pub used_ms: i64,
    /// Booked by sessions still running, beyond now.
    pub booked_ms: i64,
    pub limit_ms: i64,
    pub remaining_ms: i64,
}

pub fn print_budget(rows: &[BudgetRow], format: OutputFormat) -> io::Result<()> {
    let header = ["policy", "window", "from", "until", "used", "booked", "limit", "remaining"];
    let span = |ms: i64| {
        humantime::format_duration(std::time::Duration::from_secs(u64::try_from(ms / 1000).unwrap_or(0)))
            .to_string()
    };
    print_rows(rows, format, &header, |r| {
        vec![
            r.policy.clone(),
            format!("{} ({})", r.window, r.time_zone),
            r.window_start.clone(),
            r.window_end.clone(),
            span(r.used_ms),
            span(r.booked_ms),
            span(r.limit_ms),
            span(r.remaining_ms),
        ]
    })
}

/// Rows as CSV (every field, by serde), JSON lines, or a table of the
/// `cells` under `header`.
fn print_rows<T: serde::Serialize>(
    rows: &[T],
    format: OutputFormat,
    header: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match format {
        OutputFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            for r in rows {
                w.serialize(r).map_err(io::Error::other)?;
            }
            w.flush()?;
        }
        OutputFormat::Json => {
            for r in rows {
                writeln!(out, "{}", serde_json::to_string(r).map_err(io::Error::other)?)?;
            }
        }
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = rows.iter().map(cells).collect();
            table(&mut out, header, &rows)?;
        }
    }
    out.flush()
}
