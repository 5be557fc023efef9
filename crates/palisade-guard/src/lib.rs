//! Guardrails: find secrets and personal data in prompts (and responses),
//! then log, redact or block before a prompt leaves the device.
//!
//! A [`Guard`] is compiled once per policy version (built-in detectors,
//! policy custom rules, optionally a gitleaks rule file) and is immutable,
//! `Send + Sync` and cheap to share in an `Arc`. The proxy calls
//! [`Guard::inspect_request`] with the raw provider body and gets a
//! [`Verdict`]; it calls [`Guard::inspect_response_text`] with text its
//! provider parser extracted from a response.
//!
//! This crate must never put a matched value into a [`Finding`], an error,
//! a log line or `Debug` output, and never does I/O.
//!
//! [`Finding`]: palisade_core::Finding

mod error;
mod gitleaks;
mod inspect;
mod json;
mod normalize;
mod redact;
mod rules;
mod scan;
mod stream;
mod validate;
mod window;

pub use error::{GuardError, RuleProblem};
pub use inspect::{Verdict, VerdictAction};
pub use redact::Redactor;
pub use rules::{builtin_ids, MAX_PATTERN_LEN, USER_REGEX_SIZE_LIMIT};
pub use scan::{Match, MAX_MATCHES_PER_RULE};
pub use stream::{ResponseStream, TAIL_BYTES};
pub use validate::{iban_mod97, luhn_valid, shannon_entropy};

use palisade_core::policy::Guardrails;
use palisade_core::Finding;
use std::fmt;
use std::sync::Arc;

/// Compiled guardrails for one policy version.
pub struct Guard {
    engine: scan::Engine,
    enabled: bool,
    scan_responses: bool,
}

impl Guard {
    /// Built-in detectors plus the policy's custom rules.
    pub fn new(cfg: &Guardrails) -> Result<Guard, GuardError> {
        Self::build(cfg, None)
    }

    /// Built-ins, policy custom rules, and a gitleaks-format TOML rule file.
    pub fn with_gitleaks_toml(cfg: &Guardrails, toml_text: &str) -> Result<Guard, GuardError> {
        Self::build(cfg, Some(toml_text))
    }

    fn build(cfg: &Guardrails, gitleaks_toml: Option<&str>) -> Result<Guard, GuardError> {
        let mut all = rules::builtins(cfg);
        let (custom, problems) = rules::compile_customs(cfg);
        if !problems.is_empty() {
            return Err(GuardError::InvalidRules(problems));
        }
        all.extend(custom);
        let mut global_allow = Vec::new();
        if let Some(text) = gitleaks_toml {
            let taken: Vec<&str> = all.iter().map(|r| &*r.id).collect();
            let loaded = gitleaks::load(cfg, text, &taken)?;
            all.extend(loaded.rules);
            global_allow = loaded.global_allow;
        }
        for id in cfg.actions.keys() {
            if !all.iter().any(|r| *r.id == **id) {
                tracing::warn!(detector = %id, "Guardrail action names no known detector; ignored");
            }
        }
        Ok(Guard {
            engine: scan::Engine::new(all, global_allow),
            enabled: cfg.enabled,
            scan_responses: cfg.scan_responses,
        })
    }

    /// Ids of every detector this guard runs, built-in first.
    pub fn detector_ids(&self) -> Vec<&str> {
        self.engine.rules.iter().map(|r| &*r.id).collect()
    }

    /// Scan plain text: detector, action and byte range of each match, sorted
    /// by position. Log/block rules report at most [`MAX_MATCHES_PER_RULE`]
    /// matches per text. Empty when guardrails are disabled.
    pub fn scan(&self, text: &str) -> Vec<Match> {
        if !self.enabled {
            return Vec::new();
        }
        self.engine.scan(text).matches
    }

    /// Replace every match (whatever its action) by a typed placeholder such
    /// as `[EMAIL_1]`; the same value gets the same number within one
    /// [`Redactor`]. This is what a record keeps in `redacted` capture mode.
    pub fn redact(&self, text: &str, r: &mut Redactor) -> (String, Vec<Match>) {
        let matches = self.scan(text);
        let refs: Vec<&Match> = matches.iter().collect();
        let out = redact::apply(text, &refs, |m| self.engine.rules[m.rule].label.clone(), r);
        (out, matches)
    }

    /// Inspect a provider request body for `endpoint` (`chat.completions`,
    /// `responses`, `embeddings`, `messages`, `generateContent`,
    /// `streamGenerateContent`, `mcp`; anything else scans every JSON string
    /// and never rewrites: a redact finding there blocks instead).
    ///
    /// The strongest action wins: Block > Redact > Log. A redacted body has
    /// only the affected content strings rewritten, every other byte kept,
    /// and is re-parsed before it is returned. Binary and non-JSON bodies are
    /// skipped (`skipped` says why) and allowed.
    pub fn inspect_request(&self, endpoint: &str, body: &[u8]) -> Verdict {
        inspect::inspect_request(self, endpoint, body)
    }

    /// Inspect response text already extracted by the provider parser:
    /// findings (location `response`), and the blocking rule if a rule whose
    /// action is `block` matched. Redact rules are recorded as `log` here (a
    /// response in flight is not rewritten). Empty when `scan_responses` is off.
    pub fn inspect_response_text(&self, text: &str) -> (Vec<Finding>, Option<String>) {
        inspect::inspect_response_text(self, text)
    }

    /// Scan a streamed response incrementally: push text deltas as they
    /// pass, learn of a block rule as soon as it matches, and get the same
    /// findings as [`Guard::inspect_response_text`] on the whole text at
    /// [`ResponseStream::finish`]. Memory stays bounded.
    pub fn response_stream(self: &Arc<Self>) -> ResponseStream {
        ResponseStream::new(Arc::clone(self))
    }

    /// Inspect an MCP JSON-RPC response body (one message or a batch; for
    /// SSE, call once per `data:` payload): `result.content[].text`,
    /// embedded resource text and `result.structuredContent` strings.
    /// Findings carry the path; non-JSON bodies give no findings.
    pub fn inspect_mcp_response(&self, body: &[u8]) -> (Vec<Finding>, Option<String>) {
        inspect::inspect_mcp_response(self, body)
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("enabled", &self.enabled)
            .field("scan_responses", &self.scan_responses)
            .field("detectors", &self.detector_ids())
            .finish()
    }
}

/// Check a policy's custom rules: every rule whose regex does not compile,
/// is too large, can match the empty string or never matches, or that has
/// neither regex nor keywords. All problems are reported at once.
pub fn validate_custom_rules(cfg: &Guardrails) -> Result<(), GuardError> {
    let (_, problems) = rules::compile_customs(cfg);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(GuardError::InvalidRules(problems))
    }
}

#[cfg(test)]
mod tests;
