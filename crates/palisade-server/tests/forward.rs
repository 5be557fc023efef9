//! Live forwarding end to end: a real server tails its store to syslog
//! collectors (fakes from palisade-test-support) over TCP and TLS with
//! octet-counted frames; the collector going away and the server restarting
//! lose nothing and duplicate nothing. PostgreSQL runs too when
//! `PALISADE_TEST_POSTGRES_URL` is set.

mod support;

use palisade_server::config::{ForwardConfig, ForwardTransport};
use palisade_server::ServerConfig;
use palisade_test_support::{parse_rfc5424, SyslogCollector, TestCa};
use reqwest::Method;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn fast(mut f: ForwardConfig) -> ForwardConfig {
    f.poll_ms = 20;
    f.max_backoff_ms = 200;
    f
}

fn tcp_target(name: &str, c: &SyslogCollector) -> ForwardConfig {
    fast(ForwardConfig::new(name, &c.addr.to_string(), ForwardTransport::Tcp))
}

/// Where each test's PostgreSQL schema lives (None: SQLite).
fn backends() -> Vec<Option<(String, String)>> {
    let mut out = vec![None];
    if let Some(url) = postgres_url() {
        out.push(Some((url, fresh_schema())));
    }
    out
}

fn use_backend(cfg: &mut ServerConfig, b: &Option<(String, String)>) {
    if let Some((url, schema)) = b {
        cfg.store.postgres_url = Some(url.clone());
        cfg.store.postgres_schema = Some(schema.clone());
    }
}

/// Upload `n` records (provider alternating openai/anthropic); their ids.
async fn send(srv: &TestServer, dev: &Device, n: usize, batch_id: u64) -> Vec<String> {
    let recs: Vec<_> = (0..n)
        .map(|i| record(&dev.id, if i % 2 == 0 { "openai" } else { "anthropic" }))
        .collect();
    let mut c = srv.clients(dev).await;
    let acks = upload(&mut c.audit, vec![batch(batch_id, recs)]).await.unwrap();
    acked_ids(&acks[0])
}

/// Record ids of the frames, checking each one strictly.
fn ids(frames: &[String]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            let m = parse_rfc5424(f).unwrap_or_else(|e| panic!("{e}: {f}"));
            assert_eq!(m.app_name.as_deref(), Some("palisade"));
            let v: Value = serde_json::from_str(m.msg.as_deref().unwrap()).unwrap();
            let id = m.sd[0].param("id").unwrap().to_string();
            assert_eq!(v["id"], id.as_str());
            id
        })
        .collect()
}

async fn forwarders(srv: &TestServer) -> Value {
    let (s, v) = srv.admin(Method::GET, "/api/v1/forwarders", None).await;
    assert_eq!(s, 200, "{v}");
    v
}

fn target<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["forwarders"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()
}

/// Wait until `name`'s saved cursor reaches the newest event.
async fn wait_caught_up(srv: &TestServer, name: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = forwarders(srv).await;
        let t = target(&v, name).clone();
        if t["lag"] == 0 && t["cursor"] == v["head_seq"] {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never caught up: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn forwards_over_tcp_and_tls_with_octet_counting() {
    for b in backends() {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("collector-ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let tcp = SyslogCollector::tcp("127.0.0.1:0").await;
        let tls = SyslogCollector::tls("127.0.0.1:0", &ca).await;
        let mut tls_target = fast(ForwardConfig::new("siem-tls", &format!("localhost:{}", tls.addr.port()), ForwardTransport::Tls));
        tls_target.ca_file = Some(ca_file);
        tls_target.provider = Some("openai".into());
        let tcp_target = tcp_target("siem-tcp", &tcp);
        let srv = TestServer::start_with(|cfg| {
            use_backend(cfg, &b);
            cfg.forward = vec![tcp_target, tls_target];
        })
        .await;
        let dev = srv.enroll_new("hw-fwd").await;
        let mut sent = send(&srv, &dev, 30, 1).await;
        sent.extend(send(&srv, &dev, 600, 2).await);
        sent.extend(send(&srv, &dev, 600, 3).await);
        let all: HashSet<String> = sent.iter().cloned().collect();

        let got = ids(&tcp.wait_for(all.len(), WAIT).await);
        wait_caught_up(&srv, "siem-tcp").await;
        assert_eq!(got.len(), all.len(), "no duplicates over TCP");
        assert_eq!(got.iter().cloned().collect::<HashSet<_>>(), all);
        assert!(tcp.framing_errors().is_empty(), "{:?}", tcp.framing_errors());

        let want_tls = 615; // 15 + 600 openai records
        let frames = tls.wait_for(want_tls, WAIT).await;
        let got = ids(&frames);
        for f in &frames {
            assert_eq!(parse_rfc5424(f).unwrap().sd[0].param("provider"), Some("openai"));
        }
        let t = wait_caught_up(&srv, "siem-tls").await;
        assert_eq!(got.len(), want_tls, "only the filtered records, once each");
        assert!(got.iter().all(|id| all.contains(id)));
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), want_tls);
        assert!(tls.framing_errors().is_empty(), "{:?}", tls.framing_errors());
        assert_eq!(t["transport"], "tls");
        assert_eq!(t["state"], "forwarding");
        assert_eq!(t["sent"], want_tls);
        assert_eq!(t["connections"], 1);
        srv.stop().await;
    }
}

#[tokio::test]
async fn collector_down_then_up_loses_nothing_and_duplicates_nothing() {
    for b in backends() {
        let collector = SyslogCollector::tcp("127.0.0.1:0").await;
        let addr = collector.addr;
        let t = tcp_target("siem", &collector);
        let srv = TestServer::start_with(|cfg| {
            use_backend(cfg, &b);
            cfg.forward = vec![t];
        })
        .await;
        let dev = srv.enroll_new("hw-down").await;
        let first = send(&srv, &dev, 10, 1).await;
        let got = ids(&collector.wait_for(10, WAIT).await);
        wait_caught_up(&srv, "siem").await;
        assert_eq!(got, first);
        collector.stop().await;

        // Down: records keep arriving; the forwarder notices and backs off.
        let second = send(&srv, &dev, 25, 2).await;
        let third = send(&srv, &dev, 600, 3).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = forwarders(&srv).await;
            let t = target(&v, "siem");
            if t["last_error"].is_string() && t["lag"].as_i64() == Some(625) {
                assert_eq!(t["state"], "backoff", "{t}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no error reported: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Up again on the same port: everything after the cursor, once.
        let collector = SyslogCollector::tcp(&addr.to_string()).await;
        let got = ids(&collector.wait_for(625, WAIT).await);
        wait_caught_up(&srv, "siem").await;
        let want: Vec<String> = second.into_iter().chain(third).collect();
        assert_eq!(got, want, "in order, nothing lost, nothing twice");
        assert!(collector.framing_errors().is_empty());
        srv.stop().await;
        collector.stop().await;
    }
}

#[tokio::test]
async fn server_restart_resumes_from_the_saved_cursor() {
    for b in backends() {
        let collector = SyslogCollector::tcp("127.0.0.1:0").await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::for_data_dir(dir.path());
        use_backend(&mut cfg, &b);
        cfg.forward = vec![tcp_target("siem", &collector)];

        let srv = TestServer::start_cfg(cfg.clone(), None).await;
        let dev = srv.enroll_new("hw-restart").await;
        let first = send(&srv, &dev, 40, 1).await;
        collector.wait_for(40, WAIT).await;
        wait_caught_up(&srv, "siem").await;
        srv.stop().await;

        let srv = TestServer::start_cfg(cfg, None).await;
        let second = send(&srv, &dev, 7, 2).await;
        let got = ids(&collector.wait_for(47, WAIT).await);
        let t = wait_caught_up(&srv, "siem").await;
        assert_eq!(t["sent"], 7, "the restarted server sent only the new records");
        let want: Vec<String> = first.into_iter().chain(second).collect();
        assert_eq!(got, want);
        assert_eq!(collector.connections(), 2);
        srv.stop().await;
        collector.stop().await;
    }
}

#[tokio::test]
async fn a_missing_ca_file_or_bad_target_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::for_data_dir(dir.path());
    let mut t = ForwardConfig::new("siem", "localhost:6514", ForwardTransport::Tls);
    t.ca_file = Some(dir.path().join("missing.pem"));
    cfg.forward = vec![t];
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = palisade_server::run(cfg.clone(), l1, l2, async {}).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("forward[siem]") && msg.contains("missing.pem"), "{msg}");

    std::fs::write(dir.path().join("empty.pem"), "not a certificate").unwrap();
    cfg.forward[0].ca_file = Some(dir.path().join("empty.pem"));
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let msg = palisade_server::run(cfg.clone(), l1, l2, async {}).await.unwrap_err().to_string();
    assert!(msg.contains("no usable certificate"), "{msg}");

    cfg.forward[0].transport = ForwardTransport::Tcp;
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let msg = palisade_server::run(cfg, l1, l2, async {}).await.unwrap_err().to_string();
    assert!(msg.contains("forward[0].ca_file: only for transport"), "{msg}");
}

#[tokio::test]
async fn only_one_of_two_servers_on_one_postgres_forwards_a_target() {
    let Some(url) = postgres_url() else { return };
    let collector = SyslogCollector::tcp("127.0.0.1:0").await;
    let schema = fresh_schema();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let (url, schema) = (url.clone(), schema.clone());
        let t = tcp_target("siem", &collector);
        servers.push(
            TestServer::start_with(move |cfg| {
                cfg.store.postgres_url = Some(url);
                cfg.store.postgres_schema = Some(schema);
                cfg.forward = vec![t];
            })
            .await,
        );
    }
    let dev = servers[0].enroll_new("hw-two").await;
    let mut want = Vec::new();
    for i in 0..5 {
        want.extend(send(&servers[0], &dev, 100, i + 1).await);
    }
    let got = ids(&collector.wait_for(500, WAIT).await);
    wait_caught_up(&servers[0], "siem").await;
    assert_eq!(got, want, "once each, in order");
    let states: Vec<String> = {
        let mut s = Vec::new();
        for srv in &servers {
            s.push(target(&forwarders(srv).await, "siem")["state"].as_str().unwrap().to_string());
        }
        s
    };
    assert!(states.contains(&"standby".to_string()) && states.contains(&"forwarding".to_string()), "{states:?}");
    assert_eq!(collector.connections(), 1);
    for srv in servers {
        srv.stop().await;
    }
}

#[tokio::test]
async fn an_untrusted_collector_gets_nothing_and_the_cursor_stays() {
    let real_ca = TestCa::with_name("Collector CA");
    let other_ca = TestCa::with_name("Some Other CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&ca_file, other_ca.cert_pem()).unwrap();
    let tls = SyslogCollector::tls("127.0.0.1:0", &real_ca).await;
    let mut t = fast(ForwardConfig::new("siem", &format!("localhost:{}", tls.addr.port()), ForwardTransport::Tls));
    t.ca_file = Some(ca_file);
    let srv = TestServer::start_with(|cfg| cfg.forward = vec![t]).await;
    let dev = srv.enroll_new("hw-untrusted").await;
    send(&srv, &dev, 5, 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = forwarders(&srv).await;
        let t = target(&v, "siem");
        if t["last_error"].as_str().is_some_and(|e| e.starts_with("TLS")) {
            assert_eq!(t["cursor"], 0, "{t}");
            assert_eq!(t["lag"], 5, "{t}");
            assert_eq!(t["sent"], 0, "{t}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no TLS error reported: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tls.frames().is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn a_new_target_can_start_at_the_latest_record() {
    let collector = SyslogCollector::tcp("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::for_data_dir(dir.path());
    let srv = TestServer::start_cfg(cfg.clone(), None).await;
    let dev = srv.enroll_new("hw-latest").await;
    send(&srv, &dev, 20, 1).await;
    srv.stop().await;

    let mut t = tcp_target("late", &collector);
    t.start = palisade_server::config::ForwardStart::Latest;
    cfg.forward = vec![t];
    let srv = TestServer::start_cfg(cfg, None).await;
    // The history is skipped once the target has saved its first cursor.
    let deadline = tokio::time::Instant::now() + WAIT;
    while target(&forwarders(&srv).await, "late")["state"] != "forwarding" {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = send(&srv, &dev, 3, 2).await;
    let got = ids(&collector.wait_for(3, WAIT).await);
    wait_caught_up(&srv, "late").await;
    assert_eq!(got, new, "only what arrived after the target started");
    srv.stop().await;
}

/// Concurrent uploads commit out of seq order on PostgreSQL; the tailer must
/// still deliver every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ingest_while_forwarding_delivers_each_record_once() {
    for b in backends() {
        let collector = SyslogCollector::tcp("127.0.0.1:0").await;
        let t = tcp_target("siem", &collector);
        let srv = std::sync::Arc::new(
            TestServer::start_with(|cfg| {
                use_backend(cfg, &b);
                cfg.forward = vec![t];
            })
            .await,
        );
        let mut tasks = Vec::new();
        for d in 0..8 {
            let srv = srv.clone();
            tasks.push(tokio::spawn(async move {
                let dev = srv.enroll_new(&format!("hw-conc-{d}")).await;
                let mut ids = Vec::new();
                for i in 0..5 {
                    ids.extend(send(&srv, &dev, 100, i + 1).await);
                }
                ids
            }));
        }
        let mut want = HashSet::new();
        for t in tasks {
            want.extend(t.await.unwrap());
        }
        assert_eq!(want.len(), 4000);
        let got = ids(&collector.wait_for(4000, WAIT).await);
        wait_caught_up(&srv, "siem").await;
        assert_eq!(got.len(), 4000, "no duplicates");
        assert_eq!(got.into_iter().collect::<HashSet<_>>(), want);
        std::sync::Arc::into_inner(srv).unwrap().stop().await;
    }
}

/// When the forwarding server stops, the standby takes the lease and goes on
/// from the saved cursor: nothing lost, nothing twice.
#[tokio::test]
async fn the_standby_server_takes_over_from_the_saved_cursor() {
    let Some(url) = postgres_url() else { return };
    let collector = SyslogCollector::tcp("127.0.0.1:0").await;
    let schema = fresh_schema();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let (url, schema) = (url.clone(), schema.clone());
        let t = tcp_target("siem", &collector);
        servers.push(
            TestServer::start_with(move |cfg| {
                cfg.store.postgres_url = Some(url);
                cfg.store.postgres_schema = Some(schema);
                cfg.forward = vec![t];
            })
            .await,
        );
    }
    let dev = servers[0].enroll_new("hw-takeover").await;
    let mut want = send(&servers[0], &dev, 300, 1).await;
    collector.wait_for(300, WAIT).await;
    wait_caught_up(&servers[0], "siem").await;
    let mut active = None;
    for (i, srv) in servers.iter().enumerate() {
        if target(&forwarders(srv).await, "siem")["state"] == "forwarding" {
            active = Some(i);
        }
    }
    let active = active.expect("one server forwards");
    let standby = servers.remove(1 - active);
    servers.pop().unwrap().stop().await;

    // Each test server has its own PKI: enroll with the survivor.
    let dev2 = standby.enroll_new("hw-takeover-2").await;
    want.extend(send(&standby, &dev2, 300, 1).await);
    let got = ids(&collector.wait_for(600, WAIT).await);
    let t = wait_caught_up(&standby, "siem").await;
    assert_eq!(got, want, "once each, in order, across the takeover");
    assert_eq!(t["state"], "forwarding");
    assert_eq!(t["sent"], 300);
    assert_eq!(collector.connections(), 2);
    standby.stop().await;
}

#[tokio::test]
async fn a_target_filtered_on_decision_gets_only_those_records() {
    let collector = SyslogCollector::tcp("127.0.0.1:0").await;
    let mut t = tcp_target("blocks", &collector);
    t.decision = Some("block".into());
    let srv = TestServer::start_with(|cfg| cfg.forward = vec![t]).await;
    let dev = srv.enroll_new("hw-blocks").await;
    let recs: Vec<_> = (0..30)
        .map(|i| {
            let mut rec = record(&dev.id, "openai");
            let mut ev: Value = serde_json::from_slice(&rec.json).unwrap();
            ev["policy"] = serde_json::json!({"decision": if i % 3 == 0 { "block" } else { "allow" }, "rule": null, "version": 1});
            rec.json = serde_json::to_vec(&ev).unwrap();
            rec
        })
        .collect();
    let blocked: Vec<String> = recs.iter().step_by(3).map(|r| r.id.clone()).collect();
    let mut c = srv.clients(&dev).await;
    upload(&mut c.audit, vec![batch(1, recs)]).await.unwrap();
    let frames = collector.wait_for(10, WAIT).await;
    wait_caught_up(&srv, "blocks").await;
    assert_eq!(ids(&frames), blocked);
    for f in &frames {
        let m = parse_rfc5424(f).unwrap();
        assert_eq!(m.sd[0].param("decision"), Some("block"));
        assert_eq!(m.severity, 4, "blocks are warnings");
    }
    srv.stop().await;
}
