//! `oci-cache`: parses the command line, runs the command, and turns the
//! outcome into an exit code (the table is in args.rs's help text).

mod args;
mod commands;
mod config;
mod output;
mod progress;

use std::process::ExitCode;

use crate::output::{Failure, EXIT_INTERNAL, EXIT_USAGE};

fn main() -> ExitCode {
    // A bug must still end as one line and a code, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "oci-cache: internal error: {}",
            info.to_string().replace('\n', " ")
        );
        std::process::exit(EXIT_INTERNAL.into());
    }));
    let cli = match args::parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(err),
    };
    let outcome = config::Settings::resolve(cli.global).and_then(|settings| {
        let runtime = tokio::runtime::Runtime::new()
            .map_err(|e| Failure::from(oci_cache::Error::io(format!("starting a runtime: {e}"))))?;
        runtime.block_on(commands::run(cli.command, settings))
    });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            failure.report();
            ExitCode::from(failure.code)
        }
    }
}

/// Help and version go to stdout with 0; a usage error is its first line
/// on stderr with 2.
fn clap_exit(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return ExitCode::from(
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                EXIT_USAGE
            } else {
                0
            },
        );
    }
    let text = err.to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    Failure::usage(first.trim_start_matches("error: ")).report();
    ExitCode::from(EXIT_USAGE)
}
