//! `PolicyService`: stream the current policy and each new version; record
//! which version each device applied. Must never wait on the store inside a
//! stream: versions come from the in-memory `PolicyBus`.

use super::{auth::authenticate, wait_shutdown, GrpcState};
use futures_util::{Stream, StreamExt};
use palisade_proto as proto;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};
use tracing::{debug, error};

#[derive(Debug)]
pub(crate) struct PolicyService {
    pub state: Arc<GrpcState>,
}

type PolicyStream = Pin<Box<dyn Stream<Item = Result<proto::PolicyUpdate, Status>> + Send>>;

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
        // WatchStream yields the current value first, then every change.
        let updates = WatchStream::new(self.state.bus.subscribe())
            .map(|u| Ok(proto::PolicyUpdate::clone(&u)))
            .take_until(wait_shutdown(self.state.shutdown.clone()));
        Ok(Response::new(Box::pin(updates)))
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
        self.state.store.record_applied(&device.id, version).await.map_err(|e| {
            error!(error = %e, device_id = %device.id, "Could not record applied policy");
            Status::unavailable("store unavailable, retry later")
        })?;
        Ok(Response::new(proto::ReportAppliedResponse {}))
    }
}
