//! The fakes, exercised by real clients (reqwest and raw tokio-rustls) and
//! cross-checked with the product's own parsers in `palisade-providers`.

use palisade_providers::{classify, parse_response, BodyDecoder, StreamParser};
use palisade_test_support::{canned, client_config, start_echo_tcp, start_sink_tcp, FakeProvider, TestCa};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOSTS: &[&str] = &["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com"];

fn client(ca: &TestCa, fake: &FakeProvider, http1: bool) -> reqwest::Client {
    let alpn: &[&[u8]] = if http1 { &[b"http/1.1"] } else { &[b"h2", b"http/1.1"] };
    let mut b = reqwest::Client::builder().use_preconfigured_tls(client_config(ca, alpn)).no_proxy();
    for h in HOSTS {
        b = b.resolve(h, fake.addr);
    }
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

struct Case {
    provider: &'static str,
    host: &'static str,
    path: &'static str,
    body: serde_json::Value,
}

fn cases(stream: bool) -> Vec<Case> {
    vec![
        Case {
            provider: "openai",
            host: "api.openai.com",
            path: "/v1/chat/completions",
            body: serde_json::json!({"model": "gpt-4o", "stream": stream, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}]}),
        },
        Case {
            provider: "openai",
            host: "api.openai.com",
            path: "/v1/responses",
            body: serde_json::json!({"model": "gpt-5", "stream": stream, "input": "hi"}),
        },
        Case {
            provider: "anthropic",
            host: "api.anthropic.com",
            path: "/v1/messages",
            body: serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]}),
        },
        Case {
            provider: "gemini",
            host: "generativelanguage.googleapis.com",
            path: if stream {
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
            } else {
                "/v1beta/models/gemini-2.5-pro:generateContent"
            },
            body: serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        },
        Case {
            provider: "gemini",
            host: "generativelanguage.googleapis.com",
            path: if stream {
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
            } else {
                "/v1/models/gemini-2.5-flash:generateContent"
            },
            body: serde_json::json!({"contents": [{"parts": [{"text": "hi"}]}]}),
        },
    ]
}

fn assert_canned_usage(u: &palisade_core::Usage, provider: &str) {
    assert_eq!(u.input_tokens, Some(canned::INPUT_TOKENS), "{provider}");
    assert_eq!(u.cached_input_tokens, Some(canned::CACHED_INPUT_TOKENS), "{provider}");
    assert_eq!(u.output_tokens, Some(canned::OUTPUT_TOKENS), "{provider}");
    if provider != "anthropic" {
        assert_eq!(u.reasoning_tokens, Some(canned::REASONING_TOKENS), "{provider}");
    }
}

#[tokio::test]
async fn non_streaming_over_h2_and_http1() {
    let ca = TestCa::new();
    let fake = FakeProvider::start(&ca, HOSTS).await;
    for http1 in [false, true] {
        let c = client(&ca, &fake, http1);
        for case in cases(false) {
            let url = format!("https://{}{}", case.host, case.path);
            let resp = c.post(&url).json(&case.body).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{url}");
            let want = if http1 { reqwest::Version::HTTP_11 } else { reqwest::Version::HTTP_2 };
            assert_eq!(resp.version(), want);
            let body = resp.bytes().await.unwrap();
            let ep = classify(case.provider, "POST", case.path);
            let r = parse_response(&ep, 200, &body);
            assert_eq!(r.error, None, "{url}");
            assert_eq!(r.text.as_deref(), Some(canned::TEXT), "{url}");
            assert_canned_usage(&r.usage, case.provider);
        }
    }
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 10);
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[0].sni.as_deref(), Some("api.openai.com"));
    assert_eq!(reqs[0].version, http::Version::HTTP_2);
    assert_eq!(reqs[5].version, http::Version::HTTP_11);
    assert_eq!(reqs[0].json().unwrap()["model"], "gpt-4o");
    assert_eq!(reqs[2].sni.as_deref(), Some("api.anthropic.com"));
}

#[tokio::test]
async fn streaming_every_route_parses_with_the_product_parser() {
    let ca = TestCa::new();
    let fake = FakeProvider::start(&ca, HOSTS).await;
    let c = client(&ca, &fake, false);
    for case in cases(true) {
        let url = format!("https://{}{}", case.host, case.path);
        let mut resp = c.post(&url).json(&case.body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let ep = classify(case.provider, "POST", case.path);
        let mut p = StreamParser::new(&ep);
        let mut chunks = 0;
        while let Some(chunk) = resp.chunk().await.unwrap() {
            chunks += 1;
            p.feed(&chunk);
        }
        assert!(chunks > 1, "{url}: streamed in pieces");
        assert!(p.is_complete(), "{url}");
        assert_eq!(p.garbage_lines(), 0, "{url}");
        let r = p.finish();
        assert_eq!(r.text.as_deref(), Some(canned::TEXT), "{url}");
        assert_canned_usage(&r.usage, case.provider);
        assert!(r.model.is_some());
    }
}

#[tokio::test]
async fn gate_holds_the_second_chunk_until_released() {
    let ca = TestCa::new();
    let fake = FakeProvider::start(&ca, HOSTS).await;
    let c = client(&ca, &fake, true);
    let mut resp = c
        .post("https://api.anthropic.com/v1/messages")
        .header("x-fake-gate", "1")
        .json(&serde_json::json!({"model": "claude-haiku-4-5", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    // The first chunk arrives while the fake is blocked before the second:
    // if it were buffered, this would wait forever.
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"event: message_start"));
    fake.release_gate();
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert!(rest.ends_with(b"data: {\"type\":\"message_stop\"}\n\n"));
}

#[tokio::test]
async fn reset_after_n_chunks_aborts_the_stream() {
    let ca = TestCa::new();
    let fake = FakeProvider::start(&ca, HOSTS).await;
    for http1 in [true, false] {
        let c = client(&ca, &fake, http1);
        let mut resp = c
            .post("https://api.openai.com/v1/chat/completions")
            .header("x-fake-reset-after", "3")
            .json(&serde_json::json!({"model": "gpt-4o", "stream": true, "messages": []}))
            .send()
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => got.extend_from_slice(&c),
                Ok(None) => panic!("stream ended cleanly despite reset (http1={http1})"),
                Err(_) => break, // the client sees the upstream reset as a body error
            }
        }
        // What arrived before the reset parses as a partial stream.
        let mut p = StreamParser::new(&classify("openai", "POST", "/v1/chat/completions"));
        p.feed(&got);
        assert!(!p.is_complete());
        assert_eq!(p.finish().text.as_deref(), Some("Hello from"));
    }
}

#[tokio::test]
async fn compressed_bodies_streaming_and_not() {
    let ca = TestCa::new();
    let fake = FakeProvider::start(&ca, HOSTS).await;
    let c = client(&ca, &fake, false);
    for enc in ["gzip", "br", "zstd"] {
        for stream in [false, true] {
            let resp = c
                .post("https://api.openai.com/v1/chat/completions")
                .header("x-fake-encoding", enc)
                .json(&serde_json::json!({"model": "gpt-4o", "stream": stream, "stream_options": {"include_usage": true}}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.headers()["content-encoding"], enc);
            let raw = resp.bytes().await.unwrap();
            let mut d = BodyDecoder::new(Some(enc)).unwrap();
            let mut plain = d.feed(&raw).unwrap();
            plain.extend(d.finish().unwrap());
            let ep = classify("openai", "POST", "/v1/chat/completions");
            let r = if stream {
                let mut p = StreamParser::new(&ep);
                p.feed(&plain);
                p.finish()
            } else {
                parse_response(&ep, 200, &plain)
            };
            assert_eq!(r.text.as_deref(), Some(canned::TEXT), "{enc} stream={stream}");
        }
    }
    let resp = c
        .post("https://api.openai.com/v1/embeddings")
        .header("x-fake-gzip", "1")
        .json(&serde_json::json!({"model": "text-embedding-3-small", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
}

#[tokio::test]
async fn error_status_in_each_provider_format() {
    let ca = TestCa::new();
    let fake = FakeProvider::start(&ca, HOSTS).await;
    let c = client(&ca, &fake, false);
    for case in cases(false) {
        let url = format!("https://{}{}", case.host, case.path);
        let resp = c.post(&url).header("x-fake-status", "500").json(&case.body).send().await.unwrap();
        assert_eq!(resp.status(), 500);
        let body = resp.bytes().await.unwrap();
        let r = parse_response(&classify(case.provider, "POST", case.path), 500, &body);
        let e = r.error.unwrap();
        assert!(e.contains("asked to fail"), "{url}: {e}");
    }
    let resp = c.post("https://api.openai.com/v1/nope").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("/v1/nope"));
    // Malformed JSON gets the provider's 400.
    let resp = c.post("https://api.openai.com/v1/chat/completions").body("{oops").send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn large_body_has_exact_size_and_stays_json() {
    let ca = TestCa::new();
    let fake = FakeProvider::start(&ca, HOSTS).await;
    let c = client(&ca, &fake, true);
    let n = 3 * 1024 * 1024 + 17;
    let resp = c
        .post("https://api.openai.com/v1/chat/completions")
        .header("x-fake-body-bytes", n.to_string())
        .json(&serde_json::json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.content_length(), Some(n as u64));
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), n);
    let r = parse_response(&classify("openai", "POST", "/v1/chat/completions"), 200, &body);
    assert_eq!(r.error, None);
    assert!(r.text.map(|t| t.len()).unwrap_or(0) > 3_000_000);
}

#[tokio::test]
async fn invalid_certificate_is_rejected_by_a_client_trusting_the_test_ca() {
    let ca = TestCa::new();
    let fake = FakeProvider::start_with_self_signed(HOSTS).await;
    let c = client(&ca, &fake, false);
    let err = c.post("https://api.openai.com/v1/chat/completions").send().await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn websocket_upgrade_echoes_raw_bytes() {
    let ca = TestCa::new();
    let fake = FakeProvider::start(&ca, HOSTS).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(&ca, &[b"http/1.1"])));
    let tcp = tokio::net::TcpStream::connect(fake.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(
        b"GET /v1/realtime-ws HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tls.write_all(b"\x81\x05hello raw frame").await.unwrap();
    let mut echo = vec![0u8; 17];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"\x81\x05hello raw frame");
    assert_eq!(fake.requests()[0].path, "/v1/realtime-ws");
}

#[tokio::test]
async fn plain_http_fake() {
    let fake = FakeProvider::start_plain().await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = c
        .post(format!("http://{}/v1/messages", fake.addr))
        .json(&serde_json::json!({"model": "claude-haiku-4-5", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "claude-haiku-4-5");
    assert_eq!(fake.requests()[0].sni, None);
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let ca = TestCa::new();
    let mut fake = FakeProvider::start(&ca, HOSTS).await;
    let addr = fake.addr;
    fake.shutdown();
    // The accept loop exits; connecting eventually fails or the TLS handshake never completes.
    let mut refused = false;
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused);
}

#[tokio::test]
async fn echo_and_sink_tcp() {
    let echo = start_echo_tcp().await;
    let mut s = tokio::net::TcpStream::connect(echo).await.unwrap();
    s.write_all(b"blind tunnel bytes \x00\xff").await.unwrap();
    let mut buf = [0u8; 21];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"blind tunnel bytes \x00\xff");

    let sink = start_sink_tcp().await;
    let mut s = tokio::net::TcpStream::connect(sink.addr).await.unwrap();
    let data = vec![7u8; 1 << 20];
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    sink.wait_for(1 << 20).await;
    assert_eq!(sink.bytes_received(), 1 << 20);
    assert_eq!(sink.connections(), 1);
}

#[test]
fn test_ca_issues_chains_with_san() {
    let ca = TestCa::new();
    let (chain, _key) = ca.issue(&["api.openai.com", "127.0.0.1"]);
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], ca.cert_der());
    assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(ca.root_store().len(), 1);
    assert!(!format!("{ca:?}").contains("PRIVATE"));
}

#[tokio::test]
async fn a_fake_told_to_forget_requests_still_answers_but_keeps_no_copies() {
    let ca = TestCa::new();
    let fake = FakeProvider::start(&ca, HOSTS).await;
    let c = client(&ca, &fake, true);
    let url = "https://api.openai.com/v1/chat/completions";
    let body = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let r = c.post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(fake.requests().len(), 1);
    fake.forget_requests();
    for _ in 0..3 {
        let r = c.post(url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["model"], "gpt-4o");
    }
    assert_eq!(fake.requests().len(), 1, "only the request before forget_requests is kept");
}
