//! End-to-end tests of `palisade events`: the built binary run against a
//! spool this test fills (and keeps open for writing, as the agent would).

use chrono::{Duration, TimeZone, Utc};
use palisade_core::{
    AppRef, AuditEvent, DeviceRef, EventKind, Interaction, PolicyRef, RecordDecision,
    RequestCapture, ResponseCapture, Usage, UserRef,
};
use palisade_spool::{Spool, SpoolOptions};
use std::path::Path;
use std::process::{Command, Output};
use tempfile::TempDir;

fn interaction(
    provider: &str,
    model: &str,
    app: &str,
    decision: RecordDecision,
    prompt: &str,
) -> AuditEvent {
    let mut ev = AuditEvent::new(
        EventKind::Interaction,
        DeviceRef {
            id: "dev-1".into(),
            hostname: "laptop".into(),
            os: "linux".into(),
        },
        UserRef {
            os_user: Some("alice".into()),
            email: None,
            team: None,
        },
    );
    ev.app = Some(AppRef {
        name: Some(app.into()),
        exe: Some(format!("/usr/bin/{app}")),
        pid: Some(4242),
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
            path: "/v1/x".into(),
            ..Default::default()
        },
        response: ResponseCapture {
            status: Some(200),
            text: Some("ok".into()),
            ..Default::default()
        },
        usage: Usage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            ..Default::default()
        },
        policy: PolicyRef {
            decision,
            rule: None,
            version: 1,
        },
        ..Default::default()
    });
    ev
}

struct Fixture {
    dir: TempDir,
    events: Vec<AuditEvent>,
    /// Kept open for writing while the CLI reads, like a running agent.
    _writer: Spool,
    _rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap();
        let mut events = vec![
            interaction(
                "openai",
                "gpt-4o",
                "curl",
                RecordDecision::Allow,
                "summarise this report",
            ),
            interaction(
                "anthropic",
                "claude-sonnet-4",
                "claude",
                RecordDecision::Block,
                "my key is AKIA...",
            ),
            interaction(
                "gemini",
                "gemini-2.5-pro",
                "gemini",
                RecordDecision::Redact,
                "evil \x1b]0;pwned\x07 title",
            ),
        ];
        let mut discovered = AuditEvent::new(
            EventKind::AppDiscovered,
            DeviceRef::default(),
            UserRef::default(),
        );
        discovered.details = serde_json::json!({"app": "Cursor"});
        events.push(discovered);
        for (i, ev) in events.iter_mut().enumerate() {
            ev.time = t0 + Duration::hours(i as i64);
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        let writer = rt.block_on(async {
            let s = Spool::open(&dir.path().join("spool.db"), SpoolOptions::default())
                .await
                .unwrap();
            s.append_batch(&events).await.unwrap();
            s
        });
        Self {
            dir,
            events,
            _writer: writer,
            _rt: rt,
        }
    }

    fn spool_path(&self) -> std::path::PathBuf {
        self.dir.path().join("spool.db")
    }

    fn run(&self, args: &[&str]) -> Output {
        palisade(self.dir.path(), args)
    }

    fn jsonl(&self, args: &[&str]) -> Vec<AuditEvent> {
        let mut all = vec!["events", "--format", "jsonl"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Run the built binary with `PALISADE_DATA_DIR=data_dir` (never the caller's real one).
fn palisade(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .env("PALISADE_DATA_DIR", data_dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn jsonl_prints_every_record_oldest_first_from_the_default_path() {
    let f = Fixture::new();
    assert_eq!(f.jsonl(&[]), f.events);
}

#[test]
fn explicit_spool_path_is_used() {
    let f = Fixture::new();
    let elsewhere = TempDir::new().unwrap();
    let spool = f.spool_path();
    let out = palisade(
        elsewhere.path(),
        &[
            "events",
            "--format",
            "jsonl",
            "--spool",
            spool.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().lines().count(),
        f.events.len()
    );
}

#[test]
fn filters_narrow_the_output() {
    let f = Fixture::new();
    let e = &f.events;
    assert_eq!(f.jsonl(&["--provider", "anthropic"]), vec![e[1].clone()]);
    assert_eq!(f.jsonl(&["--model", "gpt-4o"]), vec![e[0].clone()]);
    assert_eq!(f.jsonl(&["--app", "gemini"]), vec![e[2].clone()]);
    assert_eq!(f.jsonl(&["--decision", "block"]), vec![e[1].clone()]);
    assert_eq!(f.jsonl(&["--kind", "app.discovered"]), vec![e[3].clone()]);
    assert_eq!(f.jsonl(&["--text", "SUMMARISE"]), vec![e[0].clone()]);
    assert_eq!(f.jsonl(&["--limit", "2"]), e[2..].to_vec());
    assert_eq!(
        f.jsonl(&[
            "--since",
            "2026-01-10T13:00:00Z",
            "--until",
            "2026-01-10T15:00:00+00:00"
        ]),
        e[1..3].to_vec()
    );
    assert_eq!(f.jsonl(&["--since", "2026-01-11"]), vec![]);
    assert_eq!(f.jsonl(&["--text", "' OR 1=1 --"]), vec![]);
}

#[test]
fn relative_ages_count_back_from_now() {
    let dir = TempDir::new().unwrap();
    let now = Utc::now();
    let mut old = interaction(
        "openai",
        "gpt-4o",
        "curl",
        RecordDecision::Allow,
        "three days ago",
    );
    old.time = now - Duration::days(3);
    let mut recent = interaction(
        "openai",
        "gpt-4o",
        "curl",
        RecordDecision::Allow,
        "a minute ago",
    );
    recent.time = now - Duration::minutes(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = Spool::open(&dir.path().join("spool.db"), SpoolOptions::default())
            .await
            .unwrap();
        s.append_batch(&[old.clone(), recent.clone()])
            .await
            .unwrap();
        s.close().await;
    });
    let ids = |args: &[&str]| -> Vec<uuid::Uuid> {
        let mut all = vec!["events", "--format", "jsonl"];
        all.extend_from_slice(args);
        let out = palisade(dir.path(), &all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<AuditEvent>(l).unwrap().id)
            .collect()
    };
    assert_eq!(ids(&["--since", "24h"]), vec![recent.id]);
    assert_eq!(ids(&["--since", "7d"]), vec![old.id, recent.id]);
    assert_eq!(ids(&["--until", "1d"]), vec![old.id]);
}

#[test]
fn json_is_one_array() {
    let f = Fixture::new();
    let out = f.run(&["events", "--format", "json", "--provider", "openai"]);
    assert!(out.status.success());
    let v: Vec<AuditEvent> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, vec![f.events[0].clone()]);
}

#[test]
fn table_is_the_default_and_cannot_drive_the_terminal() {
    let f = Fixture::new();
    let out = f.run(&["events"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + f.events.len(), "{text}");
    for h in [
        "TIME", "KIND", "USER", "APP", "PROVIDER", "MODEL", "DECISION", "TOKENS", "SUMMARY",
    ] {
        assert!(lines[0].contains(h), "{h} missing: {}", lines[0]);
    }
    assert!(
        lines[1].starts_with("2026-01-10T12:00:00Z  interaction"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("anthropic") && lines[2].contains("block") && lines[2].contains("10/5"),
        "{}",
        lines[2]
    );
    assert!(
        lines[4].contains("app.discovered") && lines[4].contains("Cursor"),
        "{}",
        lines[4]
    );
    assert!(
        !text.contains('\x1b') && !text.contains('\x07'),
        "control characters reached the terminal"
    );
    assert!(
        lines[3].contains("evil  ]0;pwned  title") || lines[3].contains("evil ]0;pwned title"),
        "{}",
        lines[3]
    );
}

#[test]
fn a_missing_spool_is_a_clear_error() {
    let empty = TempDir::new().unwrap();
    let out = palisade(empty.path(), &["events"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("no spool at") && err.contains("spool.db"),
        "{err}"
    );
    assert!(err.contains("--spool"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_file_that_is_not_a_spool_is_a_clear_error() {
    let dir = TempDir::new().unwrap();
    std::fs::write(
        dir.path().join("spool.db"),
        b"definitely not sqlite, just some text that is long enough",
    )
    .unwrap();
    let out = palisade(dir.path(), &["events"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("spool database error"), "{err}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let dir = TempDir::new().unwrap();
    for (args, needle) in [
        (&["events", "--format", "xml"][..], "invalid value 'xml'"),
        (
            &["events", "--decision", "maybe"][..],
            "invalid value 'maybe'",
        ),
        (&["events", "--since", "yesterday"][..], "expected RFC 3339"),
        (&["events", "--since", "5y"][..], "unknown unit"),
        (&["events", "--limit", "0"][..], "--limit"),
        (&["events", "--limit", "-3"][..], "'-3'"),
        (&["events", "--bogus"][..], "--bogus"),
    ] {
        let out = palisade(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn an_empty_time_range_is_refused() {
    let f = Fixture::new();
    let out = f.run(&["events", "--since", "2026-01-11", "--until", "2026-01-10"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("is not before --until"), "{err}");
}
