//! The scanning engine: keyword prefilter, regex pass, validators, entropy,
//! allowlists, overlap resolution.
//!
//! Cost stays flat as rules grow: one Aho-Corasick pass over the text finds
//! which keyword rules can possibly match, and only those (plus rules with no
//! keywords) run their regex. Every regex is linear-time (the `regex` crate)
//! and findings stored per rule are capped while counting goes on. The engine
//! must never keep, log or return a matched value: only byte ranges.

use crate::normalize::Normalized;
use crate::rules::{Allowlist, Rule};
use crate::validate::shannon_entropy;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use palisade_core::policy::GuardAction;
use std::sync::Arc;

/// Matches stored per rule and text for log/block rules; more are counted,
/// not stored. Redact rules store every match (each must be replaced).
pub const MAX_MATCHES_PER_RULE: usize = 1000;

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
    ac: Option<AhoCorasick>,
    /// For each Aho-Corasick pattern, the rules it activates.
    kw_rules: Vec<Vec<usize>>,
    always: Vec<usize>,
    n_kw_rules: usize,
    global_allow: Vec<Allowlist>,
}

impl Engine {
    pub(crate) fn new(rules: Vec<Rule>, global_allow: Vec<Allowlist>) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        let mut kw_rules: Vec<Vec<usize>> = Vec::new();
        let mut always = Vec::new();
        let mut n_kw_rules = 0;
        for (i, r) in rules.iter().enumerate() {
            if r.keywords.is_empty() {
                always.push(i);
                continue;
            }
            n_kw_rules += 1;
            for k in &r.keywords {
                match patterns.iter().position(|p| p == k) {
                    Some(pi) => kw_rules[pi].push(i),
                    None => {
                        patterns.push(k.clone());
                        kw_rules.push(vec![i]);
                    }
                }
            }
        }
        let ac = if patterns.is_empty() {
            None
        } else {
            // Keywords are plain strings; building cannot fail short of
            // exceeding internal limits, in which case every rule just runs.
            match AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&patterns)
            {
                Ok(ac) => Some(ac),
                Err(error) => {
                    tracing::warn!(%error, "Keyword prefilter could not be built; every rule will run");
                    always = (0..rules.len()).collect();
                    n_kw_rules = 0;
                    None
                }
            }
        };
        Self {
            rules,
            ac,
            kw_rules,
            always,
            n_kw_rules,
            global_allow,
        }
    }

    /// Which rules may match `t`: keyword-free rules, plus rules one of whose
    /// keywords occurs (case-insensitively).
    fn active_rules(&self, t: &str) -> Vec<bool> {
        let mut active = vec![false; self.rules.len()];
        for &i in &self.always {
            active[i] = true;
        }
        if let Some(ac) = &self.ac {
            let mut left = self.n_kw_rules;
            for m in ac.find_overlapping_iter(t) {
                for &r in &self.kw_rules[m.pattern().as_usize()] {
                    if !active[r] {
                        active[r] = true;
                        left -= 1;
                    }
                }
                if left == 0 {
                    break;
                }
            }
        }
        active
    }

    pub(crate) fn scan(&self, text: &str) -> ScanOut {
        let norm = Normalized::new(text);
        let t = norm.text();
        let active = self.active_rules(t);
        let mut matches = Vec::new();
        let mut overflow = Vec::new();
        for (ri, rule) in self.rules.iter().enumerate() {
            if !active[ri] {
                continue;
            }
            let cap = if rule.action == GuardAction::Redact { usize::MAX } else { MAX_MATCHES_PER_RULE };
            let mut stored = 0usize;
            let mut extra = 0u32;
            let mut locs = rule.regex.capture_locations();
            let mut pos = 0usize;
            while pos <= t.len() {
                let Some(whole) = rule.regex.captures_read_at(&mut locs, t, pos) else { break };
                let (ws, we) = (whole.start(), whole.end());
                let secret = secret_range(rule, &locs, ws, we);
                let (accepted, resume) = match secret {
                    Some((s, e)) => match self.accept(rule, t, (ws, we), (s, e)) {
                        Some((s2, e2)) => (Some((s2, e2)), e2),
                        None => (None, e),
                    },
                    None => (None, we),
                };
                if let Some((s, e)) = accepted {
                    if stored < cap {
                        let (os, oe) = norm.to_original(s, e);
                        matches.push(Match {
                            detector: rule.id.clone(),
                            action: rule.action,
                            start: os,
                            end: oe,
                            rule: ri,
                            rank: rule.rank,
                        });
                        stored += 1;
                    } else {
                        extra = extra.saturating_add(1);
                    }
                }
                // Resume at the end of the value, not of the whole match: a
                // pattern's trailing boundary character may be the next
                // match's leading one (`10.0.0.1,10.0.0.2`).
                pos = if resume > pos { resume } else { next_char_boundary(t, pos.max(ws)) };
            }
            if extra > 0 {
                overflow.push((ri, extra));
            }
        }
        ScanOut {
            matches: suppress_contained(matches),
            overflow,
        }
    }

    /// Validator, entropy and allowlists; returns the refined value range.
    fn accept(&self, rule: &Rule, t: &str, whole: (usize, usize), (s, e): (usize, usize)) -> Option<(usize, usize)> {
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
            if rule.allowlists.iter().chain(&self.global_allow).any(|a| a.allows(secret, whole, line)) {
                return None;
            }
        }
        Some((s, e))
    }
}

/// The value's range inside a match: the rule's secret group, else the
/// first non-empty group, else the whole match (gitleaks semantics).
fn secret_range(rule: &Rule, locs: &regex::CaptureLocations, ws: usize, we: usize) -> Option<(usize, usize)> {
    let r = if rule.secret_group > 0 {
        locs.get(rule.secret_group)?
    } else {
        (1..locs.len()).find_map(|g| locs.get(g).filter(|(a, b)| b > a)).unwrap_or((ws, we))
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
    v.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)).then(b.rank.cmp(&a.rank)));
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
        let out = suppress_contained(vec![m(5, 10, 1, GuardAction::Log), m(0, 20, 6, GuardAction::Log)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rank, 6);
        let out = suppress_contained(vec![m(5, 10, 1, GuardAction::Block), m(0, 20, 6, GuardAction::Log)]);
        assert_eq!(out.len(), 2, "a stronger action is never hidden");
        let out = suppress_contained(vec![m(5, 25, 1, GuardAction::Log), m(0, 20, 6, GuardAction::Log)]);
        assert_eq!(out.len(), 2, "partial overlap kept");
    }

    #[test]
    fn line_is_found() {
        let t = "a\nkey=1\nb";
        assert_eq!(line_around(t, 2, 5), "key=1");
        assert_eq!(line_around("x", 0, 1), "x");
    }
}
