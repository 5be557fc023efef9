//! Unit tests for the spool: semantics, the size cap, filters, concurrency,
//! read-only access and crash durability (a re-executed child killed with
//! SIGKILL).

use super::*;
use chrono::{Duration as ChronoDuration, TimeZone, Utc};
use palisade_core::{
    AppRef, DeviceRef, Interaction, PolicyRef, RecordDecision, RequestCapture, ResponseCapture,
    UserRef,
};
use std::collections::HashSet;
use tempfile::TempDir;

fn device() -> DeviceRef {
    DeviceRef {
        id: "dev-1".into(),
        hostname: "laptop".into(),
        os: "linux".into(),
    }
}

fn user() -> UserRef {
    UserRef {
        os_user: Some("alice".into()),
        email: Some("alice@example.com".into()),
        team: None,
    }
}

fn interaction(
    provider: &str,
    model: &str,
    app: &str,
    decision: RecordDecision,
    prompt: &str,
) -> AuditEvent {
    let mut ev = AuditEvent::new(EventKind::Interaction, device(), user());
    ev.app = Some(AppRef {
        name: Some(app.into()),
        exe: Some(format!("/usr/bin/{app}")),
        pid: Some(42),
        ..Default::default()
    });
    ev.interaction = Some(Interaction {
        provider: provider.into(),
        host: format!("api.{provider}.com"),
        endpoint: "chat.completions".into(),
        model: Some(model.into()),
        request: RequestCapture {
            prompt: Some(prompt.into()),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            ..Default::default()
        },
        response: ResponseCapture {
            status: Some(200),
            text: Some(format!("answer to {prompt}")),
            ..Default::default()
        },
        policy: PolicyRef {
            decision,
            rule: None,
            version: 3,
        },
        cost_usd: Some(0.001),
        ..Default::default()
    });
    ev
}

fn simple(prompt: &str) -> AuditEvent {
    interaction("openai", "gpt-4o", "curl", RecordDecision::Allow, prompt)
}

async fn open_tmp() -> (TempDir, Spool) {
    let dir = TempDir::new().unwrap();
    let spool = Spool::open(&dir.path().join("spool.db"), SpoolOptions::default())
        .await
        .unwrap();
    (dir, spool)
}

#[tokio::test]
async fn round_trip_preserves_every_field() {
    let (_d, spool) = open_tmp().await;
    let a = simple("hello");
    let mut b = AuditEvent::new(EventKind::McpDiscovered, device(), user());
    b.details = serde_json::json!({"server": "github", "path": "/home/a/.cursor/mcp.json"});
    spool.append(&a).await.unwrap();
    spool.append(&b).await.unwrap();
    assert_eq!(spool.peek(10).await.unwrap(), vec![a, b]);
    let stats = spool.stats().await.unwrap();
    assert_eq!(stats.count, 2);
    assert!(stats.bytes > 2 * ROW_OVERHEAD_BYTES);
    assert_eq!(stats.dropped_total, 0);
}

#[tokio::test]
async fn append_is_idempotent_on_id() {
    let (_d, spool) = open_tmp().await;
    let a = simple("once");
    spool.append(&a).await.unwrap();
    spool.append(&a).await.unwrap();
    spool.append_batch(&[a.clone(), a.clone()]).await.unwrap();
    assert_eq!(spool.peek(10).await.unwrap(), vec![a]);
    assert_eq!(spool.stats().await.unwrap().count, 1);
}

#[tokio::test]
async fn empty_batch_is_a_no_op() {
    let (_d, spool) = open_tmp().await;
    spool.append_batch(&[]).await.unwrap();
    assert_eq!(spool.ack(&[]).await.unwrap(), 0);
    let stats = spool.stats().await.unwrap();
    assert_eq!((stats.count, stats.bytes, stats.dropped_total), (0, 0, 0));
}

#[tokio::test]
async fn peek_does_not_remove_and_ack_deletes_only_given_ids() {
    let (_d, spool) = open_tmp().await;
    let evs: Vec<_> = (0..5).map(|i| simple(&format!("p{i}"))).collect();
    spool.append_batch(&evs).await.unwrap();
    assert_eq!(spool.peek(2).await.unwrap(), evs[..2].to_vec());
    assert_eq!(
        spool.peek(2).await.unwrap(),
        evs[..2].to_vec(),
        "peek must not remove"
    );
    let unknown = Uuid::now_v7();
    assert_eq!(
        spool.ack(&[evs[0].id, evs[1].id, unknown]).await.unwrap(),
        2
    );
    assert_eq!(
        spool.ack(&[evs[0].id]).await.unwrap(),
        0,
        "second ack of the same id deletes nothing"
    );
    assert_eq!(spool.peek(10).await.unwrap(), evs[2..].to_vec());
    assert_eq!(spool.stats().await.unwrap().count, 3);
}

#[tokio::test]
async fn ack_handles_more_ids_than_one_statement_binds() {
    let (_d, spool) = open_tmp().await;
    let evs: Vec<_> = (0..1200).map(|i| simple(&format!("p{i}"))).collect();
    spool.append_batch(&evs).await.unwrap();
    let ids: Vec<Uuid> = evs.iter().map(|e| e.id).collect();
    assert_eq!(spool.ack(&ids).await.unwrap(), 1200);
    let stats = spool.stats().await.unwrap();
    assert_eq!((stats.count, stats.bytes), (0, 0));
}

#[tokio::test]
async fn survives_reopen() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool.db");
    let a = simple("persist me");
    {
        let spool = Spool::open(&path, SpoolOptions::default()).await.unwrap();
        spool.append(&a).await.unwrap();
        spool.close().await;
    }
    let spool = Spool::open(&path, SpoolOptions::default()).await.unwrap();
    assert_eq!(spool.peek(10).await.unwrap(), vec![a]);
}

#[cfg(unix)]
#[tokio::test]
async fn creates_private_directory_and_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a/b/spool.db");
    let _spool = Spool::open(&path, SpoolOptions::default()).await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    assert_eq!(mode(&path), 0o600);
}

#[cfg(unix)]
#[tokio::test]
async fn tightens_a_world_readable_spool_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool.db");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _spool = Spool::open(&path, SpoolOptions::default()).await.unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn rejects_a_cap_below_the_minimum() {
    let dir = TempDir::new().unwrap();
    let e = Spool::open(&dir.path().join("s.db"), SpoolOptions { max_bytes: 10 })
        .await
        .unwrap_err();
    assert!(matches!(e, SpoolError::InvalidOptions(_)), "{e}");
    assert!(e.to_string().contains("below the minimum"), "{e}");
}

#[tokio::test]
async fn size_cap_drops_oldest_counts_them_and_reports_the_loss() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool.db");
    let max_bytes = MIN_MAX_BYTES;
    let spool = Spool::open(&path, SpoolOptions { max_bytes })
        .await
        .unwrap();
    let filler = "x".repeat(1000);
    let mut appended = Vec::new();
    for i in 0..200 {
        let mut ev = simple(&format!("{i} {filler}"));
        ev.user.os_user = Some(format!("user-{i}"));
        spool.append(&ev).await.unwrap();
        appended.push(ev);
        let stats = spool.stats().await.unwrap();
        assert!(stats.bytes <= max_bytes, "after append {i}: {stats:?}");
    }
    let stats = spool.stats().await.unwrap();
    assert!(stats.dropped_total > 0, "{stats:?}");

    let held = spool.peek(usize::MAX).await.unwrap();
    assert_eq!(held.len() as u64, stats.count);
    let (markers, records): (Vec<_>, Vec<_>) = held
        .into_iter()
        .partition(|e| e.kind == EventKind::SpoolDropped);

    // The survivors are exactly the newest records, in order.
    let kept = records.len();
    assert_eq!(records, appended[appended.len() - kept..].to_vec());
    assert_eq!(
        kept as u64 + stats.dropped_total,
        200,
        "every appended record is either kept or counted"
    );

    // Every marker that survives reports its own drop, with the envelope of
    // the record whose append caused it, and the counter matches.
    assert!(!markers.is_empty());
    let last = markers.last().unwrap();
    assert_eq!(last.details["reason"], DROP_REASON_SIZE_CAP);
    assert_eq!(last.details["dropped_total"], stats.dropped_total);
    assert_eq!(last.details["max_bytes"], max_bytes);
    assert!(last.details["dropped"].as_u64().unwrap() > 0);
    let reported: u64 = markers
        .iter()
        .map(|m| m.details["dropped"].as_u64().unwrap())
        .sum();
    assert!(reported <= stats.dropped_total);
    assert_eq!(last.device, device());
    assert!(last.user.os_user.as_deref().unwrap().starts_with("user-"));

    // The counter is persistent.
    spool.close().await;
    let reopened = Spool::open(&path, SpoolOptions { max_bytes })
        .await
        .unwrap();
    assert_eq!(
        reopened.stats().await.unwrap().dropped_total,
        stats.dropped_total
    );
}

#[tokio::test]
async fn a_batch_into_a_full_spool_keeps_the_whole_batch() {
    let dir = TempDir::new().unwrap();
    let spool = Spool::open(
        &dir.path().join("s.db"),
        SpoolOptions {
            max_bytes: MIN_MAX_BYTES,
        },
    )
    .await
    .unwrap();
    let filler = "x".repeat(1000);
    // Each record is ~3 KB (prompt and response); 15 fit in 64 KiB, 25 do not.
    let old: Vec<_> = (0..15)
        .map(|i| simple(&format!("old {i} {filler}")))
        .collect();
    spool.append_batch(&old).await.unwrap();
    assert_eq!(spool.stats().await.unwrap().dropped_total, 0);
    let batch: Vec<_> = (0..10)
        .map(|i| simple(&format!("new {i} {filler}")))
        .collect();
    spool.append_batch(&batch).await.unwrap();
    let held = spool.peek(usize::MAX).await.unwrap();
    let stats = spool.stats().await.unwrap();
    assert!(stats.bytes <= MIN_MAX_BYTES, "{stats:?}");
    assert!(stats.dropped_total > 0, "{stats:?}");
    let records: Vec<_> = held
        .iter()
        .filter(|e| e.kind != EventKind::SpoolDropped)
        .cloned()
        .collect();
    assert_eq!(
        records[records.len() - 10..],
        batch[..],
        "the new batch is kept whole, in order"
    );
    assert_eq!(records.len() as u64 + stats.dropped_total, 25);
    assert_eq!(
        held.last().unwrap().kind,
        EventKind::SpoolDropped,
        "the loss is reported after the batch"
    );
}

#[tokio::test]
async fn a_batch_larger_than_the_cap_is_refused_and_nothing_is_stored() {
    let dir = TempDir::new().unwrap();
    let spool = Spool::open(
        &dir.path().join("s.db"),
        SpoolOptions {
            max_bytes: MIN_MAX_BYTES,
        },
    )
    .await
    .unwrap();
    spool.append(&simple("small")).await.unwrap();
    let huge = simple(&"y".repeat(MIN_MAX_BYTES as usize));
    let e = spool.append_batch(&[simple("a"), huge]).await.unwrap_err();
    assert!(matches!(e, SpoolError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("cannot fit"), "{e}");
    assert!(!e.is_retryable(), "retrying the same batch can never fit");
    let stats = spool.stats().await.unwrap();
    assert_eq!((stats.count, stats.dropped_total), (1, 0));
}

async fn filter_fixture() -> (TempDir, Spool, Vec<AuditEvent>) {
    let (d, spool) = open_tmp().await;
    let t0 = Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap();
    let mut evs = vec![
        interaction(
            "openai",
            "gpt-4o",
            "curl",
            RecordDecision::Allow,
            "summarise the 100% report",
        ),
        interaction(
            "anthropic",
            "claude-sonnet-4",
            "Cursor",
            RecordDecision::Block,
            "here is my AWS key",
        ),
        interaction(
            "openai",
            "gpt-4o-mini",
            "code",
            RecordDecision::Redact,
            "snake_case names please",
        ),
        interaction(
            "gemini",
            "gemini-2.5-pro",
            "curl",
            RecordDecision::Allow,
            "it's a quote \" and a back\\slash",
        ),
    ];
    let mut other = AuditEvent::new(EventKind::AppDiscovered, device(), user());
    other.details = serde_json::json!({"app": "Cursor"});
    evs.push(other);
    for (i, ev) in evs.iter_mut().enumerate() {
        ev.time = t0 + ChronoDuration::hours(i as i64);
    }
    // Insert out of time order to check ordering is by time, not insertion.
    let mut shuffled = evs.clone();
    shuffled.reverse();
    spool.append_batch(&shuffled).await.unwrap();
    (d, spool, evs)
}

fn ids(evs: &[AuditEvent]) -> Vec<Uuid> {
    evs.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn query_filters_by_each_field() {
    let (_d, spool, evs) = filter_fixture().await;
    let q = |f: EventFilter| {
        let spool = spool.clone();
        async move { ids(&spool.query(&f).await.unwrap()) }
    };
    assert_eq!(
        q(EventFilter::default()).await,
        ids(&evs),
        "no filter: all, oldest first"
    );
    assert_eq!(
        q(EventFilter {
            kind: Some("app.discovered".into()),
            ..Default::default()
        })
        .await,
        vec![evs[4].id]
    );
    assert_eq!(
        q(EventFilter {
            provider: Some("OpenAI".into()),
            ..Default::default()
        })
        .await,
        vec![evs[0].id, evs[2].id]
    );
    assert_eq!(
        q(EventFilter {
            model: Some("gpt-4o".into()),
            ..Default::default()
        })
        .await,
        vec![evs[0].id]
    );
    assert_eq!(
        q(EventFilter {
            app: Some("cursor".into()),
            ..Default::default()
        })
        .await,
        vec![evs[1].id]
    );
    assert_eq!(
        q(EventFilter {
            decision: Some("block".into()),
            ..Default::default()
        })
        .await,
        vec![evs[1].id]
    );
    assert_eq!(
        q(EventFilter {
            since: Some(evs[1].time),
            until: Some(evs[3].time),
            ..Default::default()
        })
        .await,
        vec![evs[1].id, evs[2].id],
        "since inclusive, until exclusive"
    );
    assert_eq!(
        q(EventFilter {
            limit: Some(2),
            ..Default::default()
        })
        .await,
        vec![evs[3].id, evs[4].id],
        "limit keeps the newest"
    );
    assert_eq!(
        q(EventFilter {
            provider: Some("openai".into()),
            decision: Some("allow".into()),
            ..Default::default()
        })
        .await,
        vec![evs[0].id],
        "filters combine with AND"
    );
    assert!(q(EventFilter {
        provider: Some("nobody".into()),
        ..Default::default()
    })
    .await
    .is_empty());
}

#[tokio::test]
async fn text_filter_matches_prompt_and_response_literally() {
    let (_d, spool, evs) = filter_fixture().await;
    let text = |t: &str| {
        let spool = spool.clone();
        let f = EventFilter {
            text: Some(t.to_string()),
            ..Default::default()
        };
        async move { ids(&spool.query(&f).await.unwrap()) }
    };
    assert_eq!(
        text("aws KEY").await,
        vec![evs[1].id],
        "case-insensitive, prompt"
    );
    assert_eq!(
        text("answer to here").await,
        vec![evs[1].id],
        "response text"
    );
    assert_eq!(text("100%").await, vec![evs[0].id], "% is literal");
    assert!(text("1%0").await.is_empty(), "% is not a wildcard");
    assert_eq!(text("snake_case").await, vec![evs[2].id]);
    assert!(text("snake_cas_").await.is_empty(), "_ is not a wildcard");
    assert_eq!(
        text("quote \" and a back\\slash").await,
        vec![evs[3].id],
        "quotes and backslashes"
    );
    assert!(
        text("Cursor").await.is_empty(),
        "details of other kinds are not prompt text"
    );
}

#[tokio::test]
async fn sql_injection_in_filters_matches_nothing_and_harms_nothing() {
    let (_d, spool, evs) = filter_fixture().await;
    for attempt in [
        "'; DROP TABLE events; --",
        "%' OR '1'='1",
        "\\' OR 1=1 --",
        "') OR 1=1 --",
    ] {
        let f = EventFilter {
            text: Some(attempt.into()),
            ..Default::default()
        };
        assert!(spool.query(&f).await.unwrap().is_empty(), "{attempt}");
        let f = EventFilter {
            provider: Some(attempt.into()),
            kind: Some(attempt.into()),
            ..Default::default()
        };
        assert!(spool.query(&f).await.unwrap().is_empty(), "{attempt}");
    }
    assert_eq!(spool.stats().await.unwrap().count, evs.len() as u64);
    assert_eq!(
        spool.query(&EventFilter::default()).await.unwrap().len(),
        evs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_from_many_tasks_all_land() {
    let (_d, spool) = open_tmp().await;
    let mut tasks = Vec::new();
    for t in 0..32 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let ev = simple(&format!("task {t} event {i}"));
                spool.append(&ev).await.unwrap();
                ids.push(ev.id);
            }
            ids
        }));
    }
    let mut expected = HashSet::new();
    for t in tasks {
        expected.extend(t.await.unwrap());
    }
    let stored: HashSet<Uuid> = spool
        .peek(usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(stored, expected);
    assert_eq!(spool.stats().await.unwrap().count, 320);
}

#[tokio::test]
async fn read_only_handle_sees_a_live_writer_and_cannot_write() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool.db");
    let writer = Spool::open(&path, SpoolOptions::default()).await.unwrap();
    let a = simple("first");
    writer.append(&a).await.unwrap();

    let reader = Spool::open_read_only(&path).await.unwrap();
    assert_eq!(
        reader.query(&EventFilter::default()).await.unwrap(),
        vec![a.clone()]
    );

    let b = simple("second");
    writer.append(&b).await.unwrap();
    assert_eq!(
        reader.query(&EventFilter::default()).await.unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(reader.stats().await.unwrap().count, 2);

    let e = reader.append(&simple("no")).await.unwrap_err();
    assert!(
        matches!(e, SpoolError::ReadOnly) && !e.is_retryable(),
        "{e}"
    );
    assert!(matches!(
        reader.ack(&[a.id]).await,
        Err(SpoolError::ReadOnly)
    ));
    assert_eq!(writer.stats().await.unwrap().count, 2);
}

#[tokio::test]
async fn read_only_open_after_the_writer_closed() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool.db");
    let writer = Spool::open(&path, SpoolOptions::default()).await.unwrap();
    writer.append(&simple("kept")).await.unwrap();
    writer.close().await;
    drop(writer);
    let reader = Spool::open_read_only(&path).await.unwrap();
    assert_eq!(reader.stats().await.unwrap().count, 1);
}

#[tokio::test]
async fn read_only_open_reports_missing_and_foreign_files() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope.db");
    let e = Spool::open_read_only(&missing).await.unwrap_err();
    assert!(matches!(e, SpoolError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");

    let e = Spool::open_read_only(dir.path()).await.unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let e = Spool::open_read_only(&garbage).await.unwrap_err();
    assert!(matches!(e, SpoolError::Sqlite { .. }), "{e}");

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let e = Spool::open_read_only(&empty).await.unwrap_err();
    assert!(matches!(e, SpoolError::NotASpool { .. }), "{e}");
}

#[tokio::test]
async fn writable_open_of_a_foreign_file_fails_clearly() {
    let dir = TempDir::new().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let e = Spool::open(&garbage, SpoolOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, SpoolError::Sqlite { .. }), "{e}");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool.db");
    let spool = Spool::open(&path, SpoolOptions::default()).await.unwrap();
    sqlx::raw_sql("PRAGMA user_version = 99")
        .execute(spool.inner.writer.as_ref().unwrap())
        .await
        .unwrap();
    spool.close().await;
    let e = Spool::open(&path, SpoolOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, SpoolError::SchemaTooNew { found: 99, .. }),
        "{e}"
    );
    let e = Spool::open_read_only(&path).await.unwrap_err();
    assert!(
        matches!(e, SpoolError::SchemaTooNew { found: 99, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn an_undecodable_row_is_quarantined_and_reported_not_a_permanent_stall() {
    let (_d, spool) = open_tmp().await;
    let (good1, bad, good2) = (simple("one"), simple("two"), simple("three"));
    spool
        .append_batch(&[good1.clone(), bad.clone(), good2.clone()])
        .await
        .unwrap();
    // Simulate an incompatible upgrade: the row keeps its envelope but no longer decodes.
    sqlx::query("UPDATE events SET body = json_remove(body, '$.kind') WHERE id = ?")
        .bind(bad.id.to_string())
        .execute(spool.inner.writer.as_ref().unwrap())
        .await
        .unwrap();

    // A read-only handle (the CLI) skips it.
    let reader = Spool::open_read_only(spool.path()).await.unwrap();
    assert_eq!(
        reader.query(&EventFilter::default()).await.unwrap(),
        vec![good1.clone(), good2.clone()]
    );
    assert_eq!(
        reader.peek(10).await.unwrap(),
        vec![good1.clone(), good2.clone()]
    );
    assert_eq!(
        reader.stats().await.unwrap().rejected_total,
        0,
        "read-only never moves rows"
    );

    // The writer's peek moves it aside and reports it.
    assert_eq!(
        spool.peek(10).await.unwrap(),
        vec![good1.clone(), good2.clone()]
    );
    let stats = spool.stats().await.unwrap();
    assert_eq!((stats.count, stats.rejected_total), (3, 1), "{stats:?}");
    let held = spool.peek(10).await.unwrap();
    assert_eq!(held.len(), 3);
    let marker = &held[2];
    assert_eq!(marker.kind.as_str(), REJECTED_KIND);
    assert_eq!(marker.details["id"], bad.id.to_string());
    assert!(
        marker.details["error"].as_str().unwrap().contains("kind"),
        "{}",
        marker.details
    );
    assert_eq!(
        marker.device,
        device(),
        "envelope recovered from the bad row"
    );
    assert_eq!(marker.user, user());

    let raw: String = sqlx::query_scalar("SELECT body FROM rejected WHERE id = ?")
        .bind(bad.id.to_string())
        .fetch_one(spool.inner.writer.as_ref().unwrap())
        .await
        .unwrap();
    assert!(raw.contains("two"), "kept verbatim");
}

#[tokio::test]
async fn acking_a_drained_backlog_gives_disk_space_back() {
    let (_d, spool) = open_tmp().await;
    let filler = "z".repeat(4000);
    let evs: Vec<_> = (0..3000)
        .map(|i| simple(&format!("{i} {filler}")))
        .collect();
    for chunk in evs.chunks(500) {
        spool.append_batch(chunk).await.unwrap();
    }
    let full = spool.stats().await.unwrap().file_bytes;
    assert!(full > 12_000_000, "{full}");
    let ids: Vec<Uuid> = evs.iter().map(|e| e.id).collect();
    assert_eq!(spool.ack(&ids).await.unwrap(), 3000);
    let drained = spool.stats().await.unwrap().file_bytes;
    assert!(
        drained < full / 4,
        "file stayed at {drained} of {full} bytes"
    );
}

/// A tiny deterministic PRNG so the model test needs no extra crates.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random appends (fresh and repeated ids), batches, peeks, acks (known and
/// unknown ids) and reopens, checked after every step against a queue.
#[tokio::test]
async fn behaves_like_a_fifo_queue_keyed_by_id() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool.db");
    let mut spool = Spool::open(&path, SpoolOptions::default()).await.unwrap();
    let mut model: Vec<AuditEvent> = Vec::new();
    let mut seen: Vec<AuditEvent> = Vec::new();
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    for step in 0..400 {
        match rng.below(10) {
            0..=3 => {
                let ev = if !seen.is_empty() && rng.below(4) == 0 {
                    seen[rng.below(seen.len() as u64) as usize].clone()
                } else {
                    simple(&format!("step {step}"))
                };
                spool.append(&ev).await.unwrap();
                // Still spooled: no-op. New, or acked earlier: stored at the end.
                if !model.iter().any(|m| m.id == ev.id) {
                    model.push(ev.clone());
                }
                seen.push(ev);
            }
            4..=5 => {
                let n = rng.below(5) as usize;
                let batch: Vec<_> = (0..n)
                    .map(|i| simple(&format!("step {step} batch {i}")))
                    .collect();
                spool.append_batch(&batch).await.unwrap();
                model.extend(batch.iter().cloned());
                seen.extend(batch);
            }
            6..=7 => {
                let k = rng.below(model.len() as u64 + 2) as usize;
                let mut ids: Vec<Uuid> = model.iter().take(k).map(|e| e.id).collect();
                ids.push(Uuid::now_v7());
                let deleted = spool.ack(&ids).await.unwrap();
                assert_eq!(deleted as usize, k.min(model.len()), "step {step}");
                model.drain(..k.min(model.len()));
            }
            8 => {
                let limit = rng.below(8) as usize;
                let got = spool.peek(limit).await.unwrap();
                assert_eq!(
                    got,
                    model.iter().take(limit).cloned().collect::<Vec<_>>(),
                    "step {step}"
                );
            }
            _ => {
                spool.close().await;
                spool = Spool::open(&path, SpoolOptions::default()).await.unwrap();
            }
        }
        let stats = spool.stats().await.unwrap();
        assert_eq!(stats.count, model.len() as u64, "step {step}");
    }
    assert_eq!(spool.peek(usize::MAX).await.unwrap(), model);
}

// === crash durability ===

const CRASH_CHILD_ENV: &str = "PALISADE_SPOOL_CRASH_CHILD";
const APPENDED: &str = "APPENDED ";
const BATCH: &str = "BATCH ";

/// Child half of [`appends_that_returned_ok_survive_sigkill`]: appends until
/// killed, printing each id after its append returned `Ok`. Does nothing
/// when not started by the parent test.
#[tokio::test]
#[ignore = "child process of appends_that_returned_ok_survive_sigkill"]
async fn crash_child() {
    let Some(path) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    use std::io::Write;
    let spool = Spool::open(Path::new(&path), SpoolOptions::default())
        .await
        .unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let ev = simple(&format!("crash test {i}"));
        if i % 3 == 0 {
            let extra = simple(&format!("crash test batch {i}"));
            // Announced before the append, so the parent can check all-or-none.
            writeln!(out, "{BATCH}{} {}", ev.id, extra.id).unwrap();
            out.flush().unwrap();
            spool
                .append_batch(&[ev.clone(), extra.clone()])
                .await
                .unwrap();
            writeln!(out, "{APPENDED}{}", extra.id).unwrap();
        } else {
            spool.append(&ev).await.unwrap();
        }
        writeln!(out, "{APPENDED}{}", ev.id).unwrap();
        out.flush().unwrap();
    }
}

#[cfg(unix)]
#[test]
fn appends_that_returned_ok_survive_sigkill() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acknowledged = Vec::new();
    let mut batches: Vec<(Uuid, Uuid)> = Vec::new();
    let mut take = |line: &str, acknowledged: &mut Vec<Uuid>| {
        if let Some(id) = line.strip_prefix(APPENDED) {
            acknowledged.push(Uuid::parse_str(id).unwrap());
        } else if let Some(pair) = line.strip_prefix(BATCH) {
            let (a, b) = pair.split_once(' ').unwrap();
            batches.push((Uuid::parse_str(a).unwrap(), Uuid::parse_str(b).unwrap()));
        }
    };
    while acknowledged.len() < 150 {
        let line = lines
            .next()
            .expect("child exited before being killed")
            .unwrap();
        take(&line, &mut acknowledged);
    }
    child.kill().unwrap(); // SIGKILL on unix, mid-stream
                           // Ids printed before the kill but not yet read are acknowledged too.
    for line in lines {
        take(&line.unwrap(), &mut acknowledged);
    }
    assert!(batches.len() > 10);
    let status = child.wait().unwrap();
    assert!(!status.success(), "child must have been killed: {status:?}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let spool = Spool::open(&path, SpoolOptions::default()).await.unwrap();
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(spool.inner.writer.as_ref().unwrap())
            .await
            .unwrap();
        assert_eq!(integrity, "ok");
        let stored: HashSet<Uuid> = spool
            .peek(usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        for id in &acknowledged {
            assert!(
                stored.contains(id),
                "append of {id} returned Ok but the record is gone"
            );
        }
        for (a, b) in &batches {
            assert_eq!(
                stored.contains(a),
                stored.contains(b),
                "batch {a}+{b} was half applied"
            );
        }
        let stats = spool.stats().await.unwrap();
        assert_eq!(
            stats.count,
            stored.len() as u64,
            "counters agree with the rows"
        );
        // The spool keeps working after the crash.
        spool.append(&simple("after crash")).await.unwrap();
    });
}

#[tokio::test]
async fn a_v1_spool_is_migrated_with_its_records_and_filters_still_work() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("spool.db");
    // A spool as an agent before schema v2 left it, holding two records.
    let v1 = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(&path).create_if_missing(true))
        .await
        .unwrap();
    sqlx::raw_sql(schema::MIGRATIONS[0]).execute(&v1).await.unwrap();
    sqlx::raw_sql("PRAGMA user_version = 1").execute(&v1).await.unwrap();
    for (i, provider) in ["openai", "anthropic"].iter().enumerate() {
        let ev = interaction(provider, "m", "curl", RecordDecision::Allow, &format!("p{i}"));
        let body = serde_json::to_string(&ev).unwrap();
        sqlx::query(
            "INSERT INTO events (id, time_us, kind, provider, model, app, decision, size, body) \
             VALUES (?, ?, 'interaction', ?, 'm', 'curl', 'allow', ?, ?)",
        )
        .bind(ev.id.to_string())
        .bind(ev.time.timestamp_micros())
        .bind(provider)
        .bind(body.len() as i64)
        .bind(&body)
        .execute(&v1)
        .await
        .unwrap();
    }
    v1.close().await;

    let spool = Spool::open(&path, SpoolOptions::default()).await.unwrap();
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL ORDER BY name",
    )
    .fetch_all(spool.inner.writer.as_ref().unwrap())
    .await
    .unwrap();
    assert_eq!(indexes, ["events_time"]);
    let found = spool
        .query(&EventFilter { provider: Some("ANTHROPIC".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].interaction.as_ref().unwrap().provider, "anthropic");
    assert_eq!(spool.stats().await.unwrap().count, 2);
}
