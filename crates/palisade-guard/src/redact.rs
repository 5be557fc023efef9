//! Typed placeholders (`[EMAIL_1]`, `[AWS_ACCESS_KEY_2]`) numbered
//! consistently within one request, and the splice that puts them in.
//!
//! A [`Redactor`] lives for one request: the same value gets the same number
//! everywhere in that request. It holds the values it has seen in memory
//! only; it must never print them (its `Debug` shows counts only) and never
//! outlive the request.

use crate::normalize::normalize_value;
use crate::scan::Match;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Placeholder numbering for one request.
#[derive(Default)]
pub struct Redactor {
    seen: HashMap<(Arc<str>, String), u32>,
    next: HashMap<Arc<str>, u32>,
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// The placeholder for `value` under `label`: `[LABEL_n]`, the same `n`
    /// for the same (normalised) value.
    pub fn placeholder(&mut self, label: &Arc<str>, value: &str) -> String {
        let key = (label.clone(), normalize_value(value));
        let n = match self.seen.get(&key) {
            Some(n) => *n,
            None => {
                let c = self.next.entry(label.clone()).or_insert(0);
                *c += 1;
                self.seen.insert(key, *c);
                *c
            }
        };
        format!("[{label}_{n}]")
    }

    /// How many distinct values have a placeholder.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("placeholders", &self.seen.len())
            .finish()
    }
}

/// Replace each match (sorted by start) with its placeholder. Overlapping
/// matches merge into one placeholder named after the highest-ranked one, so
/// no part of any match survives.
pub(crate) fn apply(
    text: &str,
    matches: &[&Match],
    label_of: impl Fn(&Match) -> Arc<str>,
    r: &mut Redactor,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0usize;
    let mut i = 0;
    while i < matches.len() {
        let mut best = matches[i];
        let (start, mut end) = (best.start.max(last), best.end);
        let mut j = i + 1;
        while j < matches.len() && matches[j].start < end {
            end = end.max(matches[j].end);
            if matches[j].rank > best.rank {
                best = matches[j];
            }
            j += 1;
        }
        i = j;
        if end <= start {
            continue;
        }
        out.push_str(&text[last..start]);
        out.push_str(&r.placeholder(&label_of(best), &text[start..end]));
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::policy::GuardAction;

    #[test]
    fn same_value_same_number_per_label() {
        let mut r = Redactor::new();
        let email: Arc<str> = Arc::from("EMAIL");
        let key: Arc<str> = Arc::from("KEY");
        assert_eq!(r.placeholder(&email, "a@x.io"), "[EMAIL_1]");
        assert_eq!(r.placeholder(&email, "b@x.io"), "[EMAIL_2]");
        assert_eq!(r.placeholder(&email, "a@x.io"), "[EMAIL_1]");
        assert_eq!(r.placeholder(&key, "a@x.io"), "[KEY_1]");
        assert_eq!(
            r.placeholder(&email, "a@x\u{200B}.io"),
            "[EMAIL_1]",
            "invisible chars ignored"
        );
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn debug_never_shows_values() {
        let mut r = Redactor::new();
        r.placeholder(&Arc::from("K"), "hunter2-secret");
        let d = format!("{r:?}");
        assert!(!d.contains("hunter2"), "{d}");
    }

    #[test]
    fn overlaps_merge() {
        let mk = |s, e, rank| Match {
            detector: Arc::from("d"),
            action: GuardAction::Redact,
            start: s,
            end: e,
            rule: 0,
            rank,
        };
        let a = mk(0, 5, 1);
        let b = mk(3, 8, 2);
        let mut r = Redactor::new();
        let out = apply(
            "abcdefghij",
            &[&a, &b],
            |m| Arc::from(format!("R{}", m.rank)),
            &mut r,
        );
        assert_eq!(out, "[R2_1]ij");
    }
}
