//! Scenario 6, the session API: runs examples/api_load as its own process
//! and reads its per-run figures back.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::figures::{Figures, Runs, medians};
use crate::rig::sibling_binary;

/// Runs `api_load` as its own process and reads its per-run lines back;
/// with `postgres` (a server URL without a database), each run uses a
/// fresh database there instead of a SQLite file.
pub(crate) fn api_load(seconds: u64, runs: usize, postgres: Option<&str>) -> anyhow::Result<Runs> {
    let bin = sibling_binary("api_load")?;
    let mut cmd = Command::new(&bin);
    cmd.args(["--seconds", &seconds.to_string(), "--runs", &runs.max(1).to_string()]);
    if let Some(server) = postgres {
        cmd.args(["--postgres", server]);
    }
    let out =
        cmd.stderr(Stdio::inherit()).output().with_context(|| format!("cannot run {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprint!("{text}");
    if !out.status.success() {
        bail!("api_load failed: {}", out.status);
    }
    let mut all = Vec::new();
    for line in text.lines() {
        if line.starts_with("run ") {
            all.push(Figures::default());
        }
        let Some(f) = all.last_mut() else { continue };
        for (label, name) in
            [("  registrations", "API registrations"), ("  webhook events", "TRTC webhook events")]
        {
            if let Some(rest) = line.strip_prefix(label) {
                let rate = rest.split_whitespace().next().and_then(|t| t.trim_end_matches("/s").parse().ok());
                f.add(format!("{name}/s"), rate.context("api_load: no rate")?, "/s");
                f.add(format!("{name}: errors"), number_after(rest, "(errors ").unwrap_or(-1.0), "");
                f.add(format!("{name}: latency p50"), number_after(rest, "p50 ").unwrap_or(-1.0), "ms");
                f.add(format!("{name}: latency p99"), number_after(rest, "p99 ").unwrap_or(-1.0), "ms");
                f.add(
                    format!("{name}: daemon CPU (cores)"),
                    number_after(rest, "daemon ").unwrap_or(-1.0),
                    "",
                );
                f.add(
                    format!("{name}: load generator CPU (cores)"),
                    number_after(rest, "load generator ").unwrap_or(-1.0),
                    "",
                );
            }
        }
        if let Some(rest) = line.strip_prefix("  enforced meanwhile: ") {
            f.add("enforcement calls meanwhile", number_after(rest, "").unwrap_or(-1.0), "");
            f.add("quota errors meanwhile", number_after(rest, "quota errors ").unwrap_or(-1.0), "");
        }
    }
    if all.is_empty() {
        bail!("api_load printed no runs");
    }
    for (k, f) in all.iter().enumerate() {
        f.print(&format!("[api run {}/{}]", k + 1, all.len()));
    }
    Ok(Runs { median: medians(&all), runs: all })
}

/// The number that follows `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    digits.parse().ok()
}
