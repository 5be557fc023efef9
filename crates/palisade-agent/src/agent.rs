//! Assembles the agent from its configuration: key store, device CA, leaf
//! cache, upstream trust, spool, recorder and proxy state.
//!
//! Start-up work lives here so `main.rs` stays thin and tests can run a real
//! agent in-process on a listener bound to port 0.

use crate::config::{AgentConfig, ConfigError, KeyStoreChoice};
use crate::inventory::{Discovery, DiscoveryInputs, DiscoveryOptions};
use crate::proxy::{self, PolicyHandle, ProxyState, ProxyStats};
use crate::recorder::Recorder;
use crate::sync::{SyncClient, SyncHandle, SyncInputs, SyncOptions};
use palisade_core::DeviceRef;
use palisade_providers::PriceTable;
use palisade_spool::{Spool, SpoolOptions};
use palisade_tls::{DeviceCa, KeyStore, LeafCache};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::info;

pub const KEYRING_SERVICE: &str = "com.palisade.agent";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device identity: {0}")]
    Tls(#[from] palisade_tls::TlsError),
    #[error("spool: {0}")]
    Spool(#[from] palisade_spool::SpoolError),
    #[error("guardrails ({path}): {message}")]
    Guard { path: PathBuf, message: String },
    #[error("price table {path}: {message}")]
    Prices { path: PathBuf, message: String },
}

/// A running agent's handles.
pub struct Agent {
    pub state: Arc<ProxyState>,
    pub ca: Arc<DeviceCa>,
    pub spool: Spool,
    pub addr: SocketAddr,
    pub config: AgentConfig,
    /// The control-plane sync client's handle, when `server` is configured.
    pub sync: Option<SyncHandle>,
    sync_client: Option<SyncClient>,
    /// The discovery task, when `discovery.enabled`.
    discovery: Option<Discovery>,
    listener: Option<TcpListener>,
}

impl Agent {
    /// Build everything; the proxy starts serving in [`Agent::run`].
    pub async fn start(config: AgentConfig, listener: TcpListener) -> Result<Agent, AgentError> {
        let addr = listener.local_addr().map_err(|source| AgentError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let data_dir = config.data_dir.clone();
        prepare_dir(&data_dir)?;

        let store = Arc::new(match config.key_store {
            KeyStoreChoice::File => KeyStore::open_file(&data_dir.join("keys"))?,
            KeyStoreChoice::Auto => {
                let dir = data_dir.join("keys");
                tokio::task::spawn_blocking(move || KeyStore::open(KEYRING_SERVICE, &dir))
                    .await
                    .expect("key store probe panicked")
            }
        });
        // Once enrolled, records carry the server-assigned id (sync module docs).
        let enrolled_id = crate::sync::identity::stored_device_id(&data_dir);
        let device_id = match &enrolled_id {
            Some(id) => id.clone(),
            None => device_id(&data_dir)?,
        };
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        let ca = Arc::new(DeviceCa::load_or_create(
            &store,
            &data_dir,
            &format!("Palisade Device CA {hostname}"),
        )?);
        info!(ca = %ca.cert_path().display(), key_store = ?store.backend(), "Device CA ready");
        let leaves = Arc::new(LeafCache::new(ca.clone(), config.leaf_cache_size));
        let mitm_config = palisade_tls::mitm_server_config(leaves.clone());
        let upstream_tls = palisade_tls::upstream_client_config(
            config.upstream_ca_file.as_deref(),
            vec![b"http/1.1".to_vec()],
        )?;
        let overrides = config
            .host_overrides
            .iter()
            .filter_map(|(h, a)| Some((h.clone(), a.parse().ok()?)))
            .collect();
        let dialer = proxy::upstream::Dialer::new(overrides);
        let client = proxy::upstream::build_client(dialer.clone(), upstream_tls.clone());

        let mut prices = PriceTable::builtin();
        if let Some(p) = &config.price_table_file {
            let text = std::fs::read_to_string(p).map_err(|e| AgentError::Prices {
                path: p.clone(),
                message: e.to_string(),
            })?;
            let user = PriceTable::from_litellm_json(&text).map_err(|e| AgentError::Prices {
                path: p.clone(),
                message: e.to_string(),
            })?;
            prices = prices.with_overrides(user);
        }

        let spool = Spool::open(
            &data_dir.join("spool.db"),
            SpoolOptions {
                max_bytes: config.spool_max_bytes,
            },
        )
        .await?;
        let recorder = Recorder::start(spool.clone());
        let gitleaks = match &config.guard_rules_file {
            None => None,
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| AgentError::Guard {
                path: p.clone(),
                message: e.to_string(),
            })?),
        };
        // Precedence: the cached server policy once enrolled, else the local
        // policy file, else the built-in default.
        let cached = match (&config.server, &enrolled_id) {
            (Some(_), Some(_)) => crate::sync::policy::load_cached(&data_dir),
            _ => None,
        };
        let cached = cached.and_then(|p| {
            let version = p.version;
            match PolicyHandle::new(p, gitleaks.clone()) {
                Ok(h) => {
                    info!(version, "Enforcing the cached server policy");
                    Some(h)
                }
                Err(error) => {
                    tracing::warn!(%error, version, "Cached server policy does not compile; using the local policy");
                    None
                }
            }
        });
        let policy = match cached {
            Some(h) => h,
            None => PolicyHandle::new(config.initial_policy()?, gitleaks).map_err(|e| AgentError::Guard {
                path: config
                    .guard_rules_file
                    .clone()
                    .or(config.policy_file.clone())
                    .unwrap_or_default(),
                message: e.to_string(),
            })?,
        };

        let catalog = Arc::new(config.discovery.load_catalog()?);
        let state = Arc::new(ProxyState {
            policy: policy.clone(),
            leaves,
            mitm_config,
            upstream_tls,
            client,
            dialer,
            prices: Arc::new(prices),
            recorder: recorder.clone(),
            attributor: crate::attribution::platform_attributor(),
            catalog: catalog.clone(),
            device: DeviceRef {
                id: device_id,
                hostname,
                os: std::env::consts::OS.to_string(),
            },
            owner_email: config.owner_email.clone(),
            team: config.team.clone(),
            capture_max_bytes: config.capture_max_bytes,
            client_idle_timeout: Duration::from_millis(config.client_idle_timeout_ms),
            stats: ProxyStats::default(),
            public_addr: addr,
            blocked_remote: Default::default(),
        });
        let (sync_client, sync) = match &config.server {
            None => (None, None),
            Some(link) => {
                let (client, handle) = SyncClient::new(
                    SyncInputs {
                        link: link.clone(),
                        data_dir: data_dir.clone(),
                        keys: store.clone(),
                        spool: spool.clone(),
                        recorder,
                        policy,
                        device: state.device.clone(),
                        owner_email: config.owner_email.clone(),
                    },
                    SyncOptions::default(),
                );
                (Some(client), Some(handle))
            }
        };
        let discovery = config.discovery.enabled.then(|| {
            Discovery::new(DiscoveryInputs {
                config: config.discovery.clone(),
                data_dir: data_dir.clone(),
                state: state.clone(),
                sync: sync.clone(),
                catalog,
            })
        });
        Ok(Agent {
            state,
            ca,
            spool,
            addr,
            config,
            sync,
            sync_client,
            discovery,
            listener: Some(listener),
        })
    }

    /// Replace the sync client's tuning (before [`Agent::run`]; tests use
    /// short backoffs). No effect without a configured server.
    pub fn set_sync_options(&mut self, opts: SyncOptions) {
        if let Some(c) = &mut self.sync_client {
            c.set_options(opts);
        }
    }

    /// Replace the discovery task's tuning (before [`Agent::run`]; tests use
    /// a short debounce). No effect when discovery is disabled.
    pub fn set_discovery_options(&mut self, opts: DiscoveryOptions) {
        if let Some(d) = &mut self.discovery {
            d.set_options(opts);
        }
    }

    /// Serve until `shutdown`, then flush the recorder.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let listener = self.listener.take().expect("run called once");
        let (stop_sync, stop_rx) = tokio::sync::watch::channel(false);
        let sync_task = self.sync_client.take().map(|c| tokio::spawn(c.run(stop_rx)));
        let (stop_discovery, discovery_rx) = tokio::sync::watch::channel(false);
        let discovery_task = self.discovery.take().map(|d| tokio::spawn(d.run(discovery_rx)));
        info!(addr = %self.addr, "Proxy listening");
        proxy::serve(listener, self.state.clone(), shutdown).await;
        // Discovery stops first so its last records are in the flush.
        let _ = stop_discovery.send(true);
        if let Some(task) = discovery_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.state.recorder.flush()).await;
        // Whatever was not uploaded stays in the spool for the next start.
        let _ = stop_sync.send(true);
        if let Some(task) = sync_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

fn prepare_dir(dir: &Path) -> Result<(), AgentError> {
    let err = |source| AgentError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// A stable local device id (replaced by the enrolled id once enrolled).
fn device_id(dir: &Path) -> Result<String, AgentError> {
    let path = dir.join("device-id");
    let err = |source| AgentError::DataDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let id = uuid::Uuid::now_v7().to_string();
            std::fs::write(&path, &id).map_err(err)?;
            Ok(id)
        }
    }
}
