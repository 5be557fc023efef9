//! Managed (admin) policy files that clients enforce themselves, written
//! in addition to editing user configs:
//!
//! * Claude Code `managed-settings.json` (`/etc/claude-code/` on Linux,
//!   `/Library/Application Support/ClaudeCode/` on macOS): we set
//!   `deniedMcpServers` to the admin's original entries plus one entry per
//!   denied server: `{"serverCommand": [command, ...args]}` (exactly as
//!   configured) for stdio, `{"serverUrl": URL}` for remote servers (the
//!   sanitised URL without its query; `*` appended when a query existed).
//!   We never add `serverName` entries: names are not identity.
//! * Codex `requirements.toml` (`/etc/codex/requirements.toml`): Codex's
//!   `[mcp_servers]` requirement is an ALLOWLIST (a server runs only if its
//!   name and identity match). When any Codex-configured server is denied we
//!   write `[mcp_servers.NAME.identity]` with `command = "..."` (stdio) or
//!   `url = "..."` (remote) for every Codex-configured server that is still
//!   allowed; denied ones are left out, so Codex disables them. With no
//!   Codex denies we put the original file back (or remove ours).
//!
//! Both files are regenerated from the ORIGINAL file (backed up on our first
//! write), so repeated syncs never accumulate entries, and an empty deny set
//! restores the original byte for byte. This module must never write a
//! managed file it could not parse.

use super::{atomic_write, EnforceError};
use crate::fingerprint::sha256_hex;
use crate::model::{McpServer, Transport};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Where the managed files live under `root` for `os` (`linux`/`macos`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedPaths {
    pub claude_managed_settings: PathBuf,
    pub codex_requirements: PathBuf,
}

impl ManagedPaths {
    pub fn for_root(root: &Path, os: &str) -> Self {
        let claude = if os == "macos" {
            "Library/Application Support/ClaudeCode/managed-settings.json"
        } else {
            "etc/claude-code/managed-settings.json"
        };
        Self {
            claude_managed_settings: root.join(claude),
            codex_requirements: root.join("etc/codex/requirements.toml"),
        }
    }
}

/// What a sync did to one managed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagedOutcome {
    Written,
    /// Nothing to deny: the original is back (or our file removed).
    RestoredOriginal,
    Unchanged,
}

/// The original bytes of a managed file (`None`: it did not exist), saved
/// once in `state_dir` so every sync starts from the admin's file.
fn original(path: &Path, state_dir: &Path) -> Result<Option<Vec<u8>>, EnforceError> {
    let tag = &sha256_hex(path.as_os_str().as_encoded_bytes())[..16];
    let saved = state_dir.join(format!("managed-{tag}.orig"));
    let absent = state_dir.join(format!("managed-{tag}.absent"));
    if let Ok(b) = std::fs::read(&saved) {
        return Ok(Some(b));
    }
    if absent.exists() {
        return Ok(None);
    }
    let werr = |p: &Path, source| EnforceError::Write {
        path: p.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(|e| werr(state_dir, e))?;
    match std::fs::read(path) {
        Ok(b) => {
            atomic_write(&saved, &b, None)?;
            Ok(Some(b))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&absent, b"").map_err(|e| werr(&absent, e))?;
            Ok(None)
        }
        Err(source) => Err(EnforceError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn put_back(path: &Path, orig: Option<Vec<u8>>) -> Result<ManagedOutcome, EnforceError> {
    let current = std::fs::read(path).ok();
    if current == orig {
        return Ok(ManagedOutcome::Unchanged);
    }
    match orig {
        Some(b) => atomic_write(path, &b, std::fs::metadata(path).ok().as_ref())?,
        None => std::fs::remove_file(path).map_err(|source| EnforceError::Write {
            path: path.to_path_buf(),
            source,
        })?,
    }
    Ok(ManagedOutcome::RestoredOriginal)
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<ManagedOutcome, EnforceError> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(ManagedOutcome::Unchanged);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| EnforceError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let meta = std::fs::metadata(path).ok();
    atomic_write(path, bytes, meta.as_ref())?;
    if meta.is_none() {
        use std::os::unix::fs::PermissionsExt;
        // Managed policy must be readable by every user's client.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    }
    Ok(ManagedOutcome::Written)
}

/// The `deniedMcpServers` entry for a server.
pub fn claude_denied_entry(s: &McpServer) -> Option<Value> {
    match s.transport {
        Transport::Stdio => {
            let mut cmd = vec![s.command.clone()?];
            cmd.extend(s.args.iter().cloned());
            Some(json!({ "serverCommand": cmd }))
        }
        _ => {
            let url = s.url.as_deref()?;
            Some(match url.split_once('?') {
                Some((base, _)) => json!({ "serverUrl": format!("{base}*") }),
                None => json!({ "serverUrl": url }),
            })
        }
    }
}

/// Make Claude Code's managed `deniedMcpServers` = the admin's original
/// entries + one per server in `denied` (de-duplicated).
pub fn sync_claude_managed(path: &Path, state_dir: &Path, denied: &[McpServer]) -> Result<ManagedOutcome, EnforceError> {
    let orig = original(path, state_dir)?;
    let mut entries: Vec<Value> = denied.iter().filter_map(claude_denied_entry).collect();
    entries.dedup();
    if entries.is_empty() {
        return put_back(path, orig);
    }
    let mut doc: Value = match &orig {
        Some(b) => {
            let text = String::from_utf8_lossy(b);
            serde_json::from_str(&crate::jsonc::strip(&text)).map_err(|e| EnforceError::Unparseable {
                path: path.to_path_buf(),
                problem: format!("line {} column {}", e.line(), e.column()),
            })?
        }
        None => json!({}),
    };
    let obj = doc.as_object_mut().ok_or_else(|| EnforceError::Unparseable {
        path: path.to_path_buf(),
        problem: "not a JSON object".into(),
    })?;
    let mut list = match obj.remove("deniedMcpServers") {
        Some(Value::Array(a)) => a,
        None => Vec::new(),
        Some(_) => {
            return Err(EnforceError::Unparseable {
                path: path.to_path_buf(),
                problem: "deniedMcpServers is not an array".into(),
            })
        }
    };
    for e in entries {
        if !list.contains(&e) {
            list.push(e);
        }
    }
    obj.insert("deniedMcpServers".into(), Value::Array(list));
    let mut out = serde_json::to_string_pretty(&doc).expect("JSON serialises");
    out.push('\n');
    write_if_changed(path, out.as_bytes())
}

/// Make Codex's `requirements.toml` allow exactly the `allowed` Codex
/// servers when `any_denied`; otherwise put the original back.
pub fn sync_codex_requirements(
    path: &Path,
    state_dir: &Path,
    allowed: &[McpServer],
    any_denied: bool,
) -> Result<ManagedOutcome, EnforceError> {
    let orig = original(path, state_dir)?;
    if !any_denied {
        return put_back(path, orig);
    }
    let text = orig.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| EnforceError::Unparseable {
        path: path.to_path_buf(),
        problem: e.message().to_string(),
    })?;
    let mut servers = toml_edit::Table::new();
    servers.set_implicit(true);
    // Keep the admin's own allowlist entries.
    if let Some(toml_edit::Item::Table(t)) = doc.get("mcp_servers") {
        for (k, v) in t.iter() {
            servers.insert(k, v.clone());
        }
    }
    for s in allowed.iter().filter(|s| s.client == "codex") {
        let mut identity = toml_edit::Table::new();
        match s.transport {
            Transport::Stdio => match &s.command {
                Some(c) => identity.insert("command", toml_edit::value(c.as_str())),
                None => continue,
            },
            _ => match &s.url {
                Some(u) => identity.insert("url", toml_edit::value(u.as_str())),
                None => continue,
            },
        };
        let mut entry = toml_edit::Table::new();
        entry.set_implicit(true);
        entry.insert("identity", toml_edit::Item::Table(identity));
        servers.insert(&s.name, toml_edit::Item::Table(entry));
    }
    doc.insert("mcp_servers", toml_edit::Item::Table(servers));
    write_if_changed(path, doc.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scope;

    fn server(name: &str, command: Option<&str>, args: &[&str], url: Option<&str>) -> McpServer {
        McpServer {
            fingerprint: "f".repeat(64),
            name: name.into(),
            transport: if url.is_some() { Transport::StreamableHttp } else { Transport::Stdio },
            command: command.map(Into::into),
            args: args.iter().map(|s| s.to_string()).collect(),
            env_names: vec![],
            url: url.map(Into::into),
            header_names: vec![],
            client: "codex".into(),
            config_path: PathBuf::from("/x"),
            scope: Scope::User,
            project: None,
            home: None,
            enabled: true,
            container: vec!["mcp_servers".into()],
        }
    }

    #[test]
    fn claude_managed_settings_merge_and_restore() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let paths = ManagedPaths::for_root(root.path(), "linux");
        let p = &paths.claude_managed_settings;
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let admin = "{\n  \"permissions\": {\"deny\": [\"Bash(curl:*)\"]},\n  \"deniedMcpServers\": [{\"serverName\": \"legacy\"}]\n}\n";
        std::fs::write(p, admin).unwrap();
        let denied = vec![
            server("gh", Some("npx"), &["-y", "@modelcontextprotocol/server-github"], None),
            server("r", None, &[], Some("https://mcp.example.com/mcp?token=REDACTED")),
        ];
        assert_eq!(sync_claude_managed(p, &state, &denied).unwrap(), ManagedOutcome::Written);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(
            v["deniedMcpServers"],
            json!([
                {"serverName": "legacy"},
                {"serverCommand": ["npx", "-y", "@modelcontextprotocol/server-github"]},
                {"serverUrl": "https://mcp.example.com/mcp*"}
            ])
        );
        assert_eq!(v["permissions"]["deny"][0], "Bash(curl:*)");
        // Idempotent, and starts from the original each time.
        assert_eq!(sync_claude_managed(p, &state, &denied).unwrap(), ManagedOutcome::Unchanged);
        assert_eq!(sync_claude_managed(p, &state, &denied[..1]).unwrap(), ManagedOutcome::Written);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(v["deniedMcpServers"].as_array().unwrap().len(), 2);
        assert_eq!(sync_claude_managed(p, &state, &[]).unwrap(), ManagedOutcome::RestoredOriginal);
        assert_eq!(std::fs::read_to_string(p).unwrap(), admin);
    }

    #[test]
    fn claude_managed_settings_created_and_removed_when_absent() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let p = ManagedPaths::for_root(root.path(), "macos").claude_managed_settings;
        assert!(p.ends_with("Library/Application Support/ClaudeCode/managed-settings.json"));
        sync_claude_managed(&p, &state, &[server("a", Some("a"), &[], None)]).unwrap();
        assert!(p.exists());
        assert_eq!(sync_claude_managed(&p, &state, &[]).unwrap(), ManagedOutcome::RestoredOriginal);
        assert!(!p.exists());
    }

    #[test]
    fn unparseable_managed_settings_are_never_rewritten() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("managed-settings.json");
        std::fs::write(&p, "{ broken").unwrap();
        let e = sync_claude_managed(&p, &root.path().join("s"), &[server("a", Some("a"), &[], None)]).unwrap_err();
        assert!(matches!(e, EnforceError::Unparseable { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{ broken");
    }

    #[test]
    fn codex_requirements_allowlist() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let p = ManagedPaths::for_root(root.path(), "linux").codex_requirements;
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let admin = "allowed_approval_policies = [\"on-request\"]\n";
        std::fs::write(&p, admin).unwrap();
        let allowed = vec![
            server("context7", Some("npx"), &["-y", "@upstash/context7-mcp"], None),
            server("figma", None, &[], Some("https://mcp.figma.com/mcp")),
        ];
        sync_codex_requirements(&p, &state, &allowed, true).unwrap();
        let v: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["mcp_servers"]["context7"]["identity"]["command"].as_str(), Some("npx"));
        assert_eq!(v["mcp_servers"]["figma"]["identity"]["url"].as_str(), Some("https://mcp.figma.com/mcp"));
        assert_eq!(v["allowed_approval_policies"][0].as_str(), Some("on-request"));
        assert_eq!(sync_codex_requirements(&p, &state, &allowed, false).unwrap(), ManagedOutcome::RestoredOriginal);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), admin);
    }
}
