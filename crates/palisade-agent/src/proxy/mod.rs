//! The local proxy listener: explicit `CONNECT`, plain-HTTP forwarding and
//! `/proxy.pac`.
//!
//! Architecture invariants kept here:
//! - Only hosts that policy names as AI providers are decrypted; every other
//!   CONNECT is a blind byte tunnel that is never parsed or recorded beyond a
//!   connection count.
//! - The decision is made from the CONNECT target alone, before reading a
//!   byte from the client, so server-speaks-first protocols never stall.
//! - The proxy never waits on the control plane: policy is read from a local
//!   handle, and records go to the spool through the recorder.

pub mod error;
pub mod exchange;
pub mod intercept;
pub mod pac;
pub mod response_guard;
pub mod upstream;

use crate::attribution::Attributor;
use crate::recorder::Recorder;
use bytes::Bytes;
use error::{ErrorSource, ProxyError};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use palisade_core::{DeviceRef, Policy};
use palisade_providers::PriceTable;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};
use upstream::{BoxError, Dialer, ProxyBody, UpstreamClient};

/// A policy together with its compiled guardrails.
pub struct ActivePolicy {
    pub policy: Policy,
    pub guard: palisade_guard::Guard,
    /// The same detectors with the policy's response actions.
    pub response_guard: Arc<palisade_guard::Guard>,
}

impl std::ops::Deref for ActivePolicy {
    type Target = Policy;
    fn deref(&self) -> &Policy {
        &self.policy
    }
}

/// The policy currently in force, swapped atomically when a new one arrives.
/// A policy whose guardrails do not compile is refused and the old one stays.
#[derive(Clone)]
pub struct PolicyHandle {
    active: Arc<RwLock<Arc<ActivePolicy>>>,
    /// A user's gitleaks-format rule file, compiled into every policy's guard.
    gitleaks_toml: Option<Arc<str>>,
    /// Bumped on every successful [`PolicyHandle::set`], so tasks that act
    /// on policy (MCP enforcement) re-apply without polling.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl PolicyHandle {
    pub fn new(p: Policy, gitleaks_toml: Option<String>) -> Result<Self, palisade_guard::GuardError> {
        let gitleaks_toml: Option<Arc<str>> = gitleaks_toml.map(Into::into);
        let active = compile(p, gitleaks_toml.as_deref())?;
        Ok(Self {
            active: Arc::new(RwLock::new(Arc::new(active))),
            gitleaks_toml,
            changes: Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    pub fn current(&self) -> Arc<ActivePolicy> {
        self.active.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Install `p`; on error the current policy stays in force.
    pub fn set(&self, p: Policy) -> Result<(), palisade_guard::GuardError> {
        let active = compile(p, self.gitleaks_toml.as_deref())?;
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(active);
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Notified after every policy change (the value counts changes).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

fn compile(policy: Policy, gitleaks: Option<&str>) -> Result<ActivePolicy, palisade_guard::GuardError> {
    let build = |g: &palisade_core::policy::Guardrails| match gitleaks {
        Some(t) => palisade_guard::Guard::with_gitleaks_toml(g, t),
        None => palisade_guard::Guard::new(g),
    };
    let guard = build(&policy.guardrails)?;
    let response_guard = Arc::new(build(&policy.guardrails.for_responses())?);
    Ok(ActivePolicy { policy, guard, response_guard })
}

/// Counters exposed for tests, `palisade status` and benchmarks.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub tunnels: AtomicU64,
    pub intercepted: AtomicU64,
    pub forwarded_plain: AtomicU64,
}

/// Everything a connection needs, shared by all connections.
pub struct ProxyState {
    pub policy: PolicyHandle,
    pub leaves: Arc<palisade_tls::LeafCache>,
    pub mitm_config: Arc<rustls::ServerConfig>,
    pub upstream_tls: Arc<rustls::ClientConfig>,
    pub client: UpstreamClient,
    pub dialer: Dialer,
    pub prices: Arc<PriceTable>,
    pub recorder: Recorder,
    pub attributor: Arc<dyn Attributor>,
    /// AI app catalog: maps a process to the app id policy decisions name.
    pub catalog: Arc<palisade_discovery::Catalog>,
    pub device: DeviceRef,
    pub owner_email: Option<String>,
    /// The device's team (MDM-managed), for per-team capture overrides.
    pub team: Option<String>,
    pub capture_max_bytes: usize,
    /// How long a client may stay silent mid-request before we give up.
    pub client_idle_timeout: Duration,
    pub stats: ProxyStats,
    /// The address clients reach the proxy on (for the PAC file).
    pub public_addr: SocketAddr,
    /// Remote MCP servers policy refuses, published by the discovery task.
    pub blocked_remote: crate::inventory::BlockedRemotes,
}

/// Accept connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("Proxy listener stopping");
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let state = state.clone();
                    state.stats.connections.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move { serve_client(stream, peer, state).await });
                }
                Err(error) => {
                    warn!(%error, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Per-client-connection facts.
pub struct ClientConn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub app: exchange::AppLookup,
}

async fn serve_client(stream: TcpStream, peer: SocketAddr, state: Arc<ProxyState>) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(state.public_addr);
    let conn = Arc::new(ClientConn {
        peer,
        local,
        app: exchange::AppLookup::new(state.attributor.clone(), state.catalog.clone(), peer, local),
    });
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, state, conn).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .title_case_headers(false)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await;
    if let Err(error) = result {
        debug!(%error, %peer, "Client connection ended with error");
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<ProxyState>,
    conn: Arc<ClientConn>,
) -> Response<ProxyBody> {
    if req.method() == Method::CONNECT {
        return connect(req, state, conn).await;
    }
    if req.uri().scheme().is_some() {
        return intercept::forward_plain(req, state, conn).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/proxy.pac") => {
            let body = pac::render(&state.policy.current(), state.public_addr);
            Response::builder()
                .header(http::header::CONTENT_TYPE, pac::CONTENT_TYPE)
                .header(http::header::CACHE_CONTROL, "max-age=60")
                .body(full(body))
                .expect("valid response")
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        _ => text(
            StatusCode::BAD_REQUEST,
            "this is the Palisade proxy: use it as an HTTP(S) proxy, or fetch /proxy.pac\n",
        ),
    }
}

/// Split a CONNECT authority into host and port.
fn authority(req: &Request<Incoming>) -> Option<(String, u16)> {
    let auth = req.uri().authority()?;
    Some((auth.host().to_string(), auth.port_u16().unwrap_or(443)))
}

async fn connect(
    req: Request<Incoming>,
    state: Arc<ProxyState>,
    conn: Arc<ClientConn>,
) -> Response<ProxyBody> {
    let Some((host, port)) = authority(&req) else {
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port\n");
    };
    let provider = state
        .policy
        .current()
        .ai_provider_for(&host)
        .map(str::to_string);
    // A destination only denied remote MCP servers use is refused before a
    // byte flows. AI hosts are refused per request (by path) instead.
    if provider.is_none() {
        if let Some(b) = state.blocked_remote.for_connect(&host, port) {
            tokio::spawn(async move {
                use crate::inventory::remote::{record_block, BlockStage};
                record_block(&state, &conn, &b, BlockStage::Connect, None).await;
            });
            return text(
                StatusCode::FORBIDDEN,
                "palisade: this MCP server is denied by policy\n",
            );
        }
    }
    // A blind tunnel dials first, so an unreachable destination gets a 502
    // that says why instead of a 200 and a dead connection.
    let upstream = match provider {
        Some(_) => None,
        None => match state.dialer.connect(&host, port).await {
            Ok(s) => Some(s),
            Err(e) => {
                debug!(error = %e.message, host, port, "Tunnel connect failed");
                return e.into();
            }
        },
    };
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(error) => {
                debug!(%error, host, "CONNECT upgrade failed");
                return;
            }
        };
        match (provider, upstream) {
            (Some(provider), _) => {
                state.stats.intercepted.fetch_add(1, Ordering::Relaxed);
                intercept::intercept(TokioIo::new(upgraded), host, port, provider, state, conn)
                    .await
            }
            (None, Some(upstream)) => {
                state.stats.tunnels.fetch_add(1, Ordering::Relaxed);
                tunnel(upgraded, upstream, &host, port).await
            }
            (None, None) => {}
        }
    });
    Response::new(empty())
}

/// A blind tunnel: bytes both ways, never decrypted, never parsed. The
/// client's socket is taken back out of hyper's upgrade wrapper when it can
/// be, so the copy loop works on two plain sockets.
async fn tunnel(client: hyper::upgrade::Upgraded, mut upstream: TcpStream, host: &str, port: u16) {
    let result = match client.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let mut client = parts.io.into_inner();
            // Bytes the client sent right behind its CONNECT request go first.
            match upstream.write_all(&parts.read_buf).await {
                Ok(()) => copy_both_ways(&mut client, &mut upstream).await,
                Err(e) => Err(e),
            }
        }
        Err(client) => copy_both_ways(&mut TokioIo::new(client), &mut upstream).await,
    };
    if let Err(error) = result {
        debug!(%error, host, port, "Tunnel closed with error");
    }
}

/// Buffer per direction of a blind tunnel.
const TUNNEL_BUFFER: usize = 256 * 1024;

async fn copy_both_ways<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, TUNNEL_BUFFER, TUNNEL_BUFFER).await
}

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into())
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

pub fn text(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(msg.to_string()))
        .expect("valid response")
}

impl From<ProxyError> for Response<ProxyBody> {
    fn from(e: ProxyError) -> Self {
        let status = match e.source {
            ErrorSource::Client => StatusCode::BAD_REQUEST,
            ErrorSource::Upstream => StatusCode::BAD_GATEWAY,
            ErrorSource::Policy => StatusCode::FORBIDDEN,
            ErrorSource::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        text(status, &format!("palisade: {}\n", e.message))
    }
}
