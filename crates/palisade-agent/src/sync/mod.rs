//! The agent's sync client: enrollment, the mTLS channel to the control
//! plane, policy from it, audit records and inventory to it.
//!
//! It must never make the proxy wait (the proxy reads a local policy handle
//! and writes to the spool; this module only swaps the handle and drains the
//! spool), never delete a record the server has not acknowledged, and never
//! log the enrollment token or a private key.
//!
//! # What survives what
//! - **Identity.** Enrolled once; the key is in the key store, the
//!   certificates and `identity.json` in `data_dir` (see [`identity`]). Every
//!   later start reuses it, so restarts and `kill -9` never enroll twice.
//!   Until enrollment succeeds the proxy runs and records under the local
//!   device id; the uploader stamps the enrolled id into each record it
//!   sends (the server takes the id from the certificate in any case), and
//!   the next start uses the enrolled id for new records.
//! - **Policy.** The last applied server version is cached in
//!   `data_dir/policy-cache.json` (atomic rename) and, once enrolled, is
//!   what the agent enforces at start, before the server is reachable.
//! - **Audit records.** They live in the spool until the server acknowledges
//!   them; see `upload.rs` for the ack rule. A crash, a server restart or a
//!   lost ack means a re-send, and the server deduplicates by event id.
//!
//! # Backoff
//! Every loop (enrollment, policy stream, upload stream) retries with
//! exponential backoff and full jitter ([`backoff`]): windows of
//! `backoff_base * 2^n` capped at `backoff_cap` (defaults 500 ms and 60 s),
//! reset after a success. A server `SlowDown` or retryable `BatchError` is
//! honoured with its `retry_after_ms` plus up to 50% jitter. A revoked device
//! (`PERMISSION_DENIED`) keeps its records and keeps retrying at the cap, so
//! an un-revoke or re-enrollment resumes the upload without loss.

pub mod backoff;
pub mod identity;
pub mod policy;
mod upload;

#[cfg(test)]
mod testing;

use crate::config::ServerLink;
use crate::proxy::PolicyHandle;
use crate::recorder::Recorder;
use palisade_core::DeviceRef;
use palisade_proto as proto;
use palisade_spool::Spool;
use palisade_tls::KeyStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{error, info, warn};

pub use identity::DeviceIdentity;

pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(60);
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 500;
/// Kept well under the server's default 4 MiB message limit.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 2 * 1024 * 1024;
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Fallback spool poll when no record notification arrives.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// HTTP/2 pings on the channel, so a vanished server is noticed on an idle stream.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Tuning of the sync client; the defaults suit a fleet, tests shorten them.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub max_message_bytes: usize,
    /// How long to wait for the answer to one batch before re-sending it.
    pub ack_timeout: Duration,
    /// Deadline of unary calls and of opening a stream.
    pub rpc_timeout: Duration,
    pub connect_timeout: Duration,
    pub poll_interval: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            batch_max_events: DEFAULT_BATCH_MAX_EVENTS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

/// Everything that can go wrong in the sync client.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the device identity exists but its private key {name:?} is missing from the key store")]
    MissingKey { name: &'static str },
    #[error("device identity: {0}")]
    Tls(#[from] palisade_tls::TlsError),
    #[error("enrollment answer unusable: {reason}")]
    BadEnrollResponse { reason: String },
    #[error("server.url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("connection to the control plane: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{what} refused: {status}")]
    Rpc {
        what: &'static str,
        status: tonic::Status,
    },
    #[error("{what} timed out")]
    Timeout { what: &'static str },
    #[error("the device is not enrolled yet")]
    NotEnrolled,
    #[error("no enrollment token is configured (server.enrollment_token) and the device has no identity")]
    NoToken,
}

/// What the sync client has achieved so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStatus {
    /// The enrolled device id, once enrolled.
    pub device_id: Option<String>,
    /// The server policy version in force (applied or confirmed).
    pub applied_policy_version: Option<u64>,
    /// Records acknowledged by the server since start.
    pub uploaded_events: u64,
    /// The latest problem, for status displays (never holds a secret).
    pub last_error: Option<String>,
}

/// One inventory item for [`SyncHandle::report_inventory`].
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryItem {
    /// [`proto::INVENTORY_KIND_APP`], [`proto::INVENTORY_KIND_MCP_SERVER`], or a future kind.
    pub kind: String,
    /// Stable id within the kind (catalog id, executable, MCP fingerprint).
    pub id: String,
    pub name: String,
    /// A JSON object with kind-specific details, or `Null`.
    pub details: serde_json::Value,
}

impl From<InventoryItem> for proto::InventoryItem {
    fn from(i: InventoryItem) -> Self {
        let InventoryItem { kind, id, name, details } = i;
        proto::InventoryItem {
            kind,
            id,
            name,
            details_json: if details.is_null() {
                Vec::new()
            } else {
                serde_json::to_vec(&details).expect("JSON value serializes")
            },
        }
    }
}

/// An enrolled device's connection: its id and the shared mTLS channel.
#[derive(Clone)]
pub(crate) struct Link {
    pub device_id: String,
    pub channel: Channel,
}

pub(crate) struct Shared {
    pub status: watch::Sender<SyncStatus>,
    link: watch::Sender<Option<Link>>,
    rpc_timeout: Duration,
}

/// A cheap, cloneable view of the running sync client.
#[derive(Clone)]
pub struct SyncHandle {
    shared: Arc<Shared>,
}

// === impl SyncHandle ===

impl SyncHandle {
    pub fn status(&self) -> SyncStatus {
        self.shared.status.borrow().clone()
    }

    /// Status updates (enrolled, policy applied, records uploaded).
    pub fn watch(&self) -> watch::Receiver<SyncStatus> {
        self.shared.status.subscribe()
    }

    /// Wait until the device is enrolled; returns its id. Callers bound it
    /// with a timeout: it waits as long as enrollment keeps failing.
    pub async fn wait_enrolled(&self) -> String {
        let mut rx = self.shared.status.subscribe();
        loop {
            if let Some(id) = rx.borrow_and_update().device_id.clone() {
                return id;
            }
            if rx.changed().await.is_err() {
                // The client stopped; nothing will change any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Send an inventory report over the device's mTLS channel. `full_snapshot`:
    /// `items` replace what the server holds; otherwise they are upserted.
    /// Returns the number of items the server stored.
    pub async fn report_inventory(&self, items: Vec<InventoryItem>, full_snapshot: bool) -> Result<u32, SyncError> {
        let link = self.shared.link.borrow().clone().ok_or(SyncError::NotEnrolled)?;
        let mut client = proto::inventory_service_client::InventoryServiceClient::new(link.channel);
        let req = proto::InventoryReport {
            items: items.into_iter().map(Into::into).collect(),
            full_snapshot,
            observed_at_unix_ms: chrono::Utc::now().timestamp_millis(),
        };
        let resp = tokio::time::timeout(self.shared.rpc_timeout, client.report(req))
            .await
            .map_err(|_| SyncError::Timeout { what: "inventory report" })?
            .map_err(|status| SyncError::Rpc { what: "inventory report", status })?;
        Ok(resp.into_inner().accepted)
    }
}

/// What the sync client works with; built by `Agent::start`.
pub struct SyncInputs {
    pub link: ServerLink,
    pub data_dir: PathBuf,
    pub keys: Arc<KeyStore>,
    pub spool: Spool,
    pub recorder: Recorder,
    pub policy: PolicyHandle,
    /// This device as the proxy records it (hostname and OS are reused).
    pub device: DeviceRef,
    pub owner_email: Option<String>,
}

/// The sync client, ready to [`run`](SyncClient::run).
pub struct SyncClient {
    ctx: Ctx,
}

pub(crate) struct Ctx {
    pub link: ServerLink,
    pub data_dir: PathBuf,
    pub keys: Arc<KeyStore>,
    pub spool: Spool,
    pub recorder: Recorder,
    pub policy: PolicyHandle,
    pub device: DeviceRef,
    pub owner_email: Option<String>,
    pub opts: SyncOptions,
    pub shared: Arc<Shared>,
}

// === impl SyncClient ===

impl SyncClient {
    pub fn new(inputs: SyncInputs, opts: SyncOptions) -> (SyncClient, SyncHandle) {
        let SyncInputs { link, data_dir, keys, spool, recorder, policy, device, owner_email } = inputs;
        let (status, _) = watch::channel(SyncStatus::default());
        let (link_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared { status, link: link_tx, rpc_timeout: opts.rpc_timeout });
        let handle = SyncHandle { shared: shared.clone() };
        let ctx = Ctx { link, data_dir, keys, spool, recorder, policy, device, owner_email, opts, shared };
        (SyncClient { ctx }, handle)
    }

    /// Replace the tuning before `run` (tests shorten the backoff).
    pub fn set_options(&mut self, opts: SyncOptions) {
        self.ctx.opts = opts;
    }

    /// Enroll if needed, then follow policy and drain the spool until `stop`
    /// turns true. Never returns early on a server problem: it retries.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let ctx = self.ctx;
        let Some(identity) = obtain_identity(&ctx, &mut stop).await else {
            return;
        };
        let channel = match mtls_channel(&ctx, &identity) {
            Ok(c) => c,
            Err(error) => {
                error!(%error, "Cannot set up the control-plane channel; sync disabled until restart");
                ctx.set_error(error.to_string());
                return;
            }
        };
        let link = Link { device_id: identity.device_id.clone(), channel };
        ctx.shared.link.send_replace(Some(link.clone()));
        ctx.shared.status.send_modify(|s| s.device_id = Some(identity.device_id.clone()));
        info!(device_id = %identity.device_id, url = %ctx.link.url, "Sync running");
        tokio::join!(
            policy::run(&ctx, &link, stop.clone()),
            upload::run(&ctx, &link, stop.clone()),
        );
        info!("Sync stopped");
    }
}

// === impl Ctx ===

impl Ctx {
    pub(crate) fn device_ref(&self, device_id: &str) -> DeviceRef {
        DeviceRef { id: device_id.to_string(), ..self.device.clone() }
    }

    pub(crate) fn set_error(&self, message: String) {
        self.shared.status.send_modify(|s| s.last_error = Some(message));
    }

    /// Log a failed call at the right level and remember it.
    pub(crate) fn note_status(&self, what: &'static str, status: &tonic::Status) {
        let code = status.code();
        match code {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => error!(
                what,
                ?code,
                message = status.message(),
                "Control plane refused this device; records stay in the spool"
            ),
            _ => warn!(what, ?code, message = status.message(), "Control plane call failed; retrying"),
        }
        self.set_error(format!("{what}: {code:?}: {}", status.message()));
    }
}

/// The stored identity, or a new one from enrollment (retried with backoff).
/// `None` only when stopped first.
async fn obtain_identity(ctx: &Ctx, stop: &mut watch::Receiver<bool>) -> Option<DeviceIdentity> {
    let (data_dir, keys) = (ctx.data_dir.clone(), ctx.keys.clone());
    let stored = tokio::task::spawn_blocking(move || identity::load(&data_dir, &keys))
        .await
        .expect("identity load panicked");
    match stored {
        Ok(Some(id)) => {
            info!(device_id = %id.device_id, "Using the stored device identity");
            return Some(id);
        }
        Ok(None) => info!(url = %ctx.link.url, "No device identity yet; enrolling"),
        Err(error) => error!(%error, "Stored device identity is unusable; enrolling again"),
    }
    let mut backoff = backoff::Backoff::new(ctx.opts.backoff_base, ctx.opts.backoff_cap);
    loop {
        match enroll_once(ctx).await {
            Ok(id) => {
                info!(device_id = %id.device_id, "Device enrolled");
                return Some(id);
            }
            Err(error) => {
                match &error {
                    SyncError::Rpc { status, .. }
                        if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::InvalidArgument) =>
                    {
                        error!(%error, "Enrollment refused; retrying later")
                    }
                    SyncError::NoToken => error!(%error, "Cannot enroll"),
                    _ => warn!(%error, "Enrollment failed; retrying"),
                }
                ctx.set_error(error.to_string());
            }
        }
        if sleep_or_stop(backoff.next_delay(), stop).await {
            return None;
        }
    }
}

async fn enroll_once(ctx: &Ctx) -> Result<DeviceIdentity, SyncError> {
    let token = ctx.link.enrollment_token.clone().filter(|t| !t.is_empty()).ok_or(SyncError::NoToken)?;
    let ca_pem = read_server_ca(ctx, None)?;
    let endpoint = endpoint(ctx, ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))?;
    let channel = tokio::time::timeout(ctx.opts.connect_timeout, endpoint.connect())
        .await
        .map_err(|_| SyncError::Timeout { what: "connecting to the control plane" })??;
    let placeholder = ctx.device.id.clone();
    let (key_pem, csr_pem) =
        tokio::task::spawn_blocking(move || identity::new_key_and_csr(&placeholder)).await.expect("keygen panicked")?;
    let facts = identity::device_facts(&ctx.data_dir, &ctx.device.hostname, ctx.owner_email.as_deref());
    let mut client = proto::enrollment_client::EnrollmentClient::new(channel);
    let resp = tokio::time::timeout(
        ctx.opts.rpc_timeout,
        client.enroll(proto::EnrollRequest { token, csr_pem, facts: Some(facts) }),
    )
    .await
    .map_err(|_| SyncError::Timeout { what: "enrollment" })?
    .map_err(|status| SyncError::Rpc { what: "enrollment", status })?;
    let id = identity::from_response(resp.into_inner(), key_pem)?;
    let (data_dir, keys, url, to_save) = (ctx.data_dir.clone(), ctx.keys.clone(), ctx.link.url.clone(), id.clone());
    tokio::task::spawn_blocking(move || identity::save(&data_dir, &keys, &to_save, &url))
        .await
        .expect("identity save panicked")?;
    Ok(id)
}

/// The CA to trust for the server: the config's `ca_file`, else (enrolled)
/// the CA the server returned at enrollment.
fn read_server_ca(ctx: &Ctx, identity: Option<&DeviceIdentity>) -> Result<String, SyncError> {
    match std::fs::read_to_string(&ctx.link.ca_file) {
        Ok(pem) => Ok(pem),
        Err(source) => match identity {
            Some(id) => {
                warn!(error = %source, ca_file = %ctx.link.ca_file.display(), "Using the server CA stored at enrollment");
                Ok(id.server_ca_pem.clone())
            }
            None => Err(SyncError::Io { path: ctx.link.ca_file.clone(), source }),
        },
    }
}

fn endpoint(ctx: &Ctx, tls: ClientTlsConfig) -> Result<Endpoint, SyncError> {
    let invalid = |reason: String| SyncError::InvalidUrl { url: ctx.link.url.clone(), reason };
    let ep = Endpoint::from_shared(ctx.link.url.clone()).map_err(|e| invalid(e.to_string()))?;
    Ok(ep
        .tls_config(tls)?
        .connect_timeout(ctx.opts.connect_timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true))
}

/// The device's mTLS channel. Lazy: it connects on first use and reconnects
/// by itself after a failure, so loops only need to retry their call.
fn mtls_channel(ctx: &Ctx, id: &DeviceIdentity) -> Result<Channel, SyncError> {
    let ca_pem = read_server_ca(ctx, Some(id))?;
    let key = id.key_pem().expose_str().ok_or(SyncError::MissingKey { name: identity::DEVICE_KEY_NAME })?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(&id.cert_chain_pem, key));
    Ok(endpoint(ctx, tls)?.connect_lazy())
}

/// Resolves once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Sleep `d` unless `stop` turns true first; `true` means stop.
pub(crate) async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stopped(stop) => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_items_convert_with_json_details() {
        let item = InventoryItem {
            kind: proto::INVENTORY_KIND_MCP_SERVER.into(),
            id: "fp-1".into(),
            name: "github".into(),
            details: serde_json::json!({"transport": "stdio"}),
        };
        let p: proto::InventoryItem = item.into();
        assert_eq!(p.kind, "mcp_server");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&p.details_json).unwrap()["transport"], "stdio");
        let empty: proto::InventoryItem = InventoryItem {
            kind: "app".into(),
            id: "cursor".into(),
            name: "Cursor".into(),
            details: serde_json::Value::Null,
        }
        .into();
        assert!(empty.details_json.is_empty());
    }

    #[tokio::test]
    async fn stop_interrupts_sleep_and_a_dropped_sender_counts_as_stop() {
        let (tx, mut rx) = watch::channel(false);
        let sleeper = tokio::spawn(async move { sleep_or_stop(Duration::from_secs(3600), &mut rx).await });
        tx.send(true).unwrap();
        assert!(sleeper.await.unwrap());
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        assert!(sleep_or_stop(Duration::from_secs(3600), &mut rx).await);
        let (_tx, mut rx) = watch::channel(false);
        assert!(!sleep_or_stop(Duration::from_millis(1), &mut rx).await);
    }
}
