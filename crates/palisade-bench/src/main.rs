//! `palisade-bench proxy`: measures the agent's proxy against a direct
//! connection to the same fake upstream, and against mitmproxy (`mitmdump`)
//! when it is installed. Prints figures; asserts nothing.
//!
//! The agent runs as a separate process (the release `palisade-agent` binary
//! next to this one) so its RSS can be read from /proc without the load
//! generator's memory mixed in.

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use palisade_test_support::{start_echo_tcp, FakeProvider, TestCa};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod export;
mod fleet;
mod load;
mod search;

const LAT_REQUESTS: usize = 2000;
const RPS_SECONDS: u64 = 5;
const TUNNEL_BYTES: usize = 100 * 1024 * 1024;

struct Proc {
    child: Child,
    addr: SocketAddr,
    ca_pem: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(addr: SocketAddr) -> Result<()> {
    for _ in 0..600 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listening on {addr}")
}

async fn start_agent(dir: &Path, test_ca_file: &Path) -> Result<Proc> {
    start_agent_with(dir, test_ca_file, &[]).await
}

/// Start the release agent, optionally under a wrapper command (`wrap[0]`
/// with `wrap[1..]` as its first arguments, e.g. valgrind).
async fn start_agent_with(dir: &Path, test_ca_file: &Path, wrap: &[String]) -> Result<Proc> {
    let exe = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("palisade-agent");
    if !exe.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p palisade-agent)",
            exe.display()
        );
    }
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"ai_hosts": [{"host": "localhost", "provider": "openai"}]}"#,
    )?;
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{addr}\"\ndata_dir = \"{}\"\npolicy_file = \"{}\"\nupstream_ca_file = \"{}\"\nkey_store = \"file\"\n",
            dir.join("agent").display(),
            policy.display(),
            test_ca_file.display()
        ),
    )?;
    let mut cmd = match wrap.split_first() {
        Some((w, rest)) => {
            let mut c = Command::new(w);
            c.args(rest).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let child = cmd
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    wait_port(addr).await?;
    // A slow (wrapped) agent may listen before its CA file is written.
    let ca_path = dir.join("agent").join("palisade-ca.pem");
    for _ in 0..600 {
        if ca_path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca_pem = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("reading {}", ca_path.display()))?;
    Ok(Proc {
        child,
        addr,
        ca_pem,
    })
}

fn find_mitmdump() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|p| p.join("mitmdump"))
        .find(|p| p.exists())
}

async fn start_mitm(dir: &Path, test_ca_file: &Path, ignore_all: bool) -> Result<Option<Proc>> {
    let Some(exe) = find_mitmdump() else {
        return Ok(None);
    };
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let conf = dir.join(if ignore_all { "mitm-tunnel" } else { "mitm" });
    std::fs::create_dir_all(&conf)?;
    let mut cmd = Command::new(exe);
    cmd.args(["--listen-host", "127.0.0.1", "--listen-port", &port.to_string(), "-q"])
        .arg("--set")
        .arg(format!("confdir={}", conf.display()))
        .arg("--set")
        .arg(format!("ssl_verify_upstream_trusted_ca={}", test_ca_file.display()));
    if ignore_all {
        cmd.args(["--ignore-hosts", ".*"]);
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    wait_port(addr).await?;
    let ca_path = conf.join("mitmproxy-ca-cert.pem");
    for _ in 0..100 {
        if ca_path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca_pem = std::fs::read_to_string(&ca_path).unwrap_or_default();
    Ok(Some(Proc {
        child,
        addr,
        ca_pem,
    }))
}

fn client(proxy: Option<SocketAddr>, ca_pem: &str, pool: usize) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .http1_only()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .pool_max_idle_per_host(pool)
        .timeout(Duration::from_secs(30));
    b = match proxy {
        Some(p) => b.proxy(reqwest::Proxy::all(format!("http://{p}"))?),
        None => b.no_proxy(),
    };
    Ok(b.build()?)
}

/// The request body, the same bytes every time: the load generator shares
/// the two cores with what it measures, so it does as little as it can.
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in five words."}]}"#;

async fn one(c: &reqwest::Client, url: &str) -> Result<()> {
    let r = c
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(BODY)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("status {}", r.status());
    }
    let _ = r.bytes().await?;
    Ok(())
}

/// Sequential requests on one keep-alive connection; returns sorted latencies (µs).
async fn latencies(c: &reqwest::Client, url: &str) -> Result<Vec<u64>> {
    for _ in 0..50 {
        one(c, url).await?;
    }
    let mut v = Vec::with_capacity(LAT_REQUESTS);
    for _ in 0..LAT_REQUESTS {
        let t = Instant::now();
        one(c, url).await?;
        v.push(t.elapsed().as_micros() as u64);
    }
    v.sort_unstable();
    Ok(v)
}

/// The middle value (the mean of the middle two for an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn pct(v: &[u64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

/// Runs `f` and reports how busy the whole machine was meanwhile (0..1, all
/// cores): a transfer that keeps every core busy is CPU-bound, so anything
/// added to its path (a proxy hop) takes throughput from it.
async fn machine_busy<T>(f: impl std::future::Future<Output = T>) -> (T, f64) {
    let before = fleet::stats::machine_cpu_secs();
    let out = f.await;
    let busy = match (before, fleet::stats::machine_cpu_secs()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) / (t1 - t0),
        _ => f64::NAN,
    };
    (out, busy)
}

/// Runs `f` and reports the CPU seconds process `pid` used meanwhile (user +
/// system, 10 ms resolution).
async fn process_cpu<T>(pid: u32, f: impl std::future::Future<Output = T>) -> (T, f64) {
    let before = fleet::stats::cpu_secs(pid).unwrap_or(0.0);
    let out = f.await;
    (out, fleet::stats::cpu_secs(pid).unwrap_or(0.0) - before)
}

/// Microseconds of CPU per request (the process's user + system time,
/// 10 ms resolution).
fn per_request_us(cpu_secs: f64, requests: usize) -> f64 {
    cpu_secs * 1e6 / requests.max(1) as f64
}

/// Requests per second with `conc` concurrent keep-alive clients, the
/// peak RSS of `rss_pid` meanwhile, and how many requests completed.
async fn rps(c: &reqwest::Client, url: &str, conc: usize, rss_pid: Option<u32>) -> Result<(f64, u64, usize)> {
    let deadline = Instant::now() + Duration::from_secs(RPS_SECONDS);
    let start = Instant::now();
    let sampler = rss_pid.map(|pid| {
        tokio::spawn(async move {
            let mut peak = 0;
            while Instant::now() < deadline {
                peak = peak.max(rss_kb(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    });
    let done: usize = futures_util::stream::iter(0..conc)
        .map(|_| {
            let c = c.clone();
            let url = url.to_string();
            async move {
                let mut n = 0usize;
                while Instant::now() < deadline {
                    if one(&c, &url).await.is_ok() {
                        n += 1;
                    }
                }
                n
            }
        })
        .buffer_unordered(conc)
        .fold(0, |a, b| async move { a + b })
        .await;
    let peak = match sampler {
        Some(s) => s.await?,
        None => 0,
    };
    Ok((done as f64 / start.elapsed().as_secs_f64(), peak, done))
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Push TUNNEL_BYTES through an echo server and read them back; MB/s.
async fn tunnel(echo: SocketAddr, proxy: Option<SocketAddr>) -> Result<f64> {
    let mut s = match proxy {
        None => TcpStream::connect(echo).await?,
        Some(p) => {
            let mut s = TcpStream::connect(p).await?;
            s.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes())
                .await?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut b).await?;
                head.push(b[0]);
            }
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                bail!("CONNECT refused: {}", String::from_utf8_lossy(&head));
            }
            s
        }
    };
    s.set_nodelay(true)?;
    let (mut rd, mut wr) = s.split();
    let chunk = vec![0x5au8; 256 * 1024];
    let t = Instant::now();
    let w = async {
        let mut sent = 0;
        while sent < TUNNEL_BYTES {
            wr.write_all(&chunk).await?;
            sent += chunk.len();
        }
        Ok::<_, std::io::Error>(())
    };
    let r = async {
        let mut got = 0;
        let mut buf = vec![0u8; 256 * 1024];
        while got < TUNNEL_BYTES {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok::<_, std::io::Error>(got)
    };
    let (wres, got) = tokio::join!(w, r);
    wres?;
    let got = got?;
    if got < TUNNEL_BYTES {
        bail!("tunnel returned {got} of {TUNNEL_BYTES} bytes");
    }
    Ok(TUNNEL_BYTES as f64 / 1e6 / t.elapsed().as_secs_f64())
}

// The load generator (client and fake upstream) shares the machine with the
// proxy it measures; glibc malloc's arena locks showed up in its profile
// under 50 clients. The agent uses the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "proxy".into());
    if what == "fleet" {
        return Ok(fleet::main(std::env::args().skip(2)).await?);
    }
    if what == "export" {
        return export::main(std::env::args().skip(2)).await;
    }
    if what == "load" {
        return load::main(std::env::args().skip(2)).await;
    }
    if what == "search" {
        return search::main(std::env::args().skip(2)).await;
    }
    if what != "proxy" {
        bail!("usage: palisade-bench proxy [--rounds N] | palisade-bench load [--requests N] [--clients C] [--wrap CMD] [--before CMD] [--after CMD] | palisade-bench fleet [--agents N] [--store sqlite|postgres] [--pg-url URL] | palisade-bench export [--events N] [--store sqlite|postgres] [--pg-url URL] | palisade-bench search [--events N] [--store sqlite|postgres] [--pg-url URL] [--runs R]");
    }
    let rounds = match std::env::args().nth(2).as_deref() {
        None => 3,
        Some("--rounds") => std::env::args()
            .nth(3)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .context("--rounds: a number of at least 1")?,
        Some(other) => bail!("palisade-bench proxy: unknown argument {other:?} (usage: palisade-bench proxy [--rounds N])"),
    };
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new();
    let ca_file = dir.path().join("test-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let fake = FakeProvider::start(&ca, &["localhost"]).await;
    fake.forget_requests();
    let url = format!("https://localhost:{}/v1/chat/completions", fake.addr.port());
    let echo = start_echo_tcp().await;

    let agent = start_agent(dir.path(), &ca_file).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kb(agent.child.id()).unwrap_or(0);
    let mitm = start_mitm(dir.path(), &ca_file, false).await?;
    let mitm_tunnel = start_mitm(dir.path(), &ca_file, true).await?;
    if mitm.is_none() {
        println!("note: mitmdump not found on PATH (pip install mitmproxy); mitmproxy columns skipped");
    }

    println!("== (a) latency, small non-streaming request, {LAT_REQUESTS} sequential keep-alive requests");
    let direct_c = client(None, &ca.cert_pem(), 64)?;
    let agent_c = client(Some(agent.addr), &agent.ca_pem, 64)?;
    let d = latencies(&direct_c, &url).await?;
    let a = latencies(&agent_c, &url).await?;
    println!("direct     p50 {:7.3} ms  p99 {:7.3} ms", pct(&d, 0.5), pct(&d, 0.99));
    println!("palisade   p50 {:7.3} ms  p99 {:7.3} ms   added p50 {:+.3} ms  p99 {:+.3} ms  (p50 ratio {:.2}x direct)",
        pct(&a, 0.5), pct(&a, 0.99), pct(&a, 0.5) - pct(&d, 0.5), pct(&a, 0.99) - pct(&d, 0.99), pct(&a, 0.5) / pct(&d, 0.5));
    let mitm_c = match &mitm {
        Some(m) => Some(client(Some(m.addr), &m.ca_pem, 64)?),
        None => None,
    };
    if let Some(mc) = &mitm_c {
        let m = latencies(mc, &url).await?;
        println!("mitmproxy  p50 {:7.3} ms  p99 {:7.3} ms   added p50 {:+.3} ms  p99 {:+.3} ms",
            pct(&m, 0.5), pct(&m, 0.99), pct(&m, 0.5) - pct(&d, 0.5), pct(&m, 0.99) - pct(&d, 0.99));
    }

    // (b) and (c) run in interleaved rounds (direct, palisade, mitmproxy,
    // then again), and the figure is the median of the per-round ratios:
    // one-shot runs on this shared 2-core machine swung by 20% or more,
    // and interleaving spreads slow spells over all three alike.
    // A 100 MB echo takes a fifth of a second here, so (b) runs three
    // times as many rounds (mitmproxy, at a few MB/s, only the first ones).
    let tunnel_rounds = rounds * 3;
    println!("== (b) blind tunnel, {} MB echoed, {tunnel_rounds} interleaved rounds", TUNNEL_BYTES / 1024 / 1024);
    let (mut t_agent, mut t_mitm) = (Vec::new(), Vec::new());
    for round in 1..=tunnel_rounds {
        let (td, d_busy) = machine_busy(tunnel(echo, None)).await;
        let td = td?;
        let ((ta, a_busy), agent_cpu) = process_cpu(agent.child.id(), machine_busy(tunnel(echo, Some(agent.addr)))).await;
        let (ta, agent_ms) = (ta?, agent_cpu * 1000.0);
        print!(
            "round {round}: direct {td:7.1} MB/s (machine {:.0}% busy)  palisade {ta:7.1} MB/s ({:.1}%, agent CPU {agent_ms:.0} ms, machine {:.0}% busy)",
            d_busy * 100.0,
            ta / td * 100.0,
            a_busy * 100.0
        );
        t_agent.push(ta / td);
        if let Some(m) = mitm_tunnel.as_ref().filter(|_| round <= rounds) {
            let tm = tunnel(echo, Some(m.addr)).await?;
            print!("  mitmproxy {tm:8.1} MB/s ({:.1}%)", tm / td * 100.0);
            t_mitm.push(tm / td);
        }
        println!();
    }
    print!("median: palisade {:.1}% of direct", median(&mut t_agent) * 100.0);
    if !t_mitm.is_empty() {
        print!(", mitmproxy {:.1}% of direct", median(&mut t_mitm) * 100.0);
    }
    println!();

    println!("== (c) intercepted keep-alive requests/s, {RPS_SECONDS}s each, {rounds} interleaved rounds");
    let mut peak_rss = 0;
    for conc in [1usize, 50] {
        let (mut of_direct, mut vs_mitm, mut cpu_vs_mitm) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            let (dr, _, _) = rps(&direct_c, &url, conc, None).await?;
            let agent_pid = agent.child.id();
            let (run, cpu) = process_cpu(agent_pid, rps(&agent_c, &url, conc, Some(agent_pid))).await;
            let (ar, peak, an) = run?;
            let agent_us = per_request_us(cpu, an);
            peak_rss = peak_rss.max(peak);
            print!(
                "{conc:>2} clients, round {round}: direct {dr:8.0}/s  palisade {ar:8.0}/s ({:.2} of direct, {agent_us:.0} µs CPU/request)",
                ar / dr
            );
            of_direct.push(ar / dr);
            if let (Some(mc), Some(m)) = (&mitm_c, &mitm) {
                let (run, cpu) = process_cpu(m.child.id(), rps(mc, &url, conc, None)).await;
                let (mr, _, mn) = run?;
                let mitm_us = per_request_us(cpu, mn);
                print!("  mitmproxy {mr:8.0}/s ({mitm_us:.0} µs CPU/request)  palisade/mitmproxy {:.1}x", ar / mr);
                vs_mitm.push(ar / mr);
                cpu_vs_mitm.push(mitm_us / agent_us);
            }
            println!();
        }
        print!("{conc:>2} clients, median: palisade {:.2} of direct", median(&mut of_direct));
        if !vs_mitm.is_empty() {
            print!(
                ", palisade/mitmproxy {:.1}x in requests/s, {:.1}x less CPU per request",
                median(&mut vs_mitm),
                median(&mut cpu_vs_mitm)
            );
        }
        println!();
    }

    println!("== (e) agent memory");
    println!("idle RSS {:.1} MB, peak RSS under (c) {:.1} MB", idle_rss as f64 / 1024.0, peak_rss as f64 / 1024.0);
    drop(mitm);
    drop(mitm_tunnel);
    drop(agent);
    Ok(())
}
