//! `palisade-server` binary: load config, start tracing, bind, run until
//! SIGINT/SIGTERM. Exits 64 on a bad config. All logic lives in the library.

use anyhow::Context;
use clap::Parser;
use palisade_server::{bootstrap_admin_token, run, ServerConfig};
use std::path::PathBuf;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(name = "palisade-server", about = "Palisade control plane")]
struct Args {
    /// TOML config file; defaults apply when omitted.
    #[arg(long, short, env = "PALISADE_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Create an admin API token, print it once, and exit.
    #[arg(long, value_name = "NAME")]
    create_admin_token: Option<String>,
}

fn load(args: &Args) -> Result<ServerConfig, String> {
    match &args.config {
        None => ServerConfig::default()
            .validate()
            .map(|_| ServerConfig::default())
            .map_err(|e| e.to_string()),
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            ServerConfig::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let cfg = match load(&args) {
        Ok(cfg) => cfg,
        Err(error) => {
            eprintln!("palisade-server: bad config: {error}");
            std::process::exit(64);
        }
    };
    if let Some(name) = &args.create_admin_token {
        let token = bootstrap_admin_token(&cfg, name).await?;
        println!("{}", token.expose());
        return Ok(());
    }
    let grpc = TcpListener::bind(&cfg.grpc_listen)
        .await
        .with_context(|| format!("bind {}", cfg.grpc_listen))?;
    let admin = TcpListener::bind(&cfg.admin_listen)
        .await
        .with_context(|| format!("bind {}", cfg.admin_listen))?;
    run(cfg, grpc, admin, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
