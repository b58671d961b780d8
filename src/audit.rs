//! Presenting the audit log and session lists to operators: aligned tables
//! for people, JSON lines for programs. Reading is the store's job; this
//! module only formats.

use std::io::{self, Write};

use crate::store::{AuditRecord, SessionRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
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
    let mut out = io::stdout().lock();
    match format {
        OutputFormat::Json => {
            for r in rows {
                writeln!(out, "{}", serde_json::to_string(r).map_err(io::Error::other)?)?;
            }
        }
        OutputFormat::Table => {
            let header = ["id", "state", "policy", "room", "user", "deadline", "attempts", "detail"];
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
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
                .collect();
            table(&mut out, &header, &rows)?;
        }
    }
    out.flush()
}
