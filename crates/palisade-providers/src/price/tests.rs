use super::*;

fn usage(input: u64, output: u64, cached: u64, reasoning: u64) -> Usage {
    Usage {
        input_tokens: Some(input),
        output_tokens: Some(output),
        cached_input_tokens: Some(cached),
        reasoning_tokens: Some(reasoning),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn builtin_table_parses_and_covers_providers() {
    let t = PriceTable::from_litellm_json(BUILTIN_JSON).expect("embedded table parses");
    assert!(t.len() > 200);
    for (provider, model) in [
        ("openai", "gpt-4o"),
        ("openai", "gpt-5"),
        ("openai", "o3"),
        ("openai", "text-embedding-3-small"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"),
        ("gemini", "gemini-2.5-pro"),
        ("gemini", "gemini-2.5-flash"),
        ("mistral", "mistral-large-latest"),
        ("xai", "grok-code-fast-1"),
        ("deepseek", "deepseek-chat"),
        ("groq", "openai/gpt-oss-120b"),
    ] {
        assert!(PriceTable::builtin().lookup(provider, model).is_some(), "{provider} {model}");
    }
}

#[test]
fn openai_cached_and_reasoning_are_priced_once() {
    let t = PriceTable::builtin();
    // gpt-4o: $2.50/M input, $1.25/M cached, $10/M output.
    let c = t.cost("openai", "gpt-4o", &usage(2006, 300, 1920, 192)).unwrap();
    let want = 86.0 * 2.5e-6 + 1920.0 * 1.25e-6 + 300.0 * 1e-5;
    assert!(close(c, want), "{c} vs {want}");
    // Reasoning without its own rate is priced as output, not added again.
    let no_reasoning = t.cost("openai", "gpt-4o", &usage(2006, 300, 1920, 0)).unwrap();
    assert!(close(c, no_reasoning));
}

#[test]
fn reasoning_rate_used_when_present() {
    let t = PriceTable::from_litellm_json(
        r#"{"r1": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "output_cost_per_reasoning_token": 5e-6}}"#,
    )
    .unwrap();
    let c = t.cost("x", "r1", &usage(10, 100, 0, 40)).unwrap();
    assert!(close(c, 10.0 * 1e-6 + 60.0 * 2e-6 + 40.0 * 5e-6));
}

#[test]
fn anthropic_cache_reads_and_writes() {
    let t = PriceTable::builtin();
    // claude-sonnet-4-5: $3/M in, $0.30/M cache read, $3.75/M cache write, $15/M out.
    let u = usage(3050, 120, 2000, 0);
    let with_writes = t
        .cost_with_cache_writes("anthropic", "claude-sonnet-4-5-20250929", &u, Some(1000))
        .unwrap();
    let want = 50.0 * 3e-6 + 2000.0 * 3e-7 + 1000.0 * 3.75e-6 + 120.0 * 1.5e-5;
    assert!(close(with_writes, want), "{with_writes} vs {want}");
    let without = t.cost("anthropic", "claude-sonnet-4-5-20250929", &u).unwrap();
    assert!(close(without, want - 1000.0 * 0.75e-6));
}

#[test]
fn gemini_long_context_tier() {
    let t = PriceTable::builtin();
    let small = t.cost("gemini", "gemini-2.5-pro", &usage(100_000, 1000, 0, 0)).unwrap();
    assert!(close(small, 100_000.0 * 1.25e-6 + 1000.0 * 1e-5));
    let big = t.cost("gemini", "models/gemini-2.5-pro", &usage(300_000, 1000, 0, 0)).unwrap();
    assert!(close(big, 300_000.0 * 2.5e-6 + 1000.0 * 1.5e-5));
}

#[test]
fn lookup_rule_prefixes_and_dates() {
    let t = PriceTable::builtin();
    let key = |p: &str, m: &str| t.lookup(p, m).map(|(k, _)| k.to_string());
    assert_eq!(key("openai", "gpt-4o").as_deref(), Some("gpt-4o"));
    assert_eq!(key("openai", "openai/gpt-4o").as_deref(), Some("gpt-4o"));
    assert_eq!(key("openai", "GPT-4o").as_deref(), Some("gpt-4o"));
    // Exact dated entry wins over the undated one.
    assert_eq!(key("openai", "gpt-4o-2024-08-06").as_deref(), Some("gpt-4o-2024-08-06"));
    // A date the table does not list falls back.
    assert_eq!(key("openai", "gpt-4o-2099-01-31").as_deref(), Some("gpt-4o"));
    assert_eq!(key("anthropic", "claude-sonnet-4-5-20991231").as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(key("gemini", "gemini-2.5-pro").as_deref(), Some("gemini/gemini-2.5-pro"));
    assert_eq!(key("gemini", "gemini/gemini-2.5-pro").as_deref(), Some("gemini/gemini-2.5-pro"));
    assert_eq!(key("openrouter", "mistral/mistral-large-latest").as_deref(), Some("mistral/mistral-large-latest"));
    assert_eq!(key("mistral", "mistral-large-latest").as_deref(), Some("mistral/mistral-large-latest"));
    assert_eq!(undated("gpt-4o-2024-08-06"), Some("gpt-4o"));
    assert_eq!(undated("claude-3-5-sonnet@20240620"), Some("claude-3-5-sonnet"));
    assert_eq!(undated("gpt-4-0613"), None);
    assert_eq!(undated("-20240101"), None);
}

#[test]
fn unknown_model_or_usage_is_none_never_zero() {
    let t = PriceTable::builtin();
    assert_eq!(t.cost("openai", "my-private-model", &usage(10, 10, 0, 0)), None);
    assert_eq!(t.cost("openai", "", &usage(10, 10, 0, 0)), None);
    assert_eq!(t.cost("openai", "gpt-4o", &Usage::default()), None);
    // Zero tokens with a known model is a real 0.
    assert_eq!(t.cost("openai", "gpt-4o", &usage(0, 0, 0, 0)), Some(0.0));
    // An entry without an output price cannot price output tokens.
    let partial = PriceTable::from_litellm_json(r#"{"m": {"input_cost_per_token": 1e-6}}"#).unwrap();
    assert_eq!(partial.cost("x", "m", &usage(10, 5, 0, 0)), None);
    assert_eq!(partial.cost("x", "m", &usage(10, 0, 0, 0)), Some(10.0 * 1e-6));
}

#[test]
fn inconsistent_usage_is_clamped() {
    let t = PriceTable::from_litellm_json(
        r#"{"m": {"input_cost_per_token": 1.0, "output_cost_per_token": 2.0, "cache_read_input_token_cost": 0.5}}"#,
    )
    .unwrap();
    // cached > input and reasoning > output: never negative, never double.
    let c = t.cost("x", "m", &usage(10, 4, 50, 9)).unwrap();
    assert!(close(c, 10.0 * 0.5 + 4.0 * 2.0));
}

#[test]
fn user_override_file_replaces_builtin_per_model() {
    let user = PriceTable::from_litellm_json(
        r#"{
            "sample_spec": {"input_cost_per_token": "not a number"},
            "gpt-4o": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "litellm_provider": "openai"},
            "acme-internal-llm": {"input_cost_per_token": 0.0, "output_cost_per_token": 1e-7},
            "broken": [1, 2],
            "note": "strings are ignored"
        }"#,
    )
    .unwrap();
    let t = PriceTable::builtin().with_overrides(user);
    let c = t.cost("openai", "gpt-4o", &usage(1000, 1000, 500, 0)).unwrap();
    // The override has no cache rate: cached input falls back to its input price.
    assert!(close(c, 1000.0 * 1e-6 + 1000.0 * 2e-6));
    assert!(close(t.cost("acme", "acme-internal-llm", &usage(5, 10, 0, 0)).unwrap(), 10.0 * 1e-7));
    // Untouched models keep builtin prices.
    assert!(t.lookup("anthropic", "claude-haiku-4-5").is_some());
}

#[test]
fn bad_price_files_give_clear_errors() {
    assert!(matches!(PriceTable::from_litellm_json("{"), Err(PriceError::Json(_))));
    assert_eq!(
        PriceTable::from_litellm_json("[]").unwrap_err(),
        PriceError::NotAnObject("an array")
    );
    assert_eq!(
        PriceTable::from_litellm_json(r#"{"m": {"input_cost_per_token": "0.1"}}"#)
            .unwrap_err()
            .to_string(),
        "price table entry \"m\": field \"input_cost_per_token\" must be a number"
    );
    assert_eq!(
        PriceTable::from_litellm_json(r#"{"m": {"output_cost_per_token": -1}}"#).unwrap_err(),
        PriceError::InvalidPrice {
            model: "m".into(),
            field: "output_cost_per_token",
            reason: "must be a non-negative number"
        }
    );
    // Fields we do not use may hold anything (LiteLLM has nested cost objects).
    let t = PriceTable::from_litellm_json(
        r#"{"m": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6, "search_context_cost_per_query": {"low": 0.01}}}"#,
    )
    .unwrap();
    assert_eq!(t.len(), 1);
}
