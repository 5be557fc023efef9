//! Shared harness: a real agent in-process on 127.0.0.1:0, fake AI providers
//! over real TLS (signed by a test CA the agent is told to trust), and real
//! HTTP clients going through the proxy.

#![allow(dead_code)]

use palisade_agent::config::{AgentConfig, KeyStoreChoice};
use palisade_agent::Agent;
use palisade_core::AuditEvent;
use palisade_test_support::{FakeProvider, TestCa};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

pub const AI_NAMES: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
];

pub struct Harness {
    pub addr: SocketAddr,
    pub agent_ca_pem: String,
    pub state: Arc<palisade_agent::proxy::ProxyState>,
    pub spool: palisade_spool::Spool,
    pub events: broadcast::Receiver<std::sync::Arc<AuditEvent>>,
    pub fake: FakeProvider,
    pub test_ca: TestCa,
    pub dir: tempfile::TempDir,
    /// The sync client's handle when `Options::server` was given.
    pub sync: Option<palisade_agent::sync::SyncHandle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Options {
    pub capture_max_bytes: usize,
    pub client_idle_timeout_ms: u64,
    pub self_signed_upstream: bool,
    /// A policy document (JSON) for the agent's local policy file.
    pub policy_json: Option<String>,
    /// Control plane to enroll with and sync to.
    pub server: Option<palisade_agent::config::ServerLink>,
    /// Agent data dir (to restart on the same state); default: a fresh temp dir.
    pub data_dir: Option<std::path::PathBuf>,
    pub sync_options: Option<palisade_agent::sync::SyncOptions>,
    /// Discovery settings; `None` turns discovery off so tests never scan
    /// (or enforce on) this machine's real homes.
    pub discovery: Option<palisade_agent::config::DiscoveryConfig>,
    pub discovery_options: Option<palisade_agent::inventory::DiscoveryOptions>,
    /// More host names the fake answers for (certificate and host override),
    /// e.g. an MCP server host that policy lists in `ai_hosts`.
    pub extra_hosts: Vec<&'static str>,
    /// The device's team (agent config `team`).
    pub team: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            capture_max_bytes: palisade_agent::config::DEFAULT_CAPTURE_MAX_BYTES,
            client_idle_timeout_ms: 10_000,
            self_signed_upstream: false,
            policy_json: None,
            server: None,
            data_dir: None,
            sync_options: None,
            discovery: None,
            discovery_options: None,
            extra_hosts: Vec::new(),
            team: None,
        }
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::with(Options::default()).await
    }

    pub async fn with(opts: Options) -> Harness {
        let test_ca = TestCa::new();
        let names: Vec<&str> = AI_NAMES.iter().chain(&opts.extra_hosts).copied().collect();
        let fake = if opts.self_signed_upstream {
            FakeProvider::start_with_self_signed(&names).await
        } else {
            FakeProvider::start(&test_ca, &names).await
        };
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("upstream-ca.pem");
        std::fs::write(&ca_file, test_ca.cert_pem()).unwrap();
        let mut cfg = AgentConfig {
            data_dir: opts
                .data_dir
                .clone()
                .unwrap_or_else(|| dir.path().join("agent")),
            server: opts.server.clone(),
            upstream_ca_file: Some(ca_file),
            key_store: KeyStoreChoice::File,
            capture_max_bytes: opts.capture_max_bytes,
            client_idle_timeout_ms: opts.client_idle_timeout_ms,
            owner_email: Some("jane@example.com".into()),
            team: opts.team.clone(),
            discovery: opts
                .discovery
                .clone()
                .unwrap_or(palisade_agent::config::DiscoveryConfig {
                    enabled: false,
                    ..Default::default()
                }),
            ..Default::default()
        };
        for n in &names {
            cfg.host_overrides
                .insert(n.to_string(), fake.addr.to_string());
        }
        if let Some(p) = &opts.policy_json {
            let f = dir.path().join("policy.json");
            std::fs::write(&f, p).unwrap();
            cfg.policy_file = Some(f);
        }
        cfg.validate().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut agent = Agent::start(cfg, listener).await.unwrap();
        if let Some(o) = opts.sync_options.clone() {
            agent.set_sync_options(o);
        }
        if let Some(o) = opts.discovery_options.clone() {
            agent.set_discovery_options(o);
        }
        let sync = agent.sync.clone();
        let addr = agent.addr;
        let agent_ca_pem = agent.ca.cert_pem();
        let state = agent.state.clone();
        let spool = agent.spool.clone();
        let events = state.recorder.subscribe();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(async move {
            let _ = rx.await;
        }));
        Harness {
            addr,
            agent_ca_pem,
            state,
            spool,
            events,
            fake,
            test_ca,
            dir,
            sync,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A reqwest client that goes through the proxy and trusts only the agent CA.
    pub fn client(&self, http1_only: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(format!("http://{}", self.addr)).unwrap())
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.agent_ca_pem.as_bytes()).unwrap(),
            )
            .timeout(Duration::from_secs(30));
        if http1_only {
            b = b.http1_only();
        }
        b.build().unwrap()
    }

    /// Wait for the next record to reach the spool.
    pub async fn next_event(&mut self) -> AuditEvent {
        tokio::time::timeout(Duration::from_secs(20), self.events.recv())
            .await
            .expect("a record within 20s")
            .map(std::sync::Arc::unwrap_or_clone)
            .expect("recorder alive")
    }

    /// Wait until `n` records reached the spool, then return all spooled records.
    pub async fn spooled(&mut self, n: usize) -> Vec<AuditEvent> {
        for _ in 0..n {
            self.next_event().await;
        }
        self.spool.peek(10_000).await.unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Open a raw CONNECT tunnel through the proxy; returns the stream after the 200.
pub async fn raw_connect(proxy: SocketAddr, target: &str) -> TcpStream {
    raw_connect_sending(proxy, target, b"").await
}

/// As [`raw_connect`], with `early` bytes sent in the same write as the
/// CONNECT request (a client that does not wait for the 200).
pub async fn raw_connect_sending(proxy: SocketAddr, target: &str, early: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut first = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes();
    first.extend_from_slice(early);
    s.write_all(&first).await.unwrap();
    // Read the response head byte by byte so no tunnel bytes are consumed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT answered {head}");
    s
}

/// A rustls client config trusting only `ca_pem`.
pub fn tls_client(ca_pem: &str, alpn: &[&[u8]], sni: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let mut rd = std::io::BufReader::new(ca_pem.as_bytes());
    for c in rustls_pemfile::certs(&mut rd) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg.enable_sni = sni;
    Arc::new(cfg)
}

/// Read an HTTP/1.1 response head from a buffered stream.
pub async fn read_head<R: tokio::io::AsyncRead + Unpin>(r: &mut BufReader<R>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap() == 0 {
            break;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    head
}

pub fn interaction(ev: &AuditEvent) -> &palisade_core::Interaction {
    ev.interaction.as_ref().expect("an interaction record")
}
