//! One intercepted request/response pair on its way to becoming an
//! interaction record.
//!
//! The response body is wrapped in [`RecordingBody`], which hands every frame
//! to the client the moment it arrives and lets a parser watch a *copy* of it.
//! Only when a response guardrail can block (or an MCP stream is scanned)
//! does a [`StreamGate`] sit in the path: it forwards complete SSE events
//! and ends the stream with an error event in the provider's shape at the
//! first event that completes a blocking match.
//! A record is written however the exchange ends: completed, upstream reset,
//! blocked, or client gone (the body is dropped). Parsing, pricing and
//! attribution happen off the forwarding path, in a spawned task. A record
//! must never hold a value a guardrail matched: captured text is masked.

use crate::attribution::Attributor;
use crate::proxy::response_guard::{self, McpCall, StreamGate};
use crate::proxy::upstream::{BoxError, ProxyBody};
use crate::proxy::{ActivePolicy, ClientConn, ProxyState};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body::{Body, Frame, SizeHint};
use palisade_core::policy::CaptureSubject;
use palisade_core::{
    AppRef, AuditEvent, CaptureMode, EventKind, Finding, Interaction, PolicyRef, RecordDecision,
    RequestCapture, ResponseCapture, Timing, UserRef,
};
use palisade_providers::{BodyDecoder, Endpoint, ParsedResponse, StreamParser};
use std::net::SocketAddr;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::OnceCell;

/// Attribution of one client connection, looked up once, lazily, off the
/// async threads, and mapped to an app catalog id.
#[derive(Clone)]
pub struct AppLookup {
    cell: Arc<OnceCell<(AppRef, Option<String>)>>,
    attributor: Arc<dyn Attributor>,
    catalog: Arc<palisade_discovery::Catalog>,
    peer: SocketAddr,
    local: SocketAddr,
}

impl AppLookup {
    pub fn new(
        attributor: Arc<dyn Attributor>,
        catalog: Arc<palisade_discovery::Catalog>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Self {
        Self {
            cell: Arc::new(OnceCell::new()),
            attributor,
            catalog,
            peer,
            local,
        }
    }

    /// Start the lookup now, while the TLS handshake runs.
    pub fn start(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            this.get().await;
        });
    }

    /// The app and OS user behind the connection.
    pub async fn get(&self) -> (AppRef, Option<String>) {
        self.cell
            .get_or_init(|| async {
                let attributor = self.attributor.clone();
                let (peer, local) = (self.peer, self.local);
                let r = tokio::task::spawn_blocking(move || attributor.lookup(peer, local)).await;
                match r {
                    Ok(Ok(p)) => {
                        let exe = p.exe.clone().unwrap_or_default();
                        let sighting = self.catalog.sighting_for_traffic(
                            &exe,
                            &p.name,
                            Some(p.pid),
                            palisade_discovery::apps::current_os(),
                        );
                        (
                            AppRef {
                                id: Some(sighting.app_id),
                                name: Some(p.name),
                                exe: p.exe.map(|e| e.display().to_string()),
                                pid: Some(p.pid),
                                unknown_reason: None,
                            },
                            p.user,
                        )
                    }
                    Ok(Err(e)) => (
                        AppRef {
                            unknown_reason: Some(e.to_string()),
                            ..Default::default()
                        },
                        None,
                    ),
                    Err(e) => (
                        AppRef {
                            unknown_reason: Some(format!("attribution task failed: {e}")),
                            ..Default::default()
                        },
                        None,
                    ),
                }
            })
            .await
            .clone()
    }
}

/// What we know about a request when its response starts.
pub struct Exchange {
    pub state: Arc<ProxyState>,
    pub conn: Arc<ClientConn>,
    pub host: String,
    pub ep: Endpoint,
    pub started: Instant,
    pub time: DateTime<Utc>,
    pub method: String,
    pub path: String,
    /// Captured (possibly encoded) request body, up to the capture cap.
    pub req_body: Bytes,
    pub req_encoding: Option<String>,
    pub req_bytes: u64,
    /// Bytes of an over-cap body that streamed past the captured prefix.
    pub req_tail_bytes: Option<Arc<std::sync::atomic::AtomicU64>>,
    pub req_truncated: bool,
    pub policy: PolicyRef,
    /// The policy in force when the request arrived (capture mode, guard).
    pub active: Arc<ActivePolicy>,
    pub findings: Vec<Finding>,
    pub guard_skipped: Option<String>,
    pub status: Option<u16>,
    pub ttfb_ms: Option<u64>,
    pub error: Option<String>,
    /// Set when this is MCP traffic (an `mcp` host, or a JSON-RPC
    /// `tools/call` body): guardrails read JSON-RPC, refusals are JSON-RPC.
    pub mcp: Option<McpCall>,
}

impl Exchange {
    /// A new exchange, starting now, judged by the policy in force now.
    pub fn new(
        state: &Arc<ProxyState>,
        conn: &Arc<ClientConn>,
        host: &str,
        ep: Endpoint,
        method: &str,
        path: &str,
    ) -> Self {
        let active = state.policy.current();
        Exchange {
            state: state.clone(),
            conn: conn.clone(),
            host: host.to_string(),
            ep,
            started: Instant::now(),
            time: Utc::now(),
            method: method.to_string(),
            path: path.to_string(),
            req_body: Bytes::new(),
            req_encoding: None,
            req_bytes: 0,
            req_tail_bytes: None,
            req_truncated: false,
            policy: PolicyRef {
                decision: RecordDecision::Allow,
                rule: None,
                version: active.version,
            },
            active,
            findings: Vec::new(),
            guard_skipped: None,
            status: None,
            ttfb_ms: None,
            error: None,
            mcp: None,
        }
    }

    /// The endpoint name guardrails and the record use: `mcp` for MCP traffic.
    pub fn endpoint_name(&self) -> &'static str {
        if self.mcp.is_some() {
            "mcp"
        } else {
            self.ep.name
        }
    }

    /// Note why guardrails did not inspect part of the exchange (kept
    /// alongside a reason already noted for the request).
    pub fn skip_guard(&mut self, why: String) {
        self.guard_skipped = Some(match self.guard_skipped.take() {
            Some(before) => format!("{before}; {why}"),
            None => why,
        });
    }

    /// The record says a response guardrail held the response back.
    pub fn mark_response_blocked(&mut self, rule: &str) {
        self.policy.decision = RecordDecision::Block;
        self.policy.rule = Some(rule.to_string());
        self.error = Some(response_guard::block_error(rule));
    }

    /// Finish with no response body (refused, upstream failed, websocket).
    pub fn finish_without_body(self, error: Option<String>) {
        let resp = ResponseData {
            error,
            ..Default::default()
        };
        spawn_record(self, resp);
    }
}

/// What was seen of the response.
#[derive(Default)]
pub struct ResponseData {
    pub parsed_stream: Option<ParsedResponse>,
    /// Decoded copy of a non-streamed body, up to the cap.
    pub body: Vec<u8>,
    pub bytes: u64,
    pub truncated: bool,
    pub error: Option<String>,
    pub decode_error: Option<String>,
    pub sse_garbage: u64,
    /// Response findings already computed on the way (MCP streams).
    pub findings: Option<Vec<Finding>>,
    /// The response rule that held the response back.
    pub blocked: Option<String>,
    /// Why the response was inspected less well than usual.
    pub guard_note: Option<String>,
    /// The status upstream answered when the client got another (a held
    /// response that was refused); the body is parsed as upstream meant it.
    pub upstream_status: Option<u16>,
}

/// Whether a response is a stream (SSE, or a path that streams JSON).
pub fn is_stream(content_type: Option<&str>, ep: &Endpoint) -> bool {
    content_type
        .map(|c| c.to_ascii_lowercase().starts_with("text/event-stream"))
        .unwrap_or(false)
        || ep.stream_from_path
}

/// Watches response bytes pass.
pub struct ResponseTap {
    ex: Option<Exchange>,
    decoder: Option<BodyDecoder>,
    stream: Option<StreamParser>,
    data: ResponseData,
    cap: usize,
    gate: Option<StreamGate>,
}

impl ResponseTap {
    pub fn new(ex: Exchange, content_type: Option<&str>, encoding: Option<&str>) -> Self {
        let mut data = ResponseData::default();
        let decoder = match encoding {
            None => None,
            Some(enc) => match BodyDecoder::new(Some(enc)) {
                Ok(d) => Some(d),
                Err(e) => {
                    data.decode_error = Some(format!("cannot decode response for parsing: {e}"));
                    None
                }
            },
        };
        let stream = is_stream(content_type, &ex.ep).then(|| StreamParser::new(&ex.ep));
        let cap = ex.state.capture_max_bytes;
        Self {
            ex: Some(ex),
            decoder,
            stream,
            data,
            cap,
            gate: None,
        }
    }

    /// Put a gate in the path. The tap then sees the gate's plain output,
    /// so it must have been created without an encoding.
    pub fn with_gate(mut self, gate: Option<StreamGate>) -> Self {
        self.gate = gate;
        self
    }

    /// Note the first byte from upstream (when it was not already noted).
    pub fn first_byte(&mut self) {
        if let Some(ex) = self.ex.as_mut() {
            if ex.ttfb_ms.is_none() {
                ex.ttfb_ms = Some(ex.started.elapsed().as_millis() as u64);
            }
        }
    }

    /// The client got another status than upstream's `status`.
    pub fn upstream_status(&mut self, status: Option<u16>) {
        self.data.upstream_status = status;
    }

    /// The response was held back by `rule`.
    pub fn block(&mut self, rule: &str) {
        if let Some(ex) = self.ex.as_mut() {
            ex.mark_response_blocked(rule);
        }
        self.data.blocked = Some(rule.to_string());
    }

    /// Account for response bytes (as sent to the client) and watch a copy.
    pub fn on_data(&mut self, chunk: &[u8]) {
        self.first_byte();
        self.data.bytes += chunk.len() as u64;
        if self.data.decode_error.is_some() {
            return;
        }
        let decoded;
        let plain: &[u8] = match self.decoder.as_mut() {
            None => chunk,
            Some(d) => match d.feed(chunk) {
                Ok(v) => {
                    decoded = v;
                    &decoded
                }
                Err(e) => {
                    self.data.decode_error = Some(format!("cannot decode response for parsing: {e}"));
                    return;
                }
            },
        };
        self.take(plain);
    }

    fn take(&mut self, plain: &[u8]) {
        if let Some(p) = self.stream.as_mut() {
            p.feed(plain);
        } else {
            let room = self.cap.saturating_sub(self.data.body.len());
            if plain.len() > room {
                self.data.truncated = true;
            }
            self.data.body.extend_from_slice(&plain[..plain.len().min(room)]);
        }
    }

    /// Write the record (once; later calls do nothing).
    pub fn finish(&mut self, error: Option<String>) {
        let Some(ex) = self.ex.take() else { return };
        if let Some(g) = self.gate.as_mut() {
            let (findings, note) = g.outcome();
            self.data.findings = findings;
            self.data.guard_note = note;
        }
        if error.is_none() {
            if let Some(d) = self.decoder.as_mut() {
                match d.finish() {
                    Ok(rest) => self.take(&rest.clone()),
                    Err(e) => {
                        self.data.decode_error =
                            Some(format!("cannot decode response for parsing: {e}"))
                    }
                }
            }
        }
        let mut data = std::mem::take(&mut self.data);
        data.error = error;
        if let Some(p) = self.stream.take() {
            data.sse_garbage = p.garbage_lines();
            data.parsed_stream = Some(p.finish());
        }
        spawn_record(ex, data);
    }
}

/// The response body handed to the client: forwards frames as they arrive
/// (through the tap's gate, when there is one).
pub struct RecordingBody {
    inner: ProxyBody,
    tap: ResponseTap,
    /// Frames to hand out before polling upstream again (gate output).
    queue: VecDeque<Result<Frame<Bytes>, BoxError>>,
    /// Nothing more comes from upstream: drain `queue`, then end.
    ended: bool,
}

impl RecordingBody {
    pub fn new(inner: hyper::body::Incoming, tap: ResponseTap) -> Self {
        Self::from_body(
            http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
                inner,
                |e| -> BoxError { Box::new(e) },
            )),
            tap,
        )
    }

    /// Wrap any body (a held response replayed, for instance).
    pub fn from_body(inner: ProxyBody, tap: ResponseTap) -> Self {
        Self {
            inner,
            tap,
            queue: VecDeque::new(),
            ended: false,
        }
    }

    /// Apply one gate step: queue what may pass, and end on a block.
    fn gate_step(&mut self, step: Result<response_guard::GateStep, String>) {
        match step {
            Ok(step) => {
                if !step.forward.is_empty() {
                    self.tap.on_data(&step.forward);
                    self.queue.push_back(Ok(Frame::data(step.forward)));
                }
                if let Some(rule) = step.block {
                    self.tap.block(&rule);
                    let last = self.tap.gate.as_ref().and_then(|g| g.error_event(&rule));
                    self.queue.push_back(match last {
                        Some(event) => Ok(Frame::data(event)),
                        None => Err(response_guard::block_error(&rule).into()),
                    });
                    self.tap.finish(None);
                    self.ended = true;
                }
            }
            Err(msg) => {
                tracing::warn!(error = %msg, "Response stream cannot be inspected; ended");
                self.tap.finish(Some(msg.clone()));
                self.queue.push_back(Err(msg.into()));
                self.ended = true;
            }
        }
    }

    fn gate_end(&mut self) {
        let step = match self.tap.gate.as_mut() {
            Some(g) => g.finish(),
            None => Ok(Default::default()),
        };
        self.gate_step(step);
        if !self.ended {
            self.tap.finish(None);
            self.ended = true;
        }
    }
}

impl Body for RecordingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.queue.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let gated = this.tap.gate.is_some();
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) if gated => {
                    match frame.into_data() {
                        Ok(d) => {
                            this.tap.first_byte();
                            let step = this.tap.gate.as_mut().map(|g| g.feed(&d));
                            if let Some(step) = step {
                                this.gate_step(step);
                            }
                        }
                        // Trailers pass as they are.
                        Err(other) => this.queue.push_back(Ok(other)),
                    }
                    if !this.ended && this.inner.is_end_stream() {
                        this.gate_end();
                    }
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        this.tap.on_data(d);
                    }
                    // hyper stops polling once the body says it has ended.
                    if this.inner.is_end_stream() {
                        this.tap.finish(None);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    let msg = format!(
                        "upstream stream interrupted: {}",
                        crate::proxy::error::chain(&*e)
                    );
                    this.tap.finish(Some(msg));
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) if gated => this.gate_end(),
                Poll::Ready(None) => {
                    this.tap.finish(None);
                    this.ended = true;
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.tap.gate.is_some() {
            self.ended && self.queue.is_empty()
        } else {
            self.inner.is_end_stream()
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.tap.gate.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for RecordingBody {
    fn drop(&mut self) {
        if self.ended || (self.tap.gate.is_none() && self.inner.is_end_stream()) {
            self.tap.finish(None);
        } else {
            // Still unfinished: the client went away before the response ended.
            self.tap
                .finish(Some("client disconnected before the response completed".into()));
        }
    }
}

impl From<RecordingBody> for ProxyBody {
    fn from(b: RecordingBody) -> Self {
        http_body_util::BodyExt::boxed_unsync(b)
    }
}

fn spawn_record(ex: Exchange, resp: ResponseData) {
    // Drop may run outside a runtime during shutdown; build inline then.
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(async move {
                let recorder = ex.state.recorder.clone();
                let ev = build_event(ex, resp).await;
                recorder.record(ev);
            });
        }
        Err(_) => tracing::warn!("Record dropped: no runtime to build it on"),
    }
}

/// Turn what was seen into an interaction record.
pub async fn build_event(ex: Exchange, resp: ResponseData) -> AuditEvent {
    let (app, os_user) = ex.conn.app.get().await;
    let state = &ex.state;

    // Request side: decode a copy, parse.
    let mut errors: Vec<String> = Vec::new();
    let req_plain = match ex.req_encoding.as_deref() {
        None => ex.req_body.to_vec(),
        Some(enc) => match BodyDecoder::new(Some(enc)).and_then(|mut d| {
            let mut v = d.feed(&ex.req_body)?;
            if !ex.req_truncated {
                v.extend(d.finish()?);
            }
            Ok(v)
        }) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("cannot decode request for parsing: {e}"));
                Vec::new()
            }
        },
    };
    let preq = if req_plain.is_empty() {
        Default::default()
    } else {
        palisade_providers::parse_request(&ex.ep, &req_plain)
    };
    if let Some(e) = &preq.error {
        if !ex.req_truncated {
            errors.push(e.clone());
        }
    }

    // Response side.
    let status = resp.upstream_status.or(ex.status).unwrap_or(0);
    let presp = match resp.parsed_stream {
        Some(p) => p,
        None if !resp.body.is_empty() && !resp.truncated => {
            palisade_providers::parse_response(&ex.ep, status, &resp.body)
        }
        None => Default::default(),
    };
    if let Some(e) = &ex.error {
        errors.insert(0, e.clone());
    }
    if let Some(e) = &resp.error {
        errors.insert(0, e.clone());
    }
    if let Some(e) = &presp.error {
        errors.push(e.clone());
    }
    if let Some(e) = &resp.decode_error {
        errors.push(e.clone());
    }
    if resp.sse_garbage > 0 {
        errors.push(format!(
            "{} unparseable line(s) in the event stream were forwarded untouched",
            resp.sse_garbage
        ));
    }

    let model = presp
        .model
        .clone()
        .or(preq.model.clone())
        .or(ex.ep.model_from_path.clone());
    let cost_usd = model
        .as_deref()
        .and_then(|m| {
            state.prices.cost_with_cache_writes(
                &ex.ep.provider,
                m,
                &presp.usage,
                presp.cache_creation_input_tokens,
            )
        });

    // Responses are scanned with the response actions; findings only here
    // (holding back happened on the way, if a response rule blocks).
    let mut findings = ex.findings.clone();
    let response_guard = &ex.active.response_guard;
    let mcp_response = ex.mcp.is_some().then(|| mcp_result_text(&resp.body)).flatten();
    let response_findings = match (&resp.findings, &ex.mcp) {
        (Some(f), _) => f.clone(),
        (None, Some(_)) if !resp.truncated => response_guard.inspect_mcp_response(&resp.body).0,
        (None, Some(_)) => Vec::new(),
        (None, None) => presp
            .text
            .as_ref()
            .map(|t| response_guard.inspect_response_text(t).0)
            .unwrap_or_default(),
    };
    response_guard::merge(&mut findings, response_findings);
    if let Some(rule) = &resp.blocked {
        response_guard::ensure_block_finding(&mut findings, rule);
    }
    if let Some(note) = &resp.guard_note {
        errors.push(note.clone());
    }
    // MCP calls: the tool call's params stand in for the prompt, the result
    // for the response text.
    let (req_text, resp_text) = match &ex.mcp {
        Some(_) => (mcp_params_text(&req_plain), mcp_response),
        None => (preq.prompt.clone(), presp.text.clone()),
    };
    // A matched value never reaches a record: captured text is always masked
    // with the same placeholders the request would get.
    let capture = ex.active.capture_for(CaptureSubject {
        user_email: state.owner_email.as_deref(),
        device_id: Some(&state.device.id),
        team: state.team.as_deref(),
    });
    let (prompt, text) = match capture {
        CaptureMode::Metadata => (None, None),
        CaptureMode::Full | CaptureMode::Redacted => {
            let mut r = palisade_guard::Redactor::new();
            let mut mask = |t: &Option<String>| {
                t.as_ref().map(|t| ex.active.guard.redact(t, &mut r).0)
            };
            (mask(&req_text), mask(&resp_text))
        }
    };

    let interaction = Interaction {
        provider: ex.ep.provider.clone(),
        host: ex.host.clone(),
        endpoint: ex.endpoint_name().to_string(),
        model,
        stream: preq.stream || ex.ep.stream_from_path,
        request: RequestCapture {
            prompt,
            params: preq.params.clone(),
            method: ex.method.clone(),
            path: ex.path.clone(),
            bytes: ex.req_bytes
                + ex
                    .req_tail_bytes
                    .as_ref()
                    .map(|t| t.load(std::sync::atomic::Ordering::Relaxed))
                    .unwrap_or(0),
            truncated: ex.req_truncated,
        },
        response: ResponseCapture {
            status: ex.status,
            text,
            stop_reason: presp.stop_reason.clone(),
            bytes: resp.bytes,
            truncated: resp.truncated,
        },
        usage: presp.usage.clone(),
        cost_usd,
        policy: ex.policy.clone(),
        findings,
        timing: Timing {
            duration_ms: ex.started.elapsed().as_millis() as u64,
            ttfb_ms: ex.ttfb_ms,
        },
        error: if errors.is_empty() {
            None
        } else {
            Some(errors.join("; "))
        },
        guard_skipped: ex.guard_skipped.clone(),
    };
    let mut ev = AuditEvent::new(
        EventKind::Interaction,
        state.device.clone(),
        UserRef {
            os_user: os_user.or_else(crate::attribution::current_os_user),
            email: state.owner_email.clone(),
            team: state.team.clone(),
        },
    );
    ev.time = ex.time;
    ev.app = Some(app);
    ev.interaction = Some(interaction);
    ev
}

/// The `params` of a JSON-RPC request (or batch), as compact JSON.
fn mcp_params_text(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let params = match &v {
        serde_json::Value::Array(batch) => {
            serde_json::Value::Array(batch.iter().filter_map(|m| m.get("params").cloned()).collect())
        }
        m => m.get("params")?.clone(),
    };
    Some(params.to_string())
}

/// The `result` (or `error`) of a JSON-RPC response body, as compact JSON.
fn mcp_result_text(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let pick = |m: &serde_json::Value| m.get("result").or_else(|| m.get("error")).cloned();
    let out = match &v {
        serde_json::Value::Array(batch) => serde_json::Value::Array(batch.iter().filter_map(pick).collect()),
        m => pick(m)?,
    };
    Some(out.to_string())
}
