//! Provider-aware inspection of request bodies and response text: pick the
//! message content out of OpenAI, Anthropic, Gemini and MCP JSON, scan it,
//! and decide allow / redact / block.
//!
//! Only message content is scanned for known endpoints (not model names,
//! ids or tool schemas); redaction rewrites only those strings and leaves
//! every other byte of the body as it was. A redacted body is re-parsed
//! before it is returned; if it would not parse, the request is blocked. This
//! module must never put a matched value into a finding, error or log line.

use crate::json::{self, Node};
use crate::redact::{self, Redactor};
use crate::scan::Match;
use crate::Guard;
use palisade_core::policy::GuardAction;
use palisade_core::record::{Finding, FindingLocation, RecordDecision};
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

/// What to do with a request.
#[derive(Clone, PartialEq, Eq)]
pub enum VerdictAction {
    /// Send the original body.
    Allow,
    /// Send this body instead (fix `Content-Length`).
    Redact { body: Vec<u8> },
    /// Do not send; answer the app with an error naming `rule`.
    Block { rule: String },
}

impl fmt::Debug for VerdictAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerdictAction::Allow => f.write_str("Allow"),
            VerdictAction::Redact { body } => f
                .debug_struct("Redact")
                .field("body_bytes", &body.len())
                .finish(),
            VerdictAction::Block { rule } => f.debug_struct("Block").field("rule", rule).finish(),
        }
    }
}

/// Outcome of inspecting one request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub action: VerdictAction,
    /// Per detector and content path, with counts. Never values.
    pub findings: Vec<Finding>,
    /// Why the body was not inspected (`binary body`, `not JSON`).
    pub skipped: Option<String>,
    /// What went wrong while applying the decision (recorded in the audit).
    pub error: Option<String>,
}

impl Verdict {
    fn allow() -> Self {
        Self {
            action: VerdictAction::Allow,
            findings: Vec::new(),
            skipped: None,
            error: None,
        }
    }

    fn skipped(why: &str) -> Self {
        Self {
            skipped: Some(why.to_string()),
            ..Self::allow()
        }
    }

    /// The record's `policy.decision` for this verdict.
    pub fn decision(&self) -> RecordDecision {
        match self.action {
            VerdictAction::Allow => RecordDecision::Allow,
            VerdictAction::Redact { .. } => RecordDecision::Redact,
            VerdictAction::Block { .. } => RecordDecision::Block,
        }
    }

    /// The detector that blocked or redacted, for the record's `policy.rule`.
    pub fn rule(&self) -> Option<&str> {
        match &self.action {
            VerdictAction::Block { rule } => Some(rule),
            VerdictAction::Redact { .. } => self
                .findings
                .iter()
                .find(|f| f.action == GuardAction::Redact.as_str())
                .map(|f| f.detector.as_str()),
            VerdictAction::Allow => None,
        }
    }
}

/// Endpoints whose content we know how to find and rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    ChatCompletions,
    Responses,
    Embeddings,
    Messages,
    Gemini,
    Mcp,
    Unknown,
}

impl Endpoint {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "chat.completions" => Endpoint::ChatCompletions,
            "responses" => Endpoint::Responses,
            "embeddings" => Endpoint::Embeddings,
            "messages" => Endpoint::Messages,
            "generateContent" | "streamGenerateContent" => Endpoint::Gemini,
            "mcp" => Endpoint::Mcp,
            _ => Endpoint::Unknown,
        }
    }
}

/// A string value to scan: its content path and span in the body.
struct Target {
    path: String,
    span: Range<usize>,
}

// === content selection ===

fn push_str(node: Option<&Node>, path: String, out: &mut Vec<Target>) {
    if let Some(span) = node.and_then(Node::str_span) {
        out.push(Target {
            path,
            span: span.clone(),
        });
    }
}

/// Every string value under `node` (object keys are not content).
fn all_strings(node: &Node, path: &str, out: &mut Vec<Target>) {
    match node {
        Node::Str(span) => out.push(Target {
            path: path.to_string(),
            span: span.clone(),
        }),
        Node::Arr(items) => {
            for (i, n) in items.iter().enumerate() {
                all_strings(n, &format!("{path}[{i}]"), out);
            }
        }
        Node::Obj(fields) => {
            for (k, n) in fields {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                all_strings(n, &p, out);
            }
        }
        Node::Other => {}
    }
}

/// OpenAI / Anthropic message content: a string, or a list of parts/blocks
/// (`text`, nested tool_result `content`, tool input objects, outputs).
fn content(node: Option<&Node>, path: &str, out: &mut Vec<Target>) {
    match node {
        Some(Node::Str(span)) => out.push(Target {
            path: path.to_string(),
            span: span.clone(),
        }),
        Some(Node::Arr(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let pp = format!("{path}[{j}]");
                match part {
                    Node::Str(_) => content(Some(part), &pp, out),
                    Node::Obj(_) => {
                        push_str(part.get("text"), format!("{pp}.text"), out);
                        if part.get("content").is_some() {
                            content(part.get("content"), &format!("{pp}.content"), out);
                        }
                        if let Some(input) = part.get("input").filter(|n| matches!(n, Node::Obj(_)))
                        {
                            all_strings(input, &format!("{pp}.input"), out);
                        }
                        push_str(part.get("output"), format!("{pp}.output"), out);
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn gemini_parts(node: Option<&Node>, path: &str, out: &mut Vec<Target>) {
    if let Some(Node::Arr(parts)) = node.and_then(|n| n.get("parts")) {
        for (j, part) in parts.iter().enumerate() {
            let pp = format!("{path}.parts[{j}]");
            push_str(part.get("text"), format!("{pp}.text"), out);
            if let Some(args) = part.get("functionCall").and_then(|f| f.get("args")) {
                all_strings(args, &format!("{pp}.functionCall.args"), out);
            }
            if let Some(resp) = part.get("functionResponse").and_then(|f| f.get("response")) {
                all_strings(resp, &format!("{pp}.functionResponse.response"), out);
            }
        }
    }
}

fn select(endpoint: Endpoint, root: &Node, body: &[u8]) -> Vec<Target> {
    let mut out = Vec::new();
    match endpoint {
        Endpoint::ChatCompletions => {
            if let Some(Node::Arr(msgs)) = root.get("messages") {
                for (i, m) in msgs.iter().enumerate() {
                    content(
                        m.get("content"),
                        &format!("messages[{i}].content"),
                        &mut out,
                    );
                    if let Some(Node::Arr(calls)) = m.get("tool_calls") {
                        for (k, c) in calls.iter().enumerate() {
                            push_str(
                                c.get("function").and_then(|f| f.get("arguments")),
                                format!("messages[{i}].tool_calls[{k}].function.arguments"),
                                &mut out,
                            );
                        }
                    }
                }
            }
        }
        Endpoint::Responses => {
            push_str(root.get("instructions"), "instructions".into(), &mut out);
            match root.get("input") {
                Some(Node::Arr(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let p = format!("input[{i}]");
                        match item {
                            Node::Str(_) => push_str(Some(item), p, &mut out),
                            _ => {
                                content(item.get("content"), &format!("{p}.content"), &mut out);
                                push_str(item.get("output"), format!("{p}.output"), &mut out);
                                push_str(item.get("arguments"), format!("{p}.arguments"), &mut out);
                            }
                        }
                    }
                }
                other => push_str(other, "input".into(), &mut out),
            }
        }
        Endpoint::Embeddings => match root.get("input") {
            Some(Node::Arr(items)) => {
                for (i, item) in items.iter().enumerate() {
                    push_str(Some(item), format!("input[{i}]"), &mut out);
                }
            }
            other => push_str(other, "input".into(), &mut out),
        },
        Endpoint::Messages => {
            content(root.get("system"), "system", &mut out);
            if let Some(Node::Arr(msgs)) = root.get("messages") {
                for (i, m) in msgs.iter().enumerate() {
                    content(
                        m.get("content"),
                        &format!("messages[{i}].content"),
                        &mut out,
                    );
                }
            }
        }
        Endpoint::Gemini => {
            for key in ["systemInstruction", "system_instruction"] {
                gemini_parts(root.get(key), key, &mut out);
            }
            if let Some(Node::Arr(contents)) = root.get("contents") {
                for (i, c) in contents.iter().enumerate() {
                    gemini_parts(Some(c), &format!("contents[{i}]"), &mut out);
                }
            }
        }
        Endpoint::Mcp => {
            let mut one = |msg: &Node, prefix: &str| {
                let method = msg
                    .get("method")
                    .and_then(Node::str_span)
                    .and_then(|s| json::decode(body, s).ok());
                if matches!(method.as_deref(), Some("tools/call") | Some("prompts/get")) {
                    if let Some(args) = msg.get("params").and_then(|p| p.get("arguments")) {
                        all_strings(args, &format!("{prefix}params.arguments"), &mut out);
                    }
                }
            };
            match root {
                Node::Arr(batch) => {
                    for (i, msg) in batch.iter().enumerate() {
                        one(msg, &format!("[{i}]."));
                    }
                }
                msg => one(msg, ""),
            }
        }
        Endpoint::Unknown => all_strings(root, "", &mut out),
    }
    out
}

// === findings ===

/// Findings aggregated per (detector, path), in first-seen order.
#[derive(Default)]
pub(crate) struct Findings {
    pub(crate) list: Vec<Finding>,
    index: HashMap<(String, Option<String>), usize>,
}

impl Findings {
    pub(crate) fn add(
        &mut self,
        detector: &str,
        action: &str,
        location: FindingLocation,
        path: Option<&str>,
        n: u32,
    ) {
        let key = (detector.to_string(), path.map(str::to_string));
        match self.index.get(&key) {
            Some(&i) => self.list[i].count = self.list[i].count.saturating_add(n),
            None => {
                self.index.insert(key, self.list.len());
                self.list.push(Finding {
                    detector: detector.to_string(),
                    action: action.to_string(),
                    location,
                    path: path.map(str::to_string),
                    count: n,
                });
            }
        }
    }
}

// === request ===

pub(crate) fn inspect_request(guard: &Guard, endpoint: &str, body: &[u8]) -> Verdict {
    if !guard.enabled || body.is_empty() {
        return Verdict::allow();
    }
    if body.contains(&0) || std::str::from_utf8(body).is_err() {
        return Verdict::skipped("binary body");
    }
    let Ok((root, duplicate_keys)) = json::parse_checked(body) else {
        return Verdict::skipped("not JSON");
    };
    // With repeated keys, which value a provider reads is parser-specific
    // and every copy goes over the wire: scan every string, never rewrite.
    let ep = if duplicate_keys {
        Endpoint::Unknown
    } else {
        Endpoint::parse(endpoint)
    };
    let targets = select(ep, &root, body);

    let mut findings = Findings::default();
    let mut block: Option<String> = None;
    let mut redact_rule: Option<String> = None;
    // Strings that carry redact matches: (span, decoded text, matches).
    let mut pending: Vec<(Range<usize>, String, Vec<Match>)> = Vec::new();
    for t in &targets {
        let Ok(text) = json::decode(body, &t.span) else {
            return Verdict::skipped("not JSON");
        };
        let out = guard.engine.scan(&text);
        for m in &out.matches {
            findings.add(
                &m.detector,
                m.action.as_str(),
                FindingLocation::Request,
                Some(&t.path),
                1,
            );
            match m.action {
                GuardAction::Block if block.is_none() => block = Some(m.detector.to_string()),
                GuardAction::Redact if redact_rule.is_none() => {
                    redact_rule = Some(m.detector.to_string())
                }
                _ => {}
            }
        }
        for (ri, n) in &out.overflow {
            let r = &guard.engine.rules[*ri];
            findings.add(
                &r.id,
                r.action.as_str(),
                FindingLocation::Request,
                Some(&t.path),
                *n,
            );
        }
        if block.is_none() {
            let redacts: Vec<Match> = out
                .matches
                .into_iter()
                .filter(|m| m.action == GuardAction::Redact)
                .collect();
            if !redacts.is_empty() {
                pending.push((t.span.clone(), text, redacts));
            }
        }
    }
    let findings = findings.list;
    if let Some(rule) = block {
        tracing::info!(rule = %rule, endpoint, "Guardrail blocked request");
        return Verdict {
            action: VerdictAction::Block { rule },
            findings,
            skipped: None,
            error: None,
        };
    }
    let Some(rule) = redact_rule else {
        return Verdict {
            findings,
            ..Verdict::allow()
        };
    };
    if ep == Endpoint::Unknown {
        // We cannot rewrite a body we do not understand; letting it pass
        // would send what policy says must not leave. Fail closed.
        return Verdict {
            action: VerdictAction::Block { rule },
            findings,
            skipped: None,
            error: Some(if duplicate_keys {
                "redaction is not supported for a body with duplicate JSON keys; request blocked instead".to_string()
            } else {
                format!(
                    "redaction is not supported for endpoint {endpoint:?}; request blocked instead"
                )
            }),
        };
    }
    let mut redactor = Redactor::new();
    let mut edits: Vec<(Range<usize>, String)> = pending
        .iter()
        .map(|(span, text, ms)| {
            let refs: Vec<&Match> = ms.iter().collect();
            let new = redact::apply(
                text,
                &refs,
                |m| guard.engine.rules[m.rule].label.clone(),
                &mut redactor,
            );
            (span.clone(), json::encode(&new))
        })
        .collect();
    edits.sort_by_key(|(span, _)| span.start);
    finish_redaction(body, &edits, rule, findings)
}

/// Splice the edits and check the result still parses; block if it does not.
fn finish_redaction(
    body: &[u8],
    edits: &[(Range<usize>, String)],
    rule: String,
    findings: Vec<Finding>,
) -> Verdict {
    let new_body = json::splice(body, edits);
    if json::parse(&new_body).is_err() {
        tracing::error!(rule = %rule, "Redaction produced invalid JSON; request blocked");
        return Verdict {
            action: VerdictAction::Block { rule },
            findings,
            skipped: None,
            error: Some("redaction produced invalid JSON".to_string()),
        };
    }
    Verdict {
        action: VerdictAction::Redact { body: new_body },
        findings,
        skipped: None,
        error: None,
    }
}

// === response ===

pub(crate) fn inspect_response_text(guard: &Guard, text: &str) -> (Vec<Finding>, Option<String>) {
    if !guard.enabled || !guard.scan_responses || text.is_empty() {
        return (Vec::new(), None);
    }
    let mut acc = ResponseScan::default();
    acc.scan(guard, text, None);
    acc.finish()
}

/// MCP JSON-RPC response (or batch): `result.content[].text`, embedded
/// resource text, and every string of `result.structuredContent`.
pub(crate) fn inspect_mcp_response(guard: &Guard, body: &[u8]) -> (Vec<Finding>, Option<String>) {
    if !guard.enabled || !guard.scan_responses || body.is_empty() {
        return (Vec::new(), None);
    }
    let Ok(root) = json::parse(body) else {
        return (Vec::new(), None);
    };
    let mut targets = Vec::new();
    let mut one = |msg: &Node, prefix: &str| {
        let Some(result) = msg.get("result") else {
            return;
        };
        if let Some(Node::Arr(items)) = result.get("content") {
            for (i, item) in items.iter().enumerate() {
                let p = format!("{prefix}result.content[{i}]");
                push_str(item.get("text"), format!("{p}.text"), &mut targets);
                push_str(
                    item.get("resource").and_then(|r| r.get("text")),
                    format!("{p}.resource.text"),
                    &mut targets,
                );
            }
        }
        if let Some(sc) = result.get("structuredContent") {
            all_strings(
                sc,
                &format!("{prefix}result.structuredContent"),
                &mut targets,
            );
        }
    };
    match &root {
        Node::Arr(batch) => {
            for (i, msg) in batch.iter().enumerate() {
                one(msg, &format!("[{i}]."));
            }
        }
        msg => one(msg, ""),
    }
    let mut acc = ResponseScan::default();
    for t in targets {
        if let Ok(text) = json::decode(body, &t.span) {
            acc.scan(guard, &text, Some(&t.path));
        }
    }
    acc.finish()
}

/// Findings and the first blocking rule across response texts.
#[derive(Default)]
struct ResponseScan {
    findings: Findings,
    block: Option<String>,
}

impl ResponseScan {
    fn scan(&mut self, guard: &Guard, text: &str, path: Option<&str>) {
        let out = guard.engine.scan(text);
        // A response already on its way cannot be rewritten: redact rules
        // are recorded as `log` here; block rules hold the response back.
        let applied = |a: GuardAction| {
            if a == GuardAction::Block {
                GuardAction::Block
            } else {
                GuardAction::Log
            }
        };
        let mut first_block: Option<(usize, &str)> = None;
        for m in &out.matches {
            self.findings.add(
                &m.detector,
                applied(m.action).as_str(),
                FindingLocation::Response,
                path,
                1,
            );
            if m.action == GuardAction::Block && first_block.is_none_or(|(s, _)| m.start < s) {
                first_block = Some((m.start, &m.detector));
            }
        }
        for (ri, n) in &out.overflow {
            let r = &guard.engine.rules[*ri];
            self.findings.add(
                &r.id,
                applied(r.action).as_str(),
                FindingLocation::Response,
                path,
                *n,
            );
            if r.action == GuardAction::Block && first_block.is_none() {
                first_block = Some((usize::MAX, &r.id));
            }
        }
        if self.block.is_none() {
            self.block = first_block.map(|(_, r)| r.to_string());
        }
    }

    fn finish(self) -> (Vec<Finding>, Option<String>) {
        (self.findings.list, self.block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_splice_is_blocked_not_sent() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        let root = json::parse(body).unwrap();
        let t = select(Endpoint::ChatCompletions, &root, body);
        assert_eq!(t.len(), 1);
        // A replacement that is not a JSON string literal.
        let v = finish_redaction(
            body,
            &[(t[0].span.clone(), "[EMAIL_1]\"".into())],
            "email".into(),
            vec![],
        );
        assert_eq!(
            v.action,
            VerdictAction::Block {
                rule: "email".into()
            }
        );
        assert_eq!(v.error.as_deref(), Some("redaction produced invalid JSON"));
        let v = finish_redaction(
            body,
            &[(t[0].span.clone(), json::encode("[EMAIL_1]"))],
            "email".into(),
            vec![],
        );
        assert!(matches!(v.action, VerdictAction::Redact { .. }));
    }

    #[test]
    fn selection_paths_per_endpoint() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "chat.completions",
                r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"t"},{"type":"image_url","image_url":{"url":"u"}}]},{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}]}"#,
                &[
                    "messages[0].content",
                    "messages[1].content[0].text",
                    "messages[2].tool_calls[0].function.arguments",
                ],
            ),
            (
                "responses",
                r#"{"model":"m","instructions":"i","input":[{"role":"user","content":[{"type":"input_text","text":"x"}]},{"type":"function_call_output","output":"o"}]}"#,
                &[
                    "instructions",
                    "input[0].content[0].text",
                    "input[1].output",
                ],
            ),
            ("responses", r#"{"model":"m","input":"hello"}"#, &["input"]),
            (
                "embeddings",
                r#"{"model":"m","input":["a","b"]}"#,
                &["input[0]", "input[1]"],
            ),
            (
                "messages",
                r#"{"model":"m","system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"id","content":[{"type":"text","text":"r"}]},{"type":"tool_use","id":"x","name":"n","input":{"q":"v"}}]}]}"#,
                &[
                    "system[0].text",
                    "messages[0].content[0].content[0].text",
                    "messages[0].content[1].input.q",
                ],
            ),
            (
                "generateContent",
                r#"{"systemInstruction":{"parts":[{"text":"s"}]},"contents":[{"role":"user","parts":[{"text":"a"},{"inlineData":{"data":"AAAA"}}]}]}"#,
                &[
                    "systemInstruction.parts[0].text",
                    "contents[0].parts[0].text",
                ],
            ),
            (
                "mcp",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run","arguments":{"cmd":"ls","env":{"K":"v"}}}}"#,
                &["params.arguments.cmd", "params.arguments.env.K"],
            ),
            (
                "mcp",
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#,
                &[],
            ),
            ("other", r#"{"a":{"b":["x"]},"c":"y"}"#, &["a.b[0]", "c"]),
        ];
        for (ep, body, want) in cases {
            let root = json::parse(body.as_bytes()).unwrap();
            let got: Vec<String> = select(Endpoint::parse(ep), &root, body.as_bytes())
                .into_iter()
                .map(|t| t.path)
                .collect();
            assert_eq!(&got, want, "{ep}");
        }
    }
}
