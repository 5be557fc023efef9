//! Tests for the fleet bench: argument handling, and the load machinery run
//! against an in-process server on 127.0.0.1:0 (small counts, no timing).

use super::*;
use palisade_server::{create_admin_token, create_enrollment_token, ServerConfig, ServerPki, Store};
use tokio::sync::oneshot;

fn parse(args: &[&str]) -> Result<FleetArgs, clap::Error> {
    FleetArgs::try_parse_from(std::iter::once("fleet").chain(args.iter().copied()))
}

// --- arguments ---

#[test]
fn defaults_measure_sqlite_only_without_a_url() {
    let a = parse(&[]).unwrap();
    assert_eq!(a.agents, 1000);
    assert_eq!(a.ingest_devices, 50);
    assert_eq!(a.batch, 500);
    assert_eq!(stores(&a, None, "r").unwrap(), vec![StoreKind::Sqlite]);
}

#[test]
fn a_url_from_the_environment_adds_postgres_with_a_fresh_schema() {
    let a = parse(&["--agents", "10000"]).unwrap();
    let s = stores(&a, Some("postgres://postgres@127.0.0.1:55432/postgres".into()), "abc123").unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(
        s[1],
        StoreKind::Postgres { url: "postgres://postgres@127.0.0.1:55432/postgres".into(), schema: "fleet_abc123".into() }
    );
    let only = parse(&["--store", "sqlite"]).unwrap();
    assert_eq!(stores(&only, Some("postgres://x/y".into()), "r").unwrap(), vec![StoreKind::Sqlite]);
}

#[test]
fn postgres_without_a_url_is_refused_with_a_hint() {
    let a = parse(&["--store", "postgres"]).unwrap();
    let e = stores(&a, None, "r").unwrap_err();
    assert!(e.to_string().contains("scripts/start-postgres"), "{e}");
    assert!(stores(&a, Some("  ".into()), "r").is_err(), "a blank URL is no URL");
}

#[test]
fn a_url_that_is_not_postgres_is_refused() {
    let a = parse(&["--pg-url", "mysql://db/x"]).unwrap();
    let e = stores(&a, None, "r").unwrap_err();
    assert!(matches!(e, FleetError::Args(ref m) if m.contains("postgres://")), "{e}");
}

#[test]
fn bad_numbers_and_unknown_stores_are_rejected() {
    for bad in [
        &["--agents", "0"][..],
        &["--agents", "many"],
        &["--agents", "70000"],
        &["--store", "mysql"],
        &["--batch", "0"],
        &["--inflight", "0"],
        &["--ingest-seconds", "0"],
        &["--no-such-flag"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn fd_limit_already_high_enough_is_left_alone() {
    // Asking for very little never lowers the current soft limit.
    let now = raise_fd_limit(1).unwrap();
    assert!(now >= 1);
    assert_eq!(raise_fd_limit(1).unwrap(), now);
}

// --- against an in-process server ---

struct InProcess {
    target: Target,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), palisade_server::ServerError>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(enroll_uses: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::for_data_dir(dir.path());
        cfg.limits.max_concurrent_batches = 64;
        let ca_pem = ServerPki::load_or_create(&cfg).unwrap().ca_cert_pem().to_string();
        let store = Store::open(&cfg).await.unwrap();
        let admin_token = create_admin_token(&store, "test").await.unwrap();
        let enroll = create_enrollment_token(&store, enroll_uses, chrono::Utc::now() + chrono::Duration::hours(1), None)
            .await
            .unwrap();
        store.close().await;
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target {
            grpc_addr: grpc.local_addr().unwrap(),
            admin_addr: admin.local_addr().unwrap(),
            ca_pem,
            admin_token,
            enroll_token: enroll.token,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(palisade_server::run(cfg, grpc, admin, async move {
            let _ = rx.await;
        }));
        Self { target, stop: Some(tx), handle, _dir: dir }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.await.unwrap().unwrap();
    }

    async fn stored_events(&self) -> usize {
        let v: serde_json::Value = self
            .target
            .http
            .get(format!("http://{}/api/v1/events?limit=1000", self.target.admin_addr))
            .bearer_auth(self.target.admin_token.expose())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["events"].as_array().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_counts_exactly_the_acknowledged_events_and_they_are_stored() {
    let srv = InProcess::start(10).await;
    let devices = agent::enroll_many(&srv.target, "t-ingest", 2, 4).await.unwrap();
    assert_eq!(devices.len(), 2);
    let cfg = ingest::IngestConfig {
        batch: 20,
        inflight: 2,
        duration: Duration::from_secs(120),
        max_batches_per_device: Some(3),
    };
    let r = ingest::run(&srv.target, &devices, &cfg).await.unwrap();
    assert_eq!(r.acked_events, 2 * 3 * 20);
    assert_eq!(r.acked_batches, 6);
    assert_eq!(r.rejected_events, 0);
    assert!(r.acked_bytes >= r.acked_events * 1900, "records should be ~2 KB: {} bytes", r.acked_bytes);
    assert_eq!(srv.stored_events().await, 120, "every acked event must be in the store exactly once");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_an_empty_batch_size() {
    let srv = InProcess::start(1).await;
    let cfg = ingest::IngestConfig { batch: 0, inflight: 1, duration: Duration::from_secs(1), max_batches_per_device: None };
    let e = ingest::run(&srv.target, &[], &cfg).await.unwrap_err();
    assert!(matches!(e, FleetError::Args(_)), "{e}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_reaches_every_connected_agent() {
    let srv = InProcess::start(10).await;
    let agents = agent::enroll_many(&srv.target, "t-agent", 5, 4).await.unwrap();
    let cfg = propagation::PropagationConfig {
        connect_concurrency: 2,
        connect_deadline: Duration::from_secs(60),
        receive_deadline: Duration::from_secs(60),
        server_pid: None,
        marker: "fleet-bench-test".into(),
    };
    let r = propagation::run(&srv.target, agents, &cfg).await.unwrap();
    assert_eq!((r.agents, r.connected, r.connect_failures), (5, 5, 0));
    assert_eq!(r.new_version, r.initial_version + 1);
    assert_eq!(r.latencies.len(), 5, "{r:?}");
    assert_eq!((r.other_version, r.streams_lost), (0, 0));
    assert!(r.latencies.windows(2).all(|w| w[0] <= w[1]), "latencies are sorted");
    assert!(r.client_rss_connected.is_some());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_enrollment_token_fails_the_run_clearly() {
    let srv = InProcess::start(2).await;
    let e = agent::enroll_many(&srv.target, "t-over", 3, 1).await.unwrap_err();
    match &e {
        FleetError::Rpc { what: "Enroll", status } => assert_eq!(status.code(), tonic::Code::Unauthenticated),
        other => panic!("expected an Enroll refusal, got {other}"),
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_admin_token_is_reported_with_the_status() {
    let srv = InProcess::start(1).await;
    let mut target = srv.target.clone();
    target.admin_token = srv.target.enroll_token.clone();
    let e = propagation::put_policy(&target, &propagation::new_policy("x")).await.unwrap_err();
    assert!(matches!(e, FleetError::Admin { status: 401, .. }), "{e}");
    srv.stop().await;
}

#[test]
fn enrolled_debug_hides_the_key() {
    let e = agent::Enrolled { id: "dev".into(), cert_pem: "CERT".into(), key_pem: "-----BEGIN PRIVATE KEY-----".into() };
    let s = format!("{e:?}");
    assert!(s.contains("dev") && !s.contains("PRIVATE"), "{s}");
}
