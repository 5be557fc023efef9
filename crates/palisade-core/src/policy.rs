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
    /// Scan responses too (findings recorded; blocking only if a response
    /// rule blocks).
    pub scan_responses: bool,
    /// Action on responses for detectors not listed in `response_actions`.
    /// `log` (the default) records findings while the response passes;
    /// `block` holds it back. Request actions never apply to responses.
    pub response_default_action: GuardAction,
    /// Per-detector action on responses (built-in, custom or gitleaks id).
    /// Only `log` and `block`: a response in flight is never rewritten.
    pub response_actions: BTreeMap<String, GuardAction>,
}

impl Default for Guardrails {
    fn default() -> Self {
        Self {
            enabled: true,
            default_action: GuardAction::Log,
            actions: BTreeMap::new(),
            custom: Vec::new(),
            scan_responses: true,
            response_default_action: GuardAction::Log,
            response_actions: BTreeMap::new(),
        }
    }
}

impl Guardrails {
    /// The action a response match of `detector` gets.
    pub fn response_action_for(&self, detector: &str) -> GuardAction {
        self.response_actions
            .get(detector)
            .copied()
            .unwrap_or(self.response_default_action)
    }

    /// Whether any response could be held back. When false the proxy
    /// forwards responses exactly as before (no holding, no added latency)
    /// and only records findings.
    pub fn response_can_block(&self) -> bool {
        self.enabled
            && self.scan_responses
            && (self.response_default_action == GuardAction::Block
                || self
                    .response_actions
                    .values()
                    .any(|a| *a == GuardAction::Block))
    }

    /// The same detectors with response actions in place of request
    /// actions (custom rules included): what a response scanner compiles.
    pub fn for_responses(&self) -> Guardrails {
        let mut g = self.clone();
        g.default_action = self.response_default_action;
        g.actions = self.response_actions.clone();
        for c in &mut g.custom {
            c.action = self.response_action_for(&c.id);
        }
        g
    }

    fn problems(&self, problems: &mut Vec<String>) {
        let mut ids = std::collections::HashSet::new();
        for (i, c) in self.custom.iter().enumerate() {
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
        const NO_REWRITE: &str =
            "a response in flight is never rewritten, so only log or block apply to responses";
        if self.response_default_action == GuardAction::Redact {
            problems.push(format!(
                "guardrails.response_default_action: redact is not possible: {NO_REWRITE}"
            ));
        }
        for (id, a) in &self.response_actions {
            if id.trim().is_empty() {
                problems.push("guardrails.response_actions: a detector id is empty".to_string());
            } else if *a == GuardAction::Redact {
                problems.push(format!(
                    "guardrails.response_actions[{id:?}]: redact is not possible: {NO_REWRITE}"
                ));
            }
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
    /// Capture mode for one user, device or team, overriding `capture`.
    /// The most specific match wins: user > device > team > `capture`.
    pub capture_overrides: Vec<CaptureOverride>,
    pub budgets: Vec<Budget>,
}

/// `capture` for everything `scope` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureOverride {
    /// `user:<email>`, `device:<id>` or `team:<name>`.
    pub scope: String,
    pub capture: CaptureMode,
}

/// A parsed [`CaptureOverride::scope`]. Emails compare case-insensitively
/// (they are stored lowercased); device ids and team names exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CaptureScope {
    User(String),
    Device(String),
    Team(String),
}

impl CaptureScope {
    /// Parse `user:<email>`, `device:<id>` or `team:<name>`; the error says why not.
    pub fn parse(s: &str) -> Result<CaptureScope, String> {
        let Some((kind, value)) = s.split_once(':') else {
            return Err("scope must be user:<email>, device:<id> or team:<name>".into());
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("scope {kind:?} names nobody (empty value)"));
        }
        match kind.trim() {
            "user" if !value.contains('@') => Err("user scope must be an email address".into()),
            "user" => Ok(CaptureScope::User(value.to_lowercase())),
            "device" => Ok(CaptureScope::Device(value.to_string())),
            "team" => Ok(CaptureScope::Team(value.to_string())),
            other => Err(format!(
                "unknown scope kind {other:?}: use user:<email>, device:<id> or team:<name>"
            )),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            CaptureScope::User(_) => 3,
            CaptureScope::Device(_) => 2,
            CaptureScope::Team(_) => 1,
        }
    }
}

/// Who a record is about, for picking a capture mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureSubject<'a> {
    pub user_email: Option<&'a str>,
    pub device_id: Option<&'a str>,
    pub team: Option<&'a str>,
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
            capture_overrides: Vec::new(),
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
        self.guardrails.problems(&mut problems);
        let mut scopes = std::collections::HashSet::new();
        for (i, o) in self.capture_overrides.iter().enumerate() {
            match CaptureScope::parse(&o.scope) {
                Err(why) => problems.push(format!("capture_overrides[{i}] ({:?}): {why}", o.scope)),
                Ok(s) => {
                    if !scopes.insert(s) {
                        problems.push(format!(
                            "capture_overrides[{i}]: duplicate scope {:?}",
                            o.scope
                        ));
                    }
                }
            }
        }
        for (i, b) in self.budgets.iter().enumerate() {
            if !(b.monthly_usd.is_finite() && b.monthly_usd >= 0.0) {
                problems.push(format!(
                    "budgets[{i}]: monthly_usd must be a non-negative number"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PolicyError { problems })
        }
    }

    /// The capture mode for `who`: the most specific matching override
    /// (user > device > team), else `capture`. Scopes that do not parse are
    /// skipped (validation reports them).
    pub fn capture_for(&self, who: CaptureSubject<'_>) -> CaptureMode {
        let email = who.user_email.map(str::to_lowercase);
        let mut best: Option<(u8, CaptureMode)> = None;
        for o in &self.capture_overrides {
            let Ok(scope) = CaptureScope::parse(&o.scope) else {
                continue;
            };
            let hit = match &scope {
                CaptureScope::User(e) => email.as_deref() == Some(e.as_str()),
                CaptureScope::Device(d) => who.device_id == Some(d.as_str()),
                CaptureScope::Team(t) => who.team == Some(t.as_str()),
            };
            if hit && best.is_none_or(|(r, _)| scope.rank() > r) {
                best = Some((scope.rank(), o.capture));
            }
        }
        best.map(|(_, c)| c).unwrap_or(self.capture)
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
        assert_eq!(
            p.ai_provider_for("acme.openai.azure.com"),
            Some("azure-openai")
        );
        assert_eq!(p.ai_provider_for("API.ANTHROPIC.COM"), Some("anthropic"));
        assert_eq!(p.ai_provider_for("example.com"), None);
        assert_eq!(p.ai_provider_for("openai.com"), None);
        p.validate().unwrap();
    }

    #[test]
    fn never_intercept_wins() {
        let mut p = Policy::default();
        p.never_intercept
            .push(HostPattern::parse("api.openai.com").unwrap());
        assert_eq!(p.ai_provider_for("api.openai.com"), None);
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut p = Policy::default();
        p.apps.rules.push(ItemRule {
            id: "".into(),
            decision: Decision::Deny,
            note: None,
        });
        p.guardrails.custom.push(CustomRule {
            id: "x".into(),
            regex: None,
            keywords: vec![],
            action: GuardAction::Block,
        });
        p.budgets.push(Budget {
            scope: "*".into(),
            monthly_usd: -1.0,
        });
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
        items.rules.push(ItemRule {
            id: "Cursor".into(),
            decision: Decision::Allow,
            note: None,
        });
        assert!(items.allows("cursor"));
    }

    #[test]
    fn response_rules_default_to_log_and_never_block() {
        let g = Guardrails::default();
        assert!(!g.response_can_block());
        assert_eq!(g.response_action_for("aws_access_key"), GuardAction::Log);
        // A policy that blocks requests does not block responses by itself.
        let p = Policy::from_json(r#"{"guardrails": {"default_action": "block"}}"#).unwrap();
        assert!(!p.guardrails.response_can_block());
    }

    #[test]
    fn response_rules_can_block_per_detector_or_by_default() {
        let p = Policy::from_json(
            r#"{"guardrails": {"response_actions": {"aws_access_key": "block"},
                "custom": [{"id": "acme", "keywords": ["acme-secret"], "action": "redact"}]}}"#,
        )
        .unwrap();
        let g = &p.guardrails;
        assert!(g.response_can_block());
        assert_eq!(g.response_action_for("aws_access_key"), GuardAction::Block);
        assert_eq!(g.response_action_for("email"), GuardAction::Log);
        let r = g.for_responses();
        assert_eq!(r.default_action, GuardAction::Log);
        assert_eq!(r.actions.get("aws_access_key"), Some(&GuardAction::Block));
        // The custom rule's request action (redact) does not leak into responses.
        assert_eq!(r.custom[0].action, GuardAction::Log);

        let mut g = Guardrails {
            response_default_action: GuardAction::Block,
            ..Guardrails::default()
        };
        assert!(g.response_can_block());
        g.scan_responses = false;
        assert!(
            !g.response_can_block(),
            "nothing is scanned, nothing can block"
        );
        g.scan_responses = true;
        g.enabled = false;
        assert!(!g.response_can_block());
    }

    #[test]
    fn redact_for_responses_is_rejected_with_the_reason() {
        let e = Policy::from_json(
            r#"{"guardrails": {"response_default_action": "redact", "response_actions": {"email": "redact", " ": "block"}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
        assert!(
            e.problems[0].contains("response_default_action")
                && e.problems[0].contains("never rewritten"),
            "{e}"
        );
        assert!(e.problems.iter().any(|p| p.contains("id is empty")), "{e}");
        assert!(e.problems.iter().any(|p| p.contains("\"email\"")), "{e}");
        let e = Policy::from_json(r#"{"guardrails": {"response_default_action": "hold"}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("hold"), "{e}");
    }

    #[test]
    fn capture_follows_the_most_specific_override() {
        let p = Policy::from_json(
            r#"{"capture": "full", "capture_overrides": [
                {"scope": "team:legal", "capture": "metadata"},
                {"scope": "device:dev-7", "capture": "redacted"},
                {"scope": "user:Jane@Example.com", "capture": "full"}
            ]}"#,
        )
        .unwrap();
        let who = |u: Option<&'static str>, d: Option<&'static str>, t: Option<&'static str>| {
            CaptureSubject {
                user_email: u,
                device_id: d,
                team: t,
            }
        };
        assert_eq!(p.capture_for(who(None, None, None)), CaptureMode::Full);
        assert_eq!(
            p.capture_for(who(None, Some("dev-1"), Some("legal"))),
            CaptureMode::Metadata
        );
        assert_eq!(
            p.capture_for(who(None, Some("dev-1"), Some("Legal"))),
            CaptureMode::Full,
            "teams match exactly"
        );
        assert_eq!(
            p.capture_for(who(None, Some("dev-7"), Some("legal"))),
            CaptureMode::Redacted,
            "device beats team"
        );
        assert_eq!(
            p.capture_for(who(Some("jane@example.com"), Some("dev-7"), Some("legal"))),
            CaptureMode::Full,
            "user beats device and team, emails compare case-insensitively"
        );
        assert_eq!(
            p.capture_for(who(Some("bob@example.com"), None, Some("legal"))),
            CaptureMode::Metadata
        );
        // Order in the list does not matter, only specificity.
        let mut q = p.clone();
        q.capture_overrides.reverse();
        assert_eq!(
            q.capture_for(who(None, Some("dev-7"), Some("legal"))),
            CaptureMode::Redacted
        );
    }

    #[test]
    fn bad_capture_overrides_are_all_reported() {
        let e = Policy::from_json(
            r#"{"capture_overrides": [
                {"scope": "team:", "capture": "full"},
                {"scope": "group:x", "capture": "full"},
                {"scope": "user:not-an-email", "capture": "full"},
                {"scope": "nocolon", "capture": "full"},
                {"scope": "team:a", "capture": "full"},
                {"scope": "team:a", "capture": "metadata"}
            ]}"#,
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 5, "{e}");
        assert!(
            e.problems[0].contains("capture_overrides[0]") && e.problems[0].contains("empty"),
            "{e}"
        );
        assert!(e.problems[1].contains("unknown scope kind"), "{e}");
        assert!(e.problems[2].contains("email"), "{e}");
        assert!(e.problems[3].contains("user:<email>"), "{e}");
        assert!(e.problems[4].contains("duplicate scope"), "{e}");
        let e = Policy::from_json(
            r#"{"capture_overrides": [{"scope": "team:a", "capture": "everything"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("everything"), "{e}");
        let e = Policy::from_json(
            r#"{"capture_overrides": [{"scope": "team:a", "capture": "full", "extra": 1}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("extra"), "{e}");
    }
}
