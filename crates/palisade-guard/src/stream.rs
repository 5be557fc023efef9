//! Incremental scanning of a streamed response: text deltas arrive chunk by
//! chunk (SSE), findings are recorded while the stream passes, and a block
//! rule is reported as soon as it matches.
//!
//! The scanner keeps a bounded tail of recent text so a secret split across
//! chunks is still seen, scans only when enough new text has arrived, and
//! holds back matches that end near the end of the buffer (they may still
//! grow). Memory is bounded by [`TAIL_BYTES`] plus one pending batch; it
//! must never keep the whole response, and its `Debug` never shows text.

use crate::inspect::Findings;
use crate::Guard;
use palisade_core::policy::GuardAction;
use palisade_core::record::{Finding, FindingLocation};
use std::fmt;
use std::sync::Arc;

/// Already-scanned text kept so matches spanning chunks are found.
pub const TAIL_BYTES: usize = 2048;
/// Scan once this much new text is pending.
const BATCH_BYTES: usize = 512;
/// Matches ending this close to the buffer's end wait for more text.
const HOLD_BYTES: usize = 64;

/// Scans one streamed response. Create with [`Guard::response_stream`].
pub struct ResponseStream {
    guard: Arc<Guard>,
    buf: String,
    /// Absolute offset (in the whole response) of `buf[0]`.
    base: usize,
    /// Matches ending at or before this absolute offset were counted.
    counted_upto: usize,
    pending: usize,
    findings: Findings,
    block: Option<String>,
}

impl ResponseStream {
    pub(crate) fn new(guard: Arc<Guard>) -> Self {
        Self {
            guard,
            buf: String::new(),
            base: 0,
            counted_upto: 0,
            pending: 0,
            findings: Findings::default(),
            block: None,
        }
    }

    fn active(&self) -> bool {
        self.guard.enabled && self.guard.scan_responses
    }

    /// Feed the next text delta. Returns the blocking rule once a block rule
    /// has matched (and on every later call).
    pub fn push(&mut self, delta: &str) -> Option<&str> {
        if !self.active() || delta.is_empty() {
            return self.block.as_deref();
        }
        self.buf.push_str(delta);
        self.pending += delta.len();
        if self.pending >= BATCH_BYTES {
            self.scan(false);
        }
        self.block.as_deref()
    }

    /// End of stream: scan what is left; all findings and the blocking rule.
    pub fn finish(mut self) -> (Vec<Finding>, Option<String>) {
        if self.active() && !self.buf.is_empty() {
            self.scan(true);
        }
        (self.findings.list, self.block)
    }

    fn scan(&mut self, last: bool) {
        let out = self.guard.engine.scan(&self.buf);
        let limit = if last {
            self.buf.len()
        } else {
            self.buf.len().saturating_sub(HOLD_BYTES)
        };
        for m in &out.matches {
            let abs_end = self.base + m.end;
            if abs_end <= self.counted_upto || m.end > limit {
                continue;
            }
            let action = if m.action == GuardAction::Block {
                GuardAction::Block
            } else {
                GuardAction::Log
            };
            self.findings.add(
                &m.detector,
                action.as_str(),
                FindingLocation::Response,
                None,
                1,
            );
            if m.action == GuardAction::Block && self.block.is_none() {
                tracing::info!(rule = %m.detector, "Guardrail blocks streamed response");
                self.block = Some(m.detector.to_string());
            }
        }
        self.counted_upto = self.counted_upto.max(self.base + limit);
        self.pending = 0;
        // Keep a tail: at least TAIL_BYTES before the counted boundary.
        let keep_from = limit.saturating_sub(TAIL_BYTES);
        let mut cut = keep_from;
        while cut > 0 && !self.buf.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut > 0 {
            self.buf.drain(..cut);
            self.base += cut;
        }
    }
}

impl fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseStream")
            .field("buffered_bytes", &self.buf.len())
            .field("scanned_upto", &self.counted_upto)
            .field("block", &self.block)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::policy::Guardrails;

    fn guard(actions: &[(&str, GuardAction)]) -> Arc<Guard> {
        Arc::new(
            Guard::new(&Guardrails {
                actions: actions.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                ..Guardrails::default()
            })
            .unwrap(),
        )
    }

    fn feed(g: &Arc<Guard>, text: &str, chunk: usize) -> (Vec<Finding>, Option<String>) {
        let mut s = g.response_stream();
        let mut rest = text;
        while !rest.is_empty() {
            let mut n = chunk.min(rest.len());
            while !rest.is_char_boundary(n) {
                n += 1;
            }
            s.push(&rest[..n]);
            rest = &rest[n..];
        }
        s.finish()
    }

    #[test]
    fn chunked_stream_counts_like_a_whole_scan() {
        let g = guard(&[]);
        let filler = "lorem ipsum dolor sit amet, ".repeat(40);
        let text = format!(
            "{filler}mail a@acme.io {filler} key AKIAZ5ZFKKIBJ5J6WJIB and again b@acme.io {filler} café c@acme.io"
        );
        let (whole, _) = g.inspect_response_text(&text);
        for chunk in [1, 3, 7, 64, 500, 5000] {
            let (f, block) = feed(&g, &text, chunk);
            assert_eq!(f, whole, "chunk {chunk}");
            assert_eq!(block, None);
        }
    }

    #[test]
    fn block_is_reported_while_streaming() {
        let g = guard(&[("aws_access_key", GuardAction::Block)]);
        let mut s = g.response_stream();
        assert_eq!(s.push("here is the key AKIAZ5ZF"), None);
        s.push("KKIBJ5J6WJIB");
        let mut blocked = None;
        for _ in 0..20 {
            if let Some(rule) = s.push(" and some more text to fill the batch and hold window.") {
                blocked = Some(rule.to_string());
                break;
            }
        }
        assert_eq!(blocked.as_deref(), Some("aws_access_key"));
        let (f, block) = s.finish();
        assert_eq!(block.as_deref(), Some("aws_access_key"));
        assert_eq!(f[0].count, 1);
    }

    #[test]
    fn memory_stays_bounded_and_debug_hides_text() {
        let g = guard(&[]);
        let mut s = g.response_stream();
        for _ in 0..10_000 {
            s.push("some streamed words with secret-ish hunter2 ");
        }
        assert!(
            s.buf.len() <= TAIL_BYTES + BATCH_BYTES + HOLD_BYTES + 64,
            "{}",
            s.buf.len()
        );
        let d = format!("{s:?}");
        assert!(!d.contains("hunter2"), "{d}");
    }
}
