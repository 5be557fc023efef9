//! Test harness: a real server in-process on 127.0.0.1:0, a device that
//! enrolls with a real CSR and talks gRPC over mTLS, and an admin HTTP client.

#![allow(dead_code)]

use palisade_core::{AuditEvent, DeviceRef, EventKind, Interaction, UserRef};
use palisade_proto as proto;
use palisade_server::{ServerConfig, ServerPki};
use proto::audit_service_client::AuditServiceClient;
use proto::enrollment_client::EnrollmentClient;
use proto::inventory_service_client::InventoryServiceClient;
use proto::policy_service_client::PolicyServiceClient;
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub fn postgres_url() -> Option<String> {
    std::env::var("PALISADE_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

pub fn fresh_schema() -> String {
    format!("e2e_{}", uuid::Uuid::now_v7().simple())
}

pub struct TestServer {
    pub cfg: ServerConfig,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub admin_token: String,
    pub ca_pem: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), palisade_server::ServerError>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// SQLite server in a fresh temp dir.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(edit: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::for_data_dir(dir.path());
        edit(&mut cfg);
        Self::start_cfg(cfg, Some(dir)).await
    }

    pub async fn start_cfg(cfg: ServerConfig, dir: Option<tempfile::TempDir>) -> Self {
        // Create the PKI up front so the test knows the CA before run() starts.
        let ca_pem = ServerPki::load_or_create(&cfg)
            .unwrap()
            .ca_cert_pem()
            .to_string();
        let admin_token = palisade_server::bootstrap_admin_token(&cfg, "test-admin")
            .await
            .unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(palisade_server::run(cfg.clone(), grpc, admin, async move {
            let _ = rx.await;
        }));
        Self {
            cfg,
            grpc_addr,
            admin_addr,
            admin_token: admin_token.expose().to_string(),
            ca_pem,
            shutdown: Some(tx),
            handle: Some(handle),
            _dir: dir,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap().unwrap();
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("https://{}", self.grpc_addr)).unwrap()
    }

    /// A channel without a client certificate (enrollment only).
    pub async fn anonymous_channel(&self) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        self.endpoint()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn device_channel(&self, d: &Device) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&d.cert_pem, &d.key_pem))
            .domain_name("localhost");
        self.endpoint()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn enroll(&self, token: &str, hardware_id: &str) -> Result<Device, tonic::Status> {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        let mut client = EnrollmentClient::new(self.anonymous_channel().await);
        let resp = client
            .enroll(proto::EnrollRequest {
                token: token.into(),
                csr_pem: csr.pem().unwrap(),
                facts: Some(facts(hardware_id)),
            })
            .await?
            .into_inner();
        Ok(Device {
            id: resp.device_id,
            cert_pem: resp.certificate_chain_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Enroll with a fresh single-use token.
    pub async fn enroll_new(&self, hardware_id: &str) -> Device {
        let token = self.new_token(1, 3600).await;
        self.enroll(&token, hardware_id).await.unwrap()
    }

    pub async fn clients(&self, d: &Device) -> DeviceClients {
        let ch = self.device_channel(d).await;
        DeviceClients {
            policy: PolicyServiceClient::new(ch.clone()),
            audit: AuditServiceClient::new(ch.clone()),
            inventory: InventoryServiceClient::new(ch),
        }
    }

    // --- admin API ---

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http()
            .request(method, self.url(path))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, v)
    }

    pub async fn new_token(&self, max_uses: u32, ttl_seconds: i64) -> String {
        let (s, v) = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/enrollment-tokens",
                Some(serde_json::json!({"max_uses": max_uses, "ttl_seconds": ttl_seconds})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    pub async fn events(&self, query: &str) -> Vec<serde_json::Value> {
        let (s, v) = self
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/events?{query}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["events"].as_array().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub struct Device {
    pub id: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct DeviceClients {
    pub policy: PolicyServiceClient<Channel>,
    pub audit: AuditServiceClient<Channel>,
    pub inventory: InventoryServiceClient<Channel>,
}

pub fn facts(hardware_id: &str) -> proto::DeviceFacts {
    proto::DeviceFacts {
        hostname: "laptop-1".into(),
        os: "linux".into(),
        hardware_id: hardware_id.into(),
        agent_version: "0.1.0".into(),
        owner_email: "ann@example.com".into(),
    }
}

/// An interaction record claiming to come from `claimed_device`.
pub fn record(claimed_device: &str, provider: &str) -> proto::AuditRecord {
    let mut ev = AuditEvent::new(
        EventKind::Interaction,
        DeviceRef {
            id: claimed_device.into(),
            hostname: "laptop-1".into(),
            os: "linux".into(),
        },
        UserRef::default(),
    );
    ev.interaction = Some(Interaction {
        provider: provider.into(),
        model: Some("gpt-4o".into()),
        ..Default::default()
    });
    proto::AuditRecord {
        id: ev.id.to_string(),
        json: serde_json::to_vec(&ev).unwrap(),
    }
}

pub fn batch(batch_id: u64, events: Vec<proto::AuditRecord>) -> proto::EventBatch {
    proto::EventBatch { batch_id, events }
}

/// Send batches one at a time over one Upload stream, collecting the answers.
pub async fn upload(
    client: &mut AuditServiceClient<Channel>,
    batches: Vec<proto::EventBatch>,
) -> Result<Vec<proto::UploadResponse>, tonic::Status> {
    let n = batches.len();
    let (tx, rx) = tokio::sync::mpsc::channel(n.max(1));
    for b in batches {
        tx.send(b).await.unwrap();
    }
    let mut stream = client
        .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match stream.message().await? {
            Some(r) => out.push(r),
            None => break,
        }
    }
    drop(tx);
    Ok(out)
}

pub fn acked_ids(r: &proto::UploadResponse) -> Vec<String> {
    match &r.result {
        Some(proto::upload_response::Result::Ack(a)) => a.event_ids.clone(),
        other => panic!("expected an ack, got {other:?}"),
    }
}
