//! A fake AI provider upstream over REAL TLS (hyper, HTTP/1.1 and HTTP/2 by
//! ALPN) on 127.0.0.1:0, routed by path like the real APIs, with request
//! headers that let a test control timing, failures, encodings and size.
//!
//! Controls (request headers, forwarded by the proxy):
//! - `x-fake-delay-ms: N`: sleep N ms between stream chunks;
//! - `x-fake-gate: 1`: hold the 2nd stream chunk until [`FakeProvider::release_gate`];
//! - `x-fake-reset-after: N`: abort the connection after N chunks;
//! - `x-fake-gzip: 1` / `x-fake-encoding: gzip|br|zstd`: compress the body;
//! - `x-fake-status: N`: answer N with an error body in the provider's format;
//! - `x-fake-body-bytes: N`: a non-streaming body of exactly N bytes (when N
//!   is at least the size of the normal body);
//! - `x-fake-garbage: 1`: interleave garbage lines (not SSE, broken JSON) in a stream;
//! - `x-fake-text: a|b|c`: the assistant text, streamed as pieces `a`, `b`,
//!   `c` (one event each) or answered whole; for `/mcp`, the tool result text;
//! - `x-fake-mcp-sse: 1`: answer `/mcp` as an event stream;
//! - any GET with `Upgrade: websocket`: 101, then raw byte echo.
//!
//! `POST /mcp` is a small MCP server (JSON-RPC 2.0): `tools/call` echoes its
//! arguments (see [`canned::mcp_response`]). Unknown paths get a 404 JSON error. Test-only: it never listens beyond
//! loopback and never prints request bodies.

use crate::canned::{self, Route};
use crate::compress::Compressor;
use crate::TestCa;
use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_rustls::TlsAcceptor;

type Body = BoxBody<Bytes, io::Error>;

/// One request as the fake received it.
#[derive(Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query, e.g. `/v1beta/models/x:streamGenerateContent?alt=sse`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: Version,
    /// SNI the client sent (`None` for plain HTTP or no SNI).
    pub sni: Option<String>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

impl std::fmt::Debug for RecordedRequest {
    // Hand-written: bodies and auth headers are captured content, never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("version", &self.version)
            .field("sni", &self.sni)
            .field("headers", &self.headers.len())
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

struct State {
    requests: Mutex<Vec<RecordedRequest>>,
    /// Off for load generation: a benchmark sends millions of requests,
    /// and a copy of each (headers and body) would make the fake's own
    /// allocations part of what is measured.
    keep_requests: AtomicBool,
    gate: Semaphore,
    connections: AtomicU64,
}

pub struct FakeProvider {
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
}

// === impl FakeProvider ===

impl FakeProvider {
    /// Serve TLS with a certificate from `ca` valid for `names` (plus
    /// `localhost` and `127.0.0.1`).
    pub async fn start(ca: &TestCa, names: &[&str]) -> FakeProvider {
        let mut all: Vec<&str> = names.to_vec();
        all.extend(["localhost", "127.0.0.1"]);
        let (chain, key) = ca.issue(&all);
        Self::start_tls(chain, key).await
    }

    /// Serve TLS with a certificate from a different, unknown CA (the
    /// invalid-certificate scenario).
    pub async fn start_with_self_signed(names: &[&str]) -> FakeProvider {
        let stranger = TestCa::with_name("Untrusted Stranger CA");
        let mut all: Vec<&str> = names.to_vec();
        all.extend(["localhost", "127.0.0.1"]);
        let (chain, key) = stranger.issue(&all);
        Self::start_tls(vec![chain[0].clone()], key).await
    }

    /// Serve plain HTTP (no TLS), for forward-proxy tests.
    pub async fn start_plain() -> FakeProvider {
        Self::serve(None).await
    }

    async fn start_tls(
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> FakeProvider {
        let mut cfg = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("fake provider certificate");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::serve(Some(TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn serve(tls: Option<TlsAcceptor>) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake provider");
        let addr = listener.local_addr().expect("fake provider address");
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            keep_requests: AtomicBool::new(true),
            gate: Semaphore::new(0),
            connections: AtomicU64::new(0),
        });
        let (tx, mut rx) = oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let _ = tcp.set_nodelay(true);
                        st.connections.fetch_add(1, Ordering::AcqRel);
                        let st = st.clone();
                        let tls = tls.clone();
                        conns.spawn(async move { serve_conn(tcp, tls, st).await });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            // Dropping the JoinSet aborts open connections.
        });
        FakeProvider {
            addr,
            state,
            shutdown: Some(tx),
        }
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Stop keeping a copy of each request (`requests()` then returns only
    /// those received before): for load generators, whose measure should
    /// not include the fake's bookkeeping.
    pub fn forget_requests(&self) {
        self.state.keep_requests.store(false, Ordering::Release);
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Acquire)
    }

    /// Let one gated stream (`x-fake-gate`) send its second chunk. May be
    /// called before the stream reaches the gate.
    pub fn release_gate(&self) {
        self.state.gate.add_permits(1);
    }

    /// Stop accepting and abort open connections (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvider").field("addr", &self.addr).finish()
    }
}

async fn serve_conn(tcp: tokio::net::TcpStream, tls: Option<TlsAcceptor>, state: Arc<State>) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    match tls {
        Some(acceptor) => {
            let Ok(stream) = acceptor.accept(tcp).await else { return };
            let sni = stream.get_ref().1.server_name().map(str::to_string);
            let svc = service_fn(move |req| handle(req, state.clone(), sni.clone()));
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
        }
        None => {
            let svc = service_fn(move |req| handle(req, state.clone(), None));
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc).await;
        }
    }
}

/// Request controls parsed from `x-fake-*` headers.
#[derive(Default)]
struct Controls {
    delay: Option<Duration>,
    gate: bool,
    reset_after: Option<usize>,
    encoding: Option<String>,
    status: Option<u16>,
    body_bytes: Option<usize>,
    garbage: bool,
    text: Option<Vec<String>>,
    mcp_sse: bool,
}

impl Controls {
    fn from(headers: &HeaderMap) -> Self {
        let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
        let num = |n: &str| get(n).and_then(|v| v.parse::<u64>().ok());
        let encoding = get("x-fake-encoding")
            .map(str::to_ascii_lowercase)
            .or_else(|| (get("x-fake-gzip") == Some("1")).then(|| "gzip".to_string()));
        Controls {
            delay: num("x-fake-delay-ms").map(Duration::from_millis),
            gate: get("x-fake-gate").is_some_and(|v| v != "0"),
            reset_after: num("x-fake-reset-after").map(|n| n as usize),
            encoding,
            status: num("x-fake-status").and_then(|s| u16::try_from(s).ok()),
            body_bytes: num("x-fake-body-bytes").map(|n| n as usize),
            garbage: get("x-fake-garbage").is_some_and(|v| v != "0"),
            text: headers
                .get("x-fake-text")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split('|').map(str::to_string).collect()),
            mcp_sse: get("x-fake-mcp-sse").is_some_and(|v| v != "0"),
        }
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>, sni: Option<String>) -> Result<Response<Body>, Infallible> {
    let wants_upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if req.method() == Method::GET && wants_upgrade {
        record(&state, &req, Bytes::new(), &sni);
        return Ok(upgrade_echo(req));
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    keep(&state, || RecordedRequest {
        method: parts.method.clone(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        version: parts.version,
        sni: sni.clone(),
    });
    let controls = Controls::from(&parts.headers);
    if parts.method == Method::POST && path.split('?').next() == Some("/mcp") {
        return Ok(mcp(&body, &controls));
    }
    let route = (parts.method == Method::POST).then(|| Route::from_path(&path)).flatten();
    let Some(route) = route else {
        let msg = format!("Unknown request URL: {} {}", parts.method, path);
        return Ok(json_response(404, &canned::error_body(None, 404, &msg), None));
    };
    if let Some(status) = controls.status.filter(|s| *s >= 400) {
        let err = canned::error_body(Some(&route), status, "The fake provider was asked to fail (x-fake-status).");
        return Ok(json_response(status, &err, controls.encoding.as_deref()));
    }
    let req_json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if !body.is_empty() && req_json.is_null() {
        let err = canned::error_body(Some(&route), 400, "We could not parse the JSON body of your request.");
        return Ok(json_response(400, &err, None));
    }
    let model = req_json
        .get("model")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| route.default_model());
    let streaming = match &route {
        Route::Gemini { stream, .. } => *stream,
        Route::Embeddings => false,
        _ => req_json.get("stream").and_then(|s| s.as_bool()) == Some(true),
    };
    if streaming && controls.body_bytes.is_none() {
        let include_usage = req_json.pointer("/stream_options/include_usage").and_then(|b| b.as_bool()) == Some(true);
        let mut chunks = match &controls.text {
            Some(pieces) => {
                let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
                canned::stream_chunks_with(&route, &model, include_usage, &pieces)
            }
            None => canned::stream_chunks(&route, &model, include_usage),
        };
        if controls.garbage {
            chunks = chunks
                .into_iter()
                .flat_map(|c| [b"this is not SSE at all\n\n".to_vec(), b"data: {\"broken json\n\n".to_vec(), c])
                .collect();
        }
        let content_type = match &route {
            Route::Gemini { sse: false, .. } => "application/json; charset=UTF-8",
            _ => "text/event-stream; charset=utf-8",
        };
        return Ok(stream_response(chunks, content_type, controls, state));
    }
    if let Some(n) = controls.body_bytes {
        return Ok(padded_response(&route, &model, n, controls.encoding.as_deref()));
    }
    let text = controls.text.as_ref().map(|p| p.concat());
    let body = canned::response_body(&route, &model, text.as_deref().unwrap_or(canned::TEXT));
    Ok(json_response(200, &body, controls.encoding.as_deref()))
}

/// The fake MCP server: JSON, or one event per answer with `x-fake-mcp-sse`.
fn mcp(body: &[u8], controls: &Controls) -> Response<Body> {
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(body) else {
        let err = serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}});
        return json_response(400, &err, None);
    };
    let text = controls.text.as_ref().map(|p| p.concat());
    let answers: Vec<serde_json::Value> = match &req {
        serde_json::Value::Array(batch) => batch.iter().filter_map(|m| canned::mcp_response(m, text.as_deref())).collect(),
        m => canned::mcp_response(m, text.as_deref()).into_iter().collect(),
    };
    if answers.is_empty() {
        return Response::builder().status(202).body(full(Bytes::new())).expect("valid response");
    }
    if controls.mcp_sse {
        let events: String = answers.iter().map(|a| format!("event: message\ndata: {a}\n\n")).collect();
        return Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(full(events))
            .expect("valid response");
    }
    let out = match req {
        serde_json::Value::Array(_) => serde_json::Value::Array(answers),
        _ => answers.into_iter().next().unwrap_or(serde_json::Value::Null),
    };
    json_response(200, &out, None)
}

fn record(state: &State, req: &Request<Incoming>, body: Bytes, sni: &Option<String>) {
    keep(state, || RecordedRequest {
        method: req.method().clone(),
        path: req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into()),
        headers: req.headers().clone(),
        body,
        version: req.version(),
        sni: sni.clone(),
    });
}

/// Keeps a copy of a request unless [`FakeProvider::forget_requests`] said not to.
fn keep(state: &State, request: impl FnOnce() -> RecordedRequest) {
    if !state.keep_requests.load(Ordering::Acquire) {
        return;
    }
    if let Ok(mut r) = state.requests.lock() {
        r.push(request());
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never: Infallible| match never {}).boxed()
}

fn json_response(status: u16, v: &serde_json::Value, encoding: Option<&str>) -> Response<Body> {
    let raw = v.to_string().into_bytes();
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .header("x-request-id", "req_fake_0001");
    let body = match encoding.and_then(Compressor::new) {
        Some(mut c) => {
            builder = builder.header("content-encoding", c.name());
            let mut out = c.chunk(&raw);
            out.extend(c.finish());
            out
        }
        None => raw,
    };
    builder.body(full(body)).expect("valid response")
}

/// A non-streaming body of exactly `n` bytes (when `n` >= the normal body),
/// streamed in 64 KiB pieces so large bodies never sit in memory.
fn padded_response(route: &Route, model: &str, n: usize, encoding: Option<&str>) -> Response<Body> {
    const MARK: &str = "@@FAKE_PAD@@";
    let skeleton = canned::response_body(route, model, MARK).to_string();
    let (prefix, suffix) = skeleton.split_once(MARK).unwrap_or((skeleton.as_str(), ""));
    let pad = n.saturating_sub(prefix.len() + suffix.len());
    let (prefix, suffix) = (Bytes::from(prefix.to_string()), Bytes::from(suffix.to_string()));
    let piece = Bytes::from(vec![b'a'; 64 * 1024]);
    let mut compressor = encoding.and_then(Compressor::new);
    let mut builder = Response::builder()
        .status(200)
        .header("content-type", "application/json");
    if let Some(c) = &compressor {
        builder = builder.header("content-encoding", c.name());
    } else {
        builder = builder.header("content-length", prefix.len() + pad + suffix.len());
    }
    let pieces = std::iter::once(prefix)
        .chain((0..pad / piece.len()).map({
            let piece = piece.clone();
            move |_| piece.clone()
        }))
        .chain(std::iter::once(piece.slice(..pad % piece.len())))
        .chain(std::iter::once(suffix));
    let s = stream::iter(pieces.map(move |p| -> Result<Frame<Bytes>, io::Error> {
        Ok(Frame::data(p))
    }));
    let body: Body = match compressor.take() {
        Some(c) => {
            let c = Arc::new(Mutex::new(Some(c)));
            let c2 = c.clone();
            let compressed = futures_util::StreamExt::map(s, move |f| {
                let data = f.ok().and_then(|f| f.into_data().ok()).unwrap_or_default();
                let out = c
                    .lock()
                    .ok()
                    .and_then(|mut g| g.as_mut().map(|c| c.chunk(&data)))
                    .unwrap_or_default();
                Ok(Frame::data(Bytes::from(out)))
            });
            let tail = stream::once(async move {
                let rest = c2.lock().ok().and_then(|mut g| g.take()).map(Compressor::finish).unwrap_or_default();
                Ok(Frame::data(Bytes::from(rest)))
            });
            BodyExt::boxed(StreamBody::new(futures_util::StreamExt::chain(compressed, tail)))
        }
        None => BodyExt::boxed(StreamBody::new(s)),
    };
    builder.body(body).expect("valid response")
}

/// A streamed response: chunks are produced by a task that honours the
/// delay / gate / reset controls and stops when the client goes away.
fn stream_response(chunks: Vec<Vec<u8>>, content_type: &str, controls: Controls, state: Arc<State>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
    let mut compressor = controls.encoding.as_deref().and_then(Compressor::new);
    let mut builder = Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .header("x-request-id", "req_fake_0001");
    if let Some(c) = &compressor {
        builder = builder.header("content-encoding", c.name());
    }
    tokio::spawn(async move {
        for (i, chunk) in chunks.into_iter().enumerate() {
            if controls.reset_after == Some(i) {
                wait_flushed(&tx).await;
                let _ = tx
                    .send(Err(io::Error::new(io::ErrorKind::ConnectionReset, "fake upstream reset (x-fake-reset-after)")))
                    .await;
                return;
            }
            if i == 1 && controls.gate {
                match state.gate.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
            }
            if i > 0 {
                if let Some(d) = controls.delay {
                    tokio::time::sleep(d).await;
                }
            }
            let data = match compressor.as_mut() {
                Some(c) => c.chunk(&chunk),
                None => chunk,
            };
            if tx.send(Ok(Frame::data(Bytes::from(data)))).await.is_err() {
                return; // client went away
            }
        }
        if controls.reset_after.is_some() {
            // Asked to reset after at least as many chunks as there are: reset at the end.
            wait_flushed(&tx).await;
            let _ = tx
                .send(Err(io::Error::new(io::ErrorKind::ConnectionReset, "fake upstream reset (x-fake-reset-after)")))
                .await;
            return;
        }
        if let Some(c) = compressor.take() {
            let _ = tx.send(Ok(Frame::data(Bytes::from(c.finish())))).await;
        }
    });
    let s = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    builder.body(BodyExt::boxed(StreamBody::new(s))).expect("valid response")
}

/// Before a reset, let hyper take and flush every chunk already produced,
/// so the client really receives the first N chunks: hyper flushes when the
/// body stops yielding, and would drop its buffer on a body error.
async fn wait_flushed(tx: &mpsc::Sender<Result<Frame<Bytes>, io::Error>>) {
    while tx.capacity() < tx.max_capacity() && !tx.is_closed() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Answer 101 and echo raw bytes on the upgraded connection.
fn upgrade_echo(req: Request<Incoming>) -> Response<Body> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("none"));
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() || io.flush().await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        // Not a real accept hash: this fake echoes raw bytes, it is no websocket server.
        .header("sec-websocket-accept", key)
        .body(full(Bytes::new()))
        .expect("valid response")
}
