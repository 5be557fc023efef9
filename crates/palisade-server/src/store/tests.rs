//! Store tests: every test runs on SQLite, and on PostgreSQL too when
//! `PALISADE_TEST_POSTGRES_URL` is set (each test in a fresh schema).

use super::*;
use chrono::Duration as ChronoDuration;
use sqlx::Row;

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

pub(crate) fn test_postgres_url() -> Option<String> {
    std::env::var("PALISADE_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

fn device(id: &str, hw: &str) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        cert_fingerprint: format!("fp-{id}"),
        cert_serial: "01".into(),
        hostname: "laptop".into(),
        os: "linux".into(),
        hardware_id: hw.into(),
        agent_version: "0.1.0".into(),
        owner_email: Some("a@example.com".into()),
        enrolled_at: Utc::now(),
        last_seen: None,
        revoked_at: None,
        revoked_reason: None,
        applied_policy_version: None,
    }
}

fn event(kind: &str, provider: Option<&str>) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        time: Utc::now(),
        kind: kind.into(),
        provider: provider.map(Into::into),
        model: Some("gpt-4o".into()),
        app: None,
        decision: Some("allow".into()),
        json: "{}".into(),
        ..NewEvent::default()
    }
}

#[tokio::test]
async fn token_limits_and_expiry() {
    for (s, _g) in stores().await {
        let later = Utc::now() + ChronoDuration::hours(1);
        s.create_enrollment_token("h-single", 1, later, None)
            .await
            .unwrap();
        s.enroll_device("h-single", &device("d1", "hw1"))
            .await
            .unwrap();
        let e = s
            .enroll_device("h-single", &device("d2", "hw2"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Token(TokenProblem::UsedUp)),
            "{}: {e}",
            s.backend_name()
        );

        s.create_enrollment_token(
            "h-expired",
            5,
            Utc::now() - ChronoDuration::seconds(1),
            None,
        )
        .await
        .unwrap();
        let e = s
            .enroll_device("h-expired", &device("d3", "hw3"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Token(TokenProblem::Expired)), "{e}");

        let e = s
            .enroll_device("h-nope", &device("d4", "hw4"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Token(TokenProblem::Unknown)), "{e}");

        s.create_enrollment_token("h-multi", 2, later, Some("fleet"))
            .await
            .unwrap();
        s.enroll_device("h-multi", &device("d5", "hw5"))
            .await
            .unwrap();
        s.enroll_device("h-multi", &device("d6", "hw6"))
            .await
            .unwrap();
        assert!(s
            .enroll_device("h-multi", &device("d7", "hw7"))
            .await
            .is_err());
        // A failed enrollment leaves no device behind.
        assert!(s.get_device("d7").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn reenrolling_hardware_supersedes_old_device() {
    for (s, _g) in stores().await {
        s.create_enrollment_token("h", 10, Utc::now() + ChronoDuration::hours(1), None)
            .await
            .unwrap();
        let first = s
            .enroll_device("h", &device("old", "serial-1"))
            .await
            .unwrap();
        assert!(first.superseded.is_empty());
        let second = s
            .enroll_device("h", &device("new", "serial-1"))
            .await
            .unwrap();
        assert_eq!(second.superseded, vec!["old".to_string()]);
        let old = s.get_device("old").await.unwrap().unwrap();
        assert!(old.revoked_at.is_some());
        assert!(old.revoked_reason.unwrap().contains("new"));
        let live: Vec<_> = s
            .list_devices()
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.revoked_at.is_none())
            .collect();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].id, "new");
    }
}

#[tokio::test]
async fn touch_revoke_and_applied() {
    for (s, _g) in stores().await {
        assert!(s.touch_device("ghost").await.unwrap().is_none());
        s.create_enrollment_token("h", 1, Utc::now() + ChronoDuration::hours(1), None)
            .await
            .unwrap();
        s.enroll_device("h", &device("d", "hw")).await.unwrap();
        let auth = s.touch_device("d").await.unwrap().unwrap();
        assert_eq!(auth.cert_fingerprint, "fp-d");
        assert!(auth.revoked_at.is_none());
        s.record_applied("d", 7).await.unwrap();
        let rec = s.get_device("d").await.unwrap().unwrap();
        assert_eq!(rec.applied_policy_version, Some(7));
        assert!(rec.last_seen.is_some());
        assert!(s.revoke_device("d", "lost laptop").await.unwrap());
        assert!(!s.revoke_device("d", "again").await.unwrap());
        assert!(s
            .touch_device("d")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some());
        assert!(s
            .device_auth("d")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some());
        assert!(s.device_auth("ghost").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn events_are_idempotent_and_filterable() {
    for (s, _g) in stores().await {
        let batch: Vec<_> = (0..1200)
            .map(|i| {
                event(
                    "interaction",
                    Some(if i % 2 == 0 { "openai" } else { "anthropic" }),
                )
            })
            .collect();
        assert_eq!(s.insert_events("d1", &batch).await.unwrap(), 1200);
        // Retry after a lost ack: nothing new.
        assert_eq!(s.insert_events("d1", &batch).await.unwrap(), 0);
        // Partial overlap: only the new one counts.
        let mut mixed = batch[..10].to_vec();
        mixed.push(event("app.discovered", None));
        assert_eq!(s.insert_events("d2", &mixed).await.unwrap(), 1);
        assert_eq!(s.count_events().await.unwrap(), 1201);

        let f = EventFilter {
            provider: Some("openai".into()),
            limit: 10_000,
            ..Default::default()
        };
        assert_eq!(s.query_events(&f).await.unwrap().len(), 600);
        let f = EventFilter {
            device_id: Some("d2".into()),
            limit: 100,
            ..Default::default()
        };
        let got = s.query_events(&f).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, "app.discovered");
        // Paging by seq, newest first.
        let page1 = s
            .query_events(&EventFilter {
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        let page2 = s
            .query_events(&EventFilter {
                limit: 5,
                before_seq: Some(page1[4].seq),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page2[0].seq < page1[4].seq);
        assert_eq!(page1[0].id, mixed[10].id, "the newest event comes first");
        let future = EventFilter {
            since: Some(Utc::now() + ChronoDuration::hours(1)),
            limit: 10,
            ..Default::default()
        };
        assert!(s.query_events(&future).await.unwrap().is_empty());
        assert_eq!(s.insert_events("d1", &[]).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn policy_versions_increase() {
    for (s, _g) in stores().await {
        assert_eq!(s.latest_policy_version().await.unwrap(), 0);
        assert!(s.latest_policy().await.unwrap().is_none());
        assert_eq!(s.insert_policy("{\"a\":1}", "admin").await.unwrap(), 1);
        assert_eq!(s.insert_policy("{\"a\":2}", "admin").await.unwrap(), 2);
        let p = s.latest_policy().await.unwrap().unwrap();
        assert_eq!(
            (p.version, p.document.as_str(), p.author.as_str()),
            (2, "{\"a\":2}", "admin")
        );
    }
}

#[tokio::test]
async fn inventory_snapshot_replaces_and_upsert_keeps() {
    for (s, _g) in stores().await {
        let item = |id: &str, name: &str| InventoryRecord {
            kind: "app".into(),
            item_id: id.into(),
            name: name.into(),
            details: "{}".into(),
        };
        s.put_inventory("d", &[item("a", "A"), item("b", "B")], true)
            .await
            .unwrap();
        s.put_inventory("d", &[item("c", "C")], false)
            .await
            .unwrap();
        assert_eq!(s.list_inventory("d").await.unwrap().len(), 3);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        s.put_inventory("d", &[item("a", "A2")], true)
            .await
            .unwrap();
        let inv = s.list_inventory("d").await.unwrap();
        assert_eq!(inv, vec![item("a", "A2")]);
    }
}

#[tokio::test]
async fn admin_tokens_resolve_by_hash() {
    for (s, _g) in stores().await {
        s.create_admin_token("hash-1", "bootstrap").await.unwrap();
        assert_eq!(
            s.admin_token_name("hash-1").await.unwrap().as_deref(),
            Some("bootstrap")
        );
        assert_eq!(s.admin_token_name("hash-2").await.unwrap(), None);
    }
}

#[tokio::test]
async fn sqlite_reopen_keeps_data_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/x.db");
    let s = Store::open_sqlite(&path, 2).await.unwrap();
    s.insert_events("d", &[event("interaction", None)])
        .await
        .unwrap();
    s.close().await;
    let s = Store::open_sqlite(&path, 2).await.unwrap();
    assert_eq!(s.count_events().await.unwrap(), 1);
}

#[tokio::test]
async fn sqlite_unwritable_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = Store::open_sqlite(&file.join("sub/x.db"), 1)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::DataDir { .. }), "{e}");
}

#[tokio::test]
async fn concurrent_policy_publishes_get_distinct_versions() {
    for (s, _g) in stores().await {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.insert_policy(&format!("{{\"n\":{i}}}"), "admin").await
            }));
        }
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap().unwrap());
        }
        versions.sort();
        assert_eq!(
            versions,
            (1..=8).collect::<Vec<u64>>(),
            "{}",
            s.backend_name()
        );
    }
}

#[tokio::test]
async fn concurrent_batches_all_commit() {
    for (s, _g) in stores().await {
        let mut tasks = Vec::new();
        for d in 0..16 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let batch: Vec<_> = (0..200)
                    .map(|_| event("interaction", Some("openai")))
                    .collect();
                s.insert_events(&format!("d{d}"), &batch).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 200);
        }
        assert_eq!(s.count_events().await.unwrap(), 3200);
    }
}

#[tokio::test]
async fn sqlite_group_commit_failure_fails_every_batch_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let s = Store::open_sqlite(&path, 4).await.unwrap();
    let outside =
        sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&path))
            .await
            .unwrap();
    sqlx::query("CREATE TRIGGER no_room BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        .execute(&outside)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for d in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let batch: Vec<_> = (0..10).map(|_| event("interaction", None)).collect();
            s.insert_events(&format!("d{d}"), &batch).await
        }));
    }
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert!(
            matches!(e, StoreError::GroupCommit(_) | StoreError::Database(_)),
            "{e}"
        );
    }
    sqlx::query("DROP TRIGGER no_room")
        .execute(&outside)
        .await
        .unwrap();
    assert_eq!(
        s.count_events().await.unwrap(),
        0,
        "a failed group stores nothing"
    );
    assert_eq!(
        s.insert_events("d", &[event("interaction", None)])
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn forward_cursors_save_list_and_never_move_back() {
    for (s, _g) in stores().await {
        assert_eq!(s.forward_cursor("siem").await.unwrap(), None);
        s.save_forward_cursor("siem", 10).await.unwrap();
        s.save_forward_cursor("siem", 7).await.unwrap();
        s.save_forward_cursor("lab", 3).await.unwrap();
        assert_eq!(s.forward_cursor("siem").await.unwrap().unwrap().last_seq, 10, "{}", s.backend_name());
        let all: Vec<(String, i64)> = s
            .forward_cursors()
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.last_seq))
            .collect();
        assert_eq!(all, [("lab".to_string(), 3), ("siem".to_string(), 10)]);
        assert_eq!(s.event_watermark().await.unwrap(), 0);
        s.insert_events("d1", &[event("interaction", None), event("interaction", None)]).await.unwrap();
        assert_eq!(s.event_watermark().await.unwrap(), s.max_event_seq().await.unwrap());
        assert!(s.max_event_seq().await.unwrap() >= 2);
    }
}

#[tokio::test]
async fn forward_lease_is_held_by_one_holder_at_a_time() {
    for (s, _g) in stores().await {
        let mut first = s.try_forward_lease("siem").await.unwrap().unwrap();
        assert!(first.is_held().await);
        let second = s.try_forward_lease("siem").await.unwrap();
        match s {
            // One server per SQLite file: always granted.
            Store::Sqlite(_) => assert!(second.is_some()),
            Store::Postgres(_) => {
                assert!(second.is_none(), "a second holder while the first lives");
                assert!(s.try_forward_lease("other").await.unwrap().is_some(), "leases are per target");
                drop(first);
                // Dropping closes the lock's connection; the server notices at once
                // or shortly after, so retry rather than time it.
                let mut again = None;
                for _ in 0..200 {
                    again = s.try_forward_lease("siem").await.unwrap();
                    if again.is_some() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                assert!(again.is_some(), "released when its holder went away");
            }
        }
    }
}

/// PostgreSQL assigns seq at insert, not at commit: the watermark must not
/// pass a seq whose transaction is still open, or a tailer would skip it.
#[tokio::test]
async fn the_watermark_waits_for_an_open_insert_on_postgres() {
    let Some(url) = test_postgres_url() else { return };
    let schema = format!("t_{}", Uuid::now_v7().simple());
    let s = Store::open_postgres(&url, Some(&schema), 4).await.unwrap();
    let Store::Postgres(pg) = &s else { unreachable!() };
    let insert = "INSERT INTO events (id, device_id, time, kind, json, received_at) VALUES ($1, 'd', 0, 'interaction', '{}', 0) RETURNING seq";
    let mut slow = pg.pool.begin().await.unwrap();
    let slow_seq: i64 = sqlx::query(insert).bind(Uuid::now_v7()).fetch_one(&mut *slow).await.unwrap().get("seq");
    let fast_seq: i64 = sqlx::query(insert).bind(Uuid::now_v7()).fetch_one(&pg.pool).await.unwrap().get("seq");
    assert!(fast_seq > slow_seq);
    let tailer = {
        let s = s.clone();
        tokio::spawn(async move {
            let w = s.event_watermark().await.unwrap();
            let seen: Vec<i64> = s
                .query_events(&EventFilter { limit: 100, ..Default::default() })
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.seq)
                .filter(|&q| q <= w)
                .collect();
            (w, seen)
        })
    };
    // Give the tailer every chance to run ahead; correctness must not depend on it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    slow.commit().await.unwrap();
    let (w, seen) = tailer.await.unwrap();
    assert!(w >= fast_seq);
    assert!(seen.contains(&slow_seq), "the watermark ran past the open insert: w={w} seen={seen:?}");
}

/// Retention must take words out of the free-text index: purging content
/// (and deleting events) leaves nothing to match, on both backends.
#[tokio::test]
async fn retention_forgets_search_text_and_detectors() {
    for (s, _g) in stores().await {
        let b = s.backend_name();
        let mk = |word: &str, detector: Option<&str>| NewEvent {
            search_text: Some(format!("prompt about {word}")),
            detectors: detector.into_iter().map(str::to_string).collect(),
            json: format!(
                r#"{{"kind":"interaction","request":{{"prompt":"prompt about {word}"}},"response":{{"text":null}}}}"#
            ),
            ..event("interaction", Some("openai"))
        };
        s.insert_events("d1", &[mk("walrus", Some("email")), mk("walrus", None)])
            .await
            .unwrap();
        let text = |w: &str| EventFilter {
            text: TextQuery::new(w),
            limit: 10,
            ..Default::default()
        };
        let by_detector = EventFilter {
            detector: Some("email".into()),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(s.query_events(&text("walrus")).await.unwrap().len(), 2, "{b}");
        assert_eq!(s.query_events(&by_detector).await.unwrap().len(), 1, "{b}");

        // Content purge (as retention runs it): the words stop matching.
        let purged = s.purge_event_content(now_ms() + 1).await.unwrap();
        assert!(purged <= 2, "{b}");
        assert!(s.query_events(&text("walrus")).await.unwrap().is_empty(), "{b}");

        // And the explicit helper, for events stored later.
        s.insert_events("d1", &[mk("narwhal", None)]).await.unwrap();
        assert_eq!(s.query_events(&text("narwhal")).await.unwrap().len(), 1, "{b}");
        let n = s
            .forget_event_text_before(Utc::now() + ChronoDuration::hours(1))
            .await
            .unwrap();
        assert!(n >= 1, "{b}: {n}");
        assert!(s.query_events(&text("narwhal")).await.unwrap().is_empty(), "{b}");

        // Deleting events deletes their detector rows.
        let deleted = s.delete_events_upto(i64::MAX, now_ms() + 1).await.unwrap();
        assert_eq!(deleted, 3, "{b}");
        assert!(s.query_events(&by_detector).await.unwrap().is_empty(), "{b}");
    }
}
