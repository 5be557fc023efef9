//! `palisade audit verify`: check the control plane's tamper-evident admin
//! audit log, either straight from the server's store (`--config
//! server.toml`, reading the audit key from the server's data dir unless
//! `--key-file` is given) or from an exported JSONL file (`--file`, with the
//! key handed over out of band in `--key-file`).
//!
//! With `--events` it checks the interaction-record chain instead (from the
//! store only: `--config`), including the signed checkpoints retention
//! leaves, and names the position, event id and kind of tamper it finds.
//!
//! Read-only: it must never write to the store or the export, never print
//! the key or record contents, and it refuses to create a SQLite file that
//! does not exist.

use clap::{Args, Subcommand};
use palisade_server::admin::audit::{
    parse_export, verify_export, verify_store, AuditKey, AuditKeyError, ExportParseError,
    VerifyError, VerifyReport, VerifyStoreError,
};
use palisade_server::admin::integrity::{
    verify_events, EventChainError, EventVerifyReport, VerifyEventsError,
};
use palisade_server::{ServerConfig, Store, StoreError};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the admin audit log's hash chain and HMACs (names the first broken
    /// seq), or with --events the interaction-record chain.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config", "file"])))]
pub struct VerifyArgs {
    /// The server's TOML config: verify its store directly.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// An export from GET /api/v1/admin-audit/export (JSON lines).
    #[arg(long, value_name = "PATH", requires = "key_file")]
    pub file: Option<PathBuf>,
    /// The audit key file (64 hex characters) [default with --config: <data_dir>/audit.key].
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Check the interaction records' hash chain and checkpoints instead
    /// (needs --config).
    #[arg(long, conflicts_with = "file")]
    pub events: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    #[error("server config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error(transparent)]
    Key(#[from] AuditKeyError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("export: {0}")]
    Export(#[from] ExportParseError),
    #[error("admin audit log is NOT intact: {0}")]
    Broken(#[from] VerifyError),
    #[error("interaction records are NOT intact: {0}")]
    EventsBroken(#[from] EventChainError),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

pub async fn run(args: AuditArgs, out: &mut impl Write) -> Result<(), AuditCliError> {
    match args.command {
        AuditCommand::Verify(v) if v.events => {
            let (source, report) = verify_events_of(&v).await?;
            print_events_report(out, &source, &report)?;
            Ok(())
        }
        AuditCommand::Verify(v) => {
            let (source, report) = verify(&v).await?;
            print_report(out, &source, &report)?;
            Ok(())
        }
    }
}

/// Verify what the arguments name; returns a description of the source and
/// the report.
pub async fn verify(args: &VerifyArgs) -> Result<(String, VerifyReport), AuditCliError> {
    if let Some(path) = &args.file {
        let key_path = args.key_file.clone().ok_or_else(|| AuditCliError::Config {
            path: path.display().to_string(),
            reason: "--file needs --key-file".into(),
        })?;
        let key = AuditKey::load(&key_path)?;
        let text = std::fs::read_to_string(path).map_err(|source| AuditCliError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let parsed = parse_export(&text)?;
        let mut source = format!("export {}", path.display());
        if parsed.trailer.is_none() {
            source.push_str(" (no trailer line: the export is incomplete, and entries cut from its end cannot be detected)");
        }
        return Ok((source, verify_export(&parsed, &key)?));
    }
    let (store, key) = open_store(args).await?;
    let result = verify_store(&store, &key).await;
    store.close().await;
    let report = match result {
        Ok(r) => r,
        Err(VerifyStoreError::Store(e)) => return Err(e.into()),
        Err(VerifyStoreError::Broken(e)) => return Err(e.into()),
    };
    Ok((format!("{} store", store.backend_name()), report))
}

/// Verify the interaction-record chain of the store `--config` names.
pub async fn verify_events_of(
    args: &VerifyArgs,
) -> Result<(String, EventVerifyReport), AuditCliError> {
    let (store, key) = open_store(args).await?;
    let result = verify_events(&store, &key).await;
    store.close().await;
    let report = match result {
        Ok(r) => r,
        Err(VerifyEventsError::Store(e)) => return Err(e.into()),
        Err(VerifyEventsError::Broken(e)) => return Err(e.into()),
    };
    Ok((format!("{} store", store.backend_name()), report))
}

/// Open (never create) the store `--config` names, with its audit key.
async fn open_store(args: &VerifyArgs) -> Result<(Store, AuditKey), AuditCliError> {
    let Some(cfg_path) = &args.config else {
        return Err(AuditCliError::Config {
            path: "-".into(),
            reason: "give --config or --file".into(),
        });
    };
    let cfg_err = |reason: String| AuditCliError::Config {
        path: cfg_path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(cfg_path).map_err(|e| cfg_err(e.to_string()))?;
    let cfg = ServerConfig::from_toml(&text).map_err(|e| cfg_err(e.to_string()))?;
    if cfg.store.postgres_url.is_none() && !cfg.sqlite_path().exists() {
        return Err(cfg_err(format!(
            "no store at {} (is data_dir right?)",
            cfg.sqlite_path().display()
        )));
    }
    let key_path = args
        .key_file
        .clone()
        .unwrap_or_else(|| AuditKey::default_path(&cfg));
    let key = AuditKey::load(&key_path)?;
    let store = Store::open(&cfg).await?;
    Ok((store, key))
}

fn print_events_report(
    out: &mut impl Write,
    source: &str,
    r: &EventVerifyReport,
) -> Result<(), std::io::Error> {
    writeln!(out, "interaction records intact: {source}")?;
    match (r.first_position, r.last_position) {
        (Some(a), Some(b)) => writeln!(out, "  events:      {} (positions {a}..={b})", r.events)?,
        _ => writeln!(out, "  events:      0")?,
    }
    if let Some(p) = r.started_at_checkpoint {
        writeln!(
            out,
            "  starts at:   signed checkpoint at position {p} (older records removed by retention)"
        )?;
    }
    writeln!(
        out,
        "  purged:      {} with content removed by retention (stored content digests used)",
        r.content_purged
    )?;
    writeln!(out, "  checkpoints: {} signed, all checked", r.checkpoints)?;
    if r.unlinked_legacy > 0 {
        writeln!(
            out,
            "  not covered: {} records stored before chaining began",
            r.unlinked_legacy
        )?;
    }
    match r.last_position {
        Some(p) => writeln!(out, "  head:        position {p}, hash {}", r.head_hash)?,
        None => writeln!(out, "  head:        hash {}", r.head_hash)?,
    }
    Ok(())
}

fn print_report(
    out: &mut impl Write,
    source: &str,
    r: &VerifyReport,
) -> Result<(), std::io::Error> {
    writeln!(out, "admin audit log intact: {source}")?;
    writeln!(out, "  entries:   {}", r.entries)?;
    match r.head_seq {
        Some(seq) => writeln!(out, "  head:      seq {seq}, hash {}", r.head_hash)?,
        None => writeln!(out, "  head:      (empty log)")?,
    }
    writeln!(
        out,
        "  note:      compare the head with one recorded earlier to detect entries removed from the end"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_server::admin::audit::{
        Action, ActorKind, AuditEntry, AuditLog, ExportHead, ExportTrailer, NewAuditEntry, Outcome,
        CANONICAL_DESCRIPTION, EXPORT_INSTRUCTIONS, FORMAT,
    };

    /// A server data dir with a config, a key file and a log of `n` entries.
    async fn server_dir(n: usize) -> (tempfile::TempDir, PathBuf, Vec<AuditEntry>) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServerConfig::for_data_dir(dir.path());
        let cfg_path = dir.path().join("server.toml");
        std::fs::write(
            &cfg_path,
            format!("data_dir = {:?}\n", dir.path().display().to_string()),
        )
        .unwrap();
        let key = AuditKey::load_or_create(&AuditKey::default_path(&cfg)).unwrap();
        let store = Store::open(&cfg).await.unwrap();
        let log = AuditLog::new(store.clone(), key);
        let mut entries = Vec::new();
        for i in 0..n {
            entries.push(
                log.append(NewAuditEntry {
                    actor_kind: ActorKind::Token,
                    actor_id: "ops".into(),
                    action: Action::Update,
                    outcome: Outcome::Success,
                    target_type: "policy".into(),
                    target_id: (i + 1).to_string(),
                    ip: Some("127.0.0.1".into()),
                    user_agent: None,
                    details: serde_json::json!({ "version": i + 1 }),
                })
                .await
                .unwrap(),
            );
        }
        store.close().await;
        (dir, cfg_path, entries)
    }

    fn export_text(entries: &[AuditEntry]) -> String {
        let mut s = String::new();
        for e in entries {
            s.push_str(&serde_json::to_string(e).unwrap());
            s.push('\n');
        }
        let t = ExportTrailer {
            checkpoint: None,
            format: FORMAT.into(),
            chain_head: entries.last().map(|e| ExportHead {
                seq: e.seq,
                hash: e.hash.clone(),
            }),
            entries: entries.len() as u64,
            canonical: CANONICAL_DESCRIPTION.into(),
            instructions: EXPORT_INSTRUCTIONS.into(),
        };
        s.push_str(&serde_json::to_string(&t).unwrap());
        s.push('\n');
        s
    }

    fn args(config: Option<PathBuf>, file: Option<PathBuf>, key: Option<PathBuf>) -> VerifyArgs {
        VerifyArgs {
            config,
            file,
            key_file: key,
            events: false,
        }
    }

    fn new_event(json: &str) -> palisade_server::store::NewEvent {
        palisade_server::store::NewEvent {
            id: uuid::Uuid::now_v7(),
            time: chrono::Utc::now(),
            kind: "interaction".into(),
            provider: Some("openai".into()),
            model: Some("gpt-4o".into()),
            app: None,
            decision: Some("allow".into()),
            json: json.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn verifies_the_event_chain_and_names_a_deleted_position() {
        let (dir, cfg_path, _) = server_dir(1).await;
        let cfg = ServerConfig::for_data_dir(dir.path());
        let store = Store::open(&cfg).await.unwrap();
        let events: Vec<_> = (0..5)
            .map(|i| new_event(&format!("{{\"request\":{{\"prompt\":\"p{i}\"}}}}")))
            .collect();
        store.insert_events("dev-1", &events).await.unwrap();
        store.close().await;

        let mut a = args(Some(cfg_path.clone()), None, None);
        a.events = true;
        let mut out = Vec::new();
        run(
            AuditArgs {
                command: AuditCommand::Verify(a),
            },
            &mut out,
        )
        .await
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("interaction records intact: sqlite store"),
            "{out}"
        );
        assert!(out.contains("events:      5 (positions 1..=5)"), "{out}");
        assert!(
            !out.contains("p3"),
            "record contents must not be printed: {out}"
        );

        // Someone removes the third record with plain SQL.
        let db = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(cfg.sqlite_path()))
            .await
            .unwrap();
        sqlx::query("DELETE FROM events WHERE chain_pos = 3")
            .execute(&db)
            .await
            .unwrap();
        db.close().await;
        let mut a = args(Some(cfg_path), None, None);
        a.events = true;
        let e = verify_events_of(&a).await.unwrap_err();
        assert!(
            matches!(
                e,
                AuditCliError::EventsBroken(EventChainError::Deleted {
                    position: 3,
                    next: 4
                })
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("interaction records are NOT intact: position 3: missing"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn verifies_a_store_through_its_config_and_prints_the_head() {
        let (_dir, cfg, entries) = server_dir(3).await;
        let mut out = Vec::new();
        run(
            AuditArgs {
                command: AuditCommand::Verify(args(Some(cfg), None, None)),
            },
            &mut out,
        )
        .await
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("entries:   3"), "{out}");
        assert!(out.contains(&entries[2].hash), "{out}");
    }

    #[tokio::test]
    async fn verifies_an_export_and_names_the_first_tampered_seq() {
        let (dir, _cfg, entries) = server_dir(4).await;
        let key = dir.path().join("audit.key");
        let file = dir.path().join("export.jsonl");
        std::fs::write(&file, export_text(&entries)).unwrap();
        let (_, r) = verify(&args(None, Some(file.clone()), Some(key.clone())))
            .await
            .unwrap();
        assert_eq!(r.entries, 4);

        let mut edited = entries.clone();
        edited[1].actor.id = "mallory".into();
        std::fs::write(&file, export_text(&edited)).unwrap();
        let e = verify(&args(None, Some(file.clone()), Some(key.clone())))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                AuditCliError::Broken(VerifyError::HashMismatch { seq: 2 })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("seq 2"), "{e}");

        let mut gone = entries.clone();
        gone.remove(2);
        std::fs::write(&file, export_text(&gone)).unwrap();
        let e = verify(&args(None, Some(file.clone()), Some(key)))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                AuditCliError::Broken(VerifyError::SeqGap {
                    expected: 3,
                    found: 4
                })
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn bad_inputs_get_clear_errors() {
        let (dir, cfg, _) = server_dir(1).await;
        let other_key = dir.path().join("other.key");
        std::fs::write(&other_key, format!("{}\n", "11".repeat(32))).unwrap();
        let e = verify(&args(Some(cfg.clone()), None, Some(other_key)))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                AuditCliError::Broken(VerifyError::HmacMismatch { seq: 1 })
            ),
            "{e}"
        );

        let e = verify(&args(Some(cfg), None, Some(dir.path().join("missing.key"))))
            .await
            .unwrap_err();
        assert!(matches!(e, AuditCliError::Key(_)), "{e}");

        let bad_cfg = dir.path().join("bad.toml");
        std::fs::write(&bad_cfg, "data_dirr = \"/x\"\n").unwrap();
        let e = verify(&args(Some(bad_cfg), None, None)).await.unwrap_err();
        assert!(e.to_string().contains("data_dirr"), "{e}");

        let empty = tempfile::tempdir().unwrap();
        let cfg2 = empty.path().join("s.toml");
        std::fs::write(
            &cfg2,
            format!("data_dir = {:?}\n", empty.path().display().to_string()),
        )
        .unwrap();
        let e = verify(&args(Some(cfg2), None, None)).await.unwrap_err();
        assert!(e.to_string().contains("no store at"), "{e}");
        assert!(
            !empty.path().join("palisade.db").exists(),
            "verify must not create a store"
        );

        let junk = dir.path().join("junk.jsonl");
        std::fs::write(&junk, "{\"seq\": \"one\"}\n").unwrap();
        let e = verify(&args(None, Some(junk), Some(dir.path().join("audit.key"))))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn clap_requires_exactly_one_source_and_a_key_for_files() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct T {
            #[command(subcommand)]
            c: AuditCommand,
        }
        assert!(T::try_parse_from(["t", "verify"]).is_err());
        assert!(T::try_parse_from(["t", "verify", "--file", "x"]).is_err());
        assert!(T::try_parse_from([
            "t",
            "verify",
            "--file",
            "x",
            "--config",
            "y",
            "--key-file",
            "k"
        ])
        .is_err());
        assert!(T::try_parse_from(["t", "verify", "--file", "x", "--key-file", "k"]).is_ok());
        assert!(T::try_parse_from(["t", "verify", "--config", "y"]).is_ok());
        assert!(T::try_parse_from(["t", "verify", "--events", "--config", "y"]).is_ok());
        assert!(T::try_parse_from(["t", "verify", "--events"]).is_err());
        assert!(
            T::try_parse_from(["t", "verify", "--events", "--file", "x", "--key-file", "k"])
                .is_err()
        );
    }
}
