//! AI app discovery: a catalog kept as data (embedded `catalog.json`,
//! replaceable from a file so new apps need no release), and detection of
//! which catalog apps are installed and which are running.
//!
//! Detection only stats paths and reads the process table. It must never
//! execute a binary to ask its version, and never log a process's arguments.

use crate::process::{base, ProcInfo};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

/// The catalog compiled into the binary.
pub const BUILTIN_CATALOG: &str = include_str!("catalog.json");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppKind {
    Desktop,
    Cli,
    IdeExtension,
    /// Seen talking to an AI host, not in the catalog.
    Unknown,
}

/// One catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppEntry {
    /// Stable id; the key for app rules in policy (`ItemRule::id`).
    pub id: String,
    pub name: String,
    pub kind: AppKind,
    /// Executable file names (exact, case-sensitive, without `.exe`).
    #[serde(default)]
    pub executables: Vec<String>,
    /// Install paths per OS (`linux`, `macos`, `windows`, or `all`). `~` is
    /// each user's home; a trailing `*` on the last component is a prefix match.
    #[serde(default)]
    pub paths: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub bundle_ids: Vec<String>,
    /// AI hosts the app talks to.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub version: u32,
    pub apps: Vec<AppEntry>,
}

/// Every problem with a catalog, reported at once.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog is not valid JSON: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("invalid catalog: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

const OS_KEYS: &[&str] = &["linux", "macos", "windows", "all"];

// === impl Catalog ===

impl Catalog {
    /// The embedded catalog.
    pub fn builtin() -> Catalog {
        Catalog::from_json(BUILTIN_CATALOG).expect("embedded catalog is valid")
    }

    pub fn from_json(s: &str) -> Result<Catalog, CatalogError> {
        let c: Catalog = serde_json::from_str(s).map_err(CatalogError::Parse)?;
        c.validate()?;
        Ok(c)
    }

    /// An override catalog from a file (for example pushed by MDM).
    pub fn from_path(path: &Path) -> Result<Catalog, CatalogError> {
        let s = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Catalog::from_json(&s)
    }

    pub fn validate(&self) -> Result<(), CatalogError> {
        let mut problems = Vec::new();
        let mut ids = HashSet::new();
        for (i, a) in self.apps.iter().enumerate() {
            if a.id.trim().is_empty() {
                problems.push(format!("apps[{i}]: id is empty"));
            } else if !ids.insert(a.id.to_ascii_lowercase()) {
                problems.push(format!("apps[{i}]: duplicate id {:?}", a.id));
            }
            if a.kind == AppKind::Unknown {
                problems.push(format!("apps[{i}] ({}): kind \"unknown\" is reserved for sightings", a.id));
            }
            if a.executables.is_empty() && a.paths.values().all(|v| v.is_empty()) && a.bundle_ids.is_empty() {
                problems.push(format!("apps[{i}] ({}): needs executables, paths or bundle_ids", a.id));
            }
            for k in a.paths.keys() {
                if !OS_KEYS.contains(&k.as_str()) {
                    problems.push(format!("apps[{i}] ({}): unknown OS key {k:?}", a.id));
                }
            }
            if a.executables.iter().any(|e| e.is_empty() || e.contains('/')) {
                problems.push(format!("apps[{i}] ({}): executables must be bare file names", a.id));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CatalogError::Invalid(problems))
        }
    }

    pub fn get(&self, id: &str) -> Option<&AppEntry> {
        self.apps.iter().find(|a| a.id == id)
    }

    /// The catalog app a process belongs to, if any. Matches the exe's file
    /// name, the process name, an install path prefix, or for interpreters
    /// (node, bun, python, deno) the script named on the command line.
    pub fn identify(&self, p: &ProcInfo, os: &str, homes: &[PathBuf]) -> Option<&AppEntry> {
        let exe_base = p.exe.as_ref().and_then(|e| e.file_name()).map(|n| n.to_string_lossy().into_owned());
        let exe_base = exe_base.as_deref().map(base);
        let name = base(&p.name);
        let script = if ["node", "bun", "python", "python3", "deno"].contains(&exe_base.unwrap_or(name)) {
            p.cmd.iter().skip(1).find(|a| !a.starts_with('-')).map(|a| base(a))
        } else {
            None
        };
        // Exact executable names first (most specific), then install paths.
        self.apps
            .iter()
            .find(|a| {
                a.executables
                    .iter()
                    .any(|e| Some(e.as_str()) == exe_base || e == name || Some(e.as_str()) == script)
            })
            .or_else(|| {
                let exe = p.exe.as_ref()?;
                self.apps.iter().find(|a| {
                    a.kind == AppKind::Desktop
                        && install_patterns(a, os, homes, Path::new("/"))
                            .iter()
                            .any(|pat| !pat.ends_with("*") && exe.starts_with(pat))
                })
            })
    }

    /// What to report for a process seen talking to an AI host: its catalog
    /// app, or an unknown-app sighting.
    pub fn sighting_for_traffic(&self, exe: &Path, name: &str, pid: Option<u32>, os: &str) -> AppSighting {
        let p = ProcInfo {
            pid: pid.unwrap_or(0),
            name: name.to_string(),
            exe: Some(exe.to_path_buf()),
            cmd: Vec::new(),
        };
        match self.identify(&p, os, &[]) {
            Some(a) => {
                let mut s = AppSighting::from_entry(a);
                s.running.extend(pid.map(|pid| RunningProcess {
                    pid,
                    exe: Some(exe.to_path_buf()),
                }));
                s
            }
            None => {
                let mut s = unknown_app_from_traffic(exe, name);
                s.running.extend(pid.map(|pid| RunningProcess {
                    pid,
                    exe: Some(exe.to_path_buf()),
                }));
                s
            }
        }
    }
}

/// A process seen running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningProcess {
    pub pid: u32,
    pub exe: Option<PathBuf>,
}

/// An app found on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSighting {
    /// Catalog id, or for unknown apps `exe:<basename>` (lower-cased).
    pub app_id: String,
    pub name: String,
    pub kind: AppKind,
    /// False for apps seen in traffic that match no catalog entry.
    pub known: bool,
    pub installed_paths: Vec<PathBuf>,
    pub running: Vec<RunningProcess>,
    pub hosts: Vec<String>,
}

impl AppSighting {
    fn from_entry(a: &AppEntry) -> Self {
        Self {
            app_id: a.id.clone(),
            name: a.name.clone(),
            kind: a.kind,
            known: true,
            installed_paths: Vec::new(),
            running: Vec::new(),
            hosts: a.hosts.clone(),
        }
    }
}

/// A sighting for a process that talked to an AI host and matches no
/// catalog entry. Its id is `exe:` + the executable's basename, lower-cased
/// and without `.exe` (or the process name when the exe is unknown), so the
/// same unknown tool on many devices is one catalog item on the server.
pub fn unknown_app_from_traffic(exe: &Path, name: &str) -> AppSighting {
    let exe_name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let id_base = if exe_name.is_empty() { base(name).to_string() } else { base(&exe_name).to_string() };
    AppSighting {
        app_id: format!("exe:{}", id_base.to_ascii_lowercase()),
        name: if name.is_empty() { id_base } else { name.to_string() },
        kind: AppKind::Unknown,
        known: false,
        installed_paths: if exe.as_os_str().is_empty() { Vec::new() } else { vec![exe.to_path_buf()] },
        running: Vec::new(),
        hosts: Vec::new(),
    }
}

/// Where and how to look for installed apps.
#[derive(Debug, Clone)]
pub struct DetectConfig {
    /// File-system root (`/` on a device).
    pub root: PathBuf,
    pub homes: Vec<PathBuf>,
    /// `linux`, `macos` or `windows`.
    pub os: String,
    /// Absolute directories from `PATH` (re-rooted under `root`).
    pub path_dirs: Vec<PathBuf>,
}

/// Per-home directories where CLIs are commonly installed.
const HOME_BIN_DIRS: &[&str] = &[
    ".local/bin",
    ".npm-global/bin",
    ".bun/bin",
    ".cargo/bin",
    ".deno/bin",
    "go/bin",
    ".volta/bin",
    ".opencode/bin",
    ".claude/local",
];
const SYSTEM_BIN_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/opt/homebrew/bin", "/snap/bin"];

impl DetectConfig {
    /// This device: `/`, the given homes, the current OS and `$PATH`.
    pub fn system(homes: Vec<PathBuf>) -> Self {
        let path_dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
        Self {
            root: PathBuf::from("/"),
            homes,
            os: current_os().to_string(),
            path_dirs,
        }
    }
}

pub fn current_os() -> &'static str {
    if cfg!(target_os = "macos") {
        "macos"
    } else if cfg!(windows) {
        "windows"
    } else {
        "linux"
    }
}

fn rooted(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

/// An app's install path patterns for `os`, expanded for every home.
fn install_patterns(a: &AppEntry, os: &str, homes: &[PathBuf], root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for key in [os, "all"] {
        for p in a.paths.get(key).into_iter().flatten() {
            if let Some(rest) = p.strip_prefix("~/") {
                out.extend(homes.iter().map(|h| h.join(rest)));
            } else {
                out.push(rooted(root, Path::new(p)));
            }
        }
    }
    out
}

/// Existing paths matching `pat` (trailing `*` on the last component is a
/// prefix match). Symlinks are not followed when listing.
fn existing(pat: &Path) -> Vec<PathBuf> {
    let s = pat.to_string_lossy();
    let Some(prefix) = s.strip_suffix('*') else {
        return if std::fs::symlink_metadata(pat).is_ok() { vec![pat.to_path_buf()] } else { Vec::new() };
    };
    let prefix = Path::new(prefix);
    let (Some(dir), Some(stem)) = (prefix.parent(), prefix.file_name()) else {
        return Vec::new();
    };
    let stem = stem.to_string_lossy();
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> =
        rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(stem.as_ref())).map(|e| e.path()).collect();
    v.sort();
    v
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Which catalog apps are installed or running. `processes` comes from a
/// [`crate::process::ProcessLister`].
pub fn detect_apps(catalog: &Catalog, cfg: &DetectConfig, processes: &[ProcInfo]) -> Vec<AppSighting> {
    let mut bin_dirs: Vec<PathBuf> = Vec::new();
    for d in &cfg.path_dirs {
        bin_dirs.push(rooted(&cfg.root, d));
    }
    for h in &cfg.homes {
        bin_dirs.extend(HOME_BIN_DIRS.iter().map(|d| h.join(d)));
    }
    bin_dirs.extend(SYSTEM_BIN_DIRS.iter().map(|d| rooted(&cfg.root, Path::new(d))));
    let mut seen = HashSet::new();
    bin_dirs.retain(|d| seen.insert(d.clone()));

    let mut found: BTreeMap<String, AppSighting> = BTreeMap::new();
    for a in &catalog.apps {
        let mut installed: BTreeSet<PathBuf> = BTreeSet::new();
        for pat in install_patterns(a, &cfg.os, &cfg.homes, &cfg.root) {
            installed.extend(existing(&pat));
        }
        if a.kind == AppKind::Cli {
            for d in &bin_dirs {
                for e in &a.executables {
                    let p = d.join(e);
                    if is_executable_file(&p) {
                        installed.insert(p);
                    }
                }
            }
        }
        if !installed.is_empty() {
            let s = found.entry(a.id.clone()).or_insert_with(|| AppSighting::from_entry(a));
            s.installed_paths = installed.into_iter().collect();
        }
    }
    for p in processes {
        if let Some(a) = catalog.identify(p, &cfg.os, &cfg.homes) {
            let s = found.entry(a.id.clone()).or_insert_with(|| AppSighting::from_entry(a));
            s.running.push(RunningProcess {
                pid: p.pid,
                exe: p.exe.clone(),
            });
        }
    }
    found.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, name: &str, exe: Option<&str>, cmd: &[&str]) -> ProcInfo {
        ProcInfo {
            pid,
            name: name.into(),
            exe: exe.map(PathBuf::from),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn builtin_catalog_covers_the_required_apps() {
        let c = Catalog::builtin();
        for id in [
            "claude-desktop", "chatgpt-desktop", "cursor", "windsurf", "vscode", "github-copilot", "zed", "lm-studio",
            "ollama", "claude-code", "codex", "gemini-cli", "opencode", "aider", "goose", "cline-cli", "continue-cli",
            "llm", "amp", "qwen-code", "crush",
        ] {
            assert!(c.get(id).is_some(), "missing {id}");
        }
        assert_eq!(c.get("chatgpt-desktop").unwrap().bundle_ids, vec!["com.openai.chat"]);
    }

    #[test]
    fn bad_catalogs_are_rejected_with_every_problem() {
        let e = Catalog::from_json(
            r#"{"version": 1, "apps": [
                {"id": "a", "name": "A", "kind": "cli", "executables": ["a"]},
                {"id": "A", "name": "A2", "kind": "cli", "executables": ["bin/a"]},
                {"id": "", "name": "x", "kind": "desktop", "paths": {"beos": []}}
            ]}"#,
        )
        .unwrap_err();
        let s = e.to_string();
        for want in ["duplicate id", "bare file names", "id is empty", "unknown OS key", "needs executables"] {
            assert!(s.contains(want), "{want} not in {s}");
        }
        assert!(matches!(Catalog::from_json(r#"{"version": 1, "apps": [], "extra": 1}"#), Err(CatalogError::Parse(_))));
        assert!(matches!(
            Catalog::from_json(r#"{"version": 1, "apps": [{"id": "a", "name": "A", "kind": "robot", "executables": ["a"]}]}"#),
            Err(CatalogError::Parse(_))
        ));
        assert!(matches!(Catalog::from_path(Path::new("/nonexistent/catalog.json")), Err(CatalogError::Read { .. })));
    }

    #[test]
    fn override_catalog_from_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.json");
        std::fs::write(&p, r#"{"version": 2, "apps": [{"id": "newai", "name": "New AI", "kind": "cli", "executables": ["newai"]}]}"#).unwrap();
        let c = Catalog::from_path(&p).unwrap();
        assert_eq!(c.version, 2);
        assert!(c.get("newai").is_some());
    }

    #[test]
    fn detects_installed_clis_desktop_apps_and_extensions() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home/u");
        let put_exe = |p: PathBuf| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        put_exe(home.join(".local/bin/claude"));
        put_exe(home.join(".bun/bin/opencode"));
        put_exe(root.path().join("usr/local/bin/codex"));
        // Not executable: not a CLI install.
        std::fs::write(home.join(".local/bin/aider"), "x").unwrap();
        std::fs::create_dir_all(home.join(".vscode/extensions/github.copilot-chat-0.30.0")).unwrap();
        std::fs::create_dir_all(root.path().join("Applications/Claude.app")).unwrap();
        let cfg = DetectConfig {
            root: root.path().to_path_buf(),
            homes: vec![home.clone()],
            os: "macos".into(),
            path_dirs: vec![],
        };
        let apps = detect_apps(&Catalog::builtin(), &cfg, &[]);
        let ids: Vec<&str> = apps.iter().map(|a| a.app_id.as_str()).collect();
        assert_eq!(ids, vec!["claude-code", "claude-desktop", "codex", "github-copilot", "opencode"]);
        let copilot = apps.iter().find(|a| a.app_id == "github-copilot").unwrap();
        assert_eq!(copilot.installed_paths, vec![home.join(".vscode/extensions/github.copilot-chat-0.30.0")]);
        assert!(apps.iter().all(|a| a.known && a.running.is_empty()));
    }

    #[test]
    fn detects_running_apps_by_exe_name_interpreter_script_and_install_path() {
        let root = tempfile::tempdir().unwrap();
        let cfg = DetectConfig {
            root: root.path().to_path_buf(),
            homes: vec![],
            os: "macos".into(),
            path_dirs: vec![],
        };
        let procs = vec![
            proc(10, "node", Some("/usr/bin/node"), &["node", "/usr/local/lib/node_modules/.bin/claude", "--resume"]),
            proc(11, "codex", Some("/opt/homebrew/bin/codex"), &["codex"]),
            proc(12, "ChatGPT Helper", Some("/Applications/ChatGPT.app/Contents/Frameworks/Helper"), &[]),
            proc(13, "bash", Some("/bin/bash"), &["bash"]),
            proc(14, "python3", Some("/usr/bin/python3"), &["python3", "-m", "http.server"]),
        ];
        let apps = detect_apps(&Catalog::builtin(), &cfg, &procs);
        let got: Vec<(&str, Vec<u32>)> =
            apps.iter().map(|a| (a.app_id.as_str(), a.running.iter().map(|r| r.pid).collect())).collect();
        assert_eq!(got, vec![("chatgpt-desktop", vec![12]), ("claude-code", vec![10]), ("codex", vec![11])]);
    }

    #[test]
    fn traffic_from_unknown_process_is_a_new_app() {
        let c = Catalog::builtin();
        let s = c.sighting_for_traffic(Path::new("/opt/tools/MyAgent.exe"), "MyAgent", Some(77), "linux");
        assert!(!s.known);
        assert_eq!(s.app_id, "exe:myagent");
        assert_eq!(s.kind, AppKind::Unknown);
        assert_eq!(s.running[0].pid, 77);
        let k = c.sighting_for_traffic(Path::new("/usr/local/bin/gemini"), "gemini", None, "linux");
        assert!(k.known);
        assert_eq!(k.app_id, "gemini-cli");
        let u = unknown_app_from_traffic(Path::new(""), "weird");
        assert_eq!(u.app_id, "exe:weird");
        assert!(u.installed_paths.is_empty());
    }
}
