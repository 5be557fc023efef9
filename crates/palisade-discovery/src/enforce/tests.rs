use super::*;
use crate::model::Scope;
use crate::scan::{scan, ScanConfig};
use palisade_core::policy::{Decision, ItemRule, PendingMode};
use std::sync::Mutex;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

struct Home {
    _dir: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    backups: PathBuf,
}

fn home() -> Home {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    Home {
        home: root.join("home/u"),
        backups: root.join("backups"),
        root,
        _dir: d,
    }
}

impl Home {
    fn inv(&self) -> Inventory {
        scan(&ScanConfig::for_homes(&self.root, vec![self.home.clone()]))
    }
    fn server(&self, client: &str, name: &str) -> McpServer {
        self.inv()
            .servers
            .into_iter()
            .find(|s| s.client == client && s.name == name)
            .unwrap_or_else(|| panic!("no {client}/{name}"))
    }
}

fn round_trip(rel: &str, fixture_name: &str, client: &str, name: &str, method: DisableMethod) {
    let h = home();
    let path = h.home.join(rel);
    let original = fixture(fixture_name);
    put(&path, &original);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let s = h.server(client, name);
    let before = h.inv().servers.len();
    let receipt = disable_server(&s, &h.backups).unwrap();
    assert_eq!(receipt.method, method, "{client}");
    let changed = std::fs::read(&path).unwrap();
    assert_ne!(changed, original, "{client}: file changed");
    assert_eq!(std::fs::read(&receipt.backup_path).unwrap(), original, "{client}: backup is the original");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640, "{client}: mode kept");
    let inv = h.inv();
    match method {
        DisableMethod::Removed => {
            assert_eq!(inv.servers.len(), before - 1);
            assert!(!inv.servers.iter().any(|x| x.client == client && x.name == name));
        }
        DisableMethod::Flagged => {
            assert_eq!(inv.servers.len(), before);
            assert!(!inv.servers.iter().find(|x| x.client == client && x.name == name).unwrap().enabled);
        }
    }
    assert_eq!(restore(&receipt).unwrap(), RestoreOutcome::Identical);
    assert_eq!(std::fs::read(&path).unwrap(), original, "{client}: byte-identical after restore");
}

#[test]
fn round_trip_claude_desktop() {
    round_trip(".config/Claude/claude_desktop_config.json", "claude_desktop_config.json", "claude-desktop", "github", DisableMethod::Removed);
}

#[test]
fn round_trip_vscode_jsonc_keeps_comments() {
    round_trip(".config/Code/User/mcp.json", "vscode_mcp.json", "vscode", "Perplexity", DisableMethod::Removed);
    let h = home();
    let path = h.home.join(".config/Code/User/mcp.json");
    put(&path, &fixture("vscode_mcp.json"));
    disable_server(&h.server("vscode", "Perplexity"), &h.backups).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("// VS Code MCP configuration"), "{text}");
    assert!(text.contains("\"inputs\""));
}

#[test]
fn round_trip_claude_code_project_section() {
    round_trip(".claude.json", "claude.json", "claude-code", "postgres", DisableMethod::Removed);
}

#[test]
fn round_trip_codex_toml() {
    round_trip(".codex/config.toml", "codex_config.toml", "codex", "context7", DisableMethod::Removed);
}

#[test]
fn round_trip_continue_yaml() {
    round_trip(".continue/config.yaml", "continue_config.yaml", "continue", "SQLite MCP", DisableMethod::Removed);
}

#[test]
fn round_trip_flagged_clients() {
    round_trip(".codeium/windsurf/mcp_config.json", "windsurf_mcp_config.json", "windsurf", "github", DisableMethod::Flagged);
    round_trip(".config/opencode/opencode.jsonc", "opencode.jsonc", "opencode", "my-local-mcp-server", DisableMethod::Flagged);
    round_trip(
        ".config/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
        "cline_mcp_settings.json",
        "cline",
        "local-server",
        DisableMethod::Flagged,
    );
}

#[test]
fn restore_after_user_edit_re_adds_only_the_entry() {
    let h = home();
    let path = h.home.join(".cursor/mcp.json");
    put(&path, &fixture("cursor_mcp.json"));
    let receipt = disable_server(&h.server("cursor", "python-server"), &h.backups).unwrap();
    // The user adds a server and removes another after our edit.
    let text = std::fs::read_to_string(&path).unwrap();
    let text = crate::jsonc::insert_member(&text, &["mcpServers".to_string()], "new-one", "{\"command\": \"n\"}").unwrap();
    let (text, _) = crate::jsonc::remove_member(&text, &["mcpServers".to_string()], "mcp-server").unwrap().unwrap();
    std::fs::write(&path, &text).unwrap();
    assert_eq!(restore(&receipt).unwrap(), RestoreOutcome::EntryReAdded);
    let names: Vec<String> = h.inv().servers.into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["new-one", "python-server", "server-name"]);
    // The env VALUE came back from the backup (the client needs it).
    assert!(std::fs::read_to_string(&path).unwrap().contains("\"API_KEY\": \"value\""));
}

#[test]
fn restore_into_deleted_file_recreates_just_the_entry() {
    let h = home();
    let path = h.home.join(".codex/config.toml");
    put(&path, &fixture("codex_config.toml"));
    let receipt = disable_server(&h.server("codex", "context7"), &h.backups).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(restore(&receipt).unwrap(), RestoreOutcome::EntryReAdded);
    let names: Vec<String> = h.inv().servers.into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["context7"]);
}

#[test]
fn never_rewrites_a_file_it_cannot_parse() {
    let h = home();
    let path = h.home.join(".cursor/mcp.json");
    put(&path, br#"{"mcpServers": {"a": {"command": "a"}}}"#);
    let s = h.server("cursor", "a");
    std::fs::write(&path, b"{\"mcpServers\": {\"a\": {\"command\": \"a\"}").unwrap();
    let e = disable_server(&s, &h.backups).unwrap_err();
    assert!(matches!(e, EnforceError::Unparseable { .. }), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"mcpServers\": {\"a\": {\"command\": \"a\"}");
    assert!(!h.backups.exists() || std::fs::read_dir(&h.backups).unwrap().next().is_none());

    // Restore refuses to touch a file the user broke after our edit.
    std::fs::write(&path, br#"{"mcpServers": {"a": {"command": "a"}, "b": {"command": "b"}}}"#).unwrap();
    let receipt = disable_server(&h.server("cursor", "a"), &h.backups).unwrap();
    std::fs::write(&path, b"{ oops").unwrap();
    assert!(matches!(restore(&receipt), Err(EnforceError::Unparseable { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), b"{ oops");
}

#[test]
fn remote_servers_and_missing_entries_are_refused() {
    let h = home();
    put(&h.home.join(".cursor/mcp.json"), &fixture("cursor_mcp.json"));
    let remote = h.server("cursor", "server-name");
    assert!(matches!(disable_server(&remote, &h.backups), Err(EnforceError::NotStdio { .. })));
    let mut gone = h.server("cursor", "python-server");
    gone.name = "not-there".into();
    assert!(matches!(disable_server(&gone, &h.backups), Err(EnforceError::EntryNotFound { .. })));
}

#[test]
fn symlinked_config_is_edited_behind_the_link() {
    let h = home();
    let real = h.root.join("dotfiles/cursor.json");
    put(&real, &fixture("cursor_mcp.json"));
    std::fs::create_dir_all(h.home.join(".cursor")).unwrap();
    std::os::unix::fs::symlink(&real, h.home.join(".cursor/mcp.json")).unwrap();
    let r = disable_server(&h.server("cursor", "mcp-server"), &h.backups).unwrap();
    assert!(std::fs::symlink_metadata(h.home.join(".cursor/mcp.json")).unwrap().file_type().is_symlink());
    assert_eq!(r.edited_path, std::fs::canonicalize(&real).unwrap());
    restore(&r).unwrap();
    assert_eq!(std::fs::read(&real).unwrap(), fixture("cursor_mcp.json"));
}

#[test]
fn backup_tampering_is_detected() {
    let h = home();
    put(&h.home.join(".cursor/mcp.json"), &fixture("cursor_mcp.json"));
    let r = disable_server(&h.server("cursor", "mcp-server"), &h.backups).unwrap();
    std::fs::write(&r.backup_path, b"{}").unwrap();
    assert!(matches!(restore(&r), Err(EnforceError::Backup { .. })));
}

// === process matching ===

fn stdio(command: &str, args: &[&str]) -> McpServer {
    McpServer {
        fingerprint: crate::fingerprint::stdio_fingerprint(command, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        name: "s".into(),
        transport: Transport::Stdio,
        command: Some(command.into()),
        args: args.iter().map(|s| s.to_string()).collect(),
        env_names: vec![],
        url: None,
        header_names: vec![],
        client: "cursor".into(),
        config_path: PathBuf::from("/x"),
        scope: Scope::User,
        project: None,
        home: None,
        enabled: true,
        container: vec!["mcpServers".into()],
    }
}

fn p(pid: u32, cmd: &[&str]) -> ProcInfo {
    ProcInfo {
        pid,
        name: cmd.first().map(|c| base(c).to_string()).unwrap_or_default(),
        exe: None,
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn process_matching_rules() {
    let gh = stdio("npx", &["-y", "@modelcontextprotocol/server-github"]);
    // npx shows up as `npm exec PKG`: the package argument identifies it.
    assert!(process_matches(&gh, &p(1, &["npm exec", "-y", "@modelcontextprotocol/server-github"])));
    assert!(process_matches(&gh, &p(1, &["/usr/bin/npx", "-y", "@modelcontextprotocol/server-github"])));
    assert!(process_matches(&gh, &p(2, &["node", "/home/u/.npm/_npx/abc/node_modules/.bin/server-github"])));
    assert!(!process_matches(&gh, &p(3, &["node", "/home/u/.npm/_npx/abc/node_modules/.bin/server-gitlab"])));
    let py = stdio("python", &["-m", "my_mcp_server", "--port", "8080"]);
    assert!(process_matches(&py, &p(4, &["/usr/bin/python", "-m", "my_mcp_server", "--port", "8080", "--extra"])));
    assert!(!process_matches(&py, &p(5, &["python", "-m", "my_mcp_server", "--port", "9090"])));
    assert!(!process_matches(&py, &p(6, &["ruby", "-m", "my_mcp_server", "--port", "8080"])));
    let bin = stdio("/opt/srv/company-mcp", &[]);
    assert!(process_matches(&bin, &p(7, &["/opt/srv/company-mcp"])));
    assert!(!process_matches(&bin, &p(8, &[])));
}

/// A fake process table that records signals.
struct FakeProcs {
    procs: Vec<ProcInfo>,
    signals: Mutex<Vec<(u32, StopSignal)>>,
    stubborn: Vec<u32>,
}

impl ProcessLister for FakeProcs {
    fn list(&self) -> Vec<ProcInfo> {
        self.procs.clone()
    }
    fn signal(&self, pid: u32, sig: StopSignal) -> bool {
        self.signals.lock().unwrap().push((pid, sig));
        true
    }
    fn alive(&self, pid: u32) -> bool {
        self.stubborn.contains(&pid)
    }
}

#[test]
fn stop_sends_term_then_kill_to_survivors_only() {
    let fake = FakeProcs {
        procs: vec![p(10, &["uvx", "mcp-server-git"]), p(11, &["uvx", "mcp-server-git"]), p(12, &["uvx", "other"])],
        signals: Mutex::new(vec![]),
        stubborn: vec![11],
    };
    let pids = stop_processes(&stdio("uvx", &["mcp-server-git"]), &fake, Duration::from_millis(100));
    assert_eq!(pids, vec![10, 11]);
    assert_eq!(
        *fake.signals.lock().unwrap(),
        vec![(10, StopSignal::Term), (11, StopSignal::Term), (11, StopSignal::Kill)]
    );
}

#[test]
fn stops_a_real_child_process() {
    let marker = format!("{}.{}", 40000 + std::process::id() % 10000, 123);
    let mut child = std::process::Command::new("sleep").arg(&marker).spawn().unwrap();
    let server = stdio("sleep", &[&marker]);
    let lister = crate::process::SystemProcesses;
    let pids = stop_processes(&server, &lister, Duration::from_secs(5));
    assert_eq!(pids, vec![child.id()]);
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status:?}");
}

// === enforcer ===

fn policy(rules: &[(&str, Decision)], pending: PendingMode) -> ItemPolicy {
    ItemPolicy {
        pending_mode: pending,
        rules: rules
            .iter()
            .map(|(id, d)| ItemRule {
                id: id.to_string(),
                decision: *d,
                note: None,
            })
            .collect(),
    }
}

#[test]
fn enforcer_disables_re_added_servers_and_restores_on_allow() {
    let h = home();
    let path = h.home.join(".cursor/mcp.json");
    let original = fixture("cursor_mcp.json");
    put(&path, &original);
    let target = h.server("cursor", "mcp-server");
    let fp = target.fingerprint.clone();
    let fake = FakeProcs {
        procs: vec![p(99, &["npx", "-y", "mcp-server"])],
        signals: Mutex::new(vec![]),
        stubborn: vec![],
    };
    let mut enf = Enforcer::new(h.backups.clone(), Box::new(fake)).with_grace(Duration::from_millis(10));
    let deny = policy(&[(fp.as_str(), Decision::Deny)], PendingMode::Allow);

    let acts = enf.apply(&deny, &h.inv());
    assert!(matches!(&acts[0], EnforcementAction::Disabled { server, .. } if server.name == "mcp-server"), "{acts:?}");
    assert!(matches!(&acts[1], EnforcementAction::ProcessesStopped { pids, .. } if pids == &vec![99]));
    assert!(!h.inv().servers.iter().any(|s| s.name == "mcp-server"));

    // The user puts it back by hand: the next rescan disables it again.
    let text = std::fs::read_to_string(&path).unwrap();
    let text =
        crate::jsonc::insert_member(&text, &["mcpServers".to_string()], "mcp-server", "{\"command\": \"npx\", \"args\": [\"-y\", \"mcp-server\"]}").unwrap();
    std::fs::write(&path, text).unwrap();
    let acts = enf.apply(&deny, &h.inv());
    assert!(acts.iter().any(|a| matches!(a, EnforcementAction::Disabled { .. })), "{acts:?}");
    assert_eq!(enf.receipts().count(), 1, "the first receipt (pre-Palisade original) is kept");

    // Decision reversed: the file is what we wrote, so the original returns.
    let allow = policy(&[(fp.as_str(), Decision::Allow)], PendingMode::Block);
    let acts = enf.apply(&allow, &h.inv());
    // The other two cursor servers are pending under Block: python-server is
    // stdio and gets disabled; server-name is remote and left to the proxy.
    assert!(acts.iter().any(|a| matches!(a, EnforcementAction::Restored { fingerprint, .. } if *fingerprint == fp)), "{acts:?}");
    assert!(acts.iter().any(|a| matches!(a, EnforcementAction::Disabled { server, .. } if server.name == "python-server")));
    assert!(h.inv().servers.iter().any(|s| s.name == "mcp-server"));
    // Allow everything: back to the byte-identical original.
    let all = policy(&[], PendingMode::Allow);
    enf.apply(&all, &h.inv());
    assert_eq!(enf.receipts().count(), 0);
    assert_ne!(std::fs::read(&path).unwrap(), Vec::<u8>::new());
}
