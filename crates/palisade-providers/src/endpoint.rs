//! Endpoint classification: from (provider, method, path) to the wire format
//! and the endpoint name recorded in an interaction.
//!
//! Classification is by path shape first (so OpenAI-compatible paths on any
//! provider, Gemini's OpenAI-compatible API, and Anthropic-compatible paths
//! are recognised), with the provider id only as a hint for unknown paths.
//! It must never fail: anything it does not recognise is `"unknown"`.

/// Wire format family. OpenAI-compatible providers (azure-openai,
/// openrouter, groq, mistral, xai, deepseek, copilot, cohere's compat API)
/// use `OpenAi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiFormat {
    OpenAi,
    Anthropic,
    Gemini,
    Unknown,
}

impl ApiFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            ApiFormat::OpenAi => "openai",
            ApiFormat::Anthropic => "anthropic",
            ApiFormat::Gemini => "gemini",
            ApiFormat::Unknown => "unknown",
        }
    }

    /// The format family a provider id speaks by default.
    pub fn for_provider(provider: &str) -> ApiFormat {
        match provider.to_ascii_lowercase().as_str() {
            "anthropic" => ApiFormat::Anthropic,
            "gemini" | "google" | "vertex" | "vertex-ai" | "vertex_ai" => ApiFormat::Gemini,
            "openai" | "azure-openai" | "azure" | "openrouter" | "groq" | "mistral" | "xai" | "deepseek"
            | "copilot" | "cohere" | "together" | "fireworks" | "perplexity" => ApiFormat::OpenAi,
            _ => ApiFormat::Unknown,
        }
    }
}

/// Endpoint names recorded in `Interaction.endpoint`.
pub mod names {
    pub const CHAT_COMPLETIONS: &str = "chat.completions";
    pub const RESPONSES: &str = "responses";
    pub const EMBEDDINGS: &str = "embeddings";
    pub const MESSAGES: &str = "messages";
    pub const GENERATE_CONTENT: &str = "generateContent";
    pub const STREAM_GENERATE_CONTENT: &str = "streamGenerateContent";
    pub const UNKNOWN: &str = "unknown";
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Provider id from policy, e.g. `openai`, `azure-openai`.
    pub provider: String,
    pub format: ApiFormat,
    /// `chat.completions` | `responses` | `embeddings` | `messages` |
    /// `generateContent` | `streamGenerateContent` | `unknown`.
    pub name: &'static str,
    /// Gemini: `/v1beta/models/{model}:generateContent`;
    /// Azure: `/openai/deployments/{deployment}/chat/completions`.
    pub model_from_path: Option<String>,
    /// Gemini `streamGenerateContent` (with or without `?alt=sse`).
    pub stream_from_path: bool,
}

impl Endpoint {
    /// Whether this is an endpoint the parsers understand.
    pub fn is_known(&self) -> bool {
        self.name != names::UNKNOWN
    }

    /// Gemini stream with `?alt=sse`. [`crate::StreamParser`] detects the
    /// framing by itself; this is informational.
    pub fn is_known_stream(&self) -> bool {
        self.stream_from_path
    }
}

/// Classify a request. Never fails; unrecognised paths get name `"unknown"`
/// and the provider's default format family.
pub fn classify(provider: &str, method: &str, path_and_query: &str) -> Endpoint {
    let (path, _query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    // Absolute-form request targets (plain-HTTP forward proxying) carry a
    // scheme and authority: keep only the path.
    let path = strip_authority(path);
    let path = path.trim_end_matches('/');
    let mut ep = Endpoint {
        provider: provider.to_string(),
        format: ApiFormat::for_provider(provider),
        name: names::UNKNOWN,
        model_from_path: None,
        stream_from_path: false,
    };
    if !method.eq_ignore_ascii_case("POST") {
        return ep;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(last) = segments.last().copied() else {
        return ep;
    };

    // Gemini: .../models/{model}:generateContent (also tunedModels/, Vertex publishers/google/models/).
    if let Some((model, action)) = last.split_once(':') {
        let name = match action {
            "generateContent" => Some(names::GENERATE_CONTENT),
            "streamGenerateContent" => Some(names::STREAM_GENERATE_CONTENT),
            _ => None,
        };
        if let Some(name) = name {
            ep.format = ApiFormat::Gemini;
            ep.name = name;
            ep.stream_from_path = name == names::STREAM_GENERATE_CONTENT;
            if !model.is_empty() {
                ep.model_from_path = Some(percent_decode(model));
            }
        }
        return ep;
    }

    let azure_deployment = deployment_from_path(&segments);
    let name = match last {
        "completions" if segments.len() >= 2 && segments[segments.len() - 2] == "chat" => {
            Some((ApiFormat::OpenAi, names::CHAT_COMPLETIONS))
        }
        "responses" => Some((ApiFormat::OpenAi, names::RESPONSES)),
        "embeddings" => Some((ApiFormat::OpenAi, names::EMBEDDINGS)),
        // Anthropic: /v1/messages. Not OpenAI Assistants' /v1/threads/{id}/messages.
        "messages" if !segments.contains(&"threads") => Some((ApiFormat::Anthropic, names::MESSAGES)),
        _ => None,
    };
    if let Some((format, name)) = name {
        ep.format = format;
        ep.name = name;
        ep.model_from_path = azure_deployment;
    }
    ep
}

fn strip_authority(path: &str) -> &str {
    for scheme in ["https://", "http://"] {
        if let Some(rest) = path.strip_prefix(scheme) {
            return rest.find('/').map(|i| &rest[i..]).unwrap_or("");
        }
    }
    path
}

/// Azure OpenAI: `/openai/deployments/{deployment}/...`.
fn deployment_from_path(segments: &[&str]) -> Option<String> {
    let i = segments.iter().position(|s| *s == "deployments")?;
    let d = segments.get(i + 1)?;
    // The deployment must not itself be the endpoint segment.
    if i + 2 < segments.len() {
        Some(percent_decode(d))
    } else {
        None
    }
}

/// Minimal percent-decoding for path segments; invalid escapes are kept as-is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_paths() {
        let ep = classify("openai", "POST", "/v1/chat/completions");
        assert_eq!((ep.format, ep.name), (ApiFormat::OpenAi, "chat.completions"));
        assert_eq!(ep.model_from_path, None);
        assert!(!ep.stream_from_path);
        assert_eq!(classify("openai", "POST", "/v1/responses").name, "responses");
        assert_eq!(classify("openai", "post", "/v1/embeddings/").name, "embeddings");
        // Compatible providers with other prefixes.
        assert_eq!(classify("groq", "POST", "/openai/v1/chat/completions").name, "chat.completions");
        assert_eq!(classify("openrouter", "POST", "/api/v1/chat/completions").name, "chat.completions");
        assert_eq!(classify("copilot", "POST", "/chat/completions").name, "chat.completions");
        // Gemini's OpenAI-compatible API is OpenAI format.
        let ep = classify("gemini", "POST", "/v1beta/openai/chat/completions");
        assert_eq!((ep.format, ep.name), (ApiFormat::OpenAi, "chat.completions"));
    }

    #[test]
    fn azure_deployment_is_the_model() {
        let ep = classify(
            "azure-openai",
            "POST",
            "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21",
        );
        assert_eq!(ep.name, "chat.completions");
        assert_eq!(ep.model_from_path.as_deref(), Some("my-gpt4o"));
        let ep = classify("azure-openai", "POST", "/openai/deployments/emb/embeddings");
        assert_eq!(ep.model_from_path.as_deref(), Some("emb"));
    }

    #[test]
    fn anthropic_paths() {
        let ep = classify("anthropic", "POST", "/v1/messages");
        assert_eq!((ep.format, ep.name), (ApiFormat::Anthropic, "messages"));
        assert_eq!(classify("anthropic", "POST", "/v1/messages/count_tokens").name, "unknown");
        assert_eq!(classify("anthropic", "POST", "/v1/messages/batches").name, "unknown");
        // OpenAI Assistants thread messages are not Anthropic messages.
        assert_eq!(classify("openai", "POST", "/v1/threads/t_1/messages").name, "unknown");
        // DeepSeek's Anthropic-compatible API.
        let ep = classify("deepseek", "POST", "/anthropic/v1/messages");
        assert_eq!(ep.format, ApiFormat::Anthropic);
    }

    #[test]
    fn gemini_paths() {
        let ep = classify("gemini", "POST", "/v1beta/models/gemini-2.5-pro:generateContent");
        assert_eq!((ep.format, ep.name), (ApiFormat::Gemini, "generateContent"));
        assert_eq!(ep.model_from_path.as_deref(), Some("gemini-2.5-pro"));
        assert!(!ep.stream_from_path);
        let ep = classify(
            "gemini",
            "POST",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=x",
        );
        assert_eq!(ep.name, "streamGenerateContent");
        assert!(ep.stream_from_path);
        assert_eq!(ep.model_from_path.as_deref(), Some("gemini-2.5-flash"));
        let ep = classify(
            "vertex",
            "POST",
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash%2D001:streamGenerateContent",
        );
        assert_eq!(ep.model_from_path.as_deref(), Some("gemini-2.0-flash-001"));
        assert_eq!(classify("gemini", "POST", "/v1beta/models/gemini-2.5-pro:countTokens").name, "unknown");
    }

    #[test]
    fn unknown_endpoints() {
        for (m, p) in [
            ("GET", "/v1/models"),
            ("GET", "/v1/chat/completions"),
            ("POST", "/"),
            ("POST", ""),
            ("POST", "/v1/audio/speech"),
            ("POST", "/v1/completions"),
            ("POST", "?x=/chat/completions"),
            ("POST", ":"),
            ("POST", "/%"),
        ] {
            let ep = classify("openai", m, p);
            assert_eq!(ep.name, "unknown", "{m} {p}");
            assert!(!ep.is_known());
        }
        assert_eq!(classify("mystery", "GET", "/x").format, ApiFormat::Unknown);
        assert_eq!(classify("anthropic", "GET", "/x").format, ApiFormat::Anthropic);
    }

    #[test]
    fn absolute_form_targets() {
        let ep = classify("openai", "POST", "http://api.openai.com/v1/chat/completions");
        assert_eq!(ep.name, "chat.completions");
    }
}
