//! Load a user rule file in gitleaks' TOML format, so companies can reuse the
//! rules they already keep.
//!
//! Supported: `[[rules]]` with `id`, `description`, `regex`, `keywords`,
//! `entropy`, `secretGroup`; per-rule `[rules.allowlist]` and
//! `[[rules.allowlists]]`; global `[allowlist]` and `[[allowlists]]`; in
//! allowlists `regexes`, `stopwords`, `regexTarget` (secret|match|line) and
//! `condition` (OR|AND). Ignored (they describe files and commits, not
//! prompts): `path`, `paths`, `commits`, `tags`, `[extend]`; a rule that has
//! only a `path` is skipped with a warning. Unknown keys are ignored, as
//! gitleaks does. Patterns are compiled with Rust `regex` (RE2 syntax):
//! look-around or backreferences fail with an error naming the rule. Note
//! `\d`, `\w`, `\b` are Unicode-aware here (a superset of Go's ASCII classes).
//! This module must never quote a pattern or value in an error.

use crate::error::{GuardError, RuleProblem};
use crate::rules::{self, AllowTarget, Allowlist, Rule};
use palisade_core::policy::Guardrails;
use serde::Deserialize;
use std::sync::Arc;

const RANK_GITLEAKS: u8 = 4;

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    rules: Vec<GlRule>,
    #[serde(default)]
    allowlist: Option<GlAllow>,
    #[serde(default)]
    allowlists: Vec<GlAllow>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GlRule {
    #[serde(default)]
    id: String,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    secret_group: Option<usize>,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    allowlist: Option<GlAllow>,
    #[serde(default)]
    allowlists: Vec<GlAllow>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GlAllow {
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    #[serde(default)]
    regex_target: Option<String>,
    #[serde(default)]
    condition: Option<String>,
}

/// Parsed and compiled gitleaks rules plus global allowlists.
pub(crate) struct Loaded {
    pub rules: Vec<Rule>,
    pub global_allow: Vec<Allowlist>,
}

pub(crate) fn load(cfg: &Guardrails, text: &str, taken_ids: &[&str]) -> Result<Loaded, GuardError> {
    let file: File = toml::from_str(text).map_err(|e| GuardError::GitleaksFile(toml_reason(&e)))?;
    let mut problems = Vec::new();
    let mut global_allow = Vec::new();
    for (i, a) in file.allowlist.iter().chain(&file.allowlists).enumerate() {
        match compile_allow(a) {
            Ok(al) => global_allow.push(al),
            Err(reason) => problems.push(RuleProblem::new(&format!("allowlist[{i}]"), reason)),
        }
    }
    let mut rules_out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, r) in file.rules.iter().enumerate() {
        let name = if r.id.trim().is_empty() {
            format!("rules[{i}]")
        } else {
            r.id.clone()
        };
        if r.id.trim().is_empty() {
            problems.push(RuleProblem::new(&name, "id is empty"));
            continue;
        }
        if !seen.insert(r.id.clone()) {
            problems.push(RuleProblem::new(&name, "duplicate rule id"));
            continue;
        }
        if taken_ids.contains(&r.id.as_str()) {
            problems.push(RuleProblem::new(
                &name,
                "id collides with a built-in or policy detector",
            ));
            continue;
        }
        let Some(pattern) = r.regex.as_deref() else {
            if r.path.is_some() {
                tracing::warn!(rule = %r.id, "Gitleaks rule matches file paths only; skipped for prompts");
            } else {
                problems.push(RuleProblem::new(&name, "has no regex"));
            }
            continue;
        };
        let regex = match rules::compile_user_regex(pattern) {
            Ok(re) => re,
            Err(reason) => {
                problems.push(RuleProblem::new(&name, reason));
                continue;
            }
        };
        let groups = regex.captures_len() - 1;
        let secret_group = r.secret_group.unwrap_or(0);
        if secret_group > groups {
            problems.push(RuleProblem::new(
                &name,
                format!(
                    "secretGroup is {secret_group} but the regex has {groups} capture group(s)"
                ),
            ));
            continue;
        }
        if let Some(e) = r.entropy {
            if !(e.is_finite() && (0.0..=8.0).contains(&e)) {
                problems.push(RuleProblem::new(
                    &name,
                    "entropy must be between 0 and 8 bits per byte",
                ));
                continue;
            }
        }
        let mut allowlists = Vec::new();
        let mut bad_allow = false;
        for a in r.allowlist.iter().chain(&r.allowlists) {
            match compile_allow(a) {
                Ok(al) => allowlists.push(al),
                Err(reason) => {
                    problems.push(RuleProblem::new(&name, format!("allowlist: {reason}")));
                    bad_allow = true;
                }
            }
        }
        if bad_allow {
            continue;
        }
        let keywords: Vec<String> = r
            .keywords
            .iter()
            .map(|k| k.trim().to_lowercase())
            .filter(|k| !k.is_empty())
            .collect();
        rules_out.push(Rule {
            id: Arc::from(r.id.as_str()),
            label: rules::label_for(&r.id),
            regex,
            keywords,
            secret_group,
            entropy: r.entropy.filter(|e| *e > 0.0),
            check: None,
            gate: rules::Gate::Full,
            allowlists,
            action: rules::action_for(cfg, &r.id),
            rank: RANK_GITLEAKS,
        });
    }
    if problems.is_empty() {
        Ok(Loaded {
            rules: rules_out,
            global_allow,
        })
    } else {
        Err(GuardError::InvalidRules(problems))
    }
}

fn compile_allow(a: &GlAllow) -> Result<Allowlist, String> {
    let target = match a
        .regex_target
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("") | Some("secret") => AllowTarget::Secret,
        Some("match") => AllowTarget::Match,
        Some("line") => AllowTarget::Line,
        Some(_) => return Err("regexTarget must be secret, match or line".into()),
    };
    let all = match a
        .condition
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("") | Some("OR") => false,
        Some("AND") => true,
        Some(_) => return Err("condition must be OR or AND".into()),
    };
    let regexes = a
        .regexes
        .iter()
        .enumerate()
        .map(|(i, p)| rules::compile_allow_regex(p).map_err(|e| format!("regexes[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Allowlist {
        regexes,
        stopwords: a
            .stopwords
            .iter()
            .map(|s| s.to_lowercase())
            .filter(|s| !s.is_empty())
            .collect(),
        target,
        all,
    })
}

/// TOML error without the quoted source line (it may hold a literal secret).
fn toml_reason(e: &toml::de::Error) -> String {
    let msg = e.message();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg.to_string(),
    }
}
