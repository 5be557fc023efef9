use super::*;
use crate::model::Transport;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A home with every client's user config from the fixtures.
fn full_home(home: &Path) {
    for (rel, fx) in [
        (".config/Claude/claude_desktop_config.json", "claude_desktop_config.json"),
        (".cursor/mcp.json", "cursor_mcp.json"),
        (".codeium/windsurf/mcp_config.json", "windsurf_mcp_config.json"),
        (".config/Code/User/mcp.json", "vscode_mcp.json"),
        (".config/Code/User/settings.json", "vscode_settings.json"),
        (".config/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json", "cline_mcp_settings.json"),
        (".gemini/settings.json", "gemini_settings.json"),
        (".config/opencode/opencode.jsonc", "opencode.jsonc"),
        (".codex/config.toml", "codex_config.toml"),
        (".config/zed/settings.json", "zed_settings.json"),
        (".continue/config.yaml", "continue_config.yaml"),
        (".continue/mcpServers/playwright.yaml", "continue_block.yaml"),
        (".lmstudio/mcp.json", "lmstudio_mcp.json"),
    ] {
        put(&home.join(rel), &fixture(fx));
    }
}

#[test]
fn scans_every_client_in_a_home() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home/dev");
    full_home(&home);
    let proj = root.path().join("work/app");
    put(&proj.join(".mcp.json"), &fixture("project.mcp.json"));
    put(&proj.join(".vscode/mcp.json"), br#"{"servers": {"p": {"command": "uvx", "args": ["p"]}}}"#);
    let claude = format!(
        r#"{{"mcpServers": {{}}, "projects": {{"{}": {{"mcpServers": {{"inproj": {{"command": "x"}}}}}}}}}}"#,
        proj.display()
    );
    put(&home.join(".claude.json"), claude.as_bytes());
    put(&root.path().join("etc/claude-code/managed-mcp.json"), &fixture("managed-mcp.json"));

    let inv = scan(&ScanConfig::for_homes(root.path(), vec![home.clone()]));
    let clients: BTreeSet<&str> = inv.servers.iter().map(|s| s.client.as_str()).collect();
    for c in [
        "claude-desktop", "claude-code", "cursor", "windsurf", "vscode", "cline", "gemini-cli", "opencode", "codex",
        "zed", "continue", "lmstudio",
    ] {
        assert!(clients.contains(c), "missing {c}: {clients:?}");
    }
    let managed = inv.servers.iter().find(|s| s.scope == Scope::Managed).unwrap();
    assert_eq!(managed.name, "company-internal");
    let p = inv.servers.iter().find(|s| s.name == "p").unwrap();
    assert_eq!(p.project.as_deref(), Some(proj.as_path()));
    assert_eq!(p.scope, Scope::Project);
    assert!(inv.servers.iter().any(|s| s.name == "inproj" && s.scope == Scope::Project));
    assert!(inv.servers.iter().any(|s| s.name == "Browser search"));
    // GitHub via npx in Claude Desktop and Windsurf: one catalog item.
    let gh: Vec<&McpServer> = inv.servers.iter().filter(|s| s.name == "github" && s.transport == Transport::Stdio).collect();
    assert_eq!(gh.len(), 2);
    assert_eq!(gh[0].fingerprint, gh[1].fingerprint);
    assert!(inv.candidates.contains(&home.join(".cursor/mcp.json")));
    // Nothing in the inventory carries a fixture secret.
    let json = serde_json::to_string(&inv).unwrap();
    assert!(!json.contains("SECRET") && !json.contains("ghp_"), "{json}");
}

#[test]
fn homes_from_passwd_and_home_dirs() {
    let root = tempfile::tempdir().unwrap();
    put(
        &root.path().join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\nalice:x:1000:1000::/srv/alice:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
    );
    for d in ["root", "srv/alice", "home/bob", "Users/carol", "Users/Shared", "usr/sbin"] {
        std::fs::create_dir_all(root.path().join(d)).unwrap();
    }
    let cfg = ScanConfig {
        root: root.path().to_path_buf(),
        ..ScanConfig::default()
    };
    let (homes, findings) = list_homes(&cfg);
    assert!(findings.is_empty(), "{findings:?}");
    let names: BTreeSet<PathBuf> = homes.iter().map(|h| h.strip_prefix(root.path()).unwrap().to_path_buf()).collect();
    let want: BTreeSet<PathBuf> = ["root", "srv/alice", "home/bob", "Users/carol"].iter().map(PathBuf::from).collect();
    assert_eq!(names, want);
}

#[test]
fn unreadable_home_is_a_finding_and_scan_continues() {
    let root = tempfile::tempdir().unwrap();
    let good = root.path().join("home/good");
    put(&good.join(".cursor/mcp.json"), &fixture("cursor_mcp.json"));
    // A home that is not a directory cannot be listed (works even as root,
    // where permission bits do not stop reads).
    let bad = root.path().join("home/bad");
    put(&bad, b"not a dir");
    let inv = scan(&ScanConfig::for_homes(root.path(), vec![bad.clone(), good]));
    assert_eq!(inv.servers.len(), 3);
    let f = inv.findings.iter().find(|f| f.path == bad).expect("finding for bad home");
    assert_eq!(f.kind, FindingKind::Unreadable);
    assert!(f.problem.contains("home cannot be read"), "{f}");
}

#[test]
fn permission_denied_config_is_a_finding_when_not_root() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home/u");
    let cfgp = home.join(".cursor/mcp.json");
    put(&cfgp, &fixture("cursor_mcp.json"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfgp, std::fs::Permissions::from_mode(0o000)).unwrap();
    let readable_anyway = std::fs::read(&cfgp).is_ok(); // true when running as root
    let inv = scan(&ScanConfig::for_homes(root.path(), vec![home]));
    if readable_anyway {
        assert_eq!(inv.servers.len(), 3);
    } else {
        assert!(inv.servers.is_empty());
        assert_eq!(inv.findings[0].kind, FindingKind::Unreadable, "{:?}", inv.findings);
    }
}

#[test]
fn symlink_loops_are_findings_and_walks_terminate() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home/u");
    std::fs::create_dir_all(home.join(".cursor")).unwrap();
    // File-level loop: mcp.json -> a -> mcp.json.
    std::os::unix::fs::symlink(home.join(".cursor/a"), home.join(".cursor/mcp.json")).unwrap();
    std::os::unix::fs::symlink(home.join(".cursor/mcp.json"), home.join(".cursor/a")).unwrap();
    // Directory loop under a project root: work/loop -> work.
    let work = root.path().join("work");
    put(&work.join("app/.mcp.json"), br#"{"mcpServers": {"a": {"command": "a"}}}"#);
    std::os::unix::fs::symlink(&work, work.join("loop")).unwrap();
    std::os::unix::fs::symlink(&work, work.join("app/up")).unwrap();
    let mut cfg = ScanConfig::for_homes(root.path(), vec![home.clone()]);
    cfg.extra_project_roots = vec![work.clone()];
    cfg.project_walk_depth = 10;
    let inv = scan(&cfg);
    assert_eq!(inv.servers.len(), 1, "{:?}", inv.servers);
    let f = inv.findings.iter().find(|f| f.kind == FindingKind::SymlinkLoop).expect("loop finding");
    assert_eq!(f.path, home.join(".cursor/mcp.json"));
}

#[test]
fn huge_config_is_a_finding() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home/u");
    let mut big = b"{\"mcpServers\": {}, \"pad\": \"".to_vec();
    big.resize(200_000, b'x');
    big.extend_from_slice(b"\"}");
    put(&home.join(".cursor/mcp.json"), &big);
    let mut cfg = ScanConfig::for_homes(root.path(), vec![home]);
    cfg.max_file_bytes = 100_000;
    let inv = scan(&cfg);
    assert_eq!(inv.findings.len(), 1);
    assert_eq!(inv.findings[0].kind, FindingKind::TooLarge);
    assert!(inv.findings[0].problem.contains("too large"), "{}", inv.findings[0]);
}

#[test]
fn malformed_config_does_not_stop_the_scan() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home/u");
    put(&home.join(".cursor/mcp.json"), b"{\"mcpServers\": {");
    put(&home.join(".gemini/settings.json"), &fixture("gemini_settings.json"));
    let inv = scan(&ScanConfig::for_homes(root.path(), vec![home.clone()]));
    assert_eq!(inv.servers.len(), 3);
    assert_eq!(inv.findings.len(), 1);
    assert_eq!(inv.findings[0].kind, FindingKind::Malformed);
    assert_eq!(inv.findings[0].client.as_deref(), Some("cursor"));
}

#[test]
fn same_name_different_servers_is_a_conflict_and_both_are_kept() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home/u");
    put(&home.join(".cursor/mcp.json"), br#"{"mcpServers": {"db": {"command": "npx", "args": ["pg-mcp"]}}}"#);
    put(&home.join(".gemini/settings.json"), br#"{"mcpServers": {"db": {"command": "npx", "args": ["mysql-mcp"]}}}"#);
    put(&home.join(".lmstudio/mcp.json"), br#"{"mcpServers": {"same": {"command": "a"}}}"#);
    put(&home.join(".cursor/../.codeium/windsurf/mcp_config.json"), br#"{"mcpServers": {"same": {"command": "a"}}}"#);
    let inv = scan(&ScanConfig::for_homes(root.path(), vec![home]));
    assert_eq!(inv.servers.iter().filter(|s| s.name == "db").count(), 2);
    let c: Vec<&Finding> = inv.findings.iter().filter(|f| f.kind == FindingKind::Conflict).collect();
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].problem.contains("\"db\"") && c[0].problem.contains("cursor") && c[0].problem.contains("gemini-cli"));
    assert_eq!(inv.by_fingerprint().len(), 3);
}

#[test]
fn the_same_file_reached_twice_is_read_once() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home/u");
    let proj = home.join("src/app");
    put(&proj.join(".mcp.json"), br#"{"mcpServers": {"a": {"command": "a"}}}"#);
    let claude = format!(r#"{{"projects": {{"{}": {{}}}}}}"#, proj.display());
    put(&home.join(".claude.json"), claude.as_bytes());
    let mut cfg = ScanConfig::for_homes(root.path(), vec![home.clone(), home.clone()]);
    cfg.extra_project_roots = vec![home.join("src")];
    let inv = scan(&cfg);
    assert_eq!(inv.servers.len(), 1, "{:?}", inv.servers);
}

#[test]
fn diff_reports_added_removed_changed() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home/u");
    let f = home.join(".cursor/mcp.json");
    put(&f, br#"{"mcpServers": {"a": {"command": "a"}, "b": {"command": "b"}}}"#);
    let cfg = ScanConfig::for_homes(root.path(), vec![home]);
    let before = scan(&cfg);
    put(&f, br#"{"mcpServers": {"a": {"command": "a2"}, "c": {"command": "c"}}}"#);
    let after = scan(&cfg);
    let d = before.diff(&after);
    assert_eq!(d.added.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["c"]);
    assert_eq!(d.removed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["b"]);
    assert_eq!(d.changed.len(), 1);
    assert_eq!(d.changed[0].1.command.as_deref(), Some("a2"));
    assert!(after.diff(&after).is_empty());
}
