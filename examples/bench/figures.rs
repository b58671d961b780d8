//! Figures: one run's named values, their medians over runs, and where
//! they are printed (stdout, or stderr while `report` writes markdown).

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use callwarden::domain::Instant;
use callwarden::stats::percentile;

/// One run's figures, in print order.
#[derive(Default)]
pub(crate) struct Figures(pub(crate) Vec<(String, f64, &'static str)>);

impl Figures {
    pub(crate) fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.0.push((name.into(), value, unit));
    }

    /// p50, p99, max and min of microsecond samples, in milliseconds.
    pub(crate) fn add_dist_us(&mut self, name: &str, sorted_us: &[i64]) {
        for (label, v) in [
            ("p50", percentile(sorted_us, 50.0)),
            ("p99", percentile(sorted_us, 99.0)),
            ("max", sorted_us.last().copied().unwrap_or(0)),
            ("min", sorted_us.first().copied().unwrap_or(0)),
        ] {
            self.add(format!("{name} {label}"), v as f64 / 1000.0, "ms");
        }
    }

    /// p50, p99, max and min of whole-millisecond samples.
    pub(crate) fn add_dist_ms(&mut self, name: &str, sorted_ms: &[i64]) {
        for (label, v) in [
            ("p50", percentile(sorted_ms, 50.0)),
            ("p99", percentile(sorted_ms, 99.0)),
            ("max", sorted_ms.last().copied().unwrap_or(0)),
            ("min", sorted_ms.first().copied().unwrap_or(0)),
        ] {
            self.add(format!("{name} {label}"), v as f64, "ms");
        }
    }

    pub(crate) fn print(&self, header: &str) {
        out(header);
        let width = self.0.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
        for (name, value, unit) in &self.0 {
            out(&format!("  {name:<width$}  {}", format_value(*value, unit)));
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _, _)| n == name).map(|(_, v, _)| *v)
    }
}

fn format_value(v: f64, unit: &str) -> String {
    let number = if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.3}") };
    if unit.is_empty() { number } else { format!("{number} {unit}") }
}

/// The median of each figure over runs (by name, in the first run's order).
pub(crate) fn medians(runs: &[Figures]) -> Figures {
    let mut out = Figures::default();
    let Some(first) = runs.first() else { return out };
    for (name, _, unit) in &first.0 {
        let mut values: Vec<f64> =
            runs.iter().filter_map(|f| f.0.iter().find(|(n, _, _)| n == name).map(|(_, v, _)| *v)).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        out.add(name.clone(), median, unit);
    }
    out
}

pub(crate) fn micros_after(at: DateTime<Utc>, deadline: Instant) -> i64 {
    (at - deadline.to_datetime()).num_microseconds().unwrap_or(i64::MAX)
}

/// Per-run figures go to stderr while `report` writes markdown to stdout.
pub(crate) static PRINT_TO_STDERR: AtomicBool = AtomicBool::new(false);

pub(crate) fn out(line: &str) {
    if PRINT_TO_STDERR.load(Ordering::Relaxed) {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Every run's figures, and the median of each.
pub(crate) struct Runs {
    pub(crate) runs: Vec<Figures>,
    pub(crate) median: Figures,
}

impl Runs {
    pub(crate) fn get(&self, name: &str) -> Option<f64> {
        self.median.get(name)
    }

    pub(crate) fn each(&self, name: &str) -> Vec<f64> {
        self.runs.iter().filter_map(|f| f.get(name)).collect()
    }
}
