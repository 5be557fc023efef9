//! `PolicyService`: stream the current policy and each new version; record
//! which version each device applied. Versions come from the in-memory
//! `PolicyBus`, so a stream never waits on the store to deliver one; it only
//! reads the store every `limits.stream_recheck_ms` to end the stream of a
//! revoked device.

use super::auth::{authenticate, recheck, DeviceIdentity};
use super::{wait_shutdown, GrpcState};
use futures_util::Stream;
use palisade_proto as proto;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, error};

#[derive(Debug)]
pub(crate) struct PolicyService {
    pub state: Arc<GrpcState>,
}

type PolicyStream = Pin<Box<dyn Stream<Item = Result<proto::PolicyUpdate, Status>> + Send>>;

/// Send the current policy, then every newer one, until the client goes,
/// the server shuts down, or the device is revoked (checked periodically).
async fn feed(
    state: Arc<GrpcState>,
    device: DeviceIdentity,
    tx: mpsc::Sender<Result<proto::PolicyUpdate, Status>>,
) {
    let mut policy = state.bus.subscribe();
    let shutdown = wait_shutdown(state.shutdown.clone());
    tokio::pin!(shutdown);
    let period = Duration::from_millis(state.limits.stream_recheck_ms);
    let mut recheck_at = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    recheck_at.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The current value first (marked seen), then each change.
        let update = proto::PolicyUpdate::clone(&policy.borrow_and_update());
        if tx.send(Ok(update)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tx.closed() => return,
                changed = policy.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                _ = recheck_at.tick() => {
                    if let Err(status) = recheck(&state.store, &device).await {
                        debug!(device_id = %device.id, code = ?status.code(), "Ending policy stream");
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl proto::policy_service_server::PolicyService for PolicyService {
    type WatchPolicyStream = PolicyStream;

    async fn watch_policy(
        &self,
        req: Request<proto::WatchPolicyRequest>,
    ) -> Result<Response<PolicyStream>, Status> {
        let device = authenticate(&self.state.store, &req).await?;
        let proto::WatchPolicyRequest { known_version } = req.into_inner();
        debug!(device_id = %device.id, known_version, "Policy watcher connected");
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(feed(self.state.clone(), device, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_applied(
        &self,
        req: Request<proto::ReportAppliedRequest>,
    ) -> Result<Response<proto::ReportAppliedResponse>, Status> {
        let device = authenticate(&self.state.store, &req).await?;
        let proto::ReportAppliedRequest { version } = req.into_inner();
        let newest = self.state.bus.current().version;
        if version > newest {
            return Err(Status::invalid_argument(format!(
                "version: {version} was never published (newest is {newest})"
            )));
        }
        self.state
            .store
            .record_applied(&device.id, version)
            .await
            .map_err(|e| {
                error!(error = %e, device_id = %device.id, "Could not record applied policy");
                Status::unavailable("store unavailable, retry later")
            })?;
        Ok(Response::new(proto::ReportAppliedResponse {}))
    }
}
