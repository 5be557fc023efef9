//! `palisade`: the operator's command line. Parses arguments, starts
//! tracing, dispatches to a subcommand and turns its error into an exit code.
//!
//! It must stay thin: subcommands live in their own modules with typed
//! errors; anyhow appears only here.

mod events;
mod time_arg;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "palisade",
    version,
    about = "Palisade: every AI interaction on this machine, governed and recorded"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List audit records held in this device's spool.
    Events(events::EventsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Events(args) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match rt.block_on(events::run(args, &mut out)) {
                // `palisade events | head` closing the pipe is not an error.
                Err(events::EventsError::Output(e))
                    if e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    Ok(())
                }
                other => Ok(other?),
            }
        }
    }
}
