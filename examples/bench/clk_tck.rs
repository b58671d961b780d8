//! The kernel's clock tick rate, the unit of the CPU times in /proc; shared
//! with examples/api_load.rs, which includes this file with `#[path]`.

use std::process::Command;

/// Clock ticks per second (`getconf CLK_TCK`), or 100 when that cannot be read.
pub(crate) fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
