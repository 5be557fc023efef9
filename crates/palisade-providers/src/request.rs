//! Request bodies: model, stream flag, the prompt as `role: text` lines, and
//! non-content parameters.
//!
//! Must never panic and never fail hard: malformed bodies yield an `error`
//! plus whatever the path told us. `params` never holds message content.

use crate::endpoint::{names, ApiFormat, Endpoint};
use crate::formats::{anthropic, gemini, openai};
use crate::json::parse_body;
use serde_json::{Map, Value};

#[derive(Clone, Default)]
pub struct ParsedRequest {
    pub model: Option<String>,
    pub stream: bool,
    /// All prompt text with roles, one message per line group:
    /// `system: ...\nuser: ...\nassistant: ...`. Non-text parts appear as
    /// markers (`[image]`, `[tool_call name: {...}]`).
    pub prompt: Option<String>,
    /// Non-content parameters (temperature, max tokens, tool counts, ...).
    pub params: Value,
    pub error: Option<String>,
}

/// Parse a request body. Malformed JSON never panics: it returns
/// `error = Some("request body is not valid JSON: ...")` and whatever could
/// be known from the endpoint (model and stream from the path).
pub fn parse_request(ep: &Endpoint, body: &[u8]) -> ParsedRequest {
    let mut out = ParsedRequest {
        model: ep.model_from_path.clone(),
        stream: ep.stream_from_path,
        prompt: None,
        params: Value::Null,
        error: None,
    };
    if !ep.is_known() {
        return out;
    }
    out.params = Value::Object(Map::new());
    let v = match parse_body(body, "request") {
        Ok(v) => v,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    if !v.is_object() {
        out.error = Some(format!("request body is not a JSON object (found {})", kind_of(&v)));
        return out;
    }
    if let Some(m) = v.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()) {
        out.model = Some(m.to_string());
    }
    if let Some(s) = v.get("stream").and_then(Value::as_bool) {
        out.stream = out.stream || s;
    }
    match (ep.format, ep.name) {
        (ApiFormat::OpenAi, names::CHAT_COMPLETIONS) => openai::chat_request(&v, &mut out),
        (ApiFormat::OpenAi, names::RESPONSES) => openai::responses_request(&v, &mut out),
        (ApiFormat::OpenAi, names::EMBEDDINGS) => openai::embeddings_request(&v, &mut out),
        (ApiFormat::Anthropic, names::MESSAGES) => anthropic::request(&v, &mut out),
        (ApiFormat::Gemini, _) => gemini::request(&v, &mut out),
        _ => {}
    }
    out
}

impl std::fmt::Debug for ParsedRequest {
    // Hand-written: the prompt is captured content and never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedRequest")
            .field("model", &self.model)
            .field("stream", &self.stream)
            .field("prompt_bytes", &self.prompt.as_ref().map(String::len))
            .field("params", &self.params)
            .field("error", &self.error)
            .finish()
    }
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
