//! The audit log for operators: its tamper-evident hash chain (computing and
//! verifying it), and aligned tables for people or JSON lines for programs.
//! Reading and writing rows is the store's job; this module does no I/O
//! beyond printing.
//!
//! The chain: `hash = hex(SHA-256(prev_hash ‖ "\n" ‖ canonical(row)))`, where
//! `prev_hash` is the previous row's hash (empty for the first row) and
//! `canonical(row)` is the JSON array of the row's columns from `id` to
//! `lateness_ms`, in table order. Editing a row changes its hash; deleting
//! or inserting one breaks the next row's link.

use std::io::{self, Write};

use crate::store::{AuditRecord, SessionRecord};

/// The row's content as hashed: its columns from `id` to `lateness_ms`.
pub fn canonical(r: &AuditRecord) -> String {
    serde_json::json!([
        r.id,
        r.at,
        r.session_id,
        r.event,
        r.provider,
        r.action,
        r.attempt,
        r.outcome,
        r.http_status,
        r.provider_request_id,
        r.error_code,
        r.detail,
        r.latency_ms,
        r.lateness_ms
    ])
    .to_string()
}

pub fn chain_hash(prev_hash: &str, r: &AuditRecord) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical(r).as_bytes());
    hex::encode(h.finalize())
}

/// The signature of a retention checkpoint: hex HMAC-SHA256 with the
/// configured checkpoint key.
pub fn checkpoint_signature(key: &crate::config::Secret, cp: &crate::store::Checkpoint) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes any key length");
    mac.update(cp.signed_text().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The chain holds: rows checked, rows before the chain began (written
    /// before schema v5), and the last row's id and hash. Removing rows from
    /// the end cannot be seen from inside the log; recording the head
    /// elsewhere (a ticket, a log shipper) makes that visible too.
    Intact { checked: u64, unchained: u64, head: Option<(i64, String)> },
    /// The first row where the chain breaks, and how.
    Broken { id: i64, reason: String },
}

/// Checks the chain one row at a time, in id order, so a log of any size is
/// verified in constant memory.
#[derive(Debug, Default)]
pub struct ChainCheck {
    expected_id: Option<i64>,
    prev: Option<String>,
    checked: u64,
    unchained: u64,
}

impl ChainCheck {
    /// Starts after a retention checkpoint (the last pruned row's id and
    /// hash), or at the first row.
    pub fn new(start: Option<(i64, String)>) -> ChainCheck {
        match start {
            Some((id, hash)) => {
                ChainCheck { expected_id: Some(id + 1), prev: Some(hash), ..ChainCheck::default() }
            }
            None => ChainCheck::default(),
        }
    }

    /// Checks the next row; `Err` is the verdict at the first break.
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), Verdict> {
        let broken = |reason: &str| Err(Verdict::Broken { id: r.id, reason: reason.to_string() });
        let Some(hash) = &r.hash else {
            if self.prev.is_some() {
                return broken("row has no hash inside the chain (inserted by hand?)");
            }
            self.unchained += 1;
            self.expected_id = Some(r.id + 1);
            return Ok(());
        };
        if let Some(want) = self.expected_id
            && r.id != want
        {
            return Err(Verdict::Broken {
                id: r.id,
                reason: format!("rows {want} to {} are missing (deleted?)", r.id - 1),
            });
        }
        let link = r.prev_hash.clone().unwrap_or_default();
        if self.prev.as_ref().is_some_and(|prev| *prev != link) {
            return broken(
                "its link does not match the previous row's hash (a row before it was changed, deleted or inserted)",
            );
        }
        if chain_hash(&link, r) != *hash {
            return broken("its content does not match its hash (edited?)");
        }
        self.prev = Some(hash.clone());
        self.expected_id = Some(r.id + 1);
        self.checked += 1;
        Ok(())
    }

    pub fn finish(self) -> Verdict {
        let head = self.expected_id.zip(self.prev).map(|(next, hash)| (next - 1, hash));
        Verdict::Intact { checked: self.checked, unchained: self.unchained, head }
    }
}

/// Verifies rows given in id order.
pub fn verify(rows: impl IntoIterator<Item = AuditRecord>, start: Option<(i64, String)>) -> Verdict {
    let mut check = ChainCheck::new(start);
    for r in rows {
        if let Err(verdict) = check.push(&r) {
            return verdict;
        }
    }
    check.finish()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

const AUDIT_HEADER: [&str; 16] = [
    "id",
    "at",
    "session_id",
    "event",
    "provider",
    "action",
    "attempt",
    "outcome",
    "http_status",
    "provider_request_id",
    "error_code",
    "detail",
    "latency_ms",
    "lateness_ms",
    "prev_hash",
    "hash",
];

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
    let pct = |p: f64| crate::demo::percentile(late, p);
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
            w.write_record(AUDIT_HEADER).map_err(io::Error::other)?;
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
    pub limit_ms: i64,
    pub remaining_ms: i64,
}

pub fn print_budget(rows: &[BudgetRow], format: OutputFormat) -> io::Result<()> {
    let header = ["policy", "window", "from", "until", "used", "limit", "remaining"];
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
