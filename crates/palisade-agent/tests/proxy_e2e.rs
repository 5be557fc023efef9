//! End to end: the real agent in-process, fake providers over real TLS, real
//! clients through the proxy. Records are checked field by field.

mod common;

use common::*;
use futures_util::StreamExt;
use palisade_core::{EventKind, RecordDecision};
use serde_json::json;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

fn chat_body(stream: bool) -> serde_json::Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "stream_options": {"include_usage": true},
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France?"}
        ]
    })
}

#[tokio::test]
async fn openai_chat_non_streaming_over_http1_is_recorded_field_by_field() {
    let mut h = Harness::start().await;
    // A keep-alive client, as real apps are: its connection outlives the
    // request, so attribution (a /proc scan) sees the socket.
    let client = h.client(true);
    let resp = client
        .post("https://api.openai.com/v1/chat/completions")
        .header("authorization", "Bearer sk-test-not-a-secret")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    let body: serde_json::Value = resp.json().await.unwrap();
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap().to_string();

    let ev = h.next_event().await;
    assert_eq!(ev.kind, EventKind::Interaction);
    assert_eq!(ev.device.id, h.state.device.id);
    assert_eq!(ev.device.os, std::env::consts::OS);
    assert_eq!(ev.user.email.as_deref(), Some("jane@example.com"));
    assert!(ev.user.os_user.is_some());
    let app = ev.app.as_ref().unwrap();
    assert_eq!(app.pid, Some(std::process::id()), "attributed to this test process: {app:?}");
    assert!(app.exe.as_deref().unwrap().contains("proxy_e2e"), "{app:?}");
    let i = interaction(&ev);
    assert_eq!(i.provider, "openai");
    assert_eq!(i.host, "api.openai.com");
    assert_eq!(i.endpoint, "chat.completions");
    assert!(i.model.as_deref().unwrap().starts_with("gpt-4o-mini"));
    assert!(!i.stream);
    assert_eq!(i.request.method, "POST");
    assert_eq!(i.request.path, "/v1/chat/completions");
    let prompt = i.request.prompt.as_deref().unwrap();
    assert!(prompt.contains("capital of France"), "{prompt}");
    assert!(prompt.contains("You are terse."), "{prompt}");
    assert_eq!(i.request.params["temperature"], 0.2);
    assert_eq!(i.response.status, Some(200));
    assert_eq!(i.response.text.as_deref(), Some(answer.as_str()));
    assert!(i.response.stop_reason.is_some());
    assert!(i.usage.input_tokens.unwrap() > 0);
    assert!(i.usage.output_tokens.unwrap() > 0);
    assert!(i.cost_usd.unwrap() > 0.0, "a known model is priced");
    assert_eq!(i.policy.decision, RecordDecision::Allow);
    assert!(i.error.is_none(), "{:?}", i.error);
    assert!(i.timing.ttfb_ms.is_some());
    // The authorization header reached the upstream untouched; the record holds no header.
    let got = h.fake.requests();
    assert_eq!(got.len(), 1);
    assert!(!serde_json::to_string(&ev).unwrap().contains("sk-test-not-a-secret"));
    drop(client);
    h.stop().await;
}

#[tokio::test]
async fn http2_client_is_served_http2() {
    let mut h = Harness::start().await;
    let resp = h
        .client(false)
        .post("https://api.openai.com/v1/chat/completions")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
    let ev = h.next_event().await;
    assert_eq!(interaction(&ev).endpoint, "chat.completions");
    assert!(interaction(&ev).usage.output_tokens.is_some());
    h.stop().await;
}

#[tokio::test]
async fn sse_first_chunk_reaches_client_before_upstream_sends_the_second() {
    let mut h = Harness::start().await;
    let resp = h
        .client(true)
        .post("https://api.openai.com/v1/chat/completions")
        .header("x-fake-gate", "1")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    // The upstream holds chunk 2 until we release the gate: if the proxy
    // buffered, this read would never complete.
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("first chunk arrives while upstream is held")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    h.fake.release_gate();
    let mut all = first.to_vec();
    while let Some(c) = stream.next().await {
        all.extend_from_slice(&c.unwrap());
    }
    assert!(String::from_utf8_lossy(&all).contains("[DONE]"));
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert!(i.stream);
    assert!(i.response.text.as_deref().unwrap().len() > 1);
    assert!(i.usage.output_tokens.unwrap() > 0);
    assert!(i.cost_usd.is_some());
    assert!(i.error.is_none(), "{:?}", i.error);
    h.stop().await;
}

#[tokio::test]
async fn anthropic_and_gemini_streaming_and_not() {
    let mut h = Harness::start().await;
    let c = h.client(false);
    for stream in [false, true] {
        let r = c
            .post("https://api.anthropic.com/v1/messages")
            .header("anthropic-version", "2023-06-01")
            .json(&json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 100,
                "stream": stream,
                "system": "Be brief.",
                "messages": [{"role": "user", "content": "Hello Claude"}]
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        let ev = h.next_event().await;
        let i = interaction(&ev);
        assert_eq!(i.provider, "anthropic");
        assert_eq!(i.endpoint, "messages");
        assert_eq!(i.stream, stream);
        assert!(i.request.prompt.as_deref().unwrap().contains("Hello Claude"));
        assert!(i.response.text.is_some(), "stream={stream}");
        assert!(i.usage.input_tokens.is_some() && i.usage.output_tokens.is_some());
        assert!(i.response.stop_reason.is_some());
    }
    for (path, stream) in [
        ("/v1beta/models/gemini-2.5-flash:generateContent", false),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", true),
    ] {
        let r = c
            .post(format!("https://generativelanguage.googleapis.com{path}"))
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "Hi Gemini"}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        let ev = h.next_event().await;
        let i = interaction(&ev);
        assert_eq!(i.provider, "gemini");
        assert_eq!(i.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(i.stream, stream);
        assert!(i.request.prompt.as_deref().unwrap().contains("Hi Gemini"));
        assert!(i.response.text.is_some());
        assert!(i.usage.output_tokens.is_some());
    }
    h.stop().await;
}

#[tokio::test]
async fn blind_tunnel_passes_bytes_unchanged_and_records_nothing() {
    let h = Harness::start().await;
    let echo = palisade_test_support::start_echo_tcp().await;
    let mut s = raw_connect(h.addr, &format!("{echo}")).await;
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (mut rd, mut wr) = s.split();
    let p2 = payload.clone();
    let writer = async move {
        wr.write_all(&p2).await.unwrap();
    };
    let reader = async move {
        let mut got = vec![0u8; 1_000_000];
        rd.read_exact(&mut got).await.unwrap();
        got
    };
    let (_, got) = tokio::join!(writer, reader);
    assert!(got == payload, "tunnel altered bytes");
    assert_eq!(h.state.stats.tunnels.load(Ordering::Relaxed), 1);
    assert_eq!(h.state.stats.intercepted.load(Ordering::Relaxed), 0);
    h.state.recorder.flush().await;
    assert_eq!(h.state.recorder.written(), 0);
    assert!(h.spool.peek(10).await.unwrap().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn bytes_sent_in_the_same_write_as_connect_go_through_the_tunnel_first() {
    let h = Harness::start().await;
    let echo = palisade_test_support::start_echo_tcp().await;
    // A client that does not wait for the 200 before its first bytes.
    let mut s = raw_connect_sending(h.addr, &echo.to_string(), b"early bytes|").await;
    s.write_all(b"later bytes").await.unwrap();
    let mut echoed = vec![0u8; "early bytes|later bytes".len()];
    s.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"early bytes|later bytes");
    h.stop().await;
}

#[tokio::test]
async fn malformed_json_is_forwarded_and_recorded_with_an_error() {
    let mut h = Harness::start().await;
    let bad = "{\"model\": \"gpt-4o\", \"messages\": [oops";
    let r = h
        .client(true)
        .post("https://api.openai.com/v1/chat/completions")
        .header("content-type", "application/json")
        .body(bad)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    assert_eq!(h.fake.requests()[0].body.as_ref(), bad.as_bytes());
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.response.status, Some(status));
    assert_eq!(i.request.bytes, bad.len() as u64);
    assert!(i.error.as_deref().unwrap().contains("not valid JSON"), "{:?}", i.error);
    h.stop().await;
}

#[tokio::test]
async fn body_over_capture_cap_is_forwarded_whole_and_capture_is_marked_truncated() {
    let mut h = Harness::with(Options {
        capture_max_bytes: 64 * 1024,
        ..Default::default()
    })
    .await;
    let big = format!(
        "{{\"model\":\"gpt-4o\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "x".repeat(300 * 1024)
    );
    let r = h
        .client(true)
        .post("https://api.openai.com/v1/chat/completions")
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    assert!(h.fake.requests()[0].body.as_ref() == big.as_bytes(), "upstream got the whole body");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert!(i.request.truncated);
    assert_eq!(i.request.bytes, big.len() as u64);
    assert!(i.error.is_none(), "a truncated capture is not an error: {:?}", i.error);
    h.stop().await;
}

#[tokio::test]
async fn upstream_with_invalid_certificate_gets_502_saying_why_and_a_record() {
    let mut h = Harness::with(Options {
        self_signed_upstream: true,
        ..Default::default()
    })
    .await;
    let r = h
        .client(true)
        .post("https://api.openai.com/v1/chat/completions")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("TLS") && msg.contains("certificate"), "{msg}");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.response.status, Some(502));
    assert!(i.error.as_deref().unwrap().contains("certificate"));
    assert!(h.fake.requests().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn client_hello_without_sni_uses_the_connect_host() {
    let mut h = Harness::start().await;
    let tcp = raw_connect(h.addr, "api.openai.com:443").await;
    let cfg = tls_client(&h.agent_ca_pem, &[b"http/1.1"], false);
    let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    let mut tls = BufReader::new(tls);
    let body = chat_body(false).to_string();
    tls.get_mut()
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ev = h.next_event().await;
    assert_eq!(interaction(&ev).host, "api.openai.com");
    h.stop().await;
}

#[tokio::test]
async fn non_tls_bytes_after_connect_to_an_ai_host_are_refused_and_recorded() {
    let mut h = Harness::start().await;
    let mut s = raw_connect(h.addr, "api.openai.com:443").await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert!(i.error.as_deref().unwrap().contains("did not start a TLS handshake"), "{:?}", i.error);
    assert!(h.fake.requests().is_empty(), "nothing reached the upstream undecrypted");
    h.stop().await;
}

#[tokio::test]
async fn client_silent_halfway_through_its_body_is_recorded() {
    let mut h = Harness::with(Options {
        client_idle_timeout_ms: 300,
        ..Default::default()
    })
    .await;
    let tcp = raw_connect(h.addr, "api.openai.com:443").await;
    let cfg = tls_client(&h.agent_ca_pem, &[b"http/1.1"], true);
    let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    tls.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 1000\r\n\r\n{\"model\":\"gpt-4o\",")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    // ...and say nothing more, keeping the connection open.
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert!(i.error.as_deref().unwrap().contains("went silent"), "{:?}", i.error);
    assert_eq!(i.request.bytes, 18);
    assert!(h.fake.requests().is_empty(), "a partial body is never sent upstream as complete");
    drop(tls);
    h.stop().await;
}

#[tokio::test]
async fn upstream_reset_mid_stream_still_writes_a_record_with_what_was_seen() {
    let mut h = Harness::start().await;
    let r = h
        .client(true)
        .post("https://api.openai.com/v1/chat/completions")
        .header("x-fake-reset-after", "2")
        .header("x-fake-delay-ms", "50")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    let mut saw_error = false;
    while let Some(c) = s.next().await {
        if c.is_err() {
            saw_error = true;
            break;
        }
    }
    assert!(saw_error, "the client sees the stream break");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert!(i.error.as_deref().unwrap().contains("interrupted"), "{:?}", i.error);
    assert!(i.response.text.as_deref().map(|t| !t.is_empty()).unwrap_or(false), "partial text kept");
    h.stop().await;
}

#[tokio::test]
async fn client_disconnect_mid_stream_still_writes_a_record() {
    let mut h = Harness::start().await;
    let r = h
        .client(true)
        .post("https://api.openai.com/v1/chat/completions")
        .header("x-fake-gate", "1")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    let _first = s.next().await.unwrap().unwrap();
    drop(s);
    let ev = h.next_event().await;
    h.fake.release_gate();
    let i = interaction(&ev);
    assert!(i.error.as_deref().unwrap().contains("client disconnected"), "{:?}", i.error);
    assert!(i.stream);
    h.stop().await;
}

#[tokio::test]
async fn compressed_responses_are_forwarded_untouched_and_parsed() {
    let mut h = Harness::start().await;
    for enc in ["gzip", "br", "zstd"] {
        let r = h
            .client(true)
            .post("https://api.openai.com/v1/chat/completions")
            .header("x-fake-encoding", enc)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-encoding"], enc);
        let raw = r.bytes().await.unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&raw).is_err(), "client got the encoded bytes");
        let ev = h.next_event().await;
        let i = interaction(&ev);
        assert!(i.response.text.is_some(), "{enc}: parsed after decoding: {:?}", i.error);
        assert!(i.usage.output_tokens.is_some());
        assert_eq!(i.response.bytes, raw.len() as u64);
    }
    h.stop().await;
}

#[tokio::test]
async fn unknown_endpoint_on_an_ai_host_still_gets_a_record() {
    let mut h = Harness::start().await;
    let r = h
        .client(true)
        .get("https://api.openai.com/v1/some/new/thing?x=1")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.endpoint, "unknown");
    assert_eq!(i.request.method, "GET");
    assert_eq!(i.request.path, "/v1/some/new/thing?x=1");
    assert_eq!(i.response.status, Some(status));
    assert_eq!(i.response.bytes, body.len() as u64);
    h.stop().await;
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let mut h = Harness::start().await;
    let tcp = raw_connect(h.addr, "api.openai.com:443").await;
    let cfg = tls_client(&h.agent_ca_pem, &[b"http/1.1"], true);
    let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(b"GET /v1/realtime-ws HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.get_mut().write_all(b"\x81\x05hello").await.unwrap();
    let mut back = [0u8; 7];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"\x81\x05hello");
    drop(tls);
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.endpoint, "websocket");
    assert_eq!(i.response.status, Some(101));
    h.stop().await;
}

#[tokio::test]
async fn pac_file_routes_only_ai_hosts() {
    let h = Harness::start().await;
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/proxy.pac", h.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ns-proxy-autoconfig");
    let pac = r.text().await.unwrap();
    assert!(pac.contains(&format!("PROXY {}", h.addr)));
    assert!(pac.contains("api.anthropic.com"));
    assert!(!pac.contains("example.com"));
    h.stop().await;
}

#[tokio::test]
async fn records_survive_in_the_spool_for_the_cli() {
    let mut h = Harness::start().await;
    let c = h.client(true);
    for _ in 0..3 {
        let r = c
            .post("https://api.openai.com/v1/embeddings")
            .json(&json!({"model": "text-embedding-3-small", "input": "hello"}))
            .send()
            .await
            .unwrap();
        let _ = r.bytes().await.unwrap();
    }
    let all = h.spooled(3).await;
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|e| interaction(e).endpoint == "embeddings"));
    assert!(all.iter().all(|e| interaction(e).usage.input_tokens.is_some()));
    h.stop().await;
}

#[tokio::test]
async fn sse_with_garbage_lines_is_forwarded_byte_for_byte_and_parsed_around() {
    let mut h = Harness::start().await;
    let c = h.client(true);
    let req = || {
        c.post("https://api.openai.com/v1/chat/completions")
            .header("x-fake-garbage", "1")
            .json(&chat_body(true))
    };
    let through_proxy = req().send().await.unwrap().bytes().await.unwrap();
    // The same stream straight from the fake, for a byte comparison.
    let direct = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(h.test_ca.cert_pem().as_bytes()).unwrap())
        .resolve("api.openai.com", h.fake.addr)
        .http1_only()
        .build()
        .unwrap()
        .post(format!("https://api.openai.com:{}/v1/chat/completions", h.fake.addr.port()))
        .header("x-fake-garbage", "1")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(through_proxy == direct, "the proxy altered a stream with garbage in it");
    assert!(String::from_utf8_lossy(&through_proxy).contains("this is not SSE"));
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert!(i.response.text.as_deref().map(|t| !t.is_empty()).unwrap_or(false));
    assert!(i.usage.output_tokens.is_some(), "usage still parsed");
    assert!(i.error.as_deref().unwrap().contains("unparseable"), "{:?}", i.error);
    h.stop().await;
}

#[tokio::test]
async fn plain_http_forward_proxying_records_ai_hosts_and_passes_others() {
    // 127.0.0.1 is an "AI host" here; localhost is not.
    let policy = json!({"ai_hosts": [{"host": "127.0.0.1", "provider": "openai"}]}).to_string();
    let mut h = Harness::with(Options { policy_json: Some(policy), ..Default::default() }).await;
    let plain = palisade_test_support::FakeProvider::start_plain().await;
    let c = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", h.addr)).unwrap())
        .build()
        .unwrap();
    let port = plain.addr.port();
    let r = c
        .post(format!("http://localhost:{port}/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    h.state.recorder.flush().await;
    assert_eq!(h.state.recorder.written(), 0, "non-AI traffic is forwarded, not recorded");

    let r = c
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    assert_eq!(plain.requests().len(), 2);
    assert_eq!(h.state.stats.forwarded_plain.load(Ordering::Relaxed), 2);
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.endpoint, "chat.completions");
    assert!(i.usage.output_tokens.is_some());
    h.stop().await;
}

#[tokio::test]
async fn tunnel_to_an_unreachable_destination_gets_a_502_saying_why() {
    let h = Harness::start().await;
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut r = BufReader::new(s);
    let head = read_head(&mut r).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let mut body = vec![0u8; 200];
    let n = r.read(&mut body).await.unwrap();
    assert!(String::from_utf8_lossy(&body[..n]).contains("cannot connect"), "{}", String::from_utf8_lossy(&body[..n]));
    h.stop().await;
}
