//! palisade-server: the control plane. Agents enroll, receive policy, upload
//! audit events and report inventory over gRPC with mTLS; admins use the HTTP
//! API under `/api/v1`.
//!
//! `main.rs` only loads config and calls [`run`]; tests call [`run`] with
//! listeners bound to 127.0.0.1:0 and their own shutdown future. Only
//! [`store`] knows SQL; generated proto types stop at [`grpc`] / [`convert`].

pub mod admin;
pub mod config;
pub mod convert;
pub mod export;
pub mod forward;
pub(crate) mod grpc;
pub mod pki;
pub mod policy_bus;
pub mod retention;
pub mod store;
pub mod tokens;

pub use config::{ConfigError, ServerConfig};
pub use pki::ServerPki;
pub use store::{Store, StoreError};
pub use tokens::{create_admin_token, create_enrollment_token, RawToken};

use grpc::{
    audit::AuditService, enroll::EnrollmentService, inventory::InventoryService,
    policy::PolicyService,
};
use palisade_proto as proto;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{error, info};

/// HTTP/2 keepalive for agent connections, so dead laptops are noticed.
pub const GRPC_KEEPALIVE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("server PKI: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("policy: {0}")]
    Policy(#[from] policy_bus::PolicyBusError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error(transparent)]
    AuditKey(#[from] admin::audit::AuditKeyError),
    #[error(transparent)]
    Forward(#[from] forward::ForwardError),
    #[error("admin HTTP server: {0}")]
    Admin(std::io::Error),
}

/// Create the bootstrap admin token for the store `cfg` names, returning the
/// raw token (show it once; only its hash is kept).
pub async fn bootstrap_admin_token(
    cfg: &ServerConfig,
    name: &str,
) -> Result<RawToken, ServerError> {
    cfg.validate()?;
    let store = Store::open(cfg).await?;
    let token = create_admin_token(&store, name).await?;
    store.close().await;
    Ok(token)
}

/// Run the control plane until `shutdown` resolves, then drain: streams end,
/// in-flight batches finish and are answered, the store closes.
pub async fn run(
    cfg: ServerConfig,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    cfg.validate()?;
    let store = Store::open(&cfg).await?;
    let pki = Arc::new(ServerPki::load_or_create(&cfg)?);
    let bus = policy_bus::PolicyBus::load(store.clone()).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let follow = tokio::spawn(bus.clone().follow(
        Duration::from_millis(cfg.limits.policy_poll_ms),
        shutdown_rx.clone(),
    ));

    let state = Arc::new(grpc::GrpcState {
        store: store.clone(),
        pki: pki.clone(),
        bus: bus.clone(),
        limits: cfg.limits.clone(),
        ingest_permits: Arc::new(Semaphore::new(cfg.limits.max_concurrent_batches)),
        shutdown: shutdown_rx.clone(),
    });
    let (cert_pem, key_pem) = pki.server_identity_pem();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(pki.ca_cert_pem()))
        // Enrollment runs without a client certificate; every other RPC checks one.
        .client_auth_optional(true);
    let max = cfg.limits.max_message_bytes;
    let grpc_addr = grpc_listener.local_addr().map_err(ServerError::Admin)?;
    let admin_addr = admin_listener.local_addr().map_err(ServerError::Admin)?;
    let grpc = Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE))
        .tcp_keepalive(Some(GRPC_KEEPALIVE))
        .add_service(
            proto::enrollment_server::EnrollmentServer::new(EnrollmentService {
                state: state.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            proto::policy_service_server::PolicyServiceServer::new(PolicyService {
                state: state.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            proto::audit_service_server::AuditServiceServer::new(AuditService {
                state: state.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            proto::inventory_service_server::InventoryServiceServer::new(InventoryService {
                state,
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(grpc_listener),
            grpc::wait_shutdown(shutdown_rx.clone()),
        );

    let (forwarders, forward_tasks) =
        forward::spawn_all(&store, &cfg.forward, shutdown_rx.clone())?;
    let audit_key = admin::audit::AuditKey::load_or_create(&admin::audit::AuditKey::default_path(&cfg))?;
    let retention = tokio::spawn(retention::run_loop(
        store.clone(),
        admin::audit::AuditLog::new(store.clone(), audit_key.clone()),
        audit_key.clone(),
        cfg.retention.clone(),
        shutdown_rx.clone(),
    ));
    let admin_state = Arc::new(admin::AdminState {
        store: store.clone(),
        bus,
        limits: cfg.limits.clone(),
        audit: admin::audit::AuditLog::new(store.clone(), audit_key),
        forwarders,
        auth_failures: admin::throttle::AuthFailures::new(cfg.limits.auth_failures_per_minute),
    });
    let admin = axum::serve(
        admin_listener,
        admin::router(admin_state)
            .into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
        .with_graceful_shutdown(grpc::wait_shutdown(shutdown_rx.clone()));

    info!(%grpc_addr, %admin_addr, store = store.backend_name(), "Control plane running");
    let (grpc_res, admin_res) =
        tokio::join!(grpc, async { admin.await.map_err(ServerError::Admin) });
    follow.abort();
    for task in forward_tasks {
        let _ = task.await;
    }
    // It returns on the shutdown signal; the abort covers a pass stuck on the store.
    retention.abort();
    let _ = retention.await;
    store.close().await;
    if let Err(error) = &grpc_res {
        error!(%error, "gRPC server failed");
    }
    grpc_res?;
    admin_res?;
    info!("Control plane stopped");
    Ok(())
}
