//! Non-streaming response bodies (including provider error bodies): model,
//! text, stop reason and normalised usage.
//!
//! Must never panic: a body that is not JSON, or not the expected shape,
//! yields an `error` and whatever else could be read.

use crate::endpoint::{names, ApiFormat, Endpoint};
use crate::formats::{anthropic, gemini, openai};
use crate::json::{error_message, parse_body};
use crate::request::kind_of;
use crate::stream::{Acc, DEFAULT_MAX_TEXT};
use serde_json::Value;

/// What a response (or a stream, see [`crate::StreamParser`]) told us.
///
/// Usage is normalised across formats: `usage.input_tokens` counts all
/// input tokens including cached reads and cache writes,
/// `usage.cached_input_tokens` is the cached-read subset,
/// `usage.output_tokens` counts all output tokens including reasoning, and
/// `usage.reasoning_tokens` is the reasoning subset.
#[derive(Clone, Default)]
pub struct ParsedResponse {
    pub model: Option<String>,
    pub text: Option<String>,
    pub stop_reason: Option<String>,
    pub usage: palisade_core::Usage,
    pub error: Option<String>,
    /// Anthropic cache writes, already included in `usage.input_tokens`;
    /// priced at `cache_creation_input_token_cost` by
    /// [`crate::PriceTable::cost_with_cache_writes`].
    pub cache_creation_input_tokens: Option<u64>,
    /// `text` was cut at the parser's text limit.
    pub text_truncated: bool,
}

impl std::fmt::Debug for ParsedResponse {
    // Hand-written: the response text is captured content and never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedResponse")
            .field("model", &self.model)
            .field("text_bytes", &self.text.as_ref().map(String::len))
            .field("stop_reason", &self.stop_reason)
            .field("usage", &self.usage)
            .field("error", &self.error)
            .field("cache_creation_input_tokens", &self.cache_creation_input_tokens)
            .field("text_truncated", &self.text_truncated)
            .finish()
    }
}

/// Parse a non-streaming JSON response body. Provider error bodies (any
/// status) put their message into `error`; a status >= 400 without a
/// readable message gives `error = "upstream returned HTTP {status}"`.
pub fn parse_response(ep: &Endpoint, status: u16, body: &[u8]) -> ParsedResponse {
    if !ep.is_known() {
        return ParsedResponse::default();
    }
    let mut acc = Acc::new(DEFAULT_MAX_TEXT);
    match parse_body(body, "response") {
        Ok(v) => {
            apply_full(ep, &v, &mut acc);
        }
        Err(e) => {
            acc.error = Some(if status >= 400 { http_error(status, body) } else { e });
        }
    }
    if status >= 400 && acc.error.is_none() {
        acc.error = Some(http_error(status, b""));
    }
    acc.into_response()
}

/// Apply one complete JSON value (a whole response or error body).
pub(crate) fn apply_full(ep: &Endpoint, v: &Value, acc: &mut Acc) {
    if let Value::Array(items) = v {
        // Gemini's streamGenerateContent without alt=sse returns an array of chunks.
        if ep.format == ApiFormat::Gemini {
            for item in items {
                apply_full(ep, item, acc);
            }
        } else {
            acc.error = Some("response body is not a JSON object (found an array)".into());
        }
        return;
    }
    if !v.is_object() {
        acc.error = Some(format!("response body is not a JSON object (found {})", kind_of(v)));
        return;
    }
    if let Some(e) = error_message(v) {
        acc.error = Some(e);
        return;
    }
    match (ep.format, ep.name) {
        (ApiFormat::OpenAi, names::CHAT_COMPLETIONS) => openai::chat_response(v, acc),
        (ApiFormat::OpenAi, names::RESPONSES) => openai::responses_response(v, acc),
        (ApiFormat::OpenAi, names::EMBEDDINGS) => openai::embeddings_response(v, acc),
        (ApiFormat::Anthropic, names::MESSAGES) => anthropic::response(v, acc),
        (ApiFormat::Gemini, _) => gemini::on_chunk(v, acc),
        _ => {}
    }
}

fn http_error(status: u16, body: &[u8]) -> String {
    let snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
    let snippet = snippet.trim();
    if snippet.is_empty() {
        format!("upstream returned HTTP {status}")
    } else {
        format!("upstream returned HTTP {status}: {snippet}")
    }
}

#[cfg(test)]
mod tests;
