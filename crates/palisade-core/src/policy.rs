//! The policy document: which hosts are AI providers (and are intercepted),
//! app and MCP decisions, guardrails, capture mode and budgets.
//!
//! Policy is data plus pure evaluation. It is versioned by the server and
//! evaluated locally on the device, so evaluation must never block or fail at
//! request time: everything is checked once in [`Policy::validate`].

use crate::host::HostPattern;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An AI provider destination: requests to matching hosts are intercepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiHost {
    pub host: HostPattern,
    /// Provider id: `openai`, `anthropic`, `gemini`, `azure-openai`, ...
    pub provider: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
    #[default]
    Pending,
}

/// What `pending` means on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PendingMode {
    #[default]
    Allow,
    Block,
}

/// How much of prompts and responses a record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    #[default]
    Full,
    Redacted,
    Metadata,
}

/// A decision about one app or MCP server, keyed by catalog id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRule {
    /// App catalog id / executable name, or MCP server fingerprint.
    pub id: String,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ItemPolicy {
    pub pending_mode: PendingMode,
    pub rules: Vec<ItemRule>,
}

impl ItemPolicy {
    /// The decision for `id`, `Pending` when no rule names it.
    pub fn decision(&self, id: &str) -> Decision {
        self.rules
            .iter()
            .find(|r| r.id.eq_ignore_ascii_case(id))
            .map(|r| r.decision)
            .unwrap_or(Decision::Pending)
    }

    /// Whether any item could be refused (a deny rule, or pending means block).
    /// When false, enforcement needs no identity lookup at all.
    pub fn can_refuse(&self) -> bool {
        self.pending_mode == PendingMode::Block
            || self.rules.iter().any(|r| r.decision == Decision::Deny)
    }

    /// Whether `id` may be used now, folding pending through the pending mode.
    pub fn allows(&self, id: &str) -> bool {
        match self.decision(id) {
            Decision::Allow => true,
            Decision::Deny => false,
            Decision::Pending => self.pending_mode == PendingMode::Allow,
        }
    }
}

/// Guardrail action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    #[default]
    Log,
    Redact,
    Block,
}

impl GuardAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            GuardAction::Log => "log",
            GuardAction::Redact => "redact",
            GuardAction::Block => "block",
        }
    }
}

/// A custom detector defined in policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomRule {
    pub id: String,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub action: GuardAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Guardrails {
    pub enabled: bool,
    /// Action for built-in detectors not listed in `actions`.
    pub default_action: GuardAction,
    /// Per-detector action, keyed by detector id (e.g. `aws_access_key`, `email`).
    pub actions: BTreeMap<String, GuardAction>,
    pub custom: Vec<CustomRule>,
    /// Scan responses too (findings recorded; blocking only if a rule blocks).
    pub scan_responses: bool,
}

impl Default for Guardrails {
    fn default() -> Self {
        Self {
            enabled: true,
            default_action: GuardAction::Log,
            actions: BTreeMap::new(),
            custom: Vec::new(),
            scan_responses: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// `user:<email>`, `device:<id>`, `app:<id>` or `*`.
    pub scope: String,
    pub monthly_usd: f64,
}

/// The whole policy document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Assigned by the server; 0 for the built-in default.
    pub version: u64,
    pub ai_hosts: Vec<AiHost>,
    /// Hosts that are never intercepted, even if an `ai_hosts` entry matches.
    pub never_intercept: Vec<HostPattern>,
    pub apps: ItemPolicy,
    pub mcp: ItemPolicy,
    pub guardrails: Guardrails,
    pub capture: CaptureMode,
    pub budgets: Vec<Budget>,
}

/// Every problem found in a policy, reported at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid policy: {}", .problems.join("; "))]
pub struct PolicyError {
    pub problems: Vec<String>,
}

/// Default AI provider hosts.
pub const DEFAULT_AI_HOSTS: &[(&str, &str)] = &[
    ("api.openai.com", "openai"),
    ("*.openai.azure.com", "azure-openai"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gemini"),
    ("api.mistral.ai", "mistral"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
    ("api.groq.com", "groq"),
    ("api.x.ai", "xai"),
    ("api.deepseek.com", "deepseek"),
    ("openrouter.ai", "openrouter"),
    ("api.githubcopilot.com", "copilot"),
    ("*.githubcopilot.com", "copilot"),
    ("copilot-proxy.githubusercontent.com", "copilot"),
];

impl Default for Policy {
    fn default() -> Self {
        Self {
            version: 0,
            ai_hosts: DEFAULT_AI_HOSTS
                .iter()
                .map(|(h, p)| AiHost {
                    host: HostPattern::parse(h).expect("default hosts are valid"),
                    provider: (*p).to_string(),
                })
                .collect(),
            never_intercept: Vec::new(),
            apps: ItemPolicy::default(),
            mcp: ItemPolicy::default(),
            guardrails: Guardrails::default(),
            capture: CaptureMode::default(),
            budgets: Vec::new(),
        }
    }
}

impl Policy {
    /// Parse a policy from JSON and validate it.
    pub fn from_json(s: &str) -> Result<Self, PolicyError> {
        let p: Policy = serde_json::from_str(s).map_err(|e| PolicyError {
            problems: vec![format!("not a valid policy document: {e}")],
        })?;
        p.validate()?;
        Ok(p)
    }

    /// Check everything that could go wrong at evaluation time; report all problems.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut problems = Vec::new();
        for (i, h) in self.ai_hosts.iter().enumerate() {
            if h.provider.trim().is_empty() {
                problems.push(format!("ai_hosts[{i}] ({}): provider is empty", h.host));
            }
        }
        for (section, items) in [("apps", &self.apps), ("mcp", &self.mcp)] {
            let mut seen = std::collections::HashSet::new();
            for (i, r) in items.rules.iter().enumerate() {
                if r.id.trim().is_empty() {
                    problems.push(format!("{section}.rules[{i}]: id is empty"));
                } else if !seen.insert(r.id.to_ascii_lowercase()) {
                    problems.push(format!("{section}.rules[{i}]: duplicate id {:?}", r.id));
                }
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, c) in self.guardrails.custom.iter().enumerate() {
            if c.id.trim().is_empty() {
                problems.push(format!("guardrails.custom[{i}]: id is empty"));
            } else if !ids.insert(c.id.clone()) {
                problems.push(format!("guardrails.custom[{i}]: duplicate id {:?}", c.id));
            }
            if c.regex.is_none() && c.keywords.is_empty() {
                problems.push(format!(
                    "guardrails.custom[{i}] ({}): needs a regex or keywords",
                    c.id
                ));
            }
        }
        for (i, b) in self.budgets.iter().enumerate() {
            if !(b.monthly_usd.is_finite() && b.monthly_usd >= 0.0) {
                problems.push(format!("budgets[{i}]: monthly_usd must be a non-negative number"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PolicyError { problems })
        }
    }

    /// The provider id if `host` is an AI destination that must be intercepted.
    /// `never_intercept` wins over `ai_hosts`.
    pub fn ai_provider_for(&self, host: &str) -> Option<&str> {
        if self.never_intercept.iter().any(|p| p.matches(host)) {
            return None;
        }
        self.ai_hosts
            .iter()
            .find(|h| h.host.matches(host))
            .map(|h| h.provider.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_intercepts_known_providers_only() {
        let p = Policy::default();
        assert_eq!(p.ai_provider_for("api.openai.com"), Some("openai"));
        assert_eq!(p.ai_provider_for("acme.openai.azure.com"), Some("azure-openai"));
        assert_eq!(p.ai_provider_for("API.ANTHROPIC.COM"), Some("anthropic"));
        assert_eq!(p.ai_provider_for("example.com"), None);
        assert_eq!(p.ai_provider_for("openai.com"), None);
        p.validate().unwrap();
    }

    #[test]
    fn never_intercept_wins() {
        let mut p = Policy::default();
        p.never_intercept.push(HostPattern::parse("api.openai.com").unwrap());
        assert_eq!(p.ai_provider_for("api.openai.com"), None);
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut p = Policy::default();
        p.apps.rules.push(ItemRule { id: "".into(), decision: Decision::Deny, note: None });
        p.guardrails.custom.push(CustomRule {
            id: "x".into(),
            regex: None,
            keywords: vec![],
            action: GuardAction::Block,
        });
        p.budgets.push(Budget { scope: "*".into(), monthly_usd: -1.0 });
        let e = p.validate().unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Policy::from_json(r#"{"ai_hostz": []}"#).unwrap_err();
        assert!(e.to_string().contains("ai_hostz"), "{e}");
    }

    #[test]
    fn pending_mode_folds() {
        let mut items = ItemPolicy::default();
        assert!(items.allows("cursor"));
        items.pending_mode = PendingMode::Block;
        assert!(!items.allows("cursor"));
        items.rules.push(ItemRule { id: "Cursor".into(), decision: Decision::Allow, note: None });
        assert!(items.allows("cursor"));
    }
}
