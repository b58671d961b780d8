//! The `callwarden` binary: parse the command line, start logging, hand over
//! to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = callwarden::cli::Cli::parse();
    // The demo draws its own progress; its log shows only what went wrong.
    let level = match cli.command {
        callwarden::cli::Command::Demo(_) => "warn",
        _ => "info",
    };
    callwarden::telemetry::init(cli.log_format, level);
    match callwarden::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
