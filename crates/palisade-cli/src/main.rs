//! `palisade`: the operator's command line. Parses arguments, starts
//! tracing, dispatches to a subcommand and turns its error into an exit code.
//!
//! It must stay thin: subcommands live in their own modules with typed
//! errors; anyhow appears only here.

mod approvals;
mod audit;
mod events;
mod time_arg;
mod up;

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
    /// List AI apps and MCP servers seen across the fleet; approve or deny them.
    Approvals(approvals::ApprovalsArgs),
    /// Check the control plane's tamper-evident admin audit log.
    Audit(audit::AuditArgs),
    /// List audit records held in this device's spool.
    Events(events::EventsArgs),
    /// Start a control plane (embedded SQLite) and one enrolled agent on this machine.
    Up(up::UpArgs),
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
    if let Command::Up(args) = cli.command {
        // Server and agent share this process: give them every core.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let mut out = std::io::stdout();
        let stop = palisade_agent::telemetry::shutdown_signal();
        return Ok(rt.block_on(up::run(args, &mut out, stop))?);
    }
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
        Command::Approvals(args) => {
            let mut out = std::io::stdout();
            Ok(rt.block_on(approvals::run(args, &mut out))?)
        }
        Command::Audit(args) => {
            let mut out = std::io::stdout();
            Ok(rt.block_on(audit::run(args, &mut out))?)
        }
        Command::Up(_) => unreachable!("handled above"),
    }
}
