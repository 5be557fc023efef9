//! Detector rules: the compiled form shared by built-in, gitleaks and policy
//! rules, the built-in rule table, and compilation of user patterns with
//! size limits.
//!
//! A rule is immutable once compiled. User patterns (policy custom rules and
//! gitleaks files) are checked here: size limits, no empty matches, RE2
//! syntax differences. Error messages name the rule and the reason but must
//! never echo a matched value.

use crate::error::RuleProblem;
use crate::validate::{self, Check};
use palisade_core::policy::{CustomRule, GuardAction, Guardrails};
use regex::{Regex, RegexBuilder};
use std::sync::Arc;

/// Longest user pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 4096;
/// Compiled-program size limit for user patterns.
pub const USER_REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Lazy-DFA cache limit per user pattern.
pub const USER_DFA_SIZE_LIMIT: usize = 2 << 20;
/// Compiled-program size limit for built-in patterns (they are known-good).
const BUILTIN_REGEX_SIZE_LIMIT: usize = 8 << 20;

/// What an allowlist regex is matched against (gitleaks `regexTarget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllowTarget {
    Secret,
    Match,
    Line,
}

/// A gitleaks-style allowlist: a finding is dropped when it matches.
#[derive(Clone)]
pub(crate) struct Allowlist {
    pub regexes: Vec<Regex>,
    /// Lower-cased; a secret containing one is allowed.
    pub stopwords: Vec<String>,
    pub target: AllowTarget,
    /// `condition = "AND"`: every kind of check present must hit.
    pub all: bool,
}

impl Allowlist {
    /// Does this allowlist let the candidate through (i.e. suppress it)?
    pub(crate) fn allows(&self, secret: &str, whole: &str, line: &str) -> bool {
        let target = match self.target {
            AllowTarget::Secret => secret,
            AllowTarget::Match => whole,
            AllowTarget::Line => line,
        };
        let mut checks = Vec::with_capacity(2);
        if !self.regexes.is_empty() {
            checks.push(self.regexes.iter().any(|r| r.is_match(target)));
        }
        if !self.stopwords.is_empty() {
            let lower = secret.to_ascii_lowercase();
            checks.push(self.stopwords.iter().any(|w| lower.contains(w.as_str())));
        }
        if checks.is_empty() {
            return false;
        }
        if self.all {
            checks.iter().all(|c| *c)
        } else {
            checks.iter().any(|c| *c)
        }
    }
}

/// A compiled detector.
#[derive(Clone)]
pub(crate) struct Rule {
    pub id: Arc<str>,
    /// Placeholder stem, e.g. `EMAIL` for `[EMAIL_1]`.
    pub label: Arc<str>,
    pub regex: Regex,
    /// Lower-cased prefilter keywords; empty means the rule always runs.
    pub keywords: Vec<String>,
    /// Capture group holding the secret; 0 = first non-empty group, else the
    /// whole match (gitleaks semantics).
    pub secret_group: usize,
    pub entropy: Option<f64>,
    pub check: Option<Check>,
    /// Where the regex runs.
    pub gate: Gate,
    pub allowlists: Vec<Allowlist>,
    pub action: GuardAction,
    /// Specificity: where a match contains another of lower rank with no
    /// stronger action, the inner one is dropped.
    pub rank: u8,
}

/// Where a rule's regex runs: the whole text (after the keyword prefilter),
/// anchored at keyword hits, or only in candidate windows.
#[derive(Clone)]
pub(crate) enum Gate {
    Full,
    /// Every match starts with one of the rule's keywords: run this anchored
    /// (`^(?:...)`) regex at each keyword hit instead of scanning the text.
    AtKeyword(Regex),
    /// Only around digit runs with at least this many digits and dots.
    Digits {
        min_digits: u32,
        min_dots: u32,
    },
    /// Only around hex runs with two or more colons (IPv6 candidates).
    HexColons,
}

/// Placeholder stem for a rule id: upper-case ASCII letters, digits, `_`.
pub(crate) fn label_for(id: &str) -> Arc<str> {
    let mut s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s.push_str("SECRET");
    }
    Arc::from(s)
}

// === built-in rules ===

struct Builtin {
    id: &'static str,
    keywords: &'static [&'static str],
    regex: &'static str,
    group: usize,
    entropy: Option<f64>,
    check: Option<Check>,
    gate: BGate,
    rank: u8,
}

/// Const form of [`Gate`] for the built-in table.
#[derive(Clone, Copy)]
enum BGate {
    Full,
    AtKeyword,
    Digits(u32, u32),
    HexColons,
}

/// Ranks: specific provider tokens beat generic ones, structured PII beats
/// loose PII.
const RANK_GENERIC: u8 = 0;
const RANK_LOOSE_PII: u8 = 1;
const RANK_PII: u8 = 2;
const RANK_STRONG_PII: u8 = 3;
const RANK_TOKEN: u8 = 4;
const RANK_SPECIFIC: u8 = 5;
const RANK_CONTAINER: u8 = 6;

/// Ids of every built-in detector, in table order.
pub fn builtin_ids() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.id).collect()
}

// Patterns use `\b` for an ASCII word boundary (rewritten to `(?-u:\b)` at
// compile time so the lazy DFA never has to give up on non-ASCII text) and
// `[0-9]` rather than `\d` (which is Unicode-aware in Rust).
const BUILTINS: &[Builtin] = &[
    Builtin {
        id: "aws_access_key",
        keywords: &["akia", "asia", "abia", "acca"],
        regex: r"\b((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b",
        group: 1,
        entropy: Some(3.0),
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "aws_secret_key",
        keywords: &["aws"],
        regex: r#"(?i)aws[_.\-]?(?:secret[_.\-]?(?:access[_.\-]?)?key|secret)["']?\s{0,4}(?::=|=>|[:=])\s{0,4}["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        group: 1,
        entropy: Some(3.5),
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "gcp_service_account_key",
        keywords: &["private_key"],
        regex: r#""private_key"\s*:\s*"(-----BEGIN PRIVATE KEY-----[^"]{16,})""#,
        group: 1,
        entropy: None,
        check: None,
        gate: BGate::Full,
        rank: RANK_CONTAINER,
    },
    Builtin {
        id: "gcp_api_key",
        keywords: &["aiza"],
        regex: r"\b(AIza[0-9A-Za-z_\-]{35})(?:[^0-9A-Za-z_\-]|$)",
        group: 1,
        entropy: None,
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "azure_storage_key",
        keywords: &["accountkey", "sharedaccesskey"],
        regex: r"(?i)(?:AccountKey|SharedAccessKey)\s*=\s*([A-Za-z0-9+/]{40,88}={0,2})",
        group: 1,
        entropy: Some(3.5),
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "private_key",
        keywords: &["private key"],
        regex: r"(-----BEGIN[A-Z ]{0,24}PRIVATE KEY(?: BLOCK)?-----(?:\r?\n|\\r\\n|\\n|[ \t])*(?:[A-Za-z][A-Za-z\-]*:[^\r\n\\]*(?:\r?\n|\\r\\n|\\n))*(?:[A-Za-z0-9+/=]|\r?\n|\\r\\n|\\n|[ \t]){16,}(?:-----END[A-Z ]{0,24}PRIVATE KEY(?: BLOCK)?-----)?)",
        group: 1,
        entropy: None,
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "github_token",
        keywords: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        regex: r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
        group: 1,
        entropy: Some(3.0),
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "gitlab_token",
        keywords: &["glpat-", "gldt-", "glrt-", "glptt-"],
        regex: r"\b((?:glpat|gldt|glrt|glptt)-[A-Za-z0-9_\-]{20,})",
        group: 1,
        entropy: Some(3.0),
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "slack_token",
        keywords: &["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe", "xapp-"],
        regex: r"\b((?:xox[abprs]|xoxe\.xox[bp]|xapp)-[0-9A-Za-z\-]{10,})",
        group: 1,
        entropy: None,
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "slack_webhook",
        keywords: &["hooks.slack.com"],
        regex: r"(https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,})",
        group: 1,
        entropy: None,
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "stripe_key",
        keywords: &["sk_live_", "rk_live_"],
        regex: r"\b((?:sk|rk)_live_[0-9A-Za-z]{20,})",
        group: 1,
        entropy: None,
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "anthropic_api_key",
        keywords: &["sk-ant-"],
        regex: r"\b(sk-ant-(?:api|admin|oat|sid)[0-9]{2}-[A-Za-z0-9_\-]{20,})",
        group: 1,
        entropy: None,
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "openai_api_key",
        keywords: &["sk-"],
        regex: r"\b(sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,})",
        group: 1,
        entropy: None,
        check: Some(validate::random_token),
        gate: BGate::Full,
        rank: RANK_TOKEN,
    },
    Builtin {
        id: "google_oauth_token",
        keywords: &["gocspx-", "ya29.", "1//0"],
        regex: r"\b(GOCSPX-[A-Za-z0-9_\-]{28}|ya29\.[0-9A-Za-z_\-]{20,}|1//0[0-9A-Za-z_\-]{30,})",
        group: 1,
        entropy: None,
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "twilio_api_key",
        keywords: &[],
        regex: r"\b(SK[0-9a-f]{32})\b",
        group: 1,
        entropy: Some(3.0),
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "sendgrid_api_key",
        keywords: &["sg."],
        regex: r"\b(SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})(?:[^A-Za-z0-9_\-]|$)",
        group: 1,
        entropy: None,
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "npm_token",
        keywords: &["npm_"],
        regex: r"\b(npm_[A-Za-z0-9]{36})\b",
        group: 1,
        entropy: Some(3.0),
        check: None,
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "jwt",
        keywords: &["eyj"],
        regex: r"\b(eyJ[A-Za-z0-9_\-]{8,}={0,2}\.[A-Za-z0-9_\-]{4,}={0,2}\.[A-Za-z0-9_\-]*)",
        group: 1,
        entropy: None,
        check: Some(validate::jwt),
        gate: BGate::Full,
        rank: RANK_SPECIFIC,
    },
    Builtin {
        id: "database_url",
        keywords: &[
            "postgres",
            "mysql",
            "mariadb",
            "mongodb",
            "redis",
            "amqp",
            "mssql",
            "sqlserver",
        ],
        regex: r#"\b((?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver)://[^\s:/@"'<>]*:[^\s/@"'<>]+@[^\s/"'<>?#]+)"#,
        group: 1,
        entropy: None,
        check: Some(validate::database_url),
        gate: BGate::Full,
        rank: RANK_CONTAINER,
    },
    Builtin {
        id: "generic_secret",
        keywords: &[
            "password",
            "passwd",
            "pwd",
            "secret",
            "token",
            "api_key",
            "apikey",
            "api-key",
            "access_key",
            "access-key",
            "accesskey",
            "auth_key",
            "auth-key",
            "authkey",
            "credential",
        ],
        regex: r#"(?i)(?:password|passwd|pwd|secret|token|api[_\-]?key|access[_\-]?key|auth[_\-]?key|credentials?)[A-Za-z0-9_.\-]{0,24}["'`]?\s{0,4}(?::=|=>|[:=])\s{0,4}["'`]?([A-Za-z0-9+/=_\-.!@#$%^&*~]{8,200})"#,
        group: 1,
        entropy: None,
        check: Some(validate::generic_secret),
        gate: BGate::AtKeyword,
        rank: RANK_GENERIC,
    },
    Builtin {
        id: "email",
        keywords: &["@"],
        regex: r"\b([A-Za-z0-9._%+\-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})\b",
        group: 1,
        entropy: None,
        check: Some(validate::email),
        gate: BGate::Full,
        rank: RANK_PII,
    },
    Builtin {
        id: "phone",
        keywords: &[],
        regex: r"(?:^|[^0-9A-Za-z_+.\-/])((?:\+[1-9][0-9]{0,2}[ .\-]?(?:\([0-9]{1,4}\)[ .\-]?)?[0-9]{1,4}(?:[ .\-]?[0-9]{2,4}){1,5})|(?:\([2-9][0-9]{2}\) ?[0-9]{3}[ .\-][0-9]{4})|(?:[2-9][0-9]{2}[ .\-][0-9]{3}[ .\-][0-9]{4})|(?:0[1-9](?:[ .\-][0-9]{2}){4})|(?:0[1-9][0-9]{1,3}[ \-/][0-9]{3,4}[ \-]?[0-9]{3,4}))(?:$|[^0-9A-Za-z_.\-]|\.(?:$|[^0-9]))",
        group: 1,
        entropy: None,
        check: Some(validate::phone),
        gate: BGate::Digits(8, 0),
        rank: RANK_LOOSE_PII,
    },
    Builtin {
        id: "credit_card",
        keywords: &[],
        regex: r"\b([0-9]{4}(?:[ \-]?[0-9]{4}){2}[ \-]?[0-9]{1,7}|[0-9]{4}[ \-]?[0-9]{6}[ \-]?[0-9]{4,5})\b",
        group: 1,
        entropy: None,
        check: Some(validate::card),
        gate: BGate::Digits(13, 0),
        rank: RANK_STRONG_PII,
    },
    Builtin {
        id: "iban",
        keywords: &[],
        regex: r"\b([A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)\b",
        group: 1,
        entropy: None,
        check: Some(validate::iban),
        gate: BGate::Digits(8, 0),
        rank: RANK_STRONG_PII,
    },
    Builtin {
        id: "us_ssn",
        keywords: &[],
        regex: r"(?:^|[^0-9A-Za-z\-])([0-9]{3}-[0-9]{2}-[0-9]{4})(?:$|[^0-9A-Za-z\-])",
        group: 1,
        entropy: None,
        check: Some(validate::ssn),
        gate: BGate::Digits(9, 0),
        rank: RANK_PII,
    },
    Builtin {
        id: "ipv4",
        keywords: &[],
        regex: r"(?:^|[^0-9A-Za-z_.\-])((?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3})(?:/[0-9]{1,2})?(?:$|[^0-9A-Za-z_.\-]|\.(?:$|[^0-9A-Za-z_]))",
        group: 1,
        entropy: None,
        check: Some(validate::ipv4),
        gate: BGate::Digits(4, 3),
        rank: RANK_PII,
    },
    Builtin {
        id: "ipv6",
        keywords: &[],
        regex: r"(?:^|[^0-9A-Za-z_:.])([0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%[0-9A-Za-z]{1,15})?)(?:$|[^0-9A-Za-z_:.]|\.(?:$|[^0-9A-Za-z_]))",
        group: 1,
        entropy: None,
        check: Some(validate::ipv6),
        gate: BGate::HexColons,
        rank: RANK_PII,
    },
];

fn builtin_regex(pattern: &str) -> Result<Regex, regex::Error> {
    let p = pattern.replace(r"\b", r"(?-u:\b)");
    RegexBuilder::new(&p)
        .size_limit(BUILTIN_REGEX_SIZE_LIMIT)
        .build()
}

/// The built-in rules with actions from policy.
pub(crate) fn builtins(cfg: &Guardrails) -> Vec<Rule> {
    BUILTINS
        .iter()
        .map(|b| Rule {
            id: Arc::from(b.id),
            label: label_for(b.id),
            // Built-in patterns are constants covered by tests; a failure is a bug.
            regex: builtin_regex(b.regex)
                .unwrap_or_else(|e| panic!("built-in rule {} does not compile: {e}", b.id)),
            keywords: b.keywords.iter().map(|k| k.to_ascii_lowercase()).collect(),
            secret_group: b.group,
            entropy: b.entropy,
            check: b.check,
            gate: match b.gate {
                BGate::Full => Gate::Full,
                BGate::AtKeyword => Gate::AtKeyword(
                    builtin_regex(&format!("^(?:{})", b.regex))
                        .unwrap_or_else(|e| panic!("built-in rule {} does not compile: {e}", b.id)),
                ),
                BGate::Digits(min_digits, min_dots) => Gate::Digits {
                    min_digits,
                    min_dots,
                },
                BGate::HexColons => Gate::HexColons,
            },
            allowlists: Vec::new(),
            action: action_for(cfg, b.id),
            rank: b.rank,
        })
        .collect()
}

/// Policy action for a non-custom detector: `actions[id]`, else the default.
pub(crate) fn action_for(cfg: &Guardrails, id: &str) -> GuardAction {
    cfg.actions.get(id).copied().unwrap_or(cfg.default_action)
}

// === user patterns ===

/// Compile a user-supplied pattern under size limits, rejecting patterns that
/// can match the empty string or can never match. The reason never quotes
/// the pattern (it may embed a literal secret).
pub(crate) fn compile_user_regex(pattern: &str) -> Result<Regex, String> {
    compile_bounded(pattern, false)
}

/// Compile an allowlist pattern: same limits, but it may match empty text.
pub(crate) fn compile_allow_regex(pattern: &str) -> Result<Regex, String> {
    compile_bounded(pattern, true)
}

fn compile_bounded(pattern: &str, allow_empty: bool) -> Result<Regex, String> {
    if pattern.is_empty() && !allow_empty {
        return Err("regex is empty".into());
    }
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "regex is {} bytes, longer than the {MAX_PATTERN_LEN}-byte limit",
            pattern.len()
        ));
    }
    let hir = regex_syntax::ParserBuilder::new()
        .nest_limit(64)
        .build()
        .parse(pattern)
        .map_err(describe_syntax_error)?;
    match hir.properties().minimum_len() {
        _ if allow_empty => {}
        Some(0) => {
            return Err("regex can match the empty string, so it would match everywhere".into())
        }
        None => return Err("regex can never match anything".into()),
        Some(_) => {}
    }
    RegexBuilder::new(pattern)
        .size_limit(USER_REGEX_SIZE_LIMIT)
        .dfa_size_limit(USER_DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => {
                format!("regex is too large: compiled size exceeds the {limit}-byte limit")
            }
            _ => "regex does not compile".to_string(),
        })
}

/// A syntax error described without quoting the pattern: kind and offset.
fn describe_syntax_error(e: regex_syntax::Error) -> String {
    match e {
        regex_syntax::Error::Parse(p) => {
            let hint = if matches!(
                p.kind(),
                regex_syntax::ast::ErrorKind::UnsupportedLookAround
            ) {
                " (look-around is not supported: RE2/Rust regex syntax only)"
            } else if matches!(
                p.kind(),
                regex_syntax::ast::ErrorKind::UnsupportedBackreference
            ) {
                " (backreferences are not supported: RE2/Rust regex syntax only)"
            } else {
                ""
            };
            format!(
                "regex syntax error at offset {}: {}{hint}",
                p.span().start.offset,
                p.kind()
            )
        }
        regex_syntax::Error::Translate(t) => {
            format!(
                "regex syntax error at offset {}: {}",
                t.span().start.offset,
                t.kind()
            )
        }
        _ => "regex syntax error".to_string(),
    }
}

/// Keyword-only rule: the keywords themselves, case-insensitive, on word
/// boundaries where the keyword edge is a word character.
fn keyword_regex(keywords: &[String]) -> Result<Regex, String> {
    let alts: Vec<String> = keywords
        .iter()
        .map(|k| {
            let mut s = String::new();
            if k.chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
            {
                s.push_str(r"\b");
            }
            s.push_str(&regex::escape(k));
            if k.chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
            {
                s.push_str(r"\b");
            }
            s
        })
        .collect();
    compile_user_regex(&format!("(?i)(?:{})", alts.join("|")))
}

/// Compile one policy custom rule.
pub(crate) fn compile_custom(rule: &CustomRule) -> Result<Rule, Vec<String>> {
    let mut reasons = Vec::new();
    if rule.id.trim().is_empty() {
        reasons.push("id is empty".to_string());
    }
    let keywords: Vec<String> = rule.keywords.iter().map(|k| k.trim().to_string()).collect();
    if keywords.iter().any(|k| k.is_empty()) {
        reasons.push("a keyword is empty, so it would match everywhere".to_string());
    }
    let regex = match (&rule.regex, keywords.is_empty()) {
        (None, true) => {
            reasons.push("needs a regex or keywords".to_string());
            None
        }
        (Some(p), _) => compile_user_regex(p).map_err(|r| reasons.push(r)).ok(),
        (None, false) if reasons.is_empty() => {
            keyword_regex(&keywords).map_err(|r| reasons.push(r)).ok()
        }
        (None, false) => None,
    };
    match regex {
        Some(regex) if reasons.is_empty() => Ok(Rule {
            id: Arc::from(rule.id.as_str()),
            label: label_for(&rule.id),
            regex,
            keywords: keywords.iter().map(|k| k.to_lowercase()).collect(),
            secret_group: 0,
            entropy: None,
            check: None,
            gate: Gate::Full,
            allowlists: Vec::new(),
            action: rule.action,
            rank: u8::MAX,
        }),
        _ => Err(reasons),
    }
}

/// Compile every custom rule in policy, collecting every problem.
pub(crate) fn compile_customs(cfg: &Guardrails) -> (Vec<Rule>, Vec<RuleProblem>) {
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let builtin = builtin_ids();
    for (i, c) in cfg.custom.iter().enumerate() {
        let name = if c.id.trim().is_empty() {
            format!("custom[{i}]")
        } else {
            c.id.clone()
        };
        if !c.id.trim().is_empty() && !seen.insert(c.id.clone()) {
            problems.push(RuleProblem::new(&name, "duplicate rule id"));
            continue;
        }
        if builtin.contains(&c.id.as_str()) {
            problems.push(RuleProblem::new(
                &name,
                "id collides with a built-in detector",
            ));
            continue;
        }
        match compile_custom(c) {
            Ok(r) => rules.push(r),
            Err(reasons) => {
                problems.extend(reasons.into_iter().map(|r| RuleProblem::new(&name, r)))
            }
        }
    }
    (rules, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_compiles_and_ids_are_unique_snake_case() {
        let rules = builtins(&Guardrails::default());
        let mut ids: Vec<&str> = rules.iter().map(|r| &*r.id).collect();
        assert!(ids.iter().all(|id| id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), rules.len());
    }

    #[test]
    fn user_regex_rejections_say_why() {
        assert!(compile_user_regex("").unwrap_err().contains("empty"));
        assert!(compile_user_regex("a*")
            .unwrap_err()
            .contains("empty string"));
        assert!(compile_user_regex("x|")
            .unwrap_err()
            .contains("empty string"));
        assert!(compile_user_regex("[^\\s\\S]")
            .unwrap_err()
            .contains("never match"));
        assert!(compile_user_regex("(?=abc)abc")
            .unwrap_err()
            .contains("look-around"));
        assert!(compile_user_regex("(a)\\1")
            .unwrap_err()
            .contains("backreferences"));
        assert!(compile_user_regex("(unclosed")
            .unwrap_err()
            .contains("syntax error"));
        assert!(compile_user_regex(&"a".repeat(MAX_PATTERN_LEN + 1))
            .unwrap_err()
            .contains("limit"));
        assert!(compile_user_regex(r"\w{1000}\w{1000}")
            .unwrap_err()
            .contains("too large"));
        assert!(compile_user_regex("(?i)acme-[0-9]{6}").is_ok());
    }

    #[test]
    fn syntax_errors_do_not_echo_the_pattern() {
        let e = compile_user_regex("SUPERSECRETVALUE(").unwrap_err();
        assert!(!e.contains("SUPERSECRETVALUE"), "{e}");
    }

    #[test]
    fn keyword_rule_matches_words_case_insensitively() {
        let r = keyword_regex(&["Project Falcon".into(), "c++".into()]).unwrap();
        assert!(r.is_match("about project falcon today"));
        assert!(!r.is_match("projectfalconry"));
        assert!(r.is_match("uses C++ heavily"));
    }

    #[test]
    fn labels_are_placeholder_safe() {
        assert_eq!(&*label_for("aws_access_key"), "AWS_ACCESS_KEY");
        assert_eq!(&*label_for("acme-project.code"), "ACME_PROJECT_CODE");
    }
}
