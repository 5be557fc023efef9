//! Catalog store tests: SQLite always, PostgreSQL too when
//! `PALISADE_TEST_POSTGRES_URL` is set (each test in a fresh schema).

use super::super::tests::test_postgres_url;
use super::*;
use crate::store::DeviceRecord;
use chrono::Duration as ChronoDuration;
use serde_json::{json, Value};
use uuid::Uuid;

async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open_sqlite(&dir.path().join("t.db"), 4)
        .await
        .unwrap();
    let mut out = vec![(sqlite, Some(dir))];
    if let Some(url) = test_postgres_url() {
        let schema = format!("t_{}", Uuid::now_v7().simple());
        out.push((
            Store::open_postgres(&url, Some(&schema), 4).await.unwrap(),
            None,
        ));
    }
    out
}

async fn enroll(store: &Store, id: &str) {
    let hash = format!("hash-{id}");
    store
        .create_enrollment_token(&hash, 1, Utc::now() + ChronoDuration::hours(1), None)
        .await
        .unwrap();
    let d = DeviceRecord {
        id: id.into(),
        cert_fingerprint: format!("fp-{id}"),
        cert_serial: "01".into(),
        hostname: format!("host-{id}"),
        os: "linux".into(),
        hardware_id: format!("hw-{id}"),
        agent_version: "0.1.0".into(),
        owner_email: None,
        enrolled_at: Utc::now(),
        last_seen: None,
        revoked_at: None,
        revoked_reason: None,
        applied_policy_version: None,
    };
    store.enroll_device(&hash, &d).await.unwrap();
}

fn mcp(id: &str, name: &str, client: &str) -> InventoryRecord {
    InventoryRecord {
        kind: "mcp_server".into(),
        item_id: id.into(),
        name: name.into(),
        details: json!({ "clients": [client] }).to_string(),
    }
}

fn app(id: &str) -> InventoryRecord {
    InventoryRecord {
        kind: "app".into(),
        item_id: id.into(),
        name: id.to_uppercase(),
        details: "{}".into(),
    }
}

fn all() -> CatalogFilter {
    CatalogFilter {
        kind: None,
        status: None,
        limit: 100,
        offset: 0,
    }
}

/// A test edit: the document is a JSON object of id -> status; `None` when
/// it already says so.
fn set(
    id: &'static str,
    status: &'static str,
) -> impl Fn(Option<&str>) -> Result<Option<String>, String> + Send + Sync {
    move |doc| {
        let mut v: Value = match doc {
            None => json!({}),
            Some(d) => serde_json::from_str(d).map_err(|e| e.to_string())?,
        };
        if v[id] == status {
            return Ok(None);
        }
        v[id] = json!(status);
        Ok(Some(v.to_string()))
    }
}

#[tokio::test]
async fn same_server_on_two_devices_is_one_pending_entry() {
    for (store, _dir) in stores().await {
        enroll(&store, "d1").await;
        enroll(&store, "d2").await;
        store
            .report_inventory("d1", &[mcp("fp1", "github", "cursor"), app("cursor")], true)
            .await
            .unwrap();
        store
            .report_inventory(
                "d2",
                &[
                    mcp("fp1", "gh", "claude-code"),
                    // Kinds the catalog does not govern stay out of it.
                    InventoryRecord {
                        kind: "browser_extension".into(),
                        ..app("x")
                    },
                ],
                true,
            )
            .await
            .unwrap();
        let list = store.list_catalog(&all()).await.unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        let e = list.iter().find(|e| e.item_id == "fp1").unwrap();
        assert_eq!(e.kind, CatalogKind::McpServer);
        assert_eq!(e.status, CatalogStatus::Pending);
        assert_eq!(e.device_count, 2);
        assert_eq!(e.name, "gh", "newest name wins");
        assert!(e.first_seen <= e.last_seen);

        let only_apps = store
            .list_catalog(&CatalogFilter {
                kind: Some(CatalogKind::App),
                ..all()
            })
            .await
            .unwrap();
        assert_eq!(only_apps.len(), 1);
        assert_eq!(only_apps[0].item_id, "cursor");
        assert_eq!(only_apps[0].device_count, 1);

        let d = store
            .catalog_detail(CatalogKind::McpServer, "fp1", 100)
            .await
            .unwrap()
            .unwrap();
        let mut names = d.names.clone();
        names.sort();
        assert_eq!(names, ["gh", "github"]);
        let ids: Vec<_> = d.devices.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!(ids, ["d1", "d2"]);
        assert_eq!(d.devices[0].hostname, "host-d1");
        let det: Value = serde_json::from_str(&d.devices[1].details).unwrap();
        assert_eq!(det["clients"], json!(["claude-code"]));
        assert!(store
            .catalog_detail(CatalogKind::App, "fp1", 100)
            .await
            .unwrap()
            .is_none());
        store.close().await;
    }
}

#[tokio::test]
async fn snapshot_removes_the_device_but_keeps_entry_and_decision() {
    for (store, _dir) in stores().await {
        enroll(&store, "d1").await;
        store
            .report_inventory("d1", &[mcp("fp1", "github", "cursor")], true)
            .await
            .unwrap();
        let out = store
            .decide_catalog(
                CatalogKind::McpServer,
                "fp1",
                CatalogStatus::Denied,
                Some("exfil risk"),
                "ann",
                &set("fp1", "deny"),
            )
            .await
            .unwrap();
        assert!(matches!(out, DecideOutcome::Decided { .. }), "{out:?}");
        store.report_inventory("d1", &[], true).await.unwrap();
        let e = &store.list_catalog(&all()).await.unwrap()[0];
        assert_eq!(e.device_count, 0);
        assert_eq!(e.status, CatalogStatus::Denied);
        assert_eq!(e.note.as_deref(), Some("exfil risk"));
        assert_eq!(e.decided_by.as_deref(), Some("ann"));
        // Upserts (not snapshots) add without removing.
        enroll(&store, "d2").await;
        store
            .report_inventory("d2", &[mcp("fp1", "github", "zed")], false)
            .await
            .unwrap();
        store
            .report_inventory("d2", &[app("zed")], false)
            .await
            .unwrap();
        let e = store
            .list_catalog(&CatalogFilter {
                status: Some(CatalogStatus::Denied),
                ..all()
            })
            .await
            .unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].device_count, 1);
        store.close().await;
    }
}

#[tokio::test]
async fn revoked_devices_do_not_count() {
    for (store, _dir) in stores().await {
        enroll(&store, "d1").await;
        enroll(&store, "d2").await;
        for d in ["d1", "d2"] {
            store
                .report_inventory(d, &[app("claude")], true)
                .await
                .unwrap();
        }
        assert!(store.revoke_device("d1", "lost").await.unwrap());
        let d = store
            .catalog_detail(CatalogKind::App, "claude", 100)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.entry.device_count, 1);
        assert_eq!(d.devices.len(), 1);
        assert_eq!(d.devices[0].device_id, "d2");
        store.close().await;
    }
}

#[tokio::test]
async fn decisions_publish_once_and_reverse() {
    for (store, _dir) in stores().await {
        enroll(&store, "d1").await;
        store
            .report_inventory("d1", &[mcp("fp1", "github", "cursor")], true)
            .await
            .unwrap();
        let deny = set("fp1", "deny");
        let out = store
            .decide_catalog(
                CatalogKind::McpServer,
                "fp1",
                CatalogStatus::Denied,
                None,
                "ann",
                &deny,
            )
            .await
            .unwrap();
        let DecideOutcome::Decided {
            entry,
            policy_version: 1,
            published: true,
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!(entry.status, CatalogStatus::Denied);
        let p = store.latest_policy().await.unwrap().unwrap();
        assert_eq!(p.version, 1);
        assert_eq!(p.author, "ann");
        assert_eq!(p.document, r#"{"fp1":"deny"}"#);

        // Idempotent: nothing written.
        let out = store
            .decide_catalog(
                CatalogKind::McpServer,
                "fp1",
                CatalogStatus::Denied,
                None,
                "bob",
                &deny,
            )
            .await
            .unwrap();
        assert!(
            matches!(out, DecideOutcome::Unchanged { policy_version: 1, ref entry } if entry.decided_by.as_deref() == Some("ann")),
            "{out:?}"
        );
        assert_eq!(store.latest_policy_version().await.unwrap(), 1);

        // Reversal publishes again.
        let out = store
            .decide_catalog(
                CatalogKind::McpServer,
                "fp1",
                CatalogStatus::Approved,
                None,
                "bob",
                &set("fp1", "allow"),
            )
            .await
            .unwrap();
        assert!(
            matches!(
                out,
                DecideOutcome::Decided {
                    policy_version: 2,
                    published: true,
                    ..
                }
            ),
            "{out:?}"
        );
        assert_eq!(
            store.latest_policy().await.unwrap().unwrap().document,
            r#"{"fp1":"allow"}"#
        );

        // A policy replaced by hand that lost the rule gets it back, even
        // though the catalog status is unchanged.
        store.insert_policy("{}", "carol").await.unwrap();
        let out = store
            .decide_catalog(
                CatalogKind::McpServer,
                "fp1",
                CatalogStatus::Approved,
                None,
                "bob",
                &set("fp1", "allow"),
            )
            .await
            .unwrap();
        assert!(
            matches!(
                out,
                DecideOutcome::Decided {
                    policy_version: 4,
                    published: true,
                    ..
                }
            ),
            "{out:?}"
        );

        // Status catches up with a policy that already says so: no new version.
        enroll(&store, "d2").await;
        store
            .report_inventory("d2", &[app("zed")], true)
            .await
            .unwrap();
        store
            .insert_policy(r#"{"fp1":"allow","zed":"deny"}"#, "carol")
            .await
            .unwrap();
        let out = store
            .decide_catalog(
                CatalogKind::App,
                "zed",
                CatalogStatus::Denied,
                None,
                "bob",
                &set("zed", "deny"),
            )
            .await
            .unwrap();
        assert!(
            matches!(
                out,
                DecideOutcome::Decided {
                    policy_version: 5,
                    published: false,
                    ..
                }
            ),
            "{out:?}"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn unknown_items_and_unusable_policies_are_refused() {
    for (store, _dir) in stores().await {
        let out = store
            .decide_catalog(
                CatalogKind::App,
                "nope",
                CatalogStatus::Denied,
                None,
                "ann",
                &set("nope", "deny"),
            )
            .await
            .unwrap();
        assert_eq!(out, DecideOutcome::NotFound);
        assert_eq!(store.latest_policy_version().await.unwrap(), 0);

        enroll(&store, "d1").await;
        store
            .report_inventory("d1", &[app("zed")], true)
            .await
            .unwrap();
        let broken =
            |_: Option<&str>| -> Result<Option<String>, String> { Err("not a policy".into()) };
        let e = store
            .decide_catalog(
                CatalogKind::App,
                "zed",
                CatalogStatus::Denied,
                None,
                "ann",
                &broken,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Corrupt(m) if m.contains("not a policy")),
            "{e}"
        );
        let e = &store.list_catalog(&all()).await.unwrap()[0];
        assert_eq!(
            e.status,
            CatalogStatus::Pending,
            "a failed decision changes nothing"
        );
        assert_eq!(store.latest_policy_version().await.unwrap(), 0);
        store.close().await;
    }
}

#[tokio::test]
async fn concurrent_decisions_keep_every_rule() {
    for (store, _dir) in stores().await {
        enroll(&store, "d1").await;
        let ids = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];
        let items: Vec<_> = ids.iter().map(|i| app(i)).collect();
        store.report_inventory("d1", &items, true).await.unwrap();
        let tasks: Vec<_> = ids
            .iter()
            .map(|&id| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .decide_catalog(
                            CatalogKind::App,
                            id,
                            CatalogStatus::Denied,
                            None,
                            "ann",
                            &set(id, "deny"),
                        )
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            assert!(matches!(
                t.await.unwrap(),
                DecideOutcome::Decided {
                    published: true,
                    ..
                }
            ));
        }
        assert_eq!(
            store.latest_policy_version().await.unwrap(),
            ids.len() as u64
        );
        let doc: Value =
            serde_json::from_str(&store.latest_policy().await.unwrap().unwrap().document).unwrap();
        for id in ids {
            assert_eq!(doc[id], "deny", "{doc}");
        }
        store.close().await;
    }
}

#[tokio::test]
async fn paging_and_empty_reports() {
    for (store, _dir) in stores().await {
        enroll(&store, "d1").await;
        assert_eq!(store.record_catalog(&[]).await.unwrap(), 0);
        // Duplicates in one report are one entry (PostgreSQL refuses to
        // upsert one row twice in a statement).
        let n = store
            .record_catalog(&[app("a"), app("a"), app("b"), app("c")])
            .await
            .unwrap();
        assert_eq!(n, 3);
        let page = |offset| CatalogFilter {
            limit: 2,
            offset,
            ..all()
        };
        let first = store.list_catalog(&page(0)).await.unwrap();
        let second = store.list_catalog(&page(2)).await.unwrap();
        assert_eq!((first.len(), second.len()), (2, 1));
        assert!(first.iter().all(|e| e.item_id != second[0].item_id));
        store.close().await;
    }
}

/// Measurement, not a check: 500 devices each reporting the same 20 MCP
/// servers and 10 apps, then listing and opening one entry. Run with
/// `cargo test -p palisade-server --release -- --ignored catalog_fleet_scale --nocapture`.
#[tokio::test]
#[ignore = "measurement"]
async fn catalog_fleet_scale() {
    for (store, _dir) in stores().await {
        let items: Vec<_> = (0..20)
            .map(|i| mcp(&format!("fp{i}"), "server", "cursor"))
            .chain((0..10).map(|i| app(&format!("app{i}"))))
            .collect();
        let t = std::time::Instant::now();
        for d in 0..500 {
            let id = format!("d{d}");
            enroll(&store, &id).await;
            store.report_inventory(&id, &items, true).await.unwrap();
        }
        let enroll_and_report = t.elapsed();
        let t = std::time::Instant::now();
        for d in 0..500 {
            store
                .report_inventory(&format!("d{d}"), &items, true)
                .await
                .unwrap();
        }
        let rereport = t.elapsed();
        let t = std::time::Instant::now();
        let list = store.list_catalog(&all()).await.unwrap();
        let list_time = t.elapsed();
        assert_eq!(list.len(), 30);
        assert!(list.iter().all(|e| e.device_count == 500));
        let t = std::time::Instant::now();
        let d = store
            .catalog_detail(CatalogKind::McpServer, "fp7", 1000)
            .await
            .unwrap()
            .unwrap();
        let detail_time = t.elapsed();
        assert_eq!(d.devices.len(), 500);
        println!(
            "{}: enroll+first report x500 {:?}; re-report x500 {:?} ({:?}/report of 30 items); list 30 entries {:?}; detail with 500 devices {:?}",
            store.backend_name(),
            enroll_and_report,
            rereport,
            rereport / 500,
            list_time,
            detail_time
        );
        store.close().await;
    }
}
