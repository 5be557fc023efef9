//! Errors from building a [`crate::Guard`]: bad policy rules and bad gitleaks
//! files.
//!
//! Every problem names the rule it belongs to and says why. Messages must
//! never quote a matched value or a user pattern (a pattern may embed a
//! literal secret).

use std::fmt;

/// One problem with one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    /// Rule id (or `custom[3]` when the id itself is missing).
    pub rule: String,
    pub reason: String,
}

impl RuleProblem {
    pub(crate) fn new(rule: &str, reason: impl Into<String>) -> Self {
        Self {
            rule: rule.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {:?}: {}", self.rule, self.reason)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// Policy custom rules or gitleaks rules that cannot be used; all of them.
    #[error("invalid guardrail rules: {}", join(.0))]
    InvalidRules(Vec<RuleProblem>),
    /// The gitleaks file is not valid TOML or has the wrong shape.
    #[error("gitleaks rule file is not valid: {0}")]
    GitleaksFile(String),
}

fn join(problems: &[RuleProblem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl GuardError {
    /// The individual rule problems (empty for file-level errors).
    pub fn problems(&self) -> &[RuleProblem] {
        match self {
            GuardError::InvalidRules(p) => p,
            GuardError::GitleaksFile(_) => &[],
        }
    }
}
