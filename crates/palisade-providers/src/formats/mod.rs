//! Per-format knowledge: how each provider family lays out prompts,
//! responses, stream events and usage. Shared rendering of content parts
//! lives here.
//!
//! Adapters read `serde_json::Value`s through the total helpers in
//! `crate::json`; they must never panic or assume a shape.

pub(crate) mod anthropic;
pub(crate) mod gemini;
pub(crate) mod openai;

use serde_json::Value;

/// The text of a content value: a plain string, or an array of parts/blocks
/// (OpenAI content parts, Anthropic content blocks). Non-text parts become
/// short markers such as `[image]` so the record shows they were sent.
pub(crate) fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let texts: Vec<String> = parts.iter().filter_map(part_text).filter(|t| !t.is_empty()).collect();
            texts.join("\n")
        }
        Value::Object(_) => part_text(v).unwrap_or_default(),
        _ => String::new(),
    }
}

fn part_text(p: &Value) -> Option<String> {
    if let Value::String(s) = p {
        return Some(s.clone());
    }
    let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" | "input_text" | "output_text" => p.get("text").and_then(Value::as_str).map(str::to_string),
        "refusal" => p.get("refusal").and_then(Value::as_str).map(|r| format!("[refusal] {r}")),
        "image" | "image_url" | "input_image" => Some("[image]".into()),
        "input_audio" | "audio" => Some("[audio]".into()),
        "document" | "file" | "input_file" => Some("[file]".into()),
        "tool_use" | "server_tool_use" => Some(tool_call_marker(
            p.get("name").and_then(Value::as_str).unwrap_or(""),
            p.get("input"),
        )),
        "tool_result" => {
            let inner = p.get("content").map(content_text).unwrap_or_default();
            Some(format!("[tool_result] {inner}"))
        }
        // Model-internal reasoning carried in history is not prompt text.
        "thinking" | "redacted_thinking" | "reasoning" => None,
        _ => p.get("text").and_then(Value::as_str).map(str::to_string),
    }
}

/// `[tool_call name: {args}]`. `args` may be a JSON string (OpenAI) or a value.
pub(crate) fn tool_call_marker(name: &str, args: Option<&Value>) -> String {
    match args {
        Some(Value::String(s)) => format!("[tool_call {name}: {s}]"),
        Some(Value::Null) | None => format!("[tool_call {name}]"),
        Some(v) => format!("[tool_call {name}: {v}]"),
    }
}

/// Join `role: text` lines, skipping empty texts.
pub(crate) fn push_line(lines: &mut Vec<String>, role: &str, text: &str) {
    if !text.is_empty() {
        lines.push(format!("{role}: {text}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_parts_render_text_and_markers() {
        let v = json!([
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:..."}},
            {"type": "tool_use", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_result", "content": [{"type": "text", "text": "12C"}]},
            {"type": "thinking", "thinking": "secret plan"},
            7,
        ]);
        assert_eq!(
            content_text(&v),
            "look\n[image]\n[tool_call get_weather: {\"city\":\"Oslo\"}]\n[tool_result] 12C"
        );
        assert_eq!(content_text(&json!(null)), "");
        assert_eq!(content_text(&json!("s")), "s");
    }
}
