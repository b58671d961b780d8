//! The report's tables: a row of the targets table, a scenario's table of
//! every figure, and how a value is written.

use std::fmt::Write as _;

use crate::figures::Runs;

pub(crate) type Check = Box<dyn Fn(f64) -> bool>;

/// One row of the targets table.
#[allow(clippy::too_many_arguments)]
pub(crate) fn row(
    w: &mut String,
    label: &str,
    target: String,
    runs: &Runs,
    name: &str,
    baseline: Option<&str>,
    unit: &str,
    check: Option<Check>,
) {
    let Some(v) = runs.get(name) else {
        let _ = writeln!(w, "| {label} | {target} | missing: {name} | | | | |");
        return;
    };
    let each = runs.each(name);
    let each_text = each.iter().map(|v| show(*v, unit)).collect::<Vec<_>>().join(", ");
    let (b_text, ratio) = match baseline.and_then(|b| runs.get(b)) {
        Some(b) => {
            let ratio = if v != 0.0 { format!("{:.2}×", b / v) } else { "–".into() };
            (show(b, unit), ratio)
        }
        None => (String::new(), String::new()),
    };
    let met = match check {
        Some(c) => {
            let ok = each.iter().filter(|x| c(**x)).count();
            let median_ok = if c(v) { "**yes**" } else { "**no**" };
            format!("{median_ok} (in {ok} of {} runs)", each.len())
        }
        None => String::new(),
    };
    let _ = writeln!(
        w,
        "| {label} | {target} | **{}** | {each_text} | {b_text} | {ratio} | {met} |",
        show(v, unit)
    );
}

pub(crate) fn all_figures(w: &mut String, runs: &Runs) {
    let _ = writeln!(w, "| Figure | Median | Each run |\n|---|---|---|");
    for (name, value, unit) in &runs.median.0 {
        let each = runs.each(name).iter().map(|v| show(*v, unit)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(w, "| {} | {} | {each} |", name.replace('|', "\\|"), show(*value, unit));
    }
    let _ = writeln!(w);
}

/// A value for a table: few significant digits, with its unit.
pub(crate) fn show(v: f64, unit: &str) -> String {
    let number = if v.abs() >= 1000.0 {
        thousands(v)
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    match unit {
        "" => number,
        "/s" => format!("{number}/s"),
        "%" => format!("{number} %"),
        u => format!("{number} {u}"),
    }
}

pub(crate) fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}
