//! Distributes the current policy inside one process and across processes.
//!
//! Each process keeps the newest version in a `tokio::sync::watch` channel
//! that every `WatchPolicy` stream subscribes to. It learns of new versions
//! three ways: its own admin API publishes (immediate `refresh`), PostgreSQL
//! `NOTIFY` from another process (immediate), and a periodic poll of the
//! newest version (backstop for SQLite and for a dropped LISTEN connection).
//! The version only ever moves forward. This module must never block an
//! agent stream on the store.

use crate::store::{Store, StoreError, StoredPolicy};
use palisade_core::Policy;
use palisade_proto as proto;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum PolicyBusError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored policy version {version} is invalid: {error}")]
    Stored { version: u64, error: String },
}

/// Shared handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct PolicyBus {
    store: Store,
    tx: Arc<watch::Sender<Arc<proto::PolicyUpdate>>>,
}

impl PolicyBus {
    /// Load the newest policy (or the built-in default as version 0).
    pub async fn load(store: Store) -> Result<Self, PolicyBusError> {
        let current = encode(store.latest_policy().await?)?;
        let (tx, _) = watch::channel(Arc::new(current));
        Ok(Self {
            store,
            tx: Arc::new(tx),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<proto::PolicyUpdate>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<proto::PolicyUpdate> {
        self.tx.borrow().clone()
    }

    /// Re-read the newest version; publish it if it is newer than ours.
    pub async fn refresh(&self) -> Result<u64, PolicyBusError> {
        let known = self.tx.borrow().version;
        if self.store.latest_policy_version().await? <= known {
            return Ok(known);
        }
        let update = encode(self.store.latest_policy().await?)?;
        let version = update.version;
        let published = self.tx.send_if_modified(|cur| {
            if update.version > cur.version {
                *cur = Arc::new(update);
                true
            } else {
                false
            }
        });
        if published {
            info!(version, "Publishing policy version");
        }
        Ok(version)
    }

    /// Keep the bus current until `shutdown` resolves: poll every `poll`, and
    /// on PostgreSQL also react to NOTIFY at once.
    pub async fn follow(self, poll: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut listener = match self.store.policy_listener().await {
            Ok(l) => l,
            Err(error) => {
                warn!(%error, "Policy LISTEN unavailable; relying on polling");
                None
            }
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let notified = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|n| n.payload().to_string()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
                n = notified => match n {
                    Ok(payload) => debug!(payload, "Policy NOTIFY received"),
                    Err(error) => {
                        // PgListener reconnects on the next recv; poll meanwhile.
                        warn!(%error, "Policy LISTEN connection failed");
                        tokio::time::sleep(poll).await;
                    }
                },
            }
            if let Err(error) = self.refresh().await {
                warn!(%error, "Could not refresh policy");
            }
        }
    }
}

/// Turn a stored version into the wire update (the default policy at version 0).
pub fn encode(stored: Option<StoredPolicy>) -> Result<proto::PolicyUpdate, PolicyBusError> {
    let (mut policy, version, created_at_unix_ms) = match stored {
        None => (Policy::default(), 0, 0),
        Some(s) => {
            let p = Policy::from_json(&s.document).map_err(|e| PolicyBusError::Stored {
                version: s.version,
                error: e.to_string(),
            })?;
            (p, s.version, s.created_at.timestamp_millis())
        }
    };
    policy.version = version;
    let document_json = serde_json::to_vec(&policy).map_err(|e| PolicyBusError::Stored {
        version,
        error: e.to_string(),
    })?;
    Ok(proto::PolicyUpdate {
        version,
        document_json,
        created_at_unix_ms,
    })
}
