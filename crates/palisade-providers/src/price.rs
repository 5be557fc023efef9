//! Model price table in LiteLLM's `model_prices_and_context_window.json`
//! format, and the cost of one interaction's usage.
//!
//! Cost must never be made up: an unknown model, missing usage, or a
//! missing price for a component that has tokens gives `None`, never 0.
//!
//! Model lookup rule ([`PriceTable::cost`]): the model name is lower-cased
//! and a leading `models/` is dropped. Candidates are tried in order, first
//! hit wins:
//! 1. the name as given, then each suffix after a `/` (so
//!    `openai/gpt-4o` also tries `gpt-4o`);
//! 2. for each of those, the name itself, then with a trailing date removed
//!    (`-YYYY-MM-DD`, `-YYYYMMDD` or `@YYYYMMDD`: `gpt-4o-2024-08-06` ->
//!    `gpt-4o`, `claude-sonnet-4-5-20250929` -> `claude-sonnet-4-5`);
//! 3. for each of those, first with the provider's LiteLLM prefix
//!    (`gemini/`, `mistral/`, `xai/`, `deepseek/`, `groq/`, `azure/`, ...),
//!    then bare.
//!
//! Pricing rule ([`PriceTable::cost_with_cache_writes`]), on normalised
//! usage (see [`crate::ParsedResponse`]): uncached input at
//! `input_cost_per_token`, cached reads at `cache_read_input_token_cost`
//! (input price if absent), cache writes at `cache_creation_input_token_cost`
//! (input price if absent), non-reasoning output at `output_cost_per_token`,
//! reasoning at `output_cost_per_reasoning_token` (output price if absent).
//! Each token is priced exactly once. When total input exceeds 200k tokens
//! and the entry has `*_above_200k_tokens` rates, those are used.

use palisade_core::Usage;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::OnceLock;

const BUILTIN_JSON: &str = include_str!("../data/model_prices.json");
const TIER_THRESHOLD: u64 = 200_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PriceError {
    #[error("price table is not valid JSON: {0}")]
    Json(String),
    #[error("price table must be a JSON object of model name -> prices, found {0}")]
    NotAnObject(&'static str),
    #[error("price table entry {model:?}: field {field:?} {reason}")]
    InvalidPrice {
        model: String,
        field: &'static str,
        reason: &'static str,
    },
}

/// Prices in USD per token for one model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelPrice {
    pub litellm_provider: Option<String>,
    pub input_cost_per_token: Option<f64>,
    pub output_cost_per_token: Option<f64>,
    pub cache_read_input_token_cost: Option<f64>,
    pub cache_creation_input_token_cost: Option<f64>,
    pub output_cost_per_reasoning_token: Option<f64>,
    pub input_cost_per_token_above_200k_tokens: Option<f64>,
    pub output_cost_per_token_above_200k_tokens: Option<f64>,
    pub cache_read_input_token_cost_above_200k_tokens: Option<f64>,
    pub cache_creation_input_token_cost_above_200k_tokens: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    /// Lower-cased model key -> prices.
    models: HashMap<String, ModelPrice>,
}

// === impl PriceTable ===

impl PriceTable {
    /// The embedded default table (a LiteLLM-format file in this crate's
    /// `data/model_prices.json`, covering OpenAI, Anthropic, Gemini,
    /// Mistral, xAI, DeepSeek and Groq models at list prices).
    pub fn builtin() -> Self {
        static BUILTIN: OnceLock<PriceTable> = OnceLock::new();
        BUILTIN
            // The embedded file is checked by a unit test; an empty table prices nothing (None), never 0.
            .get_or_init(|| PriceTable::from_litellm_json(BUILTIN_JSON).unwrap_or_default())
            .clone()
    }

    /// Parse a LiteLLM price file. Non-object entries and `sample_spec` are
    /// ignored, as are fields this table does not use; a used price field
    /// that is not a non-negative number is an error naming the entry.
    pub fn from_litellm_json(s: &str) -> Result<Self, PriceError> {
        let v: Value = serde_json::from_str(s).map_err(|e| PriceError::Json(e.to_string()))?;
        let Value::Object(map) = v else {
            return Err(PriceError::NotAnObject(crate::request::kind_of(&v)));
        };
        let mut models = HashMap::with_capacity(map.len());
        for (name, entry) in &map {
            if name == "sample_spec" {
                continue;
            }
            let Value::Object(o) = entry else { continue };
            let field = |key: &'static str| -> Result<Option<f64>, PriceError> {
                match o.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Number(n)) => match n.as_f64() {
                        Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
                        _ => Err(PriceError::InvalidPrice {
                            model: name.clone(),
                            field: key,
                            reason: "must be a non-negative number",
                        }),
                    },
                    Some(_) => Err(PriceError::InvalidPrice {
                        model: name.clone(),
                        field: key,
                        reason: "must be a number",
                    }),
                }
            };
            let price = ModelPrice {
                litellm_provider: o.get("litellm_provider").and_then(Value::as_str).map(str::to_string),
                input_cost_per_token: field("input_cost_per_token")?,
                output_cost_per_token: field("output_cost_per_token")?,
                cache_read_input_token_cost: field("cache_read_input_token_cost")?,
                cache_creation_input_token_cost: field("cache_creation_input_token_cost")?,
                output_cost_per_reasoning_token: field("output_cost_per_reasoning_token")?,
                input_cost_per_token_above_200k_tokens: field("input_cost_per_token_above_200k_tokens")?,
                output_cost_per_token_above_200k_tokens: field("output_cost_per_token_above_200k_tokens")?,
                cache_read_input_token_cost_above_200k_tokens: field("cache_read_input_token_cost_above_200k_tokens")?,
                cache_creation_input_token_cost_above_200k_tokens: field(
                    "cache_creation_input_token_cost_above_200k_tokens",
                )?,
            };
            models.insert(name.trim().to_ascii_lowercase(), price);
        }
        Ok(Self { models })
    }

    /// `other`'s entries replace this table's, whole entry per model key.
    pub fn with_overrides(mut self, other: PriceTable) -> Self {
        self.models.extend(other.models);
        self
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The entry a (provider, model) pair resolves to, with its table key.
    /// See the module docs for the lookup rule.
    pub fn lookup(&self, provider: &str, model: &str) -> Option<(&str, &ModelPrice)> {
        for key in candidates(provider, model) {
            if let Some((k, p)) = self.models.get_key_value(&key) {
                return Some((k.as_str(), p));
            }
        }
        None
    }

    /// Cost in USD of `usage`, or `None` when it cannot be known.
    pub fn cost(&self, provider: &str, model: &str, usage: &Usage) -> Option<f64> {
        self.cost_with_cache_writes(provider, model, usage, None)
    }

    /// As [`PriceTable::cost`], pricing `cache_creation_input_tokens`
    /// (Anthropic cache writes, a subset of `usage.input_tokens`) at the
    /// cache-write rate.
    pub fn cost_with_cache_writes(
        &self,
        provider: &str,
        model: &str,
        usage: &Usage,
        cache_creation_input_tokens: Option<u64>,
    ) -> Option<f64> {
        let (_, p) = self.lookup(provider, model)?;
        if usage.input_tokens.is_none() && usage.output_tokens.is_none() {
            return None;
        }
        let input = usage.input_tokens.unwrap_or(0);
        let cached = usage.cached_input_tokens.unwrap_or(0).min(input);
        let writes = cache_creation_input_tokens.unwrap_or(0).min(input - cached);
        let uncached = input - cached - writes;
        let output = usage.output_tokens.unwrap_or(0);
        let reasoning = usage.reasoning_tokens.unwrap_or(0).min(output);
        let plain_output = output - reasoning;

        let high = input > TIER_THRESHOLD;
        let tier = |base: Option<f64>, above: Option<f64>| if high { above.or(base) } else { base };
        let in_rate = tier(p.input_cost_per_token, p.input_cost_per_token_above_200k_tokens);
        let out_rate = tier(p.output_cost_per_token, p.output_cost_per_token_above_200k_tokens);
        let read_rate = tier(p.cache_read_input_token_cost, p.cache_read_input_token_cost_above_200k_tokens).or(in_rate);
        let write_rate = tier(
            p.cache_creation_input_token_cost,
            p.cache_creation_input_token_cost_above_200k_tokens,
        )
        .or(in_rate);
        let reasoning_rate = p.output_cost_per_reasoning_token.or(out_rate);

        let part = |tokens: u64, rate: Option<f64>| -> Option<f64> {
            if tokens == 0 {
                Some(0.0)
            } else {
                rate.map(|r| tokens as f64 * r)
            }
        };
        let total = part(uncached, in_rate)?
            + part(cached, read_rate)?
            + part(writes, write_rate)?
            + part(plain_output, out_rate)?
            + part(reasoning, reasoning_rate)?;
        Some(total)
    }
}

/// LiteLLM key prefixes for a provider id.
fn provider_prefixes(provider: &str) -> &'static [&'static str] {
    match provider.to_ascii_lowercase().as_str() {
        "openai" => &["openai"],
        "azure-openai" | "azure" => &["azure"],
        "anthropic" => &["anthropic"],
        "gemini" | "google" => &["gemini"],
        "vertex" | "vertex-ai" | "vertex_ai" => &["vertex_ai", "gemini"],
        "mistral" => &["mistral"],
        "xai" => &["xai"],
        "deepseek" => &["deepseek"],
        "groq" => &["groq"],
        "openrouter" => &["openrouter"],
        "cohere" => &["cohere_chat", "cohere"],
        "copilot" => &["github_copilot"],
        _ => &[],
    }
}

fn candidates(provider: &str, model: &str) -> Vec<String> {
    let m = model.trim().to_ascii_lowercase();
    let m = m.strip_prefix("models/").unwrap_or(&m).to_string();
    if m.is_empty() {
        return Vec::new();
    }
    let mut bases = vec![m.clone()];
    let mut rest = m.as_str();
    while let Some((_, after)) = rest.split_once('/') {
        if !after.is_empty() {
            bases.push(after.to_string());
        }
        rest = after;
    }
    let mut out = Vec::new();
    for base in bases {
        let mut variants = vec![base.clone()];
        if let Some(u) = undated(&base) {
            variants.push(u.to_string());
        }
        for v in variants {
            for prefix in provider_prefixes(provider) {
                out.push(format!("{prefix}/{v}"));
            }
            out.push(v);
        }
    }
    out
}

/// Strip a trailing `-YYYY-MM-DD`, `-YYYYMMDD` or `@YYYYMMDD`.
fn undated(name: &str) -> Option<&str> {
    let b = name.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let n = b.len();
    if n > 11 {
        let t = &b[n - 11..];
        if t[0] == b'-' && digits(&t[1..5]) && t[5] == b'-' && digits(&t[6..8]) && t[8] == b'-' && digits(&t[9..]) {
            return Some(&name[..n - 11]);
        }
    }
    if n > 9 {
        let t = &b[n - 9..];
        if (t[0] == b'-' || t[0] == b'@') && digits(&t[1..]) && (t[1] == b'2' || t[1] == b'1') {
            return Some(&name[..n - 9]);
        }
    }
    None
}

#[cfg(test)]
mod tests;
