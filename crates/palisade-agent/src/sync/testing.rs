//! Test-only helpers shared by the sync unit tests: a sync client wired to a
//! temp spool, recorder and policy handle, talking plaintext gRPC to a fake
//! service on 127.0.0.1. Never compiled into the product.

use super::{Link, SyncClient, SyncInputs, SyncOptions};
use crate::config::ServerLink;
use palisade_core::{DeviceRef, Policy};
use palisade_spool::Spool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A sync client for `addr` (plaintext), with state in `dir`.
pub(crate) async fn client(addr: SocketAddr, dir: &std::path::Path, opts: SyncOptions) -> (SyncClient, Link) {
    let spool = Spool::open(&dir.join("spool.db"), Default::default()).await.unwrap();
    let recorder = crate::recorder::Recorder::start(spool.clone());
    let (client, _handle) = SyncClient::new(
        SyncInputs {
            link: ServerLink { url: format!("http://{addr}"), ca_file: dir.join("ca.pem"), enrollment_token: None },
            data_dir: dir.to_path_buf(),
            keys: Arc::new(palisade_tls::KeyStore::open_file(&dir.join("keys")).unwrap()),
            spool,
            recorder,
            policy: crate::proxy::PolicyHandle::new(Policy::default(), None).unwrap(),
            device: DeviceRef { id: "local-id".into(), hostname: "h".into(), os: "linux".into() },
            owner_email: Some("ann@example.com".into()),
        },
        opts,
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    (client, Link { device_id: "enrolled-id".into(), channel })
}

/// Short retries and polls.
pub(crate) fn fast(batch: usize) -> SyncOptions {
    SyncOptions {
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        batch_max_events: batch,
        ack_timeout: Duration::from_secs(10),
        rpc_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(20),
        ..SyncOptions::default()
    }
}

/// Poll `f` every 10 ms until true; fail naming `what` after 30 s.
pub(crate) async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
