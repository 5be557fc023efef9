//! Runs the release `palisade-server` binary as its own process (so its RSS
//! and CPU time are its own) on 127.0.0.1, with a generated TOML config in a
//! temp dir, and prepares it through the server library against the same
//! store before it starts: PKI, a bootstrap admin token and one multi-use
//! enrollment token. Must never bind or connect beyond loopback, never print
//! a token or the PostgreSQL password, and never leave the process running
//! (it is killed on drop).

use super::{FleetError, Target};
use palisade_server::{create_admin_token, create_enrollment_token, ServerConfig, ServerPki, Store};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a freshly started server to listen (PostgreSQL migrations included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace period after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Which store the server uses.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    /// A fresh schema `schema` in the database at `url` (dropped afterwards).
    Postgres { url: String, schema: String },
}

impl std::fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreKind::Sqlite => f.write_str("Sqlite"),
            // The URL may hold a password.
            StoreKind::Postgres { schema, .. } => f.debug_struct("Postgres").field("schema", schema).finish_non_exhaustive(),
        }
    }
}

impl StoreKind {
    pub fn name(&self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres { .. } => "postgres",
        }
    }
}

/// Server knobs the bench sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKnobs {
    pub max_concurrent_batches: usize,
    pub enroll_uses: u32,
    /// `store.max_connections`; `None` keeps the server default.
    pub store_connections: Option<u32>,
}

/// The server's TOML config: loopback listeners, everything under `data_dir`.
pub fn config_toml(
    data_dir: &Path,
    grpc: SocketAddr,
    admin: SocketAddr,
    store: &StoreKind,
    knobs: &ServerKnobs,
) -> String {
    let mut root = toml::Table::new();
    root.insert("grpc_listen".into(), grpc.to_string().into());
    root.insert("admin_listen".into(), admin.to_string().into());
    root.insert("data_dir".into(), data_dir.display().to_string().into());
    let mut s = toml::Table::new();
    if let StoreKind::Postgres { url, schema } = store {
        s.insert("postgres_url".into(), url.clone().into());
        s.insert("postgres_schema".into(), schema.clone().into());
    }
    if let Some(n) = knobs.store_connections {
        s.insert("max_connections".into(), i64::from(n).into());
    }
    root.insert("store".into(), s.into());
    let mut limits = toml::Table::new();
    let batches = i64::try_from(knobs.max_concurrent_batches).unwrap_or(i64::MAX);
    limits.insert("max_concurrent_batches".into(), batches.into());
    root.insert("limits".into(), limits.into());
    toml::to_string(&root).expect("a TOML table always serialises")
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_addr() -> Result<SocketAddr, FleetError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(FleetError::Io)?;
    l.local_addr().map_err(FleetError::Io)
}

/// The running server process.
pub struct ServerProcess {
    child: Child,
    pub target: Target,
    pub store: StoreKind,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

// === impl ServerProcess ===

impl ServerProcess {
    /// Prepare the store and start `exe` on it; returns once both listeners accept.
    pub async fn start(exe: &Path, store: StoreKind, knobs: &ServerKnobs) -> Result<Self, FleetError> {
        if !exe.exists() {
            return Err(FleetError::ServerBinary(exe.to_path_buf()));
        }
        let dir = tempfile::Builder::new().prefix("palisade-fleet-").tempdir().map_err(FleetError::Io)?;
        let (grpc, admin) = (free_addr()?, free_addr()?);
        let toml = config_toml(dir.path(), grpc, admin, &store, knobs);
        let cfg = ServerConfig::from_toml(&toml).map_err(FleetError::Config)?;
        let cfg_path = dir.path().join("server.toml");
        std::fs::write(&cfg_path, &toml).map_err(FleetError::Io)?;

        // Same store and PKI files the process will open.
        let ca_pem = ServerPki::load_or_create(&cfg).map_err(FleetError::Pki)?.ca_cert_pem().to_string();
        let db = Store::open(&cfg).await.map_err(FleetError::Store)?;
        let admin_token = create_admin_token(&db, "fleet-bench").await.map_err(FleetError::Store)?;
        let expires = chrono::Utc::now() + chrono::Duration::hours(2);
        let enroll = create_enrollment_token(&db, knobs.enroll_uses, expires, Some("fleet bench"))
            .await
            .map_err(FleetError::Store)?;
        db.close().await;

        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).map_err(FleetError::Io)?;
        let child = Command::new(exe)
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(FleetError::Io)?;
        let http = reqwest::Client::builder().no_proxy().build().map_err(FleetError::Http)?;
        let mut me = Self {
            child,
            target: Target { grpc_addr: grpc, admin_addr: admin, ca_pem, admin_token, enroll_token: enroll.token, http },
            store,
            log,
            _dir: dir,
        };
        me.wait_ready().await?;
        Ok(me)
    }

    async fn wait_ready(&mut self) -> Result<(), FleetError> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(FleetError::ServerExited { status: status.to_string(), log_tail: self.log_tail() });
            }
            let grpc = tokio::net::TcpStream::connect(self.target.grpc_addr).await.is_ok();
            let admin = tokio::net::TcpStream::connect(self.target.admin_addr).await.is_ok();
            if grpc && admin {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(FleetError::ServerNotReady { waited: READY_TIMEOUT, log_tail: self.log_tail() });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last few KB of the server's log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut cut = s.len().saturating_sub(4096);
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s[cut..].to_string()
    }

    /// SIGTERM, wait for the drain (bounded), then drop a PostgreSQL schema we made.
    pub async fn stop(mut self) -> Result<(), FleetError> {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let StoreKind::Postgres { url, schema } = &self.store {
            drop_schema(url, schema).await?;
        }
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drop the bench's throwaway schema (its name was generated by us: safe to interpolate).
async fn drop_schema(url: &str, schema: &str) -> Result<(), FleetError> {
    use sqlx::{ConnectOptions, Connection};
    if !schema.starts_with("fleet_") || !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(FleetError::Args(format!("refusing to drop schema {schema:?}: not one the bench created")));
    }
    let opts: sqlx::postgres::PgConnectOptions = url.parse().map_err(FleetError::Postgres)?;
    let mut conn = opts.connect().await.map_err(FleetError::Postgres)?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut conn).await.map_err(FleetError::Postgres)?;
    conn.close().await.map_err(FleetError::Postgres)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> ServerKnobs {
        ServerKnobs { max_concurrent_batches: 128, enroll_uses: 10, store_connections: None }
    }

    #[test]
    fn generated_sqlite_config_is_accepted_by_the_server() {
        let g: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let a: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        // A path needing TOML escaping must survive.
        let dir = Path::new("/tmp/a \"quoted\" dir\\x");
        let cfg = ServerConfig::from_toml(&config_toml(dir, g, a, &StoreKind::Sqlite, &knobs())).unwrap();
        assert_eq!(cfg.grpc_listen, "127.0.0.1:7001");
        assert_eq!(cfg.admin_listen, "127.0.0.1:7002");
        assert_eq!(cfg.data_dir, dir);
        assert_eq!(cfg.limits.max_concurrent_batches, 128);
        assert_eq!(cfg.store.postgres_url, None);
        assert_eq!(cfg.store.max_connections, palisade_server::config::DEFAULT_MAX_CONNECTIONS);
        let pool = ServerKnobs { store_connections: Some(3), ..knobs() };
        let cfg = ServerConfig::from_toml(&config_toml(dir, g, a, &StoreKind::Sqlite, &pool)).unwrap();
        assert_eq!(cfg.store.max_connections, 3);
    }

    #[test]
    fn generated_postgres_config_names_url_and_schema() {
        let g: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let store = StoreKind::Postgres { url: "postgres://u:secret@127.0.0.1:5/db".into(), schema: "fleet_abc".into() };
        let cfg = ServerConfig::from_toml(&config_toml(Path::new("/d"), g, g, &store, &knobs())).unwrap();
        assert_eq!(cfg.store.postgres_url.as_deref(), Some("postgres://u:secret@127.0.0.1:5/db"));
        assert_eq!(cfg.store.postgres_schema.as_deref(), Some("fleet_abc"));
        assert!(!format!("{store:?}").contains("secret"));
    }

    #[tokio::test]
    async fn a_missing_server_binary_is_a_clear_error() {
        let e = ServerProcess::start(Path::new("/nonexistent/palisade-server"), StoreKind::Sqlite, &knobs())
            .await
            .err()
            .unwrap();
        assert!(matches!(e, FleetError::ServerBinary(_)), "{e}");
        assert!(e.to_string().contains("cargo build --release -p palisade-server"), "{e}");
    }

    #[tokio::test]
    async fn refuses_to_drop_a_schema_it_did_not_create() {
        let e = drop_schema("postgres://127.0.0.1:1/x", "public").await.unwrap_err();
        assert!(matches!(e, FleetError::Args(_)), "{e}");
    }
}
