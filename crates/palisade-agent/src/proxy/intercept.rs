//! TLS interception for AI hosts: terminate the client's TLS with a leaf
//! minted for the host, speak HTTP/1.1 or HTTP/2 as ALPN decided, forward each
//! request upstream over verified TLS, and record it.
//!
//! This module must never alter forwarded bytes it was not asked to alter
//! (bodies pass through unchanged; only hop-by-hop headers are dropped), and
//! must write a record however an exchange ends.

use crate::proxy::error::{ErrorSource, ProxyError};
use crate::proxy::exchange::{is_stream, Exchange, RecordingBody, ResponseTap};
use crate::proxy::response_guard::{self, McpCall, Speaker, StreamGate};
use crate::proxy::upstream::{connect_tls_h1, BoxError, ProxyBody};
use crate::proxy::{empty, full, ClientConn, ProxyState};
use bytes::Bytes;
use chrono::Utc;
use futures_util::stream;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_core::RecordDecision;
use palisade_guard::VerdictAction;
use palisade_providers::{classify, ApiFormat};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

/// Serve one intercepted CONNECT tunnel.
pub async fn intercept<IO>(
    io: IO,
    host: String,
    port: u16,
    provider: String,
    state: Arc<ProxyState>,
    conn: Arc<ClientConn>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    conn.app.start();
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match acceptor.await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("client did not start a TLS handshake after CONNECT to {host}: {e}");
            warn!(host, error = %e, "Non-TLS bytes after CONNECT to an AI host; connection refused");
            record_failure(&state, &conn, &host, &provider, msg);
            return;
        }
    };
    let sni = start.client_hello().server_name().map(str::to_string);
    let config = match &sni {
        Some(_) => state.mitm_config.clone(),
        // No SNI: the CONNECT target names the host.
        None => match state.leaves.get(&host) {
            Ok(key) => palisade_tls::single_cert_server_config(key),
            Err(e) => {
                warn!(host, error = %e, "Cannot mint a certificate");
                record_failure(&state, &conn, &host, &provider, format!("cannot mint a certificate for {host}: {e}"));
                return;
            }
        },
    };
    let tls = match start.into_stream(config).await {
        Ok(t) => t,
        Err(e) => {
            debug!(host, error = %e, "Client TLS handshake failed");
            record_failure(
                &state,
                &conn,
                &host,
                &provider,
                format!("client TLS handshake failed (is the Palisade CA trusted?): {e}"),
            );
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    // The upstream is the host the client asked for in its TLS hello.
    let target = Arc::new(Target {
        host: sni.unwrap_or(host),
        port,
        provider,
    });
    let svc = {
        let state = state.clone();
        let conn = conn.clone();
        hyper::service::service_fn(move |req| {
            let (state, conn, target) = (state.clone(), conn.clone(), target.clone());
            async move {
                Ok::<_, std::convert::Infallible>(
                    forward(req, "https", &target, state, conn).await,
                )
            }
        })
    };
    let io = TokioIo::new(tls);
    let result = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(error) = result {
        debug!(%error, "Intercepted connection ended with error");
    }
}

/// Where requests on this connection go.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub provider: String,
}

/// Plain-HTTP forward proxying (`GET http://host/...`). AI hosts are recorded
/// as well; everything else is forwarded untouched.
pub async fn forward_plain(
    req: Request<Incoming>,
    state: Arc<ProxyState>,
    conn: Arc<ClientConn>,
) -> Response<ProxyBody> {
    let Some(host) = req.uri().host().map(str::to_string) else {
        return ProxyError::new(ErrorSource::Client, "request URI has no host").into();
    };
    if req.uri().scheme_str() != Some("http") {
        return ProxyError::new(
            ErrorSource::Client,
            "only http:// URIs can be forwarded; use CONNECT for https",
        )
        .into();
    }
    let port = req.uri().port_u16().unwrap_or(80);
    let provider = state.policy.current().ai_provider_for(&host).map(str::to_string);
    state
        .stats
        .forwarded_plain
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match provider {
        Some(provider) => {
            conn.app.start();
            let target = Target { host, port, provider };
            forward(req, "http", &target, state, conn).await
        }
        None => {
            // A destination only denied MCP servers use is refused whole;
            // plain HTTP also shows the path, so a denied URL is refused too.
            use crate::inventory::remote::{block_response, record_block, BlockStage};
            let path = req.uri().path().to_string();
            let blocked = match state.blocked_remote.for_connect(&host, port) {
                Some(b) => Some((b, BlockStage::Connect)),
                None => state
                    .blocked_remote
                    .for_request(&host, port, &path)
                    .map(|b| (b, BlockStage::Request)),
            };
            if let Some((b, stage)) = blocked {
                record_block(&state, &conn, &b, stage, Some(&path)).await;
                return block_response(&b.name);
            }
            let (mut parts, body) = req.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.version = Version::HTTP_11;
            let req = Request::from_parts(parts, body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync());
            match state.client.request(req).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Response::from_parts(parts, body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync())
                }
                Err(e) => ProxyError::from_client_error(&host, &e).into(),
            }
        }
    }
}

/// Forward one request to the AI upstream and record it.
async fn forward(
    req: Request<Incoming>,
    scheme: &str,
    target: &Target,
    state: Arc<ProxyState>,
    conn: Arc<ClientConn>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let time = Utc::now();
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    // A denied remote MCP server on an AI host: refused before a byte leaves.
    if let Some(b) = state.blocked_remote.for_request(&target.host, target.port, &path) {
        use crate::inventory::remote::{block_response, record_block, BlockStage};
        record_block(&state, &conn, &b, BlockStage::Request, Some(&path)).await;
        return block_response(&b.name);
    }
    let ep = classify(&target.provider, parts.method.as_str(), &path);
    let mut ex = Exchange::new(&state, &conn, &target.host, ep, parts.method.as_str(), &path);
    // One policy version judges the whole exchange.
    let policy = ex.active.clone();
    ex.started = started;
    ex.time = time;
    ex.req_encoding = header_str(&parts.headers, header::CONTENT_ENCODING);

    // A denied (or, when pending means block, unapproved) app is refused
    // before a byte of its request leaves.
    if policy.apps.can_refuse() {
        let (app, _) = conn.app.get().await;
        let id = app.id.clone().unwrap_or_else(|| "unknown".into());
        if !policy.apps.allows(&id) {
            let decision = policy.apps.decision(&id);
            let msg = format!(
                "Blocked by Palisade: the app '{}' is not approved for AI use by your organisation's policy (decision: {}). Ask your administrator to approve it.",
                app.name.as_deref().unwrap_or(&id),
                serde_json::to_value(decision).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            );
            ex.policy.decision = RecordDecision::Block;
            ex.policy.rule = Some(format!("app:{id}"));
            ex.status = Some(StatusCode::FORBIDDEN.as_u16());
            let format = ex.ep.format;
            ex.finish_without_body(None);
            return provider_error(format, StatusCode::FORBIDDEN, &msg);
        }
    }

    if is_upgrade(&parts.headers) {
        return websocket(parts, body, target, ex).await;
    }

    // Capture the request body up to the cap; beyond it, stream the rest.
    let (captured, rest) = match read_capped(body, state.capture_max_bytes, &state).await {
        Ok(r) => r,
        Err(e) => {
            ex.req_bytes = e.bytes_seen;
            ex.error = Some(e.message.clone());
            ex.finish_without_body(None);
            return ProxyError::new(ErrorSource::Client, e.message).into();
        }
    };
    ex.req_bytes = captured.len() as u64;
    ex.req_truncated = rest.is_some();
    ex.req_body = captured.clone();

    // MCP over HTTP: an `mcp` host, or a JSON-RPC tool call to any
    // intercepted host. Guardrails then read JSON-RPC.
    if target.provider == MCP_PROVIDER || rest.is_none() {
        ex.mcp = mcp_call(&ex, &captured, target.provider == MCP_PROVIDER);
    }

    // Guardrails see the whole body before a byte of it leaves.
    let mut captured = captured;
    if rest.is_some() {
        ex.guard_skipped = Some(format!(
            "body larger than the capture cap ({} bytes) is not inspected",
            state.capture_max_bytes
        ));
    } else if !captured.is_empty() {
        match guard_request(&mut ex, &mut parts.headers, &captured) {
            GuardOutcome::Send => {}
            GuardOutcome::Replace(body) => captured = body,
            GuardOutcome::Refuse(msg) => {
                ex.status = Some(StatusCode::FORBIDDEN.as_u16());
                let refusal = refusal(&ex, StatusCode::FORBIDDEN, &msg);
                ex.finish_without_body(None);
                return refusal;
            }
        }
    }

    let uri = format!(
        "{scheme}://{}{}{}",
        target.host,
        if (scheme == "https" && target.port == 443) || (scheme == "http" && target.port == 80) {
            String::new()
        } else {
            format!(":{}", target.port)
        },
        path
    );
    parts.uri = match uri.parse::<Uri>() {
        Ok(u) => u,
        Err(e) => {
            let msg = format!("cannot build upstream URI: {e}");
            ex.error = Some(msg.clone());
            ex.finish_without_body(None);
            return ProxyError::new(ErrorSource::Client, msg).into();
        }
    };
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    if parts.headers.get(header::HOST).is_none() {
        if let Ok(v) = HeaderValue::from_str(&target.host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let up_body: ProxyBody = match rest {
        None => full(captured),
        Some(rest) => {
            let head = stream::iter([Ok::<_, BoxError>(Frame::data(captured))]);
            let tail = http_body_util::BodyStream::new(rest.body);
            let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
            ex.req_tail_bytes = Some(counter.clone());
            let tail = futures_util::StreamExt::map(tail, move |r| {
                if let Some(d) = r.as_ref().ok().and_then(|f| f.data_ref()) {
                    counter.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                r.map_err(|e| -> BoxError { Box::new(e) })
            });
            StreamBody::new(futures_util::StreamExt::chain(head, tail)).boxed_unsync()
        }
    };
    let format = ex.ep.format;
    let resp = match state.client.request(Request::from_parts(parts, up_body)).await {
        Ok(r) => r,
        Err(e) => {
            let err = ProxyError::from_client_error(&target.host, &e);
            warn!(host = %target.host, error = %err.message, "Upstream request failed");
            ex.error = Some(err.message.clone());
            ex.status = Some(StatusCode::BAD_GATEWAY.as_u16());
            ex.finish_without_body(None);
            return provider_error(format, StatusCode::BAD_GATEWAY, &err.message);
        }
    };
    ex.status = Some(resp.status().as_u16());
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    respond(ex, parts, body).await
}

/// Provider id that marks an `ai_hosts` entry as an MCP server.
pub const MCP_PROVIDER: &str = "mcp";

/// The JSON-RPC call in a request, if this is MCP traffic. On an `mcp` host
/// every request is MCP (a GET that opens an event stream too).
fn mcp_call(ex: &Exchange, captured: &Bytes, mcp_host: bool) -> Option<McpCall> {
    let decoded;
    let plain: &[u8] = match ex.req_encoding.as_deref() {
        None => captured,
        Some(enc) => {
            decoded = palisade_providers::BodyDecoder::new(Some(enc))
                .and_then(|mut d| {
                    let mut v = d.feed(captured)?;
                    v.extend(d.finish()?);
                    Ok(v)
                })
                .unwrap_or_default();
            &decoded
        }
    };
    if mcp_host {
        Some(McpCall::parse(plain).unwrap_or(McpCall {
            id: serde_json::Value::Null,
            method: None,
        }))
    } else {
        McpCall::tool_call(plain)
    }
}

/// A refusal in the caller's own format: JSON-RPC for MCP, else the provider's.
fn refusal(ex: &Exchange, status: StatusCode, msg: &str) -> Response<ProxyBody> {
    match &ex.mcp {
        Some(call) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-palisade-error", "1")
            .body(full(call.error_body(msg).to_string()))
            .expect("valid response"),
        None => provider_error(ex.ep.format, status, msg),
    }
}

/// Hand the upstream response to the client. With no response rule that can
/// block, frames pass as they arrive (a tap watches a copy). Otherwise a
/// whole response is held and judged before it is released, and a stream
/// goes through a [`StreamGate`]. MCP streams always go through a gate
/// (scan only, unless a rule blocks) because their findings are per event.
async fn respond(
    mut ex: Exchange,
    mut parts: http::response::Parts,
    body: Incoming,
) -> Response<ProxyBody> {
    let ctype = header_str(&parts.headers, header::CONTENT_TYPE);
    let enc = header_str(&parts.headers, header::CONTENT_ENCODING);
    let g = &ex.active.guardrails;
    let (can_block, scans) = (g.response_can_block(), g.enabled && g.scan_responses);
    let streamed = is_stream(ctype.as_deref(), &ex.ep);
    if can_block && !streamed {
        return hold_whole(ex, parts, body, ctype, enc).await;
    }
    let mut gate = None;
    if streamed && (can_block || (ex.mcp.is_some() && scans)) {
        let speaker = match &ex.mcp {
            Some(call) => Speaker::Mcp(call.clone()),
            None => Speaker::Ai {
                format: ex.ep.format,
                endpoint: ex.ep.name,
            },
        };
        match StreamGate::new(ex.active.response_guard.clone(), speaker, can_block, enc.as_deref()) {
            Ok(g) => {
                if g.decodes() {
                    parts.headers.remove(header::CONTENT_ENCODING);
                }
                // The gate may end the stream early or add an error event.
                parts.headers.remove(header::CONTENT_LENGTH);
                gate = Some(g);
            }
            Err(e) => {
                warn!(host = %ex.host, error = %e, "Response stream passes uninspected");
                ex.skip_guard(format!("response not inspected: {e}"));
            }
        }
    }
    let tap_enc = if gate.is_some() { None } else { enc.as_deref() };
    let tap = ResponseTap::new(ex, ctype.as_deref(), tap_enc).with_gate(gate);
    Response::from_parts(parts, RecordingBody::new(body, tap).into())
}

/// Hold a whole (non-streamed) response, judge it with the response rules,
/// then release the original bytes untouched or answer 403 naming the rule.
/// Over the capture cap it is released uninspected, as requests are.
async fn hold_whole(
    mut ex: Exchange,
    parts: http::response::Parts,
    mut body: Incoming,
    ctype: Option<String>,
    enc: Option<String>,
) -> Response<ProxyBody> {
    let cap = ex.state.capture_max_bytes;
    let mut held = bytes::BytesMut::new();
    let mut rest = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                let msg = format!("upstream stream interrupted: {}", crate::proxy::error::chain(&e));
                warn!(host = %ex.host, error = %msg, "Upstream failed while its response was held");
                ex.error = Some(msg.clone());
                ex.status = Some(StatusCode::BAD_GATEWAY.as_u16());
                let refusal = refusal(&ex, StatusCode::BAD_GATEWAY, &msg);
                ex.finish_without_body(None);
                return refusal;
            }
            Some(Ok(f)) => {
                if ex.ttfb_ms.is_none() {
                    ex.ttfb_ms = Some(ex.started.elapsed().as_millis() as u64);
                }
                // Trailers on a plain JSON response carry nothing we keep.
                if let Ok(d) = f.into_data() {
                    held.extend_from_slice(&d);
                    if held.len() > cap {
                        rest = Some(body);
                        break;
                    }
                }
            }
        }
    }
    let held = held.freeze();
    let verdict = match &rest {
        Some(_) => Err(format!(
            "response larger than the capture cap ({cap} bytes) is not inspected"
        )),
        None => judge_whole(&ex, &held, enc.as_deref()),
    };
    match verdict {
        Err(why) => ex.skip_guard(why),
        Ok(Some(rule)) => {
            let msg = response_guard::block_message(&rule);
            ex.mark_response_blocked(&rule);
            let upstream_status = ex.status.replace(StatusCode::FORBIDDEN.as_u16());
            let answer = refusal(&ex, StatusCode::FORBIDDEN, &msg);
            // The record keeps what upstream said (usage, masked text).
            let mut tap = ResponseTap::new(ex, ctype.as_deref(), enc.as_deref());
            tap.upstream_status(upstream_status);
            tap.on_data(&held);
            tap.block(&rule);
            tap.finish(None);
            return answer;
        }
        Ok(None) => {}
    }
    let tap = ResponseTap::new(ex, ctype.as_deref(), enc.as_deref());
    let head = stream::iter([Ok::<_, BoxError>(Frame::data(held))]);
    let replay: ProxyBody = match rest {
        None => StreamBody::new(head).boxed_unsync(),
        Some(rest) => {
            let tail = futures_util::StreamExt::map(http_body_util::BodyStream::new(rest), |r| {
                r.map_err(|e| -> BoxError { Box::new(e) })
            });
            StreamBody::new(futures_util::StreamExt::chain(head, tail)).boxed_unsync()
        }
    };
    Response::from_parts(parts, RecordingBody::from_body(replay, tap).into())
}

/// The response rule a whole response trips, if any; `Err` when it cannot
/// be inspected (it is then released and the record says why).
fn judge_whole(ex: &Exchange, held: &[u8], enc: Option<&str>) -> Result<Option<String>, String> {
    let decoded;
    let plain: &[u8] = match enc {
        None => held,
        Some(enc) => {
            decoded = palisade_providers::BodyDecoder::new(Some(enc))
                .and_then(|mut d| {
                    let mut v = d.feed(held)?;
                    v.extend(d.finish()?);
                    Ok(v)
                })
                .map_err(|e| format!("response not inspected: cannot decode {enc}: {e}"))?;
            &decoded
        }
    };
    let guard = &ex.active.response_guard;
    let (_, block) = match &ex.mcp {
        Some(_) => guard.inspect_mcp_response(plain),
        None => {
            let status = ex.status.unwrap_or(0);
            if ex.ep.is_known() {
                match palisade_providers::parse_response(&ex.ep, status, plain).text {
                    Some(text) => guard.inspect_response_text(&text),
                    None => Default::default(),
                }
            } else {
                // An endpoint we cannot read: scan the body as text.
                guard.inspect_response_text(&String::from_utf8_lossy(plain))
            }
        }
    };
    Ok(block)
}

enum GuardOutcome {
    Send,
    Replace(Bytes),
    Refuse(String),
}

/// Apply the guard's verdict to a fully captured request body.
fn guard_request(ex: &mut Exchange, headers: &mut HeaderMap, body: &Bytes) -> GuardOutcome {
    let decoded;
    let plain: &[u8] = match ex.req_encoding.as_deref() {
        None => body,
        Some(enc) => {
            match palisade_providers::BodyDecoder::new(Some(enc)).and_then(|mut d| {
                let mut v = d.feed(body)?;
                v.extend(d.finish()?);
                Ok(v)
            }) {
                Ok(v) => {
                    decoded = v;
                    &decoded
                }
                Err(e) => {
                    ex.guard_skipped = Some(format!("cannot decode {enc} body: {e}"));
                    return GuardOutcome::Send;
                }
            }
        }
    };
    let verdict = ex.active.guard.inspect_request(ex.endpoint_name(), plain);
    ex.findings = verdict.findings.clone();
    ex.guard_skipped = verdict.skipped.clone();
    if let Some(e) = &verdict.error {
        ex.error = Some(e.clone());
    }
    ex.policy.decision = verdict.decision();
    ex.policy.rule = verdict.rule().map(str::to_string);
    match verdict.action {
        VerdictAction::Allow => GuardOutcome::Send,
        VerdictAction::Block { rule } => GuardOutcome::Refuse(format!(
            "Blocked by Palisade: this request contains data that the policy rule '{rule}' does not allow to leave this device. Remove it and try again."
        )),
        VerdictAction::Redact { body } => {
            // The rewritten body goes out uncompressed with its own length.
            headers.remove(header::CONTENT_ENCODING);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            let body = Bytes::from(body);
            ex.req_encoding = None;
            ex.req_body = body.clone();
            GuardOutcome::Replace(body)
        }
    }
}

struct ReadError {
    message: String,
    bytes_seen: u64,
}

/// The remainder of a body that was larger than the capture cap.
struct Rest {
    body: Incoming,
}

/// Read frames until the body ends or `cap` bytes were captured.
async fn read_capped(
    mut body: Incoming,
    cap: usize,
    state: &ProxyState,
) -> Result<(Bytes, Option<Rest>), ReadError> {
    let mut buf = bytes::BytesMut::new();
    loop {
        let frame = tokio::time::timeout(state.client_idle_timeout, body.frame()).await;
        match frame {
            Err(_) => {
                return Err(ReadError {
                    message: format!(
                        "client went silent for {}s in the middle of its request body",
                        state.client_idle_timeout.as_secs_f32()
                    ),
                    bytes_seen: buf.len() as u64,
                })
            }
            Ok(None) => return Ok((buf.freeze(), None)),
            Ok(Some(Err(e))) => {
                return Err(ReadError {
                    message: format!("client aborted its request body: {e}"),
                    bytes_seen: buf.len() as u64,
                })
            }
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                    if buf.len() > cap {
                        return Ok((buf.freeze(), Some(Rest { body })));
                    }
                }
            }
        }
    }
}

/// WebSocket (or any HTTP/1.1 upgrade): pass through intact, record the handshake.
async fn websocket(
    mut parts: http::request::Parts,
    body: Incoming,
    target: &Target,
    mut ex: Exchange,
) -> Response<ProxyBody> {
    ex.ep.name = "websocket";
    let state = ex.state.clone();
    let client_req = Request::from_parts(parts.clone(), ());
    let tls = match connect_tls_h1(&state.dialer, &state.upstream_tls, &target.host, target.port).await {
        Ok(t) => t,
        Err(e) => {
            ex.error = Some(e.message.clone());
            ex.status = Some(502);
            ex.finish_without_body(None);
            return e.into();
        }
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(tls)).await {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("upstream {} HTTP handshake failed: {e}", target.host);
                ex.error = Some(msg.clone());
                ex.finish_without_body(None);
                return ProxyError::new(ErrorSource::Upstream, msg).into();
            }
        };
    tokio::spawn(connection.with_upgrades());
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap_or_default();
    parts.version = Version::HTTP_11;
    let req = Request::from_parts(parts, body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync());
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("upstream {} failed the upgrade request: {e}", target.host);
            ex.error = Some(msg.clone());
            ex.finish_without_body(None);
            return ProxyError::new(ErrorSource::Upstream, msg).into();
        }
    };
    ex.status = Some(resp.status().as_u16());
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        let tap = ResponseTap::new(ex, None, None);
        return Response::from_parts(parts, RecordingBody::new(body, tap).into());
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let client_upgrade = hyper::upgrade::on(client_req);
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((c, u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                let r = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                let err = r.err().map(|e| format!("websocket closed with error: {e}"));
                ex.finish_without_body(err);
            }
            Err(e) => ex.finish_without_body(Some(format!("websocket upgrade failed: {e}"))),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, empty())
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE).is_some()
        && h
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
            .unwrap_or(false)
}

fn header_str(h: &HeaderMap, name: HeaderName) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) as parsed names: removing by `&str`
/// parsed each name again on every request and response.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), including any the
/// `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<String> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .collect();
        for n in named {
            h.remove(n.as_str());
        }
    }
    for n in HOP_BY_HOP.iter() {
        h.remove(n);
    }
}

/// An error body in the provider's own format, so the app shows a readable message.
pub fn provider_error(format: ApiFormat, status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = match format {
        ApiFormat::Anthropic => serde_json::json!({
            "type": "error",
            "error": {"type": "palisade_error", "message": message},
        }),
        ApiFormat::Gemini => serde_json::json!({
            "error": {"code": status.as_u16(), "message": message, "status": status.canonical_reason().unwrap_or("ERROR").to_ascii_uppercase().replace(' ', "_")},
        }),
        _ => serde_json::json!({
            "error": {"message": message, "type": "palisade_error", "code": status.as_u16()},
        }),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-palisade-error", "1")
        .body(full(body.to_string()))
        .expect("valid response")
}

/// A record for a connection that never got to a request.
fn record_failure(state: &Arc<ProxyState>, conn: &Arc<ClientConn>, host: &str, provider: &str, msg: String) {
    let mut ex = Exchange::new(state, conn, host, classify(provider, "CONNECT", "/"), "", "");
    ex.error = Some(msg);
    ex.finish_without_body(None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_hop_by_hop_removes_listed_and_connection_named_headers_only() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Trace-Hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-trace-hop", "1"),
            ("authorization", "Bearer kept"),
            ("content-type", "application/json"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type"]);
    }

    #[test]
    fn strip_hop_by_hop_without_connection_header_keeps_end_to_end_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_LENGTH));
    }
}
