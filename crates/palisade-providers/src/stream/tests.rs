use super::*;
use crate::classify;

const CHAT_SSE: &str = include_str!("../../tests/fixtures/openai_chat_stream.sse");
const RESPONSES_SSE: &str = include_str!("../../tests/fixtures/openai_responses_stream.sse");
const ANTHROPIC_SSE: &str = include_str!("../../tests/fixtures/anthropic_messages_stream.sse");
const GEMINI_SSE: &str = include_str!("../../tests/fixtures/gemini_stream.sse");
const GEMINI_ARRAY: &str = include_str!("../../tests/fixtures/gemini_stream_array.json");

fn chat() -> Endpoint {
    classify("openai", "POST", "/v1/chat/completions")
}
fn responses() -> Endpoint {
    classify("openai", "POST", "/v1/responses")
}
fn messages() -> Endpoint {
    classify("anthropic", "POST", "/v1/messages")
}
fn gemini_sse() -> Endpoint {
    classify("gemini", "POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
}
fn gemini_array() -> Endpoint {
    classify("gemini", "POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent")
}

fn all_fixtures() -> Vec<(&'static str, Endpoint, &'static str)> {
    vec![
        ("chat", chat(), CHAT_SSE),
        ("responses", responses(), RESPONSES_SSE),
        ("anthropic", messages(), ANTHROPIC_SSE),
        ("gemini-sse", gemini_sse(), GEMINI_SSE),
        ("gemini-array", gemini_array(), GEMINI_ARRAY),
    ]
}

fn parse_whole(ep: &Endpoint, body: &[u8]) -> (ParsedResponse, u64, bool) {
    let mut p = StreamParser::new(ep);
    p.feed(body);
    let (g, c) = (p.garbage_lines(), p.is_complete());
    (p.finish(), g, c)
}

/// A comparable summary of a parse result.
fn summary(r: &ParsedResponse) -> String {
    format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        r.model, r.text, r.stop_reason, r.usage, r.error, r.cache_creation_input_tokens
    )
}

/// Tiny deterministic PRNG (xorshift) so split tests need no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn openai_chat_stream() {
    let (r, garbage, complete) = parse_whole(&chat(), CHAT_SSE.as_bytes());
    assert_eq!(r.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(r.text.as_deref(), Some("Hello, wörld ☃"));
    assert_eq!(r.stop_reason.as_deref(), Some("stop"));
    assert_eq!(r.usage.input_tokens, Some(1200));
    assert_eq!(r.usage.output_tokens, Some(57));
    assert_eq!(r.usage.cached_input_tokens, Some(1024));
    assert_eq!(r.usage.reasoning_tokens, Some(0));
    assert_eq!(r.error, None);
    assert_eq!(garbage, 0);
    assert!(complete);
}

#[test]
fn openai_responses_stream() {
    let (r, garbage, complete) = parse_whole(&responses(), RESPONSES_SSE.as_bytes());
    assert_eq!(r.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert_eq!(r.text.as_deref(), Some("Hi there!"));
    assert_eq!(r.stop_reason.as_deref(), Some("completed"));
    assert_eq!(r.usage.input_tokens, Some(37));
    assert_eq!(r.usage.output_tokens, Some(11));
    assert_eq!(garbage, 0);
    assert!(complete);
}

#[test]
fn anthropic_stream_with_tool_use() {
    let (r, garbage, complete) = parse_whole(&messages(), ANTHROPIC_SSE.as_bytes());
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(
        r.text.as_deref(),
        Some("Hello!\n[tool_call get_weather: {\"location\": \"San Francisco\"}]")
    );
    assert_eq!(r.stop_reason.as_deref(), Some("tool_use"));
    // input 25 + cache read 4000 + cache write 0
    assert_eq!(r.usage.input_tokens, Some(4025));
    assert_eq!(r.usage.cached_input_tokens, Some(4000));
    assert_eq!(r.usage.output_tokens, Some(89));
    assert_eq!(r.cache_creation_input_tokens, Some(0));
    assert_eq!(garbage, 0);
    assert!(complete);
}

#[test]
fn gemini_sse_and_array_streams_agree() {
    let (a, ga, ca) = parse_whole(&gemini_sse(), GEMINI_SSE.as_bytes());
    assert_eq!(a.model.as_deref(), Some("gemini-2.5-pro"));
    assert_eq!(a.text.as_deref(), Some("The sky is blue."));
    assert_eq!(a.stop_reason.as_deref(), Some("STOP"));
    assert_eq!(a.usage.input_tokens, Some(9));
    // candidates 5 + thoughts 50
    assert_eq!(a.usage.output_tokens, Some(55));
    assert_eq!(a.usage.reasoning_tokens, Some(50));
    assert_eq!((ga, ca), (0, true));

    let (b, gb, cb) = parse_whole(&gemini_array(), GEMINI_ARRAY.as_bytes());
    assert_eq!(b.text.as_deref(), Some("The \"sky\" {is} [blue]."));
    assert_eq!(b.usage, a.usage);
    assert_eq!((gb, cb), (0, true));
}

#[test]
fn every_fixture_is_split_invariant() {
    for (name, ep, body) in all_fixtures() {
        let whole = parse_whole(&ep, body.as_bytes());
        let want = (summary(&whole.0), whole.1, whole.2);

        // One byte at a time.
        let mut p = StreamParser::new(&ep);
        for b in body.as_bytes() {
            p.feed(std::slice::from_ref(b));
        }
        let got = (p.garbage_lines(), p.is_complete());
        assert_eq!((summary(&p.finish()), got.0, got.1), want, "{name}: byte at a time");

        // Random splits, several seeds.
        for seed in 1..40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut p = StreamParser::new(&ep);
            let bytes = body.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                let n = 1 + (rng.next() % 64) as usize;
                let end = (i + n).min(bytes.len());
                p.feed(&bytes[i..end]);
                i = end;
            }
            let got = (p.garbage_lines(), p.is_complete());
            assert_eq!((summary(&p.finish()), got.0, got.1), want, "{name}: seed {seed}");
        }

        // CRLF line endings parse the same.
        let crlf = body.replace('\n', "\r\n");
        let r = parse_whole(&ep, crlf.as_bytes());
        assert_eq!((summary(&r.0), r.1, r.2), want, "{name}: crlf");
    }
}

#[test]
fn garbage_lines_are_counted_and_skipped() {
    let mut body = String::from("HTTP/1.1 junk\nnot a field\n");
    for (i, line) in CHAT_SSE.lines().enumerate() {
        body.push_str(line);
        body.push('\n');
        if i == 4 {
            body.push_str("data: {\"truncated\": \n\n");
            body.push_str("data: 42\n\n");
            body.push_str("data: \u{fffd}\u{fffd}not json\n\n");
        }
    }
    body.push_str("\u{0}\u{1}binary\n");
    let mut p = StreamParser::new(&chat());
    p.feed(body.as_bytes());
    p.feed(&[0xff, 0xfe, b'\n']); // invalid UTF-8 line
    assert_eq!(p.garbage_lines(), 7);
    let r = p.finish();
    assert_eq!(r.text.as_deref(), Some("Hello, wörld ☃"));
    assert_eq!(r.usage.input_tokens, Some(1200));
}

#[test]
fn interrupted_streams_keep_what_was_seen() {
    // Cut each fixture at every byte offset: never panics, and text seen is a
    // prefix of the full text.
    for (name, ep, body) in all_fixtures() {
        let full = parse_whole(&ep, body.as_bytes()).0.text.unwrap_or_default();
        for cut in 0..body.len() {
            let mut p = StreamParser::new(&ep);
            p.feed(&body.as_bytes()[..cut]);
            let r = p.finish();
            let t = r.text.unwrap_or_default();
            // Tool-call markers are closed on finish, so compare up to the marker.
            let cmp = t.split("[tool_call").next().unwrap_or("");
            assert!(full.starts_with(cmp), "{name} cut {cut}: {t:?} not a prefix of {full:?}");
        }
    }
}

#[test]
fn interrupted_anthropic_stream_has_partial_text_and_usage() {
    let cut = ANTHROPIC_SSE.find("event: content_block_stop").unwrap();
    let mut p = StreamParser::new(&messages());
    p.feed(&ANTHROPIC_SSE.as_bytes()[..cut]);
    assert!(!p.is_complete());
    let r = p.finish();
    assert_eq!(r.text.as_deref(), Some("Hello!"));
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    // message_start usage seen: input known, output as far as reported (1).
    assert_eq!(r.usage.input_tokens, Some(4025));
    assert_eq!(r.usage.output_tokens, Some(1));
    assert_eq!(r.stop_reason, None);
}

#[test]
fn interrupted_chat_stream_mid_line() {
    let cut = CHAT_SSE.find("wörld").unwrap();
    let mut p = StreamParser::new(&chat());
    p.feed(&CHAT_SSE.as_bytes()[..cut]);
    assert!(!p.is_complete());
    let r = p.finish();
    assert_eq!(r.text.as_deref(), Some("Hello"));
    assert_eq!(r.usage.input_tokens, None);
}

#[test]
fn anthropic_error_event() {
    let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\nevent: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
    let (r, _, complete) = parse_whole(&messages(), body.as_bytes());
    assert_eq!(r.error.as_deref(), Some("overloaded_error: Overloaded"));
    assert_eq!(r.usage.input_tokens, Some(10));
    assert!(!complete);
}

#[test]
fn responses_error_and_incomplete_events() {
    let body = "event: error\ndata: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"Slow down\",\"param\":null}\n\n";
    let (r, _, _) = parse_whole(&responses(), body.as_bytes());
    assert_eq!(r.error.as_deref(), Some("rate_limit_exceeded: Slow down"));

    let body = "data: {\"type\":\"response.output_text.delta\",\"delta\":\"Par\"}\n\ndata: {\"type\":\"response.incomplete\",\"response\":{\"model\":\"gpt-5\",\"status\":\"incomplete\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"usage\":{\"input_tokens\":5,\"output_tokens\":16,\"output_tokens_details\":{\"reasoning_tokens\":15}}}}\n\n";
    let (r, _, complete) = parse_whole(&responses(), body.as_bytes());
    assert_eq!(r.text.as_deref(), Some("Par"));
    assert_eq!(r.stop_reason.as_deref(), Some("max_output_tokens"));
    assert_eq!(r.usage.reasoning_tokens, Some(15));
    assert!(complete);
}

#[test]
fn openai_stream_error_payload_and_tool_calls() {
    let body = concat!(
        "data: {\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"lookup\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"q\\\":\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"error\":{\"message\":\"upstream went away\",\"type\":\"server_error\"}}\n\n",
    );
    let (r, _, complete) = parse_whole(&chat(), body.as_bytes());
    assert_eq!(r.text.as_deref(), Some("[tool_call lookup: {\"q\":1}]"));
    assert_eq!(r.stop_reason.as_deref(), Some("tool_calls"));
    assert_eq!(r.error.as_deref(), Some("server_error: upstream went away"));
    assert!(!complete);
}

#[test]
fn multiple_choices_are_kept_apart() {
    let body = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A\"}},{\"index\":1,\"delta\":{\"content\":\"B\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"b\"}},{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":99,\"delta\":{\"content\":\"ignored\"}}]}\n\n",
    );
    let (r, _, _) = parse_whole(&chat(), body.as_bytes());
    assert_eq!(r.text.as_deref(), Some("Aa\nBb"));
}

#[test]
fn data_split_over_several_lines() {
    let body = "data: {\"choices\":[{\"index\":0,\ndata: \"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n";
    let (r, g, c) = parse_whole(&chat(), body.as_bytes());
    assert_eq!(r.text.as_deref(), Some("x"));
    assert_eq!((g, c), (0, true));
}

#[test]
fn overlong_lines_are_dropped_with_bounded_memory() {
    let ep = chat();
    let mut p = StreamParser::with_limits(&ep, 64, 1024);
    p.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n");
    let big = vec![b'x'; 10_000];
    p.feed(b"data: ");
    p.feed(&big);
    p.feed(&big);
    p.feed(b"\n\ndata: [DONE]\n\n");
    assert_eq!(p.garbage_lines(), 1);
    assert!(p.is_complete());
    assert_eq!(p.finish().text.as_deref(), Some("ok"));

    // Same in JSON-array mode.
    let mut p = StreamParser::with_limits(&gemini_array(), 64, 1024);
    p.feed(b"[{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"");
    p.feed(&big);
    p.feed(b"\"}]}}]},{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"after\"}]}}]}]");
    assert_eq!(p.garbage_lines(), 1);
    assert_eq!(p.finish().text.as_deref(), Some("after"));
}

#[test]
fn text_is_capped() {
    let mut p = StreamParser::with_limits(&chat(), 1 << 20, 4);
    for _ in 0..3 {
        p.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abc\"}}]}\n\n");
    }
    let r = p.finish();
    assert_eq!(r.text.as_deref(), Some("abca"));
    assert!(r.text_truncated);
}

#[test]
fn json_error_body_on_a_streaming_request() {
    let body = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#;
    let (r, g, c) = parse_whole(&chat(), body);
    assert_eq!(r.error.as_deref(), Some("invalid_request_error: Incorrect API key provided"));
    assert_eq!((g, c), (0, false));
    let (r, _, _) = parse_whole(
        &gemini_array(),
        br#"[{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}]"#,
    );
    assert_eq!(r.error.as_deref(), Some("RESOURCE_EXHAUSTED: Quota exceeded"));
}

#[test]
fn unknown_endpoint_and_empty_streams() {
    let ep = classify("openai", "POST", "/v1/audio/speech");
    let (r, _, c) = parse_whole(&ep, CHAT_SSE.as_bytes());
    assert_eq!(summary(&r), summary(&ParsedResponse::default()));
    // The framing's own end marker (`[DONE]`) is still recognised.
    assert!(c);
    let (r, g, c) = parse_whole(&chat(), b"");
    assert_eq!(r.text, None);
    assert_eq!((g, c), (0, false));
    let (_, g, _) = parse_whole(&gemini_array(), b"[garbage, {\"x\":1}] trailing");
    assert_eq!(g, 2);
}

#[test]
fn debug_never_prints_text() {
    let mut p = StreamParser::new(&chat());
    p.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"sk-secret\"}}]}\n\n");
    assert!(!format!("{p:?}").contains("sk-secret"));
    let r = p.finish();
    assert!(!format!("{r:?}").contains("sk-secret"));
}
