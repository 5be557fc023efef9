//! Policy from the control plane: follow the `WatchPolicy` stream, install
//! each version in the proxy's [`PolicyHandle`], cache it on disk, record a
//! `policy.applied` event and report the version back.
//!
//! Precedence at start (see `Agent::start`): once the device is enrolled, the
//! cached server policy (`data_dir/policy-cache.json`) wins over the config's
//! `policy_file`; before enrollment (or without a usable cache) the config's
//! `policy_file` or the built-in default applies. Version 0 from the server
//! means "no policy published yet" and never replaces the local one.
//! This module must never block the proxy: it only swaps the handle, and a
//! policy that fails to compile is refused while the old one stays in force.

use super::backoff::Backoff;
use super::{Ctx, Link, SyncError};
use palisade_core::{AuditEvent, EventKind, Policy, UserRef};
use palisade_proto as proto;
use proto::policy_service_client::PolicyServiceClient;
use std::path::Path;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// The last applied server policy, in `data_dir`.
pub const POLICY_CACHE_FILE: &str = "policy-cache.json";

/// The cached policy, if there is a valid one. A corrupt cache is logged and
/// ignored (the server sends the current version on connect).
pub fn load_cached(data_dir: &Path) -> Option<Policy> {
    let path = data_dir.join(POLICY_CACHE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            warn!(%error, path = %path.display(), "Cannot read the cached policy");
            return None;
        }
    };
    match Policy::from_json(&text) {
        Ok(p) => Some(p),
        Err(error) => {
            warn!(%error, path = %path.display(), "Cached policy is invalid; ignoring it");
            None
        }
    }
}

/// Write the policy cache atomically (temp file, fsync, rename).
pub fn store_cached(data_dir: &Path, policy: &Policy) -> Result<(), SyncError> {
    let json = serde_json::to_vec_pretty(policy).expect("policy serializes");
    super::identity::write_atomic(&data_dir.join(POLICY_CACHE_FILE), &json, 0o600)
}

/// Follow the policy stream until `stop`, reconnecting with backoff.
pub(crate) async fn run(ctx: &Ctx, link: &Link, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(ctx.opts.backoff_base, ctx.opts.backoff_cap);
    let mut client = PolicyServiceClient::new(link.channel.clone())
        .max_decoding_message_size(ctx.opts.max_message_bytes);
    loop {
        let known_version = ctx.policy.current().version;
        let call = client.watch_policy(proto::WatchPolicyRequest { known_version });
        let opened = tokio::select! {
            _ = super::stopped(&mut stop) => return,
            r = tokio::time::timeout(ctx.opts.rpc_timeout, call) => r,
        };
        match opened {
            Ok(Ok(resp)) => {
                let mut stream = resp.into_inner();
                debug!(known_version, "Policy stream open");
                loop {
                    let msg = tokio::select! {
                        _ = super::stopped(&mut stop) => return,
                        m = stream.message() => m,
                    };
                    match msg {
                        Ok(Some(update)) => {
                            backoff.reset();
                            apply(ctx, link, &mut client, update).await;
                        }
                        Ok(None) => {
                            info!("Policy stream closed by the server; reconnecting");
                            break;
                        }
                        Err(status) => {
                            ctx.note_status("policy stream", &status);
                            break;
                        }
                    }
                }
            }
            Ok(Err(status)) => ctx.note_status("policy watch", &status),
            Err(_) => warn!(timeout_ms = ctx.opts.rpc_timeout.as_millis() as u64, "Policy watch timed out"),
        }
        let delay = backoff.next_delay();
        debug!(delay_ms = delay.as_millis() as u64, "Policy stream retry scheduled");
        if super::sleep_or_stop(delay, &mut stop).await {
            return;
        }
    }
}

/// Install one pushed version (if it is new and valid), then report it.
async fn apply(
    ctx: &Ctx,
    link: &Link,
    client: &mut PolicyServiceClient<tonic::transport::Channel>,
    update: proto::PolicyUpdate,
) {
    let proto::PolicyUpdate {
        version,
        document_json,
        created_at_unix_ms: _,
    } = update;
    if version == 0 {
        debug!("Server has no published policy yet; keeping the local one");
        return;
    }
    let current = ctx.policy.current();
    let parsed = std::str::from_utf8(&document_json)
        .map_err(|e| format!("document is not UTF-8: {e}"))
        .and_then(|doc| Policy::from_json(doc).map_err(|e| e.to_string()));
    let mut policy = match parsed {
        Ok(p) => p,
        Err(error) => {
            error!(%error, version, kept_version = current.version, "Server policy is invalid; keeping the current one");
            ctx.set_error(format!("policy version {version} refused: {error}"));
            return;
        }
    };
    // The stream's version is authoritative; the document's own may be stale.
    policy.version = version;
    if current.policy != policy {
        if let Err(error) = ctx.policy.set(policy.clone()) {
            error!(%error, version, kept_version = current.version, "Server policy does not compile; keeping the current one");
            ctx.set_error(format!("policy version {version} refused: {error}"));
            return;
        }
        if let Err(error) = store_cached(&ctx.data_dir, &policy) {
            warn!(%error, version, "Policy applied but not cached; a restart without the server falls back");
        }
        let mut ev = AuditEvent::new(
            EventKind::PolicyApplied,
            ctx.device_ref(&link.device_id),
            UserRef {
                os_user: None,
                email: ctx.owner_email.clone(),
                team: None,
            },
        );
        ev.details = serde_json::json!({
            "version": version,
            "previous_version": current.version,
            "source": "server",
        });
        ctx.recorder.record(ev);
        info!(version, previous_version = current.version, "Policy applied");
    }
    ctx.shared.status.send_modify(|s| s.applied_policy_version = Some(version));
    let report = client.report_applied(proto::ReportAppliedRequest { version });
    match tokio::time::timeout(ctx.opts.rpc_timeout, report).await {
        Ok(Ok(_)) => debug!(version, "Applied policy version reported"),
        Ok(Err(status)) => ctx.note_status("report applied", &status),
        Err(_) => warn!(version, "Reporting the applied policy version timed out; it is reported again on reconnect"),
    }
}

#[cfg(test)]
mod tests;
