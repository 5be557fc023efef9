//! The scanning engine: keyword prefilter, regex pass, validators, entropy,
//! allowlists, overlap resolution.
//!
//! Cost stays flat as rules grow: one Aho-Corasick pass over the text finds
//! which keyword rules can possibly match, and only those (plus rules with no
//! keywords) run their regex. Every regex is linear-time (the `regex` crate)
//! and findings stored per rule are capped while counting goes on. The engine
//! must never keep, log or return a matched value: only byte ranges.

use crate::normalize::Normalized;
use crate::rules::{Allowlist, Gate, Rule};
use crate::validate::shannon_entropy;
use crate::window::{windows, Runs};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use palisade_core::policy::GuardAction;
use regex::Regex;
use std::ops::Range;
use std::sync::Arc;

/// Matches stored per rule and text for log/block rules; more are counted,
/// not stored. Redact rules store every match (each must be replaced).
pub const MAX_MATCHES_PER_RULE: usize = 1000;

/// Bytes of a match's tail that may be searched again for the next match.
const MAX_RESCAN: usize = 4;

/// One detection: which detector, what policy says to do, and where (byte
/// range of the original text). Never the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub detector: Arc<str>,
    pub action: GuardAction,
    pub start: usize,
    pub end: usize,
    pub(crate) rule: usize,
    pub(crate) rank: u8,
}

/// Block > Redact > Log.
pub(crate) fn strength(a: GuardAction) -> u8 {
    match a {
        GuardAction::Log => 0,
        GuardAction::Redact => 1,
        GuardAction::Block => 2,
    }
}

/// Result of scanning one text.
pub(crate) struct ScanOut {
    pub matches: Vec<Match>,
    /// Matches counted beyond the per-rule cap: (rule index, count).
    pub overflow: Vec<(usize, u32)>,
}

pub(crate) struct Engine {
    pub rules: Vec<Rule>,
    /// Keyword prefilter over every rule with keywords (one pass per text).
    ac: Option<AhoCorasick>,
    /// For each `ac` pattern, the rules it activates.
    kw_rules: Vec<Vec<usize>>,
    /// Rules with no keywords (or whose keywords could not be compiled).
    always: Vec<usize>,
    /// Rules activated by keywords that scan text (not anchored).
    n_kw_rules: usize,
    /// Whether any rule is anchored at keyword hits (then the keyword pass
    /// must see the whole text).
    any_anchored: bool,
    global_allow: Vec<Allowlist>,
}

/// Which rules run on one text, and where anchored rules start.
struct Activation {
    active: Vec<bool>,
    /// Keyword hit positions per anchored rule, ascending.
    hits: Vec<Vec<usize>>,
}

/// Build the case-insensitive keyword automaton (a DFA: fastest to search,
/// and keyword sets are small); `None` when there are no keywords or it
/// cannot be built.
fn keyword_automaton(patterns: &[String]) -> Option<AhoCorasick> {
    if patterns.is_empty() {
        return None;
    }
    match AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::Standard)
        .kind(Some(AhoCorasickKind::DFA))
        .build(patterns)
    {
        Ok(ac) => Some(ac),
        Err(error) => {
            tracing::warn!(%error, "Keyword prefilter could not be built; every rule will run on every text");
            None
        }
    }
}

fn add_keywords(
    patterns: &mut Vec<String>,
    owners: &mut Vec<Vec<usize>>,
    rule: usize,
    keywords: &[String],
) {
    for k in keywords {
        match patterns.iter().position(|p| p == k) {
            Some(pi) => owners[pi].push(rule),
            None => {
                patterns.push(k.clone());
                owners.push(vec![rule]);
            }
        }
    }
}

/// Where accepted matches go: stored up to the per-rule cap, then counted.
struct Sink<'n> {
    norm: &'n Normalized<'n>,
    matches: Vec<Match>,
    stored: usize,
    extra: u32,
}

impl Engine {
    pub(crate) fn new(rules: Vec<Rule>, global_allow: Vec<Allowlist>) -> Self {
        let (mut patterns, mut kw_rules) = (Vec::new(), Vec::new());
        let mut always = Vec::new();
        let mut n_kw_rules = 0;
        let mut any_anchored = false;
        for (i, r) in rules.iter().enumerate() {
            if r.keywords.is_empty() {
                always.push(i);
                continue;
            }
            if matches!(r.gate, Gate::AtKeyword(_)) {
                any_anchored = true;
            } else {
                n_kw_rules += 1;
            }
            add_keywords(&mut patterns, &mut kw_rules, i, &r.keywords);
        }
        let ac = keyword_automaton(&patterns);
        if ac.is_none() && !patterns.is_empty() {
            // No prefilter: every keyword rule runs on every text; anchored
            // rules fall back to scanning the whole text.
            always = (0..rules.len()).collect();
            n_kw_rules = 0;
            any_anchored = false;
        }
        Self {
            rules,
            ac,
            kw_rules,
            always,
            n_kw_rules,
            any_anchored,
            global_allow,
        }
    }

    /// Which rules may match `t`: keyword-free rules, plus rules one of whose
    /// keywords occurs (case-insensitively); and every keyword hit of the
    /// anchored rules. One Aho-Corasick pass.
    fn activate(&self, t: &str) -> Activation {
        let mut active = vec![false; self.rules.len()];
        let mut hits = vec![Vec::new(); self.rules.len()];
        for &i in &self.always {
            active[i] = true;
        }
        if let Some(ac) = &self.ac {
            let mut left = self.n_kw_rules;
            for m in ac.find_overlapping_iter(t) {
                for &r in &self.kw_rules[m.pattern().as_usize()] {
                    if matches!(self.rules[r].gate, Gate::AtKeyword(_)) {
                        active[r] = true;
                        hits[r].push(m.start());
                    } else if !active[r] {
                        active[r] = true;
                        left -= 1;
                    }
                }
                if left == 0 && !self.any_anchored {
                    break;
                }
            }
        }
        for h in &mut hits {
            h.sort_unstable();
            h.dedup();
        }
        Activation { active, hits }
    }

    pub(crate) fn scan(&self, text: &str) -> ScanOut {
        let norm = Normalized::new(text);
        let t = norm.text();
        let Activation { active, hits } = self.activate(t);
        let mut runs: Option<Runs> = None;
        let mut out = ScanOut {
            matches: Vec::new(),
            overflow: Vec::new(),
        };
        let mut sink = Sink {
            norm: &norm,
            matches: Vec::new(),
            stored: 0,
            extra: 0,
        };
        for (ri, rule) in self.rules.iter().enumerate() {
            if !active[ri] {
                continue;
            }
            sink.stored = 0;
            sink.extra = 0;
            match &rule.gate {
                Gate::Full => self.run_window(ri, t, 0..t.len(), &mut sink),
                Gate::Digits {
                    min_digits,
                    min_dots,
                } => {
                    let runs = runs.get_or_insert_with(|| Runs::find(t));
                    let cands = runs
                        .digit_runs
                        .iter()
                        .filter(|r| r.digits >= *min_digits && r.dots >= *min_dots)
                        .map(|r| (r.start, r.end));
                    for w in windows(t, cands) {
                        self.run_window(ri, t, w, &mut sink);
                    }
                }
                Gate::HexColons => {
                    let runs = runs.get_or_insert_with(|| Runs::find(t));
                    for w in windows(t, runs.hex_colon_runs.iter().copied()) {
                        self.run_window(ri, t, w, &mut sink);
                    }
                }
                Gate::AtKeyword(anchored) if self.any_anchored => {
                    self.run_anchored(ri, anchored, t, &hits[ri], &mut sink)
                }
                Gate::AtKeyword(_) => self.run_window(ri, t, 0..t.len(), &mut sink),
            }
            if sink.extra > 0 {
                out.overflow.push((ri, sink.extra));
            }
        }
        out.matches = suppress_contained(sink.matches);
        out
    }

    /// Run rule `ri`'s regex over `t[w]`. Windows start and end on ASCII
    /// whitespace or the text's ends, so edge assertions behave as on `t`.
    fn run_window(&self, ri: usize, t: &str, w: Range<usize>, sink: &mut Sink<'_>) {
        let rule = &self.rules[ri];
        let base = w.start;
        let hay = &t[w];
        let mut locs = rule.regex.capture_locations();
        let mut pos = 0usize;
        while pos <= hay.len() {
            let Some(whole) = rule.regex.captures_read_at(&mut locs, hay, pos) else {
                break;
            };
            let (ws, we) = (whole.start(), whole.end());
            let value_end = match secret_range(rule, &locs, ws, we) {
                Some((s, e)) => {
                    match self.accept(rule, t, (base + ws, base + we), (base + s, base + e)) {
                        Some((s2, e2)) => {
                            self.store(ri, s2, e2, sink);
                            e2 - base
                        }
                        None => e,
                    }
                }
                None => we,
            };
            // Resume at the end of the value rather than of the whole match,
            // since a pattern's trailing boundary character may be the next
            // match's leading one (`10.0.0.1,10.0.0.2`), but never back up
            // more than a few bytes: re-scanning long match tails would make
            // the scan quadratic.
            let mut resume = value_end.max(we.saturating_sub(MAX_RESCAN));
            while !hay.is_char_boundary(resume) {
                resume += 1;
            }
            pos = if resume > pos {
                resume
            } else {
                next_char_boundary(hay, pos.max(ws))
            };
        }
    }

    /// A rule whose every match starts with a keyword runs anchored at each
    /// keyword hit: its cost follows the hits, not the text length.
    fn run_anchored(
        &self,
        ri: usize,
        anchored: &Regex,
        t: &str,
        hits: &[usize],
        sink: &mut Sink<'_>,
    ) {
        let rule = &self.rules[ri];
        let mut locs = anchored.capture_locations();
        let mut last_end = 0usize;
        for &pos in hits {
            if pos < last_end {
                continue;
            }
            let Some(whole) = anchored.captures_read(&mut locs, &t[pos..]) else {
                continue;
            };
            let Some((s, e)) = secret_range(rule, &locs, whole.start(), whole.end()) else {
                continue;
            };
            let Some((s2, e2)) = self.accept(
                rule,
                t,
                (pos + whole.start(), pos + whole.end()),
                (pos + s, pos + e),
            ) else {
                continue;
            };
            last_end = e2;
            self.store(ri, s2, e2, sink);
        }
    }

    fn store(&self, ri: usize, s: usize, e: usize, sink: &mut Sink<'_>) {
        let rule = &self.rules[ri];
        let cap = if rule.action == GuardAction::Redact {
            usize::MAX
        } else {
            MAX_MATCHES_PER_RULE
        };
        if sink.stored < cap {
            let (os, oe) = sink.norm.to_original(s, e);
            sink.matches.push(Match {
                detector: rule.id.clone(),
                action: rule.action,
                start: os,
                end: oe,
                rule: ri,
                rank: rule.rank,
            });
            sink.stored += 1;
        } else {
            sink.extra = sink.extra.saturating_add(1);
        }
    }

    /// Validator, entropy and allowlists; returns the refined value range.
    fn accept(
        &self,
        rule: &Rule,
        t: &str,
        whole: (usize, usize),
        (s, e): (usize, usize),
    ) -> Option<(usize, usize)> {
        let (s, e) = match rule.check {
            Some(check) => {
                let r = check(&t[s..e])?;
                (s + r.start, s + r.end)
            }
            None => (s, e),
        };
        if e <= s {
            return None;
        }
        let secret = &t[s..e];
        if let Some(min) = rule.entropy {
            if shannon_entropy(secret) < min {
                return None;
            }
        }
        if !rule.allowlists.is_empty() || !self.global_allow.is_empty() {
            let line = line_around(t, whole.0, whole.1);
            let whole = &t[whole.0..whole.1];
            if rule
                .allowlists
                .iter()
                .chain(&self.global_allow)
                .any(|a| a.allows(secret, whole, line))
            {
                return None;
            }
        }
        Some((s, e))
    }
}

/// The value's range inside a match: the rule's secret group, else the
/// first non-empty group, else the whole match (gitleaks semantics).
fn secret_range(
    rule: &Rule,
    locs: &regex::CaptureLocations,
    ws: usize,
    we: usize,
) -> Option<(usize, usize)> {
    let r = if rule.secret_group > 0 {
        locs.get(rule.secret_group)?
    } else {
        (1..locs.len())
            .find_map(|g| locs.get(g).filter(|(a, b)| b > a))
            .unwrap_or((ws, we))
    };
    (r.1 > r.0).then_some(r)
}

fn next_char_boundary(t: &str, mut i: usize) -> usize {
    i += 1;
    while i < t.len() && !t.is_char_boundary(i) {
        i += 1;
    }
    i
}

fn line_around(t: &str, s: usize, e: usize) -> &str {
    let ls = t[..s].rfind('\n').map_or(0, |i| i + 1);
    let le = t[e..].find('\n').map_or(t.len(), |i| e + i);
    &t[ls..le]
}

/// Drop a match wholly inside another of higher rank whose action is at
/// least as strong (an email inside a database URL, an OpenAI-shaped prefix
/// of an Anthropic key). Partial overlaps are kept; redaction merges them.
fn suppress_contained(mut v: Vec<Match>) -> Vec<Match> {
    v.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(b.end.cmp(&a.end))
            .then(b.rank.cmp(&a.rank))
    });
    let mut kept: Vec<Match> = Vec::with_capacity(v.len());
    let mut open: Vec<usize> = Vec::new();
    for m in v {
        open.retain(|&k| kept[k].end > m.start);
        let covered = open.iter().any(|&k| {
            let k = &kept[k];
            k.end >= m.end && k.rank > m.rank && strength(k.action) >= strength(m.action)
        });
        if !covered {
            open.push(kept.len());
            kept.push(m);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(start: usize, end: usize, rank: u8, action: GuardAction) -> Match {
        Match {
            detector: Arc::from(format!("r{rank}")),
            action,
            start,
            end,
            rule: 0,
            rank,
        }
    }

    #[test]
    fn contained_lower_rank_is_dropped_unless_stronger() {
        let out = suppress_contained(vec![
            m(5, 10, 1, GuardAction::Log),
            m(0, 20, 6, GuardAction::Log),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rank, 6);
        let out = suppress_contained(vec![
            m(5, 10, 1, GuardAction::Block),
            m(0, 20, 6, GuardAction::Log),
        ]);
        assert_eq!(out.len(), 2, "a stronger action is never hidden");
        let out = suppress_contained(vec![
            m(5, 25, 1, GuardAction::Log),
            m(0, 20, 6, GuardAction::Log),
        ]);
        assert_eq!(out.len(), 2, "partial overlap kept");
    }

    /// Every built-in with its gate replaced by a whole-text scan.
    fn ungated() -> Engine {
        let mut rules = crate::rules::builtins(&palisade_core::policy::Guardrails::default());
        for r in &mut rules {
            r.gate = Gate::Full;
        }
        Engine::new(rules, Vec::new())
    }

    fn spans(e: &Engine, t: &str) -> Vec<(String, usize, usize)> {
        let mut v: Vec<_> = e
            .scan(t)
            .matches
            .into_iter()
            .map(|m| (m.detector.to_string(), m.start, m.end))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn gates_never_lose_a_match() {
        let gated = Engine::new(
            crate::rules::builtins(&palisade_core::policy::Guardrails::default()),
            Vec::new(),
        );
        let full = ungated();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "txt") {
                let text = std::fs::read_to_string(path).unwrap();
                lines.extend(
                    text.lines()
                        .filter(|l| l.len() > 2)
                        .map(|l| l[2..].replace("\\n", "\n")),
                );
            }
        }
        let mut checked = 0;
        for l in &lines {
            assert_eq!(spans(&gated, l), spans(&full, l), "line: {l}");
            checked += 1;
        }
        // Joined with and without whitespace, so windows meet and merge.
        let filler = "x".repeat(70);
        for sep in ["\n", " ", "", ";", &filler] {
            let joined = lines.join(sep);
            assert_eq!(
                spans(&gated, &joined),
                spans(&full, &joined),
                "joined with {sep:?}"
            );
            checked += 1;
        }
        assert!(checked > 200);
    }

    #[test]
    fn line_is_found() {
        let t = "a\nkey=1\nb";
        assert_eq!(line_around(t, 2, 5), "key=1");
        assert_eq!(line_around("x", 0, 1), "x");
    }
}
