//! `palisade-agent`: load config, start tracing, run the agent until a signal.

use anyhow::Context;
use clap::Parser;
use palisade_agent::{config::AgentConfig, Agent};
use std::path::PathBuf;

// mimalloc instead of glibc malloc: the proxy allocates and frees many small
// objects per request (headers, JSON values, records) across worker threads.
// Measured with `palisade-bench load` under callgrind, glibc's free path
// (consolidation of hyper's freed read buffers) alone cost ~18k instructions
// per intercepted request; see docs/ARCHITECTURE.md, "Performance". mimalloc
// v2 without transparent huge pages: v3 (the crate's default) doubled the
// idle RSS (23.5 -> 50 MB); v2 keeps it within ~2 MB of glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "palisade-agent", version, about = "Palisade device agent")]
struct Args {
    /// Agent config (TOML).
    #[arg(long, env = "PALISADE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// MDM-managed config (TOML); its values win over --config.
    #[arg(long, env = "PALISADE_AGENT_MANAGED_CONFIG")]
    managed_config: Option<PathBuf>,
    /// Print the device CA certificate (PEM) and exit.
    #[arg(long)]
    print_ca: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    palisade_agent::telemetry::init();
    let config = match AgentConfig::load(args.config.as_deref(), args.managed_config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("palisade-agent: {e}");
            std::process::exit(64);
        }
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let agent = Agent::start(config, listener).await?;
    if args.print_ca {
        print!("{}", agent.ca.cert_pem());
        return Ok(());
    }
    agent.run(palisade_agent::telemetry::shutdown_signal()).await;
    Ok(())
}
