//! Guard throughput on realistic prompts (prose + code + logs, all default
//! rules) and the latency `inspect_request` adds to a 100 KB request.
//!
//! Run: `cargo bench -p palisade-guard` (plain `fn main`, no harness).

use palisade_core::policy::{GuardAction, Guardrails};
use palisade_guard::{Guard, VerdictAction};
use std::hint::black_box;
use std::time::{Duration, Instant};

const PROSE: &str = "Can you help me refactor the billing service? The quarterly report shows churn went up \
in Q3, and the finance team wants the invoice totals (about 1,234,567.89 EUR) reconciled against the ledger \
before 2024-10-01. Our release v2.14.3 changed the rounding; see ticket PAY-4821 and the notes from the \
last sprint review. I think the problem is in how we convert currencies at 14:30:00 UTC each day. ";

const CODE: &str = r#"
fn reconcile(ledger: &Ledger, invoices: &[Invoice]) -> Result<Summary, Error> {
    let mut total = Decimal::ZERO;
    for inv in invoices.iter().filter(|i| i.status == Status::Open) {
        let rate = ledger.rate(inv.currency, inv.issued_at)?;
        total += (inv.amount * rate).round_dp(2);
        tracing::debug!(id = %inv.id, amount = %inv.amount, "Reconciled invoice");
    }
    let url = format!("https://api.internal.example/v1/ledgers/{}/close", ledger.id);
    let token = std::env::var("LEDGER_TOKEN")?;
    Ok(Summary { total, url, count: invoices.len() })
}
"#;

const LOGS: &str = "2024-09-30T14:30:00.123Z INFO  http: request method=GET path=/v1/ledgers/42 status=200 \
latency_ms=12 peer=10.20.30.40:51234 user_agent=\"curl/8.4.0\"\n2024-09-30T14:30:01.456Z WARN  db: slow query \
duration_ms=812 table=invoices rows=10423\n";

const PII: &str =
    "Customer: jane.doe@acme-corp.com, phone +44 20 7946 0958, card 4111 1111 1111 1111. ";

fn realistic(len: usize) -> String {
    let mut s = String::with_capacity(len + 1024);
    let mut i = 0usize;
    while s.len() < len {
        s.push_str(match i % 7 {
            0 | 3 => PROSE,
            1 | 4 => CODE,
            2 | 5 => LOGS,
            _ => {
                if i % 21 == 6 {
                    PII
                } else {
                    PROSE
                }
            }
        });
        i += 1;
    }
    s.truncate(len);
    while !s.is_char_boundary(s.len()) {
        s.pop();
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let guard = Guard::new(&Guardrails::default()).expect("default guard");
    println!("detectors: {}", guard.detector_ids().len());

    // Scan throughput, one core. Best-of-N is the figure least disturbed by
    // other processes on a shared machine; the median is printed too.
    let runs = 11;
    let mb = |len: usize| len as f64 / (1 << 20) as f64;
    for (name, text) in [
        ("mixed prose+code+logs", realistic(4 << 20)),
        ("prose only", PROSE.repeat((4 << 20) / PROSE.len())),
    ] {
        let _ = black_box(guard.scan(&text));
        let mut times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            black_box(guard.scan(black_box(&text)));
            times.push(t.elapsed());
        }
        let best = *times.iter().min().expect("runs");
        let med = median(times);
        println!(
            "scan {name}: {:.1} MB, best {:.0} MB/s, median {:.0} MB/s per core",
            mb(text.len()),
            mb(text.len()) / best.as_secs_f64(),
            mb(text.len()) / med.as_secs_f64()
        );
    }

    // Latency added to a 100 KB chat.completions request (log-only and redact).
    let prompt = realistic(100 * 1024);
    let body = serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt}
        ]
    }))
    .expect("body");
    for (name, action) in [("log", GuardAction::Log), ("redact", GuardAction::Redact)] {
        let g = Guard::new(&Guardrails {
            default_action: action,
            ..Guardrails::default()
        })
        .expect("guard");
        let v = g.inspect_request("chat.completions", &body);
        assert!(!v.findings.is_empty());
        if action == GuardAction::Redact {
            assert!(matches!(v.action, VerdictAction::Redact { .. }));
        }
        let mut times = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            black_box(g.inspect_request("chat.completions", black_box(&body)));
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "inspect_request 100 KB ({name}): median {:.3} ms, p99 {:.3} ms",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() * 99 / 100].as_secs_f64() * 1e3
        );
    }
}
