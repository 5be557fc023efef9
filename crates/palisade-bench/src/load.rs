//! `palisade-bench load`: a fixed amount of intercepted keep-alive traffic
//! through the agent, for deterministic per-request measures (instruction
//! counts under `valgrind --tool=callgrind`, syscall counts, allocations)
//! rather than wall-clock rates on a busy machine. Prints figures; asserts
//! nothing.
//!
//! The agent runs as its own process, optionally under a wrapper command
//! (`--wrap "valgrind --tool=callgrind --instr-atstart=no"`). `--before` and
//! `--after` run around the measured requests with `{pid}` replaced by the
//! agent's pid (`callgrind_control -i on {pid}` / `callgrind_control -d {pid}`),
//! after a warm-up that opens every connection, so the window holds only
//! steady-state keep-alive requests and the records they produce. It must
//! never reach beyond 127.0.0.1.

use crate::fleet::stats::cpu_secs;
use crate::{client, one, per_request_us, rss_kb, start_agent_with, FakeProvider, TestCa};
use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "palisade-bench load")]
struct Args {
    /// Measured requests, spread over the clients.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Warm-up requests per client before the measured window (enough
    /// that the spool has prepared its batch statements).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Command the agent runs under (split on whitespace).
    #[arg(long)]
    wrap: Option<String>,
    /// Run before the measured requests (`{pid}` = the agent's pid).
    #[arg(long)]
    before: Option<String>,
    /// Run after the measured requests and their records settled.
    #[arg(long)]
    after: Option<String>,
    /// How long to let the agent write the last records before `--after`.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
}

fn hook(cmd: &Option<String>, pid: u32) -> Result<()> {
    let Some(cmd) = cmd else { return Ok(()) };
    let cmd = cmd.replace("{pid}", &pid.to_string());
    let status = Command::new("sh").arg("-c").arg(&cmd).status()?;
    if !status.success() {
        bail!("hook `{cmd}` failed: {status}");
    }
    Ok(())
}

pub async fn main(args: impl Iterator<Item = String>) -> Result<()> {
    let args = Args::try_parse_from(std::iter::once("load".to_string()).chain(args))?;
    if args.clients == 0 || args.requests < args.clients {
        bail!("--requests must be at least --clients (and --clients at least 1)");
    }
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new();
    let ca_file = dir.path().join("test-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let fake = FakeProvider::start(&ca, &["localhost"]).await;
    fake.forget_requests();
    let url = format!("https://localhost:{}/v1/chat/completions", fake.addr.port());
    let wrap: Vec<String> = args
        .wrap
        .as_deref()
        .map(|w| w.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    // A wrapped agent (valgrind) starts slowly.
    let agent = start_agent_with(dir.path(), &ca_file, &wrap).await?;
    let pid = agent.child.id();
    let c = client(Some(agent.addr), &agent.ca_pem, args.clients)?;

    // Warm-up: every client opens its connection (CONNECT, TLS, upstream
    // pool) outside the measured window.
    let run = |per: usize, extra: usize| {
        let c = c.clone();
        let url = url.clone();
        futures_util::stream::iter(0..args.clients)
            .map(move |i| {
                let (c, url) = (c.clone(), url.clone());
                let n = per + usize::from(i < extra);
                async move {
                    for _ in 0..n {
                        one(&c, &url).await?;
                    }
                    Ok::<_, anyhow::Error>(n)
                }
            })
            .buffer_unordered(args.clients)
            .fold(Ok::<usize, anyhow::Error>(0), |acc, r| async move { Ok(acc? + r?) })
    };
    run(args.warmup, 0).await.context("warm-up")?;
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let idle_rss = rss_kb(pid).unwrap_or(0);
    hook(&args.before, pid)?;
    let own = std::process::id();
    let cpu = |p| cpu_secs(p).unwrap_or(0.0);
    let (agent_cpu, own_cpu) = (cpu(pid), cpu(own));
    let t = Instant::now();
    let done = run(args.requests / args.clients, args.requests % args.clients).await.context("measured requests")?;
    let secs = t.elapsed().as_secs_f64();
    // CPU per request of the agent and of this process (client and fake
    // upstream), over the requests alone: the records the agent writes
    // after the last answer are not in its figure.
    let per = |c: f64| per_request_us(c, done);
    let (agent_us, own_us) = (per(cpu(pid) - agent_cpu), per(cpu(own) - own_cpu));
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    hook(&args.after, pid)?;
    println!(
        "load: {done} requests on {} keep-alive clients in {secs:.2}s ({:.0}/s, not a benchmark figure); CPU per request: agent {agent_us:.0} µs, load generator {own_us:.0} µs; agent RSS after warm-up {:.1} MB, after load {:.1} MB",
        args.clients,
        done as f64 / secs,
        idle_rss as f64 / 1024.0,
        rss_kb(pid).unwrap_or(0) as f64 / 1024.0
    );
    drop(agent);
    Ok(())
}
