//! Gemini `generateContent` / `streamGenerateContent` format: requests,
//! responses, stream chunks (SSE or JSON array) and usage.
//!
//! Usage semantics: `promptTokenCount` includes `cachedContentTokenCount`
//! (kept as is), but `candidatesTokenCount` EXCLUDES `thoughtsTokenCount`,
//! so we normalise `output_tokens = candidates + thoughts` and
//! `reasoning_tokens = thoughts`. Tool-use prompt tokens are billed as input
//! and added to `input_tokens`. Thought parts are never recorded as text.

use super::{push_line, tool_call_marker};
use crate::json::{arr_at, copy_count, error_message, str_at, u64_at};
use crate::request::ParsedRequest;
use crate::stream::Acc;
use palisade_core::Usage;
use serde_json::{Map, Value};

const GEN_CONFIG: &[&str] = &[
    "temperature",
    "topP",
    "topK",
    "maxOutputTokens",
    "candidateCount",
    "responseMimeType",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
];

pub(crate) fn request(v: &Value, out: &mut ParsedRequest) {
    let mut lines = Vec::new();
    if let Some(si) = v.get("systemInstruction").or_else(|| v.get("system_instruction")) {
        push_line(&mut lines, "system", &parts_text(si.get("parts").unwrap_or(si)));
    }
    let contents = arr_at(v, &["contents"]);
    for c in contents {
        let role = c.get("role").and_then(Value::as_str).unwrap_or("user");
        push_line(&mut lines, role, &parts_text(c.get("parts").unwrap_or(&Value::Null)));
    }
    out.prompt = Some(lines.join("\n"));
    let mut p = Map::new();
    let gc = v.get("generationConfig").or_else(|| v.get("generation_config"));
    if let Some(gc) = gc {
        crate::json::copy_scalars(gc, GEN_CONFIG, &mut p);
        copy_count(gc, "stopSequences", "stopSequences", &mut p);
        if let Some(b) = u64_at(gc, &["thinkingConfig", "thinkingBudget"]) {
            p.insert("thinkingBudget".into(), Value::from(b));
        }
    }
    p.insert("contents".into(), Value::from(contents.len()));
    copy_count(v, "tools", "tools", &mut p);
    copy_count(v, "safetySettings", "safetySettings", &mut p);
    if let Some(c) = v.get("cachedContent").and_then(Value::as_str) {
        p.insert("cachedContent".into(), Value::from(c));
    }
    out.params = Value::Object(p);
}

/// Text of a `parts` array (or a single part). Thought parts are skipped.
pub(crate) fn parts_text(parts: &Value) -> String {
    let one;
    let list: &[Value] = match parts {
        Value::Array(a) => a,
        Value::Object(_) => {
            one = [parts.clone()];
            &one
        }
        Value::String(s) => return s.clone(),
        _ => &[],
    };
    let mut out: Vec<String> = Vec::new();
    for p in list {
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            out.push(t.to_string());
        } else if let Some(fc) = p.get("functionCall") {
            let name = fc.get("name").and_then(Value::as_str).unwrap_or("");
            out.push(tool_call_marker(name, fc.get("args")));
        } else if let Some(fr) = p.get("functionResponse") {
            let name = fr.get("name").and_then(Value::as_str).unwrap_or("");
            let resp = fr.get("response").map(Value::to_string).unwrap_or_default();
            out.push(format!("[tool_result {name}] {resp}"));
        } else if p.get("inlineData").is_some() || p.get("inline_data").is_some() {
            out.push("[inline_data]".into());
        } else if p.get("fileData").is_some() || p.get("file_data").is_some() {
            out.push("[file]".into());
        }
    }
    out.retain(|s| !s.is_empty());
    out.join("\n")
}

pub(crate) fn usage(u: &Value) -> Usage {
    let prompt = u64_at(u, &["promptTokenCount"]);
    let tool_prompt = u64_at(u, &["toolUsePromptTokenCount"]);
    let candidates = u64_at(u, &["candidatesTokenCount"]);
    let thoughts = u64_at(u, &["thoughtsTokenCount"]);
    let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    };
    Usage {
        input_tokens: sum(prompt, tool_prompt),
        output_tokens: sum(candidates, thoughts),
        cached_input_tokens: u64_at(u, &["cachedContentTokenCount"]),
        reasoning_tokens: thoughts,
    }
}

/// One `GenerateContentResponse` (a whole response, or one stream chunk:
/// text is appended, the other fields are latest-wins because Gemini's usage
/// in chunks is cumulative).
pub(crate) fn on_chunk(v: &Value, acc: &mut Acc) {
    if let Some(e) = error_message(v) {
        acc.error = Some(e);
        return;
    }
    if let Some(m) = v.get("modelVersion").and_then(Value::as_str) {
        acc.model = Some(m.to_string());
    }
    if let Some(c) = arr_at(v, &["candidates"]).first() {
        if let Some(parts) = c.pointer("/content/parts") {
            let t = parts_text(parts);
            if !t.is_empty() {
                acc.text.push(&t);
            }
        }
        if let Some(r) = c.get("finishReason").and_then(Value::as_str) {
            acc.stop_reason = Some(r.to_string());
            acc.complete = true;
        }
    }
    if let Some(r) = str_at(v, &["promptFeedback", "blockReason"]) {
        acc.stop_reason = Some(format!("blocked: {r}"));
        acc.complete = true;
    }
    if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
        acc.usage = usage(u);
    }
}
