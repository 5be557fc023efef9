//! A full scan: every user home, every known client config location, every
//! project directory we can learn of, into one [`Inventory`].
//!
//! The root is configurable so tests scan temp dirs. A scan never fails and
//! never stops at a bad home or file: it reports a [`Finding`] and continues.
//! It must never follow a symlinked directory while walking, and never read a
//! file more than once per scan (files are de-duplicated by canonical path).

use crate::clients::{self, ConfigSource, Shape};
use crate::model::{Finding, FindingKind, Inventory, McpServer, Scope};
use crate::read::{self, map_io, read_snapshot, ReadError, DEFAULT_MAX_FILE_BYTES};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use tracing::debug;

/// Default depth for walking extra project roots.
pub const DEFAULT_PROJECT_WALK_DEPTH: usize = 3;

/// Which homes to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeSource {
    /// `<root>/etc/passwd` users (uid 0 or >= 1000), `<root>/home/*`,
    /// `<root>/Users/*`, plus `current_home`.
    Auto,
    /// Exactly these homes (absolute paths, not re-rooted).
    Explicit(Vec<PathBuf>),
}

/// What to scan.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// File-system root: `/` on a device, a temp dir in tests.
    pub root: PathBuf,
    pub homes: HomeSource,
    /// The running user's `$HOME`, added to `Auto` homes.
    pub current_home: Option<PathBuf>,
    /// Directories to walk for projects (dirs with `.mcp.json`, `.cursor/`, ...).
    pub extra_project_roots: Vec<PathBuf>,
    pub project_walk_depth: usize,
    pub max_file_bytes: u64,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            homes: HomeSource::Auto,
            current_home: None,
            extra_project_roots: Vec::new(),
            project_walk_depth: DEFAULT_PROJECT_WALK_DEPTH,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

impl ScanConfig {
    /// The whole machine, plus the running user's `$HOME`.
    pub fn system() -> Self {
        Self {
            current_home: std::env::var_os("HOME").map(PathBuf::from),
            ..Self::default()
        }
    }

    /// Only `homes`, with managed configs looked up under `root`.
    pub fn for_homes(root: impl Into<PathBuf>, homes: Vec<PathBuf>) -> Self {
        Self {
            root: root.into(),
            homes: HomeSource::Explicit(homes),
            ..Self::default()
        }
    }

    fn rooted(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
}

// === locations ===

type Loc = (&'static str, &'static str, Shape);

/// Per-home config files: (relative path, client, shape).
const HOME_CONFIGS: &[Loc] = &[
    (".config/Claude/claude_desktop_config.json", "claude-desktop", Shape::McpServers),
    ("Library/Application Support/Claude/claude_desktop_config.json", "claude-desktop", Shape::McpServers),
    (".claude.json", "claude-code", Shape::ClaudeCodeUser),
    (".cursor/mcp.json", "cursor", Shape::McpServers),
    (".codeium/windsurf/mcp_config.json", "windsurf", Shape::McpServers),
    (".config/Code/User/mcp.json", "vscode", Shape::VsCodeMcp),
    (".config/Code/User/settings.json", "vscode", Shape::VsCodeSettings),
    ("Library/Application Support/Code/User/mcp.json", "vscode", Shape::VsCodeMcp),
    ("Library/Application Support/Code/User/settings.json", "vscode", Shape::VsCodeSettings),
    (".config/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json", "cline", Shape::McpServers),
    (
        "Library/Application Support/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
        "cline",
        Shape::McpServers,
    ),
    (".cline/data/settings/cline_mcp_settings.json", "cline", Shape::McpServers),
    (".gemini/settings.json", "gemini-cli", Shape::McpServers),
    (".config/opencode/opencode.json", "opencode", Shape::OpenCode),
    (".config/opencode/opencode.jsonc", "opencode", Shape::OpenCode),
    (".codex/config.toml", "codex", Shape::Codex),
    (".config/zed/settings.json", "zed", Shape::Zed),
    (".continue/config.yaml", "continue", Shape::Continue),
    (".lmstudio/mcp.json", "lmstudio", Shape::McpServers),
];

/// Per-project config files.
const PROJECT_CONFIGS: &[Loc] = &[
    (".mcp.json", "claude-code", Shape::McpServers),
    (".cursor/mcp.json", "cursor", Shape::McpServers),
    (".vscode/mcp.json", "vscode", Shape::VsCodeMcp),
    (".gemini/settings.json", "gemini-cli", Shape::McpServers),
    (".codex/config.toml", "codex", Shape::Codex),
    (".zed/settings.json", "zed", Shape::Zed),
    ("opencode.json", "opencode", Shape::OpenCode),
    ("opencode.jsonc", "opencode", Shape::OpenCode),
];

/// Machine-wide managed configs (absolute, re-rooted under `root`).
const MANAGED_CONFIGS: &[Loc] = &[
    ("/etc/claude-code/managed-mcp.json", "claude-code", Shape::McpServers),
    ("/Library/Application Support/ClaudeCode/managed-mcp.json", "claude-code", Shape::McpServers),
];

/// Directories whose `*.yaml|*.yml|*.json` files are Continue blocks.
const CONTINUE_BLOCK_DIR: &str = ".continue/mcpServers";

const SKIP_DIRS: &[&str] = &["node_modules", "target", ".git", ".cache", "vendor", "dist", "build", "Library"];

// === homes ===

/// The homes to scan, and findings for the ones we could not read.
pub fn list_homes(cfg: &ScanConfig) -> (Vec<PathBuf>, Vec<Finding>) {
    let mut candidates: Vec<PathBuf> = Vec::new();
    match &cfg.homes {
        HomeSource::Explicit(h) => candidates.extend(h.iter().cloned()),
        HomeSource::Auto => {
            if let Ok(passwd) = std::fs::read_to_string(cfg.rooted("/etc/passwd")) {
                for line in passwd.lines() {
                    let f: Vec<&str> = line.split(':').collect();
                    if f.len() < 7 || line.starts_with('#') {
                        continue;
                    }
                    let Ok(uid) = f[2].parse::<u32>() else { continue };
                    if (uid == 0 || uid >= 1000) && uid != 65534 && f[5].starts_with('/') && f[5] != "/" {
                        candidates.push(cfg.rooted(f[5]));
                    }
                }
            }
            for base in ["/home", "/Users"] {
                if let Ok(rd) = std::fs::read_dir(cfg.rooted(base)) {
                    for e in rd.flatten() {
                        let name = e.file_name();
                        if name == "Shared" || name.to_string_lossy().starts_with('.') {
                            continue;
                        }
                        // Only real directories: never follow a symlinked home.
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            candidates.push(e.path());
                        }
                    }
                }
            }
            candidates.extend(cfg.current_home.iter().cloned());
        }
    }
    let mut seen = HashSet::new();
    let mut homes = Vec::new();
    let mut findings = Vec::new();
    for h in candidates {
        let unreadable = |problem: String| Finding {
            path: h.clone(),
            client: None,
            kind: FindingKind::Unreadable,
            problem,
        };
        match std::fs::read_dir(&h) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                findings.push(unreadable(format!("home cannot be read: {e}")));
                continue;
            }
        }
        let key = std::fs::canonicalize(&h).unwrap_or_else(|_| h.clone());
        if seen.insert(key) {
            homes.push(h);
        }
    }
    (homes, findings)
}

// === scan ===

struct Scan<'a> {
    cfg: &'a ScanConfig,
    inv: Inventory,
    seen_files: HashSet<PathBuf>,
    seen_projects: HashSet<PathBuf>,
    candidates: BTreeSet<PathBuf>,
}

/// Scan everything `cfg` names. Never fails; problems are findings.
pub fn scan(cfg: &ScanConfig) -> Inventory {
    let (homes, home_findings) = list_homes(cfg);
    let mut s = Scan {
        cfg,
        inv: Inventory::default(),
        seen_files: HashSet::new(),
        seen_projects: HashSet::new(),
        candidates: BTreeSet::new(),
    };
    s.inv.findings.extend(home_findings);
    for (p, client, shape) in MANAGED_CONFIGS {
        s.file(ConfigSource {
            path: cfg.rooted(p),
            client,
            scope: Scope::Managed,
            shape: *shape,
            project: None,
            home: None,
        });
    }
    for home in &homes {
        let mut projects = Vec::new();
        for (rel, client, shape) in HOME_CONFIGS {
            projects.extend(s.file(ConfigSource {
                path: home.join(rel),
                client,
                scope: Scope::User,
                shape: *shape,
                project: None,
                home: Some(home.clone()),
            }));
        }
        s.continue_blocks(home);
        for p in projects {
            s.project(&p, Some(home));
        }
    }
    for root in &cfg.extra_project_roots {
        let home = homes.iter().find(|h| root.starts_with(h)).cloned();
        s.walk_projects(root, home.as_ref(), cfg.project_walk_depth);
    }
    s.inv.findings.extend(conflicts(&s.inv.servers));
    s.inv.candidates = s.candidates.into_iter().collect();
    s.inv.homes = homes;
    s.inv
}

impl Scan<'_> {
    /// Parse one config file if present; returns the projects it names.
    fn file(&mut self, src: ConfigSource) -> Vec<PathBuf> {
        self.candidates.insert(src.path.clone());
        let finding = |kind, problem: String| Finding {
            path: src.path.clone(),
            client: Some(src.client.to_string()),
            kind,
            problem,
        };
        let canon = match std::fs::canonicalize(&src.path).map_err(map_io) {
            Ok(c) => c,
            Err(ReadError::NotFound) => return Vec::new(),
            Err(e) => {
                self.inv.findings.push(finding(e.finding_kind(), e.to_string()));
                return Vec::new();
            }
        };
        if !self.seen_files.insert(canon) {
            return Vec::new();
        }
        let bytes = match read_snapshot(&src.path, self.cfg.max_file_bytes) {
            Ok(b) => b,
            Err(read::ReadError::NotFound) => return Vec::new(),
            Err(e) => {
                self.inv.findings.push(finding(e.finding_kind(), e.to_string()));
                return Vec::new();
            }
        };
        let parsed = clients::parse(&src, &bytes);
        debug!(path = %src.path.display(), client = src.client, servers = parsed.servers.len(), "Parsed MCP config");
        self.inv.servers.extend(parsed.servers);
        self.inv.findings.extend(parsed.findings);
        parsed.projects
    }

    fn project(&mut self, dir: &Path, home: Option<&PathBuf>) {
        let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        if !self.seen_projects.insert(key) {
            return;
        }
        for (rel, client, shape) in PROJECT_CONFIGS {
            self.file(ConfigSource {
                path: dir.join(rel),
                client,
                scope: Scope::Project,
                shape: *shape,
                project: Some(dir.to_path_buf()),
                home: home.cloned(),
            });
        }
    }

    fn continue_blocks(&mut self, home: &Path) {
        let dir = home.join(CONTINUE_BLOCK_DIR);
        self.candidates.insert(dir.clone());
        let Ok(rd) = std::fs::read_dir(&dir) else { return };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
            .collect();
        files.sort();
        for path in files {
            let shape = if path.extension().is_some_and(|e| e == "json") { Shape::McpServers } else { Shape::Continue };
            self.file(ConfigSource {
                path,
                client: "continue",
                scope: Scope::User,
                shape,
                project: None,
                home: Some(home.to_path_buf()),
            });
        }
    }

    /// Walk `dir` for projects, never following symlinked directories.
    fn walk_projects(&mut self, dir: &Path, home: Option<&PathBuf>, depth: usize) {
        self.project(dir, home);
        if depth == 0 {
            return;
        }
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                self.inv.findings.push(Finding {
                    path: dir.to_path_buf(),
                    client: None,
                    kind: FindingKind::Unreadable,
                    problem: format!("directory cannot be read: {e}"),
                });
                return;
            }
        };
        let mut subdirs: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)) // symlinks are not dirs here
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                !n.starts_with('.') && !SKIP_DIRS.contains(&n.as_ref())
            })
            .map(|e| e.path())
            .collect();
        subdirs.sort();
        for d in subdirs {
            self.walk_projects(&d, home, depth - 1);
        }
    }
}

/// A conflict finding for each (home, name) configured with different
/// fingerprints by different files. All the servers stay in the inventory.
pub fn conflicts(servers: &[McpServer]) -> Vec<Finding> {
    let mut groups: BTreeMap<(Option<&PathBuf>, &str), Vec<&McpServer>> = BTreeMap::new();
    for s in servers {
        groups.entry((s.home.as_ref(), s.name.as_str())).or_default().push(s);
    }
    let mut out = Vec::new();
    for ((_, name), group) in groups {
        let fps: BTreeSet<&str> = group.iter().map(|s| s.fingerprint.as_str()).collect();
        if fps.len() < 2 {
            continue;
        }
        let places: Vec<String> = group
            .iter()
            .map(|s| format!("{} in {} ({})", s.client, s.config_path.display(), &s.fingerprint[..12]))
            .collect();
        out.push(Finding {
            path: group[0].config_path.clone(),
            client: None,
            kind: FindingKind::Conflict,
            problem: format!(
                "server name {name:?} has {} different definitions: {}",
                fps.len(),
                places.join("; ")
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests;
