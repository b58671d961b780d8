//! The machine and build the report ran on, and what else was busy.

use std::process::Command;

use crate::scenarios::startup::target_dir;

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn machine_table() -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim()))
        .unwrap_or("unknown")
        .to_string();
    let mhz = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim()))
        .unwrap_or("?")
        .to_string();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("unknown".into(), |kb| format!("{:.1} GB", kb / 1024.0 / 1024.0));
    // bench/report.sh records the tree before it builds (it may change
    // while the report runs); run by hand, the tree now.
    let manifest = env!("CARGO_MANIFEST_DIR");
    let (commit, dirty) =
        match (std::env::var("CALLWARDEN_BENCH_COMMIT"), std::env::var("CALLWARDEN_BENCH_DIRTY")) {
            (Ok(commit), Ok(dirty)) => {
                (commit, dirty.split(',').map(str::to_string).collect::<Vec<_>>().join("\n"))
            }
            _ => (
                command_line("git", &["-C", manifest, "rev-parse", "--short", "HEAD"]),
                command_line("git", &["-C", manifest, "status", "--porcelain", "--untracked-files=no"]),
            ),
        };
    let dirty: Vec<&str> =
        dirty.lines().map(str::trim).filter(|l| !l.is_empty() && !l.ends_with("BENCHMARKS.md")).collect();
    let source = if dirty.is_empty() || dirty == ["unknown"] {
        format!("commit `{commit}`")
    } else {
        format!("commit `{commit}` plus uncommitted changes to {}", dirty.join(", "))
    };
    let fs = command_line("df", &["--output=fstype,source", &target_dir().display().to_string()]);
    vec![
        ("CPU", format!("{nproc} × {model} ({mhz} MHz); `nproc` = {nproc}")),
        ("memory", mem_gb),
        (
            "disk (target dir)",
            fs.lines().nth(1).unwrap_or("unknown").split_whitespace().collect::<Vec<_>>().join(" on "),
        ),
        ("kernel", command_line("uname", &["-r"])),
        ("rustc", command_line("rustc", &["-V"])),
        ("build", "release profile (`lto = true`, `codegen-units = 1`)".into()),
        ("source", source),
    ]
}

/// The processes using the most CPU right now, from `ps` (not counting this one).
pub(crate) fn busiest_processes() -> String {
    let me = std::process::id().to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let ps = command_line("ps", &["-eo", "pid=,pcpu=,comm=", "--sort=-pcpu"]);
    let top: Vec<String> = ps
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(me.as_str()))
        .take(3)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (_, cpu, comm) = (it.next()?, it.next()?, it.next()?);
            Some(format!("`{comm}` {cpu} %"))
        })
        .collect();
    format!("load average {}; {}", load.join(" "), top.join(", "))
}
