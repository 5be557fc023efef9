//! `palisade up`: a whole Palisade on this machine with no setup. It starts
//! the control plane (embedded SQLite) and one agent enrolled to it, both
//! in-process on loopback, prints how to use them, and runs until Ctrl-C or
//! SIGTERM, then shuts both down cleanly.
//!
//! State lives in one data dir (`server/`, `agent/`, the server CA and the
//! combined CA bundle), so a second `palisade up` reuses the server's store
//! and PKI and the agent's identity: no duplicate device, no new CA to trust.
//! Each run prints a fresh admin token; only its hash is stored. This module
//! must never log the enrollment token, and prints the admin token only in
//! the banner.

use palisade_agent::config::{AgentConfig, KeyStoreChoice, ServerLink};
use palisade_agent::Agent;
use palisade_server::{ServerConfig, ServerPki};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub const DEFAULT_GRPC_PORT: u16 = 8443;
pub const DEFAULT_ADMIN_PORT: u16 = 8080;
pub const DEFAULT_PROXY_PORT: u16 = 8877;
/// Life of the enrollment token `up` makes for its own agent.
const ENROLLMENT_TOKEN_TTL: chrono::Duration = chrono::Duration::hours(1);
/// How long shutdown may take before we stop waiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the server store, TLS material and agent state live
    /// [default: ~/.local/share/palisade/up].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// gRPC (agent mTLS) port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = DEFAULT_GRPC_PORT)]
    pub grpc_port: u16,
    /// Admin API / console port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = DEFAULT_ADMIN_PORT)]
    pub admin_port: u16,
    /// Proxy port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = DEFAULT_PROXY_PORT)]
    pub proxy_port: u16,
    /// Seconds to wait for the agent to enroll before giving up.
    #[arg(long, default_value_t = 60)]
    pub enroll_timeout: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("no data dir given and $HOME is not set; pass --data-dir")]
    NoHome,
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} for the {what}: {source} (pick another port with --{what}-port, or 0)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server config: {0}")]
    ServerConfig(#[from] palisade_server::ConfigError),
    #[error("server PKI: {0}")]
    Pki(#[from] palisade_server::pki::PkiError),
    #[error("server store: {0}")]
    Store(#[from] palisade_server::StoreError),
    #[error("control plane: {0}")]
    Server(#[from] palisade_server::ServerError),
    #[error("agent config: {0}")]
    AgentConfig(#[from] palisade_agent::config::ConfigError),
    #[error("agent: {0}")]
    Agent(#[from] palisade_agent::AgentError),
    #[error("agent identity: {0}")]
    Identity(#[from] palisade_agent::sync::SyncError),
    #[error("the agent did not enroll within {secs} s{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    EnrollTimeout { secs: u64, last_error: Option<String> },
    #[error("cannot write the banner: {0}")]
    Output(std::io::Error),
}

/// What `up` started, as printed in the banner.
#[derive(Debug, Clone)]
pub struct Banner {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    pub device_id: String,
    pub ca_cert: PathBuf,
    pub ca_bundle: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Printed once; only its hash is stored.
    pub admin_token: palisade_server::RawToken,
}

/// The default data dir: `$HOME/.local/share/palisade/up`.
pub fn default_data_dir() -> Result<PathBuf, UpError> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or(UpError::NoHome)?;
    Ok(PathBuf::from(home).join(".local/share/palisade/up"))
}

/// Start everything, print the banner to `out`, run until `shutdown`.
pub async fn run(
    args: UpArgs,
    out: &mut impl Write,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), UpError> {
    // Listen for the signal from the start, so one sent right after the
    // banner is never missed (or left to the default action).
    let (signalled, mut shutdown_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = signalled.send(());
    });
    let data_dir = match args.data_dir.clone() {
        Some(d) => d,
        None => default_data_dir()?,
    };
    private_dir(&data_dir)?;
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let bind = |what, addr| async move {
        TcpListener::bind(addr).await.map_err(|source| UpError::Bind { what, addr, source })
    };
    let grpc_listener = bind("grpc", loopback(args.grpc_port)).await?;
    let admin_listener = bind("admin", loopback(args.admin_port)).await?;
    let proxy_listener = bind("proxy", loopback(args.proxy_port)).await?;
    let local = |l: &TcpListener, what| {
        l.local_addr().map_err(|source| UpError::Bind { what, addr: loopback(0), source })
    };
    let (grpc, admin, proxy) =
        (local(&grpc_listener, "grpc")?, local(&admin_listener, "admin")?, local(&proxy_listener, "proxy")?);

    // Control plane: store, PKI and tokens before it serves.
    let mut server_cfg = ServerConfig::for_data_dir(data_dir.join("server"));
    server_cfg.grpc_listen = grpc.to_string();
    server_cfg.admin_listen = admin.to_string();
    server_cfg.validate()?;
    let pki = ServerPki::load_or_create(&server_cfg)?;
    let server_ca = data_dir.join("server-ca.pem");
    write_file(&server_ca, pki.ca_cert_pem().as_bytes())?;
    let agent_dir = data_dir.join("agent");
    let store = palisade_server::Store::open(&server_cfg).await?;
    let mut enrolled = false;
    if let Some(id) = palisade_agent::sync::identity::stored_device_id(&agent_dir) {
        if store.get_device(&id).await?.is_some() {
            enrolled = true;
        } else {
            // The server store was reset: that identity is dead, enroll afresh.
            warn!(device_id = %id, "The control plane does not know this agent's identity; enrolling again");
            palisade_agent::sync::identity::forget(&agent_dir)?;
        }
    }
    let enrollment_token = if enrolled {
        None
    } else {
        let t = palisade_server::create_enrollment_token(
            &store,
            1,
            chrono::Utc::now() + ENROLLMENT_TOKEN_TTL,
            Some("palisade up"),
        )
        .await?;
        Some(t.token.expose().to_string())
    };
    let admin_token =
        palisade_server::create_admin_token(&store, &format!("palisade up {}", chrono::Utc::now().to_rfc3339()))
            .await?;
    store.close().await;

    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(palisade_server::run(server_cfg, grpc_listener, admin_listener, async move {
        let _ = server_stopped.await;
    }));

    // The agent, enrolled to it.
    let agent_cfg = AgentConfig {
        listen: proxy,
        data_dir: agent_dir,
        key_store: KeyStoreChoice::Auto,
        server: Some(ServerLink {
            url: format!("https://{grpc}"),
            ca_file: server_ca.clone(),
            enrollment_token,
        }),
        ..AgentConfig::default()
    };
    agent_cfg.validate()?;
    let agent = match Agent::start(agent_cfg, proxy_listener).await {
        Ok(a) => a,
        Err(e) => {
            stop(server, stop_server, None).await;
            return Err(e.into());
        }
    };
    let sync = agent.sync.clone().expect("server is configured");
    let ca_cert = agent.ca.cert_path().to_path_buf();
    let ca_bundle = match write_ca_bundle(&agent, &data_dir) {
        Ok(p) => Some(p),
        Err(error) => {
            warn!(%error, "No combined CA bundle (SSL_CERT_FILE); use NODE_EXTRA_CA_CERTS or trust the CA by hand");
            None
        }
    };
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(async move {
        let _ = agent_stopped.await;
    }));

    let secs = args.enroll_timeout;
    let device_id = match tokio::time::timeout(Duration::from_secs(secs), sync.wait_enrolled()).await {
        Ok(id) => id,
        Err(_) => {
            let last_error = sync.status().last_error;
            stop(server, stop_server, Some((agent_task, stop_agent))).await;
            return Err(UpError::EnrollTimeout { secs, last_error });
        }
    };
    let banner = Banner { proxy, admin, grpc, device_id, ca_cert, ca_bundle, data_dir, admin_token };
    let printed = print_banner(out, &banner).and_then(|()| out.flush());
    if printed.is_ok() {
        let _ = (&mut shutdown_rx).await;
        info!("Shutting down");
    }
    stop(server, stop_server, Some((agent_task, stop_agent))).await;
    printed.map_err(UpError::Output)
}

type ServerTask = tokio::task::JoinHandle<Result<(), palisade_server::ServerError>>;

/// Agent first (it flushes its recorder and closes its streams), then the server.
async fn stop(server: ServerTask, stop_server: oneshot::Sender<()>, agent: Option<(tokio::task::JoinHandle<()>, oneshot::Sender<()>)>) {
    if let Some((task, tx)) = agent {
        let _ = tx.send(());
        if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
            warn!("Agent did not stop in time");
        }
    }
    let _ = stop_server.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => warn!(%error, "Control plane stopped with an error"),
        Ok(Err(error)) => warn!(%error, "Control plane task failed"),
        Err(_) => warn!("Control plane did not stop in time"),
    }
}

fn write_ca_bundle(agent: &Agent, data_dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let pem = palisade_tls::combined_bundle_pem(&agent.ca)?;
    let path = data_dir.join("ca-bundle.pem");
    write_file(&path, pem.as_bytes())?;
    Ok(path)
}

/// The banner: everything a user needs, and the admin token shown once.
pub fn print_banner(out: &mut impl Write, b: &Banner) -> std::io::Result<()> {
    let proxy = format!("http://{}", b.proxy);
    let api = format!("http://{}/api/v1/", b.admin);
    writeln!(out, "Palisade is up: a control plane and one enrolled agent on this machine.")?;
    writeln!(out)?;
    writeln!(out, "  Proxy:        {proxy}")?;
    writeln!(out, "  PAC file:     {proxy}/proxy.pac")?;
    writeln!(out, "  Device CA:    {}", b.ca_cert.display())?;
    if let Some(bundle) = &b.ca_bundle {
        writeln!(out, "  CA bundle:    {}", bundle.display())?;
    }
    writeln!(out, "  Console:      http://{}/", b.admin)?;
    writeln!(out, "  API:          {api}")?;
    writeln!(out, "  Agent gRPC:   https://{}", b.grpc)?;
    writeln!(out, "  Device id:    {}", b.device_id)?;
    writeln!(out, "  Data dir:     {}", b.data_dir.display())?;
    writeln!(out, "  Admin token:  {}", b.admin_token.expose())?;
    writeln!(out, "                (shown once; sign in to the console with it; a new one is made on every `palisade up`)")?;
    writeln!(out)?;
    writeln!(out, "Route a shell's AI traffic through Palisade:")?;
    writeln!(out, "  export HTTPS_PROXY={proxy}")?;
    writeln!(out, "  export NODE_EXTRA_CA_CERTS={}", b.ca_cert.display())?;
    if let Some(bundle) = &b.ca_bundle {
        writeln!(out, "  export SSL_CERT_FILE={}", bundle.display())?;
    }
    writeln!(out)?;
    writeln!(out, "See what was recorded:")?;
    writeln!(
        out,
        "  palisade events --spool {} --format jsonl      # on this device, before upload",
        b.data_dir.join("agent").join("spool.db").display()
    )?;
    writeln!(out, "  curl -H \"Authorization: Bearer $PALISADE_ADMIN_TOKEN\" {api}events   # in the control plane")?;
    writeln!(out)?;
    writeln!(out, "Press Ctrl-C to stop.")?;
    Ok(())
}

fn private_dir(dir: &Path) -> Result<(), UpError> {
    let err = |source| UpError::Io { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Write a public file (certificates) via a temp file and rename.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), UpError> {
    let err = |source| UpError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banner(bundle: bool) -> Banner {
        Banner {
            proxy: "127.0.0.1:8877".parse().unwrap(),
            admin: "127.0.0.1:8080".parse().unwrap(),
            grpc: "127.0.0.1:8443".parse().unwrap(),
            device_id: "dev-1".into(),
            ca_cert: "/d/agent/palisade-ca.pem".into(),
            ca_bundle: bundle.then(|| "/d/ca-bundle.pem".into()),
            data_dir: "/d".into(),
            admin_token: test_token(),
        }
    }

    fn test_token() -> palisade_server::RawToken {
        // RawToken has no public constructor; make a real one in a scratch store.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let d = tempfile::tempdir().unwrap();
            let store = palisade_server::Store::open_sqlite(&d.path().join("t.db"), 1).await.unwrap();
            let t = palisade_server::create_admin_token(&store, "t").await.unwrap();
            store.close().await;
            t
        })
    }

    #[test]
    fn banner_names_every_address_and_the_export_lines() {
        let b = banner(true);
        let mut out = Vec::new();
        print_banner(&mut out, &b).unwrap();
        let s = String::from_utf8(out).unwrap();
        for want in [
            "Proxy:        http://127.0.0.1:8877",
            "PAC file:     http://127.0.0.1:8877/proxy.pac",
            "Device CA:    /d/agent/palisade-ca.pem",
            "CA bundle:    /d/ca-bundle.pem",
            "Console:      http://127.0.0.1:8080/\n",
            "API:          http://127.0.0.1:8080/api/v1/",
            "export HTTPS_PROXY=http://127.0.0.1:8877",
            "export NODE_EXTRA_CA_CERTS=/d/agent/palisade-ca.pem",
            "export SSL_CERT_FILE=/d/ca-bundle.pem",
            b.admin_token.expose(),
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(s.trim_end().ends_with("Press Ctrl-C to stop."));
    }

    #[test]
    fn without_a_bundle_no_ssl_cert_file_line() {
        let mut out = Vec::new();
        print_banner(&mut out, &banner(false)).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("SSL_CERT_FILE"), "{s}");
        assert!(!s.contains("CA bundle"), "{s}");
    }

    #[test]
    fn taken_port_is_a_clear_error() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = taken.local_addr().unwrap().port();
            let d = tempfile::tempdir().unwrap();
            let args = UpArgs {
                data_dir: Some(d.path().to_path_buf()),
                grpc_port: 0,
                admin_port: port,
                proxy_port: 0,
                enroll_timeout: 5,
            };
            let e = run(args, &mut Vec::new(), async {}).await.unwrap_err();
            assert!(matches!(e, UpError::Bind { what: "admin", .. }), "{e}");
            assert!(e.to_string().contains("--admin-port"), "{e}");
        });
    }
}
