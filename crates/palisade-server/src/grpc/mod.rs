//! The agent-facing gRPC services (tonic, mTLS): enrollment, policy, audit
//! upload and inventory.
//!
//! **Architecture Invariant:** a device's identity comes from its verified
//! client certificate (see [`auth::authenticate`]), never from a payload
//! field; every RPC except `Enroll` authenticates first and refuses revoked
//! devices. Handlers translate proto <-> domain via `crate::convert` and talk
//! to the store only through `crate::store::Store`; they must never build SQL
//! and never log event contents or tokens.

pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod enroll;
pub(crate) mod inventory;
pub(crate) mod policy;

use crate::config::Limits;
use crate::pki::ServerPki;
use crate::policy_bus::PolicyBus;
use crate::store::Store;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};

/// Everything the services share.
#[derive(Debug)]
pub(crate) struct GrpcState {
    pub store: Store,
    pub pki: Arc<ServerPki>,
    pub bus: PolicyBus,
    pub limits: Limits,
    /// Bounds concurrent batch commits; when empty, agents are told to slow down.
    pub ingest_permits: Arc<Semaphore>,
    /// Flips to true on shutdown, ending long-lived streams.
    pub shutdown: watch::Receiver<bool>,
}

impl GrpcState {
    /// `retry_after_ms` with up to 50% random jitter, so agents do not return in lockstep.
    pub fn jittered_retry_ms(&self) -> u32 {
        let base = self.limits.slow_down_ms.max(1);
        base + rand::random::<u32>() % (base / 2 + 1)
    }
}

/// Resolves when the shutdown flag flips (or its sender is gone).
pub(crate) async fn wait_shutdown(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
