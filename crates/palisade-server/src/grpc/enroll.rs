//! `Enrollment.Enroll`: trade a token and a CSR for a device certificate.
//!
//! The only RPC that runs without a client certificate; the token is the
//! credential. Must never log the token, and never let the CSR choose the
//! device id or any certificate field other than the public key.

use super::GrpcState;
use crate::convert::DeviceFacts;
use crate::store::{DeviceRecord, StoreError};
use crate::tokens::hash_token;
use chrono::{DateTime, Utc};
use palisade_proto as proto;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};
use uuid::Uuid;

#[derive(Debug)]
pub(crate) struct EnrollmentService {
    pub state: Arc<GrpcState>,
}

#[tonic::async_trait]
impl proto::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        req: Request<proto::EnrollRequest>,
    ) -> Result<Response<proto::EnrollResponse>, Status> {
        let proto::EnrollRequest {
            token,
            csr_pem,
            facts,
        } = req.into_inner();
        if token.is_empty() {
            return Err(Status::unauthenticated("enrollment token is required"));
        }
        let facts = facts.ok_or_else(|| Status::invalid_argument("facts: is required"))?;
        let facts =
            DeviceFacts::try_from(facts).map_err(|e| Status::invalid_argument(e.to_string()))?;

        let device_id = Uuid::now_v7().to_string();
        let issued = self
            .state
            .pki
            .sign_device_csr(&csr_pem, &device_id)
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        let DeviceFacts {
            hostname,
            os,
            hardware_id,
            agent_version,
            owner_email,
        } = facts;
        let record = DeviceRecord {
            id: device_id.clone(),
            cert_fingerprint: issued.fingerprint,
            cert_serial: issued.serial,
            hostname,
            os,
            hardware_id,
            agent_version,
            owner_email,
            enrolled_at: Utc::now(),
            last_seen: None,
            revoked_at: None,
            revoked_reason: None,
            applied_policy_version: None,
        };
        match self
            .state
            .store
            .enroll_device(&hash_token(&token), &record)
            .await
        {
            Ok(enrolled) => {
                info!(
                    device_id = %device_id,
                    hostname = %record.hostname,
                    superseded = ?enrolled.superseded,
                    "Device enrolled"
                );
            }
            Err(StoreError::Token(problem)) => {
                warn!(%problem, hostname = %record.hostname, "Enrollment refused");
                return Err(Status::unauthenticated(format!(
                    "enrollment token refused: {problem}"
                )));
            }
            Err(e) => {
                error!(error = %e, "Enrollment failed in the store");
                return Err(Status::unavailable("store unavailable, retry later"));
            }
        }
        let not_after: DateTime<Utc> = issued.not_after.into();
        Ok(Response::new(proto::EnrollResponse {
            device_id,
            certificate_chain_pem: issued.pem,
            server_ca_pem: self.state.pki.ca_cert_pem().to_string(),
            not_after_unix_ms: not_after.timestamp_millis(),
        }))
    }
}
