//! `palisade-bench fleet`: load generator and benchmark for the control
//! plane at fleet scale. Prints figures; asserts nothing.
//!
//! For each store (SQLite, and PostgreSQL when a URL is known) it starts the
//! release `palisade-server` as a separate process and measures:
//! (a) sustained ingest of ~2 KB interaction records from many concurrent
//! Upload streams, in events/s and MB/s; (b) policy propagation from an admin
//! PUT to N enrolled agents, each on its own mTLS connection with a
//! WatchPolicy stream (p50/p99/max and how many got it); (c) the server's RSS
//! with the whole fleet connected. Every wait is bounded, so a run ends by
//! itself. It must never connect beyond 127.0.0.1 (plus the PostgreSQL URL it
//! is given), never print a token, key or password, and never leave the
//! server process running.

mod agent;
mod decode;
mod ingest;
mod propagation;
mod records;
mod server;
pub(crate) mod stats;

use clap::Parser;
use palisade_server::RawToken;
use server::{ServerKnobs, ServerProcess, StoreKind};
use stats::{mib, ms, percentile};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Environment variable naming a PostgreSQL URL (as `scripts/start-postgres` prints).
pub const PG_URL_ENV: &str = "PALISADE_TEST_POSTGRES_URL";
/// Longest time enrollment of the whole fleet may take.
const ENROLL_DEADLINE: Duration = Duration::from_secs(300);
/// Enrollments in flight at once.
const ENROLL_CONCURRENCY: usize = 64;
/// File descriptors kept beyond one per agent (ingest devices, store, logs).
const FD_SLACK: u64 = 1024;

/// Everything that can stop a fleet run.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("bad arguments: {0}")]
    Args(String),
    #[error("{} not found: build it first (cargo build --release -p palisade-server -p palisade-bench)", .0.display())]
    ServerBinary(PathBuf),
    #[error("server config rejected: {0}")]
    Config(#[source] palisade_server::ConfigError),
    #[error("preparing the server PKI: {0}")]
    Pki(#[source] palisade_server::pki::PkiError),
    #[error("preparing the store: {0}")]
    Store(#[source] palisade_server::StoreError),
    #[error("server exited early ({status}); if target/release/palisade-server is older than this bench (the bench prepares the store with its own copy of the server library), rebuild both; log tail:\n{log_tail}")]
    ServerExited { status: String, log_tail: String },
    #[error("server not listening after {waited:?}; log tail:\n{log_tail}")]
    ServerNotReady { waited: Duration, log_tail: String },
    #[error("{what}: {source}")]
    Transport {
        what: &'static str,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{what} failed: {} ({})", .status.message(), .status.code())]
    Rpc { what: &'static str, status: tonic::Status },
    #[error("device key or CSR: {0}")]
    Csr(#[source] rcgen::Error),
    #[error("admin API answered {status}: {body}")]
    Admin { status: u16, body: String },
    #[error("admin API request: {0}")]
    Http(#[source] reqwest::Error),
    #[error("server refused a batch for good: {0}")]
    BatchRefused(String),
    #[error("server answered batch {0}, which was not outstanding")]
    UnexpectedAnswer(u64),
    #[error("{0} ended unexpectedly")]
    StreamClosed(&'static str),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("file descriptors: {0}")]
    FdLimit(String),
    #[error("PostgreSQL: {0}")]
    Postgres(#[source] sqlx::Error),
    #[error("I/O: {0}")]
    Io(#[source] std::io::Error),
    #[error("a load task panicked: {0}")]
    Join(#[source] tokio::task::JoinError),
}

/// Where the load goes, and the credentials to get in. `Debug` shows no token
/// (`RawToken` hides itself).
#[derive(Debug, Clone)]
pub struct Target {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub ca_pem: String,
    pub admin_token: RawToken,
    pub enroll_token: RawToken,
    pub http: reqwest::Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreArg {
    Sqlite,
    Postgres,
}

/// Command line of `palisade-bench fleet`.
#[derive(Debug, Clone, Parser)]
#[command(name = "palisade-bench fleet", about = "Control-plane fleet benchmark: ingest, policy propagation, server RSS")]
pub struct FleetArgs {
    /// Simulated agents for policy propagation, each with its own mTLS connection.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub agents: u32,
    /// Store to measure; default: SQLite, plus PostgreSQL when a URL is known.
    #[arg(long, value_enum)]
    pub store: Option<StoreArg>,
    /// PostgreSQL URL (default: $PALISADE_TEST_POSTGRES_URL). A fresh schema is used and dropped.
    #[arg(long)]
    pub pg_url: Option<String>,
    /// Devices streaming uploads concurrently in the ingest phase.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub ingest_devices: u32,
    /// Events per upload batch.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Batches outstanding per upload stream.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub inflight: u32,
    /// How long to keep sending in the ingest phase.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub ingest_seconds: u64,
    /// How long agents may take to receive the new policy after the PUT.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub receive_seconds: u64,
    /// WatchPolicy connections being set up at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connect_concurrency: u32,
    /// Server store pool size (`store.max_connections`); default: the server's default.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub store_connections: Option<u32>,
    #[arg(long)]
    pub skip_ingest: bool,
    #[arg(long)]
    pub skip_propagation: bool,
}

/// The stores to measure, from the arguments and `$PALISADE_TEST_POSTGRES_URL`.
pub fn stores(args: &FleetArgs, env_pg_url: Option<String>, run_id: &str) -> Result<Vec<StoreKind>, FleetError> {
    let url = args.pg_url.clone().or(env_pg_url).filter(|u| !u.trim().is_empty());
    if let Some(u) = &url {
        if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
            return Err(FleetError::Args("--pg-url must start with postgres:// or postgresql://".into()));
        }
    }
    let pg = |url: String| StoreKind::Postgres { url, schema: format!("fleet_{run_id}") };
    Ok(match (args.store, url) {
        (Some(StoreArg::Sqlite), _) => vec![StoreKind::Sqlite],
        (Some(StoreArg::Postgres), Some(u)) => vec![pg(u)],
        (Some(StoreArg::Postgres), None) => {
            return Err(FleetError::Args(format!(
                "--store postgres needs --pg-url or ${PG_URL_ENV} (scripts/start-postgres prints one)"
            )))
        }
        (None, Some(u)) => vec![StoreKind::Sqlite, pg(u)],
        (None, None) => vec![StoreKind::Sqlite],
    })
}

/// Raise the soft open-file limit to at least `want` (capped by the hard
/// limit); returns the soft limit now in force. Child processes inherit it.
#[allow(unsafe_code)]
fn raise_fd_limit(want: u64) -> Result<u64, FleetError> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the `rlimit` we pass, a valid, exclusively
    // borrowed local; it has no other effect on memory.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(FleetError::FdLimit(format!("getrlimit: {}", std::io::Error::last_os_error())));
    }
    let target = want.min(lim.rlim_max);
    if lim.rlim_cur >= target {
        return Ok(lim.rlim_cur);
    }
    lim.rlim_cur = target;
    // SAFETY: setrlimit only reads the valid local `rlimit`; a soft limit at
    // or below the hard limit is always permitted for an unprivileged process.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(FleetError::FdLimit(format!("setrlimit({target}): {}", std::io::Error::last_os_error())));
    }
    Ok(target)
}

/// Entry point for `palisade-bench fleet [ARGS]` (`argv` excludes the subcommand).
pub async fn main(argv: impl IntoIterator<Item = String>) -> Result<(), FleetError> {
    let args = FleetArgs::parse_from(std::iter::once("palisade-bench fleet".to_string()).chain(argv));
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let run_id = &run_id[run_id.len() - 12..];
    let stores = stores(&args, std::env::var(PG_URL_ENV).ok(), run_id)?;
    let need = u64::from(args.agents) + u64::from(args.ingest_devices) + FD_SLACK;
    let fds = raise_fd_limit(need)?;
    if fds < need {
        return Err(FleetError::FdLimit(format!(
            "need about {need} open files for {} agents, the hard limit allows {fds}; raise it (ulimit -Hn) or use fewer --agents",
            args.agents
        )));
    }
    let exe = std::env::current_exe().map_err(FleetError::Io)?.with_file_name("palisade-server");
    println!(
        "palisade-bench fleet: {} agents, stores {:?}, {} cores, soft fd limit {fds}",
        args.agents,
        stores.iter().map(|s| s.name()).collect::<Vec<_>>(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("note: server and load generator share this machine's cores; figures include that contention");
    for store in stores {
        run_store(&exe, store, &args, run_id).await?;
    }
    if !args.skip_ingest {
        let d = tokio::task::spawn_blocking(|| decode::measure(50_000)).await.map_err(FleetError::Join)?;
        println!(
            "== (d) per-record JSON CPU (this thread's CPU time, {} records): server path {:.1} µs (IncomingEvent::try_from + into_new_event); typed AuditEvent parse alone {:.1} µs; indexed columns only {:.1} µs",
            d.records, d.server_path_us, d.typed_only_us, d.index_only_us
        );
    }
    Ok(())
}

async fn run_store(exe: &std::path::Path, store: StoreKind, args: &FleetArgs, run_id: &str) -> Result<(), FleetError> {
    let name = store.name();
    let knobs = ServerKnobs {
        max_concurrent_batches: (args.ingest_devices * args.inflight).max(32) as usize,
        enroll_uses: args.agents + args.ingest_devices + 10,
        store_connections: args.store_connections,
    };
    let server = ServerProcess::start(exe, store, &knobs).await?;
    let result = measure(&server, args, run_id).await;
    if result.is_err() {
        eprintln!("[{name}] server log tail:\n{}", server.log_tail());
    }
    server.stop().await?;
    result
}

async fn measure(server: &ServerProcess, args: &FleetArgs, run_id: &str) -> Result<(), FleetError> {
    let name = server.store.name();
    let pid = server.pid();
    let target = &server.target;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (idle_rss, _) = stats::rss_kb(pid).unwrap_or_default();
    println!("== [{name}] server pid {pid}, idle RSS {:.1} MiB", mib(idle_rss));

    if !args.skip_ingest {
        let devices = args.ingest_devices as usize;
        let enrolled = timed(
            "enrolling ingest devices",
            agent::enroll_many(target, &format!("{run_id}-ingest"), devices, ENROLL_CONCURRENCY),
        )
        .await?;
        let cfg = ingest::IngestConfig {
            batch: args.batch as usize,
            inflight: args.inflight as usize,
            duration: Duration::from_secs(args.ingest_seconds),
            max_batches_per_device: None,
        };
        let mark = stats::CpuMark::now(pid);
        let r = ingest::run(target, &enrolled, &cfg).await?;
        let share = mark.and_then(|m| m.since(pid));
        let (rss, hwm) = stats::rss_kb(pid).unwrap_or_default();
        println!(
            "== [{name}] (a) ingest: {} streams, batch {}, {} in flight, {:.1}s: {} events acked",
            r.devices,
            cfg.batch,
            cfg.inflight,
            r.elapsed.as_secs_f64(),
            r.acked_events
        );
        println!(
            "   {:.0} events/s, {:.1} MB/s of record JSON (avg {:.0} B/record); {} SlowDown, {} retryable errors, {} rejected",
            r.events_per_sec(),
            r.mb_per_sec(),
            r.acked_bytes as f64 / r.acked_events.max(1) as f64,
            r.slowed_batches,
            r.retried_errors,
            r.rejected_events
        );
        if let Some(share) = share {
            println!(
                "   server CPU {:.1}s over {:.1}s wall = {:.1} µs CPU per event; RSS {:.1} MiB (peak {:.1} MiB)",
                share.server,
                r.elapsed.as_secs_f64(),
                share.server * 1e6 / r.acked_events.max(1) as f64,
                mib(rss),
                mib(hwm)
            );
            println!("   {share}");
        }
    }

    if !args.skip_propagation {
        let n = args.agents as usize;
        let start = Instant::now();
        let enrolled = timed(
            "enrolling agents",
            agent::enroll_many(target, &format!("{run_id}-agent"), n, ENROLL_CONCURRENCY),
        )
        .await?;
        let enroll_secs = start.elapsed().as_secs_f64();
        let before_fleet = stats::rss_kb(pid).map(|(rss, _)| rss).unwrap_or(idle_rss);
        println!("== [{name}] enrolled {n} agents (CSR signed, device certs issued) in {enroll_secs:.1}s = {:.0}/s", n as f64 / enroll_secs);
        let cfg = propagation::PropagationConfig {
            connect_concurrency: args.connect_concurrency as usize,
            connect_deadline: ENROLL_DEADLINE,
            receive_deadline: Duration::from_secs(args.receive_seconds),
            server_pid: Some(pid),
            marker: format!("fleet-bench-{run_id}"),
        };
        let mark = stats::CpuMark::now(pid);
        let r = propagation::run(target, enrolled, &cfg).await?;
        print_propagation(name, &r, before_fleet);
        if let Some(share) = mark.and_then(|m| m.since(pid)) {
            println!("   during connect + propagation, {share}");
        }
    }
    Ok(())
}

/// Run `fut` under [`ENROLL_DEADLINE`], naming `what` if it runs out.
async fn timed<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, FleetError>>,
) -> Result<T, FleetError> {
    tokio::time::timeout(ENROLL_DEADLINE, fut)
        .await
        .map_err(|_| FleetError::Timeout(format!("{what} took over {ENROLL_DEADLINE:?}")))?
}

/// `base_rss`: the server's RSS just before the fleet connected.
fn print_propagation(name: &str, r: &propagation::PropagationReport, base_rss: u64) {
    println!(
        "== [{name}] (b) policy propagation: {}/{} agents connected (own mTLS connection + WatchPolicy each) in {:.1}s{}",
        r.connected,
        r.agents,
        r.connect_elapsed.as_secs_f64(),
        match &r.first_connect_error {
            Some(e) => format!("; {} failed, first: {e}", r.connect_failures),
            None => String::new(),
        }
    );
    let p = |q| percentile(&r.latencies, q).map(ms).unwrap_or(f64::NAN);
    println!(
        "   PUT v{} -> v{} (PUT round trip {:.1} ms): {}/{} received; p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms{}{}",
        r.initial_version,
        r.new_version,
        ms(r.put_elapsed),
        r.latencies.len(),
        r.connected,
        p(0.5),
        p(0.99),
        p(1.0),
        if r.other_version > 0 { format!("; {} saw another version", r.other_version) } else { String::new() },
        if r.streams_lost > 0 { format!("; {} streams lost", r.streams_lost) } else { String::new() },
    );
    if let Some(cpu) = r.server_cpu_propagation {
        println!("   server CPU during propagation {cpu:.2}s");
    }
    if let Some((rss, hwm)) = r.server_rss_connected {
        let per_agent = rss.saturating_sub(base_rss) as f64 / r.connected.max(1) as f64;
        println!(
            "== [{name}] (c) server RSS with {} agents connected: {:.1} MiB (peak so far {:.1} MiB; {:.1} MiB before they connected, ~{per_agent:.0} KiB per agent)",
            r.connected,
            mib(rss),
            mib(hwm),
            mib(base_rss)
        );
    }
    if let Some((rss, hwm)) = r.server_rss_after {
        println!("   after propagation: {:.1} MiB (peak {:.1} MiB)", mib(rss), mib(hwm));
    }
    if let Some(c) = r.client_rss_connected {
        println!("   load generator RSS with the fleet connected: {:.1} MiB", mib(c));
    }
}

#[cfg(test)]
mod tests;
