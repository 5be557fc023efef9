//! What the discovery task remembers across restarts, in `data_dir/discovery/`:
//! `state.json` (entries and apps already announced, servers still relevant
//! to enforcement, unknown apps learnt from traffic) and `receipts.json`
//! (the Enforcer's undo receipts, so a restart can still restore files).
//!
//! Both files hold value-free records only (names, paths, fingerprints,
//! hashes), never config content. Writes are atomic (temp file + rename,
//! mode 0600). A damaged file is moved aside, never silently overwritten.

use palisade_discovery::{AppSighting, DisableReceipt, McpServer};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use tracing::warn;

pub const STATE_FILE: &str = "state.json";
pub const RECEIPTS_FILE: &str = "receipts.json";
/// Announced entries/apps kept at most; older ones may be announced again.
pub const MAX_SEEN: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged ({problem}); moved aside to {aside}")]
    Damaged {
        path: PathBuf,
        problem: String,
        aside: PathBuf,
    },
}

/// The persisted part of the discovery task's memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersistedState {
    /// Keys of MCP entries already announced (`mcp.discovered`).
    pub seen_entries: BTreeSet<String>,
    /// App ids already announced (`app.discovered`).
    pub seen_apps: BTreeSet<String>,
    /// Servers enforcement still needs (current ones, and refused ones that
    /// left the configs, e.g. because we disabled them).
    pub servers: Vec<McpServer>,
    /// Unknown apps seen talking to AI hosts, by id.
    pub traffic_apps: Vec<AppSighting>,
}

/// Read `path` as JSON; `Ok(None)` when absent. A file that does not parse
/// is renamed to `<name>.damaged` and reported.
fn load_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            let aside = path.with_extension("json.damaged");
            let _ = std::fs::rename(path, &aside);
            Err(StateError::Damaged {
                path: path.to_path_buf(),
                problem: e.to_string(),
                aside,
            })
        }
    }
}

/// Write `bytes` to `path` atomically with mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// The discovery task's files under one directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the Enforcer keeps the original bytes of files it edits.
    pub fn backups(&self) -> PathBuf {
        self.dir.join("backups")
    }

    /// Where managed-policy originals are kept.
    pub fn managed(&self) -> PathBuf {
        self.dir.join("managed")
    }

    /// The persisted state, or empty (with a warning) if absent or damaged.
    pub fn load_state(&self) -> PersistedState {
        match load_json(&self.dir.join(STATE_FILE)) {
            Ok(s) => s.unwrap_or_default(),
            Err(error) => {
                warn!(%error, "Discovery state unusable; starting afresh");
                PersistedState::default()
            }
        }
    }

    pub fn save_state(&self, s: &PersistedState) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(s).expect("state serialises");
        write_atomic(&self.dir.join(STATE_FILE), &bytes)
    }

    /// Receipts persisted by an earlier run. Damaged receipts are an error
    /// the caller logs loudly: without them a disabled entry cannot be
    /// restored automatically (its backup is still in `backups/`).
    pub fn load_receipts(&self) -> Result<Vec<DisableReceipt>, StateError> {
        Ok(load_json(&self.dir.join(RECEIPTS_FILE))?.unwrap_or_default())
    }

    pub fn save_receipts(&self, receipts: &[DisableReceipt]) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(receipts).expect("receipts serialise");
        write_atomic(&self.dir.join(RECEIPTS_FILE), &bytes)
    }
}
