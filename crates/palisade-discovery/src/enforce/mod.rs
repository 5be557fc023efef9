//! Enforcement of denied stdio MCP servers on the device: disable the entry
//! in the client's config (reversibly), stop its running processes, and
//! re-apply after every rescan.
//!
//! Rules this module keeps:
//! * it never rewrites a file it could not parse, and verifies every edit by
//!   re-parsing the result before writing it;
//! * the ORIGINAL bytes are saved to the backup dir before the first write,
//!   and writes are atomic (temp file in the same dir + rename, keeping mode
//!   and owner);
//! * restore is byte-for-byte when the file is still what we wrote; if the
//!   user edited it since, only the server's entry is put back.

mod edit;
pub mod managed;

pub use edit::EditError;

use crate::clients::{self, ConfigSource, Format, Shape};
use crate::fingerprint::{command_basename, sha256_hex};
use crate::model::{EntryKey, FindingKind, Inventory, McpServer, Transport};
use crate::process::{base, ProcInfo, ProcessLister, StopSignal};
use crate::read::{read_snapshot, ReadError, DEFAULT_MAX_FILE_BYTES};
use palisade_core::policy::ItemPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("{name:?} is a remote server: it is blocked at the proxy, not in config")]
    NotStdio { name: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error("refusing to edit {path}: it does not parse ({problem})")]
    Unparseable { path: PathBuf, problem: String },
    #[error("server {name:?} is not in {path}")]
    EntryNotFound { path: PathBuf, name: String },
    #[error("edit of {path} failed: {source}")]
    Edit {
        path: PathBuf,
        #[source]
        source: EditError,
    },
    #[error("edit of {path} did not verify: {problem}")]
    Verify { path: PathBuf, problem: String },
    #[error("{path} changed while we were editing it")]
    Raced { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup {path} is missing or damaged")]
    Backup { path: PathBuf },
}

/// How the entry was disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisableMethod {
    /// The entry was removed from the file.
    Removed,
    /// The client's own switch was set (`"disabled": true`, `"enabled": false`).
    Flagged,
}

/// Everything needed to undo one disable. Serializable so the agent can
/// persist it. Holds hashes and paths, never config content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisableReceipt {
    pub key: EntryKey,
    pub fingerprint: String,
    pub client: String,
    /// The file actually edited (symlinks resolved).
    pub edited_path: PathBuf,
    /// The original bytes, saved before the first write.
    pub backup_path: PathBuf,
    pub original_sha256: String,
    pub written_sha256: String,
    pub method: DisableMethod,
}

/// What [`restore`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreOutcome {
    /// The file was still ours: the original bytes are back, identical.
    Identical,
    /// The user edited the file since: only the server entry was put back.
    EntryReAdded,
}

/// The shape of a server's config file, from its client and file name.
pub(crate) fn shape_for(client: &str, path: &Path) -> Shape {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    match client {
        "claude-code" if file == ".claude.json" => Shape::ClaudeCodeUser,
        "vscode" if file == "settings.json" => Shape::VsCodeSettings,
        "vscode" => Shape::VsCodeMcp,
        "opencode" => Shape::OpenCode,
        "codex" => Shape::Codex,
        "zed" => Shape::Zed,
        "continue" if Format::for_path(path) == Format::Yaml => Shape::Continue,
        _ => Shape::McpServers,
    }
}

/// The client's own off switch, if it has one: (key, JSON value).
fn flag_for(client: &str) -> Option<(&'static str, &'static str)> {
    match client {
        "cline" | "windsurf" => Some(("disabled", "true")),
        "opencode" => Some(("enabled", "false")),
        _ => None,
    }
}

fn static_client(client: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "claude-desktop", "claude-code", "cursor", "windsurf", "vscode", "cline", "gemini-cli", "opencode", "codex",
        "zed", "continue", "lmstudio",
    ];
    KNOWN.iter().find(|k| **k == client).copied().unwrap_or("unknown")
}

/// Parse `bytes` as `server`'s config; error if it does not parse.
fn parse_checked(server_client: &str, path: &Path, bytes: &[u8]) -> Result<Vec<McpServer>, EnforceError> {
    let src = ConfigSource {
        path: path.to_path_buf(),
        client: static_client(server_client),
        scope: crate::model::Scope::User,
        shape: shape_for(server_client, path),
        project: None,
        home: None,
    };
    let parsed = clients::parse(&src, bytes);
    if let Some(f) = parsed.findings.iter().find(|f| f.kind == FindingKind::Malformed) {
        return Err(EnforceError::Unparseable {
            path: path.to_path_buf(),
            problem: f.problem.clone(),
        });
    }
    Ok(parsed.servers)
}

fn find<'a>(servers: &'a [McpServer], container: &[String], name: &str) -> Option<&'a McpServer> {
    servers.iter().find(|s| s.container == container && s.name == name)
}

fn read(path: &Path) -> Result<Vec<u8>, EnforceError> {
    read_snapshot(path, DEFAULT_MAX_FILE_BYTES).map_err(|source| EnforceError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `bytes` to `path` atomically: a temp file in the same directory,
/// same mode and owner as `like` (the file being replaced), fsync, rename.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8], like: Option<&std::fs::Metadata>) -> Result<(), EnforceError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let werr = |source| EnforceError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.palisade-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        if let Some(m) = like {
            f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            // Only root can give a file away; a user agent keeps its own uid.
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

/// Save `bytes` as the backup of `path` (idempotent: same content, same name).
fn save_backup(backup_dir: &Path, path: &Path, bytes: &[u8]) -> Result<PathBuf, EnforceError> {
    use std::os::unix::fs::PermissionsExt;
    let werr = |p: &Path, source| EnforceError::Write {
        path: p.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(backup_dir).map_err(|e| werr(backup_dir, e))?;
    let name = format!(
        "{}-{}.orig",
        &sha256_hex(path.as_os_str().as_encoded_bytes())[..16],
        &sha256_hex(bytes)[..16]
    );
    let bp = backup_dir.join(name);
    if std::fs::read(&bp).is_ok_and(|b| b == bytes) {
        return Ok(bp);
    }
    // Backups hold config secrets: owner-only.
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&bp).map_err(|e| werr(&bp, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| werr(&bp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| werr(&bp, e))?;
    Ok(bp)
}

/// Disable `server` in its config file, reversibly. Removes the entry, or
/// for clients with an off switch (Cline, Windsurf: `"disabled": true`;
/// OpenCode: `"enabled": false`) sets it. The original bytes go to
/// `backup_dir` first.
pub fn disable_server(server: &McpServer, backup_dir: &Path) -> Result<DisableReceipt, EnforceError> {
    if server.transport != Transport::Stdio {
        return Err(EnforceError::NotStdio { name: server.name.clone() });
    }
    // Edit the real file behind a symlink, never replace the link.
    let path = std::fs::canonicalize(&server.config_path).map_err(|e| EnforceError::Read {
        path: server.config_path.clone(),
        source: crate::read::map_io(e),
    })?;
    let original = read(&path)?;
    let meta = std::fs::metadata(&path).ok();
    let servers = parse_checked(&server.client, &path, &original)?;
    let before = find(&servers, &server.container, &server.name).ok_or_else(|| EnforceError::EntryNotFound {
        path: path.clone(),
        name: server.name.clone(),
    })?;
    let was_enabled = before.enabled;
    let text = std::str::from_utf8(&original).map_err(|_| EnforceError::Unparseable {
        path: path.clone(),
        problem: "not UTF-8".into(),
    })?;
    let format = Format::for_path(&path);
    let eerr = |source| EnforceError::Edit {
        path: path.clone(),
        source,
    };
    let (new_text, method) = match (format, flag_for(&server.client)) {
        (Format::Jsonc, Some((key, value))) => (
            edit::set_flag(text, &server.container, &server.name, key, value).map_err(eerr)?,
            DisableMethod::Flagged,
        ),
        _ => (edit::remove(format, text, &server.container, &server.name).map_err(eerr)?, DisableMethod::Removed),
    };
    let new_text = new_text.ok_or_else(|| EnforceError::EntryNotFound {
        path: path.clone(),
        name: server.name.clone(),
    })?;
    // Verify: parses, the entry is gone or off, every other entry intact.
    let after = parse_checked(&server.client, &path, new_text.as_bytes()).map_err(|e| EnforceError::Verify {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    let others_before: Vec<&McpServer> =
        servers.iter().filter(|s| !(s.container == server.container && s.name == server.name)).collect();
    let others_after: Vec<&McpServer> =
        after.iter().filter(|s| !(s.container == server.container && s.name == server.name)).collect();
    let entry_off = find(&after, &server.container, &server.name).is_none_or(|s| !s.enabled);
    if !entry_off || others_before != others_after {
        return Err(EnforceError::Verify {
            path: path.clone(),
            problem: "the edit changed more than the one entry".into(),
        });
    }
    let backup_path = save_backup(backup_dir, &path, &original)?;
    // Last check against a concurrent writer, then swap.
    if read(&path)? != original {
        return Err(EnforceError::Raced { path });
    }
    atomic_write(&path, new_text.as_bytes(), meta.as_ref())?;
    info!(
        server = %server.name,
        client = %server.client,
        path = %path.display(),
        method = ?method,
        was_enabled,
        "Disabled MCP server in client config"
    );
    Ok(DisableReceipt {
        key: server.entry_key(),
        fingerprint: server.fingerprint.clone(),
        client: server.client.clone(),
        edited_path: path,
        backup_path,
        original_sha256: sha256_hex(&original),
        written_sha256: sha256_hex(new_text.as_bytes()),
        method,
    })
}

/// Undo a [`disable_server`]. Byte-identical when the file is still what we
/// wrote; otherwise only the server's original entry is put back.
pub fn restore(receipt: &DisableReceipt) -> Result<RestoreOutcome, EnforceError> {
    let path = &receipt.edited_path;
    let backup = std::fs::read(&receipt.backup_path).map_err(|_| EnforceError::Backup {
        path: receipt.backup_path.clone(),
    })?;
    if sha256_hex(&backup) != receipt.original_sha256 {
        return Err(EnforceError::Backup {
            path: receipt.backup_path.clone(),
        });
    }
    let (current, meta) = match read(path) {
        Ok(b) => (b, std::fs::metadata(path).ok()),
        Err(EnforceError::Read {
            source: ReadError::NotFound,
            ..
        }) => (Vec::new(), None),
        Err(e) => return Err(e),
    };
    if sha256_hex(&current) == receipt.written_sha256 {
        atomic_write(path, &backup, meta.as_ref())?;
        info!(path = %path.display(), server = %receipt.key.name, "Restored MCP config byte for byte");
        return Ok(RestoreOutcome::Identical);
    }
    // The user changed the file: put back only our entry, and only into a
    // file that parses.
    if !current.is_empty() {
        parse_checked(&receipt.client, path, &current)?;
    }
    let format = Format::for_path(path);
    let eerr = |source| EnforceError::Edit {
        path: path.clone(),
        source,
    };
    let btext = std::str::from_utf8(&backup).map_err(|_| EnforceError::Backup {
        path: receipt.backup_path.clone(),
    })?;
    let entry = edit::extract(format, btext, &receipt.key.container, &receipt.key.name)
        .map_err(eerr)?
        .ok_or_else(|| EnforceError::Backup {
            path: receipt.backup_path.clone(),
        })?;
    let ctext = String::from_utf8(current).map_err(|_| EnforceError::Unparseable {
        path: path.clone(),
        problem: "not UTF-8".into(),
    })?;
    let new_text = edit::put(format, &ctext, &receipt.key.container, &receipt.key.name, &entry).map_err(eerr)?;
    let after = parse_checked(&receipt.client, path, new_text.as_bytes()).map_err(|e| EnforceError::Verify {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    if find(&after, &receipt.key.container, &receipt.key.name).is_none() {
        return Err(EnforceError::Verify {
            path: path.clone(),
            problem: "the entry is still missing after re-adding it".into(),
        });
    }
    atomic_write(path, new_text.as_bytes(), meta.as_ref())?;
    warn!(
        path = %path.display(),
        server = %receipt.key.name,
        "Config was edited since it was disabled: re-added only the server entry"
    );
    Ok(RestoreOutcome::EntryReAdded)
}

// === process stopping ===

/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(3);

/// Whether process `p` is an instance of stdio `server`.
///
/// Rule: the process's program (argv[0] or exe basename) equals the
/// server's command basename, and the server's arguments (without the
/// `npx -y`-style flags) appear as a contiguous run in the rest of argv. For
/// package runners (`npx`, `uvx`, ...) the launched child usually runs as
/// `node .../server` or `python .../server`, so a process also matches
/// when argv contains the server's package argument (the first non-flag
/// argument) as a path component and the remaining arguments follow it.
pub fn process_matches(server: &McpServer, p: &ProcInfo) -> bool {
    let Some(command) = server.command.as_deref() else { return false };
    if p.cmd.is_empty() {
        return false;
    }
    let want_base = command_basename(command);
    let runner = ["npx", "bunx", "pnpx", "uvx", "pipx"].contains(&want_base.as_str());
    let args: Vec<&str> = server
        .args
        .iter()
        .map(|a| a.as_str())
        .filter(|a| !(runner && ["-y", "--yes", "-q", "--quiet"].contains(a)))
        .collect();
    let prog0 = base(&p.cmd[0]).to_ascii_lowercase();
    let exe_base = p.exe.as_ref().and_then(|e| e.file_name()).map(|n| base(&n.to_string_lossy()).to_ascii_lowercase());
    let rest: Vec<&str> = p.cmd[1..].iter().map(|s| s.as_str()).collect();
    let contains_run = |hay: &[&str], needle: &[&str]| needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle);
    if (prog0 == want_base || exe_base.as_deref() == Some(want_base.as_str())) && contains_run(&rest, &args) {
        return true;
    }
    if runner {
        if let Some((pkg, tail)) = args.split_first() {
            // `@scope/name@1.2.3` -> `name`; `mcp-server-git` -> itself.
            let pkg_name = pkg.rsplit('/').next().unwrap_or(pkg);
            let pkg_name = pkg_name.split('@').find(|s| !s.is_empty()).unwrap_or(pkg_name);
            let pos = rest.iter().position(|a| *a == *pkg || Path::new(a).components().any(|c| c.as_os_str() == pkg_name));
            if let Some(i) = pos {
                return contains_run(&rest[i + 1..], tail);
            }
        }
    }
    false
}

/// Stop every running instance of `server`: SIGTERM, then SIGKILL for any
/// still alive after `grace`. Returns the pids signalled. Never signals
/// this process.
pub fn stop_processes(server: &McpServer, lister: &dyn ProcessLister, grace: Duration) -> Vec<u32> {
    let me = std::process::id();
    let pids: Vec<u32> = lister
        .list()
        .iter()
        .filter(|p| p.pid != me && process_matches(server, p))
        .map(|p| p.pid)
        .collect();
    let mut signalled = Vec::new();
    for &pid in &pids {
        if lister.signal(pid, StopSignal::Term) {
            signalled.push(pid);
        }
    }
    let deadline = Instant::now() + grace;
    let mut alive: Vec<u32> = signalled.clone();
    while !alive.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        alive.retain(|&pid| lister.alive(pid));
    }
    for pid in alive {
        warn!(pid, server = %server.name, "MCP server ignored SIGTERM; sending SIGKILL");
        lister.signal(pid, StopSignal::Kill);
    }
    if !signalled.is_empty() {
        info!(server = %server.name, pids = ?signalled, "Stopped MCP server processes");
    }
    signalled
}

// === impl Enforcer ===

/// One thing the enforcer did, for audit events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum EnforcementAction {
    Disabled { server: McpServer, receipt: DisableReceipt },
    ProcessesStopped { server: McpServer, pids: Vec<u32> },
    Restored { key: EntryKey, fingerprint: String, outcome: RestoreOutcome },
    Failed { key: EntryKey, fingerprint: String, error: String },
}

/// Re-applies MCP decisions after every scan: denied (or pending under
/// `PendingMode::Block`) stdio servers are disabled and stopped; servers
/// whose decision became allow are restored. Remote servers are the
/// proxy's job and are skipped here.
pub struct Enforcer {
    backup_dir: PathBuf,
    lister: Box<dyn ProcessLister>,
    grace: Duration,
    /// The first receipt per entry: it points at the pre-Palisade original.
    receipts: BTreeMap<EntryKey, DisableReceipt>,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("backup_dir", &self.backup_dir)
            .field("grace", &self.grace)
            .field("receipts", &self.receipts.len())
            .finish()
    }
}

impl Enforcer {
    pub fn new(backup_dir: PathBuf, lister: Box<dyn ProcessLister>) -> Self {
        Self {
            backup_dir,
            lister,
            grace: DEFAULT_STOP_GRACE,
            receipts: BTreeMap::new(),
        }
    }

    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Receipts to persist across restarts.
    pub fn receipts(&self) -> impl Iterator<Item = &DisableReceipt> {
        self.receipts.values()
    }

    /// Load receipts persisted by an earlier run.
    pub fn load_receipts(&mut self, receipts: impl IntoIterator<Item = DisableReceipt>) {
        for r in receipts {
            self.receipts.entry(r.key.clone()).or_insert(r);
        }
    }

    /// Apply `policy` to `inventory`. Blocking (file I/O, process signals):
    /// call from `spawn_blocking` in async code.
    pub fn apply(&mut self, policy: &ItemPolicy, inventory: &Inventory) -> Vec<EnforcementAction> {
        let mut actions = Vec::new();
        for s in inventory.servers.iter().filter(|s| s.transport == Transport::Stdio) {
            if policy.allows(&s.fingerprint) {
                continue;
            }
            if s.enabled {
                match disable_server(s, &self.backup_dir) {
                    Ok(receipt) => {
                        self.receipts.entry(receipt.key.clone()).or_insert_with(|| receipt.clone());
                        actions.push(EnforcementAction::Disabled {
                            server: s.clone(),
                            receipt,
                        });
                    }
                    Err(error) => {
                        warn!(%error, server = %s.name, "Cannot disable denied MCP server");
                        actions.push(EnforcementAction::Failed {
                            key: s.entry_key(),
                            fingerprint: s.fingerprint.clone(),
                            error: error.to_string(),
                        });
                    }
                }
            }
            let pids = stop_processes(s, self.lister.as_ref(), self.grace);
            if !pids.is_empty() {
                actions.push(EnforcementAction::ProcessesStopped { server: s.clone(), pids });
            }
        }
        let to_restore: Vec<EntryKey> =
            self.receipts.iter().filter(|(_, r)| policy.allows(&r.fingerprint)).map(|(k, _)| k.clone()).collect();
        for key in to_restore {
            let r = self.receipts.remove(&key).expect("present");
            match restore(&r) {
                Ok(outcome) => actions.push(EnforcementAction::Restored {
                    key,
                    fingerprint: r.fingerprint.clone(),
                    outcome,
                }),
                Err(error) => {
                    warn!(%error, server = %key.name, "Cannot restore MCP server");
                    actions.push(EnforcementAction::Failed {
                        key: key.clone(),
                        fingerprint: r.fingerprint.clone(),
                        error: error.to_string(),
                    });
                    self.receipts.insert(key, r);
                }
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests;
