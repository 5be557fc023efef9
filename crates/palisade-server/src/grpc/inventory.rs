//! `InventoryService.Report`: store the apps and MCP servers a device found
//! and fold them into the fleet catalog (`store::catalog`).
//! A report with any invalid item is refused whole, naming the item.

use super::{auth::authenticate, GrpcState};
use crate::store::InventoryRecord;
use palisade_proto as proto;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::{debug, error};

#[derive(Debug)]
pub(crate) struct InventoryService {
    pub state: Arc<GrpcState>,
}

#[tonic::async_trait]
impl proto::inventory_service_server::InventoryService for InventoryService {
    async fn report(
        &self,
        req: Request<proto::InventoryReport>,
    ) -> Result<Response<proto::InventoryReportResponse>, Status> {
        let device = authenticate(&self.state.store, &req).await?;
        let proto::InventoryReport {
            items,
            full_snapshot,
            observed_at_unix_ms: _,
        } = req.into_inner();
        let items = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                InventoryRecord::try_from(item)
                    .map_err(|e| Status::invalid_argument(format!("items[{i}].{e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let accepted = self
            .state
            .store
            .report_inventory(&device.id, &items, full_snapshot)
            .await
            .map_err(|e| {
                error!(error = %e, device_id = %device.id, "Could not store inventory");
                Status::unavailable("store unavailable, retry later")
            })?;
        debug!(device_id = %device.id, accepted, full_snapshot, "Inventory stored");
        Ok(Response::new(proto::InventoryReportResponse { accepted }))
    }
}
