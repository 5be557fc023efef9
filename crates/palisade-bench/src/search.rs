//! `palisade-bench search`: event search latency at scale.
//!
//! Seeds N realistic interaction records (1-2 KB of JSON: prompt and
//! response text drawn from a skewed vocabulary, 2,000 users, 1,000 devices,
//! 30 apps, 12 models, decisions and detectors, times spread over 30 days)
//! through the store's own ingest path (`IncomingEvent` conversion, then
//! `Store::insert_events` in big batches), then times the searches the admin
//! API runs (limit 50, newest first): a user filter, a one-day time range
//! and free text (a common word, a rare word, a word in ten records).
//! Prints median and p95 over repeated runs; asserts nothing beyond the
//! result counts it knows. With `--sqlite-path` / `--pg-schema` the data is
//! kept and reused by the next run (seeded only up to N).

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use palisade_core::{
    AppRef, AuditEvent, DeviceRef, EventKind, Finding, FindingLocation, Interaction, PolicyRef,
    RecordDecision, Usage, UserRef,
};
use palisade_server::store::{EventFilter, NewEvent, TextQuery};
use palisade_server::Store;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: palisade-bench search [--events N] [--store sqlite|postgres] [--pg-url URL] \
                     [--runs R] [--sqlite-path FILE] [--pg-schema NAME]";
const BATCH: usize = 2000;
/// Seed batches being inserted at once.
const SEED_INFLIGHT: usize = 4;
const USERS: u64 = 2000;
const DEVICES: u64 = 1000;
const VOCAB: usize = 5000;
/// Word that occurs in exactly ten records.
const NEEDLE: &str = "zeppelinfjord";
const SPAN_DAYS: i64 = 30;

struct Args {
    events: u64,
    stores: Vec<String>,
    pg_url: Option<String>,
    runs: usize,
    sqlite_path: Option<PathBuf>,
    pg_schema: Option<String>,
}

pub async fn main(mut argv: impl Iterator<Item = String>) -> Result<()> {
    let mut a = Args {
        events: 1_000_000,
        stores: Vec::new(),
        pg_url: std::env::var("PALISADE_TEST_POSTGRES_URL").ok().filter(|s| !s.is_empty()),
        runs: 20,
        sqlite_path: None,
        pg_schema: None,
    };
    while let Some(arg) = argv.next() {
        let mut val = || argv.next().context(USAGE);
        match arg.as_str() {
            "--events" => a.events = val()?.parse().context("--events: a number")?,
            "--store" => a.stores.push(val()?),
            "--pg-url" => a.pg_url = Some(val()?),
            "--runs" => a.runs = val()?.parse().context("--runs: a number")?,
            "--sqlite-path" => a.sqlite_path = Some(val()?.into()),
            "--pg-schema" => a.pg_schema = Some(val()?),
            _ => bail!("{USAGE}"),
        }
    }
    if a.events < 20_000 || !a.events.is_multiple_of(BATCH as u64) {
        bail!("--events: at least 20000 and a multiple of {BATCH}");
    }
    if a.runs < 3 {
        bail!("--runs: at least 3");
    }
    if a.stores.is_empty() {
        a.stores.push("sqlite".into());
        if a.pg_url.is_some() {
            a.stores.push("postgres".into());
        }
    }
    println!(
        "palisade-bench search: {} events, {} runs per query (after 2 warm-up runs), limit 50, {} cores",
        a.events,
        a.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut table = Vec::new();
    for store in a.stores.clone() {
        let _dir;
        let s = match store.as_str() {
            "sqlite" => {
                let path = match &a.sqlite_path {
                    Some(p) => p.clone(),
                    None => {
                        let d = tempfile::tempdir_in(std::env::current_dir()?)?;
                        let p = d.path().join("search.db");
                        _dir = d;
                        p
                    }
                };
                Store::open_sqlite(&path, 4).await?
            }
            "postgres" => {
                let url = a.pg_url.clone().context("--store postgres needs --pg-url or PALISADE_TEST_POSTGRES_URL")?;
                let schema = a
                    .pg_schema
                    .clone()
                    .unwrap_or_else(|| format!("bench_search_{}", uuid::Uuid::now_v7().simple()));
                Store::open_postgres(&url, Some(&schema), 8).await?
            }
            other => bail!("--store {other:?}: sqlite or postgres"),
        };
        let rows = run_store(&store, &s, &a).await?;
        table.extend(rows);
        s.close().await;
    }
    println!("\n| store | events | query | matches | median ms | p95 ms |");
    println!("|---|---|---|---|---|---|");
    for r in table {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} |",
            r.store, r.events, r.query, r.matches, r.median_ms, r.p95_ms
        );
    }
    Ok(())
}

struct Row {
    store: String,
    events: u64,
    query: &'static str,
    matches: usize,
    median_ms: f64,
    p95_ms: f64,
}

async fn run_store(name: &str, s: &Store, a: &Args) -> Result<Vec<Row>> {
    let have = s.count_events().await?;
    let start = Utc::now() - ChronoDuration::days(SPAN_DAYS);
    let words = vocabulary();
    if have < a.events {
        let todo = a.events - have;
        println!("== [{name}] seeding {todo} events (store holds {have})");
        let t0 = Instant::now();
        // Records are built on a blocking thread while the previous batch
        // is being inserted, so the figure is the store's, not the generator's.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<NewEvent>)>(4);
        let (total, seed_words) = (a.events, words.clone());
        let generator = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ have);
            let mut first = have;
            while first < total {
                let batch = (first..first + BATCH as u64)
                    .map(|i| record(i, total, start, &seed_words, &mut rng))
                    .collect::<Result<Vec<_>>>()?;
                let device = format!("device-{:04}", rng.below(DEVICES));
                if tx.blocking_send((device, batch)).is_err() {
                    break;
                }
                first += BATCH as u64;
            }
            Ok(())
        });
        let mut done = 0u64;
        let mut bytes = 0u64;
        // Several batches in flight, as from several agents: the store's
        // group committer commits them together, the way a fleet's uploads
        // arrive.
        let mut inflight = tokio::task::JoinSet::new();
        while let Some((device, batch)) = rx.recv().await {
            bytes += batch.iter().map(|e| e.json.len() as u64).sum::<u64>();
            if inflight.len() >= SEED_INFLIGHT {
                inflight.join_next().await.context("seed task")???;
            }
            let store = s.clone();
            inflight.spawn(async move { store.insert_events(&device, &batch).await.map(|_| ()) });
            done += BATCH as u64;
            if done.is_multiple_of(500_000) {
                println!(
                    "   {done} events, {:.0} ev/s, avg {} B/record",
                    done as f64 / t0.elapsed().as_secs_f64(),
                    bytes / done
                );
            }
        }
        while let Some(r) = inflight.join_next().await {
            r??;
        }
        generator.await??;
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "   seeded {todo} in {secs:.1}s: {:.0} events/s, avg {} B of JSON per record",
            todo as f64 / secs,
            bytes / todo
        );
    }
    let n = s.count_events().await?;
    println!("== [{name}] {n} events stored");

    // One day in the middle of the times actually stored (a store seeded
    // part-way, or in an earlier run, does not span today's 30 days).
    let oldest = s.query_events(&EventFilter { after_seq: Some(0), limit: 1, ..f() }).await?;
    let newest = s.query_events(&EventFilter { limit: 1, ..f() }).await?;
    let mid = match (oldest.first(), newest.first()) {
        (Some(a), Some(b)) => a.time + (b.time - a.time) / 2 - ChronoDuration::hours(12),
        _ => start + ChronoDuration::days(SPAN_DAYS / 2),
    };
    let common = words[50].clone();
    let rare = words[3000].clone();
    let queries: Vec<(&'static str, EventFilter)> = vec![
        ("user filter", EventFilter { os_user: Some("user0042".into()), ..f() }),
        ("time range (1 day)", EventFilter { since: Some(mid), until: Some(mid + ChronoDuration::days(1)), ..f() }),
        ("free text, common word", EventFilter { text: TextQuery::new(&common), ..f() }),
        ("free text, rare word", EventFilter { text: TextQuery::new(&rare), ..f() }),
        ("free text, word in 10 records", EventFilter { text: TextQuery::new(NEEDLE), ..f() }),
        (
            "user + free text",
            EventFilter { os_user: Some("user0042".into()), text: TextQuery::new(&common), ..f() },
        ),
    ];
    let mut out = Vec::new();
    for (label, filter) in queries {
        let mut times = Vec::new();
        let mut matches = 0;
        for run in 0..a.runs + 2 {
            let t = Instant::now();
            let rows = s.query_events(&filter).await?;
            let el = t.elapsed();
            matches = rows.len();
            if run >= 2 {
                times.push(el);
            }
        }
        times.sort();
        let (median, p95) = (ms(times[times.len() / 2]), ms(times[(times.len() * 95).div_ceil(100) - 1]));
        println!("   {label:32} {matches:3} rows  median {median:8.2} ms  p95 {p95:8.2} ms");
        out.push(Row { store: name.into(), events: n, query: label, matches, median_ms: median, p95_ms: p95 });
    }
    Ok(out)
}

fn f() -> EventFilter {
    EventFilter { limit: 50, ..EventFilter::default() }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Log-uniform rank in 0..n: a few words are everywhere, most are rare.
    fn skewed(&mut self, n: usize) -> usize {
        ((n as f64).powf(self.unit()) as usize).saturating_sub(1).min(n - 1)
    }
}

/// `VOCAB` distinct pronounceable words.
fn vocabulary() -> Vec<String> {
    const SYL: [&str; 24] = [
        "ka", "lo", "mi", "ren", "tu", "sha", "vel", "do", "pri", "an", "qu", "zo", "bel", "fi", "gar", "ne",
        "os", "ti", "wen", "ya", "cru", "hul", "ep", "ix",
    ];
    (0..VOCAB)
        .map(|i| {
            let mut w = String::new();
            let mut k = i + 24;
            while k > 0 {
                w.push_str(SYL[k % 24]);
                k /= 24;
            }
            w
        })
        .collect()
}

fn sentence(rng: &mut Rng, words: &[String], n: usize) -> String {
    let mut s = String::with_capacity(n * 7);
    for i in 0..n {
        if i > 0 {
            s.push(if rng.below(12) == 0 { '.' } else { ' ' });
            if s.ends_with('.') {
                s.push(' ');
            }
        }
        s.push_str(&words[rng.skewed(words.len())]);
    }
    s
}

fn record(i: u64, total: u64, start: DateTime<Utc>, words: &[String], rng: &mut Rng) -> Result<NewEvent> {
    const APPS: [&str; 6] = ["Cursor", "Claude Code", "Codex", "ChatGPT", "Gemini CLI", "OpenCode"];
    const MODELS: [(&str, &str); 12] = [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4.1"),
        ("openai", "o3"),
        ("openai", "gpt-5"),
        ("anthropic", "claude-sonnet-4"),
        ("anthropic", "claude-opus-4"),
        ("anthropic", "claude-haiku-3.5"),
        ("gemini", "gemini-2.5-pro"),
        ("gemini", "gemini-2.5-flash"),
        ("gemini", "gemini-2.0-flash"),
        ("openai", "gpt-4.1-mini"),
    ];
    let user = rng.below(USERS);
    let span_ms = SPAN_DAYS * 86_400_000;
    let at = start + ChronoDuration::milliseconds((i as i64 * span_ms) / total as i64 + rng.below(60_000) as i64);
    let mut ev = AuditEvent::new(
        EventKind::Interaction,
        DeviceRef { id: String::new(), hostname: format!("laptop-{}", user), os: "macos".into() },
        UserRef {
            os_user: Some(format!("user{user:04}")),
            email: Some(format!("user{user:04}@corp.example")),
            team: Some(format!("team-{}", user % 40)),
        },
    );
    ev.time = at;
    let app = APPS[rng.below(APPS.len() as u64) as usize];
    let app_variant = rng.below(5);
    ev.app = Some(AppRef {
        name: Some(if app_variant == 0 { app.to_string() } else { format!("{app} {app_variant}") }),
        exe: Some(format!("/Applications/{app}.app/Contents/MacOS/{app}")),
        pid: Some(1000 + rng.below(50_000) as u32),
        ..Default::default()
    });
    let (provider, model) = MODELS[rng.below(MODELS.len() as u64) as usize];
    let prompt_words = 110 + rng.below(80) as usize;
    let mut prompt = sentence(rng, words, prompt_words);
    if i % (total / 10) == 7 {
        prompt.push(' ');
        prompt.push_str(NEEDLE);
    }
    let response_words = 30 + rng.below(50) as usize;
    let response = sentence(rng, words, response_words);
    let decision = match rng.below(100) {
        0..=2 => RecordDecision::Block,
        3..=9 => RecordDecision::Redact,
        _ => RecordDecision::Allow,
    };
    let findings = if rng.below(20) == 0 {
        vec![Finding {
            detector: ["email", "aws_access_key", "credit_card", "github_token"][rng.below(4) as usize].into(),
            action: "redact".into(),
            location: FindingLocation::Request,
            path: Some("messages[0]".into()),
            count: 1,
        }]
    } else {
        vec![]
    };
    let input = 200 + rng.below(4000);
    let mut it = Interaction {
        provider: provider.into(),
        host: format!("api.{provider}.com"),
        endpoint: "chat.completions".into(),
        model: Some(model.into()),
        stream: rng.below(2) == 0,
        usage: Usage {
            input_tokens: Some(input),
            output_tokens: Some(50 + rng.below(800)),
            cached_input_tokens: Some(input / 3),
            reasoning_tokens: None,
        },
        cost_usd: (rng.below(10) != 0).then_some(input as f64 * 2.5e-6),
        policy: PolicyRef { decision, rule: None, version: 7 },
        findings,
        ..Default::default()
    };
    it.request.prompt = Some(prompt);
    it.request.method = "POST".into();
    it.request.path = "/v1/chat/completions".into();
    it.response.text = Some(response);
    it.response.status = Some(200);
    ev.interaction = Some(it);
    let rec = palisade_proto::AuditRecord { id: ev.id.to_string(), json: serde_json::to_vec(&ev)? };
    let incoming = palisade_server::convert::IncomingEvent::try_from(rec).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(incoming.into_new_event("").0)
}
