//! Simulated agents: enroll with a real key pair and CSR, then open their own
//! mTLS connection (one tonic `Channel`, i.e. one TCP + HTTP/2 connection, per
//! agent, as real laptops have). Must never print a private key or token, and
//! never connect anywhere but the target's loopback address.

use super::{FleetError, Target};
use futures_util::stream::{self, StreamExt};
use palisade_proto as proto;
use proto::enrollment_client::EnrollmentClient;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long one connection attempt (TCP + TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Anonymous connections shared by enrollments (enrollment is not what is measured).
const ENROLL_CONNECTIONS: usize = 8;

/// An enrolled simulated device. `Debug` hides the private key.
#[derive(Clone)]
pub struct Enrolled {
    pub id: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled").field("id", &self.id).field("key_pem", &"...").finish_non_exhaustive()
    }
}

fn endpoint(target: &Target) -> Result<Endpoint, FleetError> {
    Ok(Endpoint::from_shared(format!("https://{}", target.grpc_addr))
        .map_err(|source| FleetError::Transport { what: "endpoint", source })?
        .connect_timeout(CONNECT_TIMEOUT))
}

/// A connection without a client certificate (enrollment only).
pub async fn anonymous_channel(target: &Target) -> Result<Channel, FleetError> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&target.ca_pem)).domain_name("localhost");
    endpoint(target)?
        .tls_config(tls)
        .map_err(|source| FleetError::Transport { what: "TLS config", source })?
        .connect()
        .await
        .map_err(|source| FleetError::Transport { what: "anonymous connect", source })
}

/// A new mTLS connection of its own for `agent`.
pub async fn device_channel(target: &Target, agent: &Enrolled) -> Result<Channel, FleetError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&target.ca_pem))
        .identity(Identity::from_pem(&agent.cert_pem, &agent.key_pem))
        .domain_name("localhost");
    endpoint(target)?
        .tls_config(tls)
        .map_err(|source| FleetError::Transport { what: "TLS config", source })?
        .connect()
        .await
        .map_err(|source| FleetError::Transport { what: "device connect", source })
}

/// Enroll one device with a fresh key pair over `channel`.
pub async fn enroll(target: &Target, channel: Channel, hardware_id: String) -> Result<Enrolled, FleetError> {
    let key = rcgen::KeyPair::generate().map_err(FleetError::Csr)?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(FleetError::Csr)?
        .serialize_request(&key)
        .map_err(FleetError::Csr)?
        .pem()
        .map_err(FleetError::Csr)?;
    let facts = proto::DeviceFacts {
        hostname: format!("bench-{hardware_id}"),
        os: "linux".into(),
        hardware_id,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        owner_email: "fleet-bench@example.com".into(),
    };
    let resp = EnrollmentClient::new(channel)
        .enroll(proto::EnrollRequest {
            token: target.enroll_token.expose().to_string(),
            csr_pem: csr,
            facts: Some(facts),
        })
        .await
        .map_err(|status| FleetError::Rpc { what: "Enroll", status })?
        .into_inner();
    Ok(Enrolled { id: resp.device_id, cert_pem: resp.certificate_chain_pem, key_pem: key.serialize_pem() })
}

/// Enroll `count` devices named `<prefix>-<i>`, `concurrency` at a time.
/// Fails on the first refused enrollment: a bench on a partial fleet would
/// print misleading figures.
pub async fn enroll_many(
    target: &Target,
    prefix: &str,
    count: usize,
    concurrency: usize,
) -> Result<Vec<Enrolled>, FleetError> {
    let mut pool = Vec::with_capacity(ENROLL_CONNECTIONS);
    for _ in 0..ENROLL_CONNECTIONS.min(count.max(1)) {
        pool.push(anonymous_channel(target).await?);
    }
    let results: Vec<Result<Enrolled, FleetError>> = stream::iter(0..count)
        .map(|i| {
            let channel = pool[i % pool.len()].clone();
            async move { enroll(target, channel, format!("{prefix}-{i}")).await }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}
