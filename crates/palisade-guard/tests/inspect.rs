//! End-to-end tests of `Guard::inspect_request` / `inspect_response_text`
//! over real provider body shapes, bad input and Unicode tricks.

use palisade_core::policy::{CustomRule, GuardAction, Guardrails};
use palisade_core::FindingLocation;
use palisade_guard::{Guard, GuardError, Verdict, VerdictAction};
use serde_json::{json, Value};

const AWS: &str = "AKIAZ5ZFKKIBJ5J6WJIB";
const CARD: &str = "4526 0181 5908 3012";

fn guard_with(default_action: GuardAction, actions: &[(&str, GuardAction)]) -> Guard {
    Guard::new(&Guardrails {
        default_action,
        actions: actions.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Guardrails::default()
    })
    .unwrap()
}

fn redacted_body(v: &Verdict) -> Value {
    match &v.action {
        VerdictAction::Redact { body } => {
            serde_json::from_slice(body).expect("redacted body parses")
        }
        other => panic!("expected Redact, got {other:?} (error {:?})", v.error),
    }
}

fn assert_no_values(v: &Verdict, values: &[&str]) {
    let rendered = format!("{:?} {}", v, serde_json::to_string(&v.findings).unwrap());
    for val in values {
        assert!(
            !rendered.contains(val),
            "value leaked into verdict: {rendered}"
        );
    }
}

fn count(v: &Verdict, detector: &str) -> u32 {
    v.findings
        .iter()
        .filter(|f| f.detector == detector)
        .map(|f| f.count)
        .sum()
}

#[test]
fn openai_chat_redaction_rewrites_only_content() {
    let g = guard_with(GuardAction::Redact, &[]);
    let body = json!({
        "model": "gpt-4o",
        "temperature": 0.25,
        "messages": [
            {"role": "system", "content": "You help jane@acme.io with billing."},
            {"role": "user", "content": [
                {"type": "text", "text": format!("my key {AWS} and card {CARD}")},
                {"type": "image_url", "image_url": {"url": "https://img.example/jane@acme.io.png"}}
            ]},
            {"role": "user", "content": format!("again {AWS}, and bob@acme.io, then jane@acme.io")}
        ],
        "user": "jane@acme.io"
    });
    let raw = serde_json::to_vec_pretty(&body).unwrap();
    let v = g.inspect_request("chat.completions", &raw);
    let out = redacted_body(&v);
    assert_eq!(
        out["messages"][0]["content"],
        "You help [EMAIL_1] with billing."
    );
    assert_eq!(
        out["messages"][1]["content"][0]["text"],
        "my key [AWS_ACCESS_KEY_1] and card [CREDIT_CARD_1]"
    );
    assert_eq!(
        out["messages"][2]["content"],
        "again [AWS_ACCESS_KEY_1], and [EMAIL_2], then [EMAIL_1]"
    );
    // Not message content: untouched.
    assert_eq!(
        out["messages"][1]["content"][1],
        body["messages"][1]["content"][1]
    );
    assert_eq!(out["user"], "jane@acme.io");
    assert_eq!(out["model"], "gpt-4o");
    assert_eq!(out["temperature"], 0.25);
    // Every byte outside the rewritten strings is the original's.
    let VerdictAction::Redact { body: new } = &v.action else {
        unreachable!()
    };
    let raw_s = String::from_utf8(raw.clone()).unwrap();
    let new_s = String::from_utf8(new.clone()).unwrap();
    let head = raw_s.find("You help").unwrap();
    assert_eq!(raw_s[..head], new_s[..head]);
    assert!(new_s.ends_with(&raw_s[raw_s.rfind("\"user\"").unwrap()..]));

    assert_eq!(count(&v, "email"), 3);
    assert_eq!(count(&v, "aws_access_key"), 2);
    let f = v
        .findings
        .iter()
        .find(|f| f.detector == "credit_card")
        .unwrap();
    assert_eq!(f.path.as_deref(), Some("messages[1].content[0].text"));
    assert_eq!(f.action, "redact");
    assert_eq!(f.location, FindingLocation::Request);
    assert_eq!(v.decision(), palisade_core::RecordDecision::Redact);
    assert_no_values(&v, &[AWS, CARD, "jane@acme.io"]);
}

#[test]
fn anthropic_system_and_tool_results_are_redacted() {
    let g = guard_with(
        GuardAction::Log,
        &[
            ("email", GuardAction::Redact),
            ("aws_access_key", GuardAction::Redact),
        ],
    );
    let body = json!({
        "model": "claude-sonnet-4",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "Operator: ops@acme.io"}],
        "messages": [
            {"role": "user", "content": "who is ops@acme.io? my ip is 10.1.2.3"},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": format!("env: AWS_ACCESS_KEY_ID={AWS}")}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "owner ops@acme.io"}
            ]}
        ]
    });
    let v = g.inspect_request("messages", &serde_json::to_vec(&body).unwrap());
    let out = redacted_body(&v);
    assert_eq!(out["system"][0]["text"], "Operator: [EMAIL_1]");
    assert_eq!(
        out["messages"][0]["content"], "who is [EMAIL_1]? my ip is 10.1.2.3",
        "ipv4 is log-only"
    );
    assert_eq!(
        out["messages"][1]["content"][0]["content"][0]["text"],
        "env: AWS_ACCESS_KEY_ID=[AWS_ACCESS_KEY_1]"
    );
    assert_eq!(
        out["messages"][1]["content"][1]["content"],
        "owner [EMAIL_1]"
    );
    assert_eq!(out["messages"][1]["content"][0]["tool_use_id"], "toolu_1");
    let ip = v.findings.iter().find(|f| f.detector == "ipv4").unwrap();
    assert_eq!(ip.action, "log");
}

#[test]
fn gemini_parts_and_system_instruction_are_redacted() {
    let g = guard_with(GuardAction::Redact, &[]);
    let body = json!({
        "systemInstruction": {"parts": [{"text": "Customer IBAN DE89 3704 0044 0532 0130 00"}]},
        "contents": [{"role": "user", "parts": [{"text": "Is DE89 3704 0044 0532 0130 00 valid? SSN 536-22-1847"}]}],
        "generationConfig": {"temperature": 0.1}
    });
    let v = g.inspect_request("streamGenerateContent", &serde_json::to_vec(&body).unwrap());
    let out = redacted_body(&v);
    assert_eq!(
        out["systemInstruction"]["parts"][0]["text"],
        "Customer IBAN [IBAN_1]"
    );
    assert_eq!(
        out["contents"][0]["parts"][0]["text"],
        "Is [IBAN_1] valid? SSN [US_SSN_1]"
    );
    assert_eq!(out["generationConfig"], body["generationConfig"]);
}

#[test]
fn mcp_tool_call_arguments_are_redacted() {
    let g = guard_with(GuardAction::Redact, &[]);
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "query", "arguments": {"sql": "select * from users where email='x@acme.io'", "limit": 5}}});
    let v = g.inspect_request("mcp", &serde_json::to_vec(&body).unwrap());
    let out = redacted_body(&v);
    assert_eq!(
        out["params"]["arguments"]["sql"],
        "select * from users where email='[EMAIL_1]'"
    );
    assert_eq!(out["params"]["arguments"]["limit"], 5);
    assert_eq!(v.findings[0].path.as_deref(), Some("params.arguments.sql"));
}

#[test]
fn block_wins_and_names_the_rule() {
    let g = guard_with(
        GuardAction::Redact,
        &[("aws_access_key", GuardAction::Block)],
    );
    let body = json!({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "mail a@acme.io"},
        {"role": "user", "content": format!("key {AWS}")}
    ]});
    let v = g.inspect_request("chat.completions", &serde_json::to_vec(&body).unwrap());
    assert_eq!(
        v.action,
        VerdictAction::Block {
            rule: "aws_access_key".into()
        }
    );
    assert_eq!(v.rule(), Some("aws_access_key"));
    assert_eq!(v.decision(), palisade_core::RecordDecision::Block);
    assert_eq!(count(&v, "email"), 1, "all findings are still recorded");
    let f = v
        .findings
        .iter()
        .find(|f| f.detector == "aws_access_key")
        .unwrap();
    assert_eq!(
        (f.action.as_str(), f.path.as_deref(), f.count),
        ("block", Some("messages[1].content"), 1)
    );
    assert_no_values(&v, &[AWS, "a@acme.io"]);
}

#[test]
fn log_only_allows_with_findings() {
    let g = guard_with(GuardAction::Log, &[]);
    let body = json!({"model": "m", "input": ["card 4111 1111 1111 1111", "nothing here"]});
    let v = g.inspect_request("embeddings", &serde_json::to_vec(&body).unwrap());
    assert_eq!(v.action, VerdictAction::Allow);
    assert_eq!(v.findings.len(), 1);
    assert_eq!(v.findings[0].path.as_deref(), Some("input[0]"));
    assert_eq!(v.findings[0].action, "log");
}

#[test]
fn binary_and_non_json_bodies_are_skipped() {
    let g = guard_with(GuardAction::Block, &[]);
    let v = g.inspect_request(
        "chat.completions",
        &[0x1f, 0x8b, 0x08, 0x00, 0xff, 0x00, 0x41],
    );
    assert_eq!(v.skipped.as_deref(), Some("binary body"));
    assert_eq!(v.action, VerdictAction::Allow);
    assert!(v.findings.is_empty());
    let v = g.inspect_request("chat.completions", &[0xff, 0xfe, b'a']);
    assert_eq!(v.skipped.as_deref(), Some("binary body"), "invalid UTF-8");
    let v = g.inspect_request("chat.completions", format!("key={AWS}").as_bytes());
    assert_eq!(v.skipped.as_deref(), Some("not JSON"));
    assert!(v.findings.is_empty());
    let v = g.inspect_request("chat.completions", b"");
    assert_eq!((v.action, v.skipped), (VerdictAction::Allow, None));
}

#[test]
fn unknown_endpoint_scans_everything_and_never_rewrites() {
    let g = guard_with(GuardAction::Log, &[("email", GuardAction::Redact)]);
    let body = json!({"files": [{"meta": {"owner": "o@acme.io"}}], "note": format!("{AWS}")});
    let v = g.inspect_request("files.upload", &serde_json::to_vec(&body).unwrap());
    assert!(
        matches!(v.action, VerdictAction::Block { ref rule } if rule == "email"),
        "{v:?}"
    );
    assert!(v.error.as_deref().unwrap().contains("not supported"));
    let paths: Vec<_> = v
        .findings
        .iter()
        .map(|f| f.path.as_deref().unwrap())
        .collect();
    assert_eq!(paths, ["files[0].meta.owner", "note"]);

    let g = guard_with(GuardAction::Log, &[]);
    let v = g.inspect_request("files.upload", &serde_json::to_vec(&body).unwrap());
    assert_eq!(v.action, VerdictAction::Allow);
    assert_eq!(v.findings.len(), 2);
}

#[test]
fn huge_prompt_completes_and_finds_secret_at_the_end() {
    let g = guard_with(GuardAction::Redact, &[]);
    let chunk = "The quarterly report covers revenue, churn and 42 open issues in module v1.2.3; see section 7.\n\
                 fn handle(req: Request) -> Result<Response, Error> { let id = req.id(); Ok(Response::new(id)) }\n";
    let mut prompt = String::with_capacity(8 << 20);
    while prompt.len() < 8 << 20 {
        prompt.push_str(chunk);
    }
    prompt.push_str(&format!("finally the key {AWS}"));
    let body = serde_json::to_vec(
        &json!({"model": "m", "messages": [{"role": "user", "content": prompt}]}),
    )
    .unwrap();
    let v = g.inspect_request("chat.completions", &body);
    assert_eq!(count(&v, "aws_access_key"), 1);
    let out = redacted_body(&v);
    assert!(out["messages"][0]["content"]
        .as_str()
        .unwrap()
        .ends_with("finally the key [AWS_ACCESS_KEY_1]"));
}

#[test]
fn many_matches_are_counted_beyond_the_stored_cap() {
    let g = guard_with(GuardAction::Log, &[]);
    let n = palisade_guard::MAX_MATCHES_PER_RULE + 500;
    let text: String = (0..n).map(|i| format!("u{i}@acme.io ")).collect();
    assert_eq!(
        g.scan(&text)
            .iter()
            .filter(|m| &*m.detector == "email")
            .count(),
        palisade_guard::MAX_MATCHES_PER_RULE
    );
    let (findings, _) = g.inspect_response_text(&text);
    assert_eq!(findings[0].count as usize, n);
}

#[test]
fn zero_width_inside_an_aws_key_is_caught_and_fully_redacted() {
    let g = guard_with(GuardAction::Redact, &[]);
    let split = "AKIAZ5ZF\u{200B}KKIBJ5J6\u{2060}WJIB";
    let body = serde_json::to_vec(
        &json!({"messages": [{"role": "user", "content": format!("key {split} ok")}]}),
    )
    .unwrap();
    let v = g.inspect_request("chat.completions", &body);
    assert_eq!(
        redacted_body(&v)["messages"][0]["content"],
        "key [AWS_ACCESS_KEY_1] ok"
    );
    // Soft hyphen and BOM, escaped in JSON, and the same key plain: one number.
    let body = br#"{"messages":[{"role":"user","content":"AKIAZ5ZF\u00adKKIBJ5J6\ufeffWJIB then AKIAZ5ZFKKIBJ5J6WJIB"}]}"#;
    let v = g.inspect_request("chat.completions", body);
    assert_eq!(
        redacted_body(&v)["messages"][0]["content"],
        "[AWS_ACCESS_KEY_1] then [AWS_ACCESS_KEY_1]"
    );
}

#[test]
fn full_width_card_digits_are_caught() {
    let g = guard_with(GuardAction::Redact, &[]);
    let text = "pay with ４５２６ ０１８１ ５９０８ ３０１２ today";
    let ms = g.scan(text);
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert_eq!(
        &text[ms[0].start..ms[0].end],
        "４５２６ ０１８１ ５９０８ ３０１２"
    );
    let body = serde_json::to_vec(&json!({"contents": [{"parts": [{"text": text}]}]})).unwrap();
    let v = g.inspect_request("generateContent", &body);
    assert_eq!(
        redacted_body(&v)["contents"][0]["parts"][0]["text"],
        "pay with [CREDIT_CARD_1] today"
    );
}

#[test]
fn unicode_escaped_secret_is_decoded_before_scanning() {
    let g = guard_with(GuardAction::Block, &[]);
    // "AKIAZ5ZFKKIBJ5J6WJIB" with letters written as \u escapes, split over two runs.
    let body = br#"{"messages":[{"role":"user","content":"\u0041\u004BIAZ5ZFKKIB\u004A5J6WJIB"}]}"#;
    let v = g.inspect_request("chat.completions", body);
    assert_eq!(
        v.action,
        VerdictAction::Block {
            rule: "aws_access_key".into()
        }
    );
    // A surrogate-pair escape around a card number does not hide it.
    let body = br#"{"messages":[{"role":"user","content":"\ud83d\ude00 4111\u00201111\u00201111\u00201111"}]}"#;
    let v = g.inspect_request("chat.completions", body);
    assert_eq!(
        v.action,
        VerdictAction::Block {
            rule: "credit_card".into()
        }
    );
}

#[test]
fn redaction_keeps_json_valid_with_quotes_and_controls() {
    let g = guard_with(GuardAction::Redact, &[]);
    let body = br#"{"messages":[{"role":"user","content":"say \"hi\"\n\tto a@acme.io \\ \u0001 \u00e9"}],"n":1e2}"#;
    let v = g.inspect_request("chat.completions", body);
    let out = redacted_body(&v);
    assert_eq!(
        out["messages"][0]["content"],
        "say \"hi\"\n\tto [EMAIL_1] \\ \u{1} é"
    );
    let VerdictAction::Redact { body: new } = &v.action else {
        unreachable!()
    };
    assert!(
        String::from_utf8_lossy(new).ends_with(r#","n":1e2}"#),
        "numbers keep their spelling"
    );
}

#[test]
fn response_text_findings_and_blocking() {
    let g = guard_with(GuardAction::Redact, &[("private_key", GuardAction::Block)]);
    let (f, block) = g.inspect_response_text("contact a@acme.io or b@acme.io");
    assert_eq!(block, None);
    assert_eq!(
        (f[0].detector.as_str(), f[0].action.as_str(), f[0].count),
        ("email", "log", 2)
    );
    assert_eq!(f[0].location, FindingLocation::Response);
    let (_, block) = g.inspect_response_text("here: -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n-----END RSA PRIVATE KEY-----");
    assert_eq!(block.as_deref(), Some("private_key"));

    let off = Guard::new(&Guardrails {
        scan_responses: false,
        ..Guardrails::default()
    })
    .unwrap();
    assert_eq!(off.inspect_response_text("a@acme.io"), (vec![], None));
}

#[test]
fn gitleaks_file_with_allowlists() {
    let toml = r#"
title = "acme rules"

[allowlist]
description = "global"
stopwords = ["dummy"]

[[rules]]
id = "acme-internal-token"
description = "Acme internal API token"
regex = '''(?i)\b(acme_[a-z0-9]{24})\b'''
keywords = ["acme_"]
secretGroup = 1
entropy = 3.0
  [rules.allowlist]
  regexes = ['''acme_0{24}''']

[[rules]]
id = "acme-password"
regex = '''acme_pw\s*=\s*"([^"]{8,})"'''
keywords = ["acme_pw"]
  [[rules.allowlists]]
  regexTarget = "line"
  regexes = ['''#\s*test''']

[[rules]]
id = "only-paths"
path = '''\.pem$'''
"#;
    let cfg = Guardrails {
        actions: [("acme-internal-token".to_string(), GuardAction::Block)].into(),
        ..Guardrails::default()
    };
    let g = Guard::with_gitleaks_toml(&cfg, toml).unwrap();
    assert!(g.detector_ids().contains(&"acme-internal-token"));
    assert!(!g.detector_ids().contains(&"only-paths"));
    let ms = g.scan("token ACME_k3j4h5g6f7d8s9a0qpwoeiru here");
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert_eq!(
        (&*ms[0].detector, ms[0].action),
        ("acme-internal-token", GuardAction::Block)
    );
    assert!(
        g.scan("token acme_000000000000000000000000").is_empty(),
        "rule allowlist regex"
    );
    assert!(
        g.scan("token acme_aaaaaaaaaaaaaaaaaaaaaaaa").is_empty(),
        "entropy"
    );
    assert!(
        g.scan("token acme_dummyk3j4h5g6f7d8s9a0qpwo").is_empty(),
        "global stopword"
    );
    assert_eq!(g.scan(r#"acme_pw = "x9Kq2Lm7zz""#).len(), 1);
    assert!(
        g.scan(r#"acme_pw = "x9Kq2Lm7zz" # test fixture"#)
            .is_empty(),
        "line allowlist"
    );
}

#[test]
fn gitleaks_unsupported_syntax_names_the_rule() {
    let toml = r#"
[[rules]]
id = "good"
regex = '''good_[0-9]{8}'''

[[rules]]
id = "uses-lookahead"
regex = '''(?=secret)secret_[a-z]+'''

[[rules]]
id = "bad-group"
regex = '''tok_([a-z]+)'''
secretGroup = 3
"#;
    let e = Guard::with_gitleaks_toml(&Guardrails::default(), toml).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.problems().len(), 2, "{msg}");
    assert!(
        msg.contains("\"uses-lookahead\"") && msg.contains("look-around"),
        "{msg}"
    );
    assert!(
        msg.contains("\"bad-group\"") && msg.contains("secretGroup"),
        "{msg}"
    );
    let e = Guard::with_gitleaks_toml(&Guardrails::default(), "[[rules]\nid=").unwrap_err();
    assert!(matches!(e, GuardError::GitleaksFile(_)), "{e}");
}

#[test]
fn bad_custom_rules_are_all_rejected_with_their_ids() {
    let rule = |id: &str, regex: Option<&str>, kws: &[&str]| CustomRule {
        id: id.into(),
        regex: regex.map(str::to_string),
        keywords: kws.iter().map(|s| s.to_string()).collect(),
        action: GuardAction::Block,
    };
    let cfg = Guardrails {
        custom: vec![
            rule("ok", Some(r"ACME-[0-9]{4}"), &[]),
            rule("broken", Some("(unclosed"), &[]),
            rule("empty-match", Some("x*"), &[]),
            rule("huge", Some(r"\w{500}\w{500}\w{500}"), &[]),
            rule("never", Some(r"[^\s\S]"), &[]),
            rule("nothing", None, &[]),
            rule("long", Some(&"a".repeat(5000)), &[]),
            rule("email", Some("x@y"), &[]),
        ],
        ..Guardrails::default()
    };
    let e = palisade_guard::validate_custom_rules(&cfg).unwrap_err();
    let by_rule: Vec<(&str, &str)> = e
        .problems()
        .iter()
        .map(|p| (p.rule.as_str(), p.reason.as_str()))
        .collect();
    let expect = [
        ("broken", "syntax error"),
        ("empty-match", "empty string"),
        ("huge", "too large"),
        ("never", "never match"),
        ("nothing", "needs a regex or keywords"),
        ("long", "longer than"),
        ("email", "built-in"),
    ];
    assert_eq!(by_rule.len(), expect.len(), "{e}");
    for ((rule, reason), (want_rule, want_reason)) in by_rule.iter().zip(expect) {
        assert_eq!(*rule, want_rule);
        assert!(reason.contains(want_reason), "{rule}: {reason}");
    }
    assert!(Guard::new(&cfg).is_err());
    assert!(palisade_guard::validate_custom_rules(&Guardrails {
        custom: vec![cfg.custom[0].clone()],
        ..Guardrails::default()
    })
    .is_ok());
}

#[test]
fn duplicate_keys_are_scanned_in_every_copy_and_never_rewritten() {
    let g = guard_with(GuardAction::Block, &[]);
    for body in [
        format!(
            r#"{{"messages":[{{"role":"user","content":"hello"}}],"messages":[{{"role":"user","content":"{AWS}"}}]}}"#
        ),
        format!(
            r#"{{"messages":[{{"role":"user","content":"{AWS}"}}],"messages":[{{"role":"user","content":"hello"}}]}}"#
        ),
        format!(r#"{{"messages":[{{"role":"user","content":"{AWS}","content":"hi"}}]}}"#),
    ] {
        let v = g.inspect_request("chat.completions", body.as_bytes());
        assert_eq!(
            v.action,
            VerdictAction::Block {
                rule: "aws_access_key".into()
            },
            "{body}"
        );
    }
    let g = guard_with(GuardAction::Redact, &[]);
    let body = format!(r#"{{"messages":[{{"role":"user","content":"{AWS}","content":"hi"}}]}}"#);
    let v = g.inspect_request("chat.completions", body.as_bytes());
    assert!(matches!(v.action, VerdictAction::Block { .. }));
    assert!(v.error.unwrap().contains("duplicate JSON keys"));
}

#[test]
fn mcp_tool_results_are_scanned() {
    let g = guard_with(GuardAction::Log, &[("aws_access_key", GuardAction::Block)]);
    let body = json!({"jsonrpc": "2.0", "id": 7, "result": {
        "content": [
            {"type": "text", "text": "rows: a@acme.io, b@acme.io"},
            {"type": "resource", "resource": {"uri": "file:///x/.env", "text": format!("AWS_ACCESS_KEY_ID={AWS}")}}
        ],
        "structuredContent": {"owner": {"email": "c@acme.io"}}
    }});
    let (findings, block) = g.inspect_mcp_response(&serde_json::to_vec(&body).unwrap());
    assert_eq!(block.as_deref(), Some("aws_access_key"));
    let got: Vec<(&str, &str, u32)> = findings
        .iter()
        .map(|f| (f.detector.as_str(), f.path.as_deref().unwrap(), f.count))
        .collect();
    assert_eq!(
        got,
        [
            ("email", "result.content[0].text", 2),
            ("aws_access_key", "result.content[1].resource.text", 1),
            ("email", "result.structuredContent.owner.email", 1),
        ]
    );
    assert!(findings
        .iter()
        .all(|f| f.location == FindingLocation::Response));
    assert_eq!(g.inspect_mcp_response(b"event: message"), (vec![], None));
}

#[test]
fn long_overlapping_matches_stay_linear() {
    // A rule whose value is one byte at the head of an unbounded match: with
    // naive resumption this is quadratic; it must finish and count each run once.
    let cfg = Guardrails {
        custom: vec![CustomRule {
            id: "runs".into(),
            regex: Some(r"(q)q*".into()),
            keywords: vec![],
            action: GuardAction::Log,
        }],
        ..Guardrails::default()
    };
    let g = Guard::new(&cfg).unwrap();
    let text = "q".repeat(2 << 20);
    let (findings, _) = g.inspect_response_text(&text);
    let runs = findings.iter().find(|f| f.detector == "runs").unwrap();
    // One match for the run, plus at most one per re-scanned tail byte.
    assert!(
        runs.count <= 5,
        "one long run, not one per byte: {}",
        runs.count
    );
}
