//! Precision and recall per detector over the labelled corpus in
//! `tests/corpus/*.txt` (format in `tests/corpus/README.md`). Prints a table
//! and fails when a detector falls below its floor.

use palisade_core::policy::Guardrails;
use palisade_guard::{builtin_ids, Guard};
use std::collections::BTreeMap;
use std::path::Path;

/// Floors (precision, recall). Validated detectors must be near perfect;
/// heuristic ones (phone numbers, generic assignments) get a little slack.
fn floor(detector: &str) -> (f64, f64) {
    match detector {
        "phone" | "generic_secret" => (0.9, 0.85),
        _ => (0.95, 0.95),
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.peek() {
                Some('n') => {
                    it.next();
                    out.push('\n');
                }
                Some('\\') => {
                    it.next();
                    out.push('\\');
                }
                _ => out.push(c),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    tp: u32,
    fp: u32,
    fn_: u32,
    tn: u32,
    misses: Vec<String>,
}

#[test]
fn corpus_precision_and_recall() {
    let guard = Guard::new(&Guardrails::default()).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("txt") {
            continue;
        }
        let detector = path.file_stem().unwrap().to_str().unwrap().to_string();
        let clean = detector == "_clean";
        assert!(
            clean || builtin_ids().contains(&detector.as_str()),
            "corpus file for unknown detector {detector}"
        );
        for (n, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (expect, text) = match line.split_at(2) {
                ("+ ", t) => (true, unescape(t)),
                ("- ", t) => (false, unescape(t)),
                _ => panic!(
                    "{}:{}: line must start with '+ ' or '- '",
                    path.display(),
                    n + 1
                ),
            };
            let found = guard.scan(&text);
            if clean {
                assert!(
                    !expect,
                    "{}:{}: clean lines are all '- '",
                    path.display(),
                    n + 1
                );
                for m in found {
                    let t = tallies.entry(m.detector.to_string()).or_default();
                    t.fp += 1;
                    t.misses
                        .push(format!("  false hit _clean.txt line {}", n + 1));
                }
                continue;
            }
            let tally = tallies.entry(detector.clone()).or_default();
            let fired = found.iter().any(|m| *m.detector == *detector);
            match (expect, fired) {
                (true, true) => tally.tp += 1,
                (false, false) => tally.tn += 1,
                (true, false) => {
                    tally.fn_ += 1;
                    tally.misses.push(format!("  missed   line {}", n + 1));
                }
                (false, true) => {
                    tally.fp += 1;
                    tally.misses.push(format!("  false hit line {}", n + 1));
                }
            }
        }
    }
    let mut failures = Vec::new();
    println!(
        "{:<26} {:>4} {:>4} {:>4} {:>4} {:>9} {:>7}",
        "detector", "tp", "fp", "fn", "tn", "precision", "recall"
    );
    for (d, t) in &tallies {
        let precision = if t.tp + t.fp == 0 {
            1.0
        } else {
            t.tp as f64 / (t.tp + t.fp) as f64
        };
        let recall = if t.tp + t.fn_ == 0 {
            1.0
        } else {
            t.tp as f64 / (t.tp + t.fn_) as f64
        };
        println!(
            "{d:<26} {:>4} {:>4} {:>4} {:>4} {precision:>9.3} {recall:>7.3}",
            t.tp, t.fp, t.fn_, t.tn
        );
        for m in &t.misses {
            println!("{m}");
        }
        let (pf, rf) = floor(d);
        assert!(
            t.tp > 0 && t.tn > 0,
            "{d}: corpus needs true and false examples"
        );
        if precision < pf || recall < rf {
            failures.push(format!(
                "{d}: precision {precision:.3} (floor {pf}), recall {recall:.3} (floor {rf})"
            ));
        }
    }
    let missing: Vec<&str> = builtin_ids()
        .into_iter()
        .filter(|id| !tallies.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "detectors without a corpus: {missing:?}"
    );
    assert!(failures.is_empty(), "below floor:\n{}", failures.join("\n"));
}
